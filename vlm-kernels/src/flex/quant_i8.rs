//! Quantized matrix–vector products with the activations rounded to int8
//! ([`Activations::Int8`](crate::quant::Activations::Int8)).
//!
//! The f32 kernels ([`super::quant`]) turn every weight's integer into a float before the
//! multiply: at 4 bits that conversion, not memory, sets the pace of a decoding step. Here the
//! input row is rounded once per call to int8 in blocks of 32 values (`x ≈ d·x̂`, `d` =
//! max|x|/127, as llama.cpp rounds the activations of its quantized types), and the weights'
//! levels meet `x̂` in integer dot products: AVX-512 VNNI's `vpdpbusd` multiplies 64 unsigned
//! levels by 64 signed inputs and adds them in fours into 16 lanes in one instruction; AVX2's
//! `vpmaddubsw` + `vpmaddwd` do it in two. Each lane ends up holding one packed word's exact
//! integer sum `Σ (q − c)·x̂` (levels centred, `c` = 8 or 128), which meets its word's `d·s` in
//! f32. As in the f32 kernels, `Σ wⱼxⱼ = s·Σ (q − c)xⱼ + (b + c·s)·Σ xⱼ` per group, and the group
//! sums of `x` stay exact f32: only the rounding of `x` in the first term departs from the
//! exact product.

use super::quant::{Weights, each_output, locate};
use crate::quant::Quantization;

/// Inputs per int8 scale.
const BLOCK: usize = 32;

/// One input row rounded for the integer kernels.
struct Rounded {
    /// `[cols]` int8 levels, in the kernel's [`Order`].
    q: Vec<i8>,
    /// Per packed word: the scale `d` of the block its inputs fall in.
    d: Vec<f32>,
    /// Per packed word: `c·Σ x̂` over its inputs, what turns `Σ q·x̂` (unsigned levels, as
    /// `vpdpbusd` takes them) into `Σ (q − c)·x̂`.
    corr: Vec<i32>,
    /// `Σ x` per group, exact.
    sums: Vec<f32>,
}

/// How a kernel wants the int8 inputs laid out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Order {
    /// As they are.
    Natural,
    /// In each run of `n` inputs (n/8 words of 4-bit levels) the even ones, then the odd ones:
    /// byte `b` of a register of words holds levels `2b` (low nibble) and `2b + 1` (high),
    /// so the low nibbles meet `x̂[2b]` and the high ones `x̂[2b + 1]`.
    Split(usize),
}

/// `v` (|v| < 2²²) rounded to the nearest integer, ties to even, as `_mm256_round_ps` rounds
/// llama.cpp's activations: adding and taking away 1.5·2²³ leaves no fraction bits (plain
/// arithmetic, so the loop around it vectorises, where `f32::round` is a libm call per value).
fn nearest(v: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (v + SHIFT) - SHIFT
}

/// `x` `[cols]` rounded per block of [`BLOCK`] and laid out for a kernel over `scheme`.
fn round(x: &[f32], scheme: Quantization, order: Order) -> Rounded {
    let per = scheme.per_word();
    let centre = 1i32 << (scheme.bits - 1);
    let mut natural = vec![0i8; x.len()];
    let mut scales = Vec::with_capacity(x.len() / BLOCK);
    for (block, q) in x.chunks_exact(BLOCK).zip(natural.chunks_exact_mut(BLOCK)) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        for (q, &v) in q.iter_mut().zip(block) {
            *q = nearest(v * inv).clamp(-127.0, 127.0) as i8;
        }
        scales.push(d);
    }
    let words = x.len() / per;
    let d = (0..words).map(|w| scales[w * per / BLOCK]).collect();
    let corr = natural
        .chunks_exact(per)
        .map(|q| centre * q.iter().map(|&v| v as i32).sum::<i32>())
        .collect();
    let sums = x
        .chunks_exact(scheme.group_size)
        .map(|g| g.iter().sum())
        .collect();
    let q = match order {
        Order::Natural => natural,
        Order::Split(n) => {
            let mut out = vec![0i8; x.len()];
            for (src, dst) in natural.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
                for b in 0..n / 2 {
                    dst[b] = src[2 * b];
                    dst[n / 2 + b] = src[2 * b + 1];
                }
            }
            out
        }
    };
    Rounded { q, d, corr, sums }
}

