//! Kernels for the ops of FastVLM's models that burn 0.21 runs slowly or as many small
//! launches, picked at run time: CubeCL kernels on the GPU backends, parallel vectorised loops
//! on the `flex` CPU backend.
//!
//! The models stay generic over `B: Backend`. When `B`'s float tensors turn out to be CubeCL
//! tensors of a runtime compiled in (`wgpu`, `cuda` features), with burn's fusion in front or
//! without, a model asks [`available`] and calls the op here; otherwise it takes burn's ops.
//! Under fusion each kernel is registered as a custom operation of the fusion stream, so the
//! operations around it still fuse and run in order.
//!
//! The CubeCL ops: [`depthwise_conv2d`] (FastViTHD's spatial mixing), [`attention`] (FastViTHD's
//! attention stages, the decoder's prefill and its one-position decoding step over a KV cache),
//! [`rotary_append`] and [`rms_norm`] (the decoder's rotary embedding with the KV cache write,
//! and its norms), [`linear_row`] (a decoding step's linear layers at batch 1: the norm and
//! SwiGLU in one launch, the residual added on the way out, the final norm and the LM head) and
//! [`qkv_rotary_append`] (a decoding step's norm, q/k/v, rotation and cache write in one). Each
//! is checked against burn's ops on the CPU in `vlm-pipeline/tests/wgpu_parity.rs`.
//!
//! `FASTVLM_CUBECL_KERNELS=off` leaves every op to burn, and a list of kernel names runs only
//! those ([`switched_on`]), for timing each kernel against burn's op in one build.
//!
//! [`activation`] holds the models' GELU, SiLU and SwiGLU as PyTorch evaluates them (f32 inside
//! at f16/bf16); on flex (feature `flex`) through [`flex`], one parallel pass where flex runs
//! one element at a time on one thread through libm. [`flex`] also has the CPU's attention,
//! per-channel and small dense convolutions and FastViTHD's pixel-wise MLP (ConvFFN), each a
//! parallel loop over the cores where flex 0.21 runs one thread or round-trips memory.

pub mod activation;
#[cfg(feature = "cubecl")]
mod attention;
#[cfg(feature = "cubecl")]
mod cube;
#[cfg(feature = "cubecl")]
mod decode_attention;
#[cfg(feature = "cubecl")]
mod depthwise;
#[cfg(feature = "flex")]
pub mod flex;
#[cfg(feature = "cubecl")]
mod gemv;
mod geometry;
#[cfg(feature = "cubecl")]
mod qkv_rotary;
#[cfg(feature = "cubecl")]
mod rms_norm;
#[cfg(feature = "cubecl")]
mod rotary;

#[cfg(feature = "cubecl")]
pub use attention::{KvAttention, attention};
#[cfg(feature = "cubecl")]
pub(crate) use cube::{CubeKernel, float, run, run_all};
#[cfg(feature = "cubecl")]
pub use cube::{Kernel, available, cubecl_backend, switched_on};
#[cfg(feature = "cubecl")]
pub use depthwise::depthwise_conv2d;
#[cfg(feature = "cubecl")]
pub use gemv::{RowNorm, RowProjection, linear_row, linear_row_fits};
#[cfg(feature = "cubecl")]
pub use qkv_rotary::{qkv_rotary_append, qkv_rotary_append_fits};
#[cfg(feature = "cubecl")]
pub use rms_norm::{rms_norm, rms_norm_fits};
#[cfg(feature = "cubecl")]
pub use rotary::{rotary_append, rotary_append_fits};

pub use geometry::Depthwise;

use std::any::{Any, TypeId};

/// Whether `T` and `U` are one type.
#[cfg_attr(
    not(any(feature = "wgpu", feature = "cuda", feature = "flex")),
    allow(dead_code)
)]
fn is<T: 'static, U: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<U>()
}

/// `value` as `U`, which [`is`] has established to be its own type.
#[cfg_attr(
    not(any(feature = "wgpu", feature = "cuda", feature = "flex")),
    allow(dead_code)
)]
fn cast<T: 'static, U: 'static>(value: T) -> U {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
        .expect("cast only after `is` matched the types")
}
