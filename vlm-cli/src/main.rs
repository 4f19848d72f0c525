//! `vlm-cli`: run FastVLM release directories from the command line.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::backend::Backend;
use clap::{Args, Parser, Subcommand};
use vlm_pipeline::backend::{self, Precision};
use vlm_pipeline::output::{PredictionJson, write_atomically};
use vlm_pipeline::prompt::DEFAULT_PROMPT;
use vlm_pipeline::{
    Activations, FastVlm, GenerationOptions, Message, Quantization, Request, Role, image, zoo,
};
use vlm_server::{Limits, ServeOptions};

/// `predict`'s sampling defaults are the pipeline's.
const DEFAULTS: GenerationOptions = GenerationOptions::DEFAULT;

#[derive(Parser)]
#[command(
    name = "vlm-cli",
    version,
    about = "Apple's FastVLM in Rust: describe images, extract image features"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer a prompt about an image (predict.py).
    Predict(PredictArgs),
    /// Write an image's features and projected tokens to a safetensors file.
    Encode(EncodeArgs),
    /// Describe a release directory: architecture, sizes, tokenizer.
    Info(ModelArgs),
    /// Download Apple's released checkpoints (resumable; a directory appears only when complete).
    Download(DownloadArgs),
    /// Serve the live webcam page and an OpenAI-compatible API (`/v1/chat/completions`).
    Serve(ServeArgs),
    /// Write a copy of a release with its language model quantized (MLX's layout: loads as is).
    Quantize(QuantizeArgs),
}

#[derive(Args)]
struct QuantizeArgs {
    /// The floating-point release directory to read.
    #[arg(long)]
    model_path: PathBuf,
    /// q8 or q4 (MLX's affine scheme, groups of 64; q4g32 etc. for other groups).
    #[arg(long, value_name = "q8|q4")]
    quant: Quantization,
    /// The new release directory (must not exist).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    /// A checkpoint to load at start; the page can load others from --models-root.
    #[arg(long)]
    model_path: Option<PathBuf>,
    /// Address to listen on (loopback by default; beyond it, give --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    #[arg(long, default_value_t = ServeOptions::DEFAULT_PORT)]
    port: u16,
    /// Directory of checkpoints the page and API may load (default: the download cache,
    /// $FASTVLM_HOME, else ~/.cache/fastvlm).
    #[arg(long)]
    models_root: Option<PathBuf>,
    /// Compute backend, among those compiled in.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Compute precision (f32, f16, bf16; default per backend as for predict).
    #[arg(long)]
    dtype: Option<Precision>,
    /// Quantize the language model's weights at load: q8 or q4 (as for predict).
    #[arg(long, value_name = "q8|q4")]
    quant: Option<Quantization>,
    /// How quantized weights meet the activations while decoding on the CPU: f32 or int8 (as
    /// for predict).
    #[arg(long, value_name = "f32|int8", default_value_t = Activations::F32)]
    activations: Activations,
    /// Requests that may wait behind the running one; more get 429 (0: a request is taken
    /// only while the model is idle).
    #[arg(long, default_value_t = ServeOptions::DEFAULT_QUEUE)]
    queue: usize,
    /// Largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = Limits::DEFAULT.max_tokens)]
    max_tokens: usize,
    /// Largest image accepted, in pixels (width × height).
    #[arg(long, default_value_t = Limits::DEFAULT.max_image_pixels)]
    max_image_pixels: u64,
    /// Longest image side accepted, in pixels.
    #[arg(long, default_value_t = Limits::DEFAULT.max_image_side)]
    max_image_side: u32,
    /// An origin whose pages may use the API and the WebSocket, besides the server's own
    /// loopback URLs (repeatable; e.g. https://app.example.org).
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// Require `Authorization: Bearer KEY` on the API and the WebSocket (default:
    /// $FASTVLM_API_KEY).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
}

