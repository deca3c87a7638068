//! The `safetensors` fuzz target: [`revsnn::fuzzing::safetensors`] on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| revsnn::fuzzing::safetensors(bytes));
