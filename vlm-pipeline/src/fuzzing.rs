//! The bodies of the `fuzz/` targets, as plain functions: `cargo fuzz` drives them with
//! sanitizers, and `cargo test` replays their seed corpora and findings on stable
//! (`tests/fuzz_corpora.rs`). Each returns quietly for any input, refused or not, and panics
//! only on a bug: a crash, or a broken invariant it asserts.

use std::io::Write;
use std::path::Path;

use image::ImageDecoder;

use crate::config::{AspectRatio, FastVlmConfig};
use crate::image::{ImageLimits, decode_with, prepare, preprocess};
use crate::jpeg::{self, Decoded};
use crate::weights::Weights;
use crate::zoo::{UnpackLimits, unzip};

/// Small limits keep each run fast and within the fuzzer's memory cap.
fn limits() -> ImageLimits {
    ImageLimits::new(1 << 20, 2048)
}

/// This crate's JPEG decoder on `data`, compared with the `image` crate's where both decode:
/// the same size, and RGB of that size.
pub fn jpeg(data: &[u8]) {
    let limits = limits();
    let ours = jpeg::decode(data, limits.max_pixels, limits.max_side);
    let Ok(Decoded::Rgb {
        width,
        height,
        data: rgb,
    }) = ours
    else {
        return;
    };
    assert_eq!(rgb.len(), width * height * 3);
    assert!(width > 0 && height > 0);
    let mut reader =
        image::ImageReader::with_format(std::io::Cursor::new(data), image::ImageFormat::Jpeg);
    let mut stock = image::Limits::default();
    stock.max_image_width = Some(limits.max_side);
    stock.max_image_height = Some(limits.max_side);
    stock.max_alloc = Some(64 << 20);
    reader.limits(stock);
    let Ok(decoder) = reader.into_decoder() else {
        return;
    };
    let (w, h) = decoder.dimensions();
    if image::DynamicImage::from_decoder(decoder).is_ok() {
        assert_eq!(
            (w as usize, h as usize),
            (width, height),
            "the decoders disagree on the size"
        );
    }
}

/// The pipeline's image entry point and preprocessing: whatever decodes within the limits
/// preprocesses to the model's input, values in [0, 1], and preparing first changes nothing.
pub fn image(data: &[u8]) {
    let Ok(img) = decode_with(data, &limits()) else {
        return;
    };
    assert_eq!(img.data.len(), img.width * img.height * 3);
    for (size, aspect) in [(64, AspectRatio::Pad), (48, AspectRatio::CenterCrop)] {
        let planes = preprocess(&img, size, aspect);
        assert_eq!(planes.len(), 3 * size * size);
        assert!(planes.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(
            preprocess(&prepare(&img, size, aspect), size, aspect),
            planes
        );
    }
}

/// A release's `config.json` and a safetensors file: `data` is a little-endian `u16` length,
/// that many bytes of config, and the safetensors bytes. Both parse or are refused; every
/// tensor of an opened file reads back with as many values as its shape says.
pub fn weights_and_config(data: &[u8]) {
    let (config, tensors) = match data {
        [a, b, rest @ ..] => rest.split_at((u16::from_le_bytes([*a, *b]) as usize).min(rest.len())),
        _ => return,
    };
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(config) {
        // As a release's config.json alone, and as its preprocessor_config.json too.
        let _ = FastVlmConfig::from_json(&json, None);
        let _ = FastVlmConfig::from_json(&json, Some(&json));
    }
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let path = dir.path().join("model.safetensors");
    if std::fs::write(&path, tensors).is_err() {
        return;
    }
    let Ok(weights) = Weights::open(dir.path()) else {
        return;
    };
    for name in weights.names() {
        let elements: usize = weights.shape(name).expect("listed").iter().product();
        let data = weights.get(name).expect("listed");
        // Types the loader does not convert come back as their raw bytes.
        if data.dtype != burn::tensor::DType::U8 {
            assert_eq!(data.num_elements(), elements, "{name}");
        }
    }
}

/// Unpacking a download: every path created stays under the target directory, no symbolic
/// link is created, and the files stay within the limits.
pub fn unpack(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let zip = dir.path().join("archive.zip");
    let Ok(mut file) = std::fs::File::create(&zip) else {
        return;
    };
    if file.write_all(data).is_err() {
        return;
    }
    drop(file);
    let into = dir.path().join("into");
    let limits = UnpackLimits {
        max_bytes: 1 << 20,
        max_entries: 64,
    };
    let _ = unzip(&zip, &into, &limits);
    let (mut bytes, mut entries) = (0u64, 0usize);
    for (path, meta) in walk(dir.path()) {
        assert!(
            !meta.file_type().is_symlink(),
            "{} is a link",
            path.display()
        );
        if path == zip || path == into {
            continue;
        }
        assert!(path.starts_with(&into), "{} is outside", path.display());
        entries += 1;
        bytes += if meta.is_file() { meta.len() } else { 0 };
    }
    assert!(entries <= limits.max_entries, "{entries} entries");
    assert!(bytes <= limits.max_bytes, "{bytes} bytes");
}

/// Every path under `dir` (not following links), with its metadata.
fn walk(dir: &Path) -> Vec<(std::path::PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.push((path, meta));
        }
    }
    out
}

/// Appends a PNG chunk (length, type, data, CRC) to `out`: what the hostile-input tests and
/// seeds build their PNGs from.
pub fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(kind);
    out.extend(data);
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend(crc.sum().to_be_bytes());
}

/// A 1-bit grey PNG of `width × height` black pixels, its rows deflated (32 KB for
/// 1 × 16,777,216: the image that once aborted the server).
pub fn png_1bit(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([1, 0, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    let row = 1 + (width as usize).div_ceil(8);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; row * 4096];
    let mut left = row * height as usize;
    while left > 0 {
        let n = left.min(zeros.len());
        // Writing into a Vec cannot fail.
        let _ = z.write_all(&zeros[..n]);
        left -= n;
    }
    png_chunk(&mut out, b"IDAT", &z.finish().unwrap_or_default());
    png_chunk(&mut out, b"IEND", &[]);
    out
}
