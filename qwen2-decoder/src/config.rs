use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use vlm_kernels::loader::{Draw, Init, LoadError};

use crate::Qwen2;

/// Qwen2 hyper-parameters, named as in Hugging Face's `config.json` (Apple's FastVLM configs
/// carry the same keys at their top level, Hugging Face's `fast_vlm` ones under
/// `text_config`). Absent optional keys take transformers' `Qwen2Config` defaults; unknown keys
/// are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Fields")]
pub struct Qwen2Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// transformers' default: `num_attention_heads` (no grouping).
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    /// `rope_theta`, or `rope_parameters.rope_theta` as transformers 5 writes it; the default
    /// (unscaled) rotary embedding is the only one Qwen2's FastVLM uses.
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
}

/// `config.json` as written, before the defaults that depend on other keys.
#[derive(Deserialize)]
struct Fields {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    vocab_size: usize,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
    /// transformers 4's name for the rotary embedding's scaling (`null` when unscaled).
    #[serde(default)]
    rope_scaling: Option<RopeParameters>,
    #[serde(default = "Qwen2Config::default_rms_norm_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "Qwen2Config::default_max_position_embeddings")]
    max_position_embeddings: usize,
}

/// transformers' `rope_parameters` (and `rope_scaling`).
#[derive(Deserialize)]
struct RopeParameters {
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default, alias = "type")]
    rope_type: Option<String>,
}

impl TryFrom<Fields> for Qwen2Config {
    type Error = String;

    fn try_from(f: Fields) -> Result<Self, String> {
        for (key, rope) in [
            ("rope_parameters", &f.rope_parameters),
            ("rope_scaling", &f.rope_scaling),
        ] {
            if let Some(kind) = rope.as_ref().and_then(|r| r.rope_type.as_deref())
                && kind != "default"
            {
                return Err(format!(
                    "`{key}.rope_type` is `{kind}`: only the default (unscaled) rotary embedding is supported"
                ));
            }
        }
        let nested = f.rope_parameters.as_ref().and_then(|r| r.rope_theta);
        Ok(Self {
            hidden_size: f.hidden_size,
            intermediate_size: f.intermediate_size,
            num_hidden_layers: f.num_hidden_layers,
            num_attention_heads: f.num_attention_heads,
            num_key_value_heads: f.num_key_value_heads.unwrap_or(f.num_attention_heads),
            vocab_size: f.vocab_size,
            rope_theta: f
                .rope_theta
                .or(nested)
                .unwrap_or_else(Self::default_rope_theta),
            rms_norm_eps: f.rms_norm_eps,
            tie_word_embeddings: f.tie_word_embeddings,
            max_position_embeddings: f.max_position_embeddings,
        })
    }
}

impl burn::config::Config for Qwen2Config {}

impl Qwen2Config {
    fn default_rope_theta() -> f64 {
        10_000.0
    }

    fn default_rms_norm_eps() -> f64 {
        1e-6
    }

    fn default_max_position_embeddings() -> usize {
        32_768
    }

    /// A model of these sizes with the other fields at their defaults (untied head).
    pub fn new(
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        vocab_size: usize,
    ) -> Self {
        Self {
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            vocab_size,
            rope_theta: Self::default_rope_theta(),
            rms_norm_eps: Self::default_rms_norm_eps(),
            tie_word_embeddings: false,
            max_position_embeddings: Self::default_max_position_embeddings(),
        }
    }

    pub fn with_tie_word_embeddings(self, tie_word_embeddings: bool) -> Self {
        Self {
            tie_word_embeddings,
            ..self
        }
    }

    pub fn with_num_hidden_layers(self, num_hidden_layers: usize) -> Self {
        Self {
            num_hidden_layers,
            ..self
        }
    }

    /// The language models of FastVLM by size (`0.5b`, `1.5b`, `7b`: Qwen2-0.5B, Qwen2-1.5B,
    /// Qwen2-7B as FastVLM's configs give them).
    pub fn fastvlm(size: &str) -> Option<Self> {
        let config = match size {
            "0.5b" => Self::new(896, 4864, 24, 14, 2, 151_936).with_tie_word_embeddings(true),
            "1.5b" => Self::new(1536, 8960, 28, 12, 2, 151_936).with_tie_word_embeddings(true),
            "7b" => Self::new(3584, 18_944, 28, 28, 4, 152_064),
            _ => return None,
        };
        Some(Self {
            rope_theta: 1e6,
            ..config
        })
    }

    /// Channels per attention head (`hidden_size / num_attention_heads`): 64 for 0.5B, 128 for 1.5B/7B.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The model with random weights (seeded by `seed`): projections uniform in ±√(3 / fan-in),
    /// embeddings in ±0.05, norms near one; drawn on the device, so a 7B shape never passes
    /// through the host.
    pub fn init<B: Backend>(&self, device: &B::Device, seed: u64) -> Result<Qwen2<B>, LoadError> {
        let blocks = vlm_kernels::ops::max_binding_bytes::<B>(device);
        self.init_blocked(device, seed, blocks)
    }

    /// [`Self::init`] with vocabulary blocks of at most `max_block_bytes` (at f32).
    pub fn init_blocked<B: Backend>(
        &self,
        device: &B::Device,
        seed: u64,
        max_block_bytes: usize,
    ) -> Result<Qwen2<B>, LoadError> {
        Qwen2::build(self, &mut Init::new(device, seed, draw), max_block_bytes)
    }

