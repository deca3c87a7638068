//! fp16 training with its loss scaler as a user runs it, on a device named by the caller: the CPU
//! reference (tests/precision.rs) and CUDA (tests/gpu_precision.rs, on the emulator in CI and on a
//! GPU in gpu/check.sh) go through the same scenarios.

use std::path::Path;
use std::process::Output;

use revsnn::checkpoint::{self, TensorData};
use serde_json::Value;

use super::{TINY_REVSRESNET, failed, json_lines, ok, revsnn, scratch, small_train_args};

/// `revsnn train` of the spec file `spec` into `out` on `device` ([`small_train_args`]), then
/// `extra`.
fn train(device: &str, spec: &Path, out: &Path, extra: &[&str]) -> Output {
    let args = [&["--device", device][..], extra].concat();
    revsnn(&small_train_args(&spec.display().to_string(), out, &args))
}

/// The keys of a checkpoint, each with whether it is stored as f32.
fn stored_as_f32(path: &Path) -> Vec<(String, bool)> {
    checkpoint::read(path)
        .unwrap()
        .into_iter()
        .map(|(key, tensor)| (key, !matches!(tensor.data, TensorData::F64(_))))
        .collect()
}

/// Two fp16 epochs straight equal one plus `--resume` byte for byte, the loss scaler's state
/// included; the scale grows only after 2000 clean steps; the checkpoint holds the f32 keys of
/// an f32 run.
pub fn resumes_bit_for_bit_with_its_loss_scaler(device: &str) {
    let dir = scratch(&format!("fp16-resume-{device}"));
    let spec = dir.join("tiny.json");
    std::fs::write(&spec, TINY_REVSRESNET).unwrap();
    let (straight, resumed, plain) = (dir.join("straight"), dir.join("resumed"), dir.join("f32"));
    let fp16 = ["--precision", "fp16", "--epochs", "2"];
    ok(train(device, &spec, &straight, &fp16));
    let first = [&fp16[..], &["--stop-after", "1"]].concat();
    ok(train(device, &spec, &resumed, &first));
    ok(train(device, &spec, &resumed, &["--resume"]));
    ok(train(device, &spec, &plain, &["--epochs", "1"]));
    for file in [
        "last.safetensors",
        "last.optimizer.safetensors",
        "last.json",
    ] {
        let read = |dir: &Path| std::fs::read(dir.join(file)).unwrap();
        assert_eq!(
            read(&straight),
            read(&resumed),
            "{file} resumed bit for bit on {device}"
        );
    }
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("last.json")).unwrap())
            .unwrap();
    assert_eq!(state["loss_scaler"]["scale"], 65536.0, "{state}");
    assert_eq!(
        state["loss_scaler"]["growth_tracker"], 8,
        "two epochs of 4 clean steps"
    );
    // On CUDA a step waits for the device three times: the scaler's read of the gradients'
    // non-finite count, then the loss and logits, then the parameters' non-finite count
    // (docs/ARCHITECTURE.md, host-device round trips); the CPU has none to count.
    let waits = std::fs::read_to_string(straight.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["host_waits_per_step"].clone())
        .collect::<Vec<_>>();
    let expected: Value = if device == "cuda" {
        3.0.into()
    } else {
        Value::Null
    };
    assert_eq!(
        waits,
        [expected.clone(), expected],
        "host waits per step on {device}"
    );
    let keys = stored_as_f32(&straight.join("last.safetensors"));
    assert_eq!(keys, stored_as_f32(&plain.join("last.safetensors")));
    assert!(keys.iter().all(|(_, f32)| *f32), "{keys:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run resumed with a loss scale of 2^24 (injected into last.json) skips the steps whose
/// scaled gradients overflow fp16, halving the scale at each, trains on after them, and skips
/// fewer steps in the next epoch.
pub fn skips_the_steps_whose_gradients_overflow_and_recovers(device: &str) {
    let dir = scratch(&format!("fp16-overflow-{device}"));
    let spec = dir.join("tiny.json");
    std::fs::write(&spec, TINY_REVSRESNET).unwrap();
    let run = dir.join("run");
    let samples = [
        "--train-samples",
        "64",
        "--precision",
        "fp16",
        "--epochs",
        "3",
    ];
    let first = [&samples[..], &["--stop-after", "1"]].concat();
    ok(train(device, &spec, &run, &first));
    // A loss scale of 2^24 makes the scaled loss gradients overflow fp16's largest value
    // (65504) in the GEMM operands: each such step is skipped and halves the scale.
    let injected = 2f64.powi(24);
    let state_path = run.join("last.json");
    let mut state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["loss_scaler"]["scale"] = Value::from(injected);
    std::fs::write(&state_path, state.to_string()).unwrap();
    let before = checkpoint::read(&run.join("last.safetensors")).unwrap();
    let resume = ["--resume", "--train-samples", "64"];
    let second = [&resume[..], &["--stop-after", "1"]].concat();
    ok(train(device, &spec, &run, &second));
    let lines = json_lines(&run.join("metrics.jsonl"));
    let skipped = lines[1]["skipped_steps"].as_u64().unwrap();
    assert!(
        (1..8).contains(&skipped),
        "of 8 steps on {device}, {skipped} skipped: {}",
        lines[1]
    );
    assert_eq!(
        lines[1]["loss_scale"].as_f64().unwrap(),
        injected / 2f64.powi(skipped as i32),
        "each skip halves the scale: {}",
        lines[1]
    );
    let after = checkpoint::read(&run.join("last.safetensors")).unwrap();
    assert_ne!(before, after, "the steps after the skips trained");
    ok(train(device, &spec, &run, &resume));
    // The scale the skips left is the largest that fitted the steps so far; as the gradients
    // change, the next epoch may halve it once more (GradScaler does the same; on an H200 one
    // step of the next epoch was skipped), but not as often as the overflowing epoch did.
    let last = &json_lines(&run.join("metrics.jsonl"))[2];
    let skipped_after = last["skipped_steps"].as_u64().unwrap();
    assert!(skipped_after < skipped, "recovered: {last}");
    assert!(last["train_loss"].as_f64().unwrap().is_finite());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The files of a run folder that hold what the run has done.
const SAVED_FILES: [&str; 4] = [
    "last.safetensors",
    "last.optimizer.safetensors",
    "last.json",
    "metrics.jsonl",
];

/// A run whose gradients overflow fp16 even unscaled stops when the loss scale falls below 1,
/// saying so, and keeps its checkpoint, optimizer state, last.json and metrics as they were.
/// The run is resumed with a scale of 1 and weights a million times larger (injected into
/// last.json and last.safetensors): fp16 operands of 10^5 and more overflow, so the first
/// step's gradients do too, and the scale halves to 0.5.
pub fn stops_when_the_loss_scale_falls_below_one(device: &str) {
    let dir = scratch(&format!("fp16-collapse-{device}"));
    let spec = dir.join("tiny.json");
    std::fs::write(&spec, TINY_REVSRESNET).unwrap();
    let run = dir.join("run");
    let fp16 = ["--precision", "fp16", "--epochs", "2", "--stop-after", "1"];
    ok(train(device, &spec, &run, &fp16));
    let state_path = run.join("last.json");
    let mut state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["loss_scaler"]["scale"] = Value::from(1.0);
    std::fs::write(&state_path, state.to_string()).unwrap();
    let weights = run.join("last.safetensors");
    let mut tensors = checkpoint::read(&weights).unwrap();
    for (key, tensor) in &mut tensors {
        if !key.ends_with(".weight") {
            continue;
        }
        if let TensorData::F32(values) = &mut tensor.data {
            values.iter_mut().for_each(|v| *v *= 1e6);
        }
    }
    checkpoint::write(&weights, &tensors).unwrap();
    let saved = |run: &Path| SAVED_FILES.map(|file| std::fs::read(run.join(file)).unwrap());
    let kept = saved(&run);

    let said = failed(train(device, &spec, &run, &["--resume"]));
    assert!(
        said.contains("the fp16 loss scale fell to 0.5 (below 1)")
            && said.contains("last good checkpoint is intact"),
        "on {device}: {said}"
    );
    assert!(saved(&run) == kept, "the saved run changed on {device}");
    let _ = std::fs::remove_dir_all(&dir);
}
