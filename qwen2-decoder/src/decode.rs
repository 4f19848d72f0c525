//! A decoding step: one new position of one sequence, through the ops layer's fused rows.
//!
//! The arithmetic is [`Qwen2DecoderLayer::forward`]'s on one position; it is written against
//! the ops that fuse a row (the norm with the projections after it, the rotation with the KV
//! cache write, a projection with the residual after it), because at batch 1 a step is
//! dominated by the number of operations, not by their arithmetic. Where the backend has no
//! fused kernel, each op is the same burn ops the layer's forward runs.

use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::ops::{self, Rope};

use crate::cache::LayerCache;
use crate::layer::Qwen2DecoderLayer;

impl<B: Backend> Qwen2DecoderLayer<B> {
    /// [`Self::forward`] for `x` `[1, 1, hidden]` at position `start`.
    pub fn step(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> Tensor<B, 3> {
        let attn = &self.self_attn;
        let hidden = x.dims()[2];
        // norm → q, k, v → rotation → cache write.
        let q = ops::qkv_rotary_append(
            x.clone(),
            &self.input_layernorm.row(),
            [&attn.q_proj, &attn.k_proj, &attn.v_proj],
            attn.head_dim,
            rope,
            &mut cache.keys,
            &mut cache.values,
            start,
        );
        let out = ops::attention(
            q,
            cache.keys.clone(),
            cache.values.clone(),
            start + 1,
            false,
        );
        // `[1, heads, 1, d]` is `[1, 1, hidden]` in memory.
        let x = ops::linear_residual(out.reshape([1, 1, hidden]), &attn.o_proj, x);
        let mlp = &self.mlp;
        let gated = ops::norm_swiglu(
            x.clone(),
            &self.post_attention_layernorm.row(),
            &mlp.gate_proj,
            &mlp.up_proj,
        );
        ops::linear_residual(gated, &mlp.down_proj, x)
    }
}
