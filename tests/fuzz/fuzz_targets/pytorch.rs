//! The `pytorch` fuzz target: [`revsnn::fuzzing::pytorch`] on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| revsnn::fuzzing::pytorch(bytes));
