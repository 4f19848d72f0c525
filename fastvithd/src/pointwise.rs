use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

/// A 1×1 convolution with bias, computed as one matrix product over the pixels.
///
/// The same numbers as `Conv2d` with a 1×1 kernel, but always on the backend's GEMM: burn
/// 0.21's CubeCL convolution picks a kernel per shape, and on wgpu one of them returns garbage
/// for some (8 → 32 channels from 48×48 pixels up, found by `tests/wgpu_parity.rs`); a GEMM is
/// also what a 1×1 convolution should be on a GPU.
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

    /// `[batch, in, h, w]` → `[batch, out, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, channels, h, w] = x.dims();
        let [out, _] = self.weight.dims();
        let pixels = x.reshape([batch, channels, h * w]);
        let y = self.weight.val().unsqueeze::<3>().matmul(pixels)
            + self.bias.val().reshape([1, out, 1]);
        y.reshape([batch, out, h, w])
    }
}
