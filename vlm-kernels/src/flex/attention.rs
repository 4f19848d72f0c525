//! Scaled dot-product attention on flex, parallel over heads and blocks of queries (over kv
//! heads, each with its group of query heads, for a single query).
//!
//! flex 0.21's attention walks the `(batch, head)` pairs one after another on one thread, its
//! matrix products are told not to spread either, and its softmax calls libm's `expf` per
//! score: over half of a FastViTHD attention block at 1024² (BENCHMARKS.md). Here each task is one head and up
//! to [`QUERY_BLOCK`] queries: the block's scores come from one `gemm` call reading q and k where
//! they lie (any strides: FastViTHD's q/k/v are views of one `qkv` output, the decoder's keys a
//! prefix of its cache), the softmax is one vectorised pass per row ([`math::softmax_row`]), and
//! a second `gemm` writes the weighted sum of values straight into the output.

use std::cell::RefCell;

use burn::backend::flex::Layout;
use burn::tensor::{DType, Tensor, backend::Backend};
use rayon::prelude::*;

use super::{Matrix, Operand, SharedMut, flex, math, on_flex, output_laid_out, product};

/// Queries per task: their scores against up to a few thousand keys stay in L2.
const QUERY_BLOCK: usize = 64;

thread_local! {
    /// Each thread's score block, reused across its tasks.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `softmax(q·kᵀ/√d)·v` for f32 tensors on flex: q `[batch, heads, n, d]`, k
/// `[batch, kv_heads, m, d]`, v `[batch, kv_heads, m, d_v]`, query head `h` reading kv head
/// `h / (heads / kv_heads)` (grouped-query attention without repeating k and v). `causal` lets
/// query `i` see keys `0..=i + m − n` (the n queries are the last n of the m keys, as burn
/// aligns its causal mask); it needs `m ≥ n`.
///
/// `[batch, heads, n, d_v]`, laid out as `[batch, n, heads, d_v]` in memory, so that the
/// callers' `swap_dims(1, 2)` to `[batch, n, heads·d_v]` is free. The inputs come back
/// (`Err`) on any other backend, dtype or shape.
#[allow(clippy::type_complexity)]
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
    let [batch, heads, n, d] = q.dims();
    let [kb, kv_heads, m, kd] = k.dims();
    let [vb, vh, vm, dv] = v.dims();
    let f32s = [q.dtype(), k.dtype(), v.dtype()] == [DType::F32; 3];
    let shapes = kb == batch
        && [vb, vh, vm] == [batch, kv_heads, m]
        && kd == d
        && kv_heads > 0
        && heads % kv_heads == 0
        && n > 0
        && m > 0
        && d > 0
        && dv > 0
        && (!causal || m >= n);
    if !on_flex::<B>() || !f32s || !shapes {
        return Err((q, k, v));
    }
    let (q, k, v) = (
        Operand::of(flex(q)),
        Operand::of(flex(k)),
        Operand::of(flex(v)),
    );
    let group = heads / kv_heads;
    let blocks = n.div_ceil(QUERY_BLOCK);
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0f32; batch * n * heads * dv];
    let out_ptr = SharedMut(out.as_mut_ptr());
    let row_stride = heads * dv;

    // One query per head (a decoding step): each task takes a kv head's group of query heads
    // as the rows of one product, so that its keys and values are read once per group rather
    // than once per query head.
    let stacked = n == 1;
    let tasks = match stacked {
        true => batch * kv_heads,
        false => batch * heads * blocks,
    };
    (0..tasks).into_par_iter().for_each(|task| {
        // The task's first query head and position, its rows, and the step between them in q
        // and in the output.
        let (b, head, first, rows, q_step, out_step) = match stacked {
            true => (
                task / kv_heads,
                (task % kv_heads) * group,
                0,
                group,
                q.strides[1],
                dv,
            ),
            false => (
                task / (blocks * heads),
                (task / blocks) % heads,
                (task % blocks) * QUERY_BLOCK,
                QUERY_BLOCK.min(n - (task % blocks) * QUERY_BLOCK),
                q.strides[2],
                row_stride,
            ),
        };
        let kv_head = head / group;
        // The position of row `i`'s query.
        let query = |i: usize| if stacked { first } else { first + i };
        // Keys the task's last query sees; earlier rows mask the rest of theirs.
        let keys = if causal {
            query(rows - 1) + 1 + m - n
        } else {
            m
        };
        SCORES.with_borrow_mut(|scores| {
            scores.resize(rows * keys, 0.0);
            let q = Matrix {
                row: q_step,
                ..q.at([b, head, first, 0])
            };
            let k = k.at([b, kv_head, 0, 0]);
            let v = v.at([b, kv_head, 0, 0]);
            // SAFETY: the task's `rows × d` of q (positions `first..first + rows` of one head,
            // or one position of the group's heads) and `keys × d` of k lie inside their
            // tensors (`keys ≤ m`), read through the tensors' own strides; `scores` holds
            // `rows × keys`.
            unsafe {
                let dst = scores.as_mut_ptr();
                product([rows, keys, d], dst, keys, q, k.transposed(), scale, None);
            }
            let inverse_sums: Vec<f32> = scores
                .chunks_exact_mut(keys)
                .enumerate()
                .map(|(i, row)| {
                    let visible = if causal { query(i) + 1 + m - n } else { m };
                    math::softmax_row(row, visible)
                })
                .collect();
            // SAFETY: this task alone writes its rows (`out_step` apart, `dv` each: positions
            // `first..first + rows` of head `head`, or the group's heads at one position) of
            // batch `b` in the `batch · n · heads · dv` output; v's `keys × dv` lie inside v.
            unsafe {
                let dst = out_ptr.get().add((b * n + first) * row_stride + head * dv);
                let weights = Matrix::rows(scores.as_ptr(), keys);
                product([rows, dv, keys], dst, out_step, weights, v, 1.0, None);
                for (i, inverse) in inverse_sums.into_iter().enumerate() {
                    let row = std::slice::from_raw_parts_mut(dst.add(i * out_step), dv);
                    row.iter_mut().for_each(|x| *x *= inverse);
                }
            }
        });
    });

    let shape = burn::tensor::Shape::from(vec![batch, heads, n, dv]);
    let strides = [n * row_stride, dv, row_stride, 1]
        .map(|s| s as isize)
        .to_vec();
    Ok(output_laid_out(out, Layout::new(shape, strides, 0)))
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{Bool, FloatDType, Tensor, TensorData, activation};

    use crate::flex::testing::{random, rel_l2};

    type T4 = Tensor<Flex, 4>;

    /// The definition in burn's tensor ops: k and v repeated per query head, the scores
    /// materialised, masked with −∞ above the shifted diagonal, softmax, product.
    fn reference(q: T4, k: T4, v: T4, causal: bool) -> T4 {
        let [b, h, n, d] = q.dims();
        let [_, kvh, m, dv] = v.dims();
        let repeat = |t: T4, last: usize| {
            t.unsqueeze_dim::<5>(2)
                .expand([b, kvh, h / kvh, m, last])
                .reshape([b, h, m, last])
        };
        let (k, v) = (repeat(k, d), repeat(v, dv));
        let scores = q.matmul(k.swap_dims(2, 3)) / (d as f32).sqrt();
        let scores = if causal {
            let above: Vec<bool> = (0..n)
                .flat_map(|i| (0..m).map(move |j| j > i + m - n))
                .collect();
            let mask = Tensor::<Flex, 2, Bool>::from_data(
                TensorData::new(above, [n, m]),
                &Default::default(),
            );
            scores.mask_fill(
                mask.unsqueeze::<4>().expand([b, h, n, m]),
                f32::NEG_INFINITY,
            )
        } else {
            scores
        };
        activation::softmax(scores, 3).matmul(v)
    }

    fn run(q: T4, k: T4, v: T4, causal: bool) -> T4 {
        super::attention(q, k, v, causal).unwrap_or_else(|_| panic!("flex f32 inputs"))
    }

    /// FastViTHD's case: q, k and v strided views of one `[batch, n, 3, heads, d]` projection,
    /// more queries than one block and a partial last block; every input moves the output.
    #[test]
    fn matches_burn_on_views_of_one_projection() {
        let (b, n, h, d) = (2, 150, 3, 32);
        let qkv = random([b, n, 3, h * d], 1.0)
            .reshape([b, n, 3, h, d])
            .permute([2, 0, 3, 1, 4]);
        let [q, k, v] = [0, 1, 2].map(|i| qkv.clone().narrow(0, i, 1).reshape([b, h, n, d]));
        let got = run(q.clone(), k.clone(), v.clone(), false);
        assert_eq!(got.dims(), [b, h, n, d]);
        let want = reference(q.clone(), k.clone(), v.clone(), false);
        assert!(rel_l2(got.clone(), want) < 1e-6);
        // Laid out token-major: the swap the models make next is a view.
        let tokens = got.clone().swap_dims(1, 2).reshape([b, n, h * d]);
        let direct = reference(q.clone(), k.clone(), v.clone(), false)
            .swap_dims(1, 2)
            .reshape([b, n, h * d]);
        let d2 = (tokens - direct.clone())
            .powi_scalar(2)
            .sum()
            .into_scalar()
            .sqrt();
        assert!(d2 / direct.powi_scalar(2).sum().into_scalar().sqrt() < 1e-6);
        for other in [
            run(q.clone() * 3.0, k.clone(), v.clone(), false),
            run(
                q.clone(),
                k.clone() + random([b, h, n, d], 1.0),
                v.clone(),
                false,
            ),
            run(q.clone(), k.clone(), v.clone() + 1.0, false),
        ] {
            assert!(rel_l2(other, got.clone()) > 0.05);
        }
        // Large scores (softmax near one-hot) stay finite and exact.
        let sharp = q * 40.0;
        let got = run(sharp.clone(), k.clone(), v.clone(), false);
        assert!(rel_l2(got, reference(sharp, k, v, false)) < 1e-5);
    }

    /// The decoder's case: grouped heads, causal, keys a prefix of a longer cache buffer, for
    /// prefill after cached positions, prefill from empty and one decoding step.
    #[test]
    fn matches_burn_causal_grouped_over_a_cache_prefix() {
        let (b, h, kvh, d, capacity) = (1, 6, 2, 16, 160);
        let cache_k = random([b, kvh, capacity, d], 1.0);
        let cache_v = random([b, kvh, capacity, d], 1.0);
        for (n, m) in [(70, 100), (130, 130), (1, 37), (1, 1)] {
            let q = random([b, h, n, d], 1.5);
            let (k, v) = (
                cache_k.clone().narrow(2, 0, m),
                cache_v.clone().narrow(2, 0, m),
            );
            let got = run(q.clone(), k.clone(), v.clone(), true);
            let want = reference(q.clone(), k.clone(), v.clone(), true);
            assert!(rel_l2(got.clone(), want) < 1e-6, "n {n}, m {m}");
            if m > 1 {
                let without_mask = reference(q, k, v, false);
                let apart = rel_l2(got, without_mask);
                assert!(
                    n == 1 || apart > 0.01,
                    "the mask changed nothing (n {n}, m {m})"
                );
            }
        }
    }

    /// A decoding step (one query per head), where each task takes a kv head's whole group of
    /// query heads: batch 2, groups of 7 (Qwen2-0.5B) and 1, q a head-split view of a
    /// projection, and the heads in reverse order (a negative-stride view).
    #[test]
    fn one_query_per_head_matches_burn() {
        for (b, h, kvh, d, m) in [(2, 14, 2, 64, 45), (2, 3, 3, 16, 9), (1, 7, 1, 8, 1)] {
            let projected = random([b, 1, (h + 1) * d], 1.0);
            let q = projected
                .narrow(2, d, h * d)
                .reshape([b, 1, h, d])
                .swap_dims(1, 2);
            let (k, v) = (random([b, kvh, m, d], 1.0), random([b, kvh, m, d], 1.0));
            for causal in [false, true] {
                let got = run(q.clone(), k.clone(), v.clone(), causal);
                let want = reference(q.clone(), k.clone(), v.clone(), causal);
                assert!(rel_l2(got.clone(), want) < 1e-6, "h {h}, kvh {kvh}, m {m}");
                let swapped = q.clone().flip([1]);
                let flipped = run(swapped.clone(), k.clone(), v.clone(), causal);
                let want = reference(swapped, k.clone(), v.clone(), causal);
                assert!(rel_l2(flipped, want) < 1e-6);
            }
        }
    }

    /// A NaN among a query's visible scores makes that query's output NaN, as in PyTorch; the
    /// other queries are untouched.
    #[test]
    fn nan_reaches_only_the_rows_that_see_it() {
        let (q, v) = (random([1, 1, 4, 8], 1.0), random([1, 1, 4, 8], 1.0));
        let mut k = random([1, 1, 4, 8], 1.0)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        k[2 * 8] = f32::NAN;
        let k = T4::from_data(TensorData::new(k, [1, 1, 4, 8]), &Default::default());
        let got = run(q, k, v, true).into_data().to_vec::<f32>().unwrap();
        let nan_rows: Vec<bool> = got
            .chunks(8)
            .map(|r| r.iter().all(|x| x.is_nan()))
            .collect();
        assert_eq!(nan_rows, [false, false, true, true]);
        assert!(got[..16].iter().all(|x| x.is_finite()));
    }

    #[test]
    fn hands_back_what_it_does_not_take() {
        let (q, k) = (random([1, 2, 5, 8], 1.0), random([1, 2, 4, 8], 1.0));
        assert!(super::attention(q.clone(), k.clone(), k.clone(), true).is_err());
        assert!(super::attention(q.clone(), k.clone(), k.clone(), false).is_ok());
        let three = random([1, 3, 4, 8], 1.0);
        assert!(super::attention(q.clone(), three.clone(), three, false).is_err());
        let half = q.cast(FloatDType::F16);
        let (k, v) = (k.clone().cast(FloatDType::F16), k.cast(FloatDType::F16));
        assert!(super::attention(half, k, v, false).is_err());
    }
}
