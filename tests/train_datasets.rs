//! `revsnn train` and `eval` on tiny fake copies of the real datasets' files (CIFAR-10 and
//! CIFAR-100 binary versions) and on `synthetic-cifar`, and the errors for a missing or truncated
//! dataset.

mod common;

use common::{failed, ok, revsnn, scratch};

use std::path::Path;
use std::process::Output;

use serde_json::Value;

const TINY_RESNET: &str = r#"{"arch": "revsresnet", "layers": [1,1,1,1], "planes": [2,4,4,4],
  "num_classes": 10, "time_steps": 1, "in_channels": 3, "img_size": 32}"#;
const TINY_FORMER_100: &str = r#"{"arch": "revsformer", "num_classes": 100, "time_steps": 1,
  "in_channels": 3, "img_size": 32, "depth": 1, "dim": 16, "heads": 2, "mlp_ratio": 2,
  "patch_size": 4}"#;

/// `count` records of `label_bytes` label bytes and a `[3, 32, 32]` image whose colour and
/// brightness follow the (fine) label: a learnable pattern.
fn records(count: usize, classes: usize, label_bytes: usize, salt: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..count {
        let label = (i * 7 + salt) % classes;
        for _ in 0..label_bytes {
            out.push(label as u8);
        }
        for c in 0..3 {
            for p in 0..1024 {
                let base = (label * 37 + c * 80) % 256;
                out.push(((base + (p * (i + 1)) % 23) % 256) as u8);
            }
        }
    }
    out
}

fn fake_cifar10(root: &Path) {
    let dir = root.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    for k in 1..=5 {
        std::fs::write(
            dir.join(format!("data_batch_{k}.bin")),
            records(8, 10, 1, k),
        )
        .unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), records(20, 10, 1, 0)).unwrap();
}

fn fake_cifar100(root: &Path) {
    let dir = root.join("cifar-100-binary");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train.bin"), records(40, 100, 2, 1)).unwrap();
    std::fs::write(dir.join("test.bin"), records(20, 100, 2, 0)).unwrap();
}

fn train(dir: &Path, spec_text: &str, dataset: &str, extra: &[&str]) -> Output {
    let spec = dir.join("spec.json");
    std::fs::write(&spec, spec_text).unwrap();
    let (spec, out, data) = (
        spec.display().to_string(),
        dir.join("run").display().to_string(),
        dir.display().to_string(),
    );
    let mut args = vec![
        "train",
        "--spec",
        &spec,
        "--dataset",
        dataset,
        "--data-dir",
        &data,
        "--out",
        &out,
        "--quiet",
        "--threads",
        "2",
    ];
    args.extend(extra);
    if !extra.contains(&"--epochs") {
        args.extend(["--epochs", "1"]);
    }
    if !extra.contains(&"--batch") {
        args.extend(["--batch", "8"]);
    }
    revsnn(&args)
}

fn eval(dir: &Path, dataset: &str) -> Value {
    let checkpoint = dir.join("run/last.safetensors").display().to_string();
    let data = dir.display().to_string();
    let output = ok(revsnn(&[
        "eval",
        "--checkpoint",
        &checkpoint,
        "--dataset",
        dataset,
        "--data-dir",
        &data,
        "--json",
    ]));
    serde_json::from_slice(&output.stdout).expect("eval prints JSON")
}

fn metrics(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("run/metrics.jsonl")).expect("metrics.jsonl");
    serde_json::from_str(text.lines().last().expect("one line")).unwrap()
}

#[test]
fn trains_and_evaluates_on_a_fake_cifar10() {
    let dir = scratch("cifar10");
    fake_cifar10(&dir);
    ok(train(&dir, TINY_RESNET, "cifar10", &[]));
    let line = metrics(&dir);
    assert_eq!(line["epoch"], 1);
    assert!(line["train_loss"].as_f64().unwrap().is_finite());
    // --resume finds the data again from the run state
    let out = dir.join("run").display().to_string();
    ok(revsnn(&[
        "train", "--out", &out, "--resume", "--epochs", "2", "--quiet",
    ]));
    assert_eq!(metrics(&dir)["epoch"], 2);
    let result = eval(&dir, "cifar10");
    assert_eq!(result["samples"], 20);
    let acc = result["acc1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    // the same seed gives the same augmented batches, hence the same metrics
    let again = scratch("cifar10-again");
    fake_cifar10(&again);
    ok(train(&again, TINY_RESNET, "cifar10", &[]));
    assert_eq!(metrics(&again)["train_loss"], line["train_loss"]);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&again);
}

