//! Backends chosen by cargo features; the model code is the same for all of them.
//!
//! Features of this crate (forwarded by `vlm-cli`, `vlm-server` and `benches`): `flex` (pure-Rust
//! CPU, default), `ndarray` (CPU), `wgpu` (Vulkan/Metal/DX12 through wgpu; `vulkan` and `metal`
//! pin the graphics API), `cuda`. Each backend type takes the compute precision as its float
//! element (`Cuda<half::bf16>`); [`Precision`] names them at run time.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::Backend;

/// The pure-Rust CPU backend.
#[cfg(feature = "flex")]
pub type Cpu<F = f32> = burn::backend::Flex<F>;
/// The CPU backend (ndarray, when `flex` is not compiled in).
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub type Cpu<F = f32> = burn::backend::NdArray<F>;

/// The wgpu backend on the graphics API the features pick.
#[cfg(all(feature = "wgpu", not(feature = "vulkan"), not(feature = "metal")))]
pub type Gpu<F = f32> = burn::backend::Wgpu<F>;
#[cfg(feature = "vulkan")]
pub type Gpu<F = f32> = burn::backend::Vulkan<F>;
#[cfg(all(feature = "metal", not(feature = "vulkan")))]
pub type Gpu<F = f32> = burn::backend::Metal<F>;

/// The CUDA backend.
#[cfg(feature = "cuda")]
pub type Cuda<F = f32> = burn::backend::Cuda<F>;

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

/// Compute precision: the float type weights and activations are held in. Norm statistics
/// are computed in f32 at every precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("unknown dtype `{other}` (f32, f16, bf16)")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

/// The precisions `backend` runs. The CPU computes in f32 (no f16/bf16 arithmetic to gain
/// from); WGSL has f16 (with the adapter's `shader-f16`) but no bf16; CUDA has all three.
pub fn precisions(backend: &str) -> &'static [Precision] {
    match backend {
        "cuda" => &[Precision::F32, Precision::F16, Precision::Bf16],
        "wgpu" => &[Precision::F32, Precision::F16],
        _ => &[Precision::F32],
    }
}

/// Work to run on the backend and precision picked at run time ([`Selection::run`]): what a
/// binary does once it knows its backend type.
pub trait Job {
    type Output;
    /// Runs on backend `B`, on `device`.
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// A backend compiled into this build at a precision it computes in, checked against the
/// machine (a wgpu adapter present, with `shader-f16` for f16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub backend: String,
    pub precision: Precision,
}

impl Selection {
    /// `backend` (`cpu`, `wgpu`, `cuda`) at `precision`, its default when `None`: f32 on the
    /// CPU, bf16 on CUDA (the checkpoints' own type), f16 on wgpu where the adapter has
    /// `shader-f16`, else f32. The error says what this build and machine offer instead.
    pub fn new(backend: &str, precision: Option<Precision>) -> Result<Self, String> {
        let compiled = compiled();
        if !compiled.contains(&backend) {
            return Err(format!(
                "backend `{backend}` is not compiled into this binary (available: {})",
                compiled.join(", ")
            ));
        }
        #[cfg(feature = "wgpu")]
        let f16 = match backend {
            "wgpu" => gpu_has_f16()?,
            _ => false,
        };
        #[cfg(not(feature = "wgpu"))]
        let f16 = false;
        let precision = precision.unwrap_or(match backend {
            "cuda" => Precision::Bf16,
            "wgpu" if f16 => Precision::F16,
            _ => Precision::F32,
        });
        let ok = precisions(backend);
        if !ok.contains(&precision) {
            let list: Vec<String> = ok.iter().map(ToString::to_string).collect();
            return Err(format!(
                "backend `{backend}` does not compute in {precision} (it does: {})",
                list.join(", ")
            ));
        }
        if backend == "wgpu" && precision == Precision::F16 && !f16 {
            return Err("this GPU adapter has no shader-f16: use --dtype f32".into());
        }
        Ok(Self {
            backend: backend.to_string(),
            precision,
        })
    }

    /// The first backend compiled in (CUDA, else wgpu, else the CPU) at its default precision.
    pub fn preferred() -> Result<Self, String> {
        Self::new(compiled()[0], None)
    }

    /// `backend precision`, as the binaries report it (`cuda bf16`).
    pub fn label(&self) -> String {
        format!("{} {}", self.backend, self.precision)
    }

