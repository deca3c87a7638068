//! Nothing aborts and nothing is silently wrong: absurd sizes are refused before anything is
//! allocated (with the setting, the estimate and the memory available), the memory estimate is a
//! lower bound of what `memory` measures, NaN and infinities in loaded tensors are errors naming
//! the tensor and index (unless `--allow-non-finite`), training stops when a parameter becomes
//! non-finite while the loss stays finite, keeping the last checkpoint, and `verify` fails when a
//! check compared nothing.

mod common;

use std::path::{Path, PathBuf};

use common::{failed, ok, revsnn, scratch};
use revsnn::checkpoint::{self, TensorData};
use revsnn::footprint::Footprint;
use revsnn::model::reversible::Storage;
use revsnn::spec::ModelSpec;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/parity")
        .join(name)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The exit code, asserting the process exited (no signal: no abort, no OOM kill).
fn exit_code(output: &std::process::Output) -> i32 {
    output.status.code().unwrap_or_else(|| {
        panic!(
            "killed by a signal: {:?}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn absurd_sizes_are_refused_before_allocating_with_what_to_do() {
    let dir = scratch("sizes");
    let planes = write(
        &dir,
        "planes.json",
        r#"{"arch":"revsresnet","layers":[1,1,1,1],"planes":[4,8,8,16000000000],"num_classes":10,"time_steps":2,"in_channels":3,"img_size":16}"#,
    );
    let image = write(
        &dir,
        "image.json",
        r#"{"arch":"revsresnet","layers":[1,1,1,1],"planes":[4,8,8,16],"num_classes":10,"time_steps":2,"in_channels":3,"img_size":1000000}"#,
    );
    let depth = write(
        &dir,
        "depth.json",
        r#"{"arch":"revsformer","depth":1000000000,"dim":64,"heads":8,"mlp_ratio":4,"patch_size":4,"num_classes":10,"time_steps":2,"in_channels":3,"img_size":16}"#,
    );
    let out = dir.join("run").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["summary", "--spec", &planes],
            "planes 16000000000 is above the limit 65536",
        ),
        (
            vec!["verify", "--spec", &planes],
            "planes 16000000000 is above the limit",
        ),
        (
            vec!["summary", "--spec", &image],
            "img_size 1000000 is above the limit 8192",
        ),
        (
            vec!["verify", "--spec", &image],
            "img_size 1000000 is above the limit",
        ),
        (
            vec!["summary", "--spec", &depth],
            "depth 1000000000 is above the limit 4096",
        ),
        (
            vec!["verify", "--spec", &depth],
            "depth 1000000000 is above the limit",
        ),
        (
            vec!["memory", "--model", "revsresnet21", "--batch", "100000000"],
            "--batch 100000000 (time steps 4): one training step needs at least",
        ),
        (
            vec!["bench", "--model", "revsresnet21", "--batch", "50000000"],
            "--batch 50000000 (time steps 4): one training step needs at least",
        ),
        (
            vec![
                "train",
                "--batch",
                "10000000",
                "--train-samples",
                "10000000",
                "--out",
                &out,
            ],
            "--batch 10000000 (time steps 2): one training step needs at least",
        ),
        (
            vec![
                "train",
                "--eval-batch",
                "100000000",
                "--test-samples",
                "100000000",
                "--out",
                &out,
            ],
            "--eval-batch 100000000: one evaluation batch needs at least",
        ),
        (
            vec!["train", "--time-steps", "1000000000", "--out", &out],
            "time_steps 1000000000 is above the limit 10000",
        ),
        (
            vec!["train", "--workers", "1000000", "--out", &out],
            "loader.workers = 1000000: expected an integer from 1 to 256",
        ),
        (
            vec!["train", "--prefetch", "1000000000", "--out", &out],
            "loader.prefetch = 1000000000: expected an integer from 1 to 64",
        ),
        (
            vec![
                "bench",
                "--model",
                "revsresnet21",
                "--batch",
                "1",
                "--threads",
                "100000",
            ],
            "--threads 100000: give 1 to 1024",
        ),
        (
            vec![
                "verify",
                "--model",
                "revsresnet21",
                "--time-steps",
                "5000",
                "--batch",
                "100000",
            ],
            "is available on cpu-f64",
        ),
    ];
    for (args, expected) in cases {
        let output = revsnn(&args);
        assert_eq!(exit_code(&output), 1, "{args:?}");
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(message.contains(expected), "{args:?}: {message}");
        if message.contains("needs at least") {
            let flag = if args.contains(&"--eval-batch") {
                "--eval-batch"
            } else {
                "--batch"
            };
            assert!(
                message.contains("a lower bound") && message.contains(&format!("Lower {flag}")),
                "{args:?}: {message}"
            );
        }
    }
    assert!(!dir.join("run").exists(), "a refused run leaves no folder");
}

#[test]
fn the_estimate_is_a_lower_bound_of_the_measured_step() {
    for case in [
        "revsresnet",
        "msresnet",
        "revsformer",
        "spikingformer",
        "revsresnet-dvs",
    ] {
        let path = fixture(&format!("{case}.spec.json"));
        let spec = ModelSpec::read(&path).unwrap();
        for (storage, flags) in [
            (Storage::Reversible, vec![]),
            (Storage::StoredActivations, vec!["--bptt"]),
        ] {
            let mut args = vec![
                "memory",
                "--spec",
                path.to_str().unwrap(),
                "--batch",
                "16",
                "--json",
            ];
            args.extend(flags);
            let report: serde_json::Value =
                serde_json::from_slice(&ok(revsnn(&args)).stdout).unwrap();
            let measured = report["per_batch"][0]["peak_bytes"].as_u64().unwrap() as u128;
            let estimate = Footprint::of(&spec, 16, 4, storage).step_bytes;
            assert!(
                estimate <= measured && estimate * 20 >= measured,
                "{case} {storage:?}: estimate {estimate} against measured {measured}"
            );
        }
    }
}

/// A copy of the safetensors file `from` at `to` with element `index` of tensor `name` set to
/// `value`.
fn poisoned(from: &Path, to: &Path, name: &str, index: usize, value: f64) {
    let mut tensors = checkpoint::read(from).unwrap();
    let (_, tensor) = tensors.iter_mut().find(|(n, _)| n == name).unwrap();
    match &mut tensor.data {
        TensorData::F32(values) => values[index] = value as f32,
        TensorData::F64(values) => values[index] = value,
        TensorData::I64(_) => panic!("{name} is an integer tensor"),
    }
    checkpoint::write(to, &tensors).unwrap();
}

const TINY: &str = r#"{"arch": "revsresnet", "layers": [1,1,1,1], "planes": [2,4,4,4],
  "num_classes": 10, "time_steps": 2, "in_channels": 3, "img_size": 16}"#;

