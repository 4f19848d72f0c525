//! The multimodal projector of LLaVA-family models (FastVLM uses `mlp2x_gelu`): image features
//! `[batch, tokens, 3072]` → language-model embeddings `[batch, tokens, hidden]`.

mod projector;

pub use projector::{LoadError, Projector, ProjectorKind};
