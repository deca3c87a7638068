//! The `spec_json` fuzz target: [`revsnn::fuzzing::spec_json`] on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| revsnn::fuzzing::spec_json(bytes));
