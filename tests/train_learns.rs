//! Training learns: a tiny synthetic run whose loss falls and whose test accuracy beats chance
//! by a wide margin. The parity and gradient tests check each layer against a reference; this
//! checks the training loop itself, where a gradient that is silently lost (never applied,
//! zeroed, applied to the wrong tensor) leaves the model at chance.

mod common;

use common::{ok, revsnn, scratch};

use serde_json::Value;

/// A small RevSResNet on 16x16 images with one time step: 4 epochs of 2048 synthetic images,
/// AdamW at lr 0.01 without warmup (the quick recipe's one epoch of warmup would waste a
/// quarter of the run), about 10 s in release on one core.
#[test]
fn a_tiny_run_on_synthetic_images_learns_well_above_chance() {
    let dir = scratch("learns");
    let spec = dir.join("spec.json");
    std::fs::write(
        &spec,
        r#"{"arch": "revsresnet", "layers": [1,1,1,1], "planes": [4,8,8,16], "num_classes": 10,
            "time_steps": 1, "in_channels": 3, "img_size": 16}"#,
    )
    .unwrap();
    let out = dir.join("run");
    ok(revsnn(&[
        "train",
        "--device",
        "cpu",
        "--spec",
        &spec.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--batch",
        "32",
        "--train-samples",
        "2048",
        "--test-samples",
        "300",
        "--epochs",
        "4",
        "--optimizer",
        "adamw",
        "--lr",
        "0.01",
        "--warmup-epochs",
        "0",
        "--seed",
        "1",
        "--threads",
        "1",
        "--quiet",
    ]));
    let lines: Vec<Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let value = |epoch: usize, key: &str| lines[epoch][key].as_f64().unwrap();
    let (first, last) = (0, lines.len() - 1);
    // The synthetic dataset has 10 classes: chance is 10% and a loss of ln 10 = 2.30.
    assert!(
        value(last, "train_loss") < 0.8 * value(first, "train_loss"),
        "the training loss did not fall: {lines:?}"
    );
    assert!(
        value(last, "test_loss") < 0.8 * value(first, "test_loss"),
        "the test loss did not fall: {lines:?}"
    );
    assert!(
        value(last, "test_acc1") > 0.3,
        "test top-1 accuracy not above 3x chance: {lines:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
