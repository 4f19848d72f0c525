//! A JPEG decoder that gives the bytes Pillow gives: Pillow decodes through libjpeg-turbo with
//! its defaults (accurate integer IDCT, fancy upsampling, fixed-point YCbCr → RGB), and the
//! reference reads images with Pillow. The `image` crate's decoder (zune-jpeg) rounds
//! differently: a few levels on a quarter of the pixels of a 4:2:0 photo, a 1e-2 rel-L2 in the
//! image features.
//!
//! Covers baseline and progressive Huffman JPEGs with 8-bit samples, one (grey) or three
//! components (YCbCr, or RGB by Adobe marker or component ids), any integral subsampling,
//! restart intervals. The rest (arithmetic coding, lossless, 12-bit, CMYK, progressive files
//! whose scans stop before full precision, which libjpeg smooths) is [`Decoded::Unsupported`]
//! and goes to the `image` crate.

mod huffman;
mod idct;
mod upsample;

use huffman::{BitReader, Huffman};
use upsample::{Plane, upsample, ycc_to_rgb};

/// Why the decoder stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JpegError {
    #[error("corrupt JPEG: {0}")]
    Corrupt(&'static str),
    /// The file asks for more work than any real JPEG needs: refused, not decoded elsewhere.
    #[error("{0}")]
    Limit(String),
}

/// Most scans a file may have. A progressive JPEG needs at most 14 per coefficient band and
/// component (a first scan and 13 refinements); encoders write about 10 in all.
pub(crate) const MAX_SCANS: usize = 1000;

/// Most marker segments (tables, application data, scans) a file may have.
pub(crate) const MAX_SEGMENTS: usize = 5 * MAX_SCANS;

/// Entropy-decoding budget, in coefficient visits per allocated coefficient of the frame. A
/// conforming file visits each coefficient in at most 14 scans (a first scan and 13 successive
/// refinements), a baseline file once, the usual progressive script about 3 times; past 16 the
/// file is only making the decoder work.
const WORK_PER_COEFFICIENT: u64 = 16;

/// The result of [`decode`].
pub(crate) enum Decoded {
    /// Interleaved RGB, `width × height`.
    Rgb {
        width: usize,
        height: usize,
        data: Vec<u8>,
    },
    /// A JPEG this decoder leaves to another (arithmetic coding, lossless, 12-bit, CMYK, …).
    Unsupported,
}

/// Position in natural (row-major) order of the k-th zig-zag coefficient, and 16 more entries
/// at the last coefficient: a corrupt run may carry k up to 78, which libjpeg
/// (`jpeg_natural_order`) writes there rather than failing, and so does this decoder.
const ZIGZAG: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

struct Component {
    id: u8,
    h: usize,
    v: usize,
    quant_table: usize,
    /// The quantisation table latched at the component's first scan, as libjpeg does.
    quant: Option<[u16; 64]>,
    /// Blocks allocated per row (whole MCUs).
    blocks_w: usize,
    /// Blocks holding image samples (a non-interleaved scan covers only these).
    real_w: usize,
    real_h: usize,
    /// Samples of the component (`ceil(width · h / h_max)`, likewise down).
    width: usize,
    height: usize,
    coefs: Vec<[i16; 64]>,
    /// The successive-approximation bit each coefficient is known to (-1: not yet seen).
    coef_bits: [i32; 64],
}

struct Frame {
    progressive: bool,
    width: usize,
    height: usize,
    components: Vec<Component>,
    h_max: usize,
    v_max: usize,
    mcus_x: usize,
    mcus_y: usize,
}

struct Scan {
    /// Indices into the frame's components.
    components: Vec<usize>,
    dc_tables: Vec<usize>,
    ac_tables: Vec<usize>,
    ss: usize,
    se: usize,
    ah: u32,
    al: u32,
}

