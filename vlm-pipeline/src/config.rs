//! A release directory's configuration: Apple's `config.json` (`llava_qwen2`), or Hugging
//! Face's `fast_vlm` one with its `preprocessor_config.json`.
//!
//! Each model's part is its crate's config deserialised from the file (defaults in that
//! crate); this module only finds the parts and checks the values that size the pipeline's
//! own tensors.

use std::path::Path;

use fastvithd::FastVitHdConfig;
use qwen2_decoder::{Convention, Qwen2Config};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use vlm_projector::{ProjectorConfig, ProjectorKind};

/// A configuration that cannot describe a FastVLM model.
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
    #[error(
        "config.json: unsupported model_type `{0}` (this loads FastVLM's `llava_qwen2` and Hugging Face's `fast_vlm`)"
    )]
    ModelType(String),
    #[error("{file}: `{key}` {problem}")]
    Field {
        file: &'static str,
        key: String,
        problem: String,
    },
}

/// How a non-square image is made square before resizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AspectRatio {
    /// Pad to a square with black, image centred (Apple's `image_aspect_ratio: pad`).
    Pad,
    /// Resize the shortest edge and centre-crop (CLIPImageProcessor alone).
    CenterCrop,
}

/// Smallest and largest input side the vision tower is run at (the released side is 1024; the
/// side sizes every map of the encoder).
const IMAGE_SIDES: std::ops::RangeInclusive<usize> = 32..=4096;

/// What the pipeline reads from a release directory's configuration.
#[derive(Debug, Clone)]
pub struct FastVlmConfig {
    /// How the checkpoint names its tensors.
    pub convention: Convention,
    pub decoder: Qwen2Config,
    /// The tower's depths and widths (read off the checkpoint's shapes at load).
    pub encoder: FastVitHdConfig,
    pub projector: ProjectorConfig,
    /// Side of the square input of the vision tower.
    pub image_size: usize,
    /// The tower's name (`mm_vision_tower`, or the timm architecture).
    pub vision_tower: String,
    pub aspect_ratio: AspectRatio,
    /// Spliced sequences are cut to this length, as the reference does
    /// (`tokenizer_model_max_length`).
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

/// The keys of Apple's `config.json` beyond the language model's and the projector's.
#[derive(Deserialize)]
struct Apple {
    mm_vision_tower: String,
    #[serde(default)]
    image_aspect_ratio: Option<String>,
    #[serde(default)]
    tokenizer_model_max_length: Option<usize>,
    #[serde(default)]
    eos_token_id: Option<u32>,
}

/// Hugging Face's `fast_vlm` `config.json`.
#[derive(Deserialize)]
struct HuggingFace {
    text_config: Value,
    #[serde(default)]
    vision_config: Vision,
    #[serde(default = "gelu")]
    projector_hidden_act: String,
    #[serde(default = "yes")]
    multimodal_projector_bias: bool,
}

#[derive(Deserialize)]
struct Vision {
    #[serde(default = "fastvit_mci3")]
    architecture: String,
    #[serde(default = "image_features")]
    hidden_size: usize,
}

impl Default for Vision {
    fn default() -> Self {
        Self {
            architecture: fastvit_mci3(),
            hidden_size: image_features(),
        }
    }
}

fn gelu() -> String {
    "gelu".into()
}
fn yes() -> bool {
    true
}
fn fastvit_mci3() -> String {
    "fastvit_mci3".into()
}
fn image_features() -> usize {
    FastVitHdConfig::released().out_channels()
}

/// `preprocessor_config.json` of a Hugging Face directory (CLIPImageProcessor's keys).
#[derive(Deserialize, Default)]
struct Preprocessor {
    #[serde(default)]
    crop_size: Option<Side>,
    #[serde(default)]
    size: Option<Side>,
    #[serde(default)]
    do_pad: bool,
}

#[derive(Deserialize)]
struct Side {
    #[serde(default, alias = "shortest_edge")]
    height: Option<usize>,
}

/// `value` as `T`, an error naming the key path otherwise.
fn parse<T: DeserializeOwned>(value: &Value, file: &'static str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde names a missing field in its message, at the level above it.
        let key = inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(|field| match path.as_str() {
                "." => field.to_string(),
                parent => format!("{parent}.{field}"),
            })
            .unwrap_or(path);
        ConfigError::Field {
            file,
            key,
            problem: inner,
        }
    })
}

