use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use vlm_kernels::loader::{Draw, Init, LoadError};

use crate::FastVitHd;

/// Hyper-parameters of FastViTHD.
///
/// The default is the tower of Apple's FastVLM checkpoints (`mci.py::fastvithd`, timm
/// `fastvit_mci3`); deserialising fills every absent field from it. Depths and widths can be
/// shrunk for tests; the topology (three RepMixer stages, RepCPE before the two attention
/// stages, a PatchEmbed between every pair of stages, the squeeze-excite `conv_exp` head) is
/// that of the released network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FastVitHdConfig {
    /// Blocks per stage.
    pub layers: [usize; 5],
    /// Channels per stage; every PatchEmbed doubles the width, so `embed_dims[i + 1] == 2 * embed_dims[i]`.
    pub embed_dims: [usize; 5],
    /// Hidden width of every ConvFFN as a multiple of its input width.
    pub mlp_ratio: usize,
    /// Channels per attention head in the attention stages.
    pub head_dim: usize,
    /// Epsilon of the ConvFFN BatchNorms and of the channel LayerNorms.
    pub norm_eps: f64,
}

impl Default for FastVitHdConfig {
    fn default() -> Self {
        Self {
            layers: [2, 12, 24, 4, 2],
            embed_dims: [96, 192, 384, 768, 1536],
            mlp_ratio: 4,
            head_dim: 32,
            norm_eps: 1e-5,
        }
    }
}

impl burn::config::Config for FastVitHdConfig {}

impl FastVitHdConfig {
    /// The configuration of the released FastVLM vision tower (125.07 M parameters, 3072 output channels).
    pub fn released() -> Self {
        Self::default()
    }

    pub fn with_layers(self, layers: [usize; 5]) -> Self {
        Self { layers, ..self }
    }

    pub fn with_embed_dims(self, embed_dims: [usize; 5]) -> Self {
        Self { embed_dims, ..self }
    }

    pub fn with_mlp_ratio(self, mlp_ratio: usize) -> Self {
        Self { mlp_ratio, ..self }
    }

    /// The network with random weights (seeded by `seed`), scaled as a trained network's are
    /// where it matters for the activations: per-channel mixers near the identity, He-scaled
    /// convolutions, positive BatchNorm variances, small layer scales.
    pub fn init<B: Backend>(
        &self,
        device: &B::Device,
        seed: u64,
    ) -> Result<FastVitHd<B>, LoadError> {
        FastVitHd::build(self, &mut Init::new(device, seed, draw))
    }

    /// Channels of the output feature map (`conv_exp` doubles the last stage width): 3072 when released.
    pub fn out_channels(&self) -> usize {
        2 * self.embed_dims[4]
    }

    /// Total stride of the network: every output token covers a 64×64 pixel cell.
    pub const STRIDE: usize = 64;

    /// Output grid `(h, w)` for an input of `height × width` pixels: each of the six stride-2
    /// convolutions rounds up, so the grid is `ceil(height / 64) × ceil(width / 64)`.
    pub fn grid(height: usize, width: usize) -> (usize, usize) {
        (height.div_ceil(Self::STRIDE), width.div_ceil(Self::STRIDE))
    }

    /// Checks the invariants the topology relies on, and sizes a checkpoint can have (the
    /// widths size every tensor the network allocates).
    pub fn validate(&self) -> Result<(), String> {
        if self.embed_dims.contains(&0) || self.layers.contains(&0) {
            return Err(format!(
                "FastViTHD: layers {:?} and embed_dims {:?} must all be positive",
                self.layers, self.embed_dims
            ));
        }
        if self.embed_dims[4] > 1 << 14 || self.layers.iter().any(|&l| l > 1024) {
            return Err(format!(
                "FastViTHD: layers {:?} and embed_dims {:?} are beyond any released tower",
                self.layers, self.embed_dims
            ));
        }
        let norm_eps_ok = self.norm_eps > 0.0 && self.norm_eps < 1.0;
        if !((1..=64).contains(&self.mlp_ratio) && norm_eps_ok) {
            return Err(format!(
                "FastViTHD: mlp_ratio {} must be in 1..=64 and norm_eps {} in (0, 1)",
                self.mlp_ratio, self.norm_eps
            ));
        }
        for i in 0..4 {
            if self.embed_dims[i + 1] != 2 * self.embed_dims[i] {
                return Err(format!(
                    "FastViTHD: embed_dims {:?} must double from stage to stage (PatchEmbed is a grouped conv with 2 outputs per input channel)",
                    self.embed_dims
                ));
            }
        }
        for &dim in &self.embed_dims[3..] {
            if self.head_dim == 0 || dim % self.head_dim != 0 {
                return Err(format!(
                    "FastViTHD: attention width {dim} is not a multiple of head_dim {}",
                    self.head_dim
                ));
            }
        }
        if self.out_channels() / 16 == 0 {
            return Err("FastViTHD: conv_exp width too small for its squeeze-excite".into());
        }
        Ok(())
    }

