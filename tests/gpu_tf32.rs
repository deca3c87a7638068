//! TF32 accuracy of the GEMM paths `--tf32` switches to TF32 tensor cores: the linear layer
//! (forward, input and weight gradients), the batched matmul of the attention (each transpose
//! combination) and the pointwise (1x1) convolution (forward as one GEMM, its input and weight
//! gradients), in f32 with TF32 allowed ([`revsnn_gpu::GpuDevice::allow_tf32`]).
//!
//! On every device each output is checked against the f64 reference of the same f32 inputs: its
//! relative L2 error must stay within the TF32 class, 1e-2 (the bar `gpu_conv` holds the TF32
//! convolutions to; TF32 keeps 10 mantissa bits, so each product is off by about 1e-3 relative).
//! On the CPU emulator, whose cuBLAS rounds each f32 operand to TF32 (nearest, ties to even) and
//! accumulates in f32, two more checks hold: each GEMM output equals, within the f32 GEMM class
//! (1e-4), the f64 reference of the operands rounded as `Precision::Tf32` rounds them; and it
//! differs in its bits from the same GEMM without TF32, so the math mode reaches every path (a
//! bias gradient, a sum of unrounded values, is held to the f32 class against the f64 reference). A
//! real card's tensor cores may round operands differently and may run small GEMMs without
//! tensor cores, so there only the class is checked. Skips without a GPU
//! (`SKIP: no CUDA device`), fails then with `REVSNN_REQUIRE_GPU=1`.

mod common;

use common::gemm::{GemmOp, batched_shapes};
use revsnn_gpu::Cuda;
use revsnn_gpu::testing::backend_or_skip;
use revsnn_reference::testing::{SplitMix64, relative_error};
use revsnn_reference::{Backend, Conv2dParams, Cpu, Precision};

/// The TF32 class: relative L2 error against the f64 reference.
const TF32_CLASS: f64 = 1e-2;
/// The f32 GEMM class of docs/design.md: relative L2 error against the f64 reference.
const F32_GEMM_CLASS: f64 = 1e-4;

/// One GEMM path: its inputs (shape, and whether it is a GEMM operand, which the tensor cores
/// round to TF32; a bias is not) and its outputs (name, and whether it is a GEMM result; a
/// bias gradient is a sum).
struct Path {
    name: &'static str,
    op: GemmOp,
    inputs: Vec<(Vec<usize>, bool)>,
    outputs: &'static [(&'static str, bool)],
}

impl Path {
    /// The outputs of this path on `backend` from `values`, one per input.
    fn run<B: Backend>(&self, backend: &B, values: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let inputs = self.inputs.iter().zip(values);
        self.op
            .run(backend, inputs.map(|((shape, _), v)| (&shape[..], &v[..])))
    }
}

const LAYER_OUTPUTS: &[(&str, bool)] = &[("y", true), ("dx", true), ("dw", true), ("db", false)];

fn paths() -> Vec<Path> {
    let batched = |name, ta: bool, tb: bool| {
        let [a, b] = batched_shapes((32, 128, 48), ta, tb);
        Path {
            name,
            op: GemmOp::Batched(ta, tb),
            inputs: vec![(a, true), (b, true)],
            outputs: &[("c", true)],
        }
    };
    vec![
        Path {
            name: "linear",
            op: GemmOp::Linear,
            inputs: vec![
                (vec![64, 256], true),
                (vec![96, 256], true),
                (vec![96], false),
                (vec![64, 96], true),
            ],
            outputs: LAYER_OUTPUTS,
        },
        batched("batched matmul a b", false, false),
        batched("batched matmul a b^T", false, true),
        batched("batched matmul a^T b", true, false),
        Path {
            name: "pointwise convolution",
            op: GemmOp::Conv(Conv2dParams::new(1, 0)),
            inputs: vec![
                (vec![4, 128, 8, 8], true),
                (vec![64, 128, 1, 1], true),
                (vec![64], false),
                (vec![4, 64, 8, 8], true),
            ],
            outputs: LAYER_OUTPUTS,
        },
    ]
}

/// Random f32 values (widened): what the GPU receives exactly.
fn inputs(path: &Path, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = SplitMix64::new(seed);
    path.inputs
        .iter()
        .map(|(shape, _)| {
            rng.normal_vec(shape.iter().product(), 1.0)
                .into_iter()
                .map(|v| f64::from(v as f32))
                .collect()
        })
        .collect()
}

/// `values` with every GEMM operand rounded to TF32, as the emulated tensor cores round them.
fn tf32_operands(path: &Path, values: &[Vec<f64>]) -> Vec<Vec<f64>> {
    path.inputs
        .iter()
        .zip(values)
        .map(|((_, operand), v)| {
            v.iter()
                .map(|&x| {
                    if *operand {
                        f64::from(Precision::Tf32.round(x as f32))
                    } else {
                        x
                    }
                })
                .collect()
        })
        .collect()
}

fn check_path(gpu: &Cuda<f32>, path: &Path, seed: u64, emulated: bool) {
    let values = inputs(path, seed);
    let reference = Cpu::<f64>::new();
    let exact = path.run(&reference, &values);
    gpu.device().allow_tf32(true).unwrap();
    let tf32 = path.run(gpu, &values);
    for ((name, _), (got, want)) in path.outputs.iter().zip(tf32.iter().zip(&exact)) {
        let error = relative_error(got, want);
        assert!(
            error <= TF32_CLASS,
            "{} {name}: TF32 relative error {error:e} > {TF32_CLASS:e}",
            path.name
        );
    }
    if !emulated {
        return;
    }
    let rounded = path.run(&reference, &tf32_operands(path, &values));
    gpu.device().allow_tf32(false).unwrap();
    let plain = path.run(gpu, &values);
    let outputs = path.outputs.iter().zip(tf32.iter().zip(&plain));
    for (i, ((name, gemm), (got, f32_result))) in outputs.enumerate() {
        // A GEMM result sees the rounded operands; a bias gradient sums the unrounded ones.
        let (emulation, what) = if *gemm {
            (&rounded[i], "the f64 reference of TF32-rounded operands")
        } else {
            (&exact[i], "the f64 reference")
        };
        let error = relative_error(got, emulation);
        assert!(
            error <= F32_GEMM_CLASS,
            "{} {name}: relative error {error:e} against {what} > {F32_GEMM_CLASS:e}",
            path.name
        );
        if *gemm {
            assert_ne!(
                got, f32_result,
                "{} {name}: TF32 allowed, yet bitwise the f32 result",
                path.name
            );
        }
    }
}

#[test]
fn tf32_gemm_paths_stay_within_their_class() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_tf32") else {
        return;
    };
    let emulated = gpu.device().info.name.contains("emulator");
    for (i, path) in paths().iter().enumerate() {
        check_path(&gpu, path, 70 + i as u64, emulated);
    }
    gpu.device().allow_tf32(false).unwrap();
}
