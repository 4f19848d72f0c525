//! Backends chosen by cargo features; the model code is the same for all of them.
//!
//! Features of this crate (forwarded by `vlm-cli`, `vlm-server` and `benches`): `flex` (pure-Rust
//! CPU, default), `ndarray` (CPU), `wgpu` (Vulkan/Metal/DX12 through wgpu; `vulkan` and `metal`
//! pin the graphics API), `cuda`.

/// The pure-Rust CPU backend.
#[cfg(feature = "flex")]
pub type Cpu = burn::backend::Flex;
/// The CPU backend (ndarray, when `flex` is not compiled in).
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub type Cpu = burn::backend::NdArray;

/// The wgpu backend on the graphics API the features pick.
#[cfg(all(feature = "wgpu", not(feature = "vulkan"), not(feature = "metal")))]
pub type Gpu = burn::backend::Wgpu;
#[cfg(feature = "vulkan")]
pub type Gpu = burn::backend::Vulkan;
#[cfg(all(feature = "metal", not(feature = "vulkan")))]
pub type Gpu = burn::backend::Metal;

/// The CUDA backend.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// Names of the backends compiled into this build, in order of preference.
pub fn compiled() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(any(feature = "flex", feature = "ndarray")) {
        names.push("cpu");
    }
    names
}
