use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, backend::Backend};

use crate::depthwise::conv_forward;
use crate::mobileone::MobileOneBlock;
use crate::weights::{ConvSpec, LoadError, WeightLoader};

/// Downsampling between stages: a grouped 7×7 stride-2 conv (each input channel feeds two output
/// channels; `ReparamLargeKernelConv`, GELU) then a 1×1 MobileOne block.
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    /// `[2·c_in, 1, 7, 7]`, stride 2, groups `c_in`.
    pub large_kernel: Conv2d<B>,
    pub pointwise: MobileOneBlock<B>,
}

impl<B: Backend> PatchEmbed<B> {
    pub(crate) fn load(
        loader: &mut WeightLoader<B>,
        name: &str,
        c_in: usize,
    ) -> Result<Self, LoadError> {
        let c_out = 2 * c_in;
        Ok(Self {
            large_kernel: loader.conv(
                &format!("{name}.proj.0.lkb_reparam"),
                ConvSpec::new([c_in, c_out], 7).stride(2).groups(c_in),
            )?,
            pointwise: MobileOneBlock::load(
                loader,
                &format!("{name}.proj.1"),
                ConvSpec::new([c_out, c_out], 1),
                false,
            )?,
        })
    }

    /// `[batch, c_in, h, w]` → `[batch, 2·c_in, ⌈h/2⌉, ⌈w/2⌉]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.pointwise
            .forward(conv_forward(&self.large_kernel, x, true))
    }
}
