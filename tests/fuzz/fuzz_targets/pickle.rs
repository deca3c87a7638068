//! The `pickle` fuzz target: [`revsnn::fuzzing::pickle`] on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| revsnn::fuzzing::pickle(bytes));
