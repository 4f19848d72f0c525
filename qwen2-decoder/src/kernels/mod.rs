//! CubeCL kernels for the ops burn 0.21 runs as many small launches, picked at run time.
//!
//! The model stays generic over `B: Backend`. When `B`'s float tensors turn out to be CubeCL
//! tensors of a runtime compiled in (`wgpu`, `cuda` features), with burn's fusion in front or
//! without, an op runs our kernel ([`available`] says so, [`run`] launches it); otherwise
//! the op takes burn's. Under fusion the kernel is registered as a custom operation of the fusion stream, so
//! the operations around it still fuse and run in order. (`fastvithd` carries the same
//! machinery for its own kernels: the model crates depend on burn only, not on each other.)

mod decode_attention;
mod rotary;

pub(crate) use decode_attention::DecodeAttention;
pub(crate) use rotary::Rotary;

use std::any::{Any, TypeId};
use std::fmt;
use std::marker::PhantomData;

use burn::tensor::{Shape, Tensor, TensorPrimitive, backend::Backend};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::{CubeBackend, CubeRuntime, tensor::CubeTensor};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};

/// A kernel with float tensor inputs and one float output, launched on any CubeCL runtime.
pub(crate) trait CubeKernel: fmt::Debug + Clone + Send + Sync + 'static {
    /// The custom operation's name in burn's fusion stream.
    const NAME: &'static str;
    /// The output's shape for inputs of these shapes.
    fn output_shape(&self, inputs: &[Shape]) -> Shape;
    /// Launches the kernel; the output is a new tensor of the input's dtype.
    fn launch<R: CubeRuntime>(&self, inputs: Vec<CubeTensor<R>>) -> CubeTensor<R>;
}

/// The inner backend a fused CubeCL tensor resolves to. Its float element only names a default:
/// CubeCL tensors carry their dtype, so one instance serves f32, f16 and bf16 alike.
type Inner<R> = CubeBackend<R, f32, i32, u32>;

/// `FASTVLM_CUBECL_KERNELS=off` leaves every op to burn, for timing the kernels against
/// burn's ops in one build.
fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("FASTVLM_CUBECL_KERNELS").is_none_or(|v| v != "off"))
}

/// Whether `B` runs this crate's CubeCL kernels.
pub(crate) fn available<B: Backend>() -> bool {
    if !enabled() {
        return false;
    }
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

/// `t`'s float primitive, as the kernels take it (the models hold no quantized tensors).
pub(crate) fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> B::FloatTensorPrimitive {
    t.into_primitive().tensor()
}

/// Runs `kernel` on `inputs`. Only where [`available`] holds for `B`: callers check it first
/// and take burn's ops otherwise.
pub(crate) fn run<B: Backend, K: CubeKernel, const D: usize>(
    kernel: &K,
    inputs: Vec<B::FloatTensorPrimitive>,
) -> Tensor<B, D> {
    #[cfg(feature = "wgpu")]
    if on::<B, burn::backend::wgpu::WgpuRuntime>() {
        return on_runtime::<B, burn::backend::wgpu::WgpuRuntime, K, D>(kernel, inputs);
    }
    #[cfg(feature = "cuda")]
    if on::<B, cubecl::cuda::CudaRuntime>() {
        return on_runtime::<B, cubecl::cuda::CudaRuntime, K, D>(kernel, inputs);
    }
    let _ = (kernel, inputs);
    unreachable!("CubeCL kernel on a backend without them: check `kernels::available` first")
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
) -> Tensor<B, D> {
    let out = if is::<B::FloatTensorPrimitive, CubeTensor<R>>() {
        cast(kernel.launch::<R>(inputs.into_iter().map(cast).collect()))
    } else {
        cast(fused::<R, K>(
            kernel,
            inputs.into_iter().map(cast).collect(),
        ))
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

fn is<T: 'static, U: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<U>()
}

/// `value` as `U`, which [`is`] has established to be its own type.
fn cast<T: 'static, U: 'static>(value: T) -> U {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<U>>()
        .and_then(Option::take)
        .expect("cast only after `is` matched the types")
}

/// Registers `kernel` in the fusion stream as a custom operation.
fn fused<R: CubeRuntime, K: CubeKernel>(
    kernel: &K,
    inputs: Vec<FusionTensor<FusionCubeRuntime<R>>>,
) -> FusionTensor<FusionCubeRuntime<R>> {
    let shapes: Vec<Shape> = inputs.iter().map(|t| t.shape.clone()).collect();
    let client = inputs[0].client.clone();
    let dtype = inputs[0].dtype;
    let streams = OperationStreams::with_inputs(&inputs);
    let out = TensorIr::uninit(
        client.create_empty_handle(),
        kernel.output_shape(&shapes),
        dtype,
    );
    let inputs: Vec<TensorIr> = inputs.into_iter().map(FusionTensor::into_ir).collect();
    let desc = CustomOpIr::new(K::NAME, &inputs, &[out]);
    let op = KernelOp::<R, K> {
        desc: desc.clone(),
        kernel: kernel.clone(),
        runtime: PhantomData,
    };
    client
        .register(streams, OperationIr::Custom(desc), op)
        .output()
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
        let y = self.kernel.launch::<R>(inputs);
        handles.register_float_tensor::<Inner<R>>(&self.desc.outputs[0].id, y);
    }
}
