//! Emulated precisions (docs/precision.md). Per op: a backend built with a precision gives
//! bitwise what the `f32` backend gives on operands rounded by hand, forward and every backward
//! output, for the convolution (dense and sparse spike inputs; its outputs rounded by hand too
//! under bf16 and fp16), the linear layer and the batched matmul; the sparse spike kernels agree
//! with the dense GEMMs under bf16 up to the rounding of their outputs; `f32` rounds nothing.
//! End to end: `train --precision` records the precision (config.toml, metrics, last.json),
//! resumes bit for bit in it and refuses another on `--resume`; checkpoints stay f32 under the
//! official keys; fp16's loss scaler skips the steps whose gradients overflow and recovers, and
//! a scale that falls below 1 stops the run with its saved state as it was.
//! Whole tiny models of every family in bf16 and fp16 (`verify --precision`): the reversible
//! reconstruction at f32's bar, and the logits and loss against the f64 reference within the
//! bound of docs/precision.md wherever it applies (a head reading spikes, no spike differing).

mod common;

use std::path::Path;
use std::process::Output;

use common::{TINY_REVSRESNET, failed, fp16, json_lines, ok, revsnn, scratch, small_train_args};
use ndarray::{ArcArray, IxDyn};
use revsnn::commands::verify::verify_on;
use revsnn::device::Device;
use revsnn::model::reversible::Coupling;
use revsnn::spec::ModelSpec;
use revsnn_reference::DType;
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, relative_error};
use revsnn_reference::{Conv2dParams, Cpu, CpuTensor, Precision};
use serde_json::Value;

const LOW: [Precision; 3] = [Precision::Tf32, Precision::Bf16, Precision::Fp16];

/// A tensor of `shape` with values uniform in `[-scale, scale)`, fixed by `seed`.
fn random(shape: &[usize], scale: f64, seed: u64) -> CpuTensor<f32> {
    let mut rng = SplitMix64::new(seed);
    let len = shape.iter().product();
    let data = (0..len)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * scale) as f32)
        .collect();
    ArcArray::from_shape_vec(IxDyn(shape), data).unwrap()
}

/// Spikes: each element 1 with probability `rate`, else 0.
fn spikes(shape: &[usize], rate: f64, seed: u64) -> CpuTensor<f32> {
    let mut rng = SplitMix64::new(seed);
    let len = shape.iter().product();
    let data = (0..len)
        .map(|_| f32::from(u8::from(rng.next_f64() < rate)))
        .collect();
    ArcArray::from_shape_vec(IxDyn(shape), data).unwrap()
}

/// `x` rounded to `p` element by element, by hand.
fn rounded(x: &CpuTensor<f32>, p: Precision) -> CpuTensor<f32> {
    x.mapv(|v| p.round(v)).into_shared()
}

fn bits(x: &CpuTensor<f32>) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn widened(x: &CpuTensor<f32>) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

/// `x` as a convolution of precision `p` stores its outputs: rounded under bf16 and fp16
/// (`Precision::stores_conv_outputs`), as it is under TF32.
fn stored(x: &CpuTensor<f32>, p: Precision) -> CpuTensor<f32> {
    if p.stores_conv_outputs() {
        rounded(x, p)
    } else {
        x.clone()
    }
}

