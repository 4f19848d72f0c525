//! The CubeCL kernels behind [`crate::ops`] on burn's wgpu and CUDA backends, and their launch
//! on the runtime behind `B` (through burn's fusion stream when `B` fuses).
//!
//! Each kernel comes with a `*_fits` check (or `fits` method) that says which tensors it takes;
//! the ops call a kernel only where [`available`] and that check hold. They are public for their
//! parity tests (`vlm-kernels/tests/wgpu.rs`) and for timing them against burn's ops.

mod attention;
mod decode_attention;
mod depthwise;
mod gemv;
mod qkv_rotary;
mod rms_norm;
mod rotary;

pub use attention::{KvAttention, attention};
pub use depthwise::depthwise_conv2d;
pub use gemv::{RowProjection, RowWeights, linear_row, linear_row_fits};
pub use qkv_rotary::{qkv_rotary_append, qkv_rotary_append_fits};
pub use rms_norm::{rms_norm, rms_norm_fits};
pub use rotary::{rotary_append, rotary_append_fits};

use std::fmt;
use std::marker::PhantomData;

use burn::tensor::{Int, Shape, Tensor, TensorPrimitive, backend::Backend};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::{CubeBackend, CubeRuntime, tensor::CubeTensor};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

pub use crate::ops::Kernel;
use crate::{cast, is};

/// A kernel with float tensor inputs and float outputs, launched on any CubeCL runtime.
pub(crate) trait CubeKernel: fmt::Debug + Clone + Send + Sync + 'static {
    /// The custom operation's name in burn's fusion stream.
    const NAME: &'static str;
    /// The outputs' shapes for inputs of these shapes.
    fn output_shapes(&self, inputs: &[Shape]) -> Vec<Shape>;
    /// Launches the kernel; the outputs are in the first input's dtype (new tensors, or inputs
    /// the kernel owns and updates in place).
    fn launch<R: CubeRuntime>(&self, inputs: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>>;
}

/// The inner backend a fused CubeCL tensor resolves to. Its float element only names a default:
/// CubeCL tensors carry their dtype, so one instance serves f32, f16 and bf16 alike.
type Inner<R> = CubeBackend<R, f32, i32, u32>;

/// Whether `kernel` is switched on: `FASTVLM_CUBECL_KERNELS` unset, `on` or `all` runs every
/// kernel, `off` none (burn's ops throughout), and a comma-separated list of names (see
/// [`Kernel::name`]) only those, so one build can time each kernel against burn's op.
pub fn switched_on(kernel: Kernel) -> bool {
    static SWITCH: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let switch = SWITCH.get_or_init(|| {
        std::env::var("FASTVLM_CUBECL_KERNELS")
            .ok()
            .map(|v| v.trim().to_ascii_lowercase())
    });
    match switch.as_deref() {
        None | Some("" | "on" | "all") => true,
        Some(list) => list.split(',').any(|name| name.trim() == kernel.name()),
    }
}

/// Whether `B`'s float tensors are CubeCL tensors of a runtime this crate was built for
/// (feature `wgpu`: wgpu's, `cuda`: CUDA's), with burn's fusion in front or without.
pub fn cubecl_backend<B: Backend>() -> bool {
    #[cfg(feature = "wgpu")]
    if on::<B, burn::backend::wgpu::WgpuRuntime>() {
        return true;
    }
    #[cfg(feature = "cuda")]
    if on::<B, cubecl::cuda::CudaRuntime>() {
        return true;
    }
    false
}

/// Whether `B` runs `kernel`: a [`cubecl_backend`] with the kernel [`switched_on`]. The op of
/// a kernel may be called only where this holds.
pub fn available<B: Backend>(kernel: Kernel) -> bool {
    cubecl_backend::<B>() && switched_on(kernel)
}

/// `t`'s float primitive, as the kernels take it.
pub(crate) fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> B::FloatTensorPrimitive {
    t.into_primitive().tensor()
}

/// An integer tensor (packed weights) as the kernels take their inputs: on the CubeCL backends
/// int and float tensors are one type, a buffer that carries its dtype.
pub(crate) fn words<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> B::FloatTensorPrimitive {
    cast(t.into_primitive())
}

/// Runs `kernel` on `inputs`; its one output. Only on a [`cubecl_backend`].
pub(crate) fn run<B: Backend, K: CubeKernel, const D: usize>(
    kernel: &K,
    inputs: Vec<B::FloatTensorPrimitive>,
) -> Tensor<B, D> {
    let [output] = run_all(kernel, inputs)
        .try_into()
        .expect("a kernel with one output");
    output
}

