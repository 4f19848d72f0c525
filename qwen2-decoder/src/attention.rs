use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, backend::Backend};

use crate::cache::LayerCache;
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
    /// `[batch, n, hidden]` at positions `start..start + n` → `[batch, n, hidden]`, attending
    /// to the cached positions and causally among the new ones.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &(Tensor<B, 4>, Tensor<B, 4>),
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> Tensor<B, 3> {
        let [batch, n, hidden] = x.dims();
        let heads =
            |t: Tensor<B, 3>, h: usize| t.reshape([batch, n, h, self.head_dim]).swap_dims(1, 2);
        let q = heads(self.q_proj.forward(x.clone()), self.num_heads);
        let k = heads(self.k_proj.forward(x.clone()), self.num_kv_heads);
        let v = heads(self.v_proj.forward(x), self.num_kv_heads);
        let q = RotaryEmbedding::apply(q, &rope.0, &rope.1);
        let k = RotaryEmbedding::apply(k, &rope.0, &rope.1);

        let (k, v) = cache.append(start, k, v);
        let len = start + n;
        let out = if n == 1 {
            self.attend_one(q, k, v, len)
        } else {
            self.attend(q, k, v, len)
        };
        self.o_proj
            .forward(out.swap_dims(1, 2).reshape([batch, n, hidden]))
    }

    /// Queries `[batch, heads, n, head_dim]` over the first `len` cached positions (causal
    /// when `n > 1`) through burn's attention, the kv heads repeated per query group.
    fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        len: usize,
    ) -> Tensor<B, 4> {
        let (k, v) = (self.repeat_kv(k, len), self.repeat_kv(v, len));
        // burn aligns the causal mask bottom-right: the n queries are the last n of the keys.
        let options = AttentionModuleOptions {
            is_causal: q.dims()[2] > 1,
            ..Default::default()
        };
        attention(q, k, v, None, None, options)
    }

    /// One query position (a decoding step) over the first `len` cached positions. On the
    /// CubeCL backends one kernel reads the cache in place (burn 0.21's attention at one
    /// position is about a dozen launches on wgpu, plus two copies for the repeated kv heads);
    /// elsewhere [`Self::attend`].
    fn attend_one(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        len: usize,
    ) -> Tensor<B, 4> {
        // One thread per channel: within every backend's workgroup limit (256 on wgpu).
        #[cfg(feature = "cubecl")]
        if self.head_dim <= 256 && crate::kernels::available::<B>() {
            use crate::kernels::{DecodeAttention, float, run};
            let kernel = DecodeAttention {
                len,
                group: self.num_heads / self.num_kv_heads,
            };
            return run(&kernel, vec![float(q), float(k), float(v)]);
        }
        self.attend(q, k, v, len)
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

/// Whether `B` runs this crate's CubeCL kernels (a decoding step's attention) rather than
/// burn's ops: true on wgpu and CUDA backends when this crate is built with the matching
/// feature (`wgpu`, `cuda`).
pub fn uses_cubecl_kernels<B: Backend>() -> bool {
    #[cfg(feature = "cubecl")]
    return crate::kernels::available::<B>();
    #[cfg(not(feature = "cubecl"))]
    false
}
