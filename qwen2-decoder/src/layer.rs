use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};

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
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &(Tensor<B, 4>, Tensor<B, 4>),
        cache: &mut LayerCache<B>,
        start: usize,
    ) -> Tensor<B, 3> {
        let x = self
            .self_attn
            .forward(x, &self.input_layernorm, rope, cache, start);
        self.mlp.forward_residual(x, &self.post_attention_layernorm)
    }
}
