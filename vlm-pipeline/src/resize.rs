//! Pillow's bicubic resampling (`Image.resize(..., Image.BICUBIC)` on 8-bit images), bit for bit.
//!
//! The reference preprocesses with Pillow; generic bicubic filters differ from it by up to
//! 4–5/255 on some pixels, which alone moves FastViTHD's features by ~2e-3. This follows
//! Pillow's `Resample.c`: a separable convolution (horizontal pass, then vertical), Keys cubic
//! with a = −0.5 widened by the scale when downsampling, coefficients normalised and quantised
//! to 22-bit fixed point, and a rounded, clamped 8-bit intermediate between the passes.

const PRECISION_BITS: u32 = 32 - 8 - 2;
const SUPPORT: f64 = 2.0;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output position of a window: first input index, number of taps, and fixed-point weights.
struct Coefficients {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// Pillow's coefficients (`precompute_coeffs`) for output positions `first..first + count` of
/// a resize from `in_size` to `out_size`: each position's are computed on their own, so a
/// window gets exactly the values the whole resize would.
fn coefficients(in_size: usize, out_size: usize, first: usize, count: usize) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(count);
    let mut weights = vec![0i32; count * ksize];
    let mut k = vec![0f64; ksize];
    for (i, xx) in (first..first + count).enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C casts truncate toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            *kx = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *kx;
        }
        for x in 0..ksize {
            let v = if x < xmax && ww != 0.0 {
                k[x] / ww
            } else if x < xmax {
                k[x]
            } else {
                0.0
            };
            let fixed = v * (1u32 << PRECISION_BITS) as f64;
            weights[i * ksize + x] = if v < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coefficients {
        ksize,
        bounds,
        weights,
    }
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes interleaved 8-bit RGB `width × height` to `out_w × out_h` exactly as Pillow does.
pub fn resize_bicubic_rgb8(
    src: &[u8],
    width: usize,
    height: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    resize_bicubic_rgb8_window(src, width, height, out_w, out_h, (0, 0, out_w, out_h))
}

/// The window `(x0, y0, w, h)` of [`resize_bicubic_rgb8`]'s `out_w × out_h` result, computing
/// only what it covers: a centre crop of a long, thin image costs the crop, not the whole
/// resized strip (a 1×8192 image resized to 1024 wide would be 25 GB).
pub fn resize_bicubic_rgb8_window(
    src: &[u8],
    width: usize,
    height: usize,
    out_w: usize,
    out_h: usize,
    (x0, y0, w, h): (usize, usize, usize, usize),
) -> Vec<u8> {
    assert_eq!(src.len(), width * height * 3);
    assert!(
        x0 + w <= out_w && y0 + h <= out_h,
        "window outside the output"
    );
    if w == 0 || h == 0 {
        return Vec::new();
    }
    let need_h = out_w != width;
    let need_v = out_h != height;
    let horiz = coefficients(width, out_w, x0, w);
    let vert = coefficients(height, out_h, y0, h);

    // The source rows the vertical pass reads (the window's rows when there is none).
    let (first_row, rows) = if need_v {
        let first = vert.bounds[0].0;
        let (last_min, last_n) = vert.bounds[h - 1];
        (first, last_min + last_n - first)
    } else {
        (y0, h)
    };
    // Horizontal pass over those rows and the window's columns.
    let tmp = if need_h {
        let mut tmp = vec![0u8; rows * w * 3];
        let half = 1i32 << (PRECISION_BITS - 1);
        for y in 0..rows {
            let row = &src[(y + first_row) * width * 3..(y + first_row + 1) * width * 3];
            for xx in 0..w {
                let (xmin, n) = horiz.bounds[xx];
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + n];
                let mut ss = [half; 3];
                for (x, &wt) in k.iter().enumerate() {
                    let p = &row[(xmin + x) * 3..(xmin + x) * 3 + 3];
                    for c in 0..3 {
                        ss[c] += p[c] as i32 * wt;
                    }
                }
                for c in 0..3 {
                    tmp[(y * w + xx) * 3 + c] = clip8(ss[c]);
                }
            }
        }
        tmp
    } else {
        let mut tmp = Vec::with_capacity(rows * w * 3);
        for y in first_row..first_row + rows {
            tmp.extend_from_slice(&src[(y * width + x0) * 3..(y * width + x0 + w) * 3]);
        }
        tmp
    };
    if !need_v {
        return tmp;
    }
    let mut out = vec![0u8; h * w * 3];
    let half = 1i32 << (PRECISION_BITS - 1);
    for yy in 0..h {
        let (ymin, n) = vert.bounds[yy];
        let ymin = ymin - first_row;
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
        for xx in 0..w {
            let mut ss = [half; 3];
            for (y, &wt) in k.iter().enumerate() {
                let p = &tmp[((ymin + y) * w + xx) * 3..((ymin + y) * w + xx) * 3 + 3];
                for c in 0..3 {
                    ss[c] += p[c] as i32 * wt;
                }
            }
            for c in 0..3 {
                out[(yy * w + xx) * 3 + c] = clip8(ss[c]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: usize, height: usize) -> Vec<u8> {
        (0..width * height * 3)
            .map(|i| ((i * 7919) % 251) as u8)
            .collect()
    }

    /// A window is the same bytes as the whole resize, cut: for up- and downscaling on each
    /// axis, and for an axis left as it is.
    #[test]
    fn a_window_is_the_whole_resize_cut() {
        for (w, h, ow, oh) in [
            (37, 23, 64, 64),
            (90, 70, 31, 45),
            (16, 40, 16, 9),
            (5, 50, 20, 50),
        ] {
            let src = image(w, h);
            let whole = resize_bicubic_rgb8(&src, w, h, ow, oh);
            for (x0, y0, cw, ch) in [
                (0, 0, ow, oh),
                (3, 2, ow - 5, oh - 4),
                (ow - 1, oh - 1, 1, 1),
            ] {
                let window = resize_bicubic_rgb8_window(&src, w, h, ow, oh, (x0, y0, cw, ch));
                let cut: Vec<u8> = (y0..y0 + ch)
                    .flat_map(|y| whole[(y * ow + x0) * 3..(y * ow + x0 + cw) * 3].to_vec())
                    .collect();
                assert_eq!(
                    window, cut,
                    "{w}×{h} → {ow}×{oh}, window {x0},{y0} {cw}×{ch}"
                );
            }
        }
    }
}
