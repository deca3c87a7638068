//! Parity with the official PyTorch RevSNN: `revsnn grad` on every committed fixture
//! (`fixtures/parity/`, made by `fixtures/generate.py` with torch and SpikingJelly 0.0.0.0.12)
//! reproduces logits, loss, the input gradient, every parameter gradient, every BatchNorm running
//! statistic after the forward and the eval logits, in f64.
//!
//! Bar: `||ours - theirs||_2 <= 1e-9 max(||theirs||_2, 1e-6)` per tensor. The floor only matters
//! for the conv biases placed right before a BatchNorm, whose exact gradient is 0 (both sides
//! hold rounding noise below 1e-16 there).

use std::path::Path;

use revsnn::checkpoint;
use revsnn::commands::grad::{compute, read_batch};
use revsnn::spec::ModelSpec;
use revsnn_reference::Cpu;

const CASES: [&str; 8] = [
    "revsresnet",
    "revsresnet-dvs",
    "msresnet",
    "msresnet-dvs",
    "revsformer",
    "revsformer-dvs",
    "spikingformer",
    "spikingformer-dvs",
];

fn norm(values: &[f64]) -> f64 {
    values.iter().map(|v| v * v).sum::<f64>().sqrt()
}

#[test]
fn grad_matches_the_official_pytorch_code_on_every_fixture() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/parity");
    for case in CASES {
        let spec = ModelSpec::from_json(
            &std::fs::read_to_string(folder.join(format!("{case}.spec.json"))).unwrap(),
        )
        .unwrap();
        let weights =
            checkpoint::read(&folder.join(format!("{case}.weights.safetensors"))).unwrap();
        let batch = read_batch(
            &folder.join(format!("{case}.input.safetensors")),
            &spec,
            false,
        )
        .unwrap();
        let expected =
            checkpoint::read(&folder.join(format!("{case}.expected.safetensors"))).unwrap();
        let ours = compute(&Cpu::<f64>::new(), &spec, &weights, &batch)
            .unwrap_or_else(|e| panic!("{case}: {e}"));

        let mut names: Vec<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
        let mut expected_names: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        expected_names.sort_unstable();
        assert_eq!(
            names, expected_names,
            "{case}: the outputs are the fixture's keys"
        );

        let mut worst = (0.0f64, String::new());
        for (name, theirs) in &expected {
            let (_, mine) = ours.iter().find(|(n, _)| n == name).unwrap();
            assert_eq!(mine.shape, theirs.shape, "{case}: {name} shape");
            let (a, b) = (mine.to_f64(), theirs.to_f64());
            let diff: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
            let error = norm(&diff) / norm(&b).max(1e-6);
            assert!(
                error <= 1e-9,
                "{case}: {name} differs, relative error {error:e}"
            );
            if error > worst.0 {
                worst = (error, name.clone());
            }
        }
        println!(
            "{case:<18} {} tensors, worst relative error {:.2e} ({})",
            expected.len(),
            worst.0,
            worst.1
        );
    }
}
