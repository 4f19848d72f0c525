//! `vlm-cli`: run FastVLM release directories from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::backend::Backend;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use vlm_pipeline::{FastVlm, GenerationOptions, Message, Request, Role, image};

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
}

#[derive(Args)]
struct ModelArgs {
    /// A FastVLM release directory (e.g. llava-fastvithd_0.5b_stage3).
    #[arg(long)]
    model_path: PathBuf,
    /// Compute backend, among those compiled in.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Compute precision.
    #[arg(long, value_enum, default_value_t = DType::F32)]
    dtype: DType,
}

#[derive(Clone, Copy, ValueEnum)]
enum DType {
    F32,
}

#[derive(Args)]
struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    image_file: Option<PathBuf>,
    #[arg(long, default_value = "Describe the image.")]
    prompt: String,
    /// Overrides the default system message ("You are a helpful assistant.").
    #[arg(long)]
    system_prompt: Option<String>,
    /// 0 decodes greedily.
    #[arg(long, default_value_t = 0.2)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 disables top-k filtering.
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 256)]
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
    /// Output `.safetensors`: `image_features` [tokens, 3072] and `projected` [tokens, hidden], f32.
    #[arg(long)]
    output: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let model = match &cli.command {
        Command::Predict(a) => &a.model,
        Command::Encode(a) => &a.model,
        Command::Info(a) => a,
    };
    let _ = model.dtype;
    match model.backend.as_str() {
        "cpu" => dispatch::<vlm_pipeline::backend::Cpu>(&cli.command, &Default::default()),
        #[cfg(feature = "wgpu")]
        "wgpu" => dispatch::<vlm_pipeline::backend::Gpu>(&cli.command, &Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => dispatch::<vlm_pipeline::backend::Cuda>(&cli.command, &Default::default()),
        other => Err(format!(
            "backend `{other}` is not compiled into this binary (available: {})",
            vlm_pipeline::backend::compiled().join(", ")
        )),
    }
}

fn dispatch<B: Backend>(command: &Command, device: &B::Device) -> Result<(), String> {
    match command {
        Command::Predict(args) => predict::<B>(args, device),
        Command::Encode(args) => encode::<B>(args, device),
        Command::Info(args) => info::<B>(args, device),
    }
}

fn load<B: Backend>(path: &Path, device: &B::Device) -> Result<FastVlm<B>, String> {
    FastVlm::load(path, device).map_err(|e| format!("cannot load `{}`: {e}", path.display()))
}

#[derive(Serialize)]
struct JsonLogprob {
    token: u32,
    token_text: String,
    logprob: f32,
    top_logprobs: Vec<JsonAlternative>,
}

#[derive(Serialize)]
struct JsonAlternative {
    token: u32,
    token_text: String,
    logprob: f32,
}

#[derive(Serialize)]
struct JsonOutput {
    text: String,
    token_ids: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<Vec<JsonLogprob>>,
    finish_reason: vlm_pipeline::FinishReason,
    metrics: vlm_pipeline::Metrics,
}

fn predict<B: Backend>(args: &PredictArgs, device: &B::Device) -> Result<(), String> {
    // Read the image first: a bad image should not cost a model load.
    let image = args
        .image_file
        .as_deref()
        .map(image::load)
        .transpose()
        .map_err(|e| e.to_string())?;
    let model = load::<B>(&args.model.model_path, device)?;
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
    let mut started = false;
    let output = model
        .generate(&request, &mut |event| {
            if stream {
                // The reference strips leading whitespace of the answer.
                let text = if started {
                    event.text
                } else {
                    event.text.trim_start()
                };
                started |= !text.is_empty();
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
        })
        .map_err(|e| e.to_string())?;
    if stream {
        writeln!(stdout).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let text_of = |id: u32| model.tokenizer.decode(&[id], false).unwrap_or_default();
    let json = JsonOutput {
        text: output.text,
        token_ids: output.token_ids,
        logprobs: output.logprobs.map(|steps| {
            steps
                .into_iter()
                .map(|s| JsonLogprob {
                    token: s.token,
                    token_text: text_of(s.token),
                    logprob: s.logprob,
                    top_logprobs: s
                        .top
                        .into_iter()
                        .map(|(token, logprob)| JsonAlternative {
                            token,
                            token_text: text_of(token),
                            logprob,
                        })
                        .collect(),
                })
                .collect()
        }),
        finish_reason: output.finish_reason,
        metrics: output.metrics,
    };
    let line = serde_json::to_string(&json).map_err(|e| e.to_string())?;
    writeln!(stdout, "{line}").map_err(|e| e.to_string())
}

fn encode<B: Backend>(args: &EncodeArgs, device: &B::Device) -> Result<(), String> {
    let image = image::load(&args.image_file).map_err(|e| e.to_string())?;
    let model = load::<B>(&args.model.model_path, device)?;
    let encoded = model.encode_pixels(model.pixels(&image));
    let tensors = [
        ("image_features", encoded.features),
        ("projected", encoded.projected),
    ]
    .map(|(name, t)| {
        let [_, tokens, width] = t.dims();
        let values = t
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("float tensor");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        (name, vec![tokens, width], bytes)
    });
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .expect("shape matches the data");
            (*name, view)
        })
        .collect();
    let data = safetensors::serialize(views, None).map_err(|e| e.to_string())?;
    write_atomically(&args.output, &data)
}

/// Writes through a temporary file in the same directory, then renames: a reader never sees
/// half a file, and a failure leaves nothing behind.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| format!("`{}` is not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.partial", name.to_string_lossy()));
    let result = std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write `{}`: {e}", path.display())
    })
}

fn info<B: Backend>(args: &ModelArgs, device: &B::Device) -> Result<(), String> {
    let model = load::<B>(&args.model_path, device)?;
    let c = &model.config;
    let counts = c.parameter_counts();
    let h = c.decoder.hidden_size;
    let weights = vlm_pipeline::Weights::open(&args.model_path).map_err(|e| e.to_string())?;
    let stored = weights
        .dtype("model.embed_tokens.weight")
        .unwrap_or_else(|| "unknown".into());
    let lines = [
        format!("model:           {}", args.model_path.display()),
        format!(
            "vision tower:    FastViTHD {} (layers {:?}, widths {:?}), {:.2} M parameters",
            c.mm_vision_tower,
            c.encoder.layers,
            c.encoder.embed_dims,
            counts.vision as f64 / 1e6
        ),
        format!(
            "image:           {0}×{0} → {1} tokens of {2}",
            c.image_size,
            c.image_tokens(),
            c.mm_hidden_size
        ),
        format!(
            "projector:       {:?}, {:.2} M parameters",
            c.projector,
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
            "stored dtype:    {stored} ({} file(s)); compute f32 on {}",
            weights.files().count(),
            args.backend
        ),
    ];
    println!("{}", lines.join("\n"));
    Ok(())
}