/// Bounds on the input image, checked from its header before it is decoded.
#[derive(Args)]
struct ImageArgs {
    /// Largest image accepted, in pixels (width × height).
    #[arg(long, default_value_t = image::MAX_PIXELS)]
    max_image_pixels: u64,
    /// Longest image side accepted, in pixels.
    #[arg(long, default_value_t = image::MAX_SIDE)]
    max_image_side: u32,
}

impl ImageArgs {
    fn load(&self, path: &Path) -> Result<image::Rgb8, String> {
        let limits = image::ImageLimits::new(self.max_image_pixels, self.max_image_side);
        image::load_with(path, &limits).map_err(|e| e.to_string())
    }
}

#[derive(Args)]
struct DownloadArgs {
    /// fastvlm-0.5b, fastvlm-1.5b-stage2, … (a bare size is stage 3).
    models: Vec<String>,
    /// Every model of the zoo.
    #[arg(long, conflicts_with = "models")]
    all: bool,
    /// Where the model directories go (default: $FASTVLM_HOME, else ~/.cache/fastvlm).
    #[arg(long)]
    dest: Option<PathBuf>,
    /// Show the zoo, sizes, and what is present.
    #[arg(long)]
    list: bool,
}

#[derive(Args)]
struct ModelArgs {
    /// A FastVLM release directory (e.g. llava-fastvithd_0.5b_stage3, or a Hugging Face
    /// apple/FastVLM-0.5B download).
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    model_path: Option<PathBuf>,
    /// A released model by name (fastvlm-0.5b, fastvlm-7b-stage2, …; `download --list`),
    /// downloaded into the cache ($FASTVLM_HOME, else ~/.cache/fastvlm) on first use.
    #[arg(long)]
    model: Option<String>,
    /// Compute backend, among those compiled in.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Compute precision: f32, f16, bf16 (default: f32 on the CPU, bf16 on CUDA, f16 on wgpu
    /// where the adapter has shader-f16, else f32).
    #[arg(long)]
    dtype: Option<Precision>,
    /// Quantize the language model's weights at load: q8 or q4 (MLX's affine scheme, groups
    /// of 64). A release stored quantized loads as stored without it.
    #[arg(long, value_name = "q8|q4")]
    quant: Option<Quantization>,
    /// How quantized weights meet the activations while decoding on the CPU: f32 (exact, the
    /// default) or int8 (rounded per block of 32 as llama.cpp does: faster, slightly less
    /// exact; BENCHMARKS.md measures both).
    #[arg(long, value_name = "f32|int8", default_value_t = Activations::F32)]
    activations: Activations,
}

#[derive(Args)]
struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    image_file: Option<PathBuf>,
    #[command(flatten)]
    image_limits: ImageArgs,
    #[arg(long, default_value = DEFAULT_PROMPT)]
    prompt: String,
    /// Overrides the default system message ("You are a helpful assistant.").
    #[arg(long)]
    system_prompt: Option<String>,
    /// 0 decodes greedily.
    #[arg(long, default_value_t = DEFAULTS.temperature)]
    temperature: f32,
    #[arg(long, default_value_t = DEFAULTS.top_p)]
    top_p: f32,
    /// 0 disables top-k filtering.
    #[arg(long, default_value_t = DEFAULTS.top_k)]
    top_k: usize,
    #[arg(long, default_value_t = DEFAULTS.seed)]
    seed: u64,
    #[arg(long, default_value_t = DEFAULTS.max_new_tokens)]
    max_new_tokens: usize,
    /// Report the N most likely alternatives of every generated token (with --json).
    #[arg(long)]
    logprobs: Option<usize>,
    /// Print one JSON object (text, ids, logprobs, metrics) instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EncodeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    image_file: PathBuf,
    #[command(flatten)]
    image_limits: ImageArgs,
    /// Output `.safetensors`: `image_features` [tokens, 3072] and `projected` [tokens, hidden], f32.
    #[arg(long)]
    output: PathBuf,
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(report_panic));
    let cli = Cli::parse();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
        // The hook has said what.
        Err(_) => ExitCode::FAILURE,
    }
}

