//! Helpers shared by the end-to-end test binaries that run the `revsnn` binary (each binary uses
//! the ones it needs).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the `revsnn` binary with `args`.
pub fn revsnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_revsnn"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// A fresh, empty folder under the temporary directory, private to this test binary, process and
/// `name`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "revsnn-{}-{}-{name}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `output`, after asserting the command succeeded (printing its output when it did not).
pub fn ok(output: Output) -> Output {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The standard error of a command that must have failed.
pub fn failed(output: Output) -> String {
    assert!(!output.status.success(), "the command should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}
