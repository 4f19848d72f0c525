use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};
use vlm_kernels::ops::Rope;

use crate::attention::Qwen2Attention;
use crate::cache::LayerCache;
use crate::mlp::Qwen2Mlp;
use crate::rms_norm::RmsNorm;

/// Pre-norm decoder layer: `x += attn(norm(x))`, `x += mlp(norm(x))`.
#[derive(Module, Debug)]
pub struct Qwen2DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Qwen2Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Qwen2Mlp<B>,
}

impl<B: Backend> Qwen2DecoderLayer<B> {
    /// `[batch, n, hidden]` at positions `start..start + n` → same shape; the layer's cache
    /// grows by the `n` positions.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> Tensor<B, 3> {
        let attn =
            self.self_attn
                .forward(self.input_layernorm.forward(x.clone()), rope, cache, start);
        let x = x + attn;
        let mlp = self
            .mlp
            .forward(self.post_attention_layernorm.forward(x.clone()));
        x + mlp
    }
}