/// Decodes `bytes` (starting with SOI) to RGB, refusing frames above `max_pixels` or with a
/// side above `max_side`, more than [`MAX_SCANS`] scans, or more entropy-decoding work than
/// [`WORK_PER_COEFFICIENT`] allows.
pub(crate) fn decode(bytes: &[u8], max_pixels: u64, max_side: u32) -> Result<Decoded, JpegError> {
    if bytes.get(..2) != Some(&[0xFF, 0xD8]) {
        return Err(JpegError::Corrupt("no SOI marker"));
    }
    let mut pos = 2;
    let (mut segments, mut scans) = (0usize, 0usize);
    let mut work = Work::default();
    let mut quant: [Option<[u16; 64]>; 4] = [None; 4];
    let mut dc: [Option<Huffman>; 4] = Default::default();
    let mut ac: [Option<Huffman>; 4] = Default::default();
    let mut restart_interval = 0usize;
    let (mut jfif, mut adobe_transform) = (false, None);
    let mut frame: Option<Frame> = None;

    loop {
        // The next marker: fill bytes 0xFF may precede it.
        while bytes.get(pos) == Some(&0xFF) && bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let marker = match bytes.get(pos..pos + 2) {
            Some([0xFF, m]) => *m,
            // A file cut after its last scan: libjpeg ends it as if EOI followed.
            None if frame.is_some() && pos >= bytes.len() => break,
            _ => return Err(JpegError::Corrupt("expected a marker")),
        };
        pos += 2;
        if marker == 0xD9 {
            break;
        }
        if (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            continue;
        }
        let len = match bytes.get(pos..pos + 2) {
            Some(b) => u16::from_be_bytes([b[0], b[1]]) as usize,
            None => return Err(JpegError::Corrupt("truncated segment")),
        };
        let seg = bytes
            .get(pos + 2..pos + len)
            .filter(|_| len >= 2)
            .ok_or(JpegError::Corrupt("truncated segment"))?;
        pos += len;
        segments += 1;
        if segments > MAX_SEGMENTS {
            return Err(JpegError::Limit(format!(
                "the JPEG has more than {MAX_SEGMENTS} marker segments"
            )));
        }
        match marker {
            0xE0 if seg.starts_with(b"JFIF\0") => jfif = true,
            0xEE if seg.starts_with(b"Adobe") && seg.len() >= 12 => {
                adobe_transform = Some(seg[11]);
            }
            0xDB => read_quant(seg, &mut quant)?,
            0xC4 => read_huffman(seg, &mut dc, &mut ac)?,
            0xDD => {
                if seg.len() < 2 {
                    return Err(JpegError::Corrupt("DRI length"));
                }
                restart_interval = u16::from_be_bytes([seg[0], seg[1]]) as usize;
            }
            0xC0..=0xC2 => {
                if frame.is_some() {
                    return Err(JpegError::Corrupt("two frames"));
                }
                match read_frame(seg, marker == 0xC2, max_pixels, max_side)? {
                    Some(f) => {
                        work.budget = f
                            .components
                            .iter()
                            .map(|c| c.coefs.len() as u64 * 64 * WORK_PER_COEFFICIENT)
                            .sum();
                        frame = Some(f);
                    }
                    None => return Ok(Decoded::Unsupported),
                }
            }
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Ok(Decoded::Unsupported);
            }
            0xDA => {
                scans += 1;
                if scans > MAX_SCANS {
                    return Err(JpegError::Limit(format!(
                        "the JPEG has more than {MAX_SCANS} scans"
                    )));
                }
                let f = frame
                    .as_mut()
                    .ok_or(JpegError::Corrupt("scan before frame"))?;
                let scan = read_scan(seg, f)?;
                for &c in &scan.components {
                    let comp = &mut f.components[c];
                    if comp.quant.is_none() {
                        comp.quant = Some(
                            quant[comp.quant_table]
                                .ok_or(JpegError::Corrupt("missing quantisation table"))?,
                        );
                    }
                }
                pos = decode_scan(bytes, pos, f, &scan, &dc, &ac, restart_interval, &mut work)?;
            }
            _ => {}
        }
    }

    let mut f = frame.ok_or(JpegError::Corrupt("no frame"))?;
    // libjpeg smooths progressive blocks whose low coefficients are not fully refined; the
    // common encoders refine every coefficient to bit 0.
    if f.progressive
        && f.components
            .iter()
            .any(|c| c.coef_bits[..10].iter().any(|&b| b != 0))
    {
        return Ok(Decoded::Unsupported);
    }
    // Each stage's buffers go as soon as the next has what it needs: at 4096² the coefficients,
    // the samples and the RGB are 50 MB each.
    let mut full = Vec::with_capacity(f.components.len());
    for c in &mut f.components {
        let samples = samples(c)?;
        c.coefs = Vec::new();
        let plane = Plane {
            samples: &samples,
            stride: c.blocks_w * 8,
            width: c.width,
            height: c.height,
        };
        full.push(upsample(
            &plane,
            f.h_max / c.h,
            f.v_max / c.v,
            f.width,
            f.height,
        ));
    }
    let data = match full.as_slice() {
        [grey] => grey.iter().flat_map(|&g| [g; 3]).collect(),
        [a, b, c] => {
            let ids: Vec<u8> = f.components.iter().map(|c| c.id).collect();
            // libjpeg's guess of the colour space (`jdapimin.c` `default_decompress_parms`).
            let rgb = if jfif {
                false
            } else if let Some(t) = adobe_transform {
                t == 0
            } else {
                ids == [b'R', b'G', b'B']
            };
            if rgb {
                a.iter()
                    .zip(b)
                    .zip(c)
                    .flat_map(|((&r, &g), &b)| [r, g, b])
                    .collect()
            } else {
                ycc_to_rgb(a, b, c)
            }
        }
        _ => unreachable!("frames have one or three components"),
    };
    Ok(Decoded::Rgb {
        width: f.width,
        height: f.height,
        data,
    })
}

