//! Writing a release whose language model is quantized in MLX's layout.
//!
//! Every Qwen2 projection and vocabulary table whose rows split into whole groups becomes
//! `{name}.weight` (`uint32` words), `{name}.scales` and `{name}.biases` (in the source's dtype,
//! as mlx-vlm stores them), and `config.json` gains `"quantization": {"group_size", "bits"}`;
//! everything else (vision tower, projector, norms, biases, tokenizer files) is copied as it is.
//! [`crate::FastVlm::load`] reads the result with no conversion. The directory is written
//! beside the target under a temporary name and renamed into place when complete, so a failed
//! or interrupted run leaves nothing behind.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use vlm_kernels::Quantization;
use vlm_kernels::quant::{ScaleType, quantize};

use crate::config::{ConfigError, FastVlmConfig};
use crate::weights::{Weights, WeightsError};

/// Shards of the output are cut near this size.
const SHARD_BYTES: usize = 2 << 30;

/// A failure to write a quantized release.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("`{0}` exists; give a new directory for the quantized release")]
    Exists(PathBuf),
    #[error("{0} checkpoints hold no language model to quantize")]
    NoLanguageModel(String),
    #[error("`{0}` is quantized already (it has `.scales`): quantize the floating-point release")]
    AlreadyQuantized(String),
    #[error("invalid quantization: {0}")]
    Scheme(String),
    #[error("cannot write `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot serialise `{path}`: {message}")]
    Serialize { path: PathBuf, message: String },
}

/// What [`quantize_release`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeSummary {
    /// Matrices stored quantized.
    pub quantized: usize,
    /// Tensors copied as they were.
    pub copied: usize,
    /// Tensor bytes read and written.
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub shards: usize,
}

