//! JPEG decoding against Pillow (`cargo xtask golden --only jpeg` → xtask/python/jpeg_golden.py):
//! the reference reads images with Pillow, which decodes JPEGs through libjpeg-turbo, so every
//! pixel must be the same byte. The `image` crate's own decoder misses on a few percent of the
//! pixels (up to 4 levels), which is why the pipeline decodes JPEGs itself.

mod common;

use std::path::PathBuf;

use common::fixtures;
use vlm_pipeline::{Weights, image};

/// The 15 JPEGs of `fixtures/DIR` and Pillow's decoded bytes of each (`decoded.safetensors`),
/// by name: (path, `[height, width, 3]`, bytes).
fn pillow_decoded(dir: &str) -> Vec<(String, PathBuf, Vec<usize>, Vec<i64>)> {
    let dir = fixtures().join(dir);
    let reference = Weights::open(&dir.join("decoded.safetensors")).unwrap();
    let mut names = reference.names();
    names.sort();
    assert_eq!(names.len(), 15, "fixture set changed: {names:?}");
    names
        .into_iter()
        .map(|name| {
            let shape = reference.shape(name).unwrap().to_vec();
            let bytes = reference
                .get(name)
                .unwrap()
                .convert::<i64>()
                .into_vec::<i64>()
                .unwrap();
            (name.to_string(), dir.join(name), shape, bytes)
        })
        .collect()
}

/// How many of `got`'s bytes differ from `expected`'s.
fn differing(got: &[u8], expected: &[i64]) -> usize {
    got.iter()
        .zip(expected)
        .filter(|(g, e)| **g as i64 != **e)
        .count()
}

#[test]
fn jpegs_decode_to_pillows_pixels() {
    let (mut failures, mut stock_misses) = (Vec::new(), 0);
    for (name, path, shape, expected) in pillow_decoded("jpeg") {
        let got = image::load(&path).unwrap();
        assert_eq!([got.height, got.width, 3], shape[..], "{name}: size");
        let differ = differing(&got.data, &expected);
        let worst = got
            .data
            .iter()
            .zip(&expected)
            .map(|(g, e)| (*g as i64 - e).abs())
            .max()
            .unwrap();
        println!(
            "{name}: {differ} of {} bytes differ (max {worst})",
            expected.len()
        );
        if differ > 0 {
            failures.push(format!("{name}: {differ} bytes differ, max {worst}"));
        }
        // The `image` crate's decoder alone, to show these fixtures tell the two apart.
        let stock = ::image::open(&path).unwrap().to_rgb8().into_raw();
        if stock.iter().zip(&expected).any(|(s, e)| *s as i64 != *e) {
            stock_misses += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!("the image crate's own decoder misses Pillow's bytes on {stock_misses} of 15");
    assert!(
        stock_misses >= 10,
        "only {stock_misses} fixtures tell decoders apart"
    );
}

/// A last scan that runs out of data (cut, then EOI) decodes as libjpeg decodes it: the unit
/// being decoded completed with zero bits, the rest as earlier scans left it
/// (`cargo xtask golden --only jpeg-cut` → xtask/python/jpeg_cut_golden.py).
#[test]
fn cut_jpegs_decode_to_pillows_pixels() {
    let mut failures = Vec::new();
    for (name, path, shape, expected) in pillow_decoded("jpeg/cut") {
        let got = image::load(&path).unwrap();
        assert_eq!([got.height, got.width, 3], shape[..], "{name}: size");
        let differ = differing(&got.data, &expected);
        println!("{name}: {differ} of {} bytes differ", expected.len());
        if differ > 0 || got.data.len() != expected.len() {
            failures.push(format!("{name}: {differ} bytes differ"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Cut and damaged JPEGs, every fixture, give a decoded image or a clear error, never a panic.
#[test]
fn damaged_jpegs_fail_cleanly() {
    let dir = fixtures().join("jpeg");
    let (mut decoded, mut refused) = (0, 0);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".jpg"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 15);
    for name in names {
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        assert!(image::decode(&bytes).is_ok(), "{name} intact");
        let mut cases: Vec<Vec<u8>> = (1..bytes.len())
            .step_by(97)
            .map(|n| bytes[..n].to_vec())
            .collect();
        for at in (2..bytes.len()).step_by(53) {
            for value in [0x00, 0xFF, 0x5A] {
                let mut damaged = bytes.clone();
                damaged[at] = value;
                cases.push(damaged);
            }
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            cases.push(flipped);
        }
        for case in cases {
            match image::decode(&case) {
                Ok(img) => {
                    assert_eq!(img.data.len(), img.width * img.height * 3);
                    decoded += 1;
                }
                Err(e) => {
                    assert!(e.to_string().contains("image"), "{e}");
                    refused += 1;
                }
            }
        }
    }
    println!("{decoded} damaged files decoded, {refused} refused");
    assert!(decoded > 0 && refused > 0);
}
