//! Helpers shared by the end-to-end test binaries that run the `revsnn` binary (each binary uses
//! the ones it needs); [`gemm`], the GEMM ops run on any backend for the GPU precision tests;
//! [`fp16`], the loss scaler's training scenarios on any device; [`layer_pass`], a layer's pass
//! as bits and its device bytes; [`neurons`], the neuron configurations the neuron tests sweep.
#![allow(dead_code)]

pub mod fp16;
pub mod gemm;
pub mod layer_pass;
pub mod neurons;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Runs the `revsnn` binary with `args`.
pub fn revsnn(args: &[impl AsRef<OsStr>]) -> Output {
    revsnn_command(args).output().expect("the binary runs")
}

/// The `revsnn` binary with `args`, to run or spawn: the one `REVSNN_BIN` names where it is set
/// (gpu/check.sh runs the test binaries on a machine without the build tree, beside a copy of
/// the binary), else the one Cargo built with this test.
pub fn revsnn_command(args: &[impl AsRef<OsStr>]) -> Command {
    let binary = std::env::var_os("REVSNN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_revsnn")));
    let mut command = Command::new(binary);
    command.args(args);
    command
}

/// The arguments of a small `revsnn train` of the spec file `spec` into `out`: batch 8, 32
/// training and 16 test samples, seed 5, on the CPU (whatever the machine has), quiet; then
/// `extra`, whose options replace these defaults.
pub fn small_train_args(spec: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let defaults = [
        ("--batch", "8"),
        ("--train-samples", "32"),
        ("--test-samples", "16"),
    ];
    train_args(spec, out, &defaults, extra)
}

/// `revsnn train --spec spec --out out --quiet`, then each of `defaults` and of seed 5 and the
/// CPU that `extra` does not set, then `extra`.
fn train_args(spec: &str, out: &Path, defaults: &[(&str, &str)], extra: &[&str]) -> Vec<String> {
    let out = out.display().to_string();
    let mut args = vec!["train", "--spec", spec, "--out", &out, "--quiet"];
    let always = [("--seed", "5"), ("--device", "cpu")];
    for &(option, value) in defaults.iter().chain(&always) {
        if !extra.contains(&option) {
            args.extend([option, value]);
        }
    }
    args.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// A tiny RevSResNet: 2 time steps, 16x16 images, 2 to 4 channels.
pub const TINY_REVSRESNET: &str = r#"{"arch": "revsresnet", "layers": [1,1,1,1],
  "planes": [2,4,4,4], "num_classes": 10, "time_steps": 2, "in_channels": 3, "img_size": 16}"#;

/// The arguments of `revsnn train` of [`TINY_REVSRESNET`] (its spec written beside `out`, as
/// `out.json`) into `out`: global batch 12, 48 training samples (4 steps an epoch), 24 test
/// samples, seed 5, on the CPU, quiet; then `extra`, whose options replace these defaults.
pub fn tiny_train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let spec = out.with_extension("json");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&spec, TINY_REVSRESNET).unwrap();
    let defaults = [
        ("--batch", "12"),
        ("--train-samples", "48"),
        ("--test-samples", "24"),
    ];
    train_args(&spec.display().to_string(), out, &defaults, extra)
}

/// Whether `python3` can import `module`.
pub fn python_imports(module: &str) -> bool {
    let probe = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output();
    probe.is_ok_and(|output| output.status.success())
}

/// The standard output of `python3 -c script args...`, after asserting it succeeded (its
/// standard error in the failure).
pub fn python(script: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
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

/// The JSON values of a file of one per line (metrics.jsonl).
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Waits until `file` exists (a run's first checkpoint), while `child` runs: fails when `child`
/// ends first or after `limit`.
pub fn wait_for_file(child: &mut Child, file: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !file.exists() {
        assert!(
            Instant::now() < deadline,
            "no {} after {limit:?}",
            file.display()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process ended before {} existed",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
