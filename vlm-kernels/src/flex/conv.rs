//! A dense convolution with few input channels on flex, a block of output pixels at a time.
//!
//! FastViTHD's first layer is a 3×3, stride-2 convolution from the 3 image channels to 96 (GELU
//! after it): a matrix product with only 27 terms per output, so its cost is moving pixels,
//! which flex's convolution does slowly (BENCHMARKS.md). Here each task gathers the
//! `c_in·k²` input patches of [`TILE`] output pixels into a small matrix, multiplies it with the
//! weights straight into the output columns, and applies the bias and GELU while they are in
//! cache. A 1×1 convolution (the stem's third layer) skips the gathering and reads its input
//! columns in place.

use std::cell::RefCell;

use burn::tensor::{DType, Tensor, backend::Backend};
use rayon::prelude::*;

use super::{Matrix, SharedMut, contiguous, flex, math, on_flex, output, product};

/// Output pixels per task.
const TILE: usize = 512;

/// The largest `c_in·k²` taken: beyond it a patch block outgrows the cache and burn's own
/// convolution is the better tool.
const MAX_PATCH: usize = 256;

thread_local! {
    /// Each thread's patch block, reused across its tasks.
    static PATCHES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The geometry of [`conv2d_patches`]: square kernel, the same stride and padding on both
/// axes, no dilation, one group; GELU (erf form) on the biased result when `gelu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseConv {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub gelu: bool,
}

