//! Hostile images: headers that claim more than the limits, scan bombs, tables and scan
//! parameters out of range. Each is refused with an error that names the problem, or decoded,
//! quickly and without allocating what the header claims.

use std::time::{Duration, Instant};

use vlm_pipeline::fuzzing::{png_1bit, png_chunk};
use vlm_pipeline::image::{self, ImageError, ImageLimits};

/// Decodes within `limits`, and checks it took less than `within`.
fn timed(bytes: &[u8], limits: &ImageLimits, within: Duration) -> Result<image::Rgb8, ImageError> {
    let start = Instant::now();
    let result = image::decode_with(bytes, limits);
    let took = start.elapsed();
    println!(
        "{} bytes: {took:?}: {}",
        bytes.len(),
        match &result {
            Ok(img) => format!("decoded {}×{}", img.width, img.height),
            Err(e) => e.to_string(),
        }
    );
    assert!(took < within, "took {took:?}");
    result
}

fn refused(result: Result<image::Rgb8, ImageError>, needle: &str) {
    let e = result.expect_err("refused");
    assert!(e.to_string().contains(needle), "`{e}` lacks `{needle}`");
}

fn server_limits() -> ImageLimits {
    ImageLimits::new(4096 * 4096, 8192)
}

// ---------------------------------------------------------------------------------- PNG

#[test]
fn a_one_pixel_wide_png_of_16_million_rows_is_refused_from_its_header() {
    let png = png_1bit(1, 16_777_216);
    println!("the PNG is {} bytes", png.len());
    assert!(png.len() < 64 * 1024);
    // Within the server's pixel limit, past its side limit.
    refused(
        timed(&png, &server_limits(), Duration::from_secs(1)),
        "at most 8192 pixels per side",
    );
    // With the side limit lifted, the padded square (16M² × 3 bytes) is what refuses it.
    let mut lifted = server_limits();
    lifted.max_side = u32::MAX;
    refused(
        timed(&png, &lifted, Duration::from_secs(1)),
        "padded to a square",
    );
}