/// The convolution in precision `p` against the f32 one on hand-rounded operands: output (the
/// stored sums plus the bias), input, weight and bias gradients bitwise equal.
fn check_conv(p: Precision, x: &CpuTensor<f32>, params: Conv2dParams, seed: u64) {
    let c_in = x.shape()[1];
    let w = random(&[5, c_in, 3, 3], 0.5, seed);
    let b = random(&[5], 0.5, seed + 1);
    let emulated = Cpu::<f32>::with_precision(p);
    let plain = Cpu::<f32>::new();
    let (y, context) = emulated.conv2d_forward(x, &w, Some(&b), params).unwrap();
    let (x_p, w_p) = (rounded(x, p), rounded(&w, p));
    let (sums, _) = plain.conv2d_forward(&x_p, &w_p, None, params).unwrap();
    let (y_ref, context_ref) = plain.conv2d_forward(&x_p, &w_p, Some(&b), params).unwrap();
    // A stored sum gets the bias added after its rounding; otherwise the bias starts the sum.
    let y_ref = if p.stores_conv_outputs() {
        let b4 = b
            .clone()
            .into_shape_with_order(IxDyn(&[1, 5, 1, 1]))
            .unwrap();
        (&rounded(&sums, p) + &b4).into_shared()
    } else {
        y_ref
    };
    assert_eq!(bits(&y), bits(&y_ref), "{p} conv forward");
    let dy = random(y.shape(), 1.0, seed + 2);
    let grads = emulated.conv2d_backward(dy.clone(), &context).unwrap();
    let grads_ref = plain
        .conv2d_backward(rounded(&dy, p), &context_ref)
        .unwrap();
    let (dx_ref, dw_ref) = (stored(&grads_ref.input, p), stored(&grads_ref.weight, p));
    assert_eq!(bits(&grads.input), bits(&dx_ref), "{p} conv dx");
    assert_eq!(bits(&grads.weight), bits(&dw_ref), "{p} conv dw");
    assert_eq!(
        bits(&grads.bias.unwrap()),
        bits(&grads_ref.bias.unwrap()),
        "{p} conv db"
    );
    assert_ne!(bits(&w), bits(&rounded(&w, p)), "the weights must round");
    if p.stores_conv_outputs() {
        assert_ne!(bits(&sums), bits(&rounded(&sums, p)), "the sums must round");
    }
}

#[test]
fn conv_rounds_its_operands_forward_and_backward() {
    for (i, p) in LOW.into_iter().enumerate() {
        let seed = 10 * i as u64;
        check_conv(
            p,
            &random(&[2, 3, 7, 6], 2.0, seed),
            Conv2dParams::new(1, 1),
            seed,
        );
        check_conv(
            p,
            &random(&[3, 4, 9, 9], 2.0, seed),
            Conv2dParams::new(2, 0),
            seed,
        );
        check_conv(
            p,
            &spikes(&[2, 4, 8, 8], 0.2, seed),
            Conv2dParams::new(1, 1),
            seed,
        );
    }
}

#[test]
fn sparse_spike_kernels_agree_with_the_dense_gemm_under_bf16() {
    let p = Precision::Bf16;
    let x = spikes(&[4, 6, 10, 10], 0.2, 3);
    let w = random(&[8, 6, 3, 3], 0.5, 4);
    let params = Conv2dParams::new(1, 1);
    let (y, mut context) = Cpu::<f32>::with_precision(p)
        .conv2d_forward(&x, &w, None, params)
        .unwrap();
    assert!(
        context.sparse_spike_input,
        "the input takes the spike kernels"
    );
    // The dense truth: f64 on the same bf16 weights (the spikes are exact).
    let x64 = x.mapv(f64::from).into_shared();
    let w64 = rounded(&w, p).mapv(f64::from).into_shared();
    let (y64, _) = Cpu::<f64>::new()
        .conv2d_forward(&x64, &w64, None, params)
        .unwrap();
    // bf16 stores the sums: each output is the f64 sum rounded, or its neighbour where the f32
    // and f64 sums straddle a rounding boundary (a relative 2^-7 at most).
    let stored64: Vec<f64> = y64.iter().map(|&v| p.round_f64(v)).collect();
    let mut neighbours = 0;
    for (&got, &want) in widened(&y).iter().zip(&stored64) {
        if got != want {
            neighbours += 1;
            assert!(
                (got - want).abs() <= want.abs() / 128.0,
                "{got:e} vs {want:e}"
            );
        }
    }
    assert!(
        neighbours * 100 <= y64.len(),
        "{neighbours} of {} outputs differ",
        y64.len()
    );
    // The weight gradient: the spike kernel against the dense GEMM, from one context.
    let dy = random(y.shape(), 1.0, 5);
    let backend = Cpu::<f32>::with_precision(p);
    let sparse = backend.conv2d_backward(dy.clone(), &context).unwrap();
    context.sparse_spike_input = false;
    let dense = backend.conv2d_backward(dy.clone(), &context).unwrap();
    let error = relative_error(&widened(&sparse.weight), &widened(&dense.weight));
    assert!(error <= 1e-3, "sparse vs dense weight gradient: {error:e}");
    assert_eq!(
        bits(&sparse.input),
        bits(&dense.input),
        "dx is one GEMM either way"
    );
}