    /// Every tensor the network reads, by Apple name (without prefix) and shape, in load order.
    /// Checkpoints also carry `num_batches_tracked` (int64) and `head.proj` `[3072, 768]`,
    /// which are not used.
    pub fn checkpoint_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let mut push = |name: String, shape: &[usize]| out.push((name, shape.to_vec()));
        let d = self.embed_dims;
        let conv = |push: &mut dyn FnMut(String, &[usize]), name: &str, w: [usize; 4]| {
            push(format!("{name}.weight"), &w);
            push(format!("{name}.bias"), &[w[0]]);
        };
        conv(&mut push, "patch_embed.0.reparam_conv", [d[0], 3, 3, 3]);
        conv(&mut push, "patch_embed.1.reparam_conv", [d[0], 1, 3, 3]);
        conv(&mut push, "patch_embed.2.reparam_conv", [d[0], d[0], 1, 1]);
        let ffn = |push: &mut dyn FnMut(String, &[usize]), name: &str, c: usize, h: usize| {
            push(format!("{name}.conv.conv.weight"), &[c, 1, 7, 7]);
            for p in ["weight", "bias", "running_mean", "running_var"] {
                push(format!("{name}.conv.bn.{p}"), &[c]);
            }
            conv(push, &format!("{name}.fc1"), [h, c, 1, 1]);
            conv(push, &format!("{name}.fc2"), [c, h, 1, 1]);
        };
        let network = [
            (None, None, 0),
            (Some(1), None, 2),
            (Some(3), None, 4),
            (Some(5), Some(6), 7),
            (Some(8), Some(9), 10),
        ];
        for (s, (down, pos, blocks)) in network.into_iter().enumerate() {
            let c = d[s];
            if let Some(i) = down {
                conv(
                    &mut push,
                    &format!("network.{i}.proj.0.lkb_reparam"),
                    [c, 1, 7, 7],
                );
                conv(
                    &mut push,
                    &format!("network.{i}.proj.1.reparam_conv"),
                    [c, c, 1, 1],
                );
            }
            if let Some(i) = pos {
                conv(
                    &mut push,
                    &format!("network.{i}.reparam_conv"),
                    [c, 1, 7, 7],
                );
            }
            for b in 0..self.layers[s] {
                let name = format!("network.{blocks}.{b}");
                if s < 3 {
                    conv(
                        &mut push,
                        &format!("{name}.token_mixer.reparam_conv"),
                        [c, 1, 3, 3],
                    );
                    push(format!("{name}.layer_scale"), &[c, 1, 1]);
                } else {
                    push(format!("{name}.norm.weight"), &[c]);
                    push(format!("{name}.norm.bias"), &[c]);
                    push(format!("{name}.layer_scale_1"), &[c, 1, 1]);
                    push(format!("{name}.layer_scale_2"), &[c, 1, 1]);
                    push(format!("{name}.token_mixer.qkv.weight"), &[3 * c, c]);
                    push(format!("{name}.token_mixer.proj.weight"), &[c, c]);
                    push(format!("{name}.token_mixer.proj.bias"), &[c]);
                }
                ffn(&mut push, &format!("{name}.convffn"), c, c * self.mlp_ratio);
            }
        }
        let o = self.out_channels();
        let rd = o / 16;
        conv(&mut push, "conv_exp.reparam_conv", [o, 1, 3, 3]);
        conv(&mut push, "conv_exp.se.reduce", [rd, o, 1, 1]);
        conv(&mut push, "conv_exp.se.expand", [o, rd, 1, 1]);
        out
    }

    /// Reads depths and widths off a checkpoint's tensor shapes (names resolved through
    /// `names`), so shrunk towers in the release layout load as well as the released one.
    /// `None` when the stem or a stage's first block is missing.
    pub fn from_checkpoint(
        names: &vlm_kernels::loader::NameMap,
        shape_of: &dyn Fn(&str) -> Option<Vec<usize>>,
    ) -> Option<Self> {
        let shape = |name: &str| shape_of(&names.resolve(name));
        let d0 = *shape("patch_embed.0.reparam_conv.weight")?.first()?;
        let embed_dims = [d0, 2 * d0, 4 * d0, 8 * d0, 16 * d0];
        let hidden = *shape("network.0.0.convffn.fc1.weight")?.first()?;
        let mut layers = [0; 5];
        for (s, blocks) in [0, 2, 4, 7, 10].into_iter().enumerate() {
            let probe = if s < 3 {
                "token_mixer.reparam_conv.weight"
            } else {
                "token_mixer.qkv.weight"
            };
            layers[s] = (0..)
                .take_while(|b| shape(&format!("network.{blocks}.{b}.{probe}")).is_some())
                .count();
        }
        Some(
            Self::default()
                .with_layers(layers)
                .with_embed_dims(embed_dims)
                .with_mlp_ratio(hidden / d0.max(1)),
        )
    }
}

/// How [`FastVitHdConfig::init`] draws each tensor (Apple's name, without prefix).
fn draw(name: &str, shape: &[usize]) -> Draw {
    let ends = |s: &[&str]| s.iter().any(|x| name.ends_with(x));
    if ends(&["bn.weight"]) {
        return Draw::around(1.0, 0.2);
    }
    if ends(&["bn.running_var"]) {
        return Draw::around(0.75, 0.25);
    }
    if ends(&["bn.bias", "bn.running_mean"]) {
        return Draw::uniform(0.1);
    }
    if name.contains("layer_scale") {
        return Draw::around(0.1, 0.05);
    }
    if ends(&["norm.weight"]) {
        return Draw::around(1.0, 0.1);
    }
    if ends(&["norm.bias"]) {
        return Draw::uniform(0.05);
    }
    if ends(&[".bias"]) {
        return Draw::uniform(0.02);
    }
    // The re-parameterised token mixers and RepCPEs carry the identity.
    let cpe = name.starts_with("network.") && name.matches('.').count() == 3;
    if ends(&["token_mixer.reparam_conv.weight"]) || (cpe && ends(&["reparam_conv.weight"])) {
        return Draw::uniform(0.05).centred();
    }
    let gain = if ends(&["qkv.weight", "proj.weight"]) {
        3.0
    } else {
        6.0
    };
    Draw::fan_in(shape, gain)
}