#[test]
fn headers_beyond_the_limits_or_empty_are_refused() {
    for (w, h, needle) in [
        (65535, 65535, "at most 8192 pixels per side"),
        (8192, 8192, "at most 16777216 pixels"),
        (0, 16, "image"),
        (16, 0, "image"),
    ] {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend((w as u32).to_be_bytes());
        ihdr.extend((h as u32).to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        png_chunk(&mut out, b"IHDR", &ihdr);
        // A few rows' worth of data: decoders read the header up to here.
        png_chunk(
            &mut out,
            b"IDAT",
            &[0x78, 0x9C, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
        );
        png_chunk(&mut out, b"IEND", &[]);
        refused(
            timed(&out, &server_limits(), Duration::from_secs(1)),
            needle,
        );
    }
}

// ---------------------------------------------------------------------------- other formats

#[test]
fn gif_tiff_and_webp_claiming_huge_sizes_are_refused() {
    // Pillow's 1×1 GIF, its logical screen made 65535².
    let mut gif = vec![
        0x47, 0x49, 0x46, 0x38, 0x37, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x08,
        0x04, 0x00, 0x01, 0x04, 0x04, 0x00, 0x3b,
    ];
    gif[6..10].copy_from_slice(&[0xFF; 4]);
    refused(
        timed(&gif, &server_limits(), Duration::from_secs(1)),
        "65535×65535 pixels; at most 8192 pixels per side",
    );

    // Little-endian TIFF, one IFD: 65535² 8-bit grey, one uncompressed strip of 16 bytes.
    let mut tiff = b"II*\0".to_vec();
    tiff.extend(8u32.to_le_bytes());
    let entries: [(u16, u16, u32); 8] = [
        (256, 4, 65535),
        (257, 4, 65535),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 8 + 2 + 8 * 12 + 4),
        (278, 4, 65535),
        (279, 4, 16),
    ];
    tiff.extend((entries.len() as u16).to_le_bytes());
    for (tag, kind, value) in entries {
        tiff.extend(tag.to_le_bytes());
        tiff.extend(kind.to_le_bytes());
        tiff.extend(1u32.to_le_bytes());
        tiff.extend(value.to_le_bytes());
    }
    tiff.extend(0u32.to_le_bytes());
    tiff.extend([0u8; 16]);
    refused(
        timed(&tiff, &server_limits(), Duration::from_secs(1)),
        "65535×65535 pixels; at most 8192 pixels per side",
    );

    // Lossless WebP headers: 12000² (past the side), 8192² (within it, past the pixels), and
    // 16384², the format's largest, which `image-webp` reads as 0×0 (it masks 1 + the 14-bit
    // field): refused as empty.
    for (side, needle) in [
        (12000u32, "at most 8192 pixels per side"),
        (8192, "at most 16777216 pixels"),
        (16384, "empty"),
    ] {
        let bits = (side - 1) | ((side - 1) << 14);
        let mut vp8l = vec![0x2F];
        vp8l.extend(bits.to_le_bytes());
        vp8l.extend([0u8; 11]);
        let mut webp = b"RIFF".to_vec();
        webp.extend((4 + 8 + vp8l.len() as u32).to_le_bytes());
        webp.extend(b"WEBPVP8L");
        webp.extend((vp8l.len() as u32).to_le_bytes());
        webp.extend(&vp8l);
        refused(
            timed(&webp, &server_limits(), Duration::from_secs(1)),
            needle,
        );
    }
}

// -------------------------------------------------------------------------------------- JPEG

/// Builds JPEGs from marker segments.
struct Jpeg(Vec<u8>);

impl Jpeg {
    fn new() -> Self {
        Self(vec![0xFF, 0xD8])
    }

    fn segment(mut self, marker: u8, payload: &[u8]) -> Self {
        self.0.extend([0xFF, marker]);
        self.0.extend(((payload.len() + 2) as u16).to_be_bytes());
        self.0.extend(payload);
        self
    }

    /// Quantisation table 0, all ones.
    fn dqt(self) -> Self {
        let mut p = vec![0u8];
        p.extend([1u8; 64]);
        self.segment(0xDB, &p)
    }

    /// DC table 0 and AC table 0, each one 1-bit code: DC difference 0, and `ac`.
    fn dht(self, ac: u8) -> Self {
        let mut p = Vec::new();
        for (class, value) in [(0x00, 0x00), (0x10, ac)] {
            p.push(class);
            let mut counts = [0u8; 16];
            counts[0] = 1;
            p.extend(counts);
            p.push(value);
        }
        self.segment(0xC4, &p)
    }

    /// A frame of `n` components, ids 1..=n, each sampled 1×1 with table 0.
    fn frame(self, marker: u8, width: u16, height: u16, ids: &[u8]) -> Self {
        let mut p = vec![8];
        p.extend(height.to_be_bytes());
        p.extend(width.to_be_bytes());
        p.push(ids.len() as u8);
        for &id in ids {
            p.extend([id, 0x11, 0]);
        }
        self.segment(marker, &p)
    }

    /// A scan of component 1 with the given spectral selection and approximation, then `data`.
    fn scan(self, ss: u8, se: u8, ah_al: u8, data: &[u8]) -> Self {
        let mut s = self.segment(0xDA, &[1, 1, 0x00, ss, se, ah_al]);
        s.0.extend(data);
        s
    }

    fn end(mut self) -> Vec<u8> {
        self.0.extend([0xFF, 0xD9]);
        self.0
    }
}

#[test]
fn the_empty_scan_bomb_is_refused_in_well_under_a_second() {
    // The file: a 4096² grey baseline header, then empty 8-byte SOS segments to 1 MB.
    let mut jpeg = Jpeg::new().dqt().dht(0x00).frame(0xC0, 4096, 4096, &[1]);
    while jpeg.0.len() < 1024 * 1024 {
        jpeg = jpeg.scan(0, 63, 0, &[]);
    }
    let bytes = jpeg.end();
    refused(
        timed(&bytes, &ImageLimits::default(), Duration::from_secs(1)),
        "more than 1000 scans",
    );
}

#[test]
fn whole_frame_scans_are_bounded_by_the_work_budget() {
    // 4096² grey, each scan a full frame of blocks at 2 bits each (DC 0, end of block): 64 KB.
    let scan = vec![0u8; 4096 * 4096 / 64 * 2 / 8];
    let mut jpeg = Jpeg::new().dqt().dht(0x00).frame(0xC0, 4096, 4096, &[1]);
    for _ in 0..40 {
        jpeg = jpeg.scan(0, 63, 0, &scan);
    }
    refused(
        timed(&jpeg.end(), &ImageLimits::default(), Duration::from_secs(5)),
        "times the image's coefficients",
    );

    // One such scan is an ordinary (grey) image.
    let one = Jpeg::new()
        .dqt()
        .dht(0x00)
        .frame(0xC0, 4096, 4096, &[1])
        .scan(0, 63, 0, &scan)
        .end();
    let img = timed(&one, &ImageLimits::default(), Duration::from_secs(5)).unwrap();
    assert_eq!((img.width, img.height), (4096, 4096));
    assert!(img.data.iter().all(|&v| v == 128));
}

#[test]
fn progressive_end_of_band_runs_cannot_multiply_the_work() {
    // Progressive 4096² grey: a DC scan, then AC scans that each cover every block with
    // end-of-band runs of 16384 blocks (a 1-bit code and 14 zero bits: 30 bytes a scan).
    let dc = vec![0u8; 4096 * 4096 / 64 / 8];
    let mut jpeg = Jpeg::new()
        .dqt()
        .dht(0xE0)
        .frame(0xC2, 4096, 4096, &[1])
        .scan(0, 0, 0, &dc);
    for _ in 0..900 {
        jpeg = jpeg.scan(1, 63, 0, &[0u8; 31]);
    }
    let bytes = jpeg.end();
    println!("{} bytes", bytes.len());
    refused(
        timed(&bytes, &ImageLimits::default(), Duration::from_secs(5)),
        "times the image's coefficients",
    );
}

#[test]
fn bad_tables_and_scan_parameters_fail_cleanly() {
    let base = || Jpeg::new().dqt().dht(0x00);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "Huffman counts overflowing 16 bits",
            Jpeg::new()
                .dqt()
                .segment(0xC4, &{
                    let mut p = vec![0x00];
                    p.extend([255u8; 16]);
                    p.extend(vec![0u8; 255 * 16]);
                    p
                })
                .frame(0xC0, 16, 16, &[1])
                .scan(0, 63, 0, &[0; 8])
                .end(),
        ),
        (
            "duplicate component ids",
            base()
                .frame(0xC0, 16, 16, &[1, 1, 1])
                .scan(0, 63, 0, &[0; 8])
                .end(),
        ),
        (
            "progressive Se past 63",
            base()
                .frame(0xC2, 16, 16, &[1])
                .scan(1, 80, 0, &[0; 8])
                .end(),
        ),
        (
            "progressive Ss after Se",
            base()
                .frame(0xC2, 16, 16, &[1])
                .scan(9, 3, 0, &[0; 8])
                .end(),
        ),
        (
            "progressive Al 15",
            base()
                .frame(0xC2, 16, 16, &[1])
                .scan(0, 0, 0x0F, &[0; 8])
                .end(),
        ),
        (
            "progressive Ah 15 refining nothing",
            base()
                .frame(0xC2, 16, 16, &[1])
                .scan(1, 5, 0xF0, &[0; 8])
                .end(),
        ),
        (
            "baseline with a progressive band",
            base()
                .frame(0xC0, 16, 16, &[1])
                .scan(1, 5, 0, &[0; 8])
                .end(),
        ),
        (
            "65535² frame",
            base()
                .frame(0xC0, 65535, 65535, &[1])
                .scan(0, 63, 0, &[0; 8])
                .end(),
        ),
        ("0×16 frame", base().frame(0xC0, 0, 16, &[1]).end()),
        ("16×0 frame", base().frame(0xC0, 16, 0, &[1]).end()),
        ("no frame", base().scan(0, 63, 0, &[0; 8]).end()),
    ];
    for (what, bytes) in cases {
        match timed(&bytes, &server_limits(), Duration::from_secs(1)) {
            Ok(img) => assert_eq!(img.data.len(), img.width * img.height * 3, "{what}"),
            Err(e) => assert!(e.to_string().contains("image"), "{what}: {e}"),
        }
    }
}
