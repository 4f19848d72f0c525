//! Root-mean-square normalisation of rows in one launch.

use burn::tensor::{DType, Shape, Tensor as BurnTensor, backend::Backend};
use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::{CubeKernel, float, run};

/// Threads per row (every backend's workgroup limit; a power of two).
const THREADS: usize = 256;

/// One cube per row: each thread sums the squares of its channels in f32, the cube adds the
/// partial sums in shared memory (a tree), and each thread writes its channels
/// `(x / √(mean + ε))` rounded to the input's type, times the weight (as Hugging Face does:
/// normalised in f32, scaled at the model's precision).
#[cube(launch_unchecked)]
fn rms_norm_kernel<F: Float>(
    x: &Tensor<F>,
    weight: &Tensor<F>,
    output: &mut Tensor<F>,
    eps: f32,
    #[comptime] threads: usize,
    #[comptime] levels: usize,
    #[define(F)] _dtype: StorageType,
) {
    let hidden = output.shape(2);
    let seq = output.shape(1);
    let row = CUBE_POS_X as usize;
    let b = row / seq;
    let p = row % seq;
    let thread = UNIT_POS_X as usize;
    let base = b * x.stride(0) + p * x.stride(1);

    let mut partial = SharedMemory::<f32>::new(threads);
    let mut squares = f32::new(0.0);
    let mut c = thread;
    while c < hidden {
        let v = f32::cast_from(x[base + c * x.stride(2)]);
        squares += v * v;
        c += threads;
    }
    partial[thread] = squares;
    sync_cube();
    // `threads` is a power of two; the halving widths are compile-time.
    #[unroll]
    for level in 0..levels {
        let width = threads >> (level + 1);
        if thread < width {
            partial[thread] += partial[thread + width];
        }
        sync_cube();
    }
    let rms = Sqrt::sqrt(partial[0] / f32::cast_from(hidden) + eps);

    let out = row * hidden;
    let mut c = thread;
    while c < hidden {
        let normed = F::cast_from(f32::cast_from(x[base + c * x.stride(2)]) / rms);
        let w = f32::cast_from(weight[c * weight.stride(0)]);
        output[out + c] = F::cast_from(f32::cast_from(normed) * w);
        c += threads;
    }
}

/// `weight · x / √(mean(x²) + ε)` over the last axis of `x` `[batch, seq, hidden]` (any
/// strides) with weight `[hidden]`: the mean and the division in f32, the product with the
/// weight at the input's precision. Output contiguous.
///
/// One launch, where burn 0.21 takes a reduction and its elementwise launches around it.
///
/// # Panics
/// Unless [`super::available`] holds for `B` and `Kernel::RmsNorm`, and [`rms_norm_fits`] for
/// the tensors.
pub fn rms_norm<B: Backend>(
    x: BurnTensor<B, 3>,
    weight: BurnTensor<B, 1>,
    eps: f64,
) -> BurnTensor<B, 3> {
    assert!(
        rms_norm_fits(&x, &weight),
        "rms_norm: x {:?} with weight {:?}",
        x.dims(),
        weight.dims()
    );
    run(&RmsNorm { eps }, vec![float(x), float(weight)])
}

/// Whether [`rms_norm`] takes these tensors: `x` `[batch, seq, hidden]`, weight `[hidden]`,
/// one float type, no empty axis, at most 65 535 rows (a launch grid's axis).
pub fn rms_norm_fits<B: Backend>(x: &BurnTensor<B, 3>, weight: &BurnTensor<B, 1>) -> bool {
    let [batch, seq, hidden] = x.dims();
    matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && weight.dtype() == x.dtype()
        && weight.dims() == [hidden]
        && batch * seq * hidden > 0
        && batch * seq <= 65_535
}

/// Inputs `[x, weight]` as [`rms_norm`] takes them.
#[derive(Debug, Clone, Copy)]
struct RmsNorm {
    eps: f64,
}

impl CubeKernel for RmsNorm {
    const NAME: &'static str = "vlm_rms_norm";

    fn output_shapes(&self, inputs: &[Shape]) -> Vec<Shape> {
        vec![inputs[0].clone()]
    }

    fn launch<R: CubeRuntime>(&self, inputs: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let [x, weight]: [CubeTensor<R>; 2] =
            inputs.try_into().expect("rms_norm takes x and weight");
        let [batch, seq, _] = x.meta.shape().dims();
        let output = empty_device_dtype(
            x.client.clone(),
            x.device.clone(),
            x.meta.shape().clone(),
            x.dtype,
        );
        let dtype = output.dtype.into();
        // SAFETY: `rms_norm` checked the shapes (`rms_norm_fits`): cube `row` < batch·seq reads
        // and writes row `row`'s channels below `hidden`, and the weight below `hidden`.
        unsafe {
            rms_norm_kernel::launch_unchecked::<R>(
                &output.client,
                CubeCount::Static((batch * seq) as u32, 1, 1),
                CubeDim::new_1d(THREADS as u32),
                x.into_tensor_arg(),
                weight.into_tensor_arg(),
                output.clone().into_tensor_arg(),
                self.eps as f32,
                THREADS,
                THREADS.trailing_zeros() as usize,
                dtype,
            )
        };
        vec![output]
    }
}