#[test]
fn linear_rounds_its_operands_forward_and_backward() {
    for (i, p) in LOW.into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let (x, w, b) = (
            random(&[6, 11], 3.0, seed),
            random(&[4, 11], 0.5, seed + 1),
            random(&[4], 0.5, seed + 2),
        );
        let emulated = Cpu::<f32>::with_precision(p);
        let plain = Cpu::<f32>::new();
        let y = emulated.linear_forward(&x, &w, Some(&b)).unwrap();
        let (xr, wr) = (rounded(&x, p), rounded(&w, p));
        let y_ref = plain.linear_forward(&xr, &wr, Some(&b)).unwrap();
        assert_eq!(bits(&y), bits(&y_ref), "{p} linear forward");
        let dy = random(&[6, 4], 1.0, seed + 3);
        let grads = emulated.linear_backward(&dy, &x, &w, true).unwrap();
        let grads_ref = plain
            .linear_backward(&rounded(&dy, p), &xr, &wr, true)
            .unwrap();
        assert_eq!(bits(&grads.input), bits(&grads_ref.input), "{p} linear dx");
        assert_eq!(
            bits(&grads.weight),
            bits(&grads_ref.weight),
            "{p} linear dw"
        );
        assert_eq!(
            bits(&grads.bias.unwrap()),
            bits(&grads_ref.bias.unwrap()),
            "{p} linear db"
        );
    }
}

#[test]
fn batched_matmul_rounds_both_operands() {
    for (i, p) in LOW.into_iter().enumerate() {
        let seed = 200 + 10 * i as u64;
        let (a, b) = (
            random(&[2, 3, 5, 7], 2.0, seed),
            random(&[2, 3, 4, 7], 2.0, seed + 1),
        );
        let c = Cpu::<f32>::with_precision(p)
            .batched_matmul(&a, &b, false, true)
            .unwrap();
        let c_ref = Cpu::<f32>::new()
            .batched_matmul(&rounded(&a, p), &rounded(&b, p), false, true)
            .unwrap();
        assert_eq!(bits(&c), bits(&c_ref), "{p} batched matmul");
    }
}

#[test]
fn f32_rounds_nothing_and_other_ops_are_untouched() {
    let x = random(&[2, 3, 6, 6], 2.0, 7);
    let w = random(&[4, 3, 3, 3], 0.5, 8);
    let params = Conv2dParams::new(1, 1);
    let (y, _) = Cpu::<f32>::with_precision(Precision::F32)
        .conv2d_forward(&x, &w, None, params)
        .unwrap();
    let (y_plain, _) = Cpu::<f32>::new()
        .conv2d_forward(&x, &w, None, params)
        .unwrap();
    assert_eq!(bits(&y), bits(&y_plain));
    assert_eq!(Cpu::<f32>::new().precision(), Precision::F32);
    let bf16 = Cpu::<f32>::with_precision(Precision::Bf16);
    assert_eq!(
        bf16.clone().precision(),
        Precision::Bf16,
        "a clone keeps it"
    );
    let sum = bf16.add(&x, &x).unwrap();
    assert_eq!(bits(&sum), bits(&Cpu::<f32>::new().add(&x, &x).unwrap()));
}

/// `revsnn train` of the spec file `spec` into `out` ([`small_train_args`]).
fn train(spec: &Path, out: &Path, extra: &[&str]) -> Output {
    revsnn(&small_train_args(&spec.display().to_string(), out, extra))
}

