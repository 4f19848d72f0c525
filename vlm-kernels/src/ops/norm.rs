use burn::tensor::{FloatDType, Tensor, backend::Backend};

/// An RMS norm's parameters, for the ops that apply it on the way into a fused row:
/// `weight · x / √(mean(x²) + ε)`, as [`rms_norm`] computes it.
#[derive(Debug, Clone)]
pub struct RowNorm<B: Backend> {
    /// `[hidden]`.
    pub weight: Tensor<B, 1>,
    pub eps: f64,
}

impl<B: Backend> RowNorm<B> {
    /// [`rms_norm`] of `x` with these parameters.
    pub fn apply(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        rms_norm(x, self.weight.clone(), self.eps)
    }
}

/// `weight · x / √(mean(x²) + ε)` over the last axis of `x` `[batch, seq, hidden]`, weight
/// `[hidden]`: the mean and the division in f32 whatever the precision, as Hugging Face computes
/// it (a sum of 896+ squares overflows f16), the product with the weight at the input's.
///
/// On the CubeCL backends one launch, where burn 0.21 takes a reduction and its elementwise
/// launches around it.
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    #[cfg(feature = "cubecl")]
    if super::runs::<B>(super::Kernel::RmsNorm) && crate::cube::rms_norm_fits(&x, &weight) {
        return crate::cube::rms_norm(x, weight, eps);
    }
    let dtype = x.dtype();
    let x = x.cast(FloatDType::F32);
    let rms = (x.clone().square().mean_dim(2) + eps).sqrt();
    (x / rms).cast(dtype) * weight.unsqueeze::<3>()
}
