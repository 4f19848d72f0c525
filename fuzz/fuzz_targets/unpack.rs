//! Zip extraction: every created path under the target, within the limits.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vlm_pipeline::fuzzing::unpack(data));