    /// [`Self::init_blocked`] with the linear layers and vocabulary tables quantized to
    /// `quantization` (their values drawn on the host, then quantized as a checkpoint's would
    /// be at load).
    pub fn init_quantized<B: Backend>(
        &self,
        device: &B::Device,
        seed: u64,
        max_block_bytes: usize,
        quantization: Option<vlm_kernels::Quantization>,
    ) -> Result<Qwen2<B>, LoadError> {
        let mut params = Init::new(device, seed, draw).with_quantization(quantization);
        Qwen2::build(self, &mut params, max_block_bytes)
    }

    /// Checks the invariants grouped-query attention and rotary embeddings rely on, and sizes a
    /// checkpoint can have (the sizes allocate caches and tables before any tensor is read).
    pub fn validate(&self) -> Result<(), String> {
        let fields = [
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 10),
            ("num_attention_heads", self.num_attention_heads, 1 << 10),
            ("num_key_value_heads", self.num_key_value_heads, 1 << 10),
            ("vocab_size", self.vocab_size, 1 << 22),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 24,
            ),
        ];
        for (name, value, most) in fields {
            if !(1..=most).contains(&value) {
                return Err(format!("Qwen2: `{name}` is {value}, expected 1..={most}"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "Qwen2: hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "Qwen2: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "Qwen2: head_dim {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.rope_theta) || !positive(self.rms_norm_eps) {
            return Err(format!(
                "Qwen2: rope_theta {} and rms_norm_eps {} must be positive",
                self.rope_theta, self.rms_norm_eps
            ));
        }
        Ok(())
    }

    /// Every tensor the model reads, by Hugging Face name and shape. A stored `lm_head.weight`
    /// of a tied model is not among them (the embedding is the output projection).
    pub fn checkpoint_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let kv = self.num_key_value_heads * self.head_dim();
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab_size, h],
        )];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            out.extend([
                (format!("{p}.input_layernorm.weight"), vec![h]),
                (format!("{p}.self_attn.q_proj.weight"), vec![h, h]),
                (format!("{p}.self_attn.q_proj.bias"), vec![h]),
                (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.k_proj.bias"), vec![kv]),
                (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.v_proj.bias"), vec![kv]),
                (format!("{p}.self_attn.o_proj.weight"), vec![h, h]),
                (format!("{p}.post_attention_layernorm.weight"), vec![h]),
                (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
                (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
                (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
            ]);
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        out
    }
}

/// How [`Qwen2Config::init`] draws each tensor.
fn draw(name: &str, shape: &[usize]) -> Draw {
    if name.ends_with("norm.weight") {
        Draw::around(1.0, 0.1)
    } else if name.ends_with(".bias") {
        Draw::uniform(0.02)
    } else if name.contains("embed_tokens") || name.starts_with("lm_head") {
        Draw::uniform(0.05)
    } else {
        Draw::fan_in(shape, 3.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deserialises_with_transformers_defaults_and_names_bad_fields() {
        let config: Qwen2Config = serde_json::from_str(
            r#"{"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                "num_attention_heads": 4, "vocab_size": 50, "model_type": "qwen2"}"#,
        )
        .unwrap();
        assert_eq!(config, Qwen2Config::new(64, 96, 2, 4, 4, 50));
        let json = serde_json::to_string(&Qwen2Config::fastvlm("7b").unwrap()).unwrap();
        assert_eq!(
            serde_json::from_str::<Qwen2Config>(&json).unwrap(),
            Qwen2Config::fastvlm("7b").unwrap()
        );
        let err = serde_json::from_str::<Qwen2Config>(r#"{"hidden_size": 64}"#).unwrap_err();
        assert!(err.to_string().contains("intermediate_size"), "{err}");
    }

    /// transformers 5 writes the rotary base under `rope_parameters`; scaled variants are refused.
    #[test]
    fn reads_the_rotary_base_where_either_transformers_writes_it() {
        let base = r#""hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50"#;
        let parse =
            |extra: &str| serde_json::from_str::<Qwen2Config>(&format!("{{{base}, {extra}}}"));
        let v5 = parse(r#""rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}"#);
        assert_eq!(v5.unwrap().rope_theta, 1e6);
        let v4 = parse(r#""rope_theta": 1000000.0, "rope_scaling": null"#);
        assert_eq!(v4.unwrap().rope_theta, 1e6);
        let yarn = parse(r#""rope_scaling": {"type": "yarn", "factor": 4.0}"#).unwrap_err();
        assert!(yarn.to_string().contains("yarn"), "{yarn}");
    }

    #[test]
    fn absurd_sizes_are_refused_before_anything_is_allocated() {
        let huge = Qwen2Config::new(1 << 20, 96, 2, 4, 2, 50);
        assert!(huge.validate().unwrap_err().contains("hidden_size"));
        let zero = Qwen2Config::new(64, 96, 0, 4, 2, 50);
        assert!(zero.validate().unwrap_err().contains("num_hidden_layers"));
        assert!(Qwen2Config::fastvlm("7b").unwrap().validate().is_ok());
    }
}
