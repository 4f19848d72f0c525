//! A pixel-wise two-layer perceptron on flex with its hidden layer kept in cache.
//!
//! FastViTHD's ConvFFN widens every pixel 4× (1×1 conv), applies GELU and narrows it back. As
//! three ops on flex the wide map is written to memory and read back twice (100 MB per block at
//! stage 0 of a 1024² image, 384 × 256² floats), which slows the matrix products where the map
//! is largest (BENCHMARKS.md). Here each task takes [`hidden_tile`] pixels through both
//! layers: `h = W₁·x + b₁` into a scratch block that stays in L2, GELU over it, `y = W₂·h + b₂`
//! straight into the output columns.

use std::cell::RefCell;

use burn::tensor::{DType, Tensor, backend::Backend};
use rayon::prelude::*;

use super::{Matrix, SharedMut, contiguous, flex, math, on_flex, output, product};

thread_local! {
    /// Each thread's hidden block, reused across its tasks.
    static HIDDEN: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The weights of [`pointwise_mlp`]: `w1` `[hidden, c_in]`, `b1` `[hidden]`, `w2`
/// `[c_out, hidden]`, `b2` `[c_out]`.
#[derive(Clone, Debug)]
pub struct PointwiseMlp<B: Backend> {
    pub w1: Tensor<B, 2>,
    pub b1: Tensor<B, 1>,
    pub w2: Tensor<B, 2>,
    pub b2: Tensor<B, 1>,
}

/// Pixels per task: the hidden block (`hidden × pixels` f32) near 256 KiB, a multiple of 16
/// between 32 and 512.
fn hidden_tile(hidden: usize) -> usize {
    ((256 * 1024 / 4 / hidden.max(1)) / 16 * 16).clamp(32, 512)
}

/// `W₂·GELU(W₁·x + b₁) + b₂` at every pixel of an f32 map `[batch, c_in, h, w]` on flex →
/// `[batch, c_out, h, w]` (GELU in the erf form). The map comes back (`Err`) on any other
/// backend, dtype or shape.
pub fn pointwise_mlp<B: Backend>(
    x: Tensor<B, 4>,
    weights: &PointwiseMlp<B>,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let [batch, c_in, height, width] = x.dims();
    let [hidden, w1_in] = weights.w1.dims();
    let [c_out, w2_in] = weights.w2.dims();
    let shapes = w1_in == c_in
        && w2_in == hidden
        && weights.b1.dims() == [hidden]
        && weights.b2.dims() == [c_out]
        && [batch, c_in, hidden, c_out, height * width]
            .iter()
            .all(|&n| n > 0);
    let f32s = [
        x.dtype(),
        weights.w1.dtype(),
        weights.b1.dtype(),
        weights.w2.dtype(),
        weights.b2.dtype(),
    ] == [DType::F32; 5];
    if !on_flex::<B>() || !shapes || !f32s {
        return Err(x);
    }
    let pixels = height * width;
    let x = contiguous(flex(x));
    let (w1, w2) = (
        contiguous(flex(weights.w1.clone())),
        contiguous(flex(weights.w2.clone())),
    );
    let (b1, b2) = (
        contiguous(flex(weights.b1.clone())),
        contiguous(flex(weights.b2.clone())),
    );
    let input = &x.storage::<f32>()[..batch * c_in * pixels];
    let (w1, b1) = (
        &w1.storage::<f32>()[..hidden * c_in],
        &b1.storage::<f32>()[..hidden],
    );
    let (w2, b2) = (
        &w2.storage::<f32>()[..c_out * hidden],
        &b2.storage::<f32>()[..c_out],
    );

    let tile = hidden_tile(hidden);
    let tiles = pixels.div_ceil(tile);
    let mut out = vec![0.0f32; batch * c_out * pixels];
    let out_ptr = SharedMut(out.as_mut_ptr());
    (0..batch * tiles).into_par_iter().for_each(|task| {
        let (b, first) = (task / tiles, (task % tiles) * tile);
        let n = tile.min(pixels - first);
        HIDDEN.with_borrow_mut(|h| {
            h.resize(hidden * n, 0.0);
            let x = Matrix::rows(input[b * c_in * pixels + first..].as_ptr(), pixels);
            // SAFETY: W₁ is `hidden × c_in` row-major; the input columns `first..first + n` of
            // batch `b` are `c_in` rows `pixels` apart; `h` holds `hidden × n`.
            unsafe {
                let w1 = Matrix::rows(w1.as_ptr(), c_in);
                product([hidden, n, c_in], h.as_mut_ptr(), n, w1, x, 1.0, Some(b1));
            }
            math::gelu_slice(h);
            // SAFETY: this task alone writes columns `first..first + n` of the `c_out` rows
            // (`pixels` apart) of batch `b`'s output; W₂ is `c_out × hidden` row-major.
            unsafe {
                let dst = out_ptr.get().add(b * c_out * pixels + first);
                let (w2, h) = (
                    Matrix::rows(w2.as_ptr(), hidden),
                    Matrix::rows(h.as_ptr(), n),
                );
                product([c_out, n, hidden], dst, pixels, w2, h, 1.0, Some(b2));
            }
        });
    });

    Ok(output(out, [batch, c_out, height, width]))
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{FloatDType, Tensor, activation};

    use super::PointwiseMlp;
    use crate::flex::testing::{random, rel_l2};

    fn weights(c_in: usize, hidden: usize, c_out: usize) -> PointwiseMlp<Flex> {
        PointwiseMlp {
            w1: random([hidden, c_in], 0.3),
            b1: random([hidden], 0.5),
            w2: random([c_out, hidden], 0.1),
            b2: random([c_out], 0.5),
        }
    }

    /// The three ops it replaces, in burn.
    fn reference(x: Tensor<Flex, 4>, w: &PointwiseMlp<Flex>) -> Tensor<Flex, 4> {
        let [b, c, h, wd] = x.dims();
        let [hidden, _] = w.w1.dims();
        let [c_out, _] = w.w2.dims();
        let x = x.reshape([b, c, h * wd]);
        let hid = w.w1.clone().unsqueeze::<3>().matmul(x) + w.b1.clone().reshape([1, hidden, 1]);
        let y = w.w2.clone().unsqueeze::<3>().matmul(activation::gelu(hid))
            + w.b2.clone().reshape([1, c_out, 1]);
        y.reshape([b, c_out, h, wd])
    }

    /// burn's `W₂·gelu(W₁·x + b₁) + b₂` over pixel counts below, at and across tile
    /// boundaries, narrow and wide hidden layers, batch 2 and a transposed input view; every
    /// weight and the input move the output.
    #[test]
    fn matches_burn_matmuls_and_gelu() {
        for (c_in, hidden, c_out, h, w) in
            [(5, 20, 5, 3, 7), (8, 32, 8, 40, 37), (16, 1536, 12, 9, 11)]
        {
            let weights = weights(c_in, hidden, c_out);
            let x = random([2, c_in, h, w], 1.0);
            let got = super::pointwise_mlp(x.clone(), &weights).expect("flex f32");
            assert_eq!(got.dims(), [2, c_out, h, w]);
            let err = rel_l2(got.clone(), reference(x.clone(), &weights));
            assert!(
                err < 1e-5,
                "{c_in}->{hidden}->{c_out} at {h}×{w}: rel-L2 {err:e}"
            );
            let view = random([2, c_in, w, h], 1.0).swap_dims(2, 3);
            let viewed = super::pointwise_mlp(view.clone(), &weights).expect("flex f32");
            assert!(rel_l2(viewed, reference(view, &weights)) < 1e-5);

            let moved = |other: PointwiseMlp<Flex>| {
                let y = super::pointwise_mlp(x.clone(), &other).expect("flex f32");
                rel_l2(y, got.clone()) > 0.01
            };
            let same = || weights.clone();
            assert!(moved(PointwiseMlp {
                w1: weights.w1.clone() * 2.0,
                ..same()
            }));
            assert!(moved(PointwiseMlp {
                b1: weights.b1.clone() + 1.0,
                ..same()
            }));
            assert!(moved(PointwiseMlp {
                w2: weights.w2.clone() * 2.0,
                ..same()
            }));
            assert!(moved(PointwiseMlp {
                b2: weights.b2.clone() + 1.0,
                ..same()
            }));
            let other = super::pointwise_mlp(x.clone() * 2.0, &weights).expect("flex f32");
            assert!(rel_l2(other, got) > 0.01);
        }
    }

    #[test]
    fn hands_back_what_it_does_not_take() {
        let weights = weights(4, 8, 4);
        assert!(super::pointwise_mlp(random([1, 5, 3, 3], 1.0), &weights).is_err());
        let half = random([1, 4, 3, 3], 1.0).cast(FloatDType::F16);
        assert!(super::pointwise_mlp(half, &weights).is_err());
    }
}
