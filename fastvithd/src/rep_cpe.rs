use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::loader::{LoadError, Params};
use vlm_kernels::ops;

use crate::names::ConvSpec;

/// Conditional positional encoding before each attention stage: a depthwise 7×7 conv whose
/// re-parameterised kernel already includes the identity, so there is no residual add.
#[derive(Module, Debug)]
pub struct RepCpe<B: Backend> {
    pub reparam_conv: Conv2d<B>,
}

impl<B: Backend> RepCpe<B> {
    pub(crate) fn load(
        params: &mut impl Params<B>,
        name: &str,
        dim: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            reparam_conv: ConvSpec::depthwise(dim, 7)
                .load(params, &format!("{name}.reparam_conv"))?,
        })
    }

    /// `[batch, dim, h, w]` → same shape.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        ops::conv2d(&self.reparam_conv, x, false)
    }
}
