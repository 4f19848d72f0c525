//! Loading Apple's (or timm's) tensors into the inference-form network.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{DType, Tensor, TensorData, backend::Backend};

/// Prefix of the vision tower inside Apple's FastVLM checkpoints.
pub const APPLE_PREFIX: &str = "model.vision_tower.vision_tower.model.";

/// How tensors are named in the source.
///
/// The network asks for every tensor by its Apple name (`mci.py`, without prefix); [`TIMM_RENAMES`]
/// is the one table that turns those names into timm's `fastvit_mci3` names (MobileCLIP2 image
/// towers, `timm.create_model(..., inference_mode=True)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightNaming {
    /// Apple's `mci.py` names after `prefix` ([`APPLE_PREFIX`] in FastVLM checkpoints).
    Apple { prefix: String },
    /// timm `fastvit_mci3` names after `prefix` (empty for a bare timm state dict).
    Timm { prefix: String },
}

impl Default for WeightNaming {
    fn default() -> Self {
        Self::Apple {
            prefix: APPLE_PREFIX.to_string(),
        }
    }
}

/// Apple → timm renames, applied in order. Prefix rules (`^`) rewrite the start of a name,
/// the others every occurrence. Stage indices follow `FastViT.network`: 0, 2, 4, 7 and 10 are
/// block stages; 1, 3, 5 and 8 PatchEmbeds; 6 and 9 RepCPEs.
pub const TIMM_RENAMES: &[(&str, &str)] = &[
    ("^patch_embed.", "stem."),
    ("^network.0.", "stages.0.blocks."),
    ("^network.1.", "stages.1.downsample."),
    ("^network.2.", "stages.1.blocks."),
    ("^network.3.", "stages.2.downsample."),
    ("^network.4.", "stages.2.blocks."),
    ("^network.5.", "stages.3.downsample."),
    ("^network.6.", "stages.3.pos_emb."),
    ("^network.7.", "stages.3.blocks."),
    ("^network.8.", "stages.4.downsample."),
    ("^network.9.", "stages.4.pos_emb."),
    ("^network.10.", "stages.4.blocks."),
    ("^conv_exp.", "final_conv."),
    (".lkb_reparam.", ".reparam_conv."),
    (".convffn.", ".mlp."),
    (".se.reduce.", ".se.fc1."),
    (".se.expand.", ".se.fc2."),
    (".layer_scale_1", ".layer_scale_1.gamma"),
    (".layer_scale_2", ".layer_scale_2.gamma"),
    (".layer_scale$", ".layer_scale.gamma"),
];

impl WeightNaming {
    /// The source's name for the tensor Apple calls `name` (without prefix).
    pub fn resolve(&self, name: &str) -> String {
        match self {
            Self::Apple { prefix } => format!("{prefix}{name}"),
            Self::Timm { prefix } => {
                let mut out = name.to_string();
                for (from, to) in TIMM_RENAMES {
                    if let Some(from) = from.strip_prefix('^') {
                        if let Some(rest) = out.strip_prefix(from) {
                            out = format!("{to}{rest}");
                        }
                    } else if let Some(from) = from.strip_suffix('$') {
                        if let Some(head) = out.strip_suffix(from) {
                            out = format!("{head}{to}");
                        }
                    } else {
                        out = out.replace(from, to);
                    }
                }
                format!("{prefix}{out}")
            }
        }
    }
}

/// A failure to build the network from a set of tensors.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoadError {
    #[error("missing tensor `{name}` (expected shape {expected:?})")]
    Missing { name: String, expected: Vec<usize> },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` has dtype {found}, expected a floating-point tensor")]
    DType { name: String, found: String },
    #[error(
        "tensor `{name}` is in training (un-reparameterised) form; FastViTHD loads the inference form that FastVLM releases"
    )]
    TrainForm { name: String },
    #[error("invalid FastViTHD configuration: {0}")]
    Config(String),
}

/// Hands out the tensors of one network, by Apple name, checked against the expected shape and
/// converted to f32 on the host (folding happens there, before upload).
pub(crate) struct WeightLoader<'a, B: Backend> {
    source: &'a mut dyn FnMut(&str) -> Option<TensorData>,
    naming: &'a WeightNaming,
    pub(crate) device: B::Device,
}

impl<'a, B: Backend> WeightLoader<'a, B> {
    pub(crate) fn new(
        source: &'a mut dyn FnMut(&str) -> Option<TensorData>,
        naming: &'a WeightNaming,
        device: &B::Device,
    ) -> Self {
        Self {
            source,
            naming,
            device: device.clone(),
        }
    }

    /// The values of `name` (row-major f32) after checking its shape.
    pub(crate) fn host(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>, LoadError> {
        let full = self.naming.resolve(name);
        let Some(data) = (self.source)(&full) else {
            if name.contains("reparam_conv") || name.contains("lkb_reparam") {
                let train = full
                    .replace("reparam_conv", "rbr_conv.0.conv")
                    .replace("lkb_reparam", "lkb_origin.conv");
                if (self.source)(&train).is_some() {
                    return Err(LoadError::TrainForm { name: train });
                }
            }
            return Err(LoadError::Missing {
                name: full,
                expected: expected.to_vec(),
            });
        };
        if data.shape.as_slice() != expected {
            return Err(LoadError::Shape {
                name: full,
                expected: expected.to_vec(),
                found: data.shape.to_vec(),
            });
        }
        if !matches!(
            data.dtype,
            DType::F32 | DType::F16 | DType::BF16 | DType::F64
        ) {
            return Err(LoadError::DType {
                name: full,
                found: format!("{:?}", data.dtype),
            });
        }
        Ok(data
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("converted to f32 above"))
    }

    /// Uploads host values as a device tensor of the backend's float type.
    pub(crate) fn upload<const D: usize>(
        &self,
        values: Vec<f32>,
        shape: [usize; D],
    ) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(values, shape), &self.device)
    }

    /// Reads and uploads `name` unchanged.
    pub(crate) fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, LoadError> {
        let values = self.host(name, &shape)?;
        Ok(self.upload(values, shape))
    }
}

/// Geometry of one convolution as released (PyTorch layout `[out, in / groups, k, k]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvSpec {
    pub channels: [usize; 2],
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
}

