//! The `config_toml` fuzz target: [`revsnn::fuzzing::config_toml`] on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| revsnn::fuzzing::config_toml(bytes));