/// Runs `kernel` on `inputs`; its outputs, all of rank `D`. Only on a [`cubecl_backend`].
pub(crate) fn run_all<B: Backend, K: CubeKernel, const D: usize>(
    kernel: &K,
    inputs: Vec<B::FloatTensorPrimitive>,
) -> Vec<Tensor<B, D>> {
    #[cfg(feature = "wgpu")]
    if on::<B, burn::backend::wgpu::WgpuRuntime>() {
        return on_runtime::<B, burn::backend::wgpu::WgpuRuntime, K, D>(kernel, inputs);
    }
    #[cfg(feature = "cuda")]
    if on::<B, cubecl::cuda::CudaRuntime>() {
        return on_runtime::<B, cubecl::cuda::CudaRuntime, K, D>(kernel, inputs);
    }
    let _ = (kernel, inputs);
    panic!("a CubeCL kernel on a backend without them: check `vlm_kernels::available` first")
}

/// Whether `B`'s float tensors are CubeCL tensors of runtime `R`, fused or not.
fn on<B: Backend, R: CubeRuntime>() -> bool {
    is::<B::FloatTensorPrimitive, FusionTensor<FusionCubeRuntime<R>>>()
        || is::<B::FloatTensorPrimitive, CubeTensor<R>>()
}

/// `kernel` on runtime `R`'s tensors, through the fusion stream when `B` fuses.
fn on_runtime<B: Backend, R: CubeRuntime, K: CubeKernel, const D: usize>(
    kernel: &K,
    inputs: Vec<B::FloatTensorPrimitive>,
) -> Vec<Tensor<B, D>> {
    let outputs: Vec<B::FloatTensorPrimitive> = if is::<B::FloatTensorPrimitive, CubeTensor<R>>() {
        let inputs = inputs.into_iter().map(cast).collect();
        kernel.launch::<R>(inputs).into_iter().map(cast).collect()
    } else {
        let inputs = inputs.into_iter().map(cast).collect();
        fused::<R, K>(kernel, inputs)
            .into_iter()
            .map(cast)
            .collect()
    };
    outputs
        .into_iter()
        .map(|t| Tensor::from_primitive(TensorPrimitive::Float(t)))
        .collect()
}

/// Registers `kernel` in the fusion stream as a custom operation.
fn fused<R: CubeRuntime, K: CubeKernel>(
    kernel: &K,
    inputs: Vec<FusionTensor<FusionCubeRuntime<R>>>,
) -> Vec<FusionTensor<FusionCubeRuntime<R>>> {
    let shapes: Vec<Shape> = inputs.iter().map(|t| t.shape.clone()).collect();
    let client = inputs[0].client.clone();
    let dtype = inputs[0].dtype;
    let streams = OperationStreams::with_inputs(&inputs);
    let outputs: Vec<TensorIr> = kernel
        .output_shapes(&shapes)
        .into_iter()
        .map(|shape| TensorIr::uninit(client.create_empty_handle(), shape, dtype))
        .collect();
    let inputs: Vec<TensorIr> = inputs.into_iter().map(FusionTensor::into_ir).collect();
    let desc = CustomOpIr::new(K::NAME, &inputs, &outputs);
    let op = KernelOp::<R, K> {
        desc: desc.clone(),
        kernel: kernel.clone(),
        runtime: PhantomData,
    };
    client.register(streams, OperationIr::Custom(desc), op)
}

struct KernelOp<R, K> {
    desc: CustomOpIr,
    kernel: K,
    runtime: PhantomData<fn() -> R>,
}

impl<R, K: fmt::Debug> fmt::Debug for KernelOp<R, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelOp")
            .field("desc", &self.desc)
            .field("kernel", &self.kernel)
            .finish()
    }
}

impl<R: CubeRuntime, K: CubeKernel> Operation<FusionCubeRuntime<R>> for KernelOp<R, K> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<FusionCubeRuntime<R> as FusionRuntime>::FusionHandle>,
    ) {
        let inputs = self
            .desc
            .inputs
            .iter()
            .map(|t| handles.get_float_tensor::<Inner<R>>(t))
            .collect();
        let outputs = self.kernel.launch::<R>(inputs);
        for (desc, y) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<Inner<R>>(&desc.id, y);
        }
    }
}
