use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

/// Root-mean-square norm: `weight · x / √(mean(x²) + ε)` over the last axis.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[hidden]`.
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// `[batch, seq, hidden]` → same shape.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let rms = (x.clone().square().mean_dim(2) + self.eps).sqrt();
        (x / rms) * self.weight.val().unsqueeze::<3>()
    }
}
