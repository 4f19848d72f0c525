//! Qwen2, the language model of FastVLM (0.5B, 1.5B and 7B), on burn.
//!
//! Built from Hugging Face config fields and tensor names; accepts token ids or input
//! embeddings (FastVLM splices image tokens into them); prefill then one-token steps on a
//! [`KvCache`] preallocated for the request. The layers read as `modeling_qwen2.py` does
//! ([`Qwen2DecoderLayer::forward`]); a decoding step at batch 1 runs the same arithmetic
//! through the ops layer's fused rows ([`Qwen2DecoderLayer::step`]).
//!
//! ```no_run
//! # use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
//! # fn run<B: Backend>(config: &qwen2_decoder::Qwen2Config, source: &mut dyn FnMut(&str) -> Option<TensorData>, device: &B::Device) {
//! use qwen2_decoder::{Convention, Qwen2, names};
//! let model = Qwen2::<B>::load(config, &names(Convention::Apple).unwrap(), source, device).unwrap();
//! let mut cache = model.new_cache(1, 64, device).unwrap();
//! let prompt = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![151644i64, 872, 198], [1, 3]), device);
//! let logits = model.forward_last(model.embed(prompt), &mut cache).unwrap(); // [1, vocab]
//! # }
//! ```

mod attention;
mod cache;
mod config;
mod decode;
mod layer;
mod mlp;
mod model;
mod names;
mod rms_norm;
mod rotary;
pub mod vocab;

pub use attention::Qwen2Attention;
pub use cache::{KvCache, LayerCache};
pub use config::Qwen2Config;
pub use layer::Qwen2DecoderLayer;
pub use mlp::Qwen2Mlp;
pub use model::{DecodeError, Qwen2};
pub use names::names;
pub use rms_norm::RmsNorm;
pub use rotary::RotaryEmbedding;
pub use vlm_kernels::loader::{Convention, LoadError};
pub use vocab::{LmHead, TokenEmbedding};