#[test]
fn train_records_its_precision_resumes_in_it_and_refuses_another() {
    let dir = scratch("record");
    let spec = dir.join("tiny.json");
    std::fs::write(&spec, TINY_REVSRESNET).unwrap();
    let (straight, resumed) = (dir.join("straight"), dir.join("resumed"));
    let bf16 = ["--precision", "bf16", "--epochs", "2"];
    ok(train(&spec, &straight, &bf16));
    ok(train(
        &spec,
        &resumed,
        &[&bf16[..], &["--stop-after", "1"]].concat(),
    ));
    let refused = failed(train(&spec, &resumed, &["--resume", "--precision", "f32"]));
    assert!(
        refused.contains("precision = \"f32\" (the run has \"bf16\")"),
        "{refused}"
    );
    ok(train(&spec, &resumed, &["--resume"]));
    for file in ["last.safetensors", "last.optimizer.safetensors"] {
        let read = |dir: &Path| std::fs::read(dir.join(file)).unwrap();
        assert_eq!(
            read(&straight),
            read(&resumed),
            "{file} resumed bit for bit"
        );
    }
    let config = std::fs::read_to_string(straight.join("config.toml")).unwrap();
    assert!(config.contains("\nprecision = \"bf16\"\n"), "{config}");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("last.json")).unwrap())
            .unwrap();
    assert_eq!(state["config"]["precision"], "bf16", "{state}");
    for line in json_lines(&straight.join("metrics.jsonl")) {
        assert_eq!(line["precision"], "bf16", "{line}");
    }
    let plain = dir.join("plain");
    ok(train(&spec, &plain, &["--epochs", "1"]));
    let line = &json_lines(&plain.join("metrics.jsonl"))[0];
    assert_eq!(line["precision"], "f32", "the default: {line}");
    // A run written before the precision and the ranks existed ran in f32 on one rank: it
    // resumes with them given explicitly.
    let state_path = plain.join("last.json");
    let mut state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    for key in ["precision", "ranks", "sync_bn"] {
        state["config"].as_object_mut().unwrap().remove(key);
    }
    std::fs::write(&state_path, state.to_string()).unwrap();
    let explicit = [
        "--resume",
        "--epochs",
        "2",
        "--precision",
        "f32",
        "--ranks",
        "1",
    ];
    ok(train(&spec, &plain, &explicit));
    assert!(
        failed(train(
            &spec,
            &plain,
            &["--resume", "--epochs", "3", "--precision", "bf16"]
        ))
        .contains("(the run has \"f32\")")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fp16_resumes_bit_for_bit_with_its_loss_scaler_and_checkpoints_stay_f32() {
    fp16::resumes_bit_for_bit_with_its_loss_scaler("cpu");
}

#[test]
fn fp16_skips_the_steps_whose_gradients_overflow_and_recovers() {
    fp16::skips_the_steps_whose_gradients_overflow_and_recovers("cpu");
}

#[test]
fn fp16_stops_when_the_loss_scale_falls_below_one() {
    fp16::stops_when_the_loss_scale_falls_below_one("cpu");
}

/// A tiny spec of each family.
fn tiny_specs() -> [(&'static str, String); 4] {
    let resnet = |arch| {
        format!(
            r#"{{"arch": "{arch}", "layers": [1,1,1,1], "planes": [2,4,4,4], "num_classes": 10,
            "time_steps": 2, "in_channels": 3, "img_size": 16}}"#
        )
    };
    let former = |arch| {
        format!(
            r#"{{"arch": "{arch}", "num_classes": 10, "time_steps": 2, "in_channels": 3,
            "img_size": 16, "depth": 1, "dim": 16, "heads": 2, "mlp_ratio": 2, "patch_size": 4}}"#
        )
    };
    [
        ("revsresnet", resnet("revsresnet")),
        ("msresnet", resnet("msresnet")),
        ("revsformer", former("revsformer")),
        ("spikingformer", former("spikingformer")),
    ]
}

#[test]
fn whole_models_in_bf16_and_fp16_against_f64() {
    for (family, text) in tiny_specs() {
        let spec = ModelSpec::from_json(&text).unwrap();
        for precision in [Precision::Bf16, Precision::Fp16] {
            let mut bounded = 0;
            for seed in 0..4 {
                let device = Device::Cpu(precision);
                let report =
                    verify_on(&device, &spec, DType::F32, Coupling::Float, seed, 2, 1).unwrap();
                let versus = report
                    .versus_f64
                    .expect("a low precision compares with f64");
                let case = format!("{family} {precision} seed {seed}: {versus:?}");
                assert_eq!(versus.precision, precision, "{case}");
                assert!(
                    report.reconstruction_max_rel_err <= 1e-5,
                    "the f32 stream reconstructs at f32's bar: {case}"
                );
                assert!(versus.spikes_compared > 0, "{case}");
                assert!(versus.logits_max_abs_err.is_finite(), "{case}");
                assert_eq!(
                    versus.bounds.is_some(),
                    family.ends_with("resnet"),
                    "a bound for the heads reading spikes only: {case}"
                );
                match versus.within_bounds() {
                    Some(within) => {
                        assert!(within, "outside the bound: {case}");
                        bounded += 1;
                    }
                    None if family.ends_with("resnet") => {
                        assert!(versus.spike_flips > 0, "{case}")
                    }
                    None => {}
                }
            }
            if family.ends_with("resnet") && precision == Precision::Fp16 {
                assert!(
                    bounded > 0,
                    "{family} {precision}: no seed without a spike flip"
                );
            }
        }
    }
}
