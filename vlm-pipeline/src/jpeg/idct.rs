//! libjpeg's accurate integer inverse DCT (`jpeg_idct_islow`, the default `JDCT_ISLOW` that
//! Pillow decodes with): Loeffler–Ligtenberg–Moschytz with 13-bit constants, two passes, the same
//! rounding. libjpeg-turbo's SIMD versions give the same bytes.

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;

const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// The butterfly shared by both passes: eight inputs (already dequantized in pass 1) to the
/// eight outputs before the final descale, as `(even ± odd)` pairs.
#[inline(always)]
fn butterfly(v: [i64; 8]) -> [i64; 8] {
    // Even part.
    let z1 = (v[2] + v[6]) * FIX_0_541196100;
    let tmp2 = z1 - v[6] * FIX_1_847759065;
    let tmp3 = z1 + v[2] * FIX_0_765366865;
    let tmp0 = (v[0] + v[4]) << CONST_BITS;
    let tmp1 = (v[0] - v[4]) << CONST_BITS;
    let (tmp10, tmp13) = (tmp0 + tmp3, tmp0 - tmp3);
    let (tmp11, tmp12) = (tmp1 + tmp2, tmp1 - tmp2);
    // Odd part.
    let (t0, t1, t2, t3) = (v[7], v[5], v[3], v[1]);
    let (z1, z2, z3, z4) = (t0 + t3, t1 + t2, t0 + t2, t1 + t3);
    let z5 = (z3 + z4) * FIX_1_175875602;
    let (t0, t1, t2, t3) = (
        t0 * FIX_0_298631336,
        t1 * FIX_2_053119869,
        t2 * FIX_3_072711026,
        t3 * FIX_1_501321110,
    );
    let (z1, z2) = (-z1 * FIX_0_899976223, -z2 * FIX_2_562915447);
    let (z3, z4) = (-z3 * FIX_1_961570560 + z5, -z4 * FIX_0_390180644 + z5);
    let (t0, t1, t2, t3) = (t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4);
    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

/// One block: `coefs` in natural (row-major) order, `quant` likewise; writes 8×8 samples at
/// `out[row * stride + col]`.
pub(super) fn idct_islow(coefs: &[i16; 64], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i32; 64];
    for col in 0..8 {
        let v: [i64; 8] =
            std::array::from_fn(|row| coefs[row * 8 + col] as i64 * quant[row * 8 + col] as i64);
        let o = butterfly(v);
        for (row, value) in o.into_iter().enumerate() {
            ws[row * 8 + col] = descale(value, CONST_BITS - PASS1_BITS) as i32;
        }
    }
    for row in 0..8 {
        let v: [i64; 8] = std::array::from_fn(|col| ws[row * 8 + col] as i64);
        let o = butterfly(v);
        let line = &mut out[row * stride..row * stride + 8];
        for (sample, value) in line.iter_mut().zip(o) {
            let centred = descale(value, CONST_BITS + PASS1_BITS + 3) + 128;
            *sample = centred.clamp(0, 255) as u8;
        }
    }
}
