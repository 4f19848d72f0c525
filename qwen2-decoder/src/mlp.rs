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
        if vlm_kernels::available::<B>(vlm_kernels::Kernel::Gemv) {
            use vlm_kernels::{RowProjection, linear_row, linear_row_fits};
            let weights = [self.gate_proj.weight.val(), self.up_proj.weight.val()];
            let bias_free = self.gate_proj.bias.is_none() && self.up_proj.bias.is_none();
            let swiglu = RowProjection::SwiGlu;
            if bias_free && linear_row_fits(&x, &weights, &[], swiglu, None) {
                return linear_row(x, &weights, &[], swiglu, None);
            }
        }
        silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x)
    }
}

/// `residual + linear(x)`: in one launch for a single row on the CubeCL backends.
pub(crate) fn linear_add<B: Backend>(
    linear: &Linear<B>,
    x: Tensor<B, 3>,
    residual: Tensor<B, 3>,
) -> Tensor<B, 3> {
    #[cfg(feature = "cubecl")]
    if vlm_kernels::available::<B>(vlm_kernels::Kernel::Gemv) {
        use vlm_kernels::{RowProjection, linear_row, linear_row_fits};
        let weights = [linear.weight.val()];
        let biases: Vec<Tensor<B, 1>> = linear.bias.iter().map(|b| b.val()).collect();
        let concat = RowProjection::Concat;
        if linear_row_fits(&x, &weights, &biases, concat, Some(&residual)) {
            return linear_row(x, &weights, &biases, concat, Some(residual));
        }
    }
    residual + linear.forward(x)
}
