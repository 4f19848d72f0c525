//! The rotary embedding as one elementwise kernel.

use burn::tensor::{Shape, Tensor as BurnTensor, backend::Backend};
use burn_cubecl::CubeRuntime;
use burn_cubecl::cubecl::{calculate_cube_count_elemwise, prelude::*};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use crate::{CubeKernel, float, run};

/// The rotary embedding in the "rotate half" convention: `x` `[batch, heads, n, head_dim]` (any
/// strides; head_dim even) with tables `cos`, `sin` `[1, 1, n, head_dim]` → `x·cos +
/// rotate_half(x)·sin`, contiguous, in one elementwise kernel (burn's concatenation for
/// `rotate_half` alone is two launches).
///
/// # Panics
/// Unless [`crate::available`] holds for `B` and `Kernel::Rotary` and the shapes are as above.
pub fn rotary<B: Backend>(
    x: BurnTensor<B, 4>,
    cos: BurnTensor<B, 4>,
    sin: BurnTensor<B, 4>,
) -> BurnTensor<B, 4> {
    let [_, _, n, d] = x.dims();
    assert!(
        d % 2 == 0 && cos.dims() == [1, 1, n, d] && sin.dims() == [1, 1, n, d],
        "rotary: x {:?} with tables {:?}, {:?}",
        x.dims(),
        cos.dims(),
        sin.dims()
    );
    run(&Rotary, vec![float(x), float(cos), float(sin)])
}

/// One thread per output element: `x·cos + rotate_half(x)·sin`, where `rotate_half` pairs
/// channel `i` of the first half with `i + d/2` (negated) and the reverse, read in place rather
/// than built by a concatenation.
#[cube(launch_unchecked)]
fn rotary_kernel<F: Float>(
    x: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    output: &mut Tensor<F>,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= output.len() {
        terminate!();
    }
    let d = output.shape(3);
    let n = output.shape(2);
    let heads = output.shape(1);
    let i = ABSOLUTE_POS % d;
    let p = (ABSOLUTE_POS / d) % n;
    let h = (ABSOLUTE_POS / (d * n)) % heads;
    let b = ABSOLUTE_POS / (d * n * heads);
    let half = d / 2;

    let base = b * x.stride(0) + h * x.stride(1) + p * x.stride(2);
    let value = f32::cast_from(x[base + i * x.stride(3)]);
    let mut partner = i + half;
    let mut sign = f32::new(-1.0);
    if i >= half {
        partner = i - half;
        sign = f32::new(1.0);
    }
    let rotated = sign * f32::cast_from(x[base + partner * x.stride(3)]);
    let c = f32::cast_from(cos[p * cos.stride(2) + i * cos.stride(3)]);
    let s = f32::cast_from(sin[p * sin.stride(2) + i * sin.stride(3)]);
    output[ABSOLUTE_POS] = F::cast_from(value * c + rotated * s);
}

/// Inputs `[x, cos, sin]`: `x` `[batch, heads, n, head_dim]` (any strides), the tables
/// `[1, 1, n, head_dim]`; output `x` rotated, contiguous.
#[derive(Debug, Clone, Copy)]
struct Rotary;

impl CubeKernel for Rotary {
    const NAME: &'static str = "vlm_rotary";

    fn output_shape(&self, inputs: &[Shape]) -> Shape {
        inputs[0].clone()
    }

    fn launch<R: CubeRuntime>(&self, inputs: Vec<CubeTensor<R>>) -> CubeTensor<R> {
        let [x, cos, sin]: [CubeTensor<R>; 3] = inputs
            .try_into()
            .expect("the rotary embedding takes x, cos and sin");
        let output = empty_device_dtype(
            x.client.clone(),
            x.device.clone(),
            x.meta.shape().clone(),
            x.dtype,
        );
        let units = output.meta.num_elements();
        let cube_dim = CubeDim::new(&x.client, units);
        let cube_count = calculate_cube_count_elemwise(&x.client, units, cube_dim);
        let dtype = output.dtype.into();
        // SAFETY: threads past the output return first; the others index `x` and the tables
        // within the shapes `rotary` checked (tables of `x`'s positions and
        // channels, an even head_dim).
        unsafe {
            rotary_kernel::launch_unchecked(
                &output.client,
                cube_count,
                cube_dim,
                x.into_tensor_arg(),
                cos.into_tensor_arg(),
                sin.into_tensor_arg(),
                output.clone().into_tensor_arg(),
                dtype,
            )
        };
        output
    }
}
