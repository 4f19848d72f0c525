use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, FloatDType, Tensor, backend::Backend};

use vlm_kernels::activation::gelu;

/// A per-channel convolution: every output channel reads exactly one input channel
/// (`groups == c_in`, `c_out = multiplier · c_in`), square kernel, no dilation, the same
/// padding on every side, a bias, and optionally GELU (exact, erf) on the result.
///
/// FastViTHD runs all its spatial mixing through this shape of convolution: the RepMixer
/// token mixers (3×3), the ConvFFN and RepCPE 7×7s, the stride-2 7×7 of each PatchEmbed
/// (multiplier 2, GELU), the stem's stride-2 3×3 (GELU) and `conv_exp`'s 3×3 (multiplier 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DepthwiseOptions {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// Output channels per input channel.
    pub multiplier: usize,
    /// GELU (erf form) applied to the biased result inside the same kernel.
    pub gelu: bool,
}

impl DepthwiseOptions {
    /// The options of `conv` when it is a per-channel convolution with a bias, else `None`.
    pub fn of<B: Backend>(conv: &Conv2d<B>, gelu: bool) -> Option<Self> {
        let [c_out, in_per_group, kh, kw] = conv.weight.dims();
        let padding = match conv.padding {
            PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => t,
            _ => return None,
        };
        let per_channel = in_per_group == 1
            && c_out % conv.groups == 0
            && kh == kw
            && conv.stride[0] == conv.stride[1]
            && conv.dilation == [1, 1]
            && conv.bias.is_some();
        per_channel.then_some(Self {
            kernel: kh,
            stride: conv.stride[0],
            padding,
            multiplier: c_out / conv.groups,
            gelu,
        })
    }

    /// Output size along one spatial axis of `size` input pixels.
    pub fn output_size(&self, size: usize) -> usize {
        (size + 2 * self.padding - self.kernel) / self.stride + 1
    }
}

/// Per-channel convolution `[batch, c_in, h, w]` → `[batch, multiplier·c_in, h', w']` with
/// weight `[multiplier·c_in, 1, k, k]` and bias `[multiplier·c_in]`.
///
/// On the CubeCL backends (wgpu, CUDA; with or without fusion) built with this crate's `wgpu`
/// or `cuda` feature this is one kernel (`vlm_kernels::depthwise_conv2d`) that reads NCHW
/// directly, accumulates in f32 at every precision and applies the bias and the GELU before
/// writing: burn 0.21's convolution transposes to NHWC and back around its own kernel and
/// leaves bias and activation to further launches. On flex at f32 (this crate's `flex`
/// feature) it is `vlm_kernels::flex::depthwise_conv2d`, a vectorised loop per channel with the
/// bias and GELU in the same pass: flex runs grouped convolutions one output pixel at a time.
/// Every other backend takes burn's `conv2d` (+ `gelu`).
pub fn depthwise_conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
    options: DepthwiseOptions,
) -> Tensor<B, 4> {
    let geometry = vlm_kernels::Depthwise {
        kernel: options.kernel,
        stride: options.stride,
        padding: options.padding,
        multiplier: options.multiplier,
        gelu: options.gelu,
    };
    #[cfg(feature = "cubecl")]
    if vlm_kernels::available::<B>(vlm_kernels::Kernel::Depthwise)
        && geometry.fits(&x, &weight, &bias)
    {
        return vlm_kernels::depthwise_conv2d(x, weight, bias, geometry);
    }
    #[cfg(feature = "flex")]
    let (x, weight, bias) = match vlm_kernels::flex::depthwise_conv2d(x, weight, bias, geometry) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    #[cfg(not(feature = "flex"))]
    let _ = geometry;
    let channels = x.dims()[1];
    let y = conv2d(
        x,
        weight,
        Some(bias),
        ConvOptions::new([options.stride; 2], [options.padding; 2], [1, 1], channels),
    );
    if options.gelu { gelu(y) } else { y }
}

