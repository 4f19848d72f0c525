//! `fastvlm-bench`: the measurements behind `cargo xtask bench-report`, one JSON line each, on
//! the backend compiled in (CPU by default, `--features cuda|wgpu`). A plain binary rather than
//! criterion's output, so the GPU machine (no Rust there) runs the same thing from one file.
//!
//! ```text
//! fastvlm-bench encoder  [--res 256,512,768,1024,1536] [--iters 5]
//! fastvlm-bench decoder  [--iters 5]            projector, prefill/{64,280,1024}, step
//! fastvlm-bench pipeline [--iters 3] [--tokens 32]  ttft_1024, decode tok/s, peak RSS
//! fastvlm-bench decode   [--shape 0.5b|1.5b|7b] [--tokens 32] [--block-mib N]
//!                        prefill/280, step, decode tok/s with weights drawn on the device
//! fastvlm-bench linear   [--quant q8|q4]     one 0.5B linear layer (gate, down, head) at 1
//!                        and 280 rows
//! fastvlm-bench quality  --model-path DIR --image A[,B…] [--tokens 24] [--quants q8,q4]
//!                        a release's quantized language model against its f32 one: greedy
//!                        answer per image, then teacher-forced KL and top-1 agreement
//!                        (prompt prefilled, then one decoding step per answer token)
//! fastvlm-bench profile  [--iters 5]            where the time goes: a sync, the encoder's
//!                        parts at 1024², single ops at their shapes, a 0.5B step's parts
//! fastvlm-bench launches [--res 256] [--shape 0.5b] [--prompt 16] [--only encoder|decode]
//!                        kernels launched by one encoder forward, one prefill and one
//!                        decoding step, by kind (GPU backends only)
//!   all take [--backend cpu|wgpu|cuda] [--dtype f32|f16|bf16] (defaults as vlm-cli's);
//!   decode, pipeline and linear take [--quant q8|q4] (the language model's weights
//!   quantized); `q8+int8`, `q4+int8` there and in --quants round a decoding step's
//!   activations to int8 (`vlm-cli --activations int8`)
//! ```
//! Every line carries the first call's time apart (kernel compilation and autotuning on GPUs)
//! and the median and minimum of the timed calls after it.

use std::process::ExitCode;
use std::time::Instant;

use benches::{Pipeline, SEED, decoder, encoder, image, projector_05b, sync};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::module::{attention, conv2d};
use burn::tensor::ops::{AttentionModuleOptions, ConvOptions};
use burn::tensor::{Distribution, Tensor};
use qwen2_decoder::Qwen2Config;
use vlm_pipeline::backend::{self, Job, Precision, Selection};

/// A scheme with the activations a decoding step meets it with: `q4` (f32 activations),
/// `q4+int8` (rounded to int8).
type QuantSpec = (vlm_kernels::Quantization, vlm_kernels::Activations);

/// `q8`, `q4`, … optionally followed by `+int8` (or `+f32`).
fn quant_spec(text: &str) -> Result<QuantSpec, String> {
    let (scheme, activations) = match text.split_once('+') {
        Some((scheme, activations)) => (scheme, activations.parse()?),
        None => (text, vlm_kernels::Activations::F32),
    };
    Ok((scheme.parse()?, activations))
}