/// Any panic as one line on stderr, never a backtrace: `error: internal error: …` (a bug in
/// this program, whatever the input); the main thread's then ends the program with exit code 1.
fn report_panic(info: &std::panic::PanicHookInfo<'_>) {
    let message = panic_message(info.payload());
    let at = info
        .location()
        .map(|l| format!(" (at {}:{})", l.file(), l.line()))
        .unwrap_or_default();
    let thread = std::thread::current();
    let whose = match thread.name() {
        Some("main") | None => String::new(),
        Some(name) => format!(" in thread `{name}`"),
    };
    let line = message.lines().next().unwrap_or("");
    let _ = writeln!(
        std::io::stderr(),
        "error: internal error{whose}: {line}{at}"
    );
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

fn run(cli: Cli) -> Result<(), String> {
    // Lets the tests check that a panic is one line and exit code 1.
    if std::env::var_os("VLM_CLI_FORCE_PANIC").is_some() {
        panic!("forced by VLM_CLI_FORCE_PANIC");
    }
    // Before any device is touched: CubeCL reads its configuration once.
    backend::keep_compiled_kernels();
    backend::keep_freed_memory();
    let (backend, dtype) = match &cli.command {
        Command::Predict(a) => (&a.model.backend, a.model.dtype),
        Command::Encode(a) => (&a.model.backend, a.model.dtype),
        Command::Info(a) => (&a.backend, a.dtype),
        Command::Serve(a) => (&a.backend, a.dtype),
        Command::Download(a) => return download(a),
        Command::Quantize(a) => return quantize(a),
    };
    let selection = backend::Selection::new(backend, dtype)?;
    selection.run(Dispatch {
        command: &cli.command,
        selection: &selection,
    })
}

/// A command on the backend type the selection picked.
struct Dispatch<'a> {
    command: &'a Command,
    selection: &'a backend::Selection,
}

impl backend::Job for Dispatch<'_> {
    type Output = Result<(), String>;
    fn run<B: Backend>(self, device: B::Device) -> Result<(), String> {
        dispatch::<B>(self.command, self.selection, &device)
    }
}

fn dispatch<B: Backend>(
    command: &Command,
    selection: &backend::Selection,
    device: &B::Device,
) -> Result<(), String> {
    match command {
        Command::Predict(args) => predict::<B>(args, device),
        Command::Encode(args) => encode::<B>(args, device),
        Command::Info(args) => info::<B>(args, selection, device),
        Command::Download(args) => download(args),
        Command::Quantize(args) => quantize(args),
        Command::Serve(args) => serve::<B>(args, selection, device),
    }
}

fn serve<B: Backend>(
    args: &ServeArgs,
    selection: &backend::Selection,
    device: &B::Device,
) -> Result<(), String> {
    let models_root = match &args.models_root {
        Some(root) => root.clone(),
        None => {
            let home = zoo::home();
            std::fs::create_dir_all(&home)
                .map_err(|e| format!("cannot create `{}`: {e}", home.display()))?;
            home
        }
    };
    let mut options = ServeOptions::new(models_root);
    options.addr = std::net::SocketAddr::new(args.host, args.port);
    options.model_path = args.model_path.clone();
    options.backend = selection.label();
    options.queue_capacity = args.queue;
    options.limits.max_tokens = args.max_tokens;
    options.limits.max_image_pixels = args.max_image_pixels;
    options.limits.max_image_side = args.max_image_side;
    options.allowed_origins = args.allowed_origins.clone();
    options.quantization = args.quant;
    options.activations = args.activations;
    options.api_key = args
        .api_key
        .clone()
        .or_else(|| std::env::var("FASTVLM_API_KEY").ok())
        .filter(|k| !k.is_empty());
    if !args.host.is_loopback() && options.api_key.is_none() {
        eprintln!(
            "warning: listening on {} without an API key: anyone who reaches this address can use the model; pass --api-key KEY (or set FASTVLM_API_KEY)",
            options.addr
        );
    }
    // GPU backends compile kernels on first use: pay that at load, not on the first answer.
    options.warm_up = args.backend != "cpu";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let server = vlm_server::Server::bind::<B>(options.clone(), device.clone())
            .await
            .map_err(|e| e.to_string())?;
        let addr = server.local_addr().map_err(|e| e.to_string())?;
        eprintln!(
            "FastVLM on http://{addr}/ (backend {}, models root {}); Ctrl-C stops",
            options.backend,
            options.models_root.display()
        );
        server
            .run(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| e.to_string())
    })
}

