use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, backend::Backend};

use crate::weights::{LoadError, WeightLoader};

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
        loader: &mut WeightLoader<B>,
        name: &str,
        dim: usize,
        head_dim: usize,
        layer_scale: &[f32],
    ) -> Result<Self, LoadError> {
        let qkv = loader.linear(&format!("{name}.qkv"), dim, 3 * dim, false)?;
        let mut w = loader.host(&format!("{name}.proj.weight"), &[dim, dim])?;
        let mut b = loader.host(&format!("{name}.proj.bias"), &[dim])?;
        crate::conv_ffn::scale_rows(&mut w, layer_scale);
        crate::conv_ffn::scale_rows(&mut b, layer_scale);
        let bias = loader.upload(b, [dim]);
        let proj = loader.linear_from(w, dim, dim, Some(bias));
        Ok(Self {
            qkv,
            proj,
            num_heads: dim / head_dim,
        })
    }

    /// softmax(q·kᵀ/√head_dim)·v for `[batch, heads, tokens, head_dim]` each: one kernel on the
    /// CubeCL backends (`vlm_kernels::attention` reads the strided q/k/v views of the `qkv`
    /// output in place; burn 0.21's attention is a dozen launches and materialises the scores),
    /// on flex at f32 `vlm_kernels::flex::attention` (burn's runs one head at a time on one
    /// thread), burn's attention elsewhere.
    fn attend(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
        #[cfg(feature = "cubecl")]
        if vlm_kernels::available::<B>(vlm_kernels::Kernel::Attention) {
            let options = vlm_kernels::KvAttention {
                len: k.dims()[2],
                causal: false,
            };
            if options.fits(&q, &k, &v) {
                return vlm_kernels::attention(q, k, v, options);
            }
        }
        #[cfg(feature = "flex")]
        let (q, k, v) = match vlm_kernels::flex::attention(q, k, v, false) {
            Ok(out) => return out,
            Err(inputs) => inputs,
        };
        attention(q, k, v, None, None, AttentionModuleOptions::default())
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
        let out = Self::attend(q, k, v);
        let out = out.swap_dims(1, 2).reshape([batch, n, dim]);
        // Reshape while contiguous, then permute: burn 0.21's CubeCL reshape of a transposed
        // `[batch, dim, 1]` view to `[batch, dim, 1, 1]` (one token, batch > 1) mis-strides it.
        self.proj
            .forward(out)
            .reshape([batch, h, w, dim])
            .permute([0, 3, 1, 2])
    }
}
