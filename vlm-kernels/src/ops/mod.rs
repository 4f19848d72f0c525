//! The ops the models call wherever burn's own op is not the best one available.
//!
//! Each op is one total function: it takes any backend, dtype and shape its contract allows and
//! picks how to run itself, in this order: a CubeCL kernel ([`crate::cube`]) when `B`'s tensors
//! are CubeCL tensors of a runtime this crate was built for, the kernel is switched on
//! (`FASTVLM_CUBECL_KERNELS`) and the operands fit it; a parallel, vectorised loop
//! ([`crate::flex`]) on flex at f32; burn's ops otherwise. Every path computes the same function
//! up to floating-point rounding (the kernels' parity tests hold them to burn's ops), so which
//! one ran is never visible to a model but in time and launches.
//!
//! - Activations: [`gelu`], [`silu`], [`swiglu`] (f32 inside at f16/bf16), and [`to_f32`] /
//!   [`cast`] for the islands the models keep in f32.
//! - [`attention`]: softmax(q·kᵀ/√d)·v over a prefix of (cached) keys, grouped kv heads, causal
//!   or not.
//! - Convolutions: [`conv2d`] (a `Conv2d` module: per-channel ones through
//!   [`depthwise_conv2d`], dense ones summed in f32 at f16/bf16), [`pointwise`] and
//!   [`pointwise_mlp`] (1×1 convolutions as matrix products, and FastViTHD's ConvFFN MLP).
//! - [`rms_norm`] (statistics in f32 at every precision).
//! - A decoding step's rows at batch 1, which the GPU kernels fuse: [`qkv_rotary_append`] (norm,
//!   q/k/v, rotation, KV cache write), [`rotary_append`], [`linear_residual`],
//!   [`norm_swiglu`], [`norm_project`] (the final norm and the LM head).
//! - [`max_binding_bytes`]: the largest tensor one kernel argument may be on a backend.

mod activation;
mod attention;
mod conv;
mod norm;
mod quant;
mod rows;

pub use activation::{cast, gelu, silu, swiglu, to_f32};
pub use attention::attention;
pub use conv::{conv2d, depthwise_conv2d, pointwise, pointwise_mlp};
pub use norm::{RowNorm, rms_norm};
pub use quant::quantized_matmul;
pub use rows::{
    Projection, Rope, linear_residual, norm_project, norm_swiglu, qkv_rotary_append, rotary_append,
};

use burn::tensor::backend::Backend;

/// The CubeCL kernels this crate can put in place of burn's ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// [`depthwise_conv2d`] in one launch.
    Depthwise,
    /// [`attention`] in one launch.
    Attention,
    /// [`rotary_append`] in one launch.
    Rotary,
    /// The batch-1 linear rows ([`linear_residual`], [`norm_swiglu`], [`norm_project`], and the
    /// q/k/v of [`qkv_rotary_append`] where the fused kernel is off).
    Gemv,
    /// [`rms_norm`] in one launch.
    RmsNorm,
    /// [`qkv_rotary_append`] in one launch.
    QkvRotary,
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 6] = [
        Kernel::Depthwise,
        Kernel::Attention,
        Kernel::Rotary,
        Kernel::Gemv,
        Kernel::RmsNorm,
        Kernel::QkvRotary,
    ];

    /// The kernel's name in `FASTVLM_CUBECL_KERNELS`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Depthwise => "depthwise",
            Kernel::Attention => "attention",
            Kernel::Rotary => "rotary",
            Kernel::Gemv => "gemv",
            Kernel::RmsNorm => "rms_norm",
            Kernel::QkvRotary => "qkv_rotary",
        }
    }
}

/// Runs `pass` (a model's forward pass: a sequence of this module's ops) as one unit of work on
/// `B`. On flex all of `pass` runs on a thread of the CPU pool, so each parallel op inside forks
/// and joins from a pool thread whose partners steal its halves; called from elsewhere, each
/// op would inject itself into the pool and put the caller to sleep until it ends, two futex
/// round trips per op (a decoding step has over a hundred). On other backends `pass` runs as it
/// is.
pub fn forward_pass<B: Backend, R: Send>(pass: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "flex")]
    if crate::flex::on_flex::<B>() {
        return rayon::scope(|_| pass());
    }
    pass()
}

/// Whether `kernel` runs on `B`: its tensors are CubeCL tensors of a runtime this crate was
/// built for (features `wgpu`, `cuda`) and `FASTVLM_CUBECL_KERNELS` leaves the kernel on.
pub fn runs<B: Backend>(kernel: Kernel) -> bool {
    #[cfg(feature = "cubecl")]
    return crate::cube::available::<B>(kernel);
    #[cfg(not(feature = "cubecl"))]
    {
        let _ = kernel;
        false
    }
}

/// Whether any of this crate's CubeCL kernels runs on `B` (rather than burn's ops throughout).
pub fn uses_cubecl_kernels<B: Backend>() -> bool {
    Kernel::ALL.into_iter().any(runs::<B>)
}

/// The largest tensor, in bytes, that one kernel argument may be on `B`: wgpu caps a storage
/// binding at 128 MiB on lavapipe and many adapters (its default limit), so the models keep
/// vocabulary-sized tables in blocks below it there; other backends take any size.
pub fn max_binding_bytes<B: Backend>(device: &B::Device) -> usize {
    if B::name(device).contains("wgpu") {
        128 << 20
    } else {
        usize::MAX
    }
}