#[test]
fn trains_a_transformer_with_soft_targets_on_a_fake_cifar100() {
    let dir = scratch("cifar100");
    fake_cifar100(&dir);
    // mixup needs an even batch
    let stderr = failed(train(&dir, TINY_FORMER_100, "cifar100", &["--batch", "7"]));
    assert!(stderr.contains("even"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir.join("run"));
    // two epochs: the first with mixup, the second with label smoothing only
    ok(train(
        &dir,
        TINY_FORMER_100,
        "cifar100",
        &[
            "--epochs",
            "2",
            "--train-samples",
            "32",
            "--test-samples",
            "16",
        ],
    ));
    let line = metrics(&dir);
    assert_eq!(line["epoch"], 2);
    assert!(line["train_loss"].as_f64().unwrap().is_finite());
    let result = eval(&dir, "cifar100");
    assert_eq!(result["dataset"], "cifar100");
    let _ = std::fs::remove_dir_all(&dir);
}

const TINY_FORMER_10: &str = r#"{"arch": "revsformer", "num_classes": 10, "time_steps": 1,
  "in_channels": 3, "img_size": 32, "depth": 1, "dim": 16, "heads": 2, "mlp_ratio": 2,
  "patch_size": 4}"#;

/// The `[augment]` lines of a run's config.toml.
fn augment_lines(dir: &Path) -> String {
    let config = std::fs::read_to_string(dir.join("run/config.toml")).unwrap();
    let section = config
        .split("[augment]")
        .nth(1)
        .expect("an [augment] section");
    section.split("\n[").next().unwrap().trim().to_string()
}

