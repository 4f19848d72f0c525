use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, FloatDType, Tensor, backend::Backend};

use super::activation::{cast, gelu as gelu_op};
use crate::Depthwise;

/// `conv` over `x` `[batch, c_in, h, w]`, then GELU (erf form) when `gelu`.
///
/// A per-channel convolution ([`Depthwise::of`]) goes to [`depthwise_conv2d`]. A dense or
/// grouped one with f16/bf16 operands (input or weights) is summed in f32 and rounded once to
/// the input's type: burn 0.21's CubeCL direct convolution sums at the tensor's precision,
/// PyTorch's kernels in f32. On flex at f32 a dense convolution with few input channels (the
/// stem's first) gathers patch blocks and multiplies them in cache ([`crate::flex::conv2d_patches`]).
/// Everything else is burn's `conv2d`.
pub fn conv2d<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>, gelu: bool) -> Tensor<B, 4> {
    let bias = conv.bias.as_ref().map(|b| b.val());
    if let (Some(geometry), Some(bias)) = (Depthwise::of(conv, gelu), bias.clone()) {
        return depthwise_conv2d(x, conv.weight.val(), bias, geometry);
    }
    let half = |dtype: DType| matches!(dtype, DType::F16 | DType::BF16);
    let padding = even_padding(conv);
    if let Some(padding) = padding
        && (half(x.dtype()) || half(conv.weight.dtype()))
    {
        let dtype = x.dtype();
        let f32 = |t: Tensor<B, 4>| cast(t, DType::F32);
        let y = burn_conv2d(
            f32(x),
            conv.weight.val().cast(FloatDType::F32),
            bias.map(|b| b.cast(FloatDType::F32)),
            ConvOptions::new(conv.stride, padding, conv.dilation, conv.groups),
        );
        let y = if gelu { gelu_op(y) } else { y };
        return cast(y, dtype);
    }
    #[cfg(feature = "flex")]
    let x = match (padding, bias) {
        (Some([padding, padding_w]), Some(bias)) => {
            let [_, _, kh, kw] = conv.weight.dims();
            let square = kh == kw && padding == padding_w && conv.stride[0] == conv.stride[1];
            if square && conv.groups == 1 && conv.dilation == [1, 1] {
                let geometry = crate::flex::DenseConv {
                    kernel: kh,
                    stride: conv.stride[0],
                    padding,
                    gelu,
                };
                match crate::flex::conv2d_patches(x, conv.weight.val(), bias, geometry) {
                    Ok(y) => return y,
                    Err((x, _, _)) => x,
                }
            } else {
                x
            }
        }
        _ => x,
    };
    let y = conv.forward(x);
    if gelu { gelu_op(y) } else { y }
}

/// `conv`'s padding `[rows, columns]` when it is explicit and the same on opposite sides.
fn even_padding<B: Backend>(conv: &Conv2d<B>) -> Option<[usize; 2]> {
    match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some([top, left])
        }
        _ => None,
    }
}

/// Per-channel convolution `[batch, c_in, h, w]` → `[batch, multiplier·c_in, h', w']` with
/// weight `[multiplier·c_in, 1, k, k]` and bias `[multiplier·c_in]`, then GELU when the
/// geometry says so.
///
/// On the CubeCL backends one kernel that reads NCHW directly, sums in f32 at every precision
/// and applies the bias and GELU before writing (burn 0.21's convolution transposes to NHWC and
/// back around its own kernel and leaves the bias and the activation to further launches). On
/// flex at f32 a vectorised loop per channel with the bias and GELU in the same pass (flex runs
/// grouped convolutions one output pixel at a time). Elsewhere burn's `conv2d` and [`gelu_op`].
pub fn depthwise_conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
    geometry: Depthwise,
) -> Tensor<B, 4> {
    #[cfg(feature = "cubecl")]
    if super::runs::<B>(super::Kernel::Depthwise) && geometry.fits(&x, &weight, &bias) {
        return crate::cube::depthwise_conv2d(x, weight, bias, geometry);
    }
    #[cfg(feature = "flex")]
    let (x, weight, bias) = match crate::flex::depthwise_conv2d(x, weight, bias, geometry) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    let channels = x.dims()[1];
    let options = ConvOptions::new(
        [geometry.stride; 2],
        [geometry.padding; 2],
        [1, 1],
        channels,
    );
    let y = burn_conv2d(x, weight, Some(bias), options);
    if geometry.gelu { gelu_op(y) } else { y }
}

/// A 1×1 convolution with bias as one matrix product over the pixels: `[batch, in, h, w]` →
/// `[batch, out, h, w]` for weight `[out, in]` and bias `[out]`. The same numbers as a 1×1
/// `conv2d`, always on the backend's GEMM, which is what a 1×1 convolution is.
pub fn pointwise<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
) -> Tensor<B, 4> {
    let [batch, channels, h, w] = x.dims();
    let [out, _] = weight.dims();
    let pixels = x.reshape([batch, channels, h * w]);
    let y = weight.unsqueeze::<3>().matmul(pixels) + bias.reshape([1, out, 1]);
    y.reshape([batch, out, h, w])
}

/// A pixel-wise two-layer perceptron `W₂·GELU(W₁·x + b₁) + b₂` over `[batch, c_in, h, w]`
/// (FastViTHD's ConvFFN after its spatial convolution): `w1` `[hidden, c_in]`, `b1`
/// `[hidden]`, `w2` `[c_out, hidden]`, `b2` `[c_out]` → `[batch, c_out, h, w]`.
///
/// On flex at f32 both products and the GELU run a block of pixels at a time, so the map 4×
/// wider than the input never leaves the cache ([`crate::flex::pointwise_mlp`]); elsewhere two
/// [`pointwise`] products around [`gelu_op`].
pub fn pointwise_mlp<B: Backend>(
    x: Tensor<B, 4>,
    (w1, b1): (Tensor<B, 2>, Tensor<B, 1>),
    (w2, b2): (Tensor<B, 2>, Tensor<B, 1>),
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let x = if crate::flex::on_flex::<B>() {
        let weights = crate::flex::PointwiseMlp {
            w1: w1.clone(),
            b1: b1.clone(),
            w2: w2.clone(),
            b2: b2.clone(),
        };
        match crate::flex::pointwise_mlp(x, &weights) {
            Ok(y) => return y,
            Err(x) => x,
        }
    } else {
        x
    };
    pointwise(gelu_op(pointwise(x, w1, b1)), w2, b2)
}
