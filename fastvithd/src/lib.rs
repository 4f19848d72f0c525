//! FastViTHD, the hybrid convolution/attention image encoder of Apple's FastVLM, on burn.
//!
//! The network is built in the inference (re-parameterised) form that the FastVLM checkpoints
//! store: a convolutional stem, three stages of [`RepMixerBlock`]s, two stages of
//! [`AttentionBlock`]s behind [`RepCpe`] positional encodings, a [`PatchEmbed`] between stages,
//! and a squeeze-excite `conv_exp` head. A 1024×1024 image gives a `[1, 3072, 16, 16]` map,
//! i.e. 256 tokens of width 3072. The ops that burn runs slowly go through
//! [`vlm_kernels::ops`], which picks a kernel per backend.
//!
//! ```no_run
//! # use burn::tensor::{Tensor, TensorData, backend::Backend};
//! # fn run<B: Backend>(source: &mut dyn FnMut(&str) -> Option<TensorData>, device: &B::Device) {
//! use fastvithd::{Convention, FastVitHd, FastVitHdConfig, names};
//! let config = FastVitHdConfig::released();
//! let names = names(Convention::Apple).unwrap();
//! let encoder = FastVitHd::<B>::load(&config, &names, source, device).unwrap();
//! let tokens = encoder.tokens(Tensor::zeros([1, 3, 1024, 1024], device)); // [1, 256, 3072]
//! # }
//! ```

mod attention;
mod attention_block;
mod config;
mod conv_ffn;
mod layer_norm_channel;
mod mobileone;
mod model;
mod names;
mod patch_embed;
mod pointwise;
mod rep_cpe;
mod repmixer;
mod squeeze_excite;

pub use attention::Attention;
pub use attention_block::AttentionBlock;
pub use config::FastVitHdConfig;
pub use conv_ffn::{ConvFfn, fold_batch_norm};
pub use layer_norm_channel::LayerNormChannel;
pub use mobileone::MobileOneBlock;
pub use model::{FastVitHd, Stage};
pub use names::{APPLE_PREFIX, HUGGING_FACE_PREFIX, TIMM_RENAMES, names};
pub use patch_embed::PatchEmbed;
pub use pointwise::Pointwise;
pub use rep_cpe::RepCpe;
pub use repmixer::RepMixerBlock;
pub use squeeze_excite::SqueezeExcite;
pub use vlm_kernels::loader::{Convention, LoadError};
