//! `revsnn train --tensorboard` read back by TensorBoard's own reader, the `tensorboard` Python
//! package's `EventAccumulator`: every number of every `metrics.jsonl` line, at its epoch, across
//! a `--resume`. Skips (saying `SKIP:`) where the package is missing, unless
//! `REVSNN_REQUIRE_TENSORBOARD=1` (set by CI after installing it) makes that a failure.

mod common;

use common::{ok, python, python_imports, revsnn, scratch, small_train_args};

use std::path::Path;

use serde_json::Value;

const TINY: &str = r#"{"arch": "revsresnet", "layers": [1,1,1,1], "planes": [2,4,4,4],
  "num_classes": 10, "time_steps": 1, "in_channels": 3, "img_size": 16}"#;

const READER: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
events = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
events.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in events.Scalars(tag)]
                  for tag in events.Tags()["scalars"]}))
"#;

/// The scalars TensorBoard reads from `dir`: tag to `[step, value]` pairs.
fn read_back(dir: &Path) -> Value {
    serde_json::from_slice(&python(READER, &[dir.to_str().unwrap()])).unwrap()
}

fn train(dir: &Path, extra: &[&str]) {
    let spec = dir.join("tiny.json");
    std::fs::write(&spec, TINY).unwrap();
    let options = [
        "--epochs",
        "3",
        "--train-samples",
        "16",
        "--test-samples",
        "8",
    ];
    let extra = [&options[..], &["--tensorboard"], extra].concat();
    ok(revsnn(&small_train_args(
        &spec.display().to_string(),
        &dir.join("run"),
        &extra,
    )));
}

#[test]
fn tensorboard_reads_every_number_of_every_epoch_across_a_resume() {
    if !python_imports("tensorboard") {
        assert!(
            std::env::var("REVSNN_REQUIRE_TENSORBOARD").as_deref() != Ok("1"),
            "REVSNN_REQUIRE_TENSORBOARD=1 but python3 cannot import tensorboard"
        );
        println!("SKIP: the tensorboard Python package is not installed (pip install tensorboard)");
        return;
    }
    let dir = scratch("tensorboard");
    train(&dir, &["--stop-after", "2"]);
    train(&dir, &["--resume"]);
    let run = dir.join("run");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let read = read_back(&run.join("tb"));
    for key in [
        "train_loss",
        "test_acc1",
        "test_acc5",
        "lr",
        "images_per_second",
    ] {
        let points = read[key]
            .as_array()
            .unwrap_or_else(|| panic!("no scalar {key}: {read}"));
        let expected: Vec<(u64, f32)> = (lines.iter())
            .map(|l| {
                (
                    l["epoch"].as_u64().unwrap(),
                    l[key].as_f64().unwrap() as f32,
                )
            })
            .collect();
        let got: Vec<(u64, f32)> = (points.iter())
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap() as f32))
            .collect();
        assert_eq!(got, expected, "{key}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