fn read_quant(mut seg: &[u8], quant: &mut [Option<[u16; 64]>; 4]) -> Result<(), JpegError> {
    while !seg.is_empty() {
        let (precision, id) = (seg[0] >> 4, (seg[0] & 15) as usize);
        let size = if precision == 0 { 64 } else { 128 };
        if id > 3 || precision > 1 || seg.len() < 1 + size {
            return Err(JpegError::Corrupt("DQT"));
        }
        let mut table = [0u16; 64];
        for (k, &natural) in ZIGZAG[..64].iter().enumerate() {
            table[natural] = if precision == 0 {
                seg[1 + k] as u16
            } else {
                u16::from_be_bytes([seg[1 + 2 * k], seg[2 + 2 * k]])
            };
        }
        quant[id] = Some(table);
        seg = &seg[1 + size..];
    }
    Ok(())
}

fn read_huffman(
    mut seg: &[u8],
    dc: &mut [Option<Huffman>; 4],
    ac: &mut [Option<Huffman>; 4],
) -> Result<(), JpegError> {
    while !seg.is_empty() {
        if seg.len() < 17 {
            return Err(JpegError::Corrupt("DHT"));
        }
        let (class, id) = (seg[0] >> 4, (seg[0] & 15) as usize);
        let counts: [u8; 16] = seg[1..17].try_into().expect("16 bytes");
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if id > 3 || class > 1 || seg.len() < 17 + total {
            return Err(JpegError::Corrupt("DHT"));
        }
        let table = Huffman::new(&counts, seg[17..17 + total].to_vec())?;
        if class == 0 {
            dc[id] = Some(table);
        } else {
            ac[id] = Some(table);
        }
        seg = &seg[17 + total..];
    }
    Ok(())
}

