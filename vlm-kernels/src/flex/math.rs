//! The scalar functions of [`super`]'s ops, branch-free so that loops over them vectorise.
//!
//! GELU: `erfc(z) = t·e^{−z²}·P(t)` with `t = 1/(1 + 0.4·z)` for `z = |x|/√2 ≥ 0`, `P` of degree 9
//! fitted to `erfc(z)·e^{z²}/t` on `[0, 10]` for relative error (least squares reweighted
//! towards minimax): 4e-8 relative with its f32 coefficients, so what remains is f32's rounding,
//! chiefly of `z²` (GELU within 3.7e-6 relative for |x| ≤ 6, 3.8e-7 absolute over [−10, 10]).
//! `e^{−z²}` is `2^n·e^r` with `|r| ≤ ln2/2` and a degree-7 Taylor polynomial (5e-9 relative).
//!
//! SiLU: `x·σ(x)` with `σ` from the same `e^{−|x|}`.

/// `P`'s coefficients, constant term first.
const ERFC_P: [f32; 10] = [
    0.225_704_85,
    0.224_997_92,
    0.214_486_17,
    0.131_953_91,
    0.264_721_96,
    -0.269_215_46,
    0.527_416_5,
    -0.482_431_9,
    0.190_461_96,
    -0.028_095_914,
];

/// [`gelu`] over `values` in place: 8 lanes at a time where the CPU has AVX2 (twice the
/// baseline x86-64's 4 on this code), the target's own vectors elsewhere (NEON on aarch64).
/// No FMA, so every path rounds alike.
pub(super) fn gelu_slice(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { gelu_slice_avx2(values) };
    }
    values.iter_mut().for_each(|v| *v = gelu(*v));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_slice_avx2(values: &mut [f32]) {
    values.iter_mut().for_each(|v| *v = gelu(*v));
}

/// `silu(gate) · up` over `gate` in place, `up` as long as `gate`; AVX2 as [`gelu_slice`].
pub(super) fn swiglu_slice(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { swiglu_slice_avx2(gate, up) };
    }
    gate.iter_mut().zip(up).for_each(|(g, u)| *g = silu(*g) * u);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn swiglu_slice_avx2(gate: &mut [f32], up: &[f32]) {
    gate.iter_mut().zip(up).for_each(|(g, u)| *g = silu(*g) * u);
}

/// Softmax numerators of one row of attention scores in place: `e^{s − max}` over the first
/// `visible` entries (the max taken over those), 0 after them (the causal mask); returns
/// `1/Σ` for the caller to scale the weighted sum with. A NaN among the visible scores makes
/// the whole row NaN, as PyTorch's softmax does. AVX2 as [`gelu_slice`].
pub(super) fn softmax_row(row: &mut [f32], visible: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { softmax_row_avx2(row, visible) };
    }
    softmax_row_any(row, visible)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softmax_row_avx2(row: &mut [f32], visible: usize) -> f32 {
    softmax_row_any(row, visible)
}

#[inline(always)]
fn softmax_row_any(row: &mut [f32], visible: usize) -> f32 {
    let (scores, masked) = row.split_at_mut(visible);
    masked.fill(0.0);
    // Eight running lanes so that the reductions vectorise (a single accumulator is a chain).
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut nan = [false; 8];
    let mut chunks = scores.chunks_exact(8);
    for c in chunks.by_ref() {
        for i in 0..8 {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
            nan[i] |= c[i].is_nan();
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        lanes[i] = if v > lanes[i] { v } else { lanes[i] };
        nan[i] |= v.is_nan();
    }
    let max = lanes
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    // +∞ among the scores makes ∞ − ∞ in PyTorch: NaN as well.
    if nan.iter().any(|&n| n) || !max.is_finite() {
        scores.fill(f32::NAN);
        return f32::NAN;
    }
    scores
        .iter_mut()
        .for_each(|s| *s = exp_non_positive(*s - max));
    let mut sums = [0.0f32; 8];
    let mut chunks = scores.chunks_exact(8);
    for c in chunks.by_ref() {
        for i in 0..8 {
            sums[i] += c[i];
        }
    }
    let tail: f32 = chunks.remainder().iter().sum();
    1.0 / (sums.iter().sum::<f32>() + tail)
}

/// SiLU, `x·σ(x)`, with `σ` from `e^{−|x|}` (never overflows): `1/(1 + e^{−x})` for `x ≥ 0`,
/// `e^{x}/(1 + e^{x})` below.
#[inline(always)]
fn silu(x: f32) -> f32 {
    let s = exp_non_positive(-x.abs());
    let numerator = if x >= 0.0 { 1.0 } else { s };
    x * (numerator / (1.0 + s))
}

/// GELU (erf form) of one value, branch-free so that loops over it vectorise.
#[inline(always)]
pub(super) fn gelu(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.4 * z);
    let mut p = ERFC_P[9];
    for c in ERFC_P[..9].iter().rev() {
        p = p * t + c;
    }
    let erfc = t * p * exp_non_positive(-(z * z));
    // 1 + erf(x/√2) is 2 − erfc(z) for x ≥ 0 and erfc(z) below.
    let one_plus_erf = if x >= 0.0 { 2.0 - erfc } else { erfc };
    0.5 * x * one_plus_erf
}

