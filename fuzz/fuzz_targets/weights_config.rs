//! A release's `config.json` and a safetensors file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vlm_pipeline::fuzzing::weights_and_config(data));