/// The frame header; `None` for frames left to another decoder.
fn read_frame(
    seg: &[u8],
    progressive: bool,
    max_pixels: u64,
    max_side: u32,
) -> Result<Option<Frame>, JpegError> {
    if seg.len() < 6 {
        return Err(JpegError::Corrupt("SOF"));
    }
    let precision = seg[0];
    let height = u16::from_be_bytes([seg[1], seg[2]]) as usize;
    let width = u16::from_be_bytes([seg[3], seg[4]]) as usize;
    let n = seg[5] as usize;
    if seg.len() < 6 + 3 * n {
        return Err(JpegError::Corrupt("SOF"));
    }
    if precision != 8 {
        return Ok(None);
    }
    if n != 1 && n != 3 {
        return Ok(None);
    }
    if width == 0 || height == 0 {
        // Height 0 (set later by a DNL marker) and empty images: the `image` crate reports them.
        return Ok(None);
    }
    if (width as u64) * (height as u64) > max_pixels || width.max(height) > max_side as usize {
        return Err(JpegError::Limit(format!(
            "the JPEG frame is {width}×{height} pixels, over the limits ({max_pixels} pixels, {max_side} per side)"
        )));
    }
    let mut components = Vec::with_capacity(n);
    for c in seg[6..6 + 3 * n].chunks_exact(3) {
        let (h, v) = ((c[1] >> 4) as usize, (c[1] & 15) as usize);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
            return Err(JpegError::Corrupt("component sampling or table"));
        }
        components.push((c[0], h, v, c[2] as usize));
    }
    // A single-component frame is sampled 1×1 whatever its header says (T.81 A.2.2).
    if n == 1 {
        components[0].1 = 1;
        components[0].2 = 1;
    }
    let h_max = components.iter().map(|c| c.1).max().expect("components");
    let v_max = components.iter().map(|c| c.2).max().expect("components");
    if components
        .iter()
        .any(|c| h_max % c.1 != 0 || v_max % c.2 != 0)
    {
        return Ok(None);
    }
    let (mcus_x, mcus_y) = (width.div_ceil(8 * h_max), height.div_ceil(8 * v_max));
    let components = components
        .into_iter()
        .map(|(id, h, v, quant_table)| {
            let (cw, ch) = ((width * h).div_ceil(h_max), (height * v).div_ceil(v_max));
            let (blocks_w, blocks_h) = (mcus_x * h, mcus_y * v);
            Component {
                id,
                h,
                v,
                quant_table,
                quant: None,
                blocks_w,
                real_w: cw.div_ceil(8),
                real_h: ch.div_ceil(8),
                width: cw,
                height: ch,
                coefs: vec![[0i16; 64]; blocks_w * blocks_h],
                coef_bits: [-1; 64],
            }
        })
        .collect();
    Ok(Some(Frame {
        progressive,
        width,
        height,
        components,
        h_max,
        v_max,
        mcus_x,
        mcus_y,
    }))
}

fn read_scan(seg: &[u8], f: &Frame) -> Result<Scan, JpegError> {
    let n = *seg.first().ok_or(JpegError::Corrupt("SOS"))? as usize;
    if n == 0 || n > 4 || seg.len() < 4 + 2 * n {
        return Err(JpegError::Corrupt("SOS"));
    }
    let mut scan = Scan {
        components: Vec::with_capacity(n),
        dc_tables: Vec::with_capacity(n),
        ac_tables: Vec::with_capacity(n),
        ss: seg[1 + 2 * n] as usize,
        se: seg[2 + 2 * n] as usize,
        ah: (seg[3 + 2 * n] >> 4) as u32,
        al: (seg[3 + 2 * n] & 15) as u32,
    };
    for c in seg[1..1 + 2 * n].chunks_exact(2) {
        let index = f
            .components
            .iter()
            .position(|comp| comp.id == c[0])
            .ok_or(JpegError::Corrupt("scan names an unknown component"))?;
        scan.components.push(index);
        scan.dc_tables.push((c[1] >> 4) as usize);
        scan.ac_tables.push((c[1] & 15) as usize);
    }
    let bad = if f.progressive {
        scan.se > 63
            || scan.ss > scan.se
            || (scan.ss == 0 && scan.se != 0)
            || (scan.ss > 0 && n != 1)
            || scan.al > 13
    } else {
        scan.ss != 0 || scan.se != 63 || scan.ah != 0 || scan.al != 0
    };
    if bad || scan.dc_tables.iter().chain(&scan.ac_tables).any(|&t| t > 3) {
        return Err(JpegError::Corrupt("scan parameters"));
    }
    Ok(scan)
}

/// Entropy-decoding work done so far and allowed, in coefficient visits.
#[derive(Default)]
struct Work {
    done: u64,
    budget: u64,
}