/// One packed row against one rounded input row.
struct Row<'a> {
    words: &'a [u32],
    scales: &'a [f32],
    biases: &'a [f32],
    q: &'a [i8],
    d: &'a [f32],
    corr: &'a [i32],
    sums: &'a [f32],
    group_size: usize,
    /// Which of a chunk's groups each lane of a kernel's register belongs to.
    lanes: &'a Lanes,
}

impl Row<'_> {
    /// `Σ_g (b_g + c·s_g)·Σ_{j in g} x_j`: the biases, and the centring of the levels.
    fn biased(&self, centre: f32) -> f32 {
        let mut total = 0.0f32;
        for ((&s, &b), &x) in self.scales.iter().zip(self.biases).zip(self.sums) {
            total += centre.mul_add(s, b) * x;
        }
        total
    }
}

/// Lane `l` of a kernel's register (one packed word each) belongs to group `idx[l]` counted
/// from its chunk's first, and a chunk spans `count` groups (one where a group is larger than
/// the chunk): the same for every chunk and row, so worked out once per product.
struct Lanes {
    idx: [i32; 16],
    count: usize,
}

impl Lanes {
    /// For chunks of `chunk` values, `per` values a word, groups of `group_size`.
    fn new(per: usize, group_size: usize, chunk: usize) -> Self {
        let mut idx = [0i32; 16];
        for (l, i) in idx.iter_mut().enumerate() {
            *i = ((per * l) / group_size) as i32;
        }
        Self {
            idx,
            count: (chunk / group_size).max(1),
        }
    }
}

type Dot = fn(&Row<'_>) -> f32;

/// A kernel, the input order it reads and the values it takes a step.
type Kernel = (Dot, Order, usize);

/// Every integer kernel this CPU runs for `scheme` over rows of `cols` values, widest first;
/// the portable one last.
fn dots(scheme: Quantization, cols: usize) -> Vec<Kernel> {
    let mut kernels: Vec<Kernel> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni");
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        match scheme.bits {
            4 => {
                if vnni && cols.is_multiple_of(128) {
                    // SAFETY: the CPU has AVX-512F/BW/VNNI; rows of whole 128-value chunks,
                    // groups of 32, 64 or 128 (each chunk whole groups).
                    kernels.push((|row| unsafe { vnni::dot_q4(row) }, Order::Split(128), 128));
                }
                if avx2 && cols.is_multiple_of(64) {
                    // SAFETY: the CPU has AVX2 and FMA; rows of whole 64-value chunks.
                    kernels.push((|row| unsafe { avx2::dot_q4(row) }, Order::Split(64), 64));
                }
            }
            _ => {
                if vnni && cols.is_multiple_of(64) {
                    // SAFETY: the CPU has AVX-512F/BW/VNNI; rows of whole 64-value chunks.
                    kernels.push((|row| unsafe { vnni::dot_q8(row) }, Order::Natural, 64));
                }
                if avx2 {
                    // SAFETY: the CPU has AVX2 and FMA; groups of at least 32.
                    kernels.push((|row| unsafe { avx2::dot_q8(row) }, Order::Natural, 32));
                }
            }
        }
    }
    let _ = cols;
    kernels.push(match scheme.bits {
        4 => (portable::dot::<4>, Order::Natural, 8),
        _ => (portable::dot::<8>, Order::Natural, 4),
    });
    kernels
}

