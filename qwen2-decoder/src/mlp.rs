use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{Tensor, backend::Backend};

/// SwiGLU feed-forward: `down(silu(gate(x)) · up(x))`, no biases.
#[derive(Module, Debug)]
pub struct Qwen2Mlp<B: Backend> {
    /// `gate_proj` and `up_proj` side by side, `[hidden, 2 · intermediate]`: both read the same
    /// input, so one matrix product (one launch) computes the two.
    pub gate_up_proj: Linear<B>,
    pub down_proj: Linear<B>,
    pub intermediate_size: usize,
}

impl<B: Backend> Qwen2Mlp<B> {
    /// `[batch, seq, hidden]` → same shape.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let i = self.intermediate_size;
        let gate_up = self.gate_up_proj.forward(x);
        let gate = silu(gate_up.clone().narrow(2, 0, i));
        self.down_proj.forward(gate * gate_up.narrow(2, i, i))
    }
}
