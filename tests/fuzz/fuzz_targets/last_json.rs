//! The `last_json` fuzz target: [`revsnn::fuzzing::last_json`] on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| revsnn::fuzzing::last_json(bytes));
