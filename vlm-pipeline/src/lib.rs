//! FastVLM end to end: Apple's release directories, their weights, and the stages joined.
//!
//! The model crates (`fastvithd`, `vlm-projector`, `qwen2-decoder`) know tensors; this crate
//! knows files.

pub mod backend;
pub mod synthetic;
pub mod weights;

pub use weights::{Weights, WeightsError};
