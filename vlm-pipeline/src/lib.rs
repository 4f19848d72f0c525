//! FastVLM end to end: Apple's release directories, their weights and tokenizer, image
//! preprocessing, the prompt template, splicing, and generation.
//!
//! The model crates (`fastvithd`, `vlm-projector`, `qwen2-decoder`) know tensors; this crate
//! knows files and tokens.

pub mod backend;
pub mod config;
pub mod fastvlm;
#[doc(hidden)]
pub mod fuzzing;
pub mod generate;
pub mod image;
mod jpeg;
pub mod output;
pub mod prompt;
pub mod quantize;
pub mod resize;
pub mod tokenizer;
pub mod weights;
pub mod zoo;

pub use config::{AspectRatio, ConfigError, FastVlmConfig};
pub use fastvlm::{EncodedImage, FastVlm, Generation, PipelineError, Request, TokenEvent};
pub use generate::{FinishReason, GenerationOptions, Metrics, TokenLogprobs};
pub use prompt::{Message, Role};
pub use tokenizer::Tokenizer;
pub use vlm_kernels::{Activations, Quantization};
pub use weights::{Weights, WeightsError};
