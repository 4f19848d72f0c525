//! This crate's JPEG decoder, compared with the `image` crate's where both decode.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vlm_pipeline::fuzzing::jpeg(data));
