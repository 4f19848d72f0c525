use burn::module::{Module, Param};
use burn::tensor::{Int, Tensor, backend::Backend};
use vlm_kernels::loader::{LoadError, Loader, NameMap, Params, Source};
use vlm_kernels::ops::{self, Projection};
use vlm_kernels::{Activations, Quantization};

use crate::Qwen2Config;
use crate::attention::Qwen2Attention;
use crate::cache::KvCache;
use crate::layer::Qwen2DecoderLayer;
use crate::mlp::Qwen2Mlp;
use crate::rms_norm::RmsNorm;
use crate::rotary::RotaryEmbedding;
use crate::vocab::{LmHead, TokenEmbedding, rows_per_block};

/// A request the model cannot serve.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("the sequence needs {needed} positions but the context holds {capacity}")]
    ContextFull { needed: usize, capacity: usize },
    #[error("a batch of {got} does not fit a cache made for batch {cache}")]
    Batch { got: usize, cache: usize },
}

/// Qwen2 causal language model (`Qwen2ForCausalLM`).
#[derive(Module, Debug)]
pub struct Qwen2<B: Backend> {
    /// `[vocab, hidden]` in row blocks; also the output projection when the head is tied.
    pub embed_tokens: TokenEmbedding<B>,
    pub layers: Vec<Qwen2DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    /// `[hidden, vocab]` in column blocks, absent when tied to the embedding.
    pub lm_head: Option<LmHead<B>>,
    pub rope: RotaryEmbedding,
    pub max_position_embeddings: usize,
}

/// The RMS norm `{name}.weight` `[hidden]`.
fn rms_norm<B: Backend>(
    params: &mut impl Params<B>,
    name: &str,
    hidden: usize,
    eps: f64,
) -> Result<RmsNorm<B>, LoadError> {
    Ok(RmsNorm {
        weight: Param::from_tensor(params.tensor(&format!("{name}.weight"), [hidden])?),
        eps,
    })
}

