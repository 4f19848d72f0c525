//! Chroma upsampling and colour conversion as libjpeg does them by default (Pillow's decode):
//! "fancy" triangle filters for 2×1, 1×2 and 2×2 subsampling (`jdsample.c`), pixel replication
//! for other integral factors, and fixed-point YCbCr → RGB tables (`jdcolor.c`).

/// A decoded component: `width × height` real samples in rows of `stride`.
pub(super) struct Plane<'a> {
    pub samples: &'a [u8],
    pub stride: usize,
    pub width: usize,
    pub height: usize,
}

/// `plane` enlarged by `(h, v)` (each 1 or more) and cut to `out_w × out_h`, row-major.
pub(super) fn upsample(plane: &Plane, h: usize, v: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    let mut out = vec![0u8; out_w * out_h];
    let row = |y: usize| &plane.samples[y * plane.stride..y * plane.stride + plane.width];
    // libjpeg uses the triangle filter only where the component is wider than two samples
    // (1×2 has no such condition).
    let fancy_h = h == 2 && plane.width > 2;
    let mut line = vec![0u8; plane.width * h];
    let mut sums = vec![0u16; plane.width];
    for (oy, out_row) in out.chunks_exact_mut(out_w).enumerate() {
        match (h, v) {
            (1, 1) => out_row.copy_from_slice(&row(oy)[..out_w]),
            (2, 1) if fancy_h => {
                h2v1_fancy(row(oy), &mut line);
                out_row.copy_from_slice(&line[..out_w]);
            }
            (1, 2) | (2, 2) if v == 2 && (h == 1 || fancy_h) => {
                // Rows above the first and below the last repeat them (`jdmainct.c`).
                let (i, lower) = (oy / 2, oy % 2 == 1);
                let near = if lower {
                    (i + 1).min(plane.height - 1)
                } else {
                    i.saturating_sub(1)
                };
                for ((s, &a), &b) in sums.iter_mut().zip(row(i)).zip(row(near)) {
                    *s = a as u16 * 3 + b as u16;
                }
                if h == 1 {
                    let bias = if lower { 2 } else { 1 };
                    for (o, &s) in out_row.iter_mut().zip(&sums) {
                        *o = ((s + bias) >> 2) as u8;
                    }
                } else {
                    h2v2_fancy(&sums, &mut line);
                    out_row.copy_from_slice(&line[..out_w]);
                }
            }
            _ => {
                let src = row(oy / v);
                for (x, o) in out_row.iter_mut().enumerate() {
                    *o = src[x / h];
                }
            }
        }
    }
    out
}

/// `jdsample.c` `h2v1_fancy_upsample`: 3/4 of the nearer sample, 1/4 of the further.
fn h2v1_fancy(input: &[u8], out: &mut [u8]) {
    let n = input.len();
    let s = |i: usize| input[i] as u16;
    out[0] = input[0];
    out[1] = ((s(0) * 3 + s(1) + 2) >> 2) as u8;
    for i in 1..n - 1 {
        let v = s(i) * 3;
        out[2 * i] = ((v + s(i - 1) + 1) >> 2) as u8;
        out[2 * i + 1] = ((v + s(i + 1) + 2) >> 2) as u8;
    }
    out[2 * n - 2] = ((s(n - 1) * 3 + s(n - 2) + 1) >> 2) as u8;
    out[2 * n - 1] = input[n - 1];
}

/// `jdsample.c` `h2v2_fancy_upsample`'s horizontal step on column sums `3·near + far`.
fn h2v2_fancy(sums: &[u16], out: &mut [u8]) {
    let n = sums.len();
    out[0] = ((sums[0] * 4 + 8) >> 4) as u8;
    out[1] = ((sums[0] * 3 + sums[1] + 7) >> 4) as u8;
    for i in 1..n - 1 {
        out[2 * i] = ((sums[i] * 3 + sums[i - 1] + 8) >> 4) as u8;
        out[2 * i + 1] = ((sums[i] * 3 + sums[i + 1] + 7) >> 4) as u8;
    }
    out[2 * n - 2] = ((sums[n - 1] * 3 + sums[n - 2] + 8) >> 4) as u8;
    out[2 * n - 1] = ((sums[n - 1] * 4 + 7) >> 4) as u8;
}

/// `jdcolor.c` `ycc_rgb_convert`: interleaved RGB from full-size Y, Cb, Cr.
pub(super) fn ycc_to_rgb(y: &[u8], cb: &[u8], cr: &[u8]) -> Vec<u8> {
    const SCALEBITS: u32 = 16;
    const ONE_HALF: i32 = 1 << (SCALEBITS - 1);
    let fix = |x: f64| (x * (1 << SCALEBITS) as f64 + 0.5) as i32;
    let (mut cr_r, mut cb_b, mut cr_g, mut cb_g) =
        ([0i32; 256], [0i32; 256], [0i32; 256], [0i32; 256]);
    for i in 0..256 {
        let x = i as i32 - 128;
        cr_r[i] = (fix(1.40200) * x + ONE_HALF) >> SCALEBITS;
        cb_b[i] = (fix(1.77200) * x + ONE_HALF) >> SCALEBITS;
        cr_g[i] = -fix(0.71414) * x;
        cb_g[i] = -fix(0.34414) * x + ONE_HALF;
    }
    let clamp = |v: i32| v.clamp(0, 255) as u8;
    let mut rgb = Vec::with_capacity(y.len() * 3);
    for ((&y, &cb), &cr) in y.iter().zip(cb).zip(cr) {
        let (y, cb, cr) = (y as i32, cb as usize, cr as usize);
        rgb.push(clamp(y + cr_r[cr]));
        rgb.push(clamp(y + ((cb_g[cb] + cr_g[cr]) >> SCALEBITS)));
        rgb.push(clamp(y + cb_b[cb]));
    }
    rgb
}
