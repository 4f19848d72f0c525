use burn::module::{Module, Param};
use burn::tensor::{FloatDType, Tensor, backend::Backend};

/// Root-mean-square norm: `weight · x / √(mean(x²) + ε)` over the last axis.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[hidden]`.
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// `[batch, seq, hidden]` → same shape. Computed in f32 whatever the model's precision, as
    /// Hugging Face does: a sum of 896+ squares overflows f16.
    ///
    /// On the CubeCL backends one launch (`vlm_kernels::rms_norm`).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        #[cfg(feature = "cubecl")]
        if vlm_kernels::available::<B>(vlm_kernels::Kernel::RmsNorm) {
            let weight = self.weight.val();
            if vlm_kernels::rms_norm_fits(&x, &weight) {
                return vlm_kernels::rms_norm(x, weight, self.eps);
            }
        }
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let rms = (x.clone().square().mean_dim(2) + self.eps).sqrt();
        (x / rms).cast(dtype) * self.weight.val().unsqueeze::<3>()
    }

    /// This norm as `vlm_kernels::linear_row` applies it to its input row.
    #[cfg(feature = "cubecl")]
    pub(crate) fn row_norm(&self) -> vlm_kernels::RowNorm<B> {
        vlm_kernels::RowNorm {
            weight: self.weight.val(),
            eps: self.eps,
        }
    }
}
