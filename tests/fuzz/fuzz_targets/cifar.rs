//! The `cifar` fuzz target: [`revsnn::fuzzing::cifar`] on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| revsnn::fuzzing::cifar(bytes));
