//! Per-channel convolution on flex: one task per input channel, accumulators in registers.
//!
//! flex 0.21 runs a grouped convolution through its general 3-d convolution, one output pixel
//! at a time in 4-lane SSE: about 17% of a 1024² FastViTHD forward (`perf` over
//! `fastvlm-bench encoder`), whose spatial mixing is all per-channel 3×3 and 7×7. Here each
//! task copies its input plane once into a zero-padded scratch plane, split by column phase
//! when the stride is above 1 (so that every tap reads contiguous columns), and computes
//! [`TILE`] output columns at a time: for each of the k² taps, `acc += w · row[tap..tap + TILE]`,
//! the accumulators staying in vector registers. Bias first, GELU last, in the same pass.

use std::cell::RefCell;

use burn::tensor::{DType, Tensor, backend::Backend};
use rayon::prelude::*;

use super::{contiguous, flex, math, on_flex, output};
use crate::Depthwise;

/// Output columns per accumulator block: four 8-lane vectors.
const TILE: usize = 32;

thread_local! {
    /// Each thread's padded input plane, reused across its tasks.
    static PLANE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The per-channel convolution `geometry` describes, for f32 tensors on flex: x
/// `[batch, c_in, h, w]`, weight `[multiplier·c_in, 1, k, k]`, bias `[multiplier·c_in]` →
/// `[batch, multiplier·c_in, h', w']`. The inputs come back (`Err`) on any other backend, dtype
/// or shape.
#[allow(clippy::type_complexity)]
pub fn depthwise_conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
    geometry: Depthwise,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 1>)> {
    let f32s = [x.dtype(), weight.dtype(), bias.dtype()] == [DType::F32; 3];
    if !on_flex::<B>() || !f32s || !geometry.fits_shapes(x.dims(), weight.dims(), bias.dims()) {
        return Err((x, weight, bias));
    }
    let [batch, c_in, h, w] = x.dims();
    let Depthwise {
        kernel: k,
        stride,
        padding,
        multiplier,
        ..
    } = geometry;
    let (oh, ow) = (geometry.output_size(h), geometry.output_size(w));
    let c_out = c_in * multiplier;
    let (x, weight, bias) = (
        contiguous(flex(x)),
        contiguous(flex(weight)),
        contiguous(flex(bias)),
    );
    let input = &x.storage::<f32>()[..batch * c_in * h * w];
    let weights = &weight.storage::<f32>()[..c_out * k * k];
    let biases = &bias.storage::<f32>()[..c_out];
    let plane = Plane::new(h, w, k, stride, padding, ow);

    let mut out = vec![0.0f32; batch * c_out * oh * ow];
    out.par_chunks_mut(multiplier * oh * ow)
        .enumerate()
        .for_each(|(task, outputs)| {
            let channel = task % c_in;
            let source = &input[task * h * w..(task + 1) * h * w];
            PLANE.with_borrow_mut(|padded| {
                plane.fill(padded, source);
                for (m, output) in outputs.chunks_exact_mut(oh * ow).enumerate() {
                    let c = channel * multiplier + m;
                    let taps = &weights[c * k * k..(c + 1) * k * k];
                    convolve(&plane, padded, taps, biases[c], geometry.gelu, output);
                }
            });
        });

    Ok(output(out, [batch, c_out, oh, ow]))
}

/// Where the padded, phase-split copy of an input plane keeps each pixel.
///
/// Padded pixel `(py, px)` (input `(py − padding, px − padding)`, zero outside) lives at
/// `(px % stride) · phase + py · row + px / stride`. Output column `ox` of tap `(ky, kx)` reads
/// padded column `ox·stride + kx`: phase `kx % stride`, offset `ox + kx / stride`, so a block of
/// output columns reads contiguous memory. Rows carry [`TILE`] spare zeros for the last block.
#[derive(Debug, Clone, Copy)]
struct Plane {
    w: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    out_w: usize,
    /// Floats per padded row of one phase.
    row: usize,
    /// Floats per phase.
    phase: usize,
}

impl Plane {
    fn new(h: usize, w: usize, kernel: usize, stride: usize, padding: usize, out_w: usize) -> Self {
        let row = (w + 2 * padding).div_ceil(stride) + TILE;
        Self {
            w,
            kernel,
            stride,
            padding,
            out_w,
            row,
            phase: (h + 2 * padding) * row,
        }
    }

    /// Copies `source` (`h × w`, row-major) into `padded`, zeros around it.
    fn fill(&self, padded: &mut Vec<f32>, source: &[f32]) {
        padded.clear();
        padded.resize(self.stride * self.phase, 0.0);
        let rows = source.chunks_exact(self.w).enumerate();
        if self.stride == 1 {
            for (y, line) in rows {
                let start = (y + self.padding) * self.row + self.padding;
                padded[start..start + self.w].copy_from_slice(line);
            }
            return;
        }
        // Each column's place in its phase, worked out once.
        let columns: Vec<usize> = (0..self.w)
            .map(|x| {
                let px = x + self.padding;
                (px % self.stride) * self.phase + px / self.stride
            })
            .collect();
        for (y, line) in rows {
            let row = &mut padded[(y + self.padding) * self.row..];
            for (&column, &v) in columns.iter().zip(line) {
                row[column] = v;
            }
        }
    }
}

