use burn::module::{Module, Param};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::Qwen2Config;
use crate::attention::Qwen2Attention;
use crate::cache::KvCache;
use crate::layer::Qwen2DecoderLayer;
use crate::mlp::Qwen2Mlp;
use crate::rms_norm::RmsNorm;
use crate::rotary::RotaryEmbedding;
use crate::vocab::{LmHead, MAX_BLOCK_BYTES, TokenEmbedding, rows_per_block};
use crate::weights::{LoadError, WeightLoader, transpose};

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

impl<B: Backend> Qwen2<B> {
    /// Builds the model from tensors named as in Hugging Face checkpoints, after `prefix`
    /// (empty for Qwen2 and FastVLM files). A tied model never reads `lm_head.weight`.
    /// Vocabulary-sized tensors are stored in blocks of at most 128 MiB (see [`crate::vocab`]).
    pub fn load(
        config: &Qwen2Config,
        prefix: &str,
        source: &mut dyn FnMut(&str) -> Option<TensorData>,
        device: &B::Device,
    ) -> Result<Self, LoadError> {
        Self::load_blocked(config, prefix, source, device, MAX_BLOCK_BYTES)
    }

    /// [`Qwen2::load`] with vocabulary blocks of at most `max_block_bytes` (at f32).
    pub fn load_blocked(
        config: &Qwen2Config,
        prefix: &str,
        source: &mut dyn FnMut(&str) -> Option<TensorData>,
        device: &B::Device,
        max_block_bytes: usize,
    ) -> Result<Self, LoadError> {
        config.validate().map_err(LoadError::Config)?;
        let mut w = WeightLoader::<B>::new(source, prefix, device);
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let head_dim = config.head_dim();
        let kv = config.num_key_value_heads * head_dim;
        let eps = config.rms_norm_eps;
        let rms = |w: &mut WeightLoader<B>, name: &str| -> Result<RmsNorm<B>, LoadError> {
            Ok(RmsNorm {
                weight: Param::from_tensor(w.tensor(&format!("{name}.weight"), [h])?),
                eps,
            })
        };

        let vocab = config.vocab_size;
        let rows = rows_per_block(h, max_block_bytes);
        let table = w.host("model.embed_tokens.weight", &[vocab, h])?;
        let embed_tokens = TokenEmbedding::new(
            table
                .chunks(rows * h)
                .map(|c| Tensor::from_data(TensorData::new(c.to_vec(), [c.len() / h, h]), device))
                .collect(),
        );
        drop(table);

        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let input_layernorm = rms(&mut w, &format!("{p}.input_layernorm"))?;
            let self_attn = Qwen2Attention {
                q_proj: w.linear(&format!("{p}.self_attn.q_proj"), h, h, true)?,
                k_proj: w.linear(&format!("{p}.self_attn.k_proj"), h, kv, true)?,
                v_proj: w.linear(&format!("{p}.self_attn.v_proj"), h, kv, true)?,
                o_proj: w.linear(&format!("{p}.self_attn.o_proj"), h, h, false)?,
                num_heads: config.num_attention_heads,
                num_kv_heads: config.num_key_value_heads,
                head_dim,
            };
            let post_attention_layernorm = rms(&mut w, &format!("{p}.post_attention_layernorm"))?;
            let mlp = Qwen2Mlp {
                gate_proj: w.linear(&format!("{p}.mlp.gate_proj"), h, i, false)?,
                up_proj: w.linear(&format!("{p}.mlp.up_proj"), h, i, false)?,
                down_proj: w.linear(&format!("{p}.mlp.down_proj"), i, h, false)?,
            };
            layers.push(Qwen2DecoderLayer {
                input_layernorm,
                self_attn,
                post_attention_layernorm,
                mlp,
            });
        }
        let norm = rms(&mut w, "model.norm")?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            // `[vocab, hidden]` as stored; each block transposed on the host to a contiguous
            // `[hidden, cols]` (a transposed view would be re-laid-out by every matmul).
            let out_in = w.host("lm_head.weight", &[vocab, h])?;
            Some(LmHead::new(
                out_in
                    .chunks(rows * h)
                    .map(|c| {
                        let cols = c.len() / h;
                        Tensor::from_data(TensorData::new(transpose(c, cols, h), [h, cols]), device)
                    })
                    .collect(),
            ))
        };
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
        Ok(self.norm.forward(self.layers_forward(embeds, cache)?))
    }

    /// The layers over `embeds` `[batch, n, hidden]`, before the final norm.
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
        let mut x = embeds;
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(x, &rope, layer_cache, start);
        }
        cache.advance(n);
        Ok(x)
    }

    /// Hidden states `[batch, n, hidden]` → logits `[batch, n, vocab]`.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, h] = hidden.dims();
        let flat = hidden.reshape([b * n, h]);
        let logits = match &self.lm_head {
            Some(head) => head.forward(flat),
            None => self.embed_tokens.project(flat),
        };
        let vocab = logits.dims()[1];
        logits.reshape([b, n, vocab])
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
        let x = self.layers_forward(embeds, cache)?;
        let [b, n, _] = x.dims();
        // The norm is per position: the last one's alone is the same row.
        let last = x.narrow(1, n - 1, 1);
        #[cfg(feature = "cubecl")]
        if let Some(logits) = self.head_row(&last) {
            let vocab = logits.dims()[2];
            return Ok(logits.reshape([b, vocab]));
        }
        let logits = self.logits(self.norm.forward(last));
        let vocab = logits.dims()[2];
        Ok(logits.reshape([b, vocab]))
    }

    /// The final norm and the LM head over one row `x` `[1, 1, hidden]` as batch-1 linear rows
    /// (`vlm_kernels::linear_row`, the norm in each launch): one launch per three vocabulary
    /// blocks (one in all where the table is whole), where burn runs the norm, a matrix product
    /// of one row per block and the concatenation. `None` where the kernel does not run or fit.
    #[cfg(feature = "cubecl")]
    fn head_row(&self, x: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        use vlm_kernels::{Kernel, RowProjection, available, linear_row, linear_row_fits};
        if !available::<B>(Kernel::Gemv) {
            return None;
        }
        // `[hidden, cols]` views: a tied head's `[rows, hidden]` blocks transposed.
        let weights: Vec<Tensor<B, 2>> = match &self.lm_head {
            Some(head) => head.blocks.iter().map(|b| b.val()).collect(),
            None => self
                .embed_tokens
                .blocks
                .iter()
                .map(|b| b.val().transpose())
                .collect(),
        };
        let norm = self.norm.row_norm();
        let groups: Vec<&[Tensor<B, 2>]> = weights.chunks(3).collect();
        let fits = groups
            .iter()
            .all(|group| linear_row_fits(x, group, &[], RowProjection::Concat, Some(&norm), None));
        if !fits {
            return None;
        }
        let parts: Vec<Tensor<B, 3>> = groups
            .into_iter()
            .map(|group| {
                linear_row(
                    x.clone(),
                    group,
                    &[],
                    RowProjection::Concat,
                    Some(norm.clone()),
                    None,
                )
            })
            .collect();
        Some(match <[_; 1]>::try_from(parts) {
            Ok([whole]) => whole,
            Err(parts) => Tensor::cat(parts, 2),
        })
    }
}
