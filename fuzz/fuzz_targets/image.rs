//! Image decoding (every format) within limits, then preprocessing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vlm_pipeline::fuzzing::image(data));
