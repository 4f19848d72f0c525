use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::ops::{self, RowNorm};

/// Root-mean-square norm: `weight · x / √(mean(x²) + ε)` over the last axis.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[hidden]`.
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// `[batch, seq, hidden]` → same shape; the statistics in f32 whatever the model's
    /// precision, as Hugging Face computes them.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        ops::rms_norm(x, self.weight.val(), self.eps)
    }

    /// This norm as the ops that fuse it into a row take it.
    pub fn row(&self) -> RowNorm<B> {
        RowNorm {
            weight: self.weight.val(),
            eps: self.eps,
        }
    }
}
