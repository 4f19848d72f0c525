//! Products with quantized weights on flex, read straight from the packed words.
//!
//! A decoding step multiplies one row by every weight matrix once: it is bound by the bytes it
//! reads, so the weights stay packed (a quarter or an eighth of f32's bytes) and each task
//! dequantizes the words it reads in registers. With `w = s·q + b` per group and the levels
//! centred, `q = q' + c` (`c` = 8 or 128, half the range),
//! `Σ wⱼxⱼ = s·Σ q'ⱼxⱼ + (b + c·s)·Σ xⱼ`: the integers meet the input as f32 (exact), the
//! group sums of the input are computed once per row, and the products stay in f32 throughout,
//! so the result is dequantize-then-f32-product's up to rounding. Centring keeps the partial
//! sums as small as the weights' own (uncentred levels are all positive, and their sum and the
//! bias term cancel), which keeps that rounding at the reference's.
//!
//! The inner loops have AVX-512 and AVX2+FMA versions chosen at run time and a portable one;
//! integer dot-product instructions such as VNNI need the inputs rounded to integers, which
//! f32 arithmetic excludes: that is the opt-in [`super::quant_i8`]. Tasks are blocks of
//! output rows spread over rayon's threads. More than [`MATVEC_ROWS`] input rows (a prefill)
//! go through blocked dequantization: each task dequantizes a tile of weight rows into a
//! cache-sized scratch block and calls `gemm` on it for all input rows.

use std::cell::RefCell;

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, backend::Backend};
use rayon::prelude::*;

use super::{Matrix, SharedMut, contiguous, flex, on_flex, output, product};
use crate::quant::{Activations, Quantization, QuantizedMatrix, dequantize_rows};
use crate::{cast, is};

/// Input rows up to which each weight row is read once per input row (a decoding step, a
/// small batch); beyond, tiles are dequantized once for all rows.
pub const MATVEC_ROWS: usize = 4;

/// Output rows per task of the matrix–vector product.
pub(super) const ROW_BLOCK: usize = 32;

thread_local! {
    /// Each thread's dequantized tile, reused across its tasks.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `x · Wᵀ` for `x` `[…, cols]` (f32) and a quantized `W` `[rows, cols]` on flex →
/// `[…, rows]`; `x` back (`Err`) on another backend, dtype or shape.
pub fn quantized_matmul<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: &QuantizedMatrix<B>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    quantized_rows(x, &[(w, None)])
}

