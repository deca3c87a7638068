//! The TensorBoard event files read back by TensorBoard's own reader: the `tensorboard` Python
//! package's `EventAccumulator`. Skips (saying `SKIP:`) where the package is missing, unless
//! `REVSNN_REQUIRE_TENSORBOARD=1` (set by CI after installing it) makes that a failure.

use std::process::Command;

use revsnn::train::tensorboard::EventWriter;
use serde_json::{Value, json};

const READER: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
events = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
events.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in events.Scalars(tag)]
                  for tag in events.Tags()["scalars"]}))
"#;

fn tensorboard_is_installed() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import tensorboard"])
        .output();
    probe.is_ok_and(|output| output.status.success())
}

#[test]
fn tensorboard_reads_every_epochs_scalars_back() {
    if !tensorboard_is_installed() {
        assert!(
            std::env::var("REVSNN_REQUIRE_TENSORBOARD").as_deref() != Ok("1"),
            "REVSNN_REQUIRE_TENSORBOARD=1 but python3 cannot import tensorboard"
        );
        println!("SKIP: the tensorboard Python package is not installed (pip install tensorboard)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("revsnn-tb-read-{}", std::process::id()));
    let mut writer = EventWriter::create(&dir).unwrap();
    for epoch in 1..=3u32 {
        let e = f64::from(epoch);
        writer
            .add_metrics(
                &json!({"epoch": epoch, "train_loss": 2.5 / e, "test_acc1": 0.25 * e,
                                 "lr": 0.0, "images_per_second": 1000.0 + e}),
            )
            .unwrap();
    }
    drop(writer);
    let output = Command::new("python3")
        .args(["-c", READER, dir.to_str().unwrap()])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read: Value = serde_json::from_slice(&output.stdout).unwrap();
    let expected = json!({
        "train_loss": [[1, 2.5], [2, 1.25], [3, 2.5 / 3.0]],
        "test_acc1": [[1, 0.25], [2, 0.5], [3, 0.75]],
        "lr": [[1, 0.0], [2, 0.0], [3, 0.0]],
        "images_per_second": [[1, 1001.0], [2, 1002.0], [3, 1003.0]],
    });
    for (tag, points) in expected.as_object().unwrap() {
        let got = read[tag]
            .as_array()
            .unwrap_or_else(|| panic!("no scalar {tag}: {read}"));
        assert_eq!(got.len(), 3, "{tag}: {got:?}");
        for (g, e) in got.iter().zip(points.as_array().unwrap()) {
            assert_eq!(g[0], e[0], "{tag} step");
            let (g, e) = (g[1].as_f64().unwrap(), e[1].as_f64().unwrap());
            assert_eq!(
                g as f32, e as f32,
                "{tag}: TensorBoard read {g}, expected {e}"
            );
        }
    }
}