#[test]
fn eval_and_grad_refuse_non_finite_weights_unless_allowed() {
    let dir = scratch("nan-load");
    let tiny = write(&dir, "tiny.json", TINY);
    let run = dir.join("run").display().to_string();
    ok(revsnn(&[
        "train",
        "--device",
        "cpu",
        "--spec",
        &tiny,
        "--out",
        &run,
        "--batch",
        "8",
        "--train-samples",
        "32",
        "--test-samples",
        "16",
        "--epochs",
        "1",
        "--quiet",
    ]));
    let checkpoint = dir.join("nan.safetensors");
    let last = Path::new(&run).join("last.safetensors");
    poisoned(&last, &checkpoint, "bn1.bias", 1, f64::NAN);
    let checkpoint = checkpoint.to_str().unwrap();
    let eval = [
        "eval",
        "--device",
        "cpu",
        "--checkpoint",
        checkpoint,
        "--spec",
        &tiny,
        "--test-samples",
        "16",
    ];
    let message = failed(revsnn(&eval));
    assert!(
        message.contains("nan.safetensors: tensor bn1.bias holds NaN at index [1]")
            && message.contains("--allow-non-finite"),
        "{message}"
    );
    ok(revsnn(&[&eval[..], &["--allow-non-finite"]].concat()));

    let weights = dir.join("grad-nan.safetensors");
    let spec = fixture("revsresnet.spec.json");
    let spec = spec.to_str().unwrap();
    poisoned(
        &fixture("revsresnet.weights.safetensors"),
        &weights,
        "bn1.bias",
        1,
        f64::INFINITY,
    );
    let weights = weights.to_str().unwrap();
    let input = fixture("revsresnet.input.safetensors");
    let output = dir.join("grad.safetensors").display().to_string();
    let grad = [
        "grad",
        "--spec",
        spec,
        "--weights",
        weights,
        "--input",
        input.to_str().unwrap(),
        "--output",
        &output,
    ];
    assert!(failed(revsnn(&grad)).contains("tensor bn1.bias holds inf at index [1]"));
    ok(revsnn(&[&grad[..], &["--allow-non-finite"]].concat()));

    let images = dir.join("inf-input.safetensors");
    poisoned(&input, &images, "images", 7, f64::NEG_INFINITY);
    let fixture_weights = fixture("revsresnet.weights.safetensors");
    let message = failed(revsnn(&[
        "grad",
        "--spec",
        spec,
        "--weights",
        fixture_weights.to_str().unwrap(),
        "--input",
        images.to_str().unwrap(),
        "--output",
        &output,
    ]));
    assert!(
        message.contains("tensor images holds -inf at index [0, 0, 0, 7]"),
        "{message}"
    );
}

