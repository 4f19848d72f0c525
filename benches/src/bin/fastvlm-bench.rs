//! `fastvlm-bench`: the measurements behind `cargo xtask bench-report`, one JSON line each, on
//! the backend compiled in (CPU by default, `--features cuda|wgpu`). A plain binary rather than
//! criterion's output, so the GPU machine (no Rust there) runs the same thing from one file.
//!
//! ```text
//! fastvlm-bench encoder  [--res 256,512,768,1024,1536] [--iters 5]
//! fastvlm-bench decoder  [--iters 5]            projector, prefill/{64,280,1024}, step
//! fastvlm-bench pipeline [--iters 3] [--tokens 32]  ttft_1024, decode tok/s, peak RSS
//!   all take [--backend cpu|wgpu|cuda] [--dtype f32|f16|bf16] (defaults as vlm-cli's)
//! ```
//! Every line carries the first call's time apart (kernel compilation and autotuning on GPUs)
//! and the median and minimum of the timed calls after it.

use std::process::ExitCode;
use std::time::Instant;

use benches::{
    PROMPT_PREFIX, PROMPT_SUFFIX, Pipeline, decoder_05b, encoder, image, projector_05b, sync,
};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use vlm_pipeline::backend::{self, Precision};

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend_name =
        flag(&args, "--backend").unwrap_or_else(|| backend::compiled()[0].to_string());
    let precision = match flag(&args, "--dtype").map(|d| d.parse::<Precision>()) {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        None => backend::default_precision(&backend_name),
    };
    if let Err(e) = backend::check(&backend_name, precision) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    #[allow(unused_imports)]
    use burn::tensor::{bf16, f16};
    match (backend_name.as_str(), precision) {
        #[cfg(feature = "cuda")]
        ("cuda", Precision::F32) => run::<backend::Cuda<f32>>(&args, &backend_name),
        #[cfg(feature = "cuda")]
        ("cuda", Precision::F16) => run::<backend::Cuda<f16>>(&args, &backend_name),
        #[cfg(feature = "cuda")]
        ("cuda", Precision::Bf16) => run::<backend::Cuda<bf16>>(&args, &backend_name),
        #[cfg(feature = "wgpu")]
        ("wgpu", Precision::F32) => run::<backend::Gpu<f32>>(&args, &backend_name),
        #[cfg(feature = "wgpu")]
        ("wgpu", _) => run::<backend::Gpu<f16>>(&args, &backend_name),
        _ => run::<backend::Cpu>(&args, &backend_name),
    }
}

fn run<B: Backend>(args: &[String], backend_name: &str) -> ExitCode {
    let iters: usize = flag(args, "--iters")
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(1);
    let device = B::Device::default();
    let dtype = format!("{:?}", Tensor::<B, 1>::zeros([1], &device).dtype()).to_lowercase();
    let tag = Tag {
        backend: backend_name.to_string(),
        dtype,
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
            run_pipeline::<B>(&tag, iters, tokens)
        }
        _ => {
            eprintln!(
                "usage: fastvlm-bench encoder|decoder|pipeline [--iters N] [--res R,…] [--tokens N] [--backend B] [--dtype D]"
            );
            ExitCode::FAILURE
        }
    }
}

/// What every line says it ran on.
struct Tag {
    backend: String,
    dtype: String,
}

impl Tag {
    fn json(&self) -> String {
        format!(
            "\"impl\": \"ours\", \"backend\": \"{}\", \"dtype\": \"{}\"",
            self.backend, self.dtype
        )
    }
}

/// Times `f` once (first call) and `iters` more times; prints the JSON line.
fn measure<T>(tag: &Tag, name: &str, iters: usize, mut f: impl FnMut() -> T) {
    let t = Instant::now();
    drop(f());
    let first = ms(t);
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
    let model = decoder_05b::<B>(&device);
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
    let token = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![872i64], [1, 1]), &device);
    // A step: embed, 24 layers with the cache, last-position logits, the id back on the host.
    measure(tag, "decoder/step", iters.max(16), || {
        let logits = model
            .forward_last(model.embed(token.clone()), &mut cache)
            .unwrap();
        logits.argmax(1).into_data()
    });
    ExitCode::SUCCESS
}

fn run_pipeline<B: Backend>(tag: &Tag, iters: usize, tokens: usize) -> ExitCode {
    let device = Default::default();
    let pipeline = Pipeline::<B>::new(&device);
    let pixels = image::<B>(1024, &device);
    measure(tag, "pipeline/ttft_1024", iters, || {
        pipeline.first_token(pixels.clone(), &PROMPT_PREFIX, &PROMPT_SUFFIX, &device)
    });
    // Greedy decoding after the 280-position prompt, one id to the host per token.
    let decoder = &pipeline.decoder;
    let embeds = Tensor::<B, 3>::random([1, 280, 896], Distribution::Normal(0.0, 0.05), &device);
    let decode = || {
        let mut cache = decoder.new_cache(1, 280 + tokens + 1, &device).unwrap();
        let mut logits = decoder.forward_last(embeds.clone(), &mut cache).unwrap();
        let t = Instant::now();
        for _ in 0..tokens {
            let id = logits.argmax(1);
            let host = id.clone().into_data();
            drop(host);
            logits = decoder.forward_last(decoder.embed(id), &mut cache).unwrap();
        }
        let _ = logits.into_data();
        tokens as f64 / t.elapsed().as_secs_f64()
    };
    let first = decode();
    let mut rates: Vec<f64> = (0..iters).map(|_| decode()).collect();
    rates.sort_by(f64::total_cmp);
    println!(
        "{{\"bench\": \"pipeline/decode\", {}, \"tok_per_s_median\": {:.3}, \"tok_per_s_first\": {first:.3}, \"tokens\": {tokens}, \"iters\": {iters}}}",
        tag.json(),
        rates[rates.len() / 2]
    );
    println!(
        "{{\"bench\": \"pipeline/peak_rss\", {}, \"peak_rss_mib\": {}}}",
        tag.json(),
        peak_rss_kib() / 1024
    );
    ExitCode::SUCCESS
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
