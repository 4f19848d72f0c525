//! FastViTHD's tensor names in each checkpoint convention, and the convolutions built from them.
//!
//! The network asks for every tensor by its Apple name (`mci.py`, without prefix); the tables
//! here turn those into each convention's.

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::loader::{Convention, LoadError, NameMap, Params};

/// Prefix of the vision tower inside Apple's FastVLM checkpoints.
pub const APPLE_PREFIX: &str = "model.vision_tower.vision_tower.model.";

/// Prefix of the vision tower (a timm model) in Hugging Face's `fast_vlm` checkpoints.
pub const HUGGING_FACE_PREFIX: &str = "model.vision_tower.timm_model.";

/// Apple → timm renames (`fastvit_mci3`, `timm.create_model(..., inference_mode=True)`),
/// applied in order. Stage indices follow `FastViT.network`: 0, 2, 4, 7 and 10 are block stages;
/// 1, 3, 5 and 8 PatchEmbeds; 6 and 9 RepCPEs.
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

/// Inference-form name fragments and the training-form ones standing in their place in an
/// un-reparameterised checkpoint (MobileOne's first conv branch, the large kernel's 7×7).
const TRAINING_FORMS: &[(&str, &str)] = &[
    ("reparam_conv", "rbr_conv.0.conv"),
    ("lkb_reparam", "lkb_origin.conv"),
];

/// FastViTHD's names in `convention`; `None` where it holds no vision tower (MLX exports).
pub fn names(convention: Convention) -> Option<NameMap> {
    let map = match convention {
        Convention::Apple => NameMap::prefixed(APPLE_PREFIX),
        Convention::Timm => NameMap::new("", TIMM_RENAMES),
        Convention::HuggingFace => NameMap::new(HUGGING_FACE_PREFIX, TIMM_RENAMES),
        Convention::Mlx => return None,
    };
    Some(map.with_training_forms(TRAINING_FORMS))
}

/// Geometry of one convolution as released (PyTorch layout `[out, in / groups, k, k]`), with
/// "same" padding (`kernel / 2`) for odd kernels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvSpec {
    pub channels: [usize; 2],
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
}

impl ConvSpec {
    pub(crate) fn new(channels: [usize; 2], kernel: usize) -> Self {
        Self {
            channels,
            kernel,
            stride: 1,
            groups: 1,
        }
    }

    pub(crate) fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }

    pub(crate) fn groups(self, groups: usize) -> Self {
        Self { groups, ..self }
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

    /// A convolution with bias from `{name}.weight` and `{name}.bias`.
    pub(crate) fn load<B: Backend>(
        self,
        params: &mut impl Params<B>,
        name: &str,
    ) -> Result<Conv2d<B>, LoadError> {
        let weight = params.tensor(&format!("{name}.weight"), self.weight_shape())?;
        let bias = params.tensor(&format!("{name}.bias"), [self.channels[1]])?;
        Ok(self.with(weight, bias))
    }

    /// The convolution over `weight` and `bias`.
    pub(crate) fn with<B: Backend>(self, weight: Tensor<B, 4>, bias: Tensor<B, 1>) -> Conv2d<B> {
        let pad = self.kernel / 2;
        Conv2d {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
            stride: [self.stride, self.stride],
            kernel_size: [self.kernel, self.kernel],
            dilation: [1, 1],
            groups: self.groups,
            padding: PaddingConfig2d::Explicit(pad, pad, pad, pad),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timm_names_follow_the_table() {
        let timm = names(Convention::Timm).unwrap();
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
            names(Convention::Apple)
                .unwrap()
                .resolve("conv_exp.reparam_conv.bias"),
            "model.vision_tower.vision_tower.model.conv_exp.reparam_conv.bias"
        );
        assert_eq!(
            names(Convention::HuggingFace)
                .unwrap()
                .resolve("network.6.reparam_conv.bias"),
            "model.vision_tower.timm_model.stages.3.pos_emb.reparam_conv.bias"
        );
        assert!(names(Convention::Mlx).is_none());
    }
}