/// One output plane from a padded input plane: bias, the k² taps, then GELU when asked.
fn convolve(plane: &Plane, padded: &[f32], taps: &[f32], bias: f32, gelu: bool, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { convolve_avx2(plane, padded, taps, bias, gelu, out) };
    }
    convolve_any(plane, padded, taps, bias, gelu, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn convolve_avx2(
    plane: &Plane,
    padded: &[f32],
    taps: &[f32],
    bias: f32,
    gelu: bool,
    out: &mut [f32],
) {
    convolve_any(plane, padded, taps, bias, gelu, out)
}

#[inline(always)]
fn convolve_any(
    plane: &Plane,
    padded: &[f32],
    taps: &[f32],
    bias: f32,
    gelu: bool,
    out: &mut [f32],
) {
    let k = plane.kernel;
    for (oy, line) in out.chunks_exact_mut(plane.out_w).enumerate() {
        for x0 in (0..plane.out_w).step_by(TILE) {
            let mut acc = [bias; TILE];
            for ky in 0..k {
                let py = oy * plane.stride + ky;
                for kx in 0..k {
                    let start =
                        (kx % plane.stride) * plane.phase + py * plane.row + x0 + kx / plane.stride;
                    let src: &[f32; TILE] = padded[start..start + TILE]
                        .try_into()
                        .expect("rows carry TILE spare columns");
                    let tap = taps[ky * k + kx];
                    for i in 0..TILE {
                        acc[i] += tap * src[i];
                    }
                }
            }
            let n = TILE.min(plane.out_w - x0);
            let dst = &mut line[x0..x0 + n];
            if gelu {
                dst.iter_mut()
                    .zip(&acc)
                    .for_each(|(d, &a)| *d = math::gelu(a));
            } else {
                dst.copy_from_slice(&acc[..n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{FloatDType, Tensor};

    use crate::Depthwise;
    use crate::flex::testing::{self, burn_conv, rel_l2};

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<Flex, D> {
        testing::random(shape, 1.0)
    }

    /// burn's grouped `conv2d` (+ `gelu`) for FastViTHD's geometries (RepMixer 3×3, ConvFFN and
    /// RepCPE 7×7, PatchEmbed's stride-2 7×7 with two outputs per channel and GELU, the stem's
    /// stride-2 3×3 with GELU), on maps narrower than, equal to and wider than one block of
    /// columns, odd sizes, batch 2; each input moves the output.
    #[test]
    fn matches_burn_conv2d() {
        let geometries = [
            (3, 1, 1, 1, false),
            (7, 1, 3, 1, false),
            (7, 2, 3, 2, true),
            (3, 2, 1, 1, true),
            (5, 3, 0, 3, false),
        ];
        for (kernel, stride, padding, multiplier, gelu) in geometries {
            let geometry = Depthwise {
                kernel,
                stride,
                padding,
                multiplier,
                gelu,
            };
            for [h, w] in [[9, 5], [20, 37], [33, 64], [7, 70]] {
                let c = 3;
                let x = random([2, c, h, w]);
                let weight = random([c * multiplier, 1, kernel, kernel]);
                let bias = random([c * multiplier]);
                let burn_geometry = [stride, padding, c];
                let want = burn_conv(x.clone(), weight.clone(), bias.clone(), burn_geometry, gelu);
                let got =
                    super::depthwise_conv2d(x.clone(), weight.clone(), bias.clone(), geometry)
                        .unwrap_or_else(|_| panic!("flex f32, {geometry:?}"));
                assert_eq!(got.dims(), want.dims(), "{geometry:?} on {h}×{w}");
                let err = rel_l2(got.clone(), want);
                assert!(err < 1e-6, "{geometry:?} on {h}×{w}: rel-L2 {err:e}");
                for other in [
                    super::depthwise_conv2d(
                        x.clone() + random([2, c, h, w]),
                        weight.clone(),
                        bias.clone(),
                        geometry,
                    ),
                    super::depthwise_conv2d(
                        x.clone(),
                        weight.clone() * 2.0,
                        bias.clone(),
                        geometry,
                    ),
                    super::depthwise_conv2d(
                        x.clone(),
                        weight.clone(),
                        bias.clone() + 1.0,
                        geometry,
                    ),
                ] {
                    let other = other.unwrap_or_else(|_| panic!("flex f32"));
                    assert!(
                        rel_l2(other, got.clone()) > 0.05,
                        "{geometry:?}: an input did not move the output"
                    );
                }
            }
        }
    }

    /// A transposed view is read as the tensor it stands for.
    #[test]
    fn reads_views() {
        let geometry = Depthwise {
            kernel: 3,
            stride: 1,
            padding: 1,
            multiplier: 1,
            gelu: false,
        };
        let x = random([1, 4, 12, 10]).swap_dims(2, 3);
        let (weight, bias) = (random([4, 1, 3, 3]), random([4]));
        let want = burn_conv(x.clone(), weight.clone(), bias.clone(), [1, 1, 4], false);
        let got = super::depthwise_conv2d(x, weight, bias, geometry)
            .unwrap_or_else(|_| panic!("flex f32"));
        assert!(rel_l2(got, want) < 1e-6);
    }

    #[test]
    fn hands_back_what_it_does_not_take() {
        let geometry = Depthwise {
            kernel: 3,
            stride: 1,
            padding: 1,
            multiplier: 1,
            gelu: false,
        };
        let (x, weight, bias) = (random([1, 4, 6, 6]), random([4, 1, 3, 3]), random([4]));
        let dense = random([4, 2, 3, 3]);
        assert!(super::depthwise_conv2d(x.clone(), dense, bias.clone(), geometry).is_err());
        let wide = Depthwise {
            kernel: 5,
            ..geometry
        };
        assert!(super::depthwise_conv2d(x.clone(), weight.clone(), bias.clone(), wide).is_err());
        let half = x.cast(FloatDType::F16);
        let (weight, bias) = (weight.cast(FloatDType::F16), bias.cast(FloatDType::F16));
        assert!(super::depthwise_conv2d(half, weight, bias, geometry).is_err());
    }
}