fn read_json(path: &Path) -> Result<Value, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: shown.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ConfigError::Json {
        path: shown,
        reason: e.to_string(),
    })
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
        ParameterCounts {
            vision: count(self.encoder.checkpoint_tensors()),
            projector: self.projector.parameters(),
            language: count(self.decoder.checkpoint_tensors()),
        }
    }

    /// The configuration of the release directory `dir`: its `config.json`, and for Hugging
    /// Face's layout its `preprocessor_config.json` when present.
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        let json = read_json(&dir.join("config.json"))?;
        let preprocessor = dir.join("preprocessor_config.json");
        let preprocessor = match preprocessor.is_file() {
            true => Some(read_json(&preprocessor)?),
            false => None,
        };
        Self::from_json(&json, preprocessor.as_ref())
    }

    /// A configuration from `config.json`'s contents (and `preprocessor_config.json`'s).
    pub fn from_json(json: &Value, preprocessor: Option<&Value>) -> Result<Self, ConfigError> {
        let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("");
        let config = match model_type {
            "llava_qwen2" => Self::apple(json)?,
            "fast_vlm" => Self::hugging_face(json, preprocessor)?,
            other => return Err(ConfigError::ModelType(other.to_string())),
        };
        config.validate()?;
        Ok(config)
    }

    fn apple(json: &Value) -> Result<Self, ConfigError> {
        const FILE: &str = "config.json";
        let decoder: Qwen2Config = parse(json, FILE)?;
        let projector: ProjectorConfig = parse(json, FILE)?;
        let apple: Apple = parse(json, FILE)?;
        let field = |key: &str, problem: String| ConfigError::Field {
            file: FILE,
            key: key.into(),
            problem,
        };
        let tower = apple.mm_vision_tower;
        if !tower.contains("mobileclip") {
            return Err(field(
                "mm_vision_tower",
                format!("`{tower}` is not a MobileCLIP/FastViTHD tower"),
            ));
        }
        let image_size = tower
            .rsplit('_')
            .next()
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(|| {
                field(
                    "mm_vision_tower",
                    format!(
                        "`{tower}` does not end in an input resolution (like `mobileclip_l_1024`)"
                    ),
                )
            })?;
        let aspect_ratio = match apple.image_aspect_ratio.as_deref() {
            Some("pad") => AspectRatio::Pad,
            None | Some("square") => AspectRatio::CenterCrop,
            Some(other) => {
                return Err(field(
                    "image_aspect_ratio",
                    format!("`{other}` is not supported (expected `pad`)"),
                ));
            }
        };
        Ok(Self {
            convention: Convention::Apple,
            max_length: apple
                .tokenizer_model_max_length
                .unwrap_or(decoder.max_position_embeddings),
            decoder,
            encoder: FastVitHdConfig::released(),
            projector,
            image_size,
            vision_tower: tower,
            aspect_ratio,
            eos_token_id: apple.eos_token_id,
        })
    }

    fn hugging_face(json: &Value, preprocessor: Option<&Value>) -> Result<Self, ConfigError> {
        const FILE: &str = "config.json";
        let hf: HuggingFace = parse(json, FILE)?;
        let field = |key: &str, problem: String| ConfigError::Field {
            file: FILE,
            key: key.into(),
            problem,
        };
        let decoder: Qwen2Config = parse(&hf.text_config, FILE).map_err(|e| match e {
            ConfigError::Field { key, problem, .. } => {
                field(&format!("text_config.{key}"), problem)
            }
            other => other,
        })?;
        if hf.vision_config.architecture != "fastvit_mci3" {
            return Err(field(
                "vision_config.architecture",
                format!(
                    "`{}` is not FastViTHD (`fastvit_mci3`)",
                    hf.vision_config.architecture
                ),
            ));
        }
        if hf.projector_hidden_act != "gelu" {
            return Err(field(
                "projector_hidden_act",
                format!(
                    "`{}` is not supported (expected `gelu`)",
                    hf.projector_hidden_act
                ),
            ));
        }
        let projector = ProjectorConfig {
            kind: ProjectorKind::MlpGelu { depth: 2 },
            in_features: hf.vision_config.hidden_size,
            hidden: decoder.hidden_size,
            bias: hf.multimodal_projector_bias,
        };
        let pre: Preprocessor = match preprocessor {
            Some(value) => parse(value, "preprocessor_config.json")?,
            None => Preprocessor::default(),
        };
        let side = |s: &Option<Side>| s.as_ref().and_then(|s| s.height);
        let image_size = side(&pre.crop_size).or(side(&pre.size)).unwrap_or(1024);
        let eos_token_id = json
            .get("eos_token_id")
            .or_else(|| hf.text_config.get("eos_token_id"))
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok());
        Ok(Self {
            convention: Convention::HuggingFace,
            max_length: decoder.max_position_embeddings,
            decoder,
            encoder: FastVitHdConfig::released(),
            projector,
            image_size,
            vision_tower: hf.vision_config.architecture,
            aspect_ratio: match pre.do_pad {
                true => AspectRatio::Pad,
                false => AspectRatio::CenterCrop,
            },
            eos_token_id,
        })
    }

    /// The values that size tensors: each model's own checks, the image side, and the
    /// projector's widths against the language model's.
    fn validate(&self) -> Result<(), ConfigError> {
        let field = |key: &str, problem: String| ConfigError::Field {
            file: "config.json",
            key: key.into(),
            problem,
        };
        self.decoder.validate().map_err(|problem| {
            field(
                "hidden_size/num_attention_heads/num_key_value_heads",
                problem,
            )
        })?;
        self.projector
            .validate()
            .map_err(|problem| field("mm_hidden_size", problem))?;
        if !IMAGE_SIDES.contains(&self.image_size) {
            return Err(field(
                "image size",
                format!(
                    "{} px is outside {}..={} (`{}`)",
                    self.image_size,
                    IMAGE_SIDES.start(),
                    IMAGE_SIDES.end(),
                    self.vision_tower
                ),
            ));
        }
        if self.max_length == 0 {
            return Err(field(
                "tokenizer_model_max_length",
                "must be positive".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apple() -> Value {
        serde_json::from_str(include_str!("../../fixtures/e2e/tiny-fastvlm/config.json")).unwrap()
    }

    #[test]
    fn apples_config_gives_every_part() {
        let c = FastVlmConfig::from_json(&apple(), None).unwrap();
        assert_eq!(c.convention, Convention::Apple);
        assert_eq!(
            (c.decoder.hidden_size, c.decoder.num_key_value_heads),
            (64, 2)
        );
        assert_eq!(c.decoder.rope_theta, 1e6);
        assert!(c.decoder.tie_word_embeddings);
        assert_eq!(c.projector.kind, ProjectorKind::MlpGelu { depth: 2 });
        assert_eq!((c.projector.in_features, c.projector.hidden), (256, 64));
        assert_eq!((c.image_size, c.aspect_ratio), (256, AspectRatio::Pad));
        assert_eq!((c.max_length, c.eos_token_id), (8192, Some(322)));
    }

    #[test]
    fn errors_name_the_field() {
        let mut json = apple();
        json["num_hidden_layers"] = "two".into();
        let err = FastVlmConfig::from_json(&json, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`num_hidden_layers`"), "{err}");
        let mut json = apple();
        json.as_object_mut().unwrap().remove("vocab_size");
        let err = FastVlmConfig::from_json(&json, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`vocab_size`"), "{err}");
        let mut json = apple();
        json["mm_vision_tower"] = "mobileclip_l_1000000".into();
        let err = FastVlmConfig::from_json(&json, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1000000 px"), "{err}");
        let mut json = apple();
        json["hidden_size"] = 0.into();
        assert!(FastVlmConfig::from_json(&json, None).is_err());
        json["model_type"] = "llama".into();
        assert!(matches!(
            FastVlmConfig::from_json(&json, None),
            Err(ConfigError::ModelType(t)) if t == "llama"
        ));
    }

    #[test]
    fn hugging_faces_config_nests_the_same_parts() {
        let json: Value = serde_json::json!({
            "model_type": "fast_vlm",
            "text_config": {
                "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "vocab_size": 328, "rope_theta": 1000000.0, "tie_word_embeddings": true,
                "eos_token_id": 322
            },
            "vision_config": {"architecture": "fastvit_mci3", "hidden_size": 256},
            "projector_hidden_act": "gelu",
            "multimodal_projector_bias": true
        });
        let pre = serde_json::json!({"crop_size": {"height": 256, "width": 256}, "size": {"shortest_edge": 256}});
        let c = FastVlmConfig::from_json(&json, Some(&pre)).unwrap();
        let apple = FastVlmConfig::from_json(&apple(), None).unwrap();
        assert_eq!(c.convention, Convention::HuggingFace);
        assert_eq!(c.decoder, apple.decoder);
        assert_eq!(c.projector, apple.projector);
        assert_eq!(
            (c.image_size, c.aspect_ratio),
            (256, AspectRatio::CenterCrop)
        );
        assert_eq!(c.eos_token_id, Some(322));
        let mut bad = json.clone();
        bad["text_config"]["num_attention_heads"] = (-4).into();
        let err = FastVlmConfig::from_json(&bad, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("text_config.num_attention_heads"), "{err}");
    }
}
