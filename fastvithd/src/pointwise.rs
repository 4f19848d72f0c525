use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::ops;

/// A 1×1 convolution with bias, run as one matrix product over the pixels
/// ([`ops::pointwise`]).
#[derive(Module, Debug)]
pub struct Pointwise<B: Backend> {
    /// `[out, in]`: PyTorch's `[out, in, 1, 1]` without the unit axes.
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Pointwise<B> {
    pub fn new(weight: Tensor<B, 2>, bias: Tensor<B, 1>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: Param::from_tensor(bias),
        }
    }

    /// The weight and bias, as the ops take them.
    pub fn params(&self) -> (Tensor<B, 2>, Tensor<B, 1>) {
        (self.weight.val(), self.bias.val())
    }

    /// `[batch, in, h, w]` → `[batch, out, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        ops::pointwise(x, self.weight.val(), self.bias.val())
    }
}
