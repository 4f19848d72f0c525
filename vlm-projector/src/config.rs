use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vlm_kernels::loader::{Draw, Init, LoadError};

use crate::Projector;

/// The projector architectures LLaVA names in `mm_projector_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectorKind {
    /// `linear`: one Linear.
    Linear,
    /// `mlp{depth}x_gelu`: Linear, then (GELU, Linear) × (depth − 1); FastVLM uses depth 2.
    MlpGelu { depth: usize },
}

impl FromStr for ProjectorKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "linear" {
            return Ok(Self::Linear);
        }
        s.strip_prefix("mlp")
            .and_then(|r| r.strip_suffix("x_gelu"))
            .and_then(|d| d.parse::<usize>().ok())
            .filter(|depth| (1..=16).contains(depth))
            .map(|depth| Self::MlpGelu { depth })
            .ok_or_else(|| {
                format!("unsupported mm_projector_type `{s}` (expected `linear` or `mlpNx_gelu`)")
            })
    }
}

impl fmt::Display for ProjectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Linear => f.write_str("linear"),
            Self::MlpGelu { depth } => write!(f, "mlp{depth}x_gelu"),
        }
    }
}

impl Serialize for ProjectorKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ProjectorKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl ProjectorKind {
    /// Number of Linear layers.
    pub fn depth(self) -> usize {
        match self {
            Self::Linear => 1,
            Self::MlpGelu { depth } => depth,
        }
    }
}

/// The projector's shape, as Apple's `config.json` gives it (Hugging Face's `fast_vlm` configs
/// spread the same over `vision_config`, `text_config` and `multimodal_projector_bias`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectorConfig {
    /// The architecture; LLaVA's default is `linear`.
    #[serde(rename = "mm_projector_type", default = "linear")]
    pub kind: ProjectorKind,
    /// Width of the image features (FastViTHD's 3072).
    #[serde(rename = "mm_hidden_size", default = "image_features")]
    pub in_features: usize,
    /// The language model's width.
    #[serde(rename = "hidden_size")]
    pub hidden: usize,
    /// Whether the linear layers have biases (all of Apple's do).
    #[serde(rename = "multimodal_projector_bias", default = "yes")]
    pub bias: bool,
}

fn linear() -> ProjectorKind {
    ProjectorKind::Linear
}

fn image_features() -> usize {
    3072
}

fn yes() -> bool {
    true
}

impl ProjectorConfig {
    /// FastVLM's projector (`mlp2x_gelu`, with biases) from 3072 image channels to `hidden`.
    pub fn fastvlm(hidden: usize) -> Self {
        Self {
            kind: ProjectorKind::MlpGelu { depth: 2 },
            in_features: image_features(),
            hidden,
            bias: true,
        }
    }

    /// Checks the widths are positive and within what a checkpoint can have.
    pub fn validate(&self) -> Result<(), String> {
        let range = 1..=1 << 16;
        if !range.contains(&self.in_features) || !range.contains(&self.hidden) {
            return Err(format!(
                "projector: widths {} → {} must be in 1..=65536",
                self.in_features, self.hidden
            ));
        }
        Ok(())
    }

    /// Parameter count (weights and biases).
    pub fn parameters(&self) -> usize {
        let depth = self.kind.depth();
        let weights = self.in_features * self.hidden + (depth - 1) * self.hidden * self.hidden;
        weights + if self.bias { depth * self.hidden } else { 0 }
    }

    /// The projector with random weights (He-scaled, small biases), seeded by `seed`.
    pub fn init<B: Backend>(
        &self,
        device: &B::Device,
        seed: u64,
    ) -> Result<Projector<B>, LoadError> {
        let draw = |name: &str, shape: &[usize]| match name.ends_with(".bias") {
            true => Draw::uniform(0.02),
            false => Draw::fan_in(shape, 6.0),
        };
        Projector::build(self, &mut Init::new(device, seed, draw))
    }
}
