use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{Tensor, backend::Backend};

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

    /// `residual + forward(x)`, `[batch, seq, hidden]` each: for a single row on the CubeCL
    /// backends two launches (`vlm_kernels::linear_row`: gate, up and their product in one; down
    /// and the sum in the other).
    pub fn forward_add(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        linear_add(&self.down_proj, self.gated(x), residual)
    }

    /// `silu(gate(x)) · up(x)`, `[batch, seq, intermediate]`.
    fn gated(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        #[cfg(feature = "cubecl")]
        let row = linear_row(
            &x,
            &[&self.gate_proj, &self.up_proj],
            vlm_kernels::RowProjection::SwiGlu,
            None,
        );
        #[cfg(not(feature = "cubecl"))]
        let row = None;
        row.unwrap_or_else(|| silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
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
        Some(&residual),
    );
    #[cfg(not(feature = "cubecl"))]
    let row = None;
    row.unwrap_or_else(|| residual + linear.forward(x))
}

/// `linears` applied to a single row `x` `[1, 1, in]` as `projection` says (plus `residual`), in
/// one launch (`vlm_kernels::linear_row`) where the backend runs the kernel and the tensors fit
/// it (a batch-1 decoding step); `None` otherwise, for burn's matmuls.
#[cfg(feature = "cubecl")]
pub(crate) fn linear_row<B: Backend>(
    x: &Tensor<B, 3>,
    linears: &[&Linear<B>],
    projection: vlm_kernels::RowProjection,
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
    vlm_kernels::linear_row_fits(x, &weights, &biases, projection, residual).then(|| {
        vlm_kernels::linear_row(x.clone(), &weights, &biases, projection, residual.cloned())
    })
}