/// Decodes one scan's entropy-coded data from `pos`; the position of the marker after it.
///
/// A scan whose data runs out (a marker or the end of the file where more bits were needed)
/// ends there, as in libjpeg: the unit being decoded is completed with zero bits and the units
/// after it keep what earlier scans gave them, up to the next restart marker if one follows.
#[allow(clippy::too_many_arguments)]
fn decode_scan<'t>(
    bytes: &[u8],
    pos: usize,
    f: &mut Frame,
    scan: &Scan,
    dc: &'t [Option<Huffman>; 4],
    ac: &'t [Option<Huffman>; 4],
    restart_interval: usize,
    work: &mut Work,
) -> Result<usize, JpegError> {
    // The tables each scan component reads; `None` where the scan does not code that part.
    let tables = |tables: &'t [Option<Huffman>; 4], ids: &[usize], needed: bool| {
        ids.iter()
            .map(|&id| match (needed, &tables[id]) {
                (false, _) => Ok(None),
                (true, Some(t)) => Ok(Some(t)),
                (true, None) => Err(JpegError::Corrupt("missing Huffman table")),
            })
            .collect::<Result<Vec<Option<&Huffman>>, _>>()
    };
    let dcs = tables(dc, &scan.dc_tables, scan.ss == 0 && scan.ah == 0)?;
    let acs = tables(ac, &scan.ac_tables, scan.se > 0)?;

    let mut r = BitReader::new(bytes, pos);
    let mut pred = vec![0i32; scan.components.len()];
    let mut eob_run = 0u32;
    // Blocks of each MCU: (scan component, block index in its component).
    let single = scan.components.len() == 1;
    let (units_x, units_y) = if single {
        let c = &f.components[scan.components[0]];
        (c.real_w, c.real_h)
    } else {
        (f.mcus_x, f.mcus_y)
    };
    let units = units_x * units_y;
    // Coefficients of one unit the scan visits: its blocks times the band.
    let unit_cost = (scan.se - scan.ss + 1) as u64
        * if single {
            1
        } else {
            scan.components
                .iter()
                .map(|&c| (f.components[c].h * f.components[c].v) as u64)
                .sum()
        };
    let mut blocks: Vec<(usize, usize)> = Vec::new();
    let mut unit = 0;
    while unit < units {
        if restart_interval > 0 && unit > 0 && unit % restart_interval == 0 {
            if r.exhausted && !r.at_restart_marker() {
                // Out of data and no restart marker to resume at: the scan is over.
                break;
            }
            r.restart()?;
            pred.iter_mut().for_each(|p| *p = 0);
            eob_run = 0;
        }
        if r.exhausted {
            // Nothing more to read before the next restart marker (or the end of the scan).
            unit = match unit.checked_div(restart_interval) {
                Some(intervals) => (intervals + 1) * restart_interval,
                None => units,
            };
            continue;
        }
        work.done += unit_cost;
        if work.done > work.budget {
            return Err(JpegError::Limit(format!(
                "the JPEG's scans decode more than {WORK_PER_COEFFICIENT} times the image's coefficients"
            )));
        }
        let (ux, uy) = (unit % units_x, unit / units_x);
        blocks.clear();
        for (i, &ci) in scan.components.iter().enumerate() {
            let c = &f.components[ci];
            if single {
                blocks.push((i, uy * c.blocks_w + ux));
            } else {
                for by in 0..c.v {
                    for bx in 0..c.h {
                        blocks.push((i, (uy * c.v + by) * c.blocks_w + ux * c.h + bx));
                    }
                }
            }
        }
        for &(i, b) in &blocks {
            let block = &mut f.components[scan.components[i]].coefs[b];
            let (dc, ac) = (dcs[i], acs[i]);
            if !f.progressive {
                // Sequential: DC, then the whole AC band; an end-of-block ends only this block.
                pred[i] = dc_value(&mut r, dc.expect("dc"), pred[i])?;
                block[0] = pred[i] as i16;
                ac_band(&mut r, block, ac.expect("ac"), 1, 63, 0);
            } else if scan.ss == 0 {
                if scan.ah == 0 {
                    pred[i] = dc_value(&mut r, dc.expect("dc"), pred[i])?;
                    block[0] = pred[i].wrapping_shl(scan.al) as i16;
                } else if r.bit() {
                    block[0] |= 1 << scan.al;
                }
            } else if scan.ah == 0 {
                if eob_run > 0 {
                    eob_run -= 1;
                } else if let Some(run) =
                    ac_band(&mut r, block, ac.expect("ac"), scan.ss, scan.se, scan.al)
                {
                    // EOBn: this block and the next 2^n + bits − 1 end here.
                    eob_run = (1 << run) + r.bits(run) - 1;
                }
            } else {
                decode_ac_refine(&mut r, block, ac.expect("ac"), scan, &mut eob_run);
            }
        }
        unit += 1;
    }
    for &ci in &scan.components {
        for k in scan.ss..=scan.se {
            f.components[ci].coef_bits[k] = scan.al as i32;
        }
    }
    Ok(r.finish())
}