/// [`quant_spec`]'s text back: the scheme, `+int8` when the activations are rounded.
fn quant_label((scheme, activations): QuantSpec) -> String {
    match activations {
        vlm_kernels::Activations::F32 => scheme.to_string(),
        other => format!("{scheme}+{other}"),
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Before any device is touched: CubeCL reads its configuration once.
    if args.first().is_some_and(|a| a == "launches") {
        launch_log::start();
    }
    backend::keep_compiled_kernels();
    backend::keep_freed_memory();
    let precision = match flag(&args, "--dtype").map(|d| d.parse::<Precision>()) {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        None => None,
    };
    let selection = match flag(&args, "--backend") {
        Some(name) => Selection::new(&name, precision),
        None => Selection::new(backend::compiled()[0], precision),
    };
    match selection {
        Ok(selection) => {
            let backend = selection.backend.clone();
            selection.run(Bench { args, backend })
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The measurements, on the backend type the selection picked.
struct Bench {
    args: Vec<String>,
    backend: String,
}

impl Job for Bench {
    type Output = ExitCode;
    fn run<B: Backend>(self, _device: B::Device) -> ExitCode {
        run::<B>(&self.args, &self.backend)
    }
}

fn run<B: Backend>(args: &[String], backend_name: &str) -> ExitCode {
    let iters: usize = flag(args, "--iters")
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    let device = B::Device::default();
    let dtype = format!("{:?}", Tensor::<B, 1>::zeros([1], &device).dtype()).to_lowercase();
    let cubecl = vlm_kernels::ops::uses_cubecl_kernels::<B>();
    // A partial switch (`FASTVLM_CUBECL_KERNELS=attention,rotary`) is named in the tag.
    let kernels = match std::env::var("FASTVLM_CUBECL_KERNELS") {
        _ if !cubecl => "burn".to_string(),
        Ok(list) if !matches!(list.trim(), "" | "on" | "all") => format!("cubecl:{}", list.trim()),
        _ => "cubecl".to_string(),
    };
    let quant = match flag(args, "--quant").map(|q| quant_spec(&q)) {
        Some(Ok(q)) => Some(q),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        None => None,
    };
    let tag = Tag {
        backend: backend_name.to_string(),
        dtype,
        quant: quant.map_or_else(|| "none".to_string(), quant_label),
        kernels,
    };
    match args.first().map(String::as_str) {
        Some("encoder") => {
            let res: Vec<usize> = flag(args, "--res")
                .unwrap_or_else(|| "256,512,768,1024,1536".into())
                .split(',')
                .filter_map(|r| r.trim().parse().ok())
                .collect();
            run_encoder::<B>(&tag, &res, iters)
        }
        Some("decoder") => run_decoder::<B>(&tag, iters),
        Some("pipeline") => {
            let tokens = flag(args, "--tokens")
                .and_then(|s| s.parse().ok())
                .unwrap_or(32);
            run_pipeline::<B>(&tag, iters, tokens, quant)
        }
        Some("decode") => {
            let shape = flag(args, "--shape").unwrap_or_else(|| "0.5b".into());
            let Some(config) = Qwen2Config::fastvlm(&shape) else {
                eprintln!("error: unknown --shape `{shape}` (0.5b, 1.5b, 7b)");
                return ExitCode::FAILURE;
            };
            let tokens = flag(args, "--tokens")
                .and_then(|s| s.parse().ok())
                .unwrap_or(32);
            let block = flag(args, "--block-mib")
                .and_then(|s| s.parse::<usize>().ok())
                .map_or(usize::MAX, |m| m << 20);
            run_decode::<B>(&tag, &shape, &config, (block, quant), iters, tokens)
        }
        Some("profile") => run_profile::<B>(&tag, iters),
        Some("linear") => run_linear::<B>(&tag, iters, quant),
        Some("quality") => run_quality::<B>(args),
        Some("launches") => {
            let res = flag(args, "--res")
                .and_then(|s| s.parse().ok())
                .unwrap_or(256);
            let shape = flag(args, "--shape").unwrap_or_else(|| "0.5b".into());
            let Some(config) = Qwen2Config::fastvlm(&shape) else {
                eprintln!("error: unknown --shape `{shape}` (0.5b, 1.5b, 7b)");
                return ExitCode::FAILURE;
            };
            let prompt = flag(args, "--prompt")
                .and_then(|s| s.parse().ok())
                .unwrap_or(16);
            let only = flag(args, "--only");
            let parts = (
                only.as_deref() != Some("decode"),
                only.as_deref() != Some("encoder"),
            );
            run_launches::<B>(&tag, parts, res, &shape, &config, prompt)
        }
        _ => {
            eprintln!(
                "usage: fastvlm-bench encoder|decoder|pipeline|decode|linear|quality|profile|launches [--iters N] [--res R,…] [--tokens N] [--shape S] [--backend B] [--dtype D]"
            );
            ExitCode::FAILURE
        }
    }
}

/// What every line says it ran on.
struct Tag {
    backend: String,
    dtype: String,
    /// The language model's weights: `q8`, `q4` (`--quant`), or `none` at the compute dtype.
    quant: String,
    /// `cubecl` where the models run all their own CubeCL kernels, `cubecl:<names>` where
    /// `FASTVLM_CUBECL_KERNELS` switched on only those, `burn` where burn's ops do all (CPU
    /// backends, or `FASTVLM_CUBECL_KERNELS=off`).
    kernels: String,
}

impl Tag {
    fn json(&self) -> String {
        format!(
            "\"impl\": \"ours\", \"backend\": \"{}\", \"dtype\": \"{}\", \"quant\": \"{}\", \"kernels\": \"{}\"",
            self.backend, self.dtype, self.quant, self.kernels
        )
    }
}

/// Times `f` once (first call) and `iters` more times; prints the JSON line.
fn measure<T>(tag: &Tag, name: &str, iters: usize, mut f: impl FnMut() -> T) {
    let t = Instant::now();
    drop(f());
    let first = ms(t);
    // On a GPU the first call compiles and autotunes its kernels (minutes, cold): say so at once,
    // so a run cut short still shows where its time went.
    eprintln!("{name}: first call {first:.1} ms");
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            drop(f());
            ms(t)
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"bench\": \"{name}\", {}, \"ms_median\": {:.4}, \"ms_min\": {:.4}, \"ms_first\": {:.4}, \"iters\": {iters}}}",
        tag.json(),
        times[times.len() / 2],
        times[0],
        first
    );
}

fn run_encoder<B: Backend>(tag: &Tag, resolutions: &[usize], iters: usize) -> ExitCode {
    let device = Default::default();
    let model = encoder::<B>(&device);
    for &res in resolutions {
        let x = image::<B>(res, &device);
        measure(tag, &format!("encoder/{res}"), iters, || {
            let y = model.forward(x.clone());
            sync::<B>(&device);
            y
        });
    }
    ExitCode::SUCCESS
}

fn run_decoder<B: Backend>(tag: &Tag, iters: usize) -> ExitCode {
    let device = Default::default();
    let model = decoder::<B>("0.5b", &device).expect("a released size");
    let projector = projector_05b::<B>(&device);
    let features = Tensor::<B, 3>::random([1, 256, 3072], Distribution::Normal(0.0, 0.1), &device);
    measure(tag, "projector", iters, || {
        let y = projector.forward(features.clone());
        sync::<B>(&device);
        y
    });
    for n in [64, 280, 1024] {
        let embeds = Tensor::<B, 3>::random([1, n, 896], Distribution::Normal(0.0, 0.05), &device);
        measure(tag, &format!("decoder/prefill/{n}"), iters, || {
            let mut cache = model.new_cache(1, n + 1, &device).unwrap();
            let logits = model.forward_last(embeds.clone(), &mut cache).unwrap();
            sync::<B>(&device);
            logits
        });
    }
    let prompt = Tensor::<B, 3>::random([1, 280, 896], Distribution::Normal(0.0, 0.05), &device);
    let mut cache = model.new_cache(1, 280 + 64 * iters + 64, &device).unwrap();
    let _ = model.forward_last(prompt, &mut cache).unwrap();
    // A step: embed, 24 layers with the cache, last-position logits, the id back on the host.
    measure(tag, "decoder/step", iters.max(16), || {
        let logits = model
            .forward_last(step_embed(&model, 872), &mut cache)
            .unwrap();
        logits.argmax(1).into_data()
    });
    ExitCode::SUCCESS
}

fn run_pipeline<B: Backend>(
    tag: &Tag,
    iters: usize,
    tokens: usize,
    quant: Option<QuantSpec>,
) -> ExitCode {
    let device = Default::default();
    let mut pipeline = Pipeline::<B>::new_quantized(&device, quant.map(|q| q.0));
    if let Some((_, activations)) = quant {
        pipeline.decoder.set_activations(activations);
    }
    let pixels = image::<B>(1024, &device);
    measure(tag, "pipeline/ttft_1024", iters, || {
        pipeline.first_token(pixels.clone(), &device)
    });
    // Greedy decoding after the 280-position prompt, one id to the host per token.
    let decoder = &pipeline.decoder;
    let embeds = Tensor::<B, 3>::random([1, 280, 896], Distribution::Normal(0.0, 0.05), &device);
    report_rate(tag, "pipeline/decode", iters, tokens, || {
        decode_rate(decoder, &embeds, tokens, &device)
    });
    println!(
        "{{\"bench\": \"pipeline/peak_rss\", {}, \"peak_rss_mib\": {}}}",
        tag.json(),
        peak_rss_kib() / 1024
    );
    ExitCode::SUCCESS
}

/// A decoding step's input: the row of a token id the host holds, as the pipeline embeds it.
fn step_embed<B: Backend>(decoder: &qwen2_decoder::Qwen2<B>, id: usize) -> Tensor<B, 3> {
    decoder
        .embed_token(id)
        .expect("a token id inside the vocabulary")
}

/// Greedy decoding rate: after a random 280-position prompt, `tokens` steps each sending the
/// sampled id to the host. Returns tokens per second.
fn decode_rate<B: Backend>(
    decoder: &qwen2_decoder::Qwen2<B>,
    prompt: &Tensor<B, 3>,
    tokens: usize,
    device: &B::Device,
) -> f64 {
    let n = prompt.dims()[1];
    let mut cache = decoder.new_cache(1, n + tokens + 1, device).unwrap();
    let mut logits = decoder.forward_last(prompt.clone(), &mut cache).unwrap();
    let t = Instant::now();
    for _ in 0..tokens {
        let id = logits
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap()[0];
        logits = decoder
            .forward_last(step_embed(decoder, id as usize), &mut cache)
            .unwrap();
    }
    let _ = logits.into_data();
    tokens as f64 / t.elapsed().as_secs_f64()
}

/// Runs `rate` once, then `iters` times; prints the median rate and the first apart.
fn report_rate(tag: &Tag, name: &str, iters: usize, tokens: usize, mut rate: impl FnMut() -> f64) {
    let first = rate();
    let mut rates: Vec<f64> = (0..iters).map(|_| rate()).collect();
    rates.sort_by(f64::total_cmp);
    println!(
        "{{\"bench\": \"{name}\", {}, \"tok_per_s_median\": {:.3}, \"tok_per_s_first\": {first:.3}, \"tokens\": {tokens}, \"iters\": {iters}}}",
        tag.json(),
        rates[rates.len() / 2]
    );
}

fn run_decode<B: Backend>(
    tag: &Tag,
    shape: &str,
    config: &qwen2_decoder::Qwen2Config,
    (max_block_bytes, quant): (usize, Option<QuantSpec>),
    iters: usize,
    tokens: usize,
) -> ExitCode {
    let device = Default::default();
    let t = Instant::now();
    let mut decoder = config
        .init_quantized::<B>(&device, SEED, max_block_bytes, quant.map(|q| q.0))
        .expect("a released configuration");
    if let Some((_, activations)) = quant {
        decoder.set_activations(activations);
    }
    sync::<B>(&device);
    eprintln!(
        "{shape}: weights drawn in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let h = config.hidden_size;
    let prompt = Tensor::<B, 3>::random([1, 280, h], Distribution::Normal(0.0, 0.05), &device);
    measure(tag, &format!("decode/{shape}/prefill/280"), iters, || {
        let mut cache = decoder.new_cache(1, 281, &device).unwrap();
        let logits = decoder.forward_last(prompt.clone(), &mut cache).unwrap();
        logits.argmax(1).into_data()
    });
    let mut cache = decoder
        .new_cache(1, 280 + 64 * iters + 64, &device)
        .unwrap();
    let _ = decoder.forward_last(prompt.clone(), &mut cache).unwrap();
    measure(tag, &format!("decode/{shape}/step"), iters.max(16), || {
        let logits = decoder
            .forward_last(step_embed(&decoder, 872), &mut cache)
            .unwrap();
        logits.argmax(1).into_data()
    });
    report_rate(tag, &format!("decode/{shape}/rate"), iters, tokens, || {
        decode_rate(&decoder, &prompt, tokens, &device)
    });
    ExitCode::SUCCESS
}

/// One linear layer of the 0.5B language model alone, at 1 and 280 rows: gate/up (896 →
/// 4864), down (4864 → 896) and the tied head (896 → 151936), dense or `--quant`.
fn run_linear<B: Backend>(tag: &Tag, iters: usize, quant: Option<QuantSpec>) -> ExitCode {
    use vlm_kernels::{Linear, QuantizedMatrix, quant};
    let device: B::Device = Default::default();
    for (name, d_in, d_out) in [
        ("gate", 896, 4864),
        ("down", 4864, 896),
        ("head", 896, 151936),
    ] {
        let w = Tensor::<B, 2>::random([d_out, d_in], Distribution::Normal(0.0, 0.05), &device);
        let linear = match quant {
            Some((scheme, activations)) => {
                let values = w.into_data().convert::<f32>().into_vec::<f32>().unwrap();
                let q = quant::quantize(&values, d_out, d_in, scheme, quant::ScaleType::F32);
                let matrix = QuantizedMatrix::upload(&q, &device).with_activations(activations);
                Linear::quantized(matrix, None)
            }
            // Contiguous `[in, out]`, as the loader stores it.
            None => Linear::new(Tensor::from_data(w.transpose().into_data(), &device), None),
        };
        for rows in [1, 280] {
            let x =
                Tensor::<B, 3>::random([1, rows, d_in], Distribution::Normal(0.0, 1.0), &device);
            measure(tag, &format!("linear/{name}/{rows}"), iters.max(20), || {
                let y = linear.forward(x.clone());
                sync::<B>(&device);
                y
            });
        }
    }
    ExitCode::SUCCESS
}

/// Quantized against f32 on one release: for each image, f32's greedy answer (`--tokens`
/// ids), then with each scheme the log-probabilities over that answer teacher-forced (the
/// prompt's last position and every answer token but the last): mean KL(f32 ‖ quantized),
/// top-1 agreement, and whether the scheme's own greedy answer has the same ids.
fn run_quality<B: Backend>(args: &[String]) -> ExitCode {
    use vlm_pipeline::{FastVlm, GenerationOptions, Message, Request, Role};
    let fail = |e: String| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    };
    let Some(dir) = flag(args, "--model-path").map(std::path::PathBuf::from) else {
        return fail("quality needs --model-path DIR".into());
    };
    let Some(images) = flag(args, "--image") else {
        return fail("quality needs --image A[,B…]".into());
    };
    let tokens: usize = flag(args, "--tokens")
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let quants: Result<Vec<QuantSpec>, String> = flag(args, "--quants")
        .unwrap_or_else(|| "q8,q4".into())
        .split(',')
        .map(quant_spec)
        .collect();
    let quants = match quants {
        Ok(q) => q,
        Err(e) => return fail(e),
    };
    let device: B::Device = Default::default();
    let requests: Result<Vec<(String, Request)>, String> = images
        .split(',')
        .map(|path| {
            let image = vlm_pipeline::image::load(std::path::Path::new(path))
                .map_err(|e| format!("{path}: {e}"))?;
            let options = GenerationOptions {
                temperature: 0.0,
                max_new_tokens: tokens,
                ..Default::default()
            };
            let request = Request {
                image: Some(image),
                system: None,
                messages: vec![Message {
                    role: Role::User,
                    content: vlm_pipeline::prompt::DEFAULT_PROMPT.into(),
                }],
                options,
            };
            Ok((path.to_string(), request))
        })
        .collect();
    let requests = match requests {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let load = |q: Option<vlm_kernels::Quantization>| {
        FastVlm::<B>::load_with(&dir, &device, q, &mut |_| {})
            .map_err(|e| format!("cannot load `{}`: {e}", dir.display()))
    };
    let greedy = |model: &FastVlm<B>, request: &Request| {
        model
            .generate(request, &mut |_| std::ops::ControlFlow::Continue(()))
            .map(|g| g.token_ids)
            .map_err(|e| e.to_string())
    };
    // The f32 reference: answers and their log-probabilities, then the model is dropped.
    let mut reference = Vec::new();
    {
        let model = match load(None) {
            Ok(m) => m,
            Err(e) => return fail(e),
        };
        for (_, request) in &requests {
            let ids = match greedy(&model, request) {
                Ok(ids) => ids,
                Err(e) => return fail(e),
            };
            match model.continuation_logprobs(request, &ids) {
                Ok(lp) => reference.push((ids, lp)),
                Err(e) => return fail(e.to_string()),
            }
        }
    }
    for spec in quants {
        let t = Instant::now();
        let mut model = match load(Some(spec.0)) {
            Ok(m) => m,
            Err(e) => return fail(e),
        };
        model.set_activations(spec.1);
        let q = quant_label(spec);
        let load_s = t.elapsed().as_secs_f64();
        for ((path, request), (ids, want)) in requests.iter().zip(&reference) {
            let got = match model.continuation_logprobs(request, ids) {
                Ok(lp) => lp,
                Err(e) => return fail(e.to_string()),
            };
            let own = match greedy(&model, request) {
                Ok(ids) => ids,
                Err(e) => return fail(e),
            };
            let argmax = |row: &[f32]| {
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                        if v > best.1 { (i, v) } else { best }
                    })
                    .0
            };
            let (mut kl, mut agree) = (0.0f64, 0usize);
            for (p, q) in want.iter().zip(&got) {
                kl += p
                    .iter()
                    .zip(q)
                    .map(|(&lp, &lq)| (lp as f64).exp() * (lp as f64 - lq as f64))
                    .sum::<f64>();
                agree += usize::from(argmax(p) == argmax(q));
            }
            let n = want.len().max(1);
            // How decided the f32 model was: the median gap between its two likeliest tokens.
            let mut margins: Vec<f32> = want
                .iter()
                .map(|row| {
                    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
                    for &v in row {
                        if v > a {
                            (a, b) = (v, a);
                        } else if v > b {
                            b = v;
                        }
                    }
                    a - b
                })
                .collect();
            // At the first position where the scheme's own greedy answer leaves f32's: f32's
            // margin there (a near tie flips under any perturbation).
            let split = own.iter().zip(ids).position(|(a, b)| a != b);
            let split_margin = split.and_then(|k| margins.get(k).copied());
            margins.sort_by(f32::total_cmp);
            let margin = margins.get(margins.len() / 2).copied().unwrap_or(0.0);
            println!(
                "{{\"bench\": \"quality\", \"quant\": \"{q}\", \"image\": \"{path}\", \"positions\": {}, \"mean_kl\": {:.6}, \"top1_agreement\": {:.4}, \"greedy_ids_equal\": {}, \"greedy_common_prefix\": {}, \"f32_top2_margin_median\": {margin:.3}, \"f32_margin_at_split\": {}, \"load_s\": {load_s:.1}}}",
                want.len(),
                kl / n as f64,
                agree as f64 / n as f64,
                own == *ids,
                own.iter().zip(ids).take_while(|(a, b)| a == b).count(),
                split_margin.map_or("null".to_string(), |m| format!("{m:.4}")),
            );
        }
    }
    ExitCode::SUCCESS
}

/// Where the time goes, one JSON line per part (each call ends with a device sync).
fn run_profile<B: Backend>(tag: &Tag, iters: usize) -> ExitCode {
    let device: B::Device = Default::default();
    let sync = || sync::<B>(&device);
    measure(tag, "profile/sync", iters, sync);
    // One launch of the smallest kernel and a sync: the floor under every op below.
    let one = Tensor::<B, 1>::ones([1], &device);
    measure(tag, "profile/op/add/1", iters, || {
        let y = one.clone() + one.clone();
        sync();
        y
    });

    // FastViTHD at 1024², part by part, each from the previous part's output.
    let model = encoder::<B>(&device);
    let mut h = image::<B>(1024, &device);
    let input = h.clone();
    measure(tag, "encoder/1024", iters, || {
        let y = model.forward(input.clone());
        sync();
        y
    });
    measure(tag, "profile/encoder/stem", iters, || {
        let mut y = input.clone();
        for block in &model.stem {
            y = block.forward(y);
        }
        sync();
        y
    });
    for block in &model.stem {
        h = block.forward(h);
    }
    for (i, stage) in model.stages.iter().enumerate() {
        let input = h.clone();
        let [_, c, hh, ww] = input.dims();
        measure(
            tag,
            &format!("profile/encoder/stage{i}/{c}ch@{hh}x{ww}"),
            iters,
            || {
                let y = stage.forward(input.clone());
                sync();
                y
            },
        );
        h = stage.forward(h);
    }
    measure(tag, "profile/encoder/conv_exp", iters, || {
        let y = model.conv_exp.forward(h.clone());
        sync();
        y
    });

    // Single ops at the shapes FastViTHD runs them (stage 2: 384 channels at 64×64 for 1024²;
    // stage 3's attention: 768 channels, 24 heads of 32, 1024 tokens).
    let c = 384;
    let normal = |s: f64| Distribution::Normal(0.0, s);
    let x = Tensor::<B, 4>::random([1, c, 64, 64], normal(1.0), &device);
    let bias = Tensor::<B, 1>::random([c], normal(0.1), &device);
    for k in [3, 7] {
        let w = Tensor::<B, 4>::random([c, 1, k, k], normal(0.1), &device);
        measure(
            tag,
            &format!("profile/op/depthwise{k}x{k}+bias/384@64x64"),
            iters,
            || {
                let y = conv2d(
                    x.clone(),
                    w.clone(),
                    Some(bias.clone()),
                    ConvOptions::new([1, 1], [k / 2, k / 2], [1, 1], c),
                );
                sync();
                y
            },
        );
    }
    // The same 7×7 depthwise convolution as 49 shifted multiply-adds over the padded input:
    // elementwise work that burn's fusion may compile into one kernel (a lead for a depthwise
    // path that needs no convolution kernel).
    let w7 = Tensor::<B, 4>::random([c, 1, 7, 7], normal(0.1), &device);
    let taps: Vec<Tensor<B, 4>> = (0..49)
        .map(|t| {
            w7.clone()
                .slice([0..c, 0..1, t / 7..t / 7 + 1, t % 7..t % 7 + 1])
                .reshape([1, c, 1, 1])
        })
        .collect();
    let bias4 = bias.clone().reshape([1, c, 1, 1]);
    measure(
        tag,
        "profile/op/depthwise7x7-as-49-fma/384@64x64",
        iters,
        || {
            let padded = x
                .clone()
                .pad([(3, 3), (3, 3)], burn::tensor::ops::PadMode::Constant(0.0));
            let mut acc = bias4.clone();
            for (t, tap) in taps.iter().enumerate() {
                let (i, j) = (t / 7, t % 7);
                acc = acc + padded.clone().slice([0..1, 0..c, i..i + 64, j..j + 64]) * tap.clone();
            }
            sync();
            acc
        },
    );
    let pw = fastvithd::Pointwise::new(
        Tensor::<B, 2>::random([4 * c, c], normal(0.05), &device),
        Tensor::<B, 1>::random([4 * c], normal(0.1), &device),
    );
    measure(tag, "profile/op/pointwise384to1536/64x64", iters, || {
        let y = pw.forward(x.clone());
        sync();
        y
    });
    let wide = Tensor::<B, 4>::random([1, 4 * c, 64, 64], normal(1.0), &device);
    measure(tag, "profile/op/gelu/1536@64x64", iters, || {
        let y = gelu(wide.clone());
        sync();
        y
    });
    measure(tag, "profile/op/add/384@64x64", iters, || {
        let y = x.clone() + x.clone();
        sync();
        y
    });
    // burn's fused attention against two matmuls around a softmax (scores materialised), at
    // stage 3's shape and at a decoding step's (one query over 300 cached positions, 14 heads
    // of 64).
    for (label, heads, queries, keys, head_dim) in [
        ("24x1024x32", 24, 1024, 1024, 32),
        ("14x1q300kx64", 14, 1, 300, 64),
    ] {
        let [q, k, v] = [queries, keys, keys]
            .map(|n| Tensor::<B, 4>::random([1, heads, n, head_dim], normal(1.0), &device));
        measure(tag, &format!("profile/op/attention/{label}"), iters, || {
            let y = attention(
                q.clone(),
                k.clone(),
                v.clone(),
                None,
                None,
                AttentionModuleOptions::default(),
            );
            sync();
            y
        });
        let scale = 1.0 / (head_dim as f64).sqrt();
        measure(
            tag,
            &format!("profile/op/attention-as-matmuls/{label}"),
            iters,
            || {
                let scores = q.clone().matmul(k.clone().swap_dims(2, 3)) * scale;
                let y = burn::tensor::activation::softmax(scores, 3).matmul(v.clone());
                sync();
                y
            },
        );
    }
    let a = Tensor::<B, 2>::random([4096, 4096], normal(1.0), &device);
    let b = Tensor::<B, 2>::random([4096, 4096], normal(1.0), &device);
    measure(tag, "profile/op/matmul/4096", iters, || {
        let y = a.clone().matmul(b.clone());
        sync();
        y
    });
    drop((model, h, x, wide, a, b));

    // A 0.5B decoding step's parts after a 280-position prompt, with the vocabulary tables in
    // one block and in wgpu's 128 MiB blocks.
    for (label, block) in [("one", usize::MAX), ("128MiB", 128 << 20)] {
        let config = Qwen2Config::fastvlm("0.5b").expect("a released size");
        let decoder = config
            .init_blocked::<B>(&device, SEED, block)
            .expect("a released configuration");
        let prompt = Tensor::<B, 3>::random([1, 280, 896], normal(0.05), &device);
        let mut cache = decoder
            .new_cache(1, 280 + 8 * (iters + 1) + 64, &device)
            .unwrap();
        let _ = decoder.forward_last(prompt, &mut cache).unwrap();
        let p = |part: &str| format!("profile/step0.5b/{label}-block/{part}");
        measure(tag, &p("embed"), iters, || {
            let y = step_embed(&decoder, 872);
            sync();
            y
        });
        let embedded = step_embed(&decoder, 872);
        measure(tag, &p("layers"), iters, || {
            let y = decoder.hidden(embedded.clone(), &mut cache).unwrap();
            sync();
            y
        });
        let hidden = decoder.hidden(embedded.clone(), &mut cache).unwrap();
        measure(tag, &p("lm_head"), iters, || {
            let y = decoder.logits(hidden.clone());
            sync();
            y
        });
        let logits = decoder.logits(hidden).reshape([1, 151936]);
        measure(tag, &p("argmax_to_host"), iters, || {
            logits.clone().argmax(1).into_data()
        });
        measure(tag, &p("whole"), iters, || {
            let logits = decoder
                .forward_last(step_embed(&decoder, 872), &mut cache)
                .unwrap();
            logits.argmax(1).into_data()
        });
    }
    ExitCode::SUCCESS
}

/// Kernel launches, counted from CubeCL's execution log (profiling level `minimal`: one line
/// per launch, no timing, no sync), so a GPU-independent property of the graph: how many
/// kernels burn's fusion and ours leave per forward. At the launch cost measured through burn's
/// path on the GPU (BENCHMARKS.md), it bounds the decoding rate before any arithmetic. The counts do
/// not depend on the prompt's length (`prompt` positions, short so that a CPU Vulkan driver
/// gets through the 0.5B prefill).
fn run_launches<B: Backend>(
    tag: &Tag,
    (encoder_part, decode_part): (bool, bool),
    res: usize,
    shape: &str,
    config: &qwen2_decoder::Qwen2Config,
    prompt_len: usize,
) -> ExitCode {
    if !launch_log::active() {
        eprintln!("error: `launches` counts CubeCL kernels: use --backend wgpu or cuda");
        return ExitCode::FAILURE;
    }
    let device: B::Device = Default::default();
    let sync = || sync::<B>(&device);
    let report = |name: &str, launches: Vec<String>| {
        let mut kinds: Vec<(String, usize)> = Vec::new();
        for kind in launches.iter().map(|l| launch_log::kind(l)) {
            match kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => kinds.push((kind, 1)),
            }
        }
        kinds.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        let by_kind: Vec<String> = kinds
            .iter()
            .map(|(k, n)| format!("\"{}\": {n}", k.replace('"', "'")))
            .collect();
        println!(
            "{{\"bench\": \"{name}\", {}, \"launches\": {}, \"by_kind\": {{{}}}}}",
            tag.json(),
            launches.len(),
            by_kind.join(", ")
        );
    };

    if encoder_part {
        let model = encoder::<B>(&device);
        let x = image::<B>(res, &device);
        // The first forward compiles and autotunes (autotuning launches candidates): count
        // the second.
        drop(model.forward(x.clone()));
        let launches = launch_log::during(sync, || drop(model.forward(x.clone())));
        report(&format!("launches/encoder/{res}"), launches);
    }
    if !decode_part {
        launch_log::remove();
        return ExitCode::SUCCESS;
    }

    let decoder = config
        .init::<B>(&device, SEED)
        .expect("a released configuration");
    let h = config.hidden_size;
    let prompt =
        Tensor::<B, 3>::random([1, prompt_len, h], Distribution::Normal(0.0, 0.05), &device);
    let prefill = || {
        let mut cache = decoder.new_cache(1, prompt_len + 8, &device).unwrap();
        let logits = decoder.forward_last(prompt.clone(), &mut cache).unwrap();
        (logits.argmax(1).into_data(), cache)
    };
    drop(prefill());
    let launches = launch_log::during(sync, || drop(prefill()));
    report(
        &format!("launches/decode/{shape}/prefill/{prompt_len}"),
        launches,
    );

    let (_, mut cache) = prefill();
    let mut step = || {
        let logits = decoder
            .forward_last(step_embed(&decoder, 872), &mut cache)
            .unwrap();
        drop(logits.argmax(1).into_data());
    };
    step();
    step();
    let launches = launch_log::during(sync, step);
    report(&format!("launches/decode/{shape}/step"), launches);
    launch_log::remove();
    ExitCode::SUCCESS
}

/// CubeCL's kernel execution log, for `launches`.
mod launch_log {
    use std::path::PathBuf;
    use std::time::Duration;

    fn path() -> PathBuf {
        std::env::temp_dir().join(format!("fastvlm-launches-{}.log", std::process::id()))
    }

    /// Sends one line per kernel launch to [`path`]; call before any device is touched.
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    pub fn start() {
        use burn::cubecl::config::profiling::ProfilingLogLevel;
        use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        config.profiling.logger.level = ProfilingLogLevel::Minimal;
        config.profiling.logger.file = Some(path());
        config.profiling.logger.append = false;
        CubeClRuntimeConfig::set(config);
    }

    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    pub fn start() {}

    /// Deletes the log (one line per launch: megabytes per run).
    pub fn remove() {
        let _ = std::fs::remove_file(path());
    }

    pub fn active() -> bool {
        cfg!(any(feature = "wgpu", feature = "cuda"))
    }

    fn lines() -> Vec<String> {
        std::fs::read_to_string(path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("Executing"))
            .map(str::to_string)
            .collect()
    }

    /// The log's lines once it has stopped growing (it is written by a background task).
    fn settled() -> Vec<String> {
        let mut last = lines();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = lines();
            if now.len() == last.len() {
                return now;
            }
            last = now;
        }
    }

    /// The launches `f` makes (`sync` before and after).
    pub fn during(sync: impl Fn(), f: impl FnOnce()) -> Vec<String> {
        sync();
        let before = settled().len();
        f();
        sync();
        settled().split_off(before)
    }

    /// A launch's kernel without its type parameters: `Executing fused_matmul<…>` → `fused_matmul`.
    pub fn kind(line: &str) -> String {
        let name = line.trim_start_matches("Executing").trim();
        name.split(['<', '(', ' '])
            .next()
            .unwrap_or(name)
            .to_string()
    }
}

/// Peak resident set size of this process (VmHWM), KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}