impl ModelArgs {
    /// The model directory: `--model-path`, or `--model` from the cache, fetched when missing.
    fn directory(&self) -> Result<PathBuf, String> {
        match (&self.model_path, &self.model) {
            (Some(path), _) => Ok(path.clone()),
            (None, Some(name)) => {
                let entry = zoo::lookup(name).map_err(|e| e.to_string())?;
                fetch(entry, &zoo::home())
            }
            (None, None) => Err("give --model-path DIR or --model NAME".into()),
        }
    }
}

fn load<B: Backend>(args: &ModelArgs, device: &B::Device) -> Result<FastVlm<B>, String> {
    let mut model = load_from::<B>(&args.directory()?, device, args.quant)?;
    if model.set_activations(args.activations) == 0 && args.activations != Activations::F32 {
        eprintln!(
            "note: --activations {} has nothing to act on: the language model's weights are not quantized (add --quant q8|q4)",
            args.activations
        );
    }
    Ok(model)
}

fn load_from<B: Backend>(
    path: &Path,
    device: &B::Device,
    quantization: Option<Quantization>,
) -> Result<FastVlm<B>, String> {
    FastVlm::load_with(path, device, quantization, &mut |_| {})
        .map_err(|e| format!("cannot load `{}`: {e}", path.display()))
}

fn quantize(args: &QuantizeArgs) -> Result<(), String> {
    let mut shown = -1i32;
    let mut progress = |fraction: f32| {
        let percent = (fraction * 100.0) as i32;
        if percent != shown {
            shown = percent;
            eprint!("\rquantizing to {}: {percent:3}%", args.quant);
        }
    };
    let summary = vlm_pipeline::quantize::quantize_release(
        &args.model_path,
        &args.out,
        args.quant,
        &mut progress,
    )
    .map_err(|e| {
        if shown >= 0 {
            eprintln!();
        }
        format!("cannot quantize `{}`: {e}", args.model_path.display())
    })?;
    eprintln!();
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    println!(
        "wrote {}: {} matrices at {}, {} tensors copied, {:.2} GiB → {:.2} GiB in {} file(s)",
        args.out.display(),
        summary.quantized,
        args.quant,
        summary.copied,
        gib(summary.bytes_in),
        gib(summary.bytes_out),
        summary.shards
    );
    Ok(())
}

