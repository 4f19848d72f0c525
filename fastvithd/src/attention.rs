use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::Linear;
use vlm_kernels::loader::{LoadError, Params, linear_from, upload};
use vlm_kernels::ops;

use crate::conv_ffn::scale_rows;

/// Multi-head self-attention over the pixels of a feature map (`Attention` in `mci.py`):
/// bias-free `qkv`, softmax(q·kᵀ/√head_dim)·v per head, then `proj`.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[dim, 3·dim]`, no bias.
    pub qkv: Linear<B>,
    /// `[dim, dim]`, scaled per output channel by the block's first layer scale.
    pub proj: Linear<B>,
    pub num_heads: usize,
}

impl<B: Backend> Attention<B> {
    pub(crate) fn load(
        params: &mut impl Params<B>,
        name: &str,
        dim: usize,
        head_dim: usize,
        layer_scale: &[f32],
    ) -> Result<Self, LoadError> {
        let qkv = params.linear(&format!("{name}.qkv"), dim, 3 * dim, false)?;
        let mut w = params.host(&format!("{name}.proj.weight"), &[dim, dim])?;
        let mut b = params.host(&format!("{name}.proj.bias"), &[dim])?;
        scale_rows(&mut w, layer_scale);
        scale_rows(&mut b, layer_scale);
        let device = params.device();
        let proj = linear_from(w, dim, dim, Some(upload(b, [dim], device)), device);
        Ok(Self {
            qkv,
            proj,
            num_heads: dim / head_dim,
        })
    }

    /// `[batch, dim, h, w]` → `[batch, dim, h, w]`; tokens are the pixels in row-major order.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, dim, h, w] = x.dims();
        let n = h * w;
        let head_dim = dim / self.num_heads;
        let tokens = x.reshape([batch, dim, n]).swap_dims(1, 2);
        let qkv = self
            .qkv
            .forward(tokens)
            .reshape([batch, n, 3, self.num_heads, head_dim])
            .permute([2, 0, 3, 1, 4]);
        let [q, k, v] = [0, 1, 2].map(|i| {
            qkv.clone()
                .narrow(0, i, 1)
                .reshape([batch, self.num_heads, n, head_dim])
        });
        let out = ops::attention(q, k, v, n, false);
        let out = out.swap_dims(1, 2).reshape([batch, n, dim]);
        // Reshape while contiguous, then permute: burn 0.21's CubeCL reshape of a transposed
        // `[batch, dim, 1]` view to `[batch, dim, 1, 1]` (one token, batch > 1) mis-strides it.
        self.proj
            .forward(out)
            .reshape([batch, h, w, dim])
            .permute([0, 3, 1, 2])
    }
}
