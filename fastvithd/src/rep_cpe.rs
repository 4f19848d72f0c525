use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, backend::Backend};

use crate::depthwise::conv_forward;
use crate::weights::{ConvSpec, LoadError, WeightLoader};

/// Conditional positional encoding before each attention stage: a depthwise 7×7 conv whose
/// re-parameterised kernel already includes the identity, so there is no residual add.
#[derive(Module, Debug)]
pub struct RepCpe<B: Backend> {
    pub reparam_conv: Conv2d<B>,
}

impl<B: Backend> RepCpe<B> {
    pub(crate) fn load(
        loader: &mut WeightLoader<B>,
        name: &str,
        dim: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            reparam_conv: loader
                .conv(&format!("{name}.reparam_conv"), ConvSpec::depthwise(dim, 7))?,
        })
    }

    /// `[batch, dim, h, w]` → same shape.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv_forward(&self.reparam_conv, x, false)
    }
}
