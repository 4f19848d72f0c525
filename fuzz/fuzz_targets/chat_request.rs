//! A chat request body through the parser and the prompt template.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vlm_server::fuzzing::chat_request(data));