#[test]
fn a_parameter_turning_nan_stops_training_and_keeps_the_last_checkpoint() {
    let dir = scratch("nan-train");
    let spec = write(&dir, "tiny.json", TINY);
    let out = dir.join("run");
    let out_arg = out.display().to_string();
    let train = |epochs: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--device",
            "cpu",
            "--spec",
            &spec,
            "--out",
            &out_arg,
            "--batch",
            "8",
            "--train-samples",
            "32",
            "--test-samples",
            "16",
            "--seed",
            "5",
            "--quiet",
            "--epochs",
            epochs,
        ];
        args.extend(extra);
        revsnn(&args)
    };
    ok(train("2", &["--stop-after", "1"]));
    // A NaN running mean: training-mode BatchNorm normalises with the batch's statistics, so
    // the loss stays finite while the NaN spreads through the running statistics.
    let last = out.join("last.safetensors");
    poisoned(&last, &last, "bn1.running_mean", 0, f64::NAN);
    let poisoned_bytes = std::fs::read(&last).unwrap();

    let message = failed(train("2", &["--resume"]));
    assert!(
        message.contains("last.safetensors: tensor bn1.running_mean holds NaN at index [0]"),
        "{message}"
    );
    let message = failed(train("2", &["--resume", "--allow-non-finite"]));
    assert!(
        message.contains("became NaN or infinite after the optimizer step at epoch 2, step 1")
            && message.contains("last good checkpoint, of epoch 1, is kept"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(&last).unwrap(),
        poisoned_bytes,
        "the checkpoint is untouched"
    );
}

#[test]
fn verify_fails_when_a_check_compared_nothing() {
    let spec = fixture("revsresnet.spec.json");
    let spec = spec.to_str().unwrap();
    let output = revsnn(&["verify", "--spec", spec, "--fd-samples", "0", "--json"]);
    assert_eq!(exit_code(&output), 1);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["passed"], false, "{report}");
    assert_eq!(report["fd_coordinates"], 0);
    let skipped = report["skipped_checks"].as_array().unwrap();
    assert!(
        skipped.len() == 1
            && skipped[0]
                .as_str()
                .unwrap()
                .contains("finite differences: 0 coordinates checked"),
        "{report}"
    );
    let table = revsnn(&["verify", "--spec", spec, "--fd-samples", "0"]);
    assert_eq!(exit_code(&table), 1);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("not run: finite differences") && text.contains("FAILED"),
        "{text}"
    );
    ok(revsnn(&["verify", "--spec", spec, "--fd-samples", "2"]));
}