/// `x · [W₁ | W₂ | …]ᵀ + [b₁ | b₂ | …]` for `x` `[…, cols]` (f32) and quantized matrices
/// `Wₖ` `[rowsₖ, cols]` of one scheme, each with an optional bias `bₖ` `[rowsₖ]`, on flex →
/// `[…, Σ rowsₖ]`, the matrices' outputs side by side.
///
/// For a few input rows (up to [`MATVEC_ROWS`]: a decoding step) all the matrices' rows are one
/// parallel pass over one rounding of the input (a layer's q, k and v, or SwiGLU's gate and
/// up); more input rows (a prefill) go through dequantized tiles, one matrix per call. `x`
/// back (`Err`) on another backend, dtype or shape, for matrices of different schemes, widths
/// or activations, and for more than one matrix over more than [`MATVEC_ROWS`] input rows.
#[allow(clippy::type_complexity)]
pub fn quantized_rows<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    parts: &[(&QuantizedMatrix<B>, Option<Tensor<B, 1>>)],
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let Some((first, _)) = parts.first() else {
        return Err(x);
    };
    let (scheme, cols, activations) = (first.scheme(), first.cols(), first.activations);
    let dims = x.dims();
    let m: usize = dims[..D - 1].iter().product();
    let fits = |(w, bias): &(&QuantizedMatrix<B>, Option<Tensor<B, 1>>)| {
        let words = w.packed.val();
        w.scheme() == scheme
            && w.cols() == cols
            && w.activations == activations
            && w.scales.dtype() == DType::F32
            && w.biases.dtype() == DType::F32
            && words.dtype() == DType::U32
            && words.dims() == [w.rows(), cols / scheme.per_word()]
            && bias
                .as_ref()
                .is_none_or(|b| b.dtype() == DType::F32 && b.dims() == [w.rows()])
    };
    if !on_flex::<B>()
        || !is::<B::IntTensorPrimitive, FlexTensor>()
        || x.dtype() != DType::F32
        || dims[D - 1] != cols
        || scheme.check().is_err()
        || !parts.iter().all(fits)
        || (parts.len() > 1 && m > MATVEC_ROWS)
    {
        return Err(x);
    }
    let x = contiguous(flex(x));
    // The host arrays of each matrix, alive while the kernels read them.
    let arrays: Vec<(FlexTensor, FlexTensor, FlexTensor, Option<FlexTensor>)> = parts
        .iter()
        .map(|(w, bias)| {
            (
                contiguous(cast::<_, FlexTensor>(w.packed.val().into_primitive())),
                contiguous(flex(w.scales.val())),
                contiguous(flex(w.biases.val())),
                bias.clone().map(|b| contiguous(flex(b))),
            )
        })
        .collect();
    let groups = cols / scheme.group_size;
    let weights: Vec<Weights<'_>> = parts
        .iter()
        .zip(&arrays)
        .map(|((w, _), (packed, scales, biases, bias))| {
            let rows = w.rows();
            Weights {
                scheme,
                cols,
                rows,
                packed: &packed.storage::<u32>()[..rows * cols / scheme.per_word()],
                scales: &scales.storage::<f32>()[..rows * groups],
                biases: &biases.storage::<f32>()[..rows * groups],
                bias: bias.as_ref().map(|b| &b.storage::<f32>()[..rows]),
            }
        })
        .collect();
    let total: usize = weights.iter().map(|w| w.rows).sum();
    let input = &x.storage::<f32>()[..m * cols];
    let mut out = vec![0.0f32; m * total];
    if m <= MATVEC_ROWS && activations == Activations::Int8 {
        super::quant_i8::matvec(&weights, input, m, &mut out);
    } else if m <= MATVEC_ROWS {
        matvec(&weights, input, m, &mut out);
    } else {
        tiled(&weights[0], input, m, &mut out);
    }
    let mut shape = dims;
    shape[D - 1] = total;
    Ok(output(out, shape))
}

/// A packed matrix's host arrays.
pub(super) struct Weights<'a> {
    pub scheme: Quantization,
    pub cols: usize,
    pub rows: usize,
    pub packed: &'a [u32],
    pub scales: &'a [f32],
    pub biases: &'a [f32],
    /// Added to the products, `[rows]`.
    pub bias: Option<&'a [f32]>,
}

impl Weights<'_> {
    /// `n` rows from `r` on: their packed words, scales and biases.
    pub fn rows(&self, r: usize, n: usize) -> (&[u32], &[f32], &[f32]) {
        let words = self.cols / self.scheme.per_word();
        let groups = self.cols / self.scheme.group_size;
        (
            &self.packed[r * words..(r + n) * words],
            &self.scales[r * groups..(r + n) * groups],
            &self.biases[r * groups..(r + n) * groups],
        )
    }

    /// `product` of row `r` plus its bias.
    pub fn biased(&self, r: usize, product: f32) -> f32 {
        match self.bias {
            Some(bias) => product + bias[r],
            None => product,
        }
    }
}

/// The matrix of `parts` that output row `r` of their stack falls in, and its row there.
pub(super) fn locate<'p, 'a>(parts: &'p [Weights<'a>], mut r: usize) -> (&'p Weights<'a>, usize) {
    for w in parts {
        if r < w.rows {
            return (w, r);
        }
        r -= w.rows;
    }
    panic!("locate: row past the stack");
}

