//! `revsnn eval --device cuda --versus-cpu`: one checkpoint evaluated on the GPU (or the CPU
//! emulator of the driver) and on the CPU reference, batch by batch, with the samples whose
//! prediction differs and the spikes that differ per sample. Skips without a CUDA device
//! (`SKIP: no CUDA device`), fails then with `REVSNN_REQUIRE_GPU=1`.

mod common;

use common::{ok, revsnn, scratch};
use revsnn_gpu::testing::backend_or_skip;
use serde_json::Value;

const TINY: &str = r#"{"arch": "revsresnet", "layers": [1,1,1,1], "planes": [4,8,8,8],
  "num_classes": 10, "time_steps": 2, "in_channels": 3, "img_size": 16}"#;

fn eval_json(args: &[&str]) -> Value {
    let output = ok(revsnn(
        &[
            &["eval", "--json", "--test-samples", "24", "--batch", "8"],
            args,
        ]
        .concat(),
    ));
    serde_json::from_slice(&output.stdout).expect("eval prints JSON")
}

#[test]
fn eval_on_cuda_versus_the_cpu_reports_where_the_two_part() {
    if backend_or_skip::<f32>("gpu_eval").is_none() {
        return;
    }
    let dir = scratch("versus-cpu");
    let spec = dir.join("tiny.json");
    std::fs::write(&spec, TINY).unwrap();
    let (spec, out) = (
        spec.display().to_string(),
        dir.join("run").display().to_string(),
    );
    ok(revsnn(&[
        "train",
        "--spec",
        &spec,
        "--out",
        &out,
        "--epochs",
        "1",
        "--batch",
        "16",
        "--train-samples",
        "64",
        "--test-samples",
        "24",
        "--device",
        "cpu",
        "--quiet",
    ]));
    let checkpoint = dir.join("run/last.safetensors").display().to_string();
    let on_cpu = eval_json(&["--checkpoint", &checkpoint, "--device", "cpu"]);
    let report = eval_json(&[
        "--checkpoint",
        &checkpoint,
        "--device",
        "cuda",
        "--versus-cpu",
    ]);
    let versus = &report["versus_cpu"];
    eprintln!("{versus}");
    assert_eq!(report["backend"], "cuda", "{report}");
    // the device's half is the plain evaluation, from the same forward passes
    let on_cuda = eval_json(&["--checkpoint", &checkpoint, "--device", "cuda"]);
    for key in ["loss", "acc1", "acc5"] {
        assert_eq!(report[key], on_cuda[key], "{key}: {report} vs {on_cuda}");
    }
    assert_eq!(versus["samples"], 24);
    assert_eq!(
        versus["acc1_cpu"], on_cpu["acc1"],
        "the CPU half is plain eval"
    );
    // spikes of every neuron layer of both replicas were compared, sample by sample
    assert!(versus["spikes_compared"].as_u64().unwrap() > 24 * 2 * 4 * 16 * 16);
    // without a flipped spike the logits agree to rounding: a differing prediction would be a
    // near-tie of two logits, which this checkpoint does not have
    assert_eq!(versus["unexplained"], 0, "{versus}");
    assert!(versus["logits_max_abs_diff"].as_f64().unwrap() < 1e-3 || versus["spike_flips"] != 0);
    let _ = std::fs::remove_dir_all(&dir);
}
