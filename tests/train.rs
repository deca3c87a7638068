//! `revsnn train`, `eval` and `bench` end to end on tiny specs: bit-for-bit resume, same-seed
//! determinism, metrics fields, a diverging run, bench's JSON and eval of a trained checkpoint.

mod common;

use common::{TINY_REVSRESNET, ok, revsnn, scratch, small_train_args};

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

const TINY_FORMER: &str = r#"{"arch": "revsformer", "num_classes": 10, "time_steps": 1,
  "in_channels": 3, "img_size": 16, "depth": 1, "dim": 16, "heads": 2, "mlp_ratio": 2,
  "patch_size": 4}"#;

fn spec_file(dir: &Path, text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("spec-{hash:016x}.json"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn train(spec: &str, out: &Path, extra: &[&str]) -> Output {
    revsnn(&small_train_args(spec, out, extra))
}

fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The metrics without the timing and memory fields.
fn deterministic(mut lines: Vec<Value>) -> Vec<Value> {
    for line in &mut lines {
        let object = line.as_object_mut().unwrap();
        for key in [
            "images_per_second",
            "epoch_seconds",
            "peak_memory_bytes",
            "loader_images_per_second_per_worker",
            "loader_wait_seconds",
        ] {
            object.remove(key);
        }
    }
    lines
}

fn bytes(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn resume_is_bit_for_bit_and_the_same_seed_repeats_the_run() {
    let dir = scratch("resume");
    for (name, text) in [("resnet", TINY_REVSRESNET), ("former", TINY_FORMER)] {
        let spec = spec_file(&dir, text);
        let straight = dir.join(format!("{name}-straight"));
        let again = dir.join(format!("{name}-again"));
        let resumed = dir.join(format!("{name}-resumed"));
        ok(train(&spec, &straight, &["--epochs", "2"]));
        ok(train(&spec, &again, &["--epochs", "2"]));
        let first = ok(train(
            &spec,
            &resumed,
            &["--epochs", "2", "--stop-after", "1"],
        ));
        assert_eq!(metrics(&resumed).len(), 1);
        let said = String::from_utf8_lossy(&first.stdout).into_owned();
        assert!(
            said.starts_with("stopped after epoch 1 of 2 (--stop-after)")
                && said.contains("--resume"),
            "{said}"
        );
        let rest = ok(train(&spec, &resumed, &["--resume"]));
        assert!(String::from_utf8_lossy(&rest.stdout).starts_with("done in"));
        for file in [
            "last.safetensors",
            "last.optimizer.safetensors",
            "best.safetensors",
        ] {
            assert_eq!(
                bytes(straight.join(file)),
                bytes(resumed.join(file)),
                "{name} {file} resumed"
            );
            assert_eq!(
                bytes(straight.join(file)),
                bytes(again.join(file)),
                "{name} {file} repeated"
            );
        }
        let lines = metrics(&straight);
        assert_eq!(lines.len(), 2);
        assert_eq!(
            deterministic(lines.clone()),
            deterministic(metrics(&resumed)),
            "{name}"
        );
        assert_eq!(
            deterministic(lines.clone()),
            deterministic(metrics(&again)),
            "{name}"
        );
        for line in &lines {
            for key in [
                "epoch",
                "train_loss",
                "train_acc1",
                "test_loss",
                "test_acc1",
                "test_acc5",
                "lr",
                "images_per_second",
                "peak_memory_bytes",
                "best_test_acc1",
            ] {
                assert!(line.get(key).is_some(), "{name}: {key} missing in {line}");
            }
            for key in ["train_acc1", "test_acc1", "test_acc5", "best_test_acc1"] {
                let value = line[key].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&value), "{key} = {value}");
            }
            assert!(line["peak_memory_bytes"].as_u64().unwrap() > 0);
            // 4 steps of the F and G recomputes of its 4 or 1 reversible blocks
            let recomputes = 4 * 2 * if name == "resnet" { 4 } else { 1 };
            assert_eq!(line["recomputes"], recomputes, "{name}");
            assert!(line["diverged_recomputes"].as_u64().unwrap() <= recomputes);
            assert_eq!(
                (&line["backend"], &line["device"]),
                (&"cpu".into(), &"cpu".into())
            );
        }
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(straight.join("last.json")).unwrap())
                .unwrap();
        assert_eq!(state["epochs_done"], 2);
        let shorter = train(&spec, &straight, &["--resume", "--epochs", "1"]);
        assert!(!shorter.status.success());
        let refusal = String::from_utf8_lossy(&shorter.stderr);
        assert!(
            refusal.contains("has done 2 epochs already; give --epochs 2 or more"),
            "{refusal}"
        );
        let none = train(&spec, &dir.join("none"), &["--stop-after", "0"]);
        let refusal = String::from_utf8_lossy(&none.stderr);
        assert!(
            refusal.contains("--stop-after 0 would train no epoch"),
            "{refusal}"
        );
        let png = bytes(straight.join("curves.png"));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `path`'s JSON, changed by `edit`, written back.
fn edit_json(path: &Path, edit: impl Fn(&mut Value)) {
    let mut value: Value = serde_json::from_slice(&bytes(path.to_path_buf())).unwrap();
    edit(&mut value);
    std::fs::write(path, value.to_string()).unwrap();
}

#[test]
fn a_run_resumes_on_another_device_and_each_epoch_records_its_own() {
    let dir = scratch("device");
    let spec = spec_file(&dir, TINY_REVSRESNET);
    let out = dir.join("run");
    let extra = ["--epochs", "3", "--stop-after", "1", "--device", "auto"];
    ok(train(&spec, &out, &extra));
    let config = String::from_utf8(bytes(out.join("config.toml"))).unwrap();
    assert!(config.contains("\ndevice = \"auto\"\n"), "{config}");
    assert!(config.contains("# device used: "), "{config}");
    // As if the first epoch had run on a GPU elsewhere, asked for explicitly.
    let metrics_file = out.join("metrics.jsonl");
    edit_json(&metrics_file, |line| {
        line["backend"] = "cuda".into();
        line["device"] = "NVIDIA H200".into();
    });
    ok(train(&spec, &out, &["--resume", "--stop-after", "1"]));
    edit_json(&out.join("last.json"), |state| {
        state["config"]["device"] = "cuda".into();
        state["given"]["device"] = "cuda".into();
    });
    // Here the recorded device may not exist: --device is one of the settings a resume changes.
    ok(train(&spec, &out, &["--resume", "--device", "cpu"]));
    let lines = metrics(&out);
    let devices: Vec<(&Value, &Value)> = lines
        .iter()
        .map(|l| (&l["backend"], &l["device"]))
        .collect();
    assert_eq!(
        devices[0],
        (&"cuda".into(), &"NVIDIA H200".into()),
        "kept as recorded"
    );
    assert_eq!(devices[2], (&"cpu".into(), &"cpu".into()));
    assert_eq!(lines.len(), 3);
    let config = String::from_utf8(bytes(out.join("config.toml"))).unwrap();
    assert!(
        config.contains("\ndevice = \"cpu\"\n") && config.contains("# device used: cpu\n"),
        "{config}"
    );
    // resuming the finished run trains nothing and says how to train it longer
    let finished = ok(train(&spec, &out, &["--resume", "--device", "cpu"]));
    let said = String::from_utf8_lossy(&finished.stderr);
    assert!(
        said.contains("the run has trained all 3 of its epochs")
            && said.contains("give --resume --epochs N, N above 3"),
        "{said}"
    );
    assert_eq!(metrics(&out).len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_head_wider_than_the_dataset_trains_with_a_note() {
    let dir = scratch("wide-head");
    let twelve = TINY_REVSRESNET.replace("\"num_classes\": 10", "\"num_classes\": 12");
    let wide = ok(train(
        &spec_file(&dir, &twelve),
        &dir.join("wide"),
        &["--epochs", "1"],
    ));
    let said = String::from_utf8_lossy(&wide.stderr);
    assert!(
        said.contains(
            "note: the model's head has 12 classes and synthetic has 10, so 2 outputs are never a \
             target; give --num-classes 10"
        ),
        "{said}"
    );
    let spec = spec_file(&dir, TINY_REVSRESNET);
    let fitting = ok(train(&spec, &dir.join("fits"), &["--epochs", "1"]));
    let said = String::from_utf8_lossy(&fitting.stderr);
    assert!(!said.contains("note: the model's head"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_diverging_run_stops_with_an_error_and_keeps_the_last_good_checkpoint() {
    let dir = scratch("nan");
    let spec = spec_file(&dir, TINY_REVSRESNET);
    let out = dir.join("run");
    ok(train(&spec, &out, &["--epochs", "3", "--stop-after", "1"]));
    let good = bytes(out.join("last.safetensors"));
    // a resumed run keeps its settings, so a copy of the run with an absurd learning rate
    // written into its state shows the error; the first run's files stay untouched
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for file in [
        "last.safetensors",
        "last.optimizer.safetensors",
        "last.json",
        "metrics.jsonl",
    ] {
        std::fs::copy(out.join(file), bad.join(file)).unwrap();
    }
    let mut state: Value =
        serde_json::from_str(&std::fs::read_to_string(bad.join("last.json")).unwrap()).unwrap();
    state["config"]["optimizer"]["lr"] = Value::from(1e30);
    std::fs::write(bad.join("last.json"), state.to_string()).unwrap();
    let output = train(&spec, &bad, &["--resume"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("diverged")
            && stderr.contains("last good checkpoint, of epoch 1")
            && stderr.contains("(lr 1e29)")
            && stderr.contains("start a new run with another --out"),
        "{stderr}"
    );
    assert_eq!(bytes(bad.join("last.safetensors")), good);
    let partial = std::fs::read_dir(&bad)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".partial"))
        .collect::<Vec<_>>();
    assert!(partial.is_empty(), "temporary files left: {partial:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_run_diverging_in_its_first_epoch_says_nothing_was_saved() {
    let dir = scratch("nan-first");
    let spec = spec_file(&dir, TINY_REVSRESNET);
    let out = dir.join("run");
    let output = train(&spec, &out, &["--epochs", "1", "--lr", "1e30"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("diverged")
            && stderr.contains("holds no checkpoint yet; lower --lr and start again")
            && !stderr.contains("--resume"),
        "{stderr}"
    );
    assert!(!out.join("last.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eval_reads_a_trained_checkpoint_and_bench_reports_json() {
    let dir = scratch("eval");
    let spec = spec_file(&dir, TINY_REVSRESNET);
    let out = dir.join("run");
    ok(train(&spec, &out, &["--epochs", "1"]));
    let checkpoint = out.join("best.safetensors").display().to_string();
    // eval of the checkpoint on the CPU with `extra`: what it said on stderr, and its report
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--checkpoint",
            &checkpoint,
            "--device",
            "cpu",
            "--json",
        ];
        args.extend_from_slice(extra);
        let output = ok(revsnn(&args));
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        (String::from_utf8_lossy(&output.stderr).into_owned(), report)
    };
    // without --dataset and --test-samples, eval scores the run's own test split
    let (said, report) = eval(&[]);
    assert!(
        said.contains("the run's test data") && said.contains("--test-samples 16"),
        "{said}"
    );
    let acc1 = report["acc1"].as_f64().unwrap();
    let acc5 = report["acc5"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc1) && acc1 <= acc5 && acc5 <= 1.0);
    assert_eq!(report["samples"], 16);
    // what was scored: the run's model (a run of --spec is named by its spec file), the
    // checkpoint's path, and its weights rather than a moving average of them
    assert_eq!(report["model"], spec.as_str(), "{report}");
    assert_eq!(report["checkpoint"], checkpoint.as_str(), "{report}");
    assert_eq!(report["weights"], "model", "{report}");
    let line = &metrics(&out)[0];
    assert_eq!(report["acc1"], line["test_acc1"]);
    assert_eq!(report["acc5"], line["test_acc5"]);
    let (_, report) = eval(&["--test-samples", "8"]);
    assert_eq!(report["samples"], 8);
    // in emulated bf16: the same samples, and the report says which precision ran (whether the
    // loss moves depends on spikes reaching the head, which this tiny model's seldom do)
    let (_, f32_report) = eval(&[]);
    let (_, bf16_report) = eval(&["--precision", "bf16"]);
    assert_eq!(
        (&f32_report["precision"], &bf16_report["precision"]),
        (&"f32".into(), &"bf16".into())
    );
    assert_eq!(bf16_report["samples"], 16);
    assert!(
        bf16_report["loss"].as_f64().is_some_and(f64::is_finite),
        "{bf16_report}"
    );
    // the run's dataset named: the rest still comes from the run
    let (said, _) = eval(&["--dataset", "synthetic"]);
    assert!(
        said.contains("): --test-samples 16") && !said.contains("--dataset"),
        "{said}"
    );

    let output = ok(revsnn(&[
        "bench", "--spec", &spec, "--batch", "2", "--steps", "2", "--device", "cpu", "--json",
    ]));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(report["median_step_seconds"].as_f64().unwrap() > 0.0);
    assert!(report["images_per_second"].as_f64().unwrap() > 0.0);
    assert!(report["peak_memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(report["device"], "cpu");
    assert_eq!(
        (report["batch"].as_u64(), report["time_steps"].as_u64()),
        (Some(2), Some(2))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = scratch("bad");
    let spec = spec_file(&dir, TINY_REVSRESNET);
    let out = dir.join("run");
    let output = train(
        &spec,
        &out,
        &["--dataset", "cifar10", "--data-dir", "/nowhere"],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nowhere") && stderr.contains("not found"),
        "{stderr}"
    );
    let output = train(&spec, &out, &["--dataset", "imagenet"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown dataset"));
    if !matches!(revsnn::gpu::probe(), revsnn::gpu::CudaStatus::Available(_)) {
        let output = train(&spec, &out, &["--device", "cuda"]);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--device cpu") && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
    // an unwritable run folder
    let blocker = dir.join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let output = train(&spec, &blocker.join("run"), &["--epochs", "1"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("run folder"));
    ok(train(&spec, &out, &["--epochs", "1"]));
    let other = spec_file(&dir, &TINY_REVSRESNET.replace("[2,4,4,4]", "[2,4,4,8]"));
    let output = train(&other, &out, &["--resume"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("another model"));
    let output = train(&spec, &out, &["--epochs", "1"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("already holds a run"));
    let output = train(&spec, &dir.join("none"), &["--resume"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("no run to resume here"));
    // a run stopped before its first checkpoint leaves config.toml only
    let unsaved = dir.join("unsaved");
    std::fs::create_dir_all(&unsaved).unwrap();
    std::fs::copy(out.join("config.toml"), unsaved.join("config.toml")).unwrap();
    let output = train(&spec, &unsaved, &["--resume"]);
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("saved no epoch yet (it has config.toml but no last.json)")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_dvs_model_trains_on_synthetic_events_by_default() {
    let dir = scratch("dvs");
    let spec = spec_file(
        &dir,
        r#"{"arch": "revsresnet-dvs", "layers": [1,1,1], "planes": [2,4,4], "num_classes": 10,
            "time_steps": 2, "in_channels": 2, "img_size": 16}"#,
    );
    let out = dir.join("run");
    ok(train(&spec, &out, &["--epochs", "1"]));
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("last.json")).unwrap()).unwrap();
    assert_eq!(state["config"]["dataset"], "synthetic-events");
    let output = train(&spec, &dir.join("other"), &["--dataset", "synthetic"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("synthetic-events"));
    let _ = std::fs::remove_dir_all(&dir);
}