/// `out[i, r] = Σⱼ W[r, j]·x[i, j] (+ bias[r])` row by row, for a few input rows, over the
/// rows of `parts` one after another (one scheme and width).
fn matvec(parts: &[Weights<'_>], x: &[f32], m: usize, out: &mut [f32]) {
    let (scheme, cols) = (parts[0].scheme, parts[0].cols);
    let gs = scheme.group_size;
    let groups = cols / gs;
    let rows = parts.iter().map(|w| w.rows).sum();
    // Σ xⱼ per group and input row, for the biases; the inputs in the kernels' lane order.
    let sums: Vec<f32> = x.chunks_exact(gs).map(|g| g.iter().sum::<f32>()).collect();
    let (dot, order) = pick_dot(scheme, cols);
    let lanes = arrange(order, x);
    each_output(rows, m, out, |r, i| {
        let (w, r) = locate(parts, r);
        let (words, scales, biases) = w.rows(r, 1);
        let product = dot(&Row {
            words,
            scales,
            biases,
            x: &lanes[i * cols..(i + 1) * cols],
            sums: &sums[i * groups..(i + 1) * groups],
            group_size: gs,
        });
        w.biased(r, product)
    });
}

/// `out[i·rows + r] = value(r, i)` for every output row `r < rows` and input row `i < m`: the
/// output rows in parallel blocks of [`ROW_BLOCK`], each block's rows in order (a task streams
/// consecutive packed rows).
pub(super) fn each_output(
    rows: usize,
    m: usize,
    out: &mut [f32],
    value: impl Fn(usize, usize) -> f32 + Sync,
) {
    assert_eq!(out.len(), m * rows, "each_output: an output for every pair");
    let dst = SharedMut(out.as_mut_ptr());
    (0..rows.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .for_each(|block| {
            let start = block * ROW_BLOCK;
            for r in start..(start + ROW_BLOCK).min(rows) {
                for i in 0..m {
                    // SAFETY: element (i, r) is written by the task that owns row r only, inside
                    // `out` (its length checked above), which outlives the parallel loop.
                    unsafe { *dst.get().add(i * rows + r) = value(r, i) };
                }
            }
        });
}

/// One packed row against one input row (in the kernel's [`Order`]).
struct Row<'a> {
    words: &'a [u32],
    scales: &'a [f32],
    biases: &'a [f32],
    x: &'a [f32],
    /// Σ xⱼ per group.
    sums: &'a [f32],
    group_size: usize,
}

/// How a kernel wants the inputs laid out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// As they are.
    Natural,
    /// In each run of 64 (eight words of eight 4-bit values) value `j` of every word together:
    /// `x'[8j + i] = x[8i + j]`, so that one shift of eight words lines up with eight inputs.
    ByNibble,
    /// The same over runs of 128 (sixteen words): `x'[16j + i] = x[8i + j]`.
    ByNibble128,
}

fn arrange(order: Order, x: &[f32]) -> Vec<f32> {
    match order {
        Order::Natural => x.to_vec(),
        Order::ByNibble => by_nibble(x, 8),
        Order::ByNibble128 => by_nibble(x, 16),
    }
}

/// In each run of `words` words of eight 4-bit values, value `j` of every word together:
/// `x'[words·j + i] = x[8i + j]`.
fn by_nibble(x: &[f32], words: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for (src, dst) in x
        .chunks_exact(8 * words)
        .zip(out.chunks_exact_mut(8 * words))
    {
        for i in 0..words {
            for j in 0..8 {
                dst[words * j + i] = src[8 * i + j];
            }
        }
    }
    out
}

/// The same product through tiles of dequantized rows and `gemm`.
fn tiled(w: &Weights<'_>, x: &[f32], m: usize, out: &mut [f32]) {
    let cols = w.cols;
    let rows = w.rows;
    // A tile of about 256 KiB (within L2; larger ones measured no faster), a multiple of 16
    // rows.
    let tile_rows = ((256 * 1024 / 4 / cols) / 16 * 16).clamp(16, 256);
    let dst = SharedMut(out.as_mut_ptr());
    let tiles = rows.div_ceil(tile_rows);
    (0..tiles).into_par_iter().for_each(|t| {
        let start = t * tile_rows;
        let n = tile_rows.min(rows - start);
        TILE.with_borrow_mut(|tile| {
            tile.resize(n * cols, 0.0);
            let (packed, scales, biases) = w.rows(start, n);
            dequantize_tile(w.scheme, packed, scales, biases, tile);
            // SAFETY: columns start..start + n of every output row belong to this task; the
            // operands are the live slices above (x: m × cols, the tile: n × cols read as its
            // transpose).
            unsafe {
                product(
                    [m, n, cols],
                    dst.get().add(start),
                    rows,
                    Matrix::rows(x.as_ptr(), cols),
                    Matrix::rows(tile.as_ptr(), cols).transposed(),
                    1.0,
                    None,
                );
            }
        });
    });
    if w.bias.is_some() {
        for row in out.chunks_exact_mut(rows) {
            for (r, y) in row.iter_mut().enumerate() {
                *y = w.biased(r, *y);
            }
        }
    }
}