/// The convolution `geometry` describes for f32 tensors on flex: x `[batch, c_in, h, w]`,
/// weight `[c_out, c_in, k, k]`, bias `[c_out]` → `[batch, c_out, h', w']`, for
/// `c_in·k² ≤ 256`. The inputs come back (`Err`) otherwise.
#[allow(clippy::type_complexity)]
pub fn conv2d_patches<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
    geometry: DenseConv,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 1>)> {
    let [batch, c_in, h, w] = x.dims();
    let [c_out, w_in, kh, kw] = weight.dims();
    let DenseConv {
        kernel: k,
        stride,
        padding,
        gelu,
    } = geometry;
    let shapes = w_in == c_in
        && [kh, kw] == [k, k]
        && bias.dims() == [c_out]
        && k > 0
        && stride > 0
        && c_out > 0
        && c_in * k * k <= MAX_PATCH
        && h + 2 * padding >= k
        && w + 2 * padding >= k;
    let f32s = [x.dtype(), weight.dtype(), bias.dtype()] == [DType::F32; 3];
    if !on_flex::<B>() || !shapes || !f32s || batch == 0 || c_in == 0 {
        return Err((x, weight, bias));
    }
    let (oh, ow) = (
        (h + 2 * padding - k) / stride + 1,
        (w + 2 * padding - k) / stride + 1,
    );
    let pixels = oh * ow;
    let patch = c_in * k * k;
    let (x, weight, bias) = (
        contiguous(flex(x)),
        contiguous(flex(weight)),
        contiguous(flex(bias)),
    );
    let input = &x.storage::<f32>()[..batch * c_in * h * w];
    let weights = &weight.storage::<f32>()[..c_out * patch];
    let biases = &bias.storage::<f32>()[..c_out];

    // Row `(c, ky, kx)` of a block holds that tap of each of its n pixels.
    let gather = |patches: &mut Vec<f32>, image: &[f32], first: usize, n: usize| {
        patches.clear();
        patches.resize(patch * n, 0.0);
        for (j, p) in (first..first + n).enumerate() {
            let (oy, ox) = (p / ow, p % ow);
            for c in 0..c_in {
                for ky in 0..k {
                    let Some(y) = (oy * stride + ky).checked_sub(padding).filter(|&y| y < h) else {
                        continue;
                    };
                    for kx in 0..k {
                        let Some(x) = (ox * stride + kx).checked_sub(padding).filter(|&x| x < w)
                        else {
                            continue;
                        };
                        patches[((c * k + ky) * k + kx) * n + j] = image[(c * h + y) * w + x];
                    }
                }
            }
        }
    };
    let tiles = pixels.div_ceil(TILE);
    let mut out = vec![0.0f32; batch * c_out * pixels];
    let out_ptr = SharedMut(out.as_mut_ptr());
    (0..batch * tiles).into_par_iter().for_each(|task| {
        let (b, first) = (task / tiles, (task % tiles) * TILE);
        let n = TILE.min(pixels - first);
        let image = &input[b * c_in * h * w..(b + 1) * c_in * h * w];
        PATCHES.with_borrow_mut(|patches| {
            // A 1×1 convolution reads its input columns where they are.
            let rhs = if k == 1 && stride == 1 && padding == 0 {
                Matrix::rows(image[first..].as_ptr(), h * w)
            } else {
                gather(patches, image, first, n);
                Matrix::rows(patches.as_ptr(), n)
            };
            // SAFETY: this task alone writes columns `first..first + n` of the `c_out` rows
            // (`pixels` apart) of batch `b`'s output; the weights are `c_out × patch` row-major,
            // the right-hand side `patch × n` (the block, or for a 1×1 convolution the input's
            // own rows).
            unsafe {
                let dst = out_ptr.get().add(b * c_out * pixels + first);
                let lhs = Matrix::rows(weights.as_ptr(), patch);
                product([c_out, n, patch], dst, pixels, lhs, rhs, 1.0, Some(biases));
                if gelu {
                    for c in 0..c_out {
                        math::gelu_slice(std::slice::from_raw_parts_mut(dst.add(c * pixels), n));
                    }
                }
            }
        });
    });

    Ok(output(out, [batch, c_out, oh, ow]))
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{FloatDType, Tensor};

    use super::DenseConv;
    use crate::flex::testing::{self, burn_conv, rel_l2};

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<Flex, D> {
        testing::random(shape, 1.0)
    }

    /// burn's `conv2d` (+ `gelu`): the stem's 3×3 stride 2 from 3 channels with GELU, a 1×1,
    /// a 5×5 stride 3 without padding; sizes across the pixel-block boundary, batch 2; each
    /// input moves the output.
    #[test]
    fn matches_burn_conv2d() {
        let cases = [(3, 3, 2, 1, true), (4, 1, 1, 0, false), (2, 5, 3, 0, false)];
        for (c_in, kernel, stride, padding, gelu) in cases {
            let geometry = DenseConv {
                kernel,
                stride,
                padding,
                gelu,
            };
            for [h, w] in [[5, 6], [50, 47]] {
                let x = random([2, c_in, h, w]);
                let (weight, bias) = (random([7, c_in, kernel, kernel]), random([7]));
                let burn_geometry = [stride, padding, 1];
                let want = burn_conv(x.clone(), weight.clone(), bias.clone(), burn_geometry, gelu);
                let run = |x, weight, bias| {
                    super::conv2d_patches(x, weight, bias, geometry)
                        .unwrap_or_else(|_| panic!("flex f32, {geometry:?}"))
                };
                let got = run(x.clone(), weight.clone(), bias.clone());
                assert_eq!(got.dims(), want.dims());
                let err = rel_l2(got.clone(), want);
                assert!(err < 1e-6, "{geometry:?} on {h}×{w}: rel-L2 {err:e}");
                for other in [
                    run(
                        x.clone() + random([2, c_in, h, w]),
                        weight.clone(),
                        bias.clone(),
                    ),
                    run(x.clone(), weight.clone() * 2.0, bias.clone()),
                    run(x.clone(), weight.clone(), bias.clone() + 1.0),
                ] {
                    assert!(rel_l2(other, got.clone()) > 0.05, "{geometry:?}");
                }
            }
        }
    }

    #[test]
    fn hands_back_what_it_does_not_take() {
        let geometry = DenseConv {
            kernel: 3,
            stride: 1,
            padding: 1,
            gelu: false,
        };
        let (weight, bias) = (random([4, 3, 3, 3]), random([4]));
        let x = random([1, 2, 8, 8]);
        assert!(super::conv2d_patches(x, weight.clone(), bias.clone(), geometry).is_err());
        let wide = random([1, 64, 8, 8]);
        let (w64, b64) = (random([4, 64, 3, 3]), random([4]));
        assert!(super::conv2d_patches(wide, w64, b64, geometry).is_err());
        let half = random([1, 3, 8, 8]).cast(FloatDType::F16);
        let (weight, bias) = (weight.cast(FloatDType::F16), bias.cast(FloatDType::F16));
        assert!(super::conv2d_patches(half, weight, bias, geometry).is_err());
    }
}
