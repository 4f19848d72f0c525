use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::loader::{LoadError, Params};
use vlm_kernels::ops;

use crate::mobileone::MobileOneBlock;
use crate::names::ConvSpec;

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
        params: &mut impl Params<B>,
        name: &str,
        c_in: usize,
    ) -> Result<Self, LoadError> {
        let c_out = 2 * c_in;
        Ok(Self {
            large_kernel: ConvSpec::new([c_in, c_out], 7)
                .stride(2)
                .groups(c_in)
                .load(params, &format!("{name}.proj.0.lkb_reparam"))?,
            pointwise: MobileOneBlock::load(
                params,
                &format!("{name}.proj.1"),
                ConvSpec::new([c_out, c_out], 1),
                false,
            )?,
        })
    }

    /// `[batch, c_in, h, w]` → `[batch, 2·c_in, ⌈h/2⌉, ⌈w/2⌉]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.pointwise
            .forward(ops::conv2d(&self.large_kernel, x, true))
    }
}