/// [`dequantize_rows`] with AVX2 where the CPU has it (the same two roundings per value:
/// `q·s`, then `+ b`).
fn dequantize_tile(
    scheme: Quantization,
    packed: &[u32],
    scales: &[f32],
    biases: &[f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && scheme.group_size.is_multiple_of(8) {
        // SAFETY: the CPU has AVX2; whole groups of a multiple of 8 values.
        unsafe { avx2::dequantize(scheme, packed, scales, biases, out) };
        return;
    }
    dequantize_rows(scheme, packed, scales, biases, out);
}

/// `Σ_g scale_g · Σ_{j in g} q_j·x_j + bias_g · Σ_{j in g} x_j` over one packed row.
type Dot = fn(&Row<'_>) -> f32;

/// The kernel for `scheme` over rows of `cols` values: the widest this CPU runs.
fn pick_dot(scheme: Quantization, cols: usize) -> (Dot, Order) {
    dots(scheme, cols)[0]
}

/// Every kernel this CPU can run for `scheme` over rows of `cols` values, widest first; the
/// portable one last.
fn dots(scheme: Quantization, cols: usize) -> Vec<(Dot, Order)> {
    let mut kernels: Vec<(Dot, Order)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw");
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        let gs = scheme.group_size;
        match scheme.bits {
            4 => {
                if avx512 && gs.is_multiple_of(64) && cols.is_multiple_of(128) {
                    // SAFETY: the CPU has AVX-512F/BW (checked above); groups of a multiple
                    // of 64 in rows of a multiple of 128.
                    kernels.push((|row| unsafe { avx512::dot_q4(row) }, Order::ByNibble128));
                }
                if avx2 && gs.is_multiple_of(64) {
                    // SAFETY: the CPU has AVX2 and FMA; groups of a multiple of 64.
                    kernels.push((|row| unsafe { avx2::dot_q4(row) }, Order::ByNibble));
                }
            }
            _ => {
                if avx512 && gs.is_multiple_of(64) {
                    // SAFETY: the CPU has AVX-512F/BW; groups of a multiple of 64.
                    kernels.push((|row| unsafe { avx512::dot_q8(row) }, Order::Natural));
                }
                if avx2 {
                    // SAFETY: the CPU has AVX2 and FMA; groups of a multiple of 32.
                    kernels.push((|row| unsafe { avx2::dot_q8(row) }, Order::Natural));
                }
            }
        }
    }
    let _ = cols;
    kernels.push(match scheme.bits {
        4 => (portable::dot::<4>, Order::Natural),
        _ => (portable::dot::<8>, Order::Natural),
    });
    kernels
}

mod portable {
    use super::Row;

    /// Eight partial sums per group, which the compiler keeps in vector registers.
    pub fn dot<const BITS: usize>(row: &Row<'_>) -> f32 {
        let gs = row.group_size;
        let per = 32 / BITS;
        let mask = (1u32 << BITS) - 1;
        let centre = (1u32 << (BITS - 1)) as f32;
        let mut total = 0.0f32;
        let mut biased = 0.0f32;
        for (g, (&scale, &bias)) in row.scales.iter().zip(row.biases).enumerate() {
            let words = &row.words[g * gs / per..(g + 1) * gs / per];
            let xs = &row.x[g * gs..(g + 1) * gs];
            let mut acc = [0.0f32; 8];
            for (k, (&word, xs)) in words.iter().zip(xs.chunks_exact(per)).enumerate() {
                for (j, &x) in xs.iter().enumerate() {
                    let q = ((word >> (j * BITS)) & mask) as i32 - centre as i32;
                    acc[(k * per + j) % 8] += q as f32 * x;
                }
            }
            total += scale * acc.iter().sum::<f32>();
            biased += (bias + centre * scale) * row.sums[g];
        }
        total + biased
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    use super::Row;

    /// Horizontal sum of eight lanes.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::flex) fn sum(v: __m256) -> f32 {
        let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
    }

    /// Whole groups dequantized eight values at a time.
    ///
    /// # Safety
    /// The CPU has AVX2; `out` holds whole groups of a multiple of 8 values and `packed`,
    /// `scales`, `biases` the words, scales and biases of those groups.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dequantize(
        scheme: crate::quant::Quantization,
        packed: &[u32],
        scales: &[f32],
        biases: &[f32],
        out: &mut [f32],
    ) {
        let gs = scheme.group_size;
        let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
        let nibble = _mm256_set1_epi32(15);
        let bytes = packed.as_ptr() as *const u8;
        for (g, values) in out.chunks_exact_mut(gs).enumerate() {
            let (s, b) = (_mm256_set1_ps(scales[g]), _mm256_set1_ps(biases[g]));
            for (k, eight) in values.chunks_exact_mut(8).enumerate() {
                let at = g * gs + 8 * k;
                // SAFETY: value `at` .. + 8 is in `packed` (one word at 4 bits, two at 8).
                let q = unsafe {
                    match scheme.bits {
                        4 => _mm256_and_si256(
                            _mm256_srlv_epi32(
                                _mm256_set1_epi32(*packed.get_unchecked(at / 8) as i32),
                                shifts,
                            ),
                            nibble,
                        ),
                        _ => _mm256_cvtepu8_epi32(_mm_loadl_epi64(bytes.add(at) as *const __m128i)),
                    }
                };
                let v = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q), s), b);
                // SAFETY: eight values in the chunk.
                unsafe { _mm256_storeu_ps(eight.as_mut_ptr(), v) };
            }
        }
    }

    /// `Σ_g (bias_g + centre·scale_g) · sums_g`, eight groups at a time.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::flex) fn biased(
        biases: &[f32],
        scales: &[f32],
        sums: &[f32],
        centre: f32,
    ) -> f32 {
        let c = _mm256_set1_ps(centre);
        let mut acc = _mm256_setzero_ps();
        let mut tail = 0.0f32;
        let n = biases.len().min(scales.len()).min(sums.len());
        let whole = n / 8 * 8;
        for g in (0..whole).step_by(8) {
            // SAFETY: eight values from g in each slice (g + 8 ≤ whole ≤ each length).
            let (b, s, x) = unsafe {
                (
                    _mm256_loadu_ps(biases.as_ptr().add(g)),
                    _mm256_loadu_ps(scales.as_ptr().add(g)),
                    _mm256_loadu_ps(sums.as_ptr().add(g)),
                )
            };
            acc = _mm256_fmadd_ps(_mm256_fmadd_ps(c, s, b), x, acc);
        }
        for g in whole..n {
            tail += centre.mul_add(scales[g], biases[g]) * sums[g];
        }
        sum(acc) + tail
    }

    /// 4-bit: eight words (64 values) in one register; value `j` of all eight is one shift
    /// pair away, against eight inputs in [`super::Order::ByNibble`] order. The words are
    /// XORed with 8 per nibble first, so that a nibble sign-extended is `q − 8`. Four
    /// accumulators per group, so that no chain of dependent additions sets the pace; the
    /// running total is one register (an array of totals indexed by group lives on the stack:
    /// a store-to-load round trip per group).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the row's slices hold whole groups of a multiple of 64.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q4(row: &Row<'_>) -> f32 {
        const CENTRE: f32 = 8.0;
        let gs = row.group_size;
        let flip = _mm256_set1_epi32(0x8888_8888_u32 as i32);
        let mut total = _mm256_setzero_ps();
        for (g, &scale) in row.scales.iter().enumerate() {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut k = 0;
            while k < gs {
                // SAFETY: words (g·gs + k)/8 .. + 8 and inputs g·gs + k .. + 64 lie in the row
                // (k < gs, gs a multiple of 64).
                unsafe {
                    let v = _mm256_loadu_si256(
                        row.words.as_ptr().add((g * gs + k) / 8) as *const __m256i
                    );
                    let v = _mm256_xor_si256(v, flip);
                    let xs = row.x.as_ptr().add(g * gs + k);
                    macro_rules! nibble {
                        ($j:literal) => {
                            _mm256_cvtepi32_ps(_mm256_srai_epi32(
                                _mm256_slli_epi32(v, 28 - 4 * $j),
                                28,
                            ))
                        };
                    }
                    acc[0] = _mm256_fmadd_ps(nibble!(0), _mm256_loadu_ps(xs), acc[0]);
                    acc[1] = _mm256_fmadd_ps(nibble!(1), _mm256_loadu_ps(xs.add(8)), acc[1]);
                    acc[2] = _mm256_fmadd_ps(nibble!(2), _mm256_loadu_ps(xs.add(16)), acc[2]);
                    acc[3] = _mm256_fmadd_ps(nibble!(3), _mm256_loadu_ps(xs.add(24)), acc[3]);
                    acc[0] = _mm256_fmadd_ps(nibble!(4), _mm256_loadu_ps(xs.add(32)), acc[0]);
                    acc[1] = _mm256_fmadd_ps(nibble!(5), _mm256_loadu_ps(xs.add(40)), acc[1]);
                    acc[2] = _mm256_fmadd_ps(nibble!(6), _mm256_loadu_ps(xs.add(48)), acc[2]);
                    acc[3] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(_mm256_srai_epi32(v, 28)),
                        _mm256_loadu_ps(xs.add(56)),
                        acc[3],
                    );
                }
                k += 64;
            }
            let group = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            total = _mm256_fmadd_ps(group, _mm256_set1_ps(scale), total);
        }
        sum(total) + biased(row.biases, row.scales, row.sums, CENTRE)
    }

    /// 8-bit: eight bytes widened to eight lanes at a time, 32 values per step.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the row's slices hold whole groups of a multiple of 32.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q8(row: &Row<'_>) -> f32 {
        const CENTRE: f32 = 128.0;
        let gs = row.group_size;
        let bytes = row.words.as_ptr() as *const u8;
        let mut total = _mm256_setzero_ps();
        for (g, &scale) in row.scales.iter().enumerate() {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut k = 0;
            while k < gs {
                // SAFETY: bytes and inputs g·gs + k .. + 32 lie in the row (gs a multiple of 32).
                unsafe {
                    let b = bytes.add(g * gs + k);
                    let xs = row.x.as_ptr().add(g * gs + k);
                    // q − 128 = (q XOR 0x80) read as a signed byte.
                    let flip = _mm_set1_epi8(-128);
                    let lo = _mm_xor_si128(_mm_loadu_si128(b as *const __m128i), flip);
                    let hi = _mm_xor_si128(_mm_loadu_si128(b.add(16) as *const __m128i), flip);
                    let parts = [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)];
                    for (lane, (a, q)) in acc.iter_mut().zip(parts).enumerate() {
                        let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                        *a = _mm256_fmadd_ps(q, _mm256_loadu_ps(xs.add(8 * lane)), *a);
                    }
                }
                k += 32;
            }
            let group = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            total = _mm256_fmadd_ps(group, _mm256_set1_ps(scale), total);
        }
        sum(total) + biased(row.biases, row.scales, row.sums, CENTRE)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Row;

    /// 4-bit: sixteen words (128 values, two groups of 64) in one register, value `j` of all
    /// sixteen one shift pair away against sixteen inputs in [`super::Order::ByNibble128`]
    /// order; each half of the register is scaled by its own group's scale. As the AVX2
    /// kernel otherwise (centred levels, the bias term apart).
    ///
    /// # Safety
    /// The CPU has AVX-512F; the row's groups are a multiple of 64 values and the row a
    /// multiple of 128.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub(super) unsafe fn dot_q4(row: &Row<'_>) -> f32 {
        const CENTRE: f32 = 8.0;
        let gs = row.group_size;
        let flip = _mm512_set1_epi32(0x8888_8888_u32 as i32);
        let mut total = _mm512_setzero_ps();
        let mut k = 0;
        while k < row.x.len() {
            let (lo, hi) = (row.scales[k / gs], row.scales[(k + 64) / gs]);
            let scale = _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(lo), _mm512_set1_ps(hi));
            // SAFETY: words k/8 .. + 16 and inputs k .. + 128 lie in the row (the row is a
            // multiple of 128 values, k one of them).
            let chunk = unsafe {
                let v = _mm512_xor_si512(
                    _mm512_loadu_si512(row.words.as_ptr().add(k / 8) as *const __m512i),
                    flip,
                );
                let xs = row.x.as_ptr().add(k);
                macro_rules! nibble {
                    ($j:literal) => {
                        _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(v, 28 - 4 * $j), 28))
                    };
                }
                let a0 = _mm512_mul_ps(nibble!(0), _mm512_loadu_ps(xs));
                let a1 = _mm512_mul_ps(nibble!(1), _mm512_loadu_ps(xs.add(16)));
                let a2 = _mm512_mul_ps(nibble!(2), _mm512_loadu_ps(xs.add(32)));
                let a3 = _mm512_mul_ps(nibble!(3), _mm512_loadu_ps(xs.add(48)));
                let a0 = _mm512_fmadd_ps(nibble!(4), _mm512_loadu_ps(xs.add(64)), a0);
                let a1 = _mm512_fmadd_ps(nibble!(5), _mm512_loadu_ps(xs.add(80)), a1);
                let a2 = _mm512_fmadd_ps(nibble!(6), _mm512_loadu_ps(xs.add(96)), a2);
                let a3 = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(_mm512_srai_epi32(v, 28)),
                    _mm512_loadu_ps(xs.add(112)),
                    a3,
                );
                _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))
            };
            total = _mm512_fmadd_ps(chunk, scale, total);
            k += 128;
        }
        _mm512_reduce_add_ps(total) + super::avx2::biased(row.biases, row.scales, row.sums, CENTRE)
    }

    /// 8-bit: sixteen bytes widened to sixteen lanes at a time, 64 values per step.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW; the row's groups are a multiple of 64 values.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    pub(super) unsafe fn dot_q8(row: &Row<'_>) -> f32 {
        const CENTRE: f32 = 128.0;
        let gs = row.group_size;
        let bytes = row.words.as_ptr() as *const u8;
        // q − 128 = (q XOR 0x80) read as a signed byte.
        let flip = _mm_set1_epi8(-128);
        let mut total = _mm512_setzero_ps();
        for (g, &scale) in row.scales.iter().enumerate() {
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut k = 0;
            while k < gs {
                // SAFETY: bytes and inputs g·gs + k .. + 64 lie in the row (gs a multiple of
                // 64).
                unsafe {
                    let b = bytes.add(g * gs + k);
                    let xs = row.x.as_ptr().add(g * gs + k);
                    for (lane, a) in acc.iter_mut().enumerate() {
                        let q = _mm_xor_si128(
                            _mm_loadu_si128(b.add(16 * lane) as *const __m128i),
                            flip,
                        );
                        let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
                        *a = _mm512_fmadd_ps(q, _mm512_loadu_ps(xs.add(16 * lane)), *a);
                    }
                }
                k += 64;
            }
            let group = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
            total = _mm512_fmadd_ps(group, _mm512_set1_ps(scale), total);
        }
        _mm512_reduce_add_ps(total) + super::avx2::biased(row.biases, row.scales, row.sums, CENTRE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{ScaleType, quantize};

    /// Every kernel this CPU can run (the portable one always) against the dequantized row's
    /// dot product in f64, for both widths and every group size, on rows whose groups have
    /// their edge below and above zero.
    #[test]
    fn dot_kernels_equal_the_dequantized_dot() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        for (bits, group_size) in [(4, 32), (4, 64), (4, 128), (8, 32), (8, 64), (8, 128)] {
            let scheme = Quantization { bits, group_size };
            let cols = 4 * 128;
            let w: Vec<f32> = (0..cols)
                .map(|i| next() + if i % 200 < 64 { 0.7 } else { -0.2 })
                .collect();
            let x: Vec<f32> = (0..cols).map(|_| next()).collect();
            let q = quantize(&w, 1, cols, scheme, ScaleType::F32);
            let want: f64 = q
                .dequantize()
                .iter()
                .zip(&x)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            let sums: Vec<f32> = x.chunks_exact(group_size).map(|g| g.iter().sum()).collect();
            for (dot, order) in dots(scheme, cols) {
                let lanes = arrange(order, &x);
                let row = Row {
                    words: &q.packed,
                    scales: &q.scales,
                    biases: &q.biases,
                    x: &lanes,
                    sums: &sums,
                    group_size,
                };
                let got = dot(&row) as f64;
                let scale: f64 = q
                    .dequantize()
                    .iter()
                    .zip(&x)
                    .map(|(&a, &b)| (a * b).abs() as f64)
                    .sum();
                assert!(
                    (got - want).abs() <= 1e-6 * scale,
                    "q{bits}g{group_size}: {got} vs {want}"
                );
            }
        }
    }
}