impl ConvSpec {
    /// A `kernel × kernel` convolution with "same" padding (`kernel / 2`) for odd kernels.
    pub(crate) fn new(channels: [usize; 2], kernel: usize) -> Self {
        Self {
            channels,
            kernel,
            stride: 1,
            groups: 1,
        }
    }
    pub(crate) fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }
    pub(crate) fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
    pub(crate) fn depthwise(channels: usize, kernel: usize) -> Self {
        Self::new([channels, channels], kernel).groups(channels)
    }
    pub(crate) fn weight_shape(&self) -> [usize; 4] {
        [
            self.channels[1],
            self.channels[0] / self.groups,
            self.kernel,
            self.kernel,
        ]
    }

    /// The module with lazily-initialised parameters, to be filled by the loader.
    pub(crate) fn init<B: Backend>(&self, device: &B::Device) -> Conv2d<B> {
        let pad = self.kernel / 2;
        Conv2dConfig::new(self.channels, [self.kernel, self.kernel])
            .with_stride([self.stride, self.stride])
            .with_groups(self.groups)
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .init(device)
    }
}

impl<B: Backend> WeightLoader<'_, B> {
    /// A convolution with bias from `{name}.weight` and `{name}.bias`.
    pub(crate) fn conv(&mut self, name: &str, spec: ConvSpec) -> Result<Conv2d<B>, LoadError> {
        let weight = self.tensor(&format!("{name}.weight"), spec.weight_shape())?;
        let bias = self.tensor(&format!("{name}.bias"), [spec.channels[1]])?;
        Ok(self.conv_from(spec, weight, bias))
    }

    pub(crate) fn conv_from(
        &self,
        spec: ConvSpec,
        weight: Tensor<B, 4>,
        bias: Tensor<B, 1>,
    ) -> Conv2d<B> {
        let mut conv = spec.init(&self.device);
        conv.weight = Param::from_tensor(weight);
        conv.bias = Some(Param::from_tensor(bias));
        conv
    }

    /// A linear layer from PyTorch's `[out, in]` weight (and `[out]` bias when `bias`).
    pub(crate) fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Linear<B>, LoadError> {
        let weight = self.host(&format!("{name}.weight"), &[d_out, d_in])?;
        let bias = if bias {
            Some(self.tensor(&format!("{name}.bias"), [d_out])?)
        } else {
            None
        };
        Ok(self.linear_from(weight, d_in, d_out, bias))
    }

    /// A linear layer from host values in PyTorch's `[out, in]` layout (burn stores `[in, out]`).
    pub(crate) fn linear_from(
        &self,
        weight_out_in: Vec<f32>,
        d_in: usize,
        d_out: usize,
        bias: Option<Tensor<B, 1>>,
    ) -> Linear<B> {
        let mut transposed = vec![0.0f32; d_in * d_out];
        for o in 0..d_out {
            for i in 0..d_in {
                transposed[i * d_out + o] = weight_out_in[o * d_in + i];
            }
        }
        let mut linear = LinearConfig::new(d_in, d_out)
            .with_bias(bias.is_some())
            .init(&self.device);
        linear.weight = Param::from_tensor(self.upload(transposed, [d_in, d_out]));
        linear.bias = bias.map(Param::from_tensor);
        linear
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timm_names_follow_the_table() {
        let timm = WeightNaming::Timm {
            prefix: String::new(),
        };
        let cases = [
            (
                "patch_embed.0.reparam_conv.weight",
                "stem.0.reparam_conv.weight",
            ),
            (
                "network.0.1.layer_scale",
                "stages.0.blocks.1.layer_scale.gamma",
            ),
            (
                "network.1.proj.0.lkb_reparam.weight",
                "stages.1.downsample.proj.0.reparam_conv.weight",
            ),
            (
                "network.4.23.convffn.conv.bn.running_var",
                "stages.2.blocks.23.mlp.conv.bn.running_var",
            ),
            (
                "network.6.reparam_conv.bias",
                "stages.3.pos_emb.reparam_conv.bias",
            ),
            (
                "network.10.1.layer_scale_2",
                "stages.4.blocks.1.layer_scale_2.gamma",
            ),
            (
                "network.7.0.token_mixer.qkv.weight",
                "stages.3.blocks.0.token_mixer.qkv.weight",
            ),
            ("conv_exp.se.reduce.weight", "final_conv.se.fc1.weight"),
        ];
        for (apple, expected) in cases {
            assert_eq!(timm.resolve(apple), expected, "{apple}");
        }
        assert_eq!(
            WeightNaming::default().resolve("conv_exp.reparam_conv.bias"),
            "model.vision_tower.vision_tower.model.conv_exp.reparam_conv.bias"
        );
    }
}
