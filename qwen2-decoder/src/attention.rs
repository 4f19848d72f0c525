use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, backend::Backend};

use crate::cache::LayerCache;
use crate::rms_norm::RmsNorm;
use crate::rotary::RotaryEmbedding;

/// Grouped-query causal self-attention with rotary positions: q/k/v with bias, o without;
/// each group of `heads / kv_heads` query heads shares one key/value head.
#[derive(Module, Debug)]
pub struct Qwen2Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl<B: Backend> Qwen2Attention<B> {
    /// `x + attention(norm(x))` for `x` `[batch, n, hidden]` at positions `start..start + n`,
    /// attending to the cached positions and causally among the new ones; `[batch, n, hidden]`
    /// (the first half of a pre-norm layer).
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        norm: &RmsNorm<B>,
        rope: &(Tensor<B, 4>, Tensor<B, 4>),
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> Tensor<B, 3> {
        let [batch, n, hidden] = x.dims();
        let (q, k, v) = match self.step_inputs(&x, norm, rope, cache, start) {
            Some(qkv) => qkv,
            None => self.inputs(&x, norm, rope, cache, start),
        };
        let out = self.attend(q, k, v, start + n);
        // `[batch, heads, 1, d]` is already `[batch, 1, hidden]` in memory; the swap would make
        // burn copy it.
        let out = if n == 1 {
            out.reshape([batch, n, hidden])
        } else {
            out.swap_dims(1, 2).reshape([batch, n, hidden])
        };
        crate::mlp::linear_add(&self.o_proj, out, x)
    }

