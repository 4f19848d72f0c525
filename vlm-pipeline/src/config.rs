//! `config.json` of a FastVLM release directory (`llava_qwen2`).

use std::path::Path;

use fastvithd::FastVitHdConfig;
use qwen2_decoder::Qwen2Config;
use serde_json::Value;
use vlm_projector::ProjectorKind;

/// A `config.json` that cannot describe a FastVLM model.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not valid JSON: {reason}")]
    Json { path: String, reason: String },
    #[error("config.json: unsupported model_type `{0}` (this loads FastVLM's `llava_qwen2`)")]
    ModelType(String),
    #[error("config.json: `{key}` {problem}")]
    Field { key: &'static str, problem: String },
}

/// How a non-square image is made square before resizing (`image_aspect_ratio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AspectRatio {
    /// Pad to a square with black, image centred (`pad`, what FastVLM releases use).
    Pad,
    /// Resize the shortest edge and centre-crop (CLIPImageProcessor alone).
    CenterCrop,
}

/// What the pipeline reads from a release's `config.json`.
#[derive(Debug, Clone)]
pub struct FastVlmConfig {
    pub decoder: Qwen2Config,
    pub encoder: FastVitHdConfig,
    /// Side of the square input of the vision tower: the integer suffix of `mm_vision_tower`.
    pub image_size: usize,
    pub mm_vision_tower: String,
    /// Width of the image features, `mm_hidden_size` (3072).
    pub mm_hidden_size: usize,
    pub projector: ProjectorKind,
    pub aspect_ratio: AspectRatio,
    /// Spliced sequences are cut to this length, as the reference does (`tokenizer_model_max_length`).
    pub max_length: usize,
    /// `eos_token_id` of the config, if any.
    pub eos_token_id: Option<u32>,
}

/// Parameter counts of the three stages (BatchNorm statistics excluded; the vision tower's
/// unused `head.proj` too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterCounts {
    pub vision: usize,
    pub projector: usize,
    pub language: usize,
}

impl FastVlmConfig {
    /// Image tokens per image: `⌈size/64⌉²` (256 at 1024).
    pub fn image_tokens(&self) -> usize {
        let (h, w) = FastVitHdConfig::grid(self.image_size, self.image_size);
        h * w
    }

    pub fn parameter_counts(&self) -> ParameterCounts {
        let count = |tensors: Vec<(String, Vec<usize>)>| -> usize {
            tensors
                .iter()
                .filter(|(n, _)| !n.contains("running_"))
                .map(|(_, s)| s.iter().product::<usize>())
                .sum()
        };
        let h = self.decoder.hidden_size;
        let depth = self.projector.depth();
        ParameterCounts {
            vision: count(self.encoder.checkpoint_tensors()),
            projector: self.mm_hidden_size * h + (depth - 1) * h * h + depth * h,
            language: count(self.decoder.checkpoint_tensors()),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: shown.clone(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| ConfigError::Json {
            path: shown,
            reason: e.to_string(),
        })?;
        Self::from_json(&json)
    }

    pub fn from_json(json: &Value) -> Result<Self, ConfigError> {
        let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("");
        if model_type != "llava_qwen2" {
            return Err(ConfigError::ModelType(model_type.to_string()));
        }
        let usize_field = |key: &'static str| -> Result<usize, ConfigError> {
            match json.get(key) {
                Some(v) => v
                    .as_u64()
                    .map(|v| v as usize)
                    .ok_or_else(|| ConfigError::Field {
                        key,
                        problem: format!("must be a non-negative integer, found {v}"),
                    }),
                None => Err(ConfigError::Field {
                    key,
                    problem: "is missing".into(),
                }),
            }
        };
        let float_or = |key: &'static str, default: f64| -> Result<f64, ConfigError> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_f64().ok_or_else(|| ConfigError::Field {
                    key,
                    problem: format!("must be a number, found {v}"),
                }),
            }
        };
        let decoder = Qwen2Config {
            hidden_size: usize_field("hidden_size")?,
            intermediate_size: usize_field("intermediate_size")?,
            num_hidden_layers: usize_field("num_hidden_layers")?,
            num_attention_heads: usize_field("num_attention_heads")?,
            num_key_value_heads: match json.get("num_key_value_heads") {
                None | Some(Value::Null) => usize_field("num_attention_heads")?,
                Some(_) => usize_field("num_key_value_heads")?,
            },
            vocab_size: usize_field("vocab_size")?,
            rope_theta: float_or("rope_theta", 10_000.0)?,
            rms_norm_eps: float_or("rms_norm_eps", 1e-6)?,
            tie_word_embeddings: json
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            max_position_embeddings: match json.get("max_position_embeddings") {
                None => 32768,
                Some(_) => usize_field("max_position_embeddings")?,
            },
        };
        decoder.validate().map_err(|problem| ConfigError::Field {
            key: "hidden_size/num_attention_heads/num_key_value_heads",
            problem,
        })?;

        let tower = json
            .get("mm_vision_tower")
            .and_then(Value::as_str)
            .ok_or(ConfigError::Field {
                key: "mm_vision_tower",
                problem: "is missing".into(),
            })?
            .to_string();
        if !tower.contains("mobileclip") {
            return Err(ConfigError::Field {
                key: "mm_vision_tower",
                problem: format!("`{tower}` is not a MobileCLIP/FastViTHD tower"),
            });
        }
        let image_size = tower
            .rsplit('_')
            .next()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&s| s > 0)
            .ok_or_else(|| ConfigError::Field {
                key: "mm_vision_tower",
                problem: format!(
                    "`{tower}` does not end in an input resolution (like `mobileclip_l_1024`)"
                ),
            })?;
        let encoder = FastVitHdConfig::released();
        let mm_hidden_size = match json.get("mm_hidden_size") {
            None => encoder.out_channels(),
            Some(_) => usize_field("mm_hidden_size")?,
        };
        let projector = json
            .get("mm_projector_type")
            .and_then(Value::as_str)
            .unwrap_or("linear")
            .parse::<ProjectorKind>()
            .map_err(|problem| ConfigError::Field {
                key: "mm_projector_type",
                problem,
            })?;
        let aspect_ratio = match json.get("image_aspect_ratio").and_then(Value::as_str) {
            Some("pad") => AspectRatio::Pad,
            None | Some("square") => AspectRatio::CenterCrop,
            Some(other) => {
                return Err(ConfigError::Field {
                    key: "image_aspect_ratio",
                    problem: format!("`{other}` is not supported (expected `pad`)"),
                });
            }
        };
        let max_length = match json.get("tokenizer_model_max_length") {
            None | Some(Value::Null) => decoder.max_position_embeddings,
            Some(_) => usize_field("tokenizer_model_max_length")?,
        };
        let eos_token_id = json
            .get("eos_token_id")
            .and_then(Value::as_u64)
            .map(|v| v as u32);
        Ok(Self {
            decoder,
            encoder,
            image_size,
            mm_vision_tower: tower,
            mm_hidden_size,
            projector,
            aspect_ratio,
            max_length,
            eos_token_id,
        })
    }
}
