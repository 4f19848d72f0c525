use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

/// A linear layer, `y = x·W + b`, as the models hold it: the ops layer's fused rows
/// ([`crate::ops::linear_residual`], [`crate::ops::qkv_rotary_append`], …) read it as a whole.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[in, out]`: PyTorch's `[out, in]` transposed once at load, so that the parameter is
    /// contiguous (a transposed view would be laid out again by every matrix product).
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// A layer over `weight` `[in, out]` and `bias` `[out]`.
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
        }
    }

    /// Input width.
    pub fn d_input(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Output width.
    pub fn d_output(&self) -> usize {
        self.weight.dims()[1]
    }

    /// `[…, in]` → `[…, out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        burn::tensor::module::linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }
}