/// `out[i, r] = Σⱼ W[r, j]·x[i, j] (+ bias[r])` with each input row rounded to int8 once for
/// the rows of all of `parts` (one scheme and width), one after another.
pub(super) fn matvec(parts: &[Weights<'_>], x: &[f32], m: usize, out: &mut [f32]) {
    let (scheme, cols) = (parts[0].scheme, parts[0].cols);
    let gs = scheme.group_size;
    let rows = parts.iter().map(|w| w.rows).sum();
    let (dot, order, chunk) = dots(scheme, cols)[0];
    let lanes = Lanes::new(scheme.per_word(), gs, chunk);
    let inputs: Vec<Rounded> = x
        .chunks_exact(cols)
        .take(m)
        .map(|x| round(x, scheme, order))
        .collect();
    each_output(rows, m, out, |r, i| {
        let (w, r) = locate(parts, r);
        let input = &inputs[i];
        let (words, scales, biases) = w.rows(r, 1);
        let product = dot(&Row {
            words,
            scales,
            biases,
            q: &input.q,
            d: &input.d,
            corr: &input.corr,
            sums: &input.sums,
            group_size: gs,
            lanes: &lanes,
        });
        w.biased(r, product)
    });
}

mod portable {
    use super::Row;

    /// One word at a time: its integer sum, then `d·s` in f32.
    pub fn dot<const BITS: usize>(row: &Row<'_>) -> f32 {
        let per = 32 / BITS;
        let mask = (1u32 << BITS) - 1;
        let centre = 1i32 << (BITS - 1);
        let mut total = 0.0f32;
        for (w, &word) in row.words.iter().enumerate() {
            let q = &row.q[w * per..(w + 1) * per];
            let sum: i32 = (0..per)
                .map(|j| (((word >> (j * BITS)) & mask) as i32 - centre) * q[j] as i32)
                .sum();
            let scale = row.scales[w * per / row.group_size];
            total = (sum as f32).mul_add(row.d[w] * scale, total);
        }
        total + row.biased(centre as f32)
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::Row;

    /// Bytes ahead of the current chunk that each step asks the cache for: rows are short
    /// (896 values at 4 bits: 448 bytes) and a task's rows lie one after another, so the
    /// stream runs on into the next row; the hardware prefetcher alone stops at every page.
    const AHEAD: usize = 1024;

    /// The scales of a chunk's groups, one per lane: `mask`'s scales from `first`, spread by
    /// `idx`.
    #[target_feature(enable = "avx512f")]
    unsafe fn lane_scales(first: *const f32, mask: u16, idx: __m512i) -> __m512 {
        // SAFETY: the caller's masked scales from `first` lie in the row.
        _mm512_permutexvar_ps(idx, unsafe { _mm512_maskz_loadu_ps(mask, first) })
    }

    /// `Σ_g (b_g + c·s_g)·Σ_{j in g} x_j`, sixteen groups at a time.
    #[target_feature(enable = "avx512f")]
    fn biased(row: &Row<'_>, centre: f32) -> f32 {
        let n = row.scales.len();
        let c = _mm512_set1_ps(centre);
        let mut acc = _mm512_setzero_ps();
        let mut g = 0;
        while g < n {
            let mask = if n - g >= 16 {
                u16::MAX
            } else {
                ((1u32 << (n - g)) - 1) as u16
            };
            // SAFETY: the masked lanes from g lie in each slice (scales, biases and sums have
            // one value per group).
            unsafe {
                let s = _mm512_maskz_loadu_ps(mask, row.scales.as_ptr().add(g));
                let b = _mm512_maskz_loadu_ps(mask, row.biases.as_ptr().add(g));
                let x = _mm512_maskz_loadu_ps(mask, row.sums.as_ptr().add(g));
                acc = _mm512_fmadd_ps(_mm512_fmadd_ps(c, s, b), x, acc);
            }
            g += 16;
        }
        _mm512_reduce_add_ps(acc)
    }

    /// `Σ_lanes (sum − corr)·(d·s)` over the row in chunks of `step` values (`per` to a word):
    /// `sums(k, w)` gives the chunk from value `k` (word `w`) as uncentred integer sums, one
    /// lane per word; the centring, the scales and the prefetch are the same for both widths.
    /// Two running totals, so that consecutive chunks do not wait on each other's add.
    ///
    /// # Safety
    /// The row is whole chunks, its groups 32, 64 or 128 values, and `sums` reads only words
    /// `w .. + 16` and inputs `k .. + step`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn total(
        row: &Row<'_>,
        per: usize,
        step: usize,
        sums: impl Fn(usize, usize) -> __m512i,
    ) -> f32 {
        let gs = row.group_size;
        // SAFETY: 16 i32 from a 16-element array.
        let idx = unsafe { _mm512_loadu_si512(row.lanes.idx.as_ptr() as *const __m512i) };
        let mask = ((1u32 << row.lanes.count) - 1) as u16;
        let chunk = |k: usize| {
            let w = k / per;
            let ahead = row.words.as_ptr().wrapping_add(w).wrapping_byte_add(AHEAD);
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            // SAFETY: the chunk's 16 words' corr and d from w, and the masked scales from k/gs,
            // lie in the row (whole chunks; a chunk holds whole groups or lies in one).
            unsafe {
                let acc = _mm512_sub_epi32(
                    sums(k, w),
                    _mm512_loadu_si512(row.corr.as_ptr().add(w) as *const __m512i),
                );
                let s = lane_scales(row.scales.as_ptr().add(k / gs), mask, idx);
                let ds = _mm512_mul_ps(_mm512_loadu_ps(row.d.as_ptr().add(w)), s);
                (_mm512_cvtepi32_ps(acc), ds)
            }
        };
        let n = row.q.len();
        let (mut t0, mut t1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut k = 0;
        while k + 2 * step <= n {
            let (a, da) = chunk(k);
            let (b, db) = chunk(k + step);
            t0 = _mm512_fmadd_ps(a, da, t0);
            t1 = _mm512_fmadd_ps(b, db, t1);
            k += 2 * step;
        }
        if k < n {
            let (a, da) = chunk(k);
            t0 = _mm512_fmadd_ps(a, da, t0);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(t0, t1))
    }

    /// 4-bit: sixteen words (128 levels) a step; the low nibbles against the even inputs and
    /// the high ones against the odd ([`super::Order::Split`]`(128)`), both into the same 16
    /// lanes, one per word.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VNNI; the row is whole 128-value chunks and its groups 32, 64
    /// or 128 values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_q4(row: &Row<'_>) -> f32 {
        let low = _mm512_set1_epi8(0x0f);
        let sums = |k: usize, w: usize| {
            // SAFETY: words w .. + 16 and inputs k .. + 128 lie in the row (whole chunks).
            unsafe {
                let v = _mm512_loadu_si512(row.words.as_ptr().add(w) as *const __m512i);
                let lo = _mm512_and_si512(v, low);
                let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                let xe = _mm512_loadu_si512(row.q.as_ptr().add(k) as *const __m512i);
                let xo = _mm512_loadu_si512(row.q.as_ptr().add(k + 64) as *const __m512i);
                let acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xe);
                _mm512_dpbusd_epi32(acc, hi, xo)
            }
        };
        // SAFETY: as this function's own contract; `sums` reads within its chunk.
        unsafe { total(row, 8, 128, sums) + biased(row, 8.0) }
    }

    /// 8-bit: sixteen words (64 levels) a step, one lane per word.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BW/VNNI; the row is whole 64-value chunks and its groups 32, 64 or
    /// 128 values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_q8(row: &Row<'_>) -> f32 {
        let sums = |k: usize, w: usize| {
            // SAFETY: words w .. + 16 and inputs k .. + 64 lie in the row (whole chunks).
            unsafe {
                let v = _mm512_loadu_si512(row.words.as_ptr().add(w) as *const __m512i);
                let x = _mm512_loadu_si512(row.q.as_ptr().add(k) as *const __m512i);
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), v, x)
            }
        };
        // SAFETY: as this function's own contract; `sums` reads within its chunk.
        unsafe { total(row, 4, 64, sums) + biased(row, 128.0) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Row;
    use crate::flex::quant::avx2::{biased as biased_slices, sum};

    #[target_feature(enable = "avx2,fma")]
    fn biased(row: &Row<'_>, centre: f32) -> f32 {
        biased_slices(row.biases, row.scales, row.sums, centre)
    }

    /// 4-bit: eight words (64 levels) a step against [`super::Order::Split`]`(64)` inputs;
    /// `vpmaddubsw` pairs levels (at most 15) with inputs into 16-bit sums far from
    /// saturation, `vpmaddwd` by ones widens them into one lane per word.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the row is whole 64-value chunks and its groups 32, 64 or 128
    /// values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q4(row: &Row<'_>) -> f32 {
        let gs = row.group_size;
        // SAFETY: 8 i32 from a 16-element array.
        let idx = unsafe { _mm256_loadu_si256(row.lanes.idx.as_ptr() as *const __m256i) };
        let mask = _mm256_setr_epi32(
            -1,
            if row.lanes.count > 1 { -1 } else { 0 },
            0,
            0,
            0,
            0,
            0,
            0,
        );
        let low = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut total = _mm256_setzero_ps();
        let mut k = 0;
        while k < row.q.len() {
            let w = k / 8;
            // SAFETY: words w .. + 8, inputs k .. + 64, their d and corr, and `count` (one or
            // two) scales from k/gs lie in the row.
            unsafe {
                let v = _mm256_loadu_si256(row.words.as_ptr().add(w) as *const __m256i);
                let lo = _mm256_and_si256(v, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                let xe = _mm256_loadu_si256(row.q.as_ptr().add(k) as *const __m256i);
                let xo = _mm256_loadu_si256(row.q.as_ptr().add(k + 32) as *const __m256i);
                let pairs =
                    _mm256_add_epi16(_mm256_maddubs_epi16(lo, xe), _mm256_maddubs_epi16(hi, xo));
                let acc = _mm256_sub_epi32(
                    _mm256_madd_epi16(pairs, ones),
                    _mm256_loadu_si256(row.corr.as_ptr().add(w) as *const __m256i),
                );
                let s = _mm256_permutevar8x32_ps(
                    _mm256_maskload_ps(row.scales.as_ptr().add(k / gs), mask),
                    idx,
                );
                let ds = _mm256_mul_ps(_mm256_loadu_ps(row.d.as_ptr().add(w)), s);
                total = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), ds, total);
            }
            k += 64;
        }
        sum(total) + biased(row, 8.0)
    }

    /// 8-bit: eight words (32 levels) a step. `vpmaddubsw` on unsigned levels up to 255 would
    /// saturate, so the levels are centred first (`q − 128`, a signed byte) and multiplied as
    /// `|q − 128| · (x̂ with q − 128's sign)`, at most 2·128·127 per pair; no correction after.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the row's groups are at least 32 values (a step within one).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q8(row: &Row<'_>) -> f32 {
        let gs = row.group_size;
        let flip = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let mut total = _mm256_setzero_ps();
        let mut k = 0;
        while k < row.q.len() {
            let w = k / 4;
            // SAFETY: words w .. + 8, inputs k .. + 32 and their d lie in the row; k/gs is a
            // group of it.
            unsafe {
                let c = _mm256_xor_si256(
                    _mm256_loadu_si256(row.words.as_ptr().add(w) as *const __m256i),
                    flip,
                );
                let x = _mm256_loadu_si256(row.q.as_ptr().add(k) as *const __m256i);
                let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(c), _mm256_sign_epi8(x, c));
                let acc = _mm256_madd_epi16(pairs, ones);
                let s = _mm256_set1_ps(*row.scales.get_unchecked(k / gs));
                let ds = _mm256_mul_ps(_mm256_loadu_ps(row.d.as_ptr().add(w)), s);
                total = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), ds, total);
            }
            k += 32;
        }
        sum(total) + biased(row, 128.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{ScaleType, quantize};

    fn noise(seed: u64) -> impl FnMut() -> f32 {
        let mut state = seed;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    /// Every integer kernel this CPU runs (the portable one always) against the same rounding
    /// of the input worked out in f64, for both widths and every group size; and the rounded
    /// product near the exact one (the rounding of x is all that parts them).
    #[test]
    fn integer_kernels_equal_the_rounded_dot() {
        let mut next = noise(0x9e37_79b9_7f4a_7c15);
        for (bits, group_size) in [(4, 32), (4, 64), (4, 128), (8, 32), (8, 64), (8, 128)] {
            let scheme = Quantization { bits, group_size };
            let cols = 6 * 128;
            let w: Vec<f32> = (0..cols)
                .map(|i| next() + if i % 200 < 64 { 0.7 } else { -0.2 })
                .collect();
            // Blocks of very different magnitudes, one all zero.
            let x: Vec<f32> = (0..cols)
                .map(|i| match i / BLOCK {
                    3 => 0.0,
                    b => next() * (1.0 + b as f32 * 0.5),
                })
                .collect();
            let q = quantize(&w, 1, cols, scheme, ScaleType::F32);
            let dequantized = q.dequantize();
            let exact: f64 = dequantized
                .iter()
                .zip(&x)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            let magnitude: f64 = dequantized
                .iter()
                .zip(&x)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();

            let natural = round(&x, scheme, Order::Natural);
            let per = scheme.per_word();
            let centre = 1i64 << (bits - 1);
            let mut want = 0.0f64;
            for (w, &word) in q.packed.iter().enumerate() {
                let sum: i64 = (0..per)
                    .map(|j| {
                        let level = ((word >> (j * bits)) & ((1 << bits) - 1)) as i64;
                        (level - centre) * natural.q[w * per + j] as i64
                    })
                    .sum();
                want += sum as f64 * natural.d[w] as f64 * q.scales[w * per / group_size] as f64;
            }
            for (g, &sum) in natural.sums.iter().enumerate() {
                want += (q.biases[g] as f64 + centre as f64 * q.scales[g] as f64) * sum as f64;
            }
            assert!(
                (want - exact).abs() <= 0.02 * magnitude,
                "q{bits}g{group_size}: rounded {want} vs exact {exact}"
            );

            let kernels = dots(scheme, cols);
            assert!(!kernels.is_empty());
            for (dot, order, chunk) in kernels {
                let input = round(&x, scheme, order);
                let lanes = Lanes::new(per, group_size, chunk);
                let row = Row {
                    words: &q.packed,
                    scales: &q.scales,
                    biases: &q.biases,
                    q: &input.q,
                    d: &input.d,
                    corr: &input.corr,
                    sums: &input.sums,
                    group_size,
                    lanes: &lanes,
                };
                let got = dot(&row) as f64;
                assert!(
                    (got - want).abs() <= 1e-6 * magnitude,
                    "q{bits}g{group_size} {order:?}: {got} vs {want}"
                );
            }
        }
    }

    /// `nearest` is `round_ties_even` over the activations' range (ties included).
    #[test]
    fn nearest_rounds_ties_to_even() {
        for v in [
            -127.5f32,
            -2.5,
            -0.5,
            0.5,
            1.5,
            2.5,
            126.5,
            0.499_999_97,
            -3.7,
            100.2,
        ] {
            assert_eq!(nearest(v), v.round_ties_even(), "{v}");
        }
        let mut next = noise(3);
        for _ in 0..100_000 {
            let v = next() * 130.0;
            assert_eq!(nearest(v), v.round_ties_even(), "{v}");
        }
    }

    /// The rounding: each block's largest magnitude lands on ±127, levels within ±127, and the
    /// split order holds the even inputs before the odd ones.
    #[test]
    fn rounding_per_block() {
        let mut next = noise(7);
        let x: Vec<f32> = (0..256).map(|_| next() * 3.0).collect();
        let r = round(&x, Quantization::Q4, Order::Natural);
        for (b, block) in x.chunks_exact(BLOCK).enumerate() {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = r.d[b * BLOCK / 8];
            assert_eq!(d, amax / 127.0);
            let at = block.iter().position(|v| v.abs() == amax).unwrap();
            assert_eq!(r.q[b * BLOCK + at].unsigned_abs(), 127);
            for (j, &v) in block.iter().enumerate() {
                assert!((r.q[b * BLOCK + j] as f32 * d - v).abs() <= 0.5 * d * 1.0001);
            }
        }
        let split = round(&x, Quantization::Q4, Order::Split(64));
        assert_eq!(split.q[0], r.q[0]);
        assert_eq!(split.q[1], r.q[2]);
        assert_eq!(split.q[32], r.q[1]);
        assert_eq!(split.q[64 + 33], r.q[64 + 3]);
        assert_eq!(split.corr, r.corr);
    }
}