impl<B: Backend> Qwen2<B> {
    /// Builds the model from a checkpoint's tensors, named as `names` says (see
    /// [`crate::names()`]). A tied model never reads `lm_head.weight`. Vocabulary-sized tensors
    /// are stored in blocks the backend can bind ([`ops::max_binding_bytes`]).
    pub fn load(
        config: &Qwen2Config,
        names: &NameMap,
        source: &mut Source<'_>,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        Self::load_blocked(
            config,
            names,
            source,
            device,
            ops::max_binding_bytes::<B>(device),
        )
    }

    /// [`Qwen2::load`] with vocabulary blocks of at most `max_block_bytes` (at f32).
    pub fn load_blocked(
        config: &Qwen2Config,
        names: &NameMap,
        source: &mut Source<'_>,
        device: &B::Device,
        max_block_bytes: usize,
    ) -> Result<Self, LoadError> {
        Self::build(
            config,
            &mut Loader::new(source, names, device),
            max_block_bytes,
        )
    }

    /// [`Qwen2::load`] with every linear layer and the vocabulary tables quantized to
    /// `quantization` as they load (one tensor at a time: the model never exists in f32 as a
    /// whole). Tensors the checkpoint stores quantized (MLX's layout) load as stored either way.
    pub fn load_quantized(
        config: &Qwen2Config,
        names: &NameMap,
        source: &mut Source<'_>,
        device: &B::Device,
        quantization: Option<Quantization>,
    ) -> Result<Self, LoadError> {
        if let Some(scheme) = quantization {
            scheme.check().map_err(LoadError::Config)?;
        }
        Self::build(
            config,
            &mut Loader::new(source, names, device).with_quantization(quantization),
            ops::max_binding_bytes::<B>(device),
        )
    }

    /// Builds the model from `params` (a checkpoint, or random values), with vocabulary blocks
    /// of at most `max_block_bytes` (at f32).
    pub fn build(
        config: &Qwen2Config,
        params: &mut impl Params<B>,
        max_block_bytes: usize,
    ) -> Result<Self, LoadError> {
        config.validate().map_err(LoadError::Config)?;
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let head_dim = config.head_dim();
        let kv = config.num_key_value_heads * head_dim;
        let eps = config.rms_norm_eps;
        let vocab = config.vocab_size;
        let rows = rows_per_block(h, max_block_bytes);
        let embed_tokens = match params.table_quantizable("model.embed_tokens", [vocab, h], rows)? {
            Some(blocks) => TokenEmbedding::quantized(blocks),
            None => TokenEmbedding::new(params.table(
                "model.embed_tokens.weight",
                [vocab, h],
                rows,
                false,
            )?),
        };

        // The vocabulary tables before the layers: each passes through memory whole as it is
        // read (7B: 1.1 GB in bf16), which then adds to little else.
        let lm_head = match config.tie_word_embeddings {
            true => None,
            // `[vocab, hidden]` as stored; each block transposed on the host to a contiguous
            // `[hidden, cols]` (a transposed view would be laid out again by every product).
            false => Some(
                match params.table_quantizable("lm_head", [vocab, h], rows)? {
                    Some(blocks) => LmHead::quantized(blocks),
                    None => LmHead::new(params.table("lm_head.weight", [vocab, h], rows, true)?),
                },
            ),
        };

        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let input_layernorm = rms_norm(params, &format!("{p}.input_layernorm"), h, eps)?;
            let self_attn = Qwen2Attention {
                q_proj: params.linear_quantizable(&format!("{p}.self_attn.q_proj"), h, h, true)?,
                k_proj: params.linear_quantizable(&format!("{p}.self_attn.k_proj"), h, kv, true)?,
                v_proj: params.linear_quantizable(&format!("{p}.self_attn.v_proj"), h, kv, true)?,
                o_proj: params.linear_quantizable(&format!("{p}.self_attn.o_proj"), h, h, false)?,
                num_heads: config.num_attention_heads,
                num_kv_heads: config.num_key_value_heads,
                head_dim,
            };
            let post_attention_layernorm =
                rms_norm(params, &format!("{p}.post_attention_layernorm"), h, eps)?;
            let mlp = Qwen2Mlp {
                gate_proj: params.linear_quantizable(&format!("{p}.mlp.gate_proj"), h, i, false)?,
                up_proj: params.linear_quantizable(&format!("{p}.mlp.up_proj"), h, i, false)?,
                down_proj: params.linear_quantizable(&format!("{p}.mlp.down_proj"), i, h, false)?,
            };
            layers.push(Qwen2DecoderLayer {
                input_layernorm,
                self_attn,
                post_attention_layernorm,
                mlp,
            });
        }
        let norm = rms_norm(params, "model.norm", h, eps)?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: RotaryEmbedding {
                head_dim,
                theta: config.rope_theta,
            },
            max_position_embeddings: config.max_position_embeddings,
        })
    }

    /// Sets how every quantized matrix (linear layers, vocabulary tables) meets the
    /// activations at a decoding step; the number of quantized matrices (none: the weights
    /// are at the compute precision and the setting has nothing to act on).
    pub fn set_activations(&mut self, activations: Activations) -> usize {
        let mut quantized = 0;
        for layer in &mut self.layers {
            let attn = &mut layer.self_attn;
            let mlp = &mut layer.mlp;
            for linear in [
                &mut attn.q_proj,
                &mut attn.k_proj,
                &mut attn.v_proj,
                &mut attn.o_proj,
                &mut mlp.gate_proj,
                &mut mlp.up_proj,
                &mut mlp.down_proj,
            ] {
                quantized += usize::from(linear.set_activations(activations));
            }
        }
        let head = self.lm_head.as_mut().map(|h| &mut h.quantized);
        for table in [Some(&mut self.embed_tokens.quantized), head]
            .into_iter()
            .flatten()
        {
            for block in table.iter_mut() {
                block.activations = activations;
                quantized += 1;
            }
        }
        quantized
    }

    /// A cache for `batch` sequences of up to `capacity` positions (what the request needs:
    /// prompt plus new tokens), at most `max_position_embeddings`.
    pub fn new_cache(
        &self,
        batch: usize,
        capacity: usize,
        device: &B::Device,
    ) -> Result<KvCache<B>, DecodeError> {
        if capacity > self.max_position_embeddings {
            return Err(DecodeError::ContextFull {
                needed: capacity,
                capacity: self.max_position_embeddings,
            });
        }
        let attn = &self.layers[0].self_attn;
        Ok(KvCache::new(
            self.layers.len(),
            batch,
            attn.num_kv_heads,
            capacity,
            attn.head_dim,
            device,
        ))
    }

    /// Token ids `[batch, seq]` → input embeddings `[batch, seq, hidden]`.
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.embed_tokens.forward(ids)
    }

    /// The input embedding `[1, 1, hidden]` of one token id known on the host (a decoding
    /// step's sampled token): a view of its row, where [`Self::embed`] looks the id up in every
    /// vocabulary block on the device. `None` past the vocabulary.
    pub fn embed_token(&self, id: usize) -> Option<Tensor<B, 3>> {
        self.embed_tokens.row(id).map(|row| row.unsqueeze())
    }

    /// Runs input embeddings `[batch, n, hidden]` at the positions after the cached ones and
    /// returns the final-norm hidden states `[batch, n, hidden]`; the cache grows by `n`.
    pub fn hidden(
        &self,
        embeds: Tensor<B, 3>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>, DecodeError> {
        ops::forward_pass::<B, _>(|| Ok(self.norm.forward(self.layers_forward(embeds, cache)?)))
    }

    /// The layers over `embeds` `[batch, n, hidden]`, before the final norm: one position of
    /// one sequence as a decoding step ([`Qwen2DecoderLayer::step`]), anything else through
    /// [`Qwen2DecoderLayer::forward`].
    fn layers_forward(
        &self,
        embeds: Tensor<B, 3>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>, DecodeError> {
        let [batch, n, _] = embeds.dims();
        if batch != cache.batch() {
            return Err(DecodeError::Batch {
                got: batch,
                cache: cache.batch(),
            });
        }
        let start = cache.len();
        if start + n > cache.capacity() {
            return Err(DecodeError::ContextFull {
                needed: start + n,
                capacity: cache.capacity(),
            });
        }
        let rope = self.rope.tables::<B>(start, n, &embeds.device());
        let step = batch == 1 && n == 1;
        let mut x = embeds;
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = match step {
                true => layer.step(x, &rope, layer_cache, start),
                false => layer.forward(x, &rope, layer_cache, start),
            };
        }
        cache.advance(n);
        Ok(x)
    }

    /// The output projection's blocks: the LM head's, or the embedding's when tied.
    fn head(&self) -> Vec<Projection<B>> {
        match &self.lm_head {
            Some(head) => head.projection(),
            None => self.embed_tokens.projection(),
        }
    }

    /// Hidden states `[batch, n, hidden]` → logits `[batch, n, vocab]`.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        ops::forward_pass::<B, _>(|| ops::norm_project(hidden, None, &self.head()))
    }

    /// Logits `[batch, n, vocab]` for every position of `embeds` `[batch, n, hidden]`.
    pub fn forward_embeds(
        &self,
        embeds: Tensor<B, 3>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>, DecodeError> {
        Ok(self.logits(self.hidden(embeds, cache)?))
    }

    /// Logits `[batch, n, vocab]` for every position of `ids` `[batch, n]`.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 3>, DecodeError> {
        self.forward_embeds(self.embed(ids), cache)
    }

    /// Logits `[batch, vocab]` of the last position only: what generation needs, without the
    /// full-vocabulary projection of every prompt position.
    pub fn forward_last(
        &self,
        embeds: Tensor<B, 3>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 2>, DecodeError> {
        ops::forward_pass::<B, _>(|| {
            let x = self.layers_forward(embeds, cache)?;
            let [b, n, _] = x.dims();
            // The norm is per position: the last one's alone is the same row.
            let last = x.narrow(1, n - 1, 1);
            let logits = ops::norm_project(last, Some(&self.norm.row()), &self.head());
            let vocab = logits.dims()[2];
            Ok(logits.reshape([b, vocab]))
        })
    }
}
