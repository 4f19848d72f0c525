use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::activation::swiglu;

use crate::rms_norm::RmsNorm;

/// SwiGLU feed-forward: `down(silu(gate(x)) · up(x))`, no biases.
#[derive(Module, Debug)]
pub struct Qwen2Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: Backend> Qwen2Mlp<B> {
    /// `[batch, seq, hidden]` → same shape.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.down_proj.forward(self.gated(x))
    }

    /// `x + forward(norm(x))`, `[batch, seq, hidden]` each (the second half of a pre-norm
    /// layer): for a single row on the CubeCL backends two launches (`vlm_kernels::linear_row`:
    /// the norm, gate, up and their product in one; down and the sum in the other).
    pub fn forward_residual(&self, x: Tensor<B, 3>, norm: &RmsNorm<B>) -> Tensor<B, 3> {
        #[cfg(feature = "cubecl")]
        let row = linear_row(
            &x,
            &[&self.gate_proj, &self.up_proj],
            vlm_kernels::RowProjection::SwiGlu,
            Some(norm),
            None,
        );
        #[cfg(not(feature = "cubecl"))]
        let row = None;
        let gated = row.unwrap_or_else(|| self.gated(norm.forward(x.clone())));
        linear_add(&self.down_proj, gated, x)
    }

    /// `silu(gate(x)) · up(x)`, `[batch, seq, intermediate]`.
    fn gated(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        #[cfg(feature = "cubecl")]
        let row = linear_row(
            &x,
            &[&self.gate_proj, &self.up_proj],
            vlm_kernels::RowProjection::SwiGlu,
            None,
            None,
        );
        #[cfg(not(feature = "cubecl"))]
        let row = None;
        row.unwrap_or_else(|| swiglu(self.gate_proj.forward(x.clone()), self.up_proj.forward(x)))
    }
}

/// `residual + linear(x)`: in one launch for a single row on the CubeCL backends.
pub(crate) fn linear_add<B: Backend>(
    linear: &Linear<B>,
    x: Tensor<B, 3>,
    residual: Tensor<B, 3>,
) -> Tensor<B, 3> {
    #[cfg(feature = "cubecl")]
    let row = linear_row(
        &x,
        &[linear],
        vlm_kernels::RowProjection::Concat,
        None,
        Some(&residual),
    );
    #[cfg(not(feature = "cubecl"))]
    let row = None;
    row.unwrap_or_else(|| residual + linear.forward(x))
}

/// `linears` applied to a single row `x` `[1, 1, in]` as `projection` says (after `norm`, plus
/// `residual`), in one launch (`vlm_kernels::linear_row`) where the backend runs the kernel and
/// the tensors fit it (a batch-1 decoding step); `None` otherwise, for burn's ops.
#[cfg(feature = "cubecl")]
pub(crate) fn linear_row<B: Backend>(
    x: &Tensor<B, 3>,
    linears: &[&Linear<B>],
    projection: vlm_kernels::RowProjection,
    norm: Option<&RmsNorm<B>>,
    residual: Option<&Tensor<B, 3>>,
) -> Option<Tensor<B, 3>> {
    if !vlm_kernels::available::<B>(vlm_kernels::Kernel::Gemv) {
        return None;
    }
    let weights: Vec<Tensor<B, 2>> = linears.iter().map(|l| l.weight.val()).collect();
    // Biases on all of them or none (a mix, or biases on SwiGLU, fail the fit).
    let biases: Vec<Tensor<B, 1>> = linears
        .iter()
        .filter_map(|l| l.bias.as_ref().map(|b| b.val()))
        .collect();
    let norm = norm.map(RmsNorm::row_norm);
    vlm_kernels::linear_row_fits(x, &weights, &biases, projection, norm.as_ref(), residual).then(
        || {
            let residual = residual.cloned();
            vlm_kernels::linear_row(x.clone(), &weights, &biases, projection, norm, residual)
        },
    )
}