/// One output tensor: name, safetensors dtype, shape, little-endian bytes.
struct Out {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Quantizes the release at `input` into a new directory `output` (see the module's text),
/// reporting the fraction of tensors done through `progress`.
pub fn quantize_release(
    input: &Path,
    output: &Path,
    scheme: Quantization,
    progress: &mut dyn FnMut(f32),
) -> Result<QuantizeSummary, QuantizeError> {
    scheme.check().map_err(QuantizeError::Scheme)?;
    if output.exists() {
        return Err(QuantizeError::Exists(output.to_path_buf()));
    }
    let config = FastVlmConfig::from_dir(input)?;
    let names = qwen2_decoder::names(config.convention)
        .ok_or_else(|| QuantizeError::NoLanguageModel(format!("{:?}", config.convention)))?;
    let weights = Weights::open(input)?;
    if let Some(name) = weights.names().into_iter().find(|n| n.ends_with(".scales")) {
        return Err(QuantizeError::AlreadyQuantized(name.to_string()));
    }

    // The matrices the loader reads quantized (`Params::linear_quantizable`, `table_quantizable`).
    let d = &config.decoder;
    let mut matrices: HashSet<String> = HashSet::new();
    for l in 0..d.num_hidden_layers {
        for proj in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
        ]
        .into_iter()
        .chain(["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"])
        {
            matrices.insert(names.resolve(&format!("model.layers.{l}.{proj}.weight")));
        }
    }
    matrices.insert(names.resolve("model.embed_tokens.weight"));
    let head = names.resolve("lm_head.weight");
    match d.tie_word_embeddings {
        true => {}
        false => {
            matrices.insert(head.clone());
        }
    }

    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "quantized".into());
    let staging = parent.join(format!(".{file_name}.partial-{}", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| QuantizeError::Io { path, source }
    };
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let result = write_release(
        input,
        &staging,
        &weights,
        (&matrices, d.tie_word_embeddings.then_some(head.as_str())),
        scheme,
        progress,
    )
    .and_then(|summary| {
        std::fs::rename(&staging, output).map_err(io(output))?;
        Ok(summary)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

fn write_release(
    input: &Path,
    staging: &Path,
    weights: &Weights,
    (matrices, dropped): (&HashSet<String>, Option<&str>),
    scheme: Quantization,
    progress: &mut dyn FnMut(f32),
) -> Result<QuantizeSummary, QuantizeError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| QuantizeError::Io { path, source }
    };
    let mut summary = QuantizeSummary {
        quantized: 0,
        copied: 0,
        bytes_in: 0,
        bytes_out: 0,
        shards: 0,
    };
    // Which tensors go to which shard, from sizes known before any value is read.
    let names: Vec<&str> = weights
        .names()
        .into_iter()
        .filter(|n| Some(*n) != dropped)
        .collect();
    let quantizes = |name: &str| {
        let shape = weights.shape(name).unwrap_or(&[]);
        let float = matches!(
            weights.dtype(name).as_deref(),
            Some("F32" | "F16" | "BF16" | "F64")
        );
        matrices.contains(name) && float && shape.len() == 2 && scheme.fits(shape[1])
    };
    let out_bytes = |name: &str| {
        let shape = weights.shape(name).unwrap_or(&[]);
        match quantizes(name) {
            true => {
                let (rows, cols) = (shape[0], shape[1]);
                let stored = weights
                    .raw(name)
                    .map_or(4, |(dtype, _, _)| dtype.bitsize() / 8);
                rows * cols * scheme.bits / 8 + 2 * rows * cols / scheme.group_size * stored
            }
            false => weights.raw(name).map_or(0, |(_, _, bytes)| bytes.len()),
        }
    };
    let mut shards: Vec<Vec<&str>> = vec![Vec::new()];
    let mut size = 0;
    for name in &names {
        let bytes = out_bytes(name);
        if size > 0 && size + bytes > SHARD_BYTES {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        shards.last_mut().expect("one shard at least").push(name);
    }
    let count = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut done = 0;
    progress(0.0);
    for (i, shard) in shards.iter().enumerate() {
        let file = match count {
            1 => "model.safetensors".to_string(),
            _ => format!("model-{:05}-of-{count:05}.safetensors", i + 1),
        };
        let mut outs: Vec<Out> = Vec::new();
        for &name in shard {
            let (dtype, shape, bytes) = weights.raw(name).expect("listed");
            summary.bytes_in += bytes.len();
            if quantizes(name) {
                let data = weights.get(name).expect("listed");
                let stored = ScaleType::of(data.dtype);
                let values = data.convert::<f32>().into_vec::<f32>().unwrap_or_default();
                let (rows, cols) = (shape[0], shape[1]);
                let q = quantize(&values, rows, cols, scheme, stored);
                let base = name.strip_suffix(".weight").unwrap_or(name);
                let groups = cols / scheme.group_size;
                outs.push(Out {
                    name: format!("{base}.weight"),
                    dtype: Dtype::U32,
                    shape: vec![rows, cols / scheme.per_word()],
                    bytes: q.packed.iter().flat_map(|w| w.to_le_bytes()).collect(),
                });
                for (suffix, values) in [("scales", &q.scales), ("biases", &q.biases)] {
                    outs.push(Out {
                        name: format!("{base}.{suffix}"),
                        dtype,
                        shape: vec![rows, groups],
                        bytes: encode(values, dtype),
                    });
                }
                summary.quantized += 1;
            } else {
                outs.push(Out {
                    name: name.to_string(),
                    dtype,
                    shape: shape.to_vec(),
                    bytes: bytes.to_vec(),
                });
                summary.copied += 1;
            }
            done += 1;
            progress(done as f32 / names.len().max(1) as f32);
        }
        let path = staging.join(&file);
        let views: Vec<(String, TensorView<'_>)> = outs
            .iter()
            .map(|o| {
                TensorView::new(o.dtype, o.shape.clone(), &o.bytes)
                    .map(|v| (o.name.clone(), v))
                    .map_err(|e| QuantizeError::Serialize {
                        path: path.clone(),
                        message: format!("{}: {e}", o.name),
                    })
            })
            .collect::<Result<_, _>>()?;
        summary.bytes_out += outs.iter().map(|o| o.bytes.len()).sum::<usize>();
        for o in &outs {
            weight_map.insert(o.name.clone(), serde_json::Value::String(file.clone()));
        }
        let metadata = Some(
            [("format".to_string(), "pt".to_string())]
                .into_iter()
                .collect(),
        );
        safetensors::serialize_to_file(views, metadata, &path).map_err(|e| {
            QuantizeError::Serialize {
                path: path.clone(),
                message: e.to_string(),
            }
        })?;
    }
    summary.shards = count;
    if count > 1 {
        let index = serde_json::json!({
            "metadata": {"total_size": summary.bytes_out},
            "weight_map": weight_map,
        });
        let path = staging.join("model.safetensors.index.json");
        std::fs::write(&path, index.to_string()).map_err(io(&path))?;
    }

    // config.json with MLX's quantization entry; every other file as it is.
    let config_path = input.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(io(&config_path))?;
    let mut config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| QuantizeError::Serialize {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
    let entry = serde_json::json!({"group_size": scheme.group_size, "bits": scheme.bits});
    if let Some(map) = config.as_object_mut() {
        map.insert("quantization".into(), entry.clone());
        map.insert("quantization_config".into(), entry);
    }
    let path = staging.join("config.json");
    let pretty = serde_json::to_string_pretty(&config).unwrap_or(text);
    std::fs::write(&path, pretty).map_err(io(&path))?;
    for entry in std::fs::read_dir(input).map_err(io(input))? {
        let entry = entry.map_err(io(input))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let skip = name == "config.json"
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json"
            || name.starts_with('.');
        if skip || !entry.file_type().map_err(io(&entry.path()))?.is_file() {
            continue;
        }
        let to = staging.join(&name);
        std::fs::copy(entry.path(), &to).map_err(io(&to))?;
    }
    Ok(summary)
}

/// f32 values as little-endian bytes of `dtype` (the scales and biases keep the source's type;
/// the values are exact in it, [`quantize`] rounded them so).
fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::F64 => values
            .iter()
            .flat_map(|&v| (v as f64).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
    }
}