/// `e^y` for `y ≤ 0`; 0 below −87 (where `e^y` < 1.7e-38 leaves f32's normal range).
#[inline(always)]
fn exp_non_positive(y: f32) -> f32 {
    // 1.5·2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let underflow = y < -87.0;
    let y = y.max(-87.0);
    let shifted = y * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // Two-part ln 2 (Cody–Waite) keeps r exact to f32 for |n| ≤ 126.
    let r = y - n * LN2_HI - n * LN2_LO;
    let mut e = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        e = e * r + c;
    }
    // n ∈ [−126, 0]: 2^n is a normal f32 with exponent field n + 127.
    let n_int = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let value = e * f32::from_bits(((n_int + 127) as u32) << 23);
    if underflow { 0.0 } else { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GELU in f64, independent of the code above: `1 + erf(x/√2)` is `2 − erfc(z)` for `x ≥ 0`
    /// and `erfc(z)` below, `z = |x|/√2`.
    fn gelu_f64(x: f64) -> f64 {
        let erfc = erfc_f64(x.abs() / std::f64::consts::SQRT_2);
        0.5 * x * if x >= 0.0 { 2.0 - erfc } else { erfc }
    }

    /// erfc for `a ≥ 0`: 1 − erf's Maclaurin series below 3, the continued fraction
    /// `e^{−a²}/√π / (a + ½/(a + 1/(a + ³⁄₂/(a + …))))` from 3 on (no cancellation in the tail).
    fn erfc_f64(a: f64) -> f64 {
        let sqrt_pi = std::f64::consts::PI.sqrt();
        if a < 3.0 {
            let (mut term, mut sum, mut k) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum.abs().max(1e-300) {
                k += 1.0;
                term *= -a * a / k;
                sum += term / (2.0 * k + 1.0);
            }
            1.0 - sum * 2.0 / sqrt_pi
        } else {
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            (-a * a).exp() / sqrt_pi / (a + f)
        }
    }

    #[test]
    fn gelu_matches_f64_to_f32_rounding() {
        let mut worst: f64 = 0.0;
        for i in -200_000..=200_000 {
            let x = i as f32 * 5e-5;
            let got = gelu(x) as f64;
            let want = gelu_f64(x as f64);
            // f32's own rounding of the product: a few ulp of max(|x|, 1e-3).
            let err = (got - want).abs() / (x.abs() as f64).max(1e-3);
            worst = worst.max(err);
        }
        assert!(worst < 1e-6, "relative error {worst:e}");
        // Relative accuracy down to GELU's tail (|gelu(−6)| ≈ 6e-9), beyond it only absolute.
        for x in [
            -6.0f32, -5.0, -3.0, -1.0, -0.1, 1e-6, 0.1, 1.0, 3.0, 5.0, 9.0, 20.0, 1e4,
        ] {
            let (got, want) = (gelu(x) as f64, gelu_f64(x as f64));
            assert!(
                (got - want).abs() <= 1e-5 * want.abs(),
                "gelu({x}) = {got:e}, want {want:e}"
            );
        }
        for x in [-87.5f32, -20.0, -9.0] {
            let (got, want) = (gelu(x) as f64, gelu_f64(x as f64));
            assert!(
                (got - want).abs() < 1e-20,
                "gelu({x}) = {got:e}, want {want:e}"
            );
        }
        assert_eq!(gelu(-200.0), 0.0);
        assert!(gelu(f32::NAN).is_nan());
    }

    #[test]
    fn silu_matches_f64() {
        for i in -200_000..=200_000 {
            let x = i as f32 * 5e-4;
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            let got = silu(x) as f64;
            // Relative while σ(x) is above 1e-30, absolute in the far negative tail.
            assert!(
                (got - want).abs() <= 1e-6 * want.abs() + 1e-35,
                "silu({x}) = {got:e}, want {want:e}"
            );
        }
        assert_eq!(silu(-200.0), 0.0);
        assert_eq!(silu(f32::INFINITY), f32::INFINITY);
        assert!(silu(f32::NAN).is_nan());
    }

    #[test]
    fn exp_matches_std() {
        for i in 0..87_000 {
            let y = -(i as f32) * 1e-3;
            let (got, want) = (exp_non_positive(y), y.exp());
            assert!(
                ((got - want) / want).abs() < 4e-7,
                "exp({y}) = {got:e}, want {want:e}"
            );
        }
        assert_eq!(exp_non_positive(-87.5), 0.0);
        assert_eq!(exp_non_positive(f32::NEG_INFINITY), 0.0);
    }
}
