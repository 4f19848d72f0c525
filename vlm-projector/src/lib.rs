//! The multimodal projector of LLaVA-family models (FastVLM uses `mlp2x_gelu`): image features
//! `[batch, tokens, 3072]` → language-model embeddings `[batch, tokens, hidden]`.

mod config;
mod model;

pub use config::{ProjectorConfig, ProjectorKind};
pub use model::{Projector, names};
pub use vlm_kernels::loader::{Convention, LoadError};
