//! Helpers shared by the end-to-end test binaries that run the `revsnn` binary (each binary uses
//! the ones it needs).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
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

/// The last line of a run folder's `metrics.jsonl`.
pub fn last_metrics(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

/// The `f32` tensors of a run folder's `last.safetensors` by name, in name order, widened (the
/// running statistics left out when `parameters_only`).
pub fn f32_tensors(dir: &Path, parameters_only: bool) -> Vec<(String, Vec<f64>)> {
    let bytes = std::fs::read(dir.join("last.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut named: Vec<(String, Vec<f64>)> = tensors
        .tensors()
        .into_iter()
        .filter(|(name, view)| {
            view.dtype() == safetensors::Dtype::F32
                && !(parameters_only && name.contains("running_"))
        })
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect();
            (name, values)
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}