#[test]
fn synthetic_cifar_runs_the_cifar_transformer_pipeline_with_rand_augment() {
    let dir = scratch("synthetic-cifar");
    let samples = ["--train-samples", "32", "--test-samples", "16"];
    ok(train(&dir, TINY_FORMER_10, "synthetic-cifar", &samples));
    let augment = augment_lines(&dir);
    for line in [
        "rand_augment_n = 1",
        "mixup_alpha = 0.5",
        "random_erasing = 0.25",
    ] {
        assert!(augment.contains(line), "{augment}");
    }
    assert!(metrics(&dir)["train_loss"].as_f64().unwrap().is_finite());
    assert_eq!(eval(&dir, "synthetic-cifar")["dataset"], "synthetic-cifar");
    let with = std::fs::read(dir.join("run/last.safetensors")).unwrap();
    // RandAugment changes the batches, so the weights: it ran
    let _ = std::fs::remove_dir_all(dir.join("run"));
    ok(train(
        &dir,
        TINY_FORMER_10,
        "synthetic-cifar",
        &[&samples[..], &["--rand-augment-n", "0"]].concat(),
    ));
    let without = std::fs::read(dir.join("run/last.safetensors")).unwrap();
    assert!(with != without, "the weights do not depend on RandAugment");
    let _ = std::fs::remove_dir_all(dir.join("run"));
    let small = TINY_RESNET.replace("\"img_size\": 32", "\"img_size\": 16");
    let stderr = failed(train(&dir, &small, "synthetic-cifar", &[]));
    assert!(
        stderr.contains("--dataset synthetic for other image sizes"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_head_smaller_than_the_labels_is_refused() {
    let dir = scratch("classes");
    fake_cifar100(&dir);
    let stderr = failed(train(&dir, TINY_RESNET, "cifar100", &[]));
    assert!(stderr.contains("--num-classes 100"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_and_truncated_files_are_named() {
    let dir = scratch("missing");
    let stderr = failed(train(&dir, TINY_RESNET, "cifar10", &[]));
    assert!(
        stderr.contains("cifar-10-batches-bin") && stderr.contains("data_batch_1.bin"),
        "{stderr}"
    );
    assert!(!dir.join("run/last.json").exists());
    fake_cifar10(&dir);
    let truncated = dir.join("cifar-10-batches-bin/data_batch_3.bin");
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let stderr = failed(train(&dir, TINY_RESNET, "cifar10", &[]));
    assert!(
        stderr.contains("data_batch_3.bin") && stderr.contains("truncated"),
        "{stderr}"
    );
    let stderr = failed(revsnn(&["train", "--dataset", "cifar10", "--quiet"]));
    assert!(stderr.contains("--data-dir"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An AEDAT 3.1 file of one packet of polarity events `(x, y, p, t)`.
fn aedat31(events: &[(u32, u32, u32, u32)]) -> Vec<u8> {
    let mut b = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n".to_vec();
    let n = events.len() as u32;
    for v in [1u32 | (1 << 16), 8, 4, 0, n, n, n] {
        b.extend(v.to_le_bytes());
    }
    for &(x, y, p, t) in events {
        b.extend(((x << 17) | (y << 2) | (p << 1) | 1).to_le_bytes());
        b.extend(t.to_le_bytes());
    }
    b
}

/// Two recordings per split, each with one sample per gesture 1..=11 (events in a class-dependent
/// region).
fn fake_gesture(root: &Path) {
    for (split, users) in [
        ("train", ["user01", "user02"]),
        ("test", ["user03", "user04"]),
    ] {
        let list: String = users.iter().map(|u| format!("{u}_led.aedat\n")).collect();
        std::fs::write(root.join(format!("trials_to_{split}.txt")), list).unwrap();
        for user in users {
            let mut events = Vec::new();
            let mut csv = String::from("class,startTime_usec,endTime_usec\n");
            for class in 1..=11u32 {
                let start = class * 1000;
                for k in 0..40u32 {
                    let x = (class * 10 + k % 8) % 128;
                    let y = (k * 3) % 128;
                    events.push((x, y, k % 2, start + k * 10));
                }
                csv.push_str(&format!("{class},{start},{}\n", start + 500));
            }
            std::fs::write(root.join(format!("{user}_led.aedat")), aedat31(&events)).unwrap();
            std::fs::write(root.join(format!("{user}_led_labels.csv")), csv).unwrap();
        }
    }
}

#[test]
fn trains_and_evaluates_on_a_fake_dvs128_gesture() {
    const TINY_DVS: &str = r#"{"arch": "revsresnet-dvs", "layers": [1,1,1], "planes": [2,4,4],
      "num_classes": 11, "time_steps": 2, "in_channels": 2, "img_size": 128}"#;
    let dir = scratch("gesture");
    fake_gesture(&dir);
    ok(train(&dir, TINY_DVS, "dvs128-gesture", &["--epochs", "2"]));
    assert!(dir.join("frames_T2").is_dir(), "the frame cache is written");
    assert_eq!(metrics(&dir)["epoch"], 2);
    let result = eval(&dir, "dvs128-gesture");
    assert_eq!(result["samples"], 22);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn trains_and_evaluates_on_a_fake_cifar10_dvs() {
    const TINY_DVS: &str = r#"{"arch": "revsresnet-dvs", "layers": [1,1,1], "planes": [2,4,4],
      "num_classes": 10, "time_steps": 3, "in_channels": 2, "img_size": 128}"#;
    const CLASSES: [&str; 10] = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ];
    let dir = scratch("cifar10-dvs");
    for (label, class) in CLASSES.iter().enumerate() {
        let folder = dir.join(class);
        std::fs::create_dir_all(&folder).unwrap();
        // 10 recordings a class: the first 9 (ceil(0.9 * 10)) train, the last tests
        for r in 0..10u32 {
            let mut bytes = b"#!AER-DAT2.0\r\n# fake\r\n".to_vec();
            for k in 0..30u32 {
                let (x, y, p) = ((label as u32 * 12 + k % 6) % 128, (k * 4 + r) % 128, k % 2);
                bytes.extend(((y << 8) | (x << 1) | p).to_be_bytes());
                bytes.extend((k * 5).to_be_bytes());
            }
            std::fs::write(folder.join(format!("cifar10_{class}_{r}.aedat")), bytes).unwrap();
        }
    }
    ok(train(&dir, TINY_DVS, "cifar10-dvs", &[]));
    assert!(dir.join("frames_T3").is_dir(), "the frame cache is written");
    let result = eval(&dir, "cifar10-dvs");
    assert_eq!(result["samples"], 10);
    // a class folder missing is named
    std::fs::remove_dir_all(dir.join("truck")).unwrap();
    std::fs::remove_dir_all(dir.join("run")).unwrap();
    let stderr = failed(train(&dir, TINY_DVS, "cifar10-dvs", &[]));
    assert!(stderr.contains("truck"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
