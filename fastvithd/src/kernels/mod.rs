//! CubeCL kernels for the ops burn 0.21's stock kernels run slowly, picked at run time.
//!
//! The model stays generic over `B: Backend`. When `B`'s float tensors turn out to be CubeCL
//! tensors of a runtime compiled in (`wgpu`, `cuda` features), with burn's fusion in front or
//! without, the op runs our kernel; otherwise the caller gets its tensors back and uses burn's
//! ops. Under fusion the kernel is registered as a custom operation of the fusion stream, so
//! the operations around it still fuse and run in order.

mod depthwise;

use std::any::{Any, TypeId};
use std::fmt;
use std::marker::PhantomData;

use burn::tensor::{DType, Tensor, TensorPrimitive, backend::Backend};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::{CubeBackend, CubeRuntime, tensor::CubeTensor};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};

use crate::depthwise::DepthwiseOptions;

/// The inner backend a fused CubeCL tensor resolves to. Its float element only names a default:
/// CubeCL tensors carry their dtype, so one instance serves f32, f16 and bf16 alike.
type Inner<R> = CubeBackend<R, f32, i32, u32>;

type Unchanged<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 1>);

/// [`crate::depthwise_conv2d`] on a CubeCL backend; the tensors back when `B` is not one (or
/// the shapes are not a per-channel convolution: burn's op then reports them).
pub(crate) fn depthwise_conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
    options: DepthwiseOptions,
) -> Result<Tensor<B, 4>, Unchanged<B>> {
    let [_, c_in, h, w] = x.dims();
    let [c_out, in_per_group, kh, kw] = weight.dims();
    let float = |d: DType| matches!(d, DType::F32 | DType::F16 | DType::BF16);
    let fits = in_per_group == 1
        && kh == options.kernel
        && kw == options.kernel
        && options.stride > 0
        && options.multiplier > 0
        && c_out == c_in * options.multiplier
        && bias.dims() == [c_out]
        && h + 2 * options.padding >= options.kernel
        && w + 2 * options.padding >= options.kernel
        && float(x.dtype())
        && x.dtype() == weight.dtype()
        && x.dtype() == bias.dtype();
    if !fits {
        return Err((x, weight, bias));
    }
    let tensors = (x, weight, bias);
    #[cfg(feature = "wgpu")]
    let tensors = match on_runtime::<B, burn::backend::wgpu::WgpuRuntime>(tensors, options) {
        Ok(y) => return Ok(y),
        Err(tensors) => tensors,
    };
    #[cfg(feature = "cuda")]
    let tensors = match on_runtime::<B, cubecl::cuda::CudaRuntime>(tensors, options) {
        Ok(y) => return Ok(y),
        Err(tensors) => tensors,
    };
    Err(tensors)
}

/// Whether `B` runs this crate's CubeCL kernels.
pub(crate) fn available<B: Backend>() -> bool {
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

/// Whether `B`'s float tensors are CubeCL tensors of runtime `R`, fused or not.
fn on<B: Backend, R: CubeRuntime>() -> bool {
    is::<B::FloatTensorPrimitive, FusionTensor<FusionCubeRuntime<R>>>()
        || is::<B::FloatTensorPrimitive, CubeTensor<R>>()
}

fn on_runtime<B: Backend, R: CubeRuntime>(
    (x, weight, bias): Unchanged<B>,
    options: DepthwiseOptions,
) -> Result<Tensor<B, 4>, Unchanged<B>> {
    if is::<B::FloatTensorPrimitive, FusionTensor<FusionCubeRuntime<R>>>() {
        let y = fused_depthwise::<R>(primitive(x), primitive(weight), primitive(bias), options);
        return Ok(Tensor::from_primitive(TensorPrimitive::Float(cast(y))));
    }
    if is::<B::FloatTensorPrimitive, CubeTensor<R>>() {
        let y = depthwise::launch::<R>(primitive(x), primitive(weight), primitive(bias), options);
        return Ok(Tensor::from_primitive(TensorPrimitive::Float(cast(y))));
    }
    Err((x, weight, bias))
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

/// The float primitive of `t` as `P`; `t` is a float tensor (checked by the caller), never a
/// quantized one, so `tensor()` dequantizes nothing.
fn primitive<B: Backend, const D: usize, P: 'static>(t: Tensor<B, D>) -> P {
    cast(t.into_primitive().tensor())
}

/// Registers the kernel in the fusion stream as a custom operation with inputs
/// `[x, weight, bias]` and one output.
fn fused_depthwise<R: CubeRuntime>(
    x: FusionTensor<FusionCubeRuntime<R>>,
    weight: FusionTensor<FusionCubeRuntime<R>>,
    bias: FusionTensor<FusionCubeRuntime<R>>,
    options: DepthwiseOptions,
) -> FusionTensor<FusionCubeRuntime<R>> {
    let [batch, c_in, h, w] = x.shape.dims();
    let out_shape = [
        batch,
        c_in * options.multiplier,
        options.output_size(h),
        options.output_size(w),
    ];
    let client = x.client.clone();
    let streams = OperationStreams::with_inputs([&x, &weight, &bias]);
    let out = TensorIr::uninit(client.create_empty_handle(), out_shape.into(), x.dtype);
    let desc = CustomOpIr::new(
        "fastvithd_depthwise_conv2d",
        &[x.into_ir(), weight.into_ir(), bias.into_ir()],
        &[out],
    );
    let op = DepthwiseOp::<R> {
        desc: desc.clone(),
        options,
        runtime: PhantomData,
    };
    client
        .register(streams, OperationIr::Custom(desc), op)
        .output()
}

struct DepthwiseOp<R> {
    desc: CustomOpIr,
    options: DepthwiseOptions,
    runtime: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for DepthwiseOp<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DepthwiseOp")
            .field("desc", &self.desc)
            .field("options", &self.options)
            .finish()
    }
}

impl<R: CubeRuntime> Operation<FusionCubeRuntime<R>> for DepthwiseOp<R> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<FusionCubeRuntime<R> as FusionRuntime>::FusionHandle>,
    ) {
        let ([x, weight, bias], [out]) = self.desc.as_fixed();
        let y = depthwise::launch::<R>(
            handles.get_float_tensor::<Inner<R>>(x),
            handles.get_float_tensor::<Inner<R>>(weight),
            handles.get_float_tensor::<Inner<R>>(bias),
            self.options,
        );
        handles.register_float_tensor::<Inner<R>>(&out.id, y);
    }
}