fn download(args: &DownloadArgs) -> Result<(), String> {
    let dest = args.dest.clone().unwrap_or_else(zoo::home);
    if args.list {
        println!("{:<22} {:>10}  present", "model", "≈ size");
        for entry in zoo::ZOO {
            let present = zoo::installed(entry, &dest).map(|p| p.display().to_string());
            println!(
                "{:<22} {:>7.1} GB  {}",
                entry.name,
                entry.approx_bytes as f64 / 1e9,
                present.unwrap_or_else(|| "-".into())
            );
        }
        return Ok(());
    }
    let entries: Vec<&zoo::ZooEntry> = if args.all {
        zoo::ZOO.iter().collect()
    } else if args.models.is_empty() {
        return Err("name the models to download (see `download --list`), or pass --all".into());
    } else {
        args.models
            .iter()
            .map(|m| zoo::lookup(m).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?
    };
    for entry in entries {
        let dir = fetch(entry, &dest)?;
        println!("{}: {}", entry.name, dir.display());
    }
    Ok(())
}

/// Downloads with a progress line on stderr; skips what is present.
fn fetch(entry: &zoo::ZooEntry, dest: &Path) -> Result<PathBuf, String> {
    if let Some(dir) = zoo::installed(entry, dest) {
        return Ok(dir);
    }
    let mut line = zoo::ProgressLine::new(entry, std::io::stderr());
    zoo::download(entry, dest, &mut |p| line.update(p)).map_err(|e| {
        line.finish();
        e.to_string()
    })
}

fn predict<B: Backend>(args: &PredictArgs, device: &B::Device) -> Result<(), String> {
    // Read the image first: a bad image should not cost a model load.
    let image = args
        .image_file
        .as_deref()
        .map(|p| args.image_limits.load(p))
        .transpose()?;
    let model = load::<B>(&args.model, device)?;
    let request = Request {
        image,
        system: args.system_prompt.clone(),
        messages: vec![Message {
            role: Role::User,
            content: args.prompt.clone(),
        }],
        options: GenerationOptions {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            seed: args.seed,
            max_new_tokens: args.max_new_tokens,
            logprobs: args.logprobs,
        },
    };
    let mut stdout = std::io::stdout().lock();
    let stream = !args.json;
    let output = model
        .generate(&request, &mut |event| {
            if stream {
                let _ = stdout.write_all(event.text.as_bytes());
                let _ = stdout.flush();
            }
            ControlFlow::Continue(())
        })
        .map_err(|e| e.to_string())?;
    if stream {
        writeln!(stdout).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let json = PredictionJson::new(output, &model.tokenizer);
    let line = serde_json::to_string(&json).map_err(|e| e.to_string())?;
    writeln!(stdout, "{line}").map_err(|e| e.to_string())
}

fn encode<B: Backend>(args: &EncodeArgs, device: &B::Device) -> Result<(), String> {
    let image = args.image_limits.load(&args.image_file)?;
    let model = load::<B>(&args.model, device)?;
    let data = model
        .encode_pixels(model.pixels(&image))
        .to_safetensors()
        .map_err(|e| format!("cannot serialize the features: {e}"))?;
    write_atomically(&args.output, &data).map_err(|e| e.to_string())
}

fn info<B: Backend>(
    args: &ModelArgs,
    selection: &backend::Selection,
    device: &B::Device,
) -> Result<(), String> {
    let path = args.directory()?;
    let model = load_from::<B>(&path, device, args.quant)?;
    let c = &model.config;
    let counts = c.parameter_counts();
    let h = c.decoder.hidden_size;
    let weights = vlm_pipeline::Weights::open(&path).map_err(|e| e.to_string())?;
    let stored = weights
        .dtype("model.embed_tokens.weight")
        .unwrap_or_else(|| "unknown".into());
    let lines = [
        format!("model:           {}", path.display()),
        format!(
            "vision tower:    FastViTHD {} (layers {:?}, widths {:?}), {:.2} M parameters",
            c.vision_tower,
            c.encoder.layers,
            c.encoder.embed_dims,
            counts.vision as f64 / 1e6
        ),
        format!(
            "image:           {0}×{0} → {1} tokens of {2}",
            c.image_size,
            c.image_tokens(),
            c.projector.in_features
        ),
        format!(
            "projector:       {}, {:.2} M parameters",
            c.projector.kind,
            counts.projector as f64 / 1e6
        ),
        format!(
            "language model:  Qwen2, {} layers, hidden {}, {} heads ({} KV), head_dim {}, {} head, {:.1} M parameters",
            c.decoder.num_hidden_layers,
            h,
            c.decoder.num_attention_heads,
            c.decoder.num_key_value_heads,
            c.decoder.head_dim(),
            if c.decoder.tie_word_embeddings {
                "tied"
            } else {
                "untied"
            },
            counts.language as f64 / 1e6
        ),
        format!(
            "vocabulary:      {} embedding rows, tokenizer {} tokens",
            c.decoder.vocab_size,
            model.tokenizer.len()
        ),
        format!(
            "context:         {} positions (prompt limit {})",
            c.decoder.max_position_embeddings, c.max_length
        ),
        format!(
            "stored dtype:    {stored} ({} file(s)); compute {} on {}",
            weights.files().count(),
            selection.precision,
            selection.backend
        ),
    ];
    println!("{}", lines.join("\n"));
    Ok(())
}
