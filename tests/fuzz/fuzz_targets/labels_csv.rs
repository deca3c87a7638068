//! The `labels_csv` fuzz target: [`revsnn::fuzzing::labels_csv`] on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| revsnn::fuzzing::labels_csv(bytes));