/// Whether `B` runs any of FastViTHD's CubeCL kernels (from `vlm-kernels`: [`depthwise_conv2d`],
/// [`crate::Attention`]'s attention) rather than burn's ops: on wgpu and CUDA backends when this
/// crate is built with the matching feature (`wgpu`, `cuda`), unless `FASTVLM_CUBECL_KERNELS`
/// switches them off.
pub fn uses_cubecl_kernels<B: Backend>() -> bool {
    #[cfg(feature = "cubecl")]
    return vlm_kernels::available::<B>(vlm_kernels::Kernel::Depthwise)
        || vlm_kernels::available::<B>(vlm_kernels::Kernel::Attention);
    #[cfg(not(feature = "cubecl"))]
    false
}

/// `conv`, then GELU when `then_gelu`, through [`depthwise_conv2d`] when the convolution is
/// per-channel and through burn's `Conv2d` otherwise.
pub(crate) fn conv_forward<B: Backend>(
    conv: &Conv2d<B>,
    x: Tensor<B, 4>,
    then_gelu: bool,
) -> Tensor<B, 4> {
    match (DepthwiseOptions::of(conv, then_gelu), &conv.bias) {
        (Some(options), Some(bias)) => depthwise_conv2d(x, conv.weight.val(), bias.val(), options),
        _ => match (x.dtype(), even_padding(conv)) {
            // burn 0.21's CubeCL direct convolution sums in the tensor's type (PyTorch's kernels
            // in f32): at f16/bf16 the stem's dense 3×3 runs in f32 and is rounded once.
            (DType::F16 | DType::BF16, Some(_)) => {
                let dtype = x.dtype();
                let y = conv_in_f32(conv, x.cast(FloatDType::F32));
                let y = if then_gelu { gelu(y) } else { y };
                y.cast(dtype)
            }
            _ => {
                #[cfg(feature = "flex")]
                let x = match dense_on_flex(conv, x, then_gelu) {
                    Ok(y) => return y,
                    Err(x) => x,
                };
                let y = conv.forward(x);
                if then_gelu { gelu(y) } else { y }
            }
        },
    }
}

/// A dense convolution with few input channels (the stem's first) through
/// `vlm_kernels::flex::conv2d_patches`, GELU included; `x` back when that does not take it.
#[cfg(feature = "flex")]
fn dense_on_flex<B: Backend>(
    conv: &Conv2d<B>,
    x: Tensor<B, 4>,
    then_gelu: bool,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let [_, _, kh, kw] = conv.weight.dims();
    let (Some([padding, padding_w]), Some(bias)) = (even_padding(conv), &conv.bias) else {
        return Err(x);
    };
    let square = kh == kw && padding == padding_w && conv.stride[0] == conv.stride[1];
    if !square || conv.groups != 1 || conv.dilation != [1, 1] {
        return Err(x);
    }
    let geometry = vlm_kernels::flex::DenseConv {
        kernel: kh,
        stride: conv.stride[0],
        padding,
        gelu: then_gelu,
    };
    vlm_kernels::flex::conv2d_patches(x, conv.weight.val(), bias.val(), geometry)
        .map_err(|(x, _, _)| x)
}

/// `conv`'s padding `[rows, columns]` when it is explicit and the same on opposite sides.
pub(crate) fn even_padding<B: Backend>(conv: &Conv2d<B>) -> Option<[usize; 2]> {
    match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some([top, left])
        }
        _ => None,
    }
}

/// `conv` over an f32 input `[batch, c_in, h, w]` with its weight and bias cast to f32; f32 out.
///
/// # Panics
/// Unless [`even_padding`] holds for `conv` (FastViTHD pads every convolution so).
pub(crate) fn conv_in_f32<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let padding = even_padding(conv).expect("explicit, even padding");
    conv2d(
        x,
        conv.weight.val().cast(FloatDType::F32),
        conv.bias.as_ref().map(|b| b.val().cast(FloatDType::F32)),
        ConvOptions::new(conv.stride, padding, conv.dilation, conv.groups),
    )
}