    /// Rotated queries `[batch, heads, n, d]` and the cache buffers with the new keys and
    /// values written, from the layer's input `x` `[batch, n, hidden]`.
    fn inputs(
        &self,
        x: &Tensor<B, 3>,
        norm: &RmsNorm<B>,
        rope: &(Tensor<B, 4>, Tensor<B, 4>),
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, n, _] = x.dims();
        let heads =
            |t: Tensor<B, 3>, h: usize| t.reshape([batch, n, h, self.head_dim]).swap_dims(1, 2);
        let (q, k, v) = match self.projections_row(x, norm) {
            // Split by heads after the reshape: a reshape of a narrowed view is a copy in burn.
            Some(qkv) => {
                let all = heads(qkv, self.num_heads + 2 * self.num_kv_heads);
                let kv = self.num_kv_heads;
                (
                    all.clone().narrow(1, 0, self.num_heads),
                    all.clone().narrow(1, self.num_heads, kv),
                    all.narrow(1, self.num_heads + kv, kv),
                )
            }
            None => {
                let normed = norm.forward(x.clone());
                (
                    heads(self.q_proj.forward(normed.clone()), self.num_heads),
                    heads(self.k_proj.forward(normed.clone()), self.num_kv_heads),
                    heads(self.v_proj.forward(normed), self.num_kv_heads),
                )
            }
        };
        #[cfg(feature = "cubecl")]
        let fused = cache.rotate_and_append(start, [&q, &k, &v], rope);
        #[cfg(not(feature = "cubecl"))]
        let fused = None;
        fused.unwrap_or_else(|| {
            let q = RotaryEmbedding::apply(q, &rope.0, &rope.1);
            let k = RotaryEmbedding::apply(k, &rope.0, &rope.1);
            let (k, v) = cache.append(start, k, v);
            (q, k, v)
        })
    }

    /// [`Self::inputs`] for a decoding step at batch 1 in one launch on the CubeCL backends
    /// (`vlm_kernels::qkv_rotary_append`: the norm, q/k/v, the rotation and the cache write);
    /// `None` (nothing done) elsewhere.
    fn step_inputs(
        &self,
        x: &Tensor<B, 3>,
        norm: &RmsNorm<B>,
        rope: &(Tensor<B, 4>, Tensor<B, 4>),
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> Option<(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
        #[cfg(feature = "cubecl")]
        {
            let projections = [&self.q_proj, &self.k_proj, &self.v_proj];
            let biases: Vec<Tensor<B, 1>> = projections
                .iter()
                .filter_map(|l| l.bias.as_ref().map(|b| b.val()))
                .collect();
            let biases = match <[_; 3]>::try_from(biases) {
                Ok(all) => Some(all),
                Err(none) if none.is_empty() => None,
                // Biases on some only: not the kernel's case.
                Err(_) => return None,
            };
            cache.project_rotate_append(
                start,
                x,
                Some(norm.row_norm()),
                projections.map(|l| l.weight.val()),
                biases,
                rope,
            )
        }
        #[cfg(not(feature = "cubecl"))]
        {
            let _ = (x, norm, rope, cache, start);
            None
        }
    }

    /// q, k and v of `norm(x)` side by side `[1, 1, q + 2·kv]` in one launch, for a single row
    /// on the CubeCL backends; `None` where the norm and the three matmuls run.
    fn projections_row(&self, x: &Tensor<B, 3>, norm: &RmsNorm<B>) -> Option<Tensor<B, 3>> {
        #[cfg(feature = "cubecl")]
        return crate::mlp::linear_row(
            x,
            &[&self.q_proj, &self.k_proj, &self.v_proj],
            vlm_kernels::RowProjection::Concat,
            Some(norm),
            None,
        );
        #[cfg(not(feature = "cubecl"))]
        {
            let _ = (x, norm);
            None
        }
    }

    /// Queries `[batch, heads, n, head_dim]` over the first `len` positions of the cache
    /// buffers `[batch, kv_heads, capacity, head_dim]`, causal among the `n` new ones.
    ///
    /// On the CubeCL backends one kernel reads the cache in place (`vlm_kernels::attention`:
    /// burn 0.21's attention is about a dozen launches plus two copies for the repeated kv
    /// heads); on flex at f32 `vlm_kernels::flex::attention`, which reads the grouped kv heads
    /// in place and spreads heads over the cores; elsewhere burn's attention over the repeated
    /// kv heads.
    fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        len: usize,
    ) -> Tensor<B, 4> {
        let causal = q.dims()[2] > 1;
        #[cfg(feature = "cubecl")]
        if vlm_kernels::available::<B>(vlm_kernels::Kernel::Attention) {
            let options = vlm_kernels::KvAttention { len, causal };
            if options.fits(&q, &k, &v) {
                return vlm_kernels::attention(q, k, v, options);
            }
        }
        // Only on flex: on the fusion backends the narrowed views would be operations of their
        // own for a path that does not run, and `repeat_kv` must see the whole buffers.
        #[cfg(feature = "flex")]
        let (q, k, v) = if vlm_kernels::flex::on_flex::<B>() {
            match vlm_kernels::flex::attention(q, k.narrow(2, 0, len), v.narrow(2, 0, len), causal)
            {
                Ok(out) => return out,
                Err((q, k, v)) => (q, k, v),
            }
        } else {
            (q, k, v)
        };
        let (k, v) = (self.repeat_kv(k, len), self.repeat_kv(v, len));
        // burn aligns the causal mask bottom-right: the n queries are the last n of the keys.
        let options = AttentionModuleOptions {
            is_causal: causal,
            ..Default::default()
        };
        attention(q, k, v, None, None, options)
    }

    /// The first `len` positions of a cache buffer `[batch, kv_heads, capacity, d]` as
    /// `[batch, heads, len, d]`; query head `h` reads kv head `h / group`.
    ///
    /// The new axis goes in while the buffer is contiguous and the positions are cut after:
    /// burn 0.21's CubeCL reshape mis-strides a narrowed view with a unit axis (one cached
    /// position) when a dimension is added to it.
    fn repeat_kv(&self, x: Tensor<B, 4>, len: usize) -> Tensor<B, 4> {
        let group = self.num_heads / self.num_kv_heads;
        if group == 1 {
            return x.narrow(2, 0, len);
        }
        let [b, kvh, capacity, d] = x.dims();
        x.unsqueeze_dim::<5>(2)
            .expand([b, kvh, group, capacity, d])
            .narrow(3, 0, len)
            .reshape([b, kvh * group, len, d])
    }
}

/// Whether `B` runs any of the decoder's CubeCL kernels (from `vlm-kernels`: attention over the
/// KV cache, the rotary embedding, the norms, a decoding step's linear layers) rather than
/// burn's ops: on wgpu and CUDA backends when this crate is built with the matching feature
/// (`wgpu`, `cuda`), unless `FASTVLM_CUBECL_KERNELS` switches them off.
pub fn uses_cubecl_kernels<B: Backend>() -> bool {
    #[cfg(feature = "cubecl")]
    return [
        vlm_kernels::Kernel::Attention,
        vlm_kernels::Kernel::Rotary,
        vlm_kernels::Kernel::Gemv,
        vlm_kernels::Kernel::RmsNorm,
    ]
    .into_iter()
    .any(vlm_kernels::available::<B>);
    #[cfg(not(feature = "cubecl"))]
    false
}
