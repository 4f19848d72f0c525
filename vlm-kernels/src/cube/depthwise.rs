//! The per-channel convolution kernel: NCHW in and out, f32 accumulation, bias and GELU fused.

use burn::tensor::{DType, Shape, Tensor as BurnTensor, backend::Backend};
use burn_cubecl::cubecl::{calculate_cube_count_elemwise, prelude::*};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeRuntime, kernel::into_contiguous};

use super::{CubeKernel, float, run};
use crate::Depthwise;

impl Depthwise {
    /// Whether [`depthwise_conv2d`] takes these tensors: the per-channel convolution this
    /// geometry describes, in one float type the kernel reads (f32, f16, bf16).
    pub fn fits<B: Backend>(
        &self,
        x: &BurnTensor<B, 4>,
        weight: &BurnTensor<B, 4>,
        bias: &BurnTensor<B, 1>,
    ) -> bool {
        let float = matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16);
        self.fits_shapes(x.dims(), weight.dims(), bias.dims())
            && float
            && x.dtype() == weight.dtype()
            && x.dtype() == bias.dtype()
    }
}

/// Per-channel convolution `[batch, c_in, h, w]` (any strides) → `[batch, multiplier·c_in,
/// h', w']` with weight `[multiplier·c_in, 1, k, k]` and bias `[multiplier·c_in]`, in one
/// kernel that reads NCHW directly, accumulates in f32 at every precision and applies the bias
/// and the GELU before writing (burn 0.21's convolution transposes to NHWC and back around its
/// own kernel and leaves bias and activation to further launches).
///
/// # Panics
/// Unless [`super::available`] holds for `B` and `Kernel::Depthwise` and [`Depthwise::fits`] for the tensors.
pub fn depthwise_conv2d<B: Backend>(
    x: BurnTensor<B, 4>,
    weight: BurnTensor<B, 4>,
    bias: BurnTensor<B, 1>,
    geometry: Depthwise,
) -> BurnTensor<B, 4> {
    assert!(
        geometry.fits(&x, &weight, &bias),
        "depthwise_conv2d: tensors do not match {geometry:?}"
    );
    run(
        &DepthwiseConv2d(geometry),
        vec![float(x), float(weight), float(bias)],
    )
}

/// One thread per output element. The kernel geometry is compile-time, so each of FastViTHD's
/// few (kernel, stride, padding, multiplier, GELU) combinations compiles to its own fully
/// unrolled kernel.
#[cube(launch_unchecked)]
fn depthwise_conv2d_kernel<F: Float>(
    input: &Tensor<F>,
    weight: &Tensor<F>,
    bias: &Tensor<F>,
    output: &mut Tensor<F>,
    #[comptime] kernel: usize,
    #[comptime] stride: usize,
    #[comptime] padding: usize,
    #[comptime] multiplier: usize,
    #[comptime] gelu: bool,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= output.len() {
        terminate!();
    }
    let out_w = output.shape(3);
    let out_h = output.shape(2);
    let out_c = output.shape(1);
    let ox = ABSOLUTE_POS % out_w;
    let oy = (ABSOLUTE_POS / out_w) % out_h;
    let oc = (ABSOLUTE_POS / (out_w * out_h)) % out_c;
    let n = ABSOLUTE_POS / (out_w * out_h * out_c);

    let height = input.shape(2);
    let width = input.shape(3);
    let in_base = n * input.stride(0) + (oc / multiplier) * input.stride(1);
    let w_base = oc * weight.stride(0);

    let mut acc = f32::cast_from(bias[oc]);
    // Rows and columns are offset by `padding` so the bounds checks stay unsigned.
    let y0 = oy * stride;
    let x0 = ox * stride;
    #[unroll]
    for ky in 0..kernel {
        let iy = y0 + ky;
        if iy >= padding && iy < height + padding {
            let row = in_base + (iy - padding) * input.stride(2);
            #[unroll]
            for kx in 0..kernel {
                let ix = x0 + kx;
                if ix >= padding && ix < width + padding {
                    let pixel = f32::cast_from(input[row + (ix - padding) * input.stride(3)]);
                    let tap = f32::cast_from(weight[w_base + ky * weight.stride(2) + kx]);
                    acc += pixel * tap;
                }
            }
        }
    }
    if gelu {
        acc = acc * 0.5 * (1.0 + Erf::erf(acc * core::f32::consts::FRAC_1_SQRT_2));
    }
    output[ABSOLUTE_POS] = F::cast_from(acc);
}

/// The per-channel convolution of [`Depthwise`]: inputs `[x, weight, bias]` with `x`
/// `[batch, c_in, h, w]` (any strides), `weight` `[multiplier·c_in, 1, k, k]`, `bias`
/// `[multiplier·c_in]`; output `[batch, multiplier·c_in, h', w']`.
#[derive(Debug, Clone, Copy)]
struct DepthwiseConv2d(Depthwise);

impl CubeKernel for DepthwiseConv2d {
    const NAME: &'static str = "vlm_depthwise_conv2d";

    fn output_shapes(&self, inputs: &[Shape]) -> Vec<Shape> {
        let [batch, c_in, h, w] = inputs[0].dims();
        let options = self.0;
        vec![Shape::new([
            batch,
            c_in * options.multiplier,
            options.output_size(h),
            options.output_size(w),
        ])]
    }

    fn launch<R: CubeRuntime>(&self, inputs: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let [x, weight, bias]: [CubeTensor<R>; 3] = inputs
            .try_into()
            .expect("the depthwise convolution takes x, weight and bias");
        let options = self.0;
        // The kernel indexes the taps of a row contiguously.
        let weight = into_contiguous(weight);
        let bias = into_contiguous(bias);
        let [out_shape] = self
            .output_shapes(&[x.meta.shape().clone()])
            .try_into()
            .expect("one output");
        let output = empty_device_dtype(x.client.clone(), x.device.clone(), out_shape, x.dtype);

        let units = output.meta.num_elements();
        let cube_dim = CubeDim::new(&x.client, units);
        let cube_count = calculate_cube_count_elemwise(&x.client, units, cube_dim);
        let dtype = output.dtype.into();
        // SAFETY: every thread returns before touching memory unless its index is inside
        // `output`; its input and weight indices follow from the shapes, checked by
        // `depthwise_conv2d` (`Depthwise::fits`) before the launch.
        unsafe {
            depthwise_conv2d_kernel::launch_unchecked(
                &output.client,
                cube_count,
                cube_dim,
                x.into_tensor_arg(),
                weight.into_tensor_arg(),
                bias.into_tensor_arg(),
                output.clone().into_tensor_arg(),
                options.kernel,
                options.stride,
                options.padding,
                options.multiplier,
                options.gelu,
                dtype,
            )
        };
        vec![output]
    }
}
