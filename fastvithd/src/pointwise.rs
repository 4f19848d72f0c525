use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

/// A 1×1 convolution with bias, computed as one matrix product over the pixels.
///
/// The same numbers as `Conv2d` with a 1×1 kernel, but always on the backend's GEMM, which is
/// what a 1×1 convolution should be on a GPU. (It was first a workaround: burn 0.21's CubeCL
/// convolution returned garbage for some shapes, 8 → 32 channels from 48×48 pixels up. The cause
/// was cubek-matmul's double-buffered matmuls summing a stage past k, which the GEMM could hit
/// as well; the workspace patches that, see `third_party/cubek-matmul/PATCH.md`.)
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
