//! The geometry of a per-channel convolution, shared by the CubeCL kernel and the flex loop.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;

/// The geometry of a per-channel convolution: every output channel reads exactly one input
/// channel (`groups == c_in`, `c_out = multiplier · c_in`), square kernel, no dilation, the same
/// padding on every side, a bias, and optionally GELU (exact, erf) on the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Depthwise {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// Output channels per input channel.
    pub multiplier: usize,
    /// GELU (erf form) applied to the biased result inside the same kernel.
    pub gelu: bool,
}

impl Depthwise {
    /// The geometry of `conv` (then GELU when `gelu`) when it is a per-channel convolution with a
    /// bias, the same padding on every side and no dilation; `None` otherwise.
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

    /// Whether input `[batch, c_in, h, w]`, weight `[c_out, 1, k, k]` and bias `[c_out]` make
    /// the convolution this geometry describes, with at least one output pixel.
    pub fn fits_shapes(&self, x: [usize; 4], weight: [usize; 4], bias: [usize; 1]) -> bool {
        let [_, c_in, h, w] = x;
        let [c_out, in_per_group, kh, kw] = weight;
        in_per_group == 1
            && kh == self.kernel
            && kw == self.kernel
            && self.kernel > 0
            && self.stride > 0
            && self.multiplier > 0
            && c_out == c_in * self.multiplier
            && bias == [c_out]
            && h + 2 * self.padding >= self.kernel
            && w + 2 * self.padding >= self.kernel
    }
}