    /// Runs `job` on the selected backend, on its default device.
    pub fn run<J: Job>(&self, job: J) -> J::Output {
        #[allow(unused_imports)]
        use burn::tensor::{bf16, f16};
        match (self.backend.as_str(), self.precision) {
            #[cfg(feature = "cuda")]
            ("cuda", Precision::F32) => job.run::<Cuda<f32>>(Default::default()),
            #[cfg(feature = "cuda")]
            ("cuda", Precision::F16) => job.run::<Cuda<f16>>(Default::default()),
            #[cfg(feature = "cuda")]
            ("cuda", Precision::Bf16) => job.run::<Cuda<bf16>>(Default::default()),
            #[cfg(feature = "wgpu")]
            ("wgpu", Precision::F32) => job.run::<Gpu<f32>>(Default::default()),
            #[cfg(feature = "wgpu")]
            ("wgpu", _) => job.run::<Gpu<f16>>(Default::default()),
            _ => job.run::<Cpu>(Default::default()),
        }
    }
}

/// Whether the default wgpu adapter has `shader-f16`; an error when there is no adapter (wgpu
/// panics then: the panic is kept from printing, and becomes the message).
#[cfg(feature = "wgpu")]
fn gpu_has_f16() -> Result<bool, String> {
    use burn::tensor::DType;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe =
        std::panic::catch_unwind(|| Gpu::<f32>::supports_dtype(&Default::default(), DType::F16));
    std::panic::set_hook(hook);
    probe.map_err(|_| {
        "no GPU adapter found for --backend wgpu (Vulkan, Metal or DX12; on Linux install a Vulkan driver such as mesa-vulkan-drivers)".to_string()
    })
}

/// Lets freed memory serve the next allocations instead of going back to the system, and keeps
/// every thread's allocations in one heap (glibc on Linux; elsewhere this does nothing).
///
/// A CPU forward allocates and frees maps of 25–100 MB per op (FastViTHD's first stages at
/// 1024²: 384 × 256² f32 is 100 MB). glibc serves every allocation above its mmap threshold (at
/// most 32 MB as it adapts) with a fresh `mmap` and unmaps it on free, so each such op
/// page-faults its whole output in again (ten times the page faults of one 1024² forward, and
/// more than twice the time of an early stage: BENCHMARKS.md). One arena: a worker thread
/// (the server's) would otherwise get an arena whose heaps cap at 64 MB and `mmap` the rest.
/// Peak memory is what the model needs either way; memory freed after the peak stays with the
/// process. `MALLOC_*` variables or `GLIBC_TUNABLES` in the environment win.
///
/// Call it first thing in `main`, before the allocations it should govern.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::vars_os().any(|(name, _)| {
            let name = name.to_string_lossy();
            name.starts_with("MALLOC_") || name == "GLIBC_TUNABLES"
        });
        if tuned {
            return;
        }
        // SAFETY: mallopt only sets allocator parameters; it is called before the program
        // starts its threads. A refused value (return 0) leaves glibc's default.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Where [`keep_compiled_kernels`] keeps CubeCL's kernels: `$FASTVLM_KERNEL_CACHE`, else
/// `kernels/` in the models cache ([`crate::zoo::home`]).
pub fn kernel_cache_dir() -> std::path::PathBuf {
    std::env::var_os("FASTVLM_KERNEL_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::zoo::home().join("kernels"))
}

/// Keeps the GPU backends' compiled kernels and autotune results on disk between runs.
///
/// CubeCL compiles every kernel at its first launch in a process (NVRTC on CUDA: about 0.4 s
/// each on an H200, and a 1024² FastViTHD forward launches hundreds of distinct ones) and, by
/// default, keeps only its autotune results; with this cache a new process loads a compiled
/// kernel in a small fraction of that (BENCHMARKS.md). A `cubecl.toml`
/// (or `burn.toml`) in the working directory or above still wins, as do `CUBECL_*` variables;
/// `FASTVLM_KERNEL_CACHE=off` leaves CubeCL's defaults.
///
/// Call it first thing in `main`, before any device is touched: CubeCL reads its
/// configuration once. Later calls do nothing.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn keep_compiled_kernels() {
    use burn::cubecl::config::cache::CacheConfig;
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("FASTVLM_KERNEL_CACHE").is_some_and(|v| v == "off") {
            return;
        }
        if CubeClRuntimeConfig::storage().lock().is_some() {
            return;
        }
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        let dir = kernel_cache_dir();
        if config.compilation.cache.is_none() {
            config.compilation.cache = Some(CacheConfig::File(dir.clone()));
        }
        if matches!(config.autotune.cache, CacheConfig::Target) {
            config.autotune.cache = CacheConfig::File(dir);
        }
        CubeClRuntimeConfig::set(config);
    });
}

/// Without a GPU backend there is nothing to compile.
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
pub fn keep_compiled_kernels() {}