/// The DC predictor after one coded difference (T.81 F.2.2.1).
fn dc_value(r: &mut BitReader, dc: &Huffman, pred: i32) -> Result<i32, JpegError> {
    let t = dc.decode(r) as u32;
    // libjpeg takes magnitudes up to 15 and refuses DC tables with larger symbols.
    if t > 15 {
        return Err(JpegError::Corrupt("DC magnitude"));
    }
    Ok(pred.wrapping_add(r.receive_extend(t)))
}

/// The AC coefficients `ss..=se` of one block, each shifted left by `al` (T.81 F.2.2.2, G.1.2.2):
/// the run of an end-of-block symbol when one ends the band, `None` when the band is full.
fn ac_band(
    r: &mut BitReader,
    block: &mut [i16; 64],
    ac: &Huffman,
    ss: usize,
    se: usize,
    al: u32,
) -> Option<u32> {
    let mut k = ss;
    while k <= se {
        let rs = ac.decode(r);
        let (run, size) = ((rs >> 4) as u32, (rs & 15) as u32);
        if size == 0 {
            if run < 15 {
                return Some(run);
            }
            k += 16;
            continue;
        }
        // Past the band in a corrupt file (k ≤ 78): the last coefficient, as in libjpeg.
        k += run as usize;
        block[ZIGZAG[k]] = (r.receive_extend(size) << al) as i16;
        k += 1;
    }
    None
}

/// T.81 G.1.2.3, as libjpeg's `decode_mcu_AC_refine`.
fn decode_ac_refine(
    r: &mut BitReader,
    block: &mut [i16; 64],
    ac: &Huffman,
    scan: &Scan,
    eob_run: &mut u32,
) {
    let p1 = 1i16 << scan.al;
    let m1 = -1i16 << scan.al;
    let refine = |r: &mut BitReader, coef: &mut i16| {
        if r.bit() && (*coef & p1) == 0 {
            *coef = coef.wrapping_add(if *coef >= 0 { p1 } else { m1 });
        }
    };
    let mut k = scan.ss;
    if *eob_run == 0 {
        while k <= scan.se {
            let rs = ac.decode(r);
            let (mut run, size) = ((rs >> 4) as i32, rs & 15);
            let mut value = 0i16;
            if size != 0 {
                value = if r.bit() { p1 } else { m1 };
            } else if run != 15 {
                *eob_run = (1 << run) + r.bits(run as u32);
                break;
            }
            while k <= scan.se {
                let coef = &mut block[ZIGZAG[k]];
                if *coef != 0 {
                    refine(r, coef);
                } else {
                    run -= 1;
                    if run < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if value != 0 {
                // k is at most 64 here: the last coefficient, as in libjpeg.
                block[ZIGZAG[k]] = value;
            }
            k += 1;
        }
    }
    if *eob_run > 0 {
        while k <= scan.se {
            let coef = &mut block[ZIGZAG[k]];
            if *coef != 0 {
                refine(r, coef);
            }
            k += 1;
        }
        *eob_run -= 1;
    }
}

/// A component's samples: every real block through the inverse DCT, rows of `blocks_w · 8`.
fn samples(c: &Component) -> Result<Vec<u8>, JpegError> {
    let quant = c
        .quant
        .as_ref()
        .ok_or(JpegError::Corrupt("a component without scans"))?;
    let stride = c.blocks_w * 8;
    let mut out = vec![0u8; stride * c.real_h * 8];
    for by in 0..c.real_h {
        for bx in 0..c.real_w {
            let at = by * 8 * stride + bx * 8;
            idct::idct_islow(
                &c.coefs[by * c.blocks_w + bx],
                quant,
                &mut out[at..],
                stride,
            );
        }
    }
    Ok(out)
}
