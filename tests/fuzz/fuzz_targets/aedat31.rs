//! The `aedat31` fuzz target: [`revsnn::fuzzing::aedat31`] on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| revsnn::fuzzing::aedat31(bytes));
