use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::Linear;
use vlm_kernels::ops::{self, Rope};

use crate::cache::LayerCache;

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
    /// `x` `[batch, n, hidden]` (the normalised layer input) at positions `start..start + n`,
    /// attending to the cached positions and causally among the new ones, whose keys and values
    /// join the cache; `[batch, n, hidden]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> Tensor<B, 3> {
        let [batch, n, hidden] = x.dims();
        let heads =
            |t: Tensor<B, 3>, h: usize| t.reshape([batch, n, h, self.head_dim]).swap_dims(1, 2);
        let q = heads(self.q_proj.forward(x.clone()), self.num_heads);
        let k = heads(self.k_proj.forward(x.clone()), self.num_kv_heads);
        let v = heads(self.v_proj.forward(x), self.num_kv_heads);
        let q = ops::rotary_append(q, k, v, rope, &mut cache.keys, &mut cache.values, start);
        let out = ops::attention(
            q,
            cache.keys.clone(),
            cache.values.clone(),
            start + n,
            n > 1,
        );
        // `[batch, heads, 1, d]` is already `[batch, 1, hidden]` in memory; the swap would make
        // burn copy it.
        let out = match n {
            1 => out.reshape([batch, n, hidden]),
            _ => out.swap_dims(1, 2).reshape([batch, n, hidden]),
        };
        self.o_proj.forward(out)
    }
}
