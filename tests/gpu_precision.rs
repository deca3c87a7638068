//! `--precision bf16` and `fp16` on CUDA (docs/precision.md §"CUDA") against the reference's
//! emulation in the same precision (`Cpu::with_precision`).
//!
//! - The conversion kernels (`gpu/kernels/precision.cu`): the 16-bit patterns cuBLAS receives and
//!   the f32 round trip equal `Precision::round` bit for bit on the edge values (NaN, infinities,
//!   65504 and the values around the fp16 overflow boundary, the largest f32, fp16 subnormals and
//!   their ties, f32 subnormals, ties to even) and on every 997th f32 bit pattern.
//! - Each GEMM op, forward and backward: the linear layer, the batched matmul (each transpose
//!   combination), 3x3 (padded, strided) and 1x1 convolutions. CUDA and the emulation multiply the
//!   same rounded operands, and the product of two bf16 or fp16 numbers is exact in f32, so the
//!   two differ by the order of their f32 sums alone. Summed in any order, `n` terms carry an
//!   error of at most `gamma_n sum |term|` (`gamma_n = n u / (1 - n u)`, `u = 2^-24`), so
//!   elementwise `|cuda - cpu| <= 2 gamma_n sum |term|`, with `sum |term|` computed by the f64
//!   reference in the same precision on the absolute values of the operands, and `n` the op's
//!   longest reduction. A convolution stores `y` (before its bias), `dx` and `dW` in the 16-bit
//!   format on both sides, so where the two sums straddle a rounding boundary the outputs are
//!   neighbours in the format instead: such flips are counted, each at most one spacing of the
//!   format beyond the bound, and are rare (at most 5% of an output's elements; a rounding other
//!   than to nearest would flip about half). `dx` and `dW` hold 16-bit values exactly. Every
//!   engine the device has (cuDNN in its 16-bit configurations, im2col) is checked. Each output
//!   also differs from the f32 run's, so the 16-bit path ran.
//! - On cuDNN a 16-bit convolution's context keeps the 16-bit copy of its input that the forward
//!   read, not the input: dropping the input frees it, and the backward's bits do not change.
//! - A BatchNorm over a 16-bit convolution's output reads and keeps the 16-bit sums the output
//!   was widened from: dropping the output frees it, and the forward's and backward's bits are
//!   those over a plain copy. The fused convolution and BatchNorm gives the bits of the two ops,
//!   forward and backward, without holding the convolution's `f32` output or the BatchNorm's
//!   `f32` `dx`; with the neuron before the convolution (the spiking convolution's backward) it
//!   gives the bits of the ops in turn without an `f32` `dL/ds`, writing over the neuron's `h`.
//! - A training step of a tiny model of every family (smooth firing, so no spike can flip) in bf16
//!   and fp16: CUDA against the CPU in the same precision (the bar is below), with some tensor
//!   away from the f32 step's by more than that bar, so the bar can fail.
//! - `verify --precision bf16|fp16` on CUDA with the exact coupling: the reversible backward
//!   equals the stored-activation backward bitwise (the recompute rounds as the forward did).
//! - `revsnn train --device cuda --precision bf16` runs a tiny epoch and records bf16.
//! - `--precision fp16` training on CUDA through the loss scaler, in the CPU's scenarios
//!   (tests/common/fp16.rs): resumed bit for bit, scaler included; steps whose scaled gradients
//!   overflow are skipped, each halving the scale, and training recovers; gradients that
//!   overflow even unscaled stop the run once the scale falls below 1, its saved state untouched.
//!
//! Skips without a GPU (`SKIP: no CUDA device`), fails then with `REVSNN_REQUIRE_GPU=1`.

mod common;

use common::gemm::{GemmOp, batched_shapes, widened};
use common::{TINY_REVSRESNET, fp16, ok, revsnn, revsnn_command, scratch};
use revsnn::commands::random_images;
use revsnn::commands::verify::verify_on;
use revsnn::device::Device;
use revsnn::model::reversible::Coupling;
use revsnn::model::{BuildOptions, EntryKind, ParamId, Targets};
use revsnn::network::{Network, PassOptions};
use revsnn::spec::ModelSpec;
use revsnn_gpu::ops::conv::{Conv2dContext, ConvEngine};
use revsnn_gpu::ops::precision::{HalfFormat, half_bits, rounded};
use revsnn_gpu::ops::saved_input::SavedInput;
use revsnn_gpu::testing::{backend_or_skip, each_conv_engine, emulator_or_skip, with_peak_rise};
use revsnn_gpu::{Cuda, CudaTensor, GpuDevice};
use revsnn_reference::contract::{
    attention_backward_in_turn, attention_forward_in_turn,
    avg_pool_conv_batch_norm_backward_in_turn, conv_batch_norm_backward_in_turn,
    conv_batch_norm_train_avg_pool_in_turn, spiking_conv_batch_norm_backward_in_turn,
};
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, relative_error};
use revsnn_reference::{
    AvgPoolGrad, BatchNormAffine, BatchNormParams, Conv2dParams, ConvBatchNormGrads,
    ConvBatchNormTrainOutput, ConvKind, Cpu, DType, Firing, NeuronBackward, NeuronConfig,
    NeuronSource, Onto, Pool2dParams, Precision,
};

const FORMATS: [HalfFormat; 2] = [HalfFormat::Bf16, HalfFormat::Fp16];

/// The convolutions whose 16-bit operands the memory tests follow: `(name, kernel, padding)` of a
/// padded 3x3 one (cuDNN's, or im2col's) and a pointwise one (a GEMM on either engine).
const SQUARE_AND_POINTWISE: [(&str, usize, usize); 2] = [("3x3", 3, 1), ("1x1", 1, 0)];

/// The model families, one parity fixture spec each.
const FAMILIES: [&str; 4] = ["revsresnet", "msresnet", "revsformer", "spikingformer"];

/// The f32 values whose rounding is easy to get wrong.
fn edge_values() -> Vec<f32> {
    let tiny = 2f32.powi(-24); // the smallest fp16 subnormal
    let mut values = vec![
        0.0,
        1.0,
        f32::NAN,
        f32::INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-40, // an f32 subnormal
        65504.0,
        65519.0,
        65520.0, // the tie above fp16's largest: infinity
        65536.0,
        1e6,
        3.3961776e38, // bf16's largest finite value
        3.3961778e38,
        f32::from_bits(0x7f7f_8000), // the tie above bf16's largest: infinity
        tiny,
        tiny / 2.0, // tie with zero: zero
        tiny * 0.75,
        tiny * 1.5,     // tie: 2 tiny (even)
        tiny * 2.5,     // tie: 2 tiny (even)
        2f32.powi(-14), // the smallest fp16 normal
        2f32.powi(-14) - tiny / 2.0,
        1.0 + 2f32.powi(-8),        // bf16 tie: 1
        1.0 + 3.0 * 2f32.powi(-8),  // bf16 tie: up
        1.0 + 2f32.powi(-11),       // fp16 tie: 1
        1.0 + 3.0 * 2f32.powi(-11), // fp16 tie: up
        0.1,
        1.0 / 3.0,
    ];
    let negated: Vec<f32> = values.iter().map(|v| -v).collect();
    values.extend(negated);
    values.push(f32::from_bits(0x7fc0_1234)); // a NaN with a payload
    values
}

/// Every 997th f32 bit pattern: normals, subnormals, infinities and NaNs of both signs.
fn sweep() -> impl Iterator<Item = f32> {
    (0..=u32::MAX).step_by(997).map(f32::from_bits)
}

/// `half` (a 16-bit pattern of `format`) widened to f32, exactly.
fn widened_half(format: HalfFormat, half: u16) -> f32 {
    match format {
        HalfFormat::Bf16 => half::bf16::from_bits(half).to_f32(),
        HalfFormat::Fp16 => half::f16::from_bits(half).to_f32(),
    }
}

/// `got` is `Precision::round(x)`: the same bits, or a NaN of the same sign for a NaN.
fn assert_rounds(format: HalfFormat, x: f32, got: f32, what: &str) {
    let want = format.precision().round(x);
    if x.is_nan() {
        assert!(
            got.is_nan() && got.is_sign_negative() == x.is_sign_negative(),
            "{format:?} {what}: {x:?} gave {got:?}"
        );
    } else {
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "{format:?} {what}: {x:e} gave {got:e}, the reference {want:e}"
        );
    }
}

#[test]
fn the_conversion_kernels_round_as_the_reference_bit_for_bit() {
    let Some(gpu) = backend_or_skip::<f32>("the_conversion_kernels_round_as_the_reference") else {
        return;
    };
    let values: Vec<f32> = edge_values().into_iter().chain(sweep()).collect();
    let x = gpu
        .tensor_from_vec(&[values.len()], values.clone())
        .unwrap();
    for format in FORMATS {
        let bits = half_bits(gpu.device(), &x, format).unwrap();
        let round_trip = gpu
            .to_vec(&rounded(gpu.device(), &x, format).unwrap())
            .unwrap();
        for ((&x, &half), &back) in values.iter().zip(&bits).zip(&round_trip) {
            assert_rounds(format, x, widened_half(format, half), "16-bit pattern");
            assert_rounds(format, x, back, "round trip");
        }
    }
}

/// One op with its operand shapes and the length of its longest reduction.
struct Case {
    name: &'static str,
    op: GemmOp,
    shapes: Vec<Vec<usize>>,
    terms: usize,
}

impl Case {
    /// The outputs of this case on `backend` from `values`, one per operand.
    fn run<B: Backend>(&self, backend: &B, values: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let inputs = self.shapes.iter().zip(values);
        self.op
            .run(backend, inputs.map(|(shape, v)| (&shape[..], &v[..])))
    }
}

fn cases() -> Vec<Case> {
    let batched = |name, ta: bool, tb: bool| {
        let k = 40;
        Case {
            name,
            op: GemmOp::Batched(ta, tb),
            shapes: batched_shapes((12, k, 9), ta, tb).to_vec(),
            terms: k,
        }
    };
    vec![
        Case {
            name: "linear",
            op: GemmOp::Linear,
            shapes: vec![vec![24, 70], vec![18, 70], vec![18], vec![24, 18]],
            terms: 71,
        },
        batched("batched matmul a b", false, false),
        batched("batched matmul a b^T", false, true),
        batched("batched matmul a^T b", true, false),
        Case {
            name: "3x3 convolution",
            op: GemmOp::Conv(Conv2dParams::new(2, 1)),
            shapes: vec![
                vec![3, 5, 9, 9],
                vec![6, 5, 3, 3],
                vec![6],
                vec![3, 6, 5, 5],
            ],
            // y: 5 * 9 + 1 terms, dx: 6 * 9, dw and db: 3 * 25
            terms: 75,
        },
        Case {
            name: "1x1 convolution",
            op: GemmOp::Conv(Conv2dParams::new(1, 0)),
            shapes: vec![
                vec![3, 16, 6, 6],
                vec![10, 16, 1, 1],
                vec![10],
                vec![3, 10, 6, 6],
            ],
            // dw and db: 3 * 36 terms
            terms: 108,
        },
    ]
}

/// `gamma_n = n u / (1 - n u)` for f32's `u = 2^-24`: the relative error bound of a sum of `n`
/// terms in any order.
fn gamma(n: usize) -> f64 {
    let nu = n as f64 * 2f64.powi(-24);
    nu / (1.0 - nu)
}

/// Random f32 values (widened), spread over a few binades so that rounding matters.
fn inputs(case: &Case, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = SplitMix64::new(seed);
    case.shapes
        .iter()
        .map(|shape| {
            rng.normal_vec(shape.iter().product(), 3.0)
                .into_iter()
                .map(|v| f64::from(v as f32))
                .collect()
        })
        .collect()
}

/// The spacing of `format` at magnitude `m`: at most `2 u m` for a normal value, the subnormal
/// spacing below (2^-24 in fp16; bf16's, 2^-133, is below any value here).
fn spacing(format: HalfFormat, m: f64) -> f64 {
    let precision = format.precision();
    let subnormal = match format {
        HalfFormat::Bf16 => 0.0,
        HalfFormat::Fp16 => 2f64.powi(-24),
    };
    (2.0 * precision.unit_roundoff() * m).max(subnormal)
}

/// One output of a case on one engine against the emulation: within `bar sum |term|`, or, for an
/// output stored in the format, a neighbour (a flip, counted); returns the worst error in units
/// of `sum |term|` outside flips, and the flips.
fn compare_output(
    what: &str,
    format: HalfFormat,
    stored: bool,
    bar: f64,
    (got, want, sums): (&[f64], &[f64], &[f64]),
) -> (f64, usize) {
    let (mut worst, mut flips) = (0.0f64, 0);
    for ((&g, &w), &s) in got.iter().zip(want).zip(sums) {
        let error = (g - w).abs();
        if error <= bar * s {
            if s > 0.0 {
                worst = worst.max(error / s);
            }
            continue;
        }
        let neighbour = bar * s + spacing(format, g.abs().max(w.abs()));
        assert!(
            stored && error <= neighbour,
            "{what}: cuda {g:e}, emulation {w:e}, bound {:e}",
            bar * s
        );
        flips += 1;
    }
    assert!(
        flips * 20 <= got.len(),
        "{what}: {flips} of {} elements flipped",
        got.len()
    );
    (worst, flips)
}

fn check_case(gpu: &Cuda<f32>, case: &Case, format: HalfFormat, seed: u64) {
    let precision = format.precision();
    let values = inputs(case, seed);
    let magnitudes: Vec<Vec<f64>> = values
        .iter()
        .map(|v| v.iter().map(|x| x.abs()).collect())
        .collect();
    let emulated = case.run(&Cpu::<f32>::with_precision(precision), &values);
    let sums_of_magnitudes = case.run(&Cpu::<f64>::with_precision(precision), &magnitudes);
    let device = gpu.device();
    device.set_precision(Precision::F32).unwrap();
    let full = case.run(gpu, &values);
    device.set_precision(precision).unwrap();
    let is_conv = matches!(case.op, GemmOp::Conv(_));
    let bar = 2.0 * gamma(case.terms);
    let outputs = ["y", "dx", "dw", "db"];
    for engine in each_conv_engine(device) {
        let cuda = case.run(gpu, &values);
        for (index, ((got, want), sums)) in cuda
            .iter()
            .zip(&emulated)
            .zip(&sums_of_magnitudes)
            .enumerate()
        {
            let name = if cuda.len() == 1 { "c" } else { outputs[index] };
            let what = format!("{} {precision} {engine:?} {name}", case.name);
            let stored = is_conv && name != "db";
            if stored && name != "y" {
                let exact = got.iter().all(|&v| precision.round_f64(v) == v);
                assert!(exact, "{what}: not stored in {precision}");
            }
            let (worst, flips) = compare_output(&what, format, stored, bar, (got, want, sums));
            assert_ne!(got, &full[index], "{what}: the f32 path ran");
            println!(
                "{what}: |cuda - emulation| <= {worst:.2e} sum|term| (bound {bar:.2e}), \
                 {flips} of {} flipped; against f32 {:.2e} relative",
                got.len(),
                relative_error(got, &full[index])
            );
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

#[test]
fn each_gemm_op_matches_the_emulation_up_to_the_order_of_its_sums() {
    let Some(gpu) = backend_or_skip::<f32>("each_gemm_op_matches_the_emulation") else {
        return;
    };
    for (seed, case) in cases().iter().enumerate() {
        for format in FORMATS {
            check_case(&gpu, case, format, seed as u64);
        }
    }
}

/// A 16-bit pointwise convolution's `y` and `dx` are GEMMs that write their 16-bit outputs
/// themselves (cuBLAS with a 16-bit `C`): with one term per sum (one input channel for `y`, one
/// output channel for `dx`) the f32 sum is a product of two 16-bit values, exact, so rounding it
/// to nearest even must give the emulation's bits exactly, on either engine, whatever order the
/// library sums in. Values spread over 2^-12 to 2^3, so that products round (ties included) and
/// fp16's fall below its smallest normal too.
#[test]
fn a_16_bit_pointwise_convolution_rounds_its_outputs_to_nearest_even() {
    let Some(gpu) = backend_or_skip::<f32>("a_16_bit_pointwise_convolution_rounds") else {
        return;
    };
    let device = gpu.device();
    let mut rng = SplitMix64::new(71);
    let mut spread = |len: usize| -> Vec<f32> {
        let normal = normal_f32(&mut rng, len, 1.0);
        let scales: Vec<f64> = (0..len).map(|_| rng.next_f64()).collect();
        let scale = |u: f64| 2f32.powi(3 - (u * 15.0) as i32);
        normal
            .iter()
            .zip(scales)
            .map(|(v, u)| v * scale(u))
            .collect()
    };
    let values = [spread(2 * 36), spread(3), spread(2 * 36), spread(3)];
    for engine in each_conv_engine(device) {
        for format in FORMATS {
            let precision = format.precision();
            device.set_precision(precision).unwrap();
            let cpu = Cpu::<f32>::with_precision(precision);
            let what = format!("{precision} on {}", engine.name());
            let [gpu_y, gpu_dx] = one_term_outputs(&gpu, &values);
            let [cpu_y, cpu_dx] = one_term_outputs(&cpu, &values);
            assert!(same_bits(&[gpu_y], &[cpu_y]), "{what}: y differs");
            assert!(same_bits(&[gpu_dx], &[cpu_dx]), "{what}: dx differs");
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

/// `y [2, 3, 6, 6]` of a pointwise convolution from one input channel, and `dx [2, 3, 6, 6]` of
/// one to one output channel: one product per element of each. `values`: `x` (one channel),
/// the weight of `y`'s convolution, `dy` (one channel) and the weight of `dx`'s.
fn one_term_outputs<Bk: Backend<Elem = f32>>(
    backend: &Bk,
    values: &[Vec<f32>; 4],
) -> [Vec<f32>; 2] {
    let [x, w_one_in, dy, w_one_out] = values;
    let tensor = |shape: &[usize], values: &[f32]| backend.tensor_from_vec(shape, values.to_vec());
    let params = Conv2dParams::new(1, 0);
    let y = {
        let (x, w) = (tensor(&[2, 1, 6, 6], x), tensor(&[3, 1, 1, 1], w_one_in));
        backend.conv2d_forward(&x.unwrap(), &w.unwrap(), None, params)
    };
    let dx = {
        let x3 = [x.as_slice(), x, x].concat();
        let (x, w) = (tensor(&[2, 3, 6, 6], &x3), tensor(&[1, 3, 1, 1], w_one_out));
        let (_, context) = backend
            .conv2d_forward(&x.unwrap(), &w.unwrap(), None, params)
            .unwrap();
        let dy = tensor(&[2, 1, 6, 6], dy).unwrap();
        backend
            .conv2d_backward(dy, &context)
            .map(|grads| grads.input)
    };
    [y.unwrap().0, dx.unwrap()].map(|t| backend.to_vec(&t).unwrap())
}

/// Live device bytes once the stream is idle.
fn live_bytes(gpu: &Cuda<f32>) -> usize {
    gpu.synchronize().unwrap();
    gpu.memory().live_bytes
}

/// A tensor of `shape` of normal draws of deviation `sd` ([`normal_f32`]).
fn normal_tensor(
    gpu: &Cuda<f32>,
    rng: &mut SplitMix64,
    shape: &[usize],
    sd: f64,
) -> CudaTensor<f32> {
    let values = normal_f32(rng, shape.iter().product(), sd);
    gpu.tensor_from_vec(shape, values).unwrap()
}

/// `len` normal draws of deviation `sd`, as f32.
fn normal_f32(rng: &mut SplitMix64, len: usize, sd: f64) -> Vec<f32> {
    rng.normal_vec(len, sd).iter().map(|&v| v as f32).collect()
}

/// A BatchNorm's `gamma` and `beta` over `channels`, drawn from N(0, 0.5^2) in that order.
fn affine(
    gpu: &Cuda<f32>,
    rng: &mut SplitMix64,
    channels: usize,
) -> (CudaTensor<f32>, CudaTensor<f32>) {
    let gamma = normal_tensor(gpu, rng, &[channels], 0.5);
    (gamma, normal_tensor(gpu, rng, &[channels], 0.5))
}

/// A training BatchNorm's affine parameters `gamma` and `beta` with the default settings.
fn training_norm<'a>(
    gamma: &'a CudaTensor<f32>,
    beta: &'a CudaTensor<f32>,
) -> BatchNormAffine<'a, CudaTensor<f32>> {
    BatchNormAffine {
        gamma,
        beta,
        params: BatchNormParams::default(),
    }
}

/// The values of `tensors`, in order.
fn host(gpu: &Cuda<f32>, tensors: &[&CudaTensor<f32>]) -> Vec<Vec<f32>> {
    tensors.iter().map(|t| gpu.to_vec(t).unwrap()).collect()
}

/// What `pass` returns, with the most device memory live while it ran (every live byte counted).
fn with_peak<R>(device: &GpuDevice, pass: impl FnOnce() -> R) -> (R, usize) {
    device.synchronize().unwrap();
    let live = device.memory().live_bytes;
    let (result, rise) = with_peak_rise(device, pass);
    (result, live + rise)
}

/// Whether two lists of tensors' values are equal bit for bit.
fn same_bits(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.iter()
        .zip(b)
        .all(|(a, b)| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()))
}

/// A 16-bit convolution keeps, for its backward, the 16-bit copy of its input that its product
/// read instead of the input (`SavedInput::Half`): a 3x3 one on cuDNN, a pointwise one (a 16-bit
/// GEMM) on either engine. The forward leaves `y` (with the 16-bit sums it was widened from, as
/// it has no bias), that copy and the weight's 16-bit copy live, dropping the input frees all its
/// bytes, and the backward then gives the bits it gave with the input alive. A 3x3 one on im2col
/// shares the input and keeps no weight copy.
#[test]
fn a_16_bit_convolution_keeps_its_input_in_16_bits_for_the_backward() {
    let Some(gpu) = backend_or_skip::<f32>("a_16_bit_convolution_keeps_its_input") else {
        return;
    };
    let device = gpu.device();
    let mut rng = SplitMix64::new(41);
    for (name, kernel, padding) in SQUARE_AND_POINTWISE {
        let (x_shape, w_shape) = ([3, 4, 7, 7], [5, 4, kernel, kernel]);
        let (x_len, y_len) = (x_shape.iter().product::<usize>(), 3 * 5 * 7 * 7);
        let spikes: Vec<f32> = (0..x_len)
            .map(|_| f32::from(rng.next_f64() > 0.7))
            .collect();
        let weights = normal_f32(&mut rng, w_shape.iter().product(), 0.3);
        let grad_y = normal_f32(&mut rng, y_len, 1.0);
        let tensor =
            |shape: &[usize], values: Vec<f32>| gpu.tensor_from_vec(shape, values).unwrap();
        for engine in each_conv_engine(device) {
            for format in FORMATS {
                device.set_precision(format.precision()).unwrap();
                let w = tensor(&w_shape, weights.clone());
                let dy = tensor(&[3, 5, 7, 7], grad_y.clone());
                let x = tensor(&x_shape, spikes.clone());
                let params = Conv2dParams::new(1, padding);
                let before = live_bytes(&gpu);
                let (y, context) = gpu.conv2d_forward(&x, &w, None, params).unwrap();
                let kept = live_bytes(&gpu) - before - y_len * size_of::<f32>();
                let alive = gpu.conv2d_backward(dy.clone(), &context).unwrap();
                let alive = host(&gpu, &[&alive.input, &alive.weight]);
                let with_x = live_bytes(&gpu);
                drop(x);
                let freed = with_x - live_bytes(&gpu);
                let dropped = gpu.conv2d_backward(dy.clone(), &context).unwrap();
                let dropped = host(&gpu, &[&dropped.input, &dropped.weight]);
                let what = format!("{name} {} on {}", format.precision(), engine.name());
                let sums = y_len * size_of::<u16>();
                assert!(
                    y.exact_half().is_some(),
                    "{what}: y without its 16-bit sums"
                );
                if engine == ConvEngine::Cudnn || kernel == 1 {
                    let halves = (x_len + weights.len()) * size_of::<u16>();
                    assert_eq!(
                        kept,
                        halves + sums,
                        "{what}: the context's 16-bit input, the weight's 16-bit copy and y's \
                         16-bit sums"
                    );
                    assert_eq!(
                        freed,
                        x_len * size_of::<f32>(),
                        "{what}: the input is not kept"
                    );
                } else {
                    assert_eq!(
                        (kept, freed),
                        (sums, 0),
                        "{what}: the context shares the input"
                    );
                }
                assert!(
                    same_bits(&alive, &dropped),
                    "{what}: the backward changed once the input was dropped"
                );
                drop(y);
            }
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

/// A 16-bit convolution on cuDNN (and a pointwise one on either engine) converts its weight once
/// per weight tensor (`CudaTensor::rounded_half`): the first pass (forward and backward) keeps
/// one copy live, a second pass over the same tensor rises to a peak lower by exactly that copy
/// than a pass over a fresh tensor of the same values, and all three give the same bits. A pass
/// in the other format does not read the kept copy (its bits are a fresh tensor's in that
/// format), and dropping the weight frees the copy.
#[test]
fn a_16_bit_convolution_converts_each_weight_tensor_once() {
    let Some(gpu) = backend_or_skip::<f32>("a_16_bit_convolution_converts_each_weight") else {
        return;
    };
    let device = gpu.device();
    let mut rng = SplitMix64::new(43);
    for (name, kernel, padding) in SQUARE_AND_POINTWISE {
        let (x_shape, w_shape, y_shape) = ([2, 4, 6, 6], [5, 4, kernel, kernel], [2, 5, 6, 6]);
        let x = normal_tensor(&gpu, &mut rng, &x_shape, 1.0);
        let dy = normal_tensor(&gpu, &mut rng, &y_shape, 1.0);
        let weights = normal_f32(&mut rng, w_shape.iter().product(), 0.3);
        let copy_bytes = weights.len() * size_of::<u16>();
        let params = Conv2dParams::new(1, padding);
        for engine in each_conv_engine(device) {
            if engine != ConvEngine::Cudnn && kernel != 1 {
                continue;
            }
            let what =
                |format: HalfFormat| format!("{name} {} on {}", format.precision(), engine.name());
            let pass = |w: &CudaTensor<f32>| {
                let (y, context) = gpu.conv2d_forward(&x, w, None, params).unwrap();
                let grads = gpu.conv2d_backward(dy.clone(), &context).unwrap();
                host(&gpu, &[&y, &grads.input, &grads.weight])
            };
            let baseline = live_bytes(&gpu);
            let w = gpu.tensor_from_vec(&w_shape, weights.clone()).unwrap();
            let weight_bytes = live_bytes(&gpu) - baseline;
            device.set_precision(HalfFormat::Bf16.precision()).unwrap();
            let first = pass(&w);
            let kept = live_bytes(&gpu) - baseline - weight_bytes;
            assert_eq!(
                kept,
                copy_bytes,
                "{}: the weight's copy",
                what(HalfFormat::Bf16)
            );
            let w_fresh = gpu.tensor_from_vec(&w_shape, weights.clone()).unwrap();
            let (second, rise) = with_peak_rise(device, || pass(&w));
            let (fresh, fresh_rise) = with_peak_rise(device, || pass(&w_fresh));
            assert!(
                same_bits(&first, &second) && same_bits(&first, &fresh),
                "{}: the kept copy gives other bits than a fresh conversion",
                what(HalfFormat::Bf16)
            );
            assert_eq!(
                fresh_rise,
                rise + copy_bytes,
                "{}: a pass over a converted weight converts it again",
                what(HalfFormat::Bf16)
            );
            drop(w_fresh);
            device.set_precision(HalfFormat::Fp16.precision()).unwrap();
            let other = pass(&w);
            let other_fresh = pass(&gpu.tensor_from_vec(&w_shape, weights.clone()).unwrap());
            assert!(
                same_bits(&other, &other_fresh) && !same_bits(&other, &first),
                "{}: the bf16 copy was read",
                what(HalfFormat::Fp16)
            );
            drop(w);
            assert_eq!(
                live_bytes(&gpu),
                baseline,
                "{}: the copy outlived its weight",
                what(HalfFormat::Bf16)
            );
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

/// A BatchNorm over a 16-bit convolution's output reads and keeps the 16-bit sums that output was
/// widened from instead of the output (`SavedInput::exact`): dropping the output frees all of its
/// `f32` bytes, the backward reads the sums in place (it allocates no `f32` copy of the input
/// beside `dx`), and the forward and backward give the bits of a BatchNorm over a plain copy of
/// the output. Over both of the
/// backward kernels' layouts: 6x6 images (groups of four elements, vector loads) and 5x5 (one
/// element a thread). A convolution with a bias has no exact 16-bit form, and its BatchNorm keeps
/// the output.
#[test]
fn a_batch_norm_over_a_16_bit_convolution_keeps_its_16_bit_sums() {
    let Some(gpu) = backend_or_skip::<f32>("a_batch_norm_over_a_16_bit_convolution") else {
        return;
    };
    let device = gpu.device();
    let mut rng = SplitMix64::new(43);
    let mut normal = |shape: &[usize], sd: f64| normal_tensor(&gpu, &mut rng, shape, sd);
    let (w, bias) = (normal(&[5, 4, 3, 3], 0.3), normal(&[5], 0.5));
    let images = [6, 5].map(|side| {
        let x = normal(&[3, 4, side, side], 1.0);
        (x, normal(&[3, 5, side, side], 1.0))
    });
    let tensor = |shape: &[usize], values: Vec<f32>| gpu.tensor_from_vec(shape, values).unwrap();
    let (gamma, beta) = (tensor(&[5], vec![1.5; 5]), tensor(&[5], vec![0.25; 5]));
    let params = BatchNormParams::default();
    let outputs_of = |input: &CudaTensor<f32>, dy: &CudaTensor<f32>| {
        let (y, batch, context) = gpu
            .batch_norm_train_forward(input, &gamma, &beta, params)
            .unwrap();
        let grads = gpu.batch_norm_backward(dy, &context).unwrap();
        let (mean, var) = (&batch.mean, &batch.var_unbiased);
        host(
            &gpu,
            &[&y, mean, var, &grads.input, &grads.gamma, &grads.beta],
        )
    };
    for engine in each_conv_engine(device) {
        for format in FORMATS {
            device.set_precision(format.precision()).unwrap();
            for (x, dy) in &images {
                let what = format!(
                    "{} on {}, {:?}",
                    format.precision(),
                    engine.name(),
                    dy.shape()
                );
                let conv = Conv2dParams::new(1, 1);
                let (y, _) = gpu.conv2d_forward(x, &w, None, conv).unwrap();
                let plain = tensor(dy.shape(), gpu.to_vec(&y).unwrap());
                let (normed, batch, context) = gpu
                    .batch_norm_train_forward(&y, &gamma, &beta, params)
                    .unwrap();
                let with_y = live_bytes(&gpu);
                drop(y);
                let y_bytes = dy.len() * size_of::<f32>();
                assert_eq!(
                    with_y - live_bytes(&gpu),
                    y_bytes,
                    "{what}: the context keeps y"
                );
                let (kept, rise) =
                    with_peak_rise(device, || gpu.batch_norm_backward(dy, &context).unwrap());
                assert!(
                    rise < 2 * y_bytes,
                    "{what}: the backward held {rise} bytes, more than dx ({y_bytes}) and its sums"
                );
                let (mean, var) = (&batch.mean, &batch.var_unbiased);
                let kept = [&normed, mean, var, &kept.input, &kept.gamma, &kept.beta];
                let kept = host(&gpu, &kept);
                assert!(
                    same_bits(&kept, &outputs_of(&plain, dy)),
                    "{what}: the forward or backward over the 16-bit sums differs"
                );
            }
            let (biased, _) = gpu
                .conv2d_forward(&images[0].0, &w, Some(&bias), Conv2dParams::new(1, 1))
                .unwrap();
            assert!(
                biased.exact_half().is_none(),
                "{} on {}: a biased output is not exact",
                format.precision(),
                engine.name()
            );
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

/// The fused convolution and BatchNorm (`ConvBatchNormOps::conv_batch_norm_train_forward` and
/// `conv_batch_norm_backward`) gives the bits of the two ops in turn, forward (output, batch
/// statistics) and backward (every gradient), for a 3x3 2-D and a 1-D convolution, each without
/// a bias and with one, in f32, bf16 and fp16, on both engines. Under bf16 and fp16 no `f32`
/// tensor of the convolution's output size is held beside the BatchNorm's: on cuDNN the
/// forward's peak is lower than the two ops' by at least the output's f32 bytes without a bias
/// (the two ops keep its 16-bit sums beside it) and its bytes beyond its 16-bit sums with one
/// (which the fused BatchNorm reads plus the bias); on im2col the columns of the 2-D convolution
/// hold the peak. The backward's peak is lower by at least the bytes an f32 `dx` of the
/// BatchNorm holds beyond its 16-bit patterns (with a bias, and those the f32 output the two ops'
/// BatchNorm keeps holds beyond its sums) or, where widening `dx` holds the peak, the input's
/// 16-bit copy, freed before; never higher. The peaks count every live byte, the contexts the
/// forward leaves included.
/// (That the f32 tensors are not even written, a pass fewer each, the peak cannot tell; the
/// profile stage of gpu/check.sh sees it.) Under f32 it is the two ops.
#[test]
fn the_fused_convolution_and_batch_norm_give_the_two_ops_bits_without_the_f32_output() {
    let Some(gpu) = backend_or_skip::<f32>("the_fused_convolution_and_batch_norm") else {
        return;
    };
    let device = gpu.device();
    let mut rng = SplitMix64::new(47);
    // Each case's input and output gradient stay on the host: every run uploads fresh copies to
    // hand over.
    // The last case has a wide input (`true`): its input's 16-bit copy, not the output, holds
    // the forward's peak, and widening `dx` the backward's, where the fused backward has freed
    // that copy. In the others the output holds both.
    let conv2d = ConvKind::Conv2d(Conv2dParams::new(1, 1));
    let shapes = [
        (
            conv2d,
            &[2, 3, 8, 8][..],
            &[16, 3, 3, 3][..],
            &[2, 16, 8, 8][..],
            false,
        ),
        (
            ConvKind::Conv1d,
            &[2, 6, 20],
            &[16, 6, 1],
            &[2, 16, 20],
            false,
        ),
        (
            conv2d,
            &[2, 64, 8, 8],
            &[16, 64, 3, 3],
            &[2, 16, 8, 8],
            true,
        ),
    ];
    let cases = shapes.map(|(kind, x, w, y, wide)| {
        let x = (x.to_vec(), normal_f32(&mut rng, x.iter().product(), 1.0));
        let w = normal_tensor(&gpu, &mut rng, w, 0.3);
        let dy = (y.to_vec(), normal_f32(&mut rng, y.iter().product(), 1.0));
        (kind, x, w, dy, wide)
    });
    let mut normal = |shape: &[usize], sd: f64| normal_tensor(&gpu, &mut rng, shape, sd);
    let (gamma, beta, conv_bias) = (normal(&[16], 0.5), normal(&[16], 0.5), normal(&[16], 0.5));
    let norm = training_norm(&gamma, &beta);
    let upload = |(shape, values): &(Vec<usize>, Vec<f32>)| {
        gpu.tensor_from_vec(shape, values.clone()).unwrap()
    };
    // The outputs and gradients of the two ops in turn (each input freed once it has served, as
    // the layers do), or of the fused ones (the inputs handed over), with the forward's and the
    // backward's peaks.
    let run = |kind: ConvKind, x: &_, w: &CudaTensor<f32>, b, dy: &_, fused: bool| {
        let x = upload(x);
        let (out, forward_peak) = with_peak(device, || {
            if fused {
                return gpu
                    .conv_batch_norm_train_forward(x, w, b, kind, norm)
                    .unwrap();
            }
            let (conv_y, conv) = gpu.conv_forward(&x, w, b, kind).unwrap();
            drop(x);
            let (y, batch, norm) = gpu
                .batch_norm_train_forward(&conv_y, &gamma, &beta, norm.params)
                .unwrap();
            ConvBatchNormTrainOutput {
                y,
                batch,
                conv,
                norm,
            }
        });
        let dy = upload(dy);
        let (conv, context) = (out.conv, out.norm);
        let (grads, backward_peak) = with_peak(device, || {
            if fused {
                return gpu
                    .conv_batch_norm_backward(dy, conv, context, kind)
                    .unwrap();
            }
            let normed = gpu.batch_norm_backward(&dy, &context).unwrap();
            drop((dy, context));
            let grads = gpu.conv_backward(normed.input, &conv, kind).unwrap();
            ConvBatchNormGrads {
                input: grads.input,
                weight: grads.weight,
                bias: grads.bias,
                gamma: normed.gamma,
                beta: normed.beta,
            }
        });
        let (mean, var) = (&out.batch.mean, &out.batch.var_unbiased);
        let (y, g) = (&out.y, &grads);
        let mut tensors = vec![y, mean, var, &g.gamma, &g.beta, &g.input, &g.weight];
        tensors.extend(&g.bias);
        (host(&gpu, &tensors), [forward_peak, backward_peak])
    };
    let biases = [None, Some(&conv_bias)];
    for engine in each_conv_engine(device) {
        for precision in [Precision::F32, Precision::Bf16, Precision::Fp16] {
            device.set_precision(precision).unwrap();
            for ((kind, x, w, dy, wide), b) in cases.iter().flat_map(|c| biases.map(|b| (c, b))) {
                let what = format!(
                    "{precision} on {}, {kind:?}, bias {}",
                    engine.name(),
                    b.is_some()
                );
                let (two_ops, two_ops_peak) = run(*kind, x, w, b, dy, false);
                let (fused, fused_peak) = run(*kind, x, w, b, dy, true);
                assert_eq!(fused.len(), two_ops.len(), "{what}: the gradients differ");
                assert!(same_bits(&fused, &two_ops), "{what}: the bits differ");
                let (elements, inputs) = (dy.1.len(), x.1.len());
                // im2col's columns, not the output, can hold a 2-D convolution's peak. On cuDNN
                // the fused forward never writes the f32 output, and the fused backward neither
                // the BatchNorm's f32 `dx` nor, once it widens `dx`, the input's 16-bit copy.
                let beyond_sums = elements * (size_of::<f32>() - size_of::<u16>());
                let saved = match (precision, engine, wide, b.is_some()) {
                    (Precision::F32, ..) => [0, 0],
                    (_, ConvEngine::Im2colGemm, ..) => [0, 0],
                    (_, _, true, _) => [0, inputs * size_of::<u16>()],
                    (_, _, false, false) => [elements * size_of::<f32>(), beyond_sums],
                    (_, _, false, true) => [beyond_sums, elements * size_of::<f32>()],
                };
                for (pass, ((fused, two_ops), saved)) in ["forward", "backward"]
                    .iter()
                    .zip(fused_peak.iter().zip(two_ops_peak).zip(saved))
                {
                    assert!(
                        fused + saved <= two_ops,
                        "{what}: the fused {pass}'s peak ({fused}) is not below the two ops' \
                         ({two_ops}) by {saved} bytes"
                    );
                }
                if precision == Precision::F32 {
                    assert_eq!(fused_peak, two_ops_peak, "{what}: f32 runs the two ops");
                }
            }
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

/// Under bf16 and fp16 the fused backward of a bias-free convolution and its BatchNorm writes
/// the BatchNorm's 16-bit `dx` over the convolution's 16-bit output when the BatchNorm's context
/// is all that holds it (`bn_backward_input_in_place_*`). With the output still held by a
/// tensor, the backward leaves it as it was (its values and its 16-bit patterns) and allocates
/// `dx`; the gradients are the same bits either way, and the backward's peak is lower by the
/// output's 16-bit bytes (less the sums' partials) when it writes over it on cuDNN (on im2col,
/// whose columns can hold the peak, never higher). For a 3x3 2-D and a 1-D convolution, on both
/// engines.
#[test]
fn the_fused_backward_writes_dx_over_the_16_bit_output_only_its_batch_norm_holds() {
    let Some(gpu) = backend_or_skip::<f32>("the_fused_backward_writes_dx_over_the_output") else {
        return;
    };
    let device = gpu.device();
    let mut rng = SplitMix64::new(61);
    let conv2d = ConvKind::Conv2d(Conv2dParams::new(1, 1));
    // Each case with its output's elements.
    let shapes = [
        (
            conv2d,
            &[2, 3, 8, 8][..],
            &[16, 3, 3, 3][..],
            2 * 16 * 8 * 8,
        ),
        (ConvKind::Conv1d, &[2, 6, 20], &[16, 6, 1], 2 * 16 * 20),
    ];
    let cases = shapes.map(|(kind, x, w, outputs)| {
        let x = normal_tensor(&gpu, &mut rng, x, 1.0);
        let w = normal_tensor(&gpu, &mut rng, w, 0.3);
        (kind, x, w, outputs)
    });
    let (gamma, beta) = affine(&gpu, &mut rng, 16);
    let params = BatchNormParams::default();
    // The gradients and the backward's peak above the live bytes before it; with `hold`, the
    // convolution's output is held through the backward and checked after it.
    let run = |kind: ConvKind, x: &_, w: &_, hold: bool| {
        let (conv_y, conv) = gpu.conv_forward(x, w, None, kind).unwrap();
        let (_, _, norm) = gpu
            .batch_norm_train_forward(&conv_y, &gamma, &beta, params)
            .unwrap();
        let dy = normal_tensor(&gpu, &mut SplitMix64::new(67), conv_y.shape(), 1.0);
        let half = |y: &CudaTensor<f32>| {
            let bits = y
                .exact_half()
                .expect("a bias-free 16-bit output keeps its sums");
            device.download(&bits.bits).unwrap()
        };
        let held = hold.then(|| (gpu.to_vec(&conv_y).unwrap(), half(&conv_y), conv_y));
        let (grads, rise) = with_peak_rise(device, || {
            gpu.conv_batch_norm_backward(dy, conv, norm, kind).unwrap()
        });
        if let Some((values, bits, conv_y)) = held {
            assert_eq!(
                gpu.to_vec(&conv_y).unwrap(),
                values,
                "the held output's values"
            );
            assert_eq!(half(&conv_y), bits, "the held output's 16-bit patterns");
        }
        let g = &grads;
        (host(&gpu, &[&g.input, &g.weight, &g.gamma, &g.beta]), rise)
    };
    for engine in each_conv_engine(device) {
        for precision in [Precision::Bf16, Precision::Fp16] {
            device.set_precision(precision).unwrap();
            for (kind, x, w, outputs) in &cases {
                let what = format!("{precision} on {}, {kind:?}", engine.name());
                let (held, held_rise) = run(*kind, x, w, true);
                let (alone, alone_rise) = run(*kind, x, w, false);
                assert!(same_bits(&alone, &held), "{what}: the bits differ");
                // The held case's peak is its `dx`'s allocation; the other's can be pass 1's
                // partial sums of the backward (two f64 per channel at these sizes), freed
                // before that allocation.
                let saved = match engine {
                    ConvEngine::Im2colGemm => 0,
                    _ => outputs * size_of::<u16>() - 2 * 16 * size_of::<f64>(),
                };
                assert!(
                    alone_rise + saved <= held_rise,
                    "{what}: the peak over an output held alone ({alone_rise}) is not below the \
                     peak over a held one ({held_rise}) by {saved} bytes"
                );
            }
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

/// The backward of a convolution, its BatchNorm and an average pool after it
/// (`ConvBatchNormOps::avg_pool_conv_batch_norm_backward`, RevSResNet24's event stem) gives the
/// bits of the pool's backward then the fused backward, in f32, bf16 and fp16, on both engines,
/// over both of the BatchNorm kernels' layouts (8x6 planes: groups of four; 7x5: one element a
/// thread). Under bf16 and fp16, where the BatchNorm's context alone holds the convolution's
/// output, the pool's `dx` is made as the BatchNorm reads it: on cuDNN the backward's peak rises by
/// less than that `dx`'s f32 bytes, which in turn it allocates (on im2col, whose columns can hold
/// the peak, it is never higher). With the output held, the same bits, and the output left as it
/// was.
#[test]
fn the_average_pool_after_a_batch_norm_gives_its_backward_the_bits_of_the_ops_in_turn() {
    let Some(gpu) = backend_or_skip::<f32>("the_average_pool_after_a_batch_norm") else {
        return;
    };
    let device = gpu.device();
    let mut rng = SplitMix64::new(71);
    let kind = ConvKind::Conv2d(Conv2dParams::new(1, 1));
    let w = normal_tensor(&gpu, &mut rng, &[16, 3, 3, 3], 0.3);
    let (gamma, beta) = affine(&gpu, &mut rng, 16);
    let params = BatchNormParams::default();
    let pool_params = Pool2dParams::K3_S2_P1;
    // Each case's input and the pool's output gradient: 8x6 -> 4x3 and 7x5 -> 4x3 (not square,
    // so that the pool's rows and columns cannot be mistaken for each other).
    let cases = [[2, 3, 8, 6], [2, 3, 7, 5]].map(|shape| {
        let x = normal_tensor(&gpu, &mut rng, &shape, 1.0);
        let dy = normal_tensor(&gpu, &mut rng, &[2, 16, 4, 3], 1.0);
        (x, dy)
    });
    // The gradients and the backward's peak above the live bytes before it, fused or in turn;
    // with `hold`, the convolution's output is held through the backward and checked after it.
    let run = |x: &CudaTensor<f32>, dy: &CudaTensor<f32>, fused: bool, hold: bool| {
        let (conv_y, conv) = gpu.conv_forward(x, &w, None, kind).unwrap();
        let (y, _, norm) = gpu
            .batch_norm_train_forward(&conv_y, &gamma, &beta, params)
            .unwrap();
        let input_shape = y.shape().to_vec();
        drop(y);
        let held = hold.then(|| (gpu.to_vec(&conv_y).unwrap(), conv_y.clone()));
        drop(conv_y);
        let pool = AvgPoolGrad {
            grad_y: dy.clone(),
            input_shape: &input_shape,
            params: pool_params,
        };
        let (grads, rise) = with_peak_rise(device, || match fused {
            true => gpu.avg_pool_conv_batch_norm_backward(pool, conv, norm, kind),
            false => avg_pool_conv_batch_norm_backward_in_turn(&gpu, pool, conv, norm, kind),
        });
        let grads = grads.unwrap();
        if let Some((values, conv_y)) = held {
            assert_eq!(
                gpu.to_vec(&conv_y).unwrap(),
                values,
                "the held output changed"
            );
        }
        let g = &grads;
        (host(&gpu, &[&g.input, &g.weight, &g.gamma, &g.beta]), rise)
    };
    for engine in each_conv_engine(device) {
        for precision in [Precision::F32, Precision::Bf16, Precision::Fp16] {
            device.set_precision(precision).unwrap();
            for (x, dy) in &cases {
                let what = format!("{precision} on {}, {:?}", engine.name(), x.shape());
                let (in_turn, in_turn_rise) = run(x, dy, false, false);
                let (fused, fused_rise) = run(x, dy, true, false);
                let (held, _) = run(x, dy, true, true);
                assert!(same_bits(&fused, &in_turn), "{what}: the bits differ");
                assert!(
                    same_bits(&held, &in_turn),
                    "{what}: the bits differ, output held"
                );
                assert!(
                    fused_rise <= in_turn_rise,
                    "{what}: {fused_rise} > {in_turn_rise}"
                );
                // The pool's dx in f32: in turn a tensor the backward allocates; fused, none.
                let pool_dx = 2 * 16 * x.shape()[2] * x.shape()[3] * size_of::<f32>();
                if precision != Precision::F32 && engine == ConvEngine::Cudnn {
                    assert!(
                        fused_rise < pool_dx && pool_dx <= in_turn_rise,
                        "{what}: the peaks fused ({fused_rise}) and in turn ({in_turn_rise}) \
                         against the pool's dx ({pool_dx} bytes)"
                    );
                }
            }
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

/// The training forward of a convolution, its BatchNorm and an average pool after it
/// (`ConvBatchNormOps::conv_batch_norm_train_avg_pool`, RevSResNet24's event stem) gives the bits
/// of the ops in turn (the pooled output, the batch statistics, and every gradient of the backward
/// from its contexts, the bias's included), for a convolution without a bias and with one, in f32,
/// bf16 and fp16, on both engines, over 8x6 and 7x5 planes. The pool reads the BatchNorm's output
/// as it is made, so that output is never allocated: on cuDNN the forward's peak is lower than in
/// turn by at least half that output's f32 bytes (the pooled output, allocated in its place, is at
/// most a third of it here; on im2col, whose columns can hold the peak, it is never higher).
#[test]
fn the_average_pool_of_a_training_batch_norm_gives_the_bits_of_the_ops_in_turn() {
    let Some(gpu) = backend_or_skip::<f32>("the_average_pool_of_a_training_batch_norm") else {
        return;
    };
    let device = gpu.device();
    let mut rng = SplitMix64::new(73);
    let kind = ConvKind::Conv2d(Conv2dParams::new(1, 1));
    let w = normal_tensor(&gpu, &mut rng, &[16, 3, 3, 3], 0.3);
    let (gamma, beta) = affine(&gpu, &mut rng, 16);
    let conv_bias = normal_tensor(&gpu, &mut rng, &[16], 0.5);
    let norm = training_norm(&gamma, &beta);
    let pool = Pool2dParams::K3_S2_P1;
    let cases = [[2, 3, 8, 6], [2, 3, 7, 5]].map(|shape| {
        let x = (shape, normal_f32(&mut rng, shape.iter().product(), 1.0));
        let dy = normal_tensor(&gpu, &mut rng, &[2, 16, 4, 3], 1.0);
        (x, dy)
    });
    // The outputs and gradients, fused or in turn, and the forward's peak above the live bytes
    // before it (the input handed over).
    let run = |(shape, x): &([usize; 4], Vec<f32>), b, dy: &CudaTensor<f32>, fused: bool| {
        let x = gpu.tensor_from_vec(shape, x.clone()).unwrap();
        let (out, rise) = with_peak_rise(device, || match fused {
            true => gpu.conv_batch_norm_train_avg_pool(x, &w, b, kind, norm, pool),
            false => conv_batch_norm_train_avg_pool_in_turn(&gpu, x, &w, b, kind, norm, pool),
        });
        let out = out.unwrap();
        let input_shape = [2, 16, shape[2], shape[3]];
        let grad = AvgPoolGrad {
            grad_y: dy.clone(),
            input_shape: &input_shape,
            params: pool,
        };
        let g = gpu
            .avg_pool_conv_batch_norm_backward(grad, out.conv, out.norm, kind)
            .unwrap();
        let (mean, var) = (&out.batch.mean, &out.batch.var_unbiased);
        let mut tensors = vec![&out.y, mean, var, &g.input, &g.weight, &g.gamma, &g.beta];
        tensors.extend(&g.bias);
        (host(&gpu, &tensors), rise)
    };
    let biases = [None, Some(&conv_bias)];
    for engine in each_conv_engine(device) {
        for precision in [Precision::F32, Precision::Bf16, Precision::Fp16] {
            device.set_precision(precision).unwrap();
            for ((x, dy), b) in cases.iter().flat_map(|c| biases.map(|b| (c, b))) {
                let what = format!(
                    "{precision} on {}, {:?}, bias {}",
                    engine.name(),
                    x.0,
                    b.is_some()
                );
                let (in_turn, in_turn_rise) = run(x, b, dy, false);
                let (fused, fused_rise) = run(x, b, dy, true);
                assert_eq!(fused.len(), in_turn.len(), "{what}: the gradients differ");
                assert!(same_bits(&fused, &in_turn), "{what}: the bits differ");
                assert!(
                    fused_rise <= in_turn_rise,
                    "{what}: {fused_rise} > {in_turn_rise}"
                );
                // Where in turn the BatchNorm's f32 output is allocated, fused the pooled one,
                // at most a third of its size here.
                let saved = 2 * 16 * x.0[2] * x.0[3] * size_of::<f32>() / 2;
                if engine == ConvEngine::Cudnn {
                    assert!(
                        fused_rise + saved <= in_turn_rise,
                        "{what}: the fused forward's peak ({fused_rise}) is not below the ops' \
                         in turn ({in_turn_rise}) by {saved} bytes"
                    );
                }
            }
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

/// The fused backward of a convolution with a bias and its BatchNorm
/// (`ConvBatchNormOps::conv_batch_norm_backward` from the contexts of `conv_forward` with the bias
/// and `batch_norm_train_forward`: the transformers' MLP) gives the bits of the two backwards in
/// turn, the bias's gradient included (summed over the BatchNorm's 16-bit `dx` as it is widened),
/// for a 3x3 2-D and a 1-D convolution, in f32, bf16 and fp16, on both engines. Under bf16 and fp16
/// on cuDNN no `f32` `dx` of the BatchNorm is held beside its 16-bit patterns: the peak is lower
/// than the two backwards' by at least the output's 16-bit bytes; never higher.
#[test]
fn the_fused_backward_of_a_biased_convolution_and_batch_norm_gives_the_two_ops_bits() {
    let Some(gpu) = backend_or_skip::<f32>("the_fused_backward_of_a_biased_convolution") else {
        return;
    };
    let device = gpu.device();
    let mut rng = SplitMix64::new(53);
    let conv2d = ConvKind::Conv2d(Conv2dParams::new(1, 1));
    let shapes = [
        (
            conv2d,
            &[2, 3, 8, 8][..],
            &[16, 3, 3, 3][..],
            &[2, 16, 8, 8][..],
        ),
        (ConvKind::Conv1d, &[2, 6, 20], &[16, 6, 1], &[2, 16, 20]),
    ];
    let cases = shapes.map(|(kind, x, w, y)| {
        let x = normal_tensor(&gpu, &mut rng, x, 1.0);
        let w = normal_tensor(&gpu, &mut rng, w, 0.3);
        let dy = (y.to_vec(), normal_f32(&mut rng, y.iter().product(), 1.0));
        (kind, x, w, dy)
    });
    let mut normal = |shape: &[usize], sd: f64| normal_tensor(&gpu, &mut rng, shape, sd);
    let (bias, gamma, beta) = (normal(&[16], 2.0), normal(&[16], 0.5), normal(&[16], 0.5));
    let params = BatchNormParams::default();
    // Every gradient of the two backwards in turn or of the fused one, and the backward's peak
    // above the live bytes before it.
    let run = |kind: ConvKind, x: &_, w: &_, (shape, dy): &(Vec<usize>, Vec<f32>), fused| {
        let (conv_y, conv) = gpu.conv_forward(x, w, Some(&bias), kind).unwrap();
        let (_, _, norm) = gpu
            .batch_norm_train_forward(&conv_y, &gamma, &beta, params)
            .unwrap();
        drop(conv_y);
        let dy = gpu.tensor_from_vec(shape, dy.clone()).unwrap();
        let (grads, rise) = with_peak_rise(device, || match fused {
            true => gpu.conv_batch_norm_backward(dy, conv, norm, kind).unwrap(),
            false => conv_batch_norm_backward_in_turn(&gpu, dy, conv, norm, kind).unwrap(),
        });
        let db = grads.bias.expect("a biased convolution's bias gradient");
        let g = [&grads.input, &grads.weight, &db, &grads.gamma, &grads.beta];
        (host(&gpu, &g), rise)
    };
    for engine in each_conv_engine(device) {
        for precision in [Precision::F32, Precision::Bf16, Precision::Fp16] {
            device.set_precision(precision).unwrap();
            for (kind, x, w, dy) in &cases {
                let what = format!("{precision} on {}, {kind:?}", engine.name());
                let (two_ops, two_ops_rise) = run(*kind, x, w, dy, false);
                let (fused, fused_rise) = run(*kind, x, w, dy, true);
                assert!(same_bits(&fused, &two_ops), "{what}: the bits differ");
                let saved = match (precision, engine) {
                    (Precision::F32, _) | (_, ConvEngine::Im2colGemm) => 0,
                    _ => dy.1.len() * size_of::<u16>(),
                };
                assert!(
                    fused_rise + saved <= two_ops_rise,
                    "{what}: the fused backward's peak ({fused_rise}) is not below the two \
                     ops' ({two_ops_rise}) by {saved} bytes"
                );
            }
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

/// The fused convolution and BatchNorm landing on a residual
/// (`ConvBatchNormOps::conv_batch_norm_train_forward_onto`, the reversible couplings) gives the
/// bits of the fused op then `add_reusing` or `sub_reusing`, with the same statistics, in f32, bf16
/// and fp16, on both engines, over both of the elementwise kernels' layouts (8x8 images: groups of
/// four, vector loads; 5x5: one element a thread), for a convolution without a bias and with one.
/// Over a residual nothing else holds, the output is written over it: no tensor of the output's
/// size is allocated, so on cuDNN, where the output holds the forward's peak, the peak is lower (on
/// im2col, whose columns may hold it, never higher). A residual another tensor shares is left
/// unchanged, and the bits are the same.
#[test]
fn the_fused_convolution_and_batch_norm_lands_its_output_on_a_residual() {
    let Some(gpu) = backend_or_skip::<f32>("the_fused_convolution_and_batch_norm_onto") else {
        return;
    };
    let device = gpu.device();
    let mut rng = SplitMix64::new(59);
    let kind = ConvKind::Conv2d(Conv2dParams::new(1, 1));
    let w = normal_tensor(&gpu, &mut rng, &[8, 3, 3, 3], 0.3);
    let (gamma, beta) = affine(&gpu, &mut rng, 8);
    let conv_bias = normal_tensor(&gpu, &mut rng, &[8], 0.5);
    let norm = training_norm(&gamma, &beta);
    let cases = [8, 5].map(|side| {
        let x = normal_f32(&mut rng, 2 * 3 * side * side, 1.0);
        let residual = normal_f32(&mut rng, 2 * 8 * side * side, 2.0);
        (side, x, residual)
    });
    for engine in each_conv_engine(device) {
        for precision in [Precision::F32, Precision::Bf16, Precision::Fp16] {
            device.set_precision(precision).unwrap();
            for (side, x, residual) in &cases {
                let upload = |shape: &[usize], values: &[f32]| {
                    gpu.tensor_from_vec(shape, values.to_vec()).unwrap()
                };
                let (x_shape, y_shape) = ([2, 3, *side, *side], [2, 8, *side, *side]);
                let ontos = [Onto::add, Onto::sub];
                for (onto, b) in ontos
                    .into_iter()
                    .flat_map(|o| [(o, None), (o, Some(&conv_bias))])
                {
                    let what = format!(
                        "{precision} on {}, {side}x{side}, bias {}",
                        engine.name(),
                        b.is_some()
                    );
                    let plain = || {
                        let x = upload(&x_shape, x);
                        let (out, rise) = with_peak_rise(device, || {
                            gpu.conv_batch_norm_train_forward(x, &w, b, kind, norm)
                                .unwrap()
                        });
                        let landed = onto(upload(&y_shape, residual)).land(&gpu, out.y);
                        let (mean, var) = (&out.batch.mean, &out.batch.var_unbiased);
                        (host(&gpu, &[&landed.unwrap(), mean, var]), rise)
                    };
                    let (expected, plain_rise) = plain();
                    let fused = |keep_residual: bool| {
                        let (x, residual) = (upload(&x_shape, x), upload(&y_shape, residual));
                        let shared = keep_residual.then(|| residual.clone());
                        let (out, rise) = with_peak_rise(device, || {
                            gpu.conv_batch_norm_train_forward_onto(
                                x,
                                &w,
                                b,
                                kind,
                                norm,
                                onto(residual),
                            )
                            .unwrap()
                        });
                        let (mean, var) = (&out.batch.mean, &out.batch.var_unbiased);
                        let shared = shared.map(|residual| gpu.to_vec(&residual).unwrap());
                        (host(&gpu, &[&out.y, mean, var]), rise, shared)
                    };
                    let (got, rise, _) = fused(false);
                    assert!(same_bits(&got, &expected), "{what}: the bits differ");
                    // The convolution's own peak can come close to the two outputs', so the
                    // peak is lower, not lower by the output's bytes.
                    let lower = match engine {
                        ConvEngine::Cudnn => rise < plain_rise,
                        ConvEngine::Im2colGemm => rise <= plain_rise,
                    };
                    assert!(
                        lower,
                        "{what}: the peak ({rise}) is not below the op's ({plain_rise})"
                    );
                    let (got, _, kept) = fused(true);
                    assert!(
                        same_bits(&got, &expected),
                        "{what}: shared, the bits differ"
                    );
                    assert!(
                        same_bits(&[kept.unwrap()], std::slice::from_ref(residual)),
                        "{what}: a shared residual changed"
                    );
                }
            }
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

/// The spiking convolution's backward (`ConvBatchNormOps::spiking_conv_batch_norm_backward`:
/// BatchNorm, convolution, then the neuron that fired the convolution's input) gives the bits of
/// the ops in turn (`spiking_conv_batch_norm_backward_in_turn`), for a neuron that kept `h` or its
/// input, on every engine, in f32, bf16 and fp16, over a 3x3, a pointwise and a 1-D convolution. In
/// 16 bits the neuron reads the convolution's 16-bit `dx` and writes `dL/dx` over its `h`, so no
/// `f32` `dL/ds` is allocated: where the widened `dx` holds the ops' peak (cuDNN's 3x3 convolution,
/// which narrows 8 channels to 3), the peak is lower; where `f32` sums may hold it (im2col, the
/// pointwise GEMM), and for a neuron that kept its input, never higher. An `h` that another tensor
/// shares is left unchanged, and the bits are the same.
#[test]
fn the_spiking_convolution_backward_writes_the_neurons_gradient_over_its_potentials() {
    let Some(gpu) = backend_or_skip::<f32>("the_spiking_convolution_backward") else {
        return;
    };
    let device = gpu.device();
    let mut rng = SplitMix64::new(61);
    let (time_steps, batch, side) = (2, 3, 5);
    let config = NeuronConfig::if_atan();
    let (gamma, beta) = affine(&gpu, &mut rng, 3);
    let norm = training_norm(&gamma, &beta);
    let convolutions = [
        (
            "3x3",
            ConvKind::Conv2d(Conv2dParams::new(1, 1)),
            vec![3, 8, 3, 3],
            vec![side, side],
        ),
        (
            "1x1",
            ConvKind::Conv2d(Conv2dParams::new(1, 0)),
            vec![3, 8, 1, 1],
            vec![side, side],
        ),
        ("1-D", ConvKind::Conv1d, vec![3, 8, 1], vec![side * side]),
    ];
    for (name, kind, weight_shape, spatial) in convolutions {
        let w = normal_tensor(&gpu, &mut rng, &weight_shape, 0.3);
        let x_shape = [&[time_steps, batch, 8][..], &spatial].concat();
        let y_shape = [&[time_steps * batch, 3][..], &spatial].concat();
        let x = normal_f32(&mut rng, x_shape.iter().product(), 1.5);
        let dy = normal_f32(&mut rng, y_shape.iter().product(), 1.0);
        for engine in each_conv_engine(device) {
            for precision in [Precision::F32, Precision::Bf16, Precision::Fp16] {
                device.set_precision(precision).unwrap();
                for keeps_input in [false, true] {
                    let what = format!(
                        "{name} {precision} on {}, keeping {}",
                        engine.name(),
                        if keeps_input { "x" } else { "h" }
                    );
                    // The forward, then the backward by `run` with the peak it added; with
                    // `share_h`, a tensor sharing the kept `h` outlives the backward.
                    let backward = |run: &dyn Fn(_, _, _, _) -> _, share_h: bool| {
                        let x_in = gpu.tensor_from_vec(&x_shape, x.clone()).unwrap();
                        let kept_x = keeps_input.then(|| x_in.clone());
                        let (spikes, neuron) = if keeps_input {
                            gpu.neuron_forward_keeping_input(x_in, &config).unwrap()
                        } else {
                            gpu.neuron_forward(x_in, &config).unwrap()
                        };
                        let shared = share_h.then(|| neuron.kept.tensor().clone());
                        let flat = revsnn_reference::contract::flatten_time(&gpu, &spikes);
                        drop(spikes);
                        let out = gpu
                            .conv_batch_norm_train_forward(flat.unwrap(), &w, None, kind, norm)
                            .unwrap();
                        drop(out.y);
                        let dy = gpu.tensor_from_vec(&y_shape, dy.clone()).unwrap();
                        let neuron = NeuronBackward {
                            source: NeuronSource::Kept(neuron),
                            config: &config,
                            time_steps,
                        };
                        let (grads, rise): (ConvBatchNormGrads<CudaTensor<f32>>, usize) =
                            with_peak_rise(device, || run(dy, out.conv, out.norm, neuron));
                        let ConvBatchNormGrads {
                            input,
                            weight,
                            gamma,
                            beta,
                            ..
                        } = &grads;
                        assert_eq!(gpu.shape(input), x_shape, "{what}: dL/dx's shape");
                        drop(kept_x);
                        let shared = shared.map(|h| gpu.to_vec(&h).unwrap());
                        (host(&gpu, &[input, weight, gamma, beta]), rise, shared)
                    };
                    let in_turn = |dy, conv, norm, neuron| {
                        spiking_conv_batch_norm_backward_in_turn(&gpu, dy, conv, norm, kind, neuron)
                            .unwrap()
                    };
                    let fused = |dy, conv, norm, neuron| {
                        gpu.spiking_conv_batch_norm_backward(dy, conv, norm, kind, neuron)
                            .unwrap()
                    };
                    let (expected, turn_rise, _) = backward(&in_turn, false);
                    let (got, rise, _) = backward(&fused, false);
                    assert!(same_bits(&got, &expected), "{what}: the bits differ");
                    let lower = precision != Precision::F32
                        && !keeps_input
                        && engine == ConvEngine::Cudnn
                        && name == "3x3";
                    let ok = if lower {
                        rise < turn_rise
                    } else {
                        rise <= turn_rise
                    };
                    assert!(
                        ok,
                        "{what}: the peak ({rise}) against the ops' in turn ({turn_rise})"
                    );
                    if !keeps_input {
                        let (got, _, h_as_kept) = backward(&in_turn, true);
                        let (fused_got, _, h_shared) = backward(&fused, true);
                        assert!(
                            same_bits(&fused_got, &got),
                            "{what}: shared h, the bits differ"
                        );
                        assert!(
                            same_bits(&[h_shared.unwrap()], &[h_as_kept.unwrap()]),
                            "{what}: a shared h changed"
                        );
                    }
                }
            }
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

/// A 16-bit convolution's backward on cuDNN frees the `dy` handed to it once it holds the
/// rounded 16-bit copy: its peak is lower by at least that copy's bytes than when the caller
/// keeps `dy` alive, and the gradients are the same bits.
#[test]
fn a_16_bit_convolution_backward_frees_the_dy_handed_to_it() {
    let Some(gpu) = backend_or_skip::<f32>("a_16_bit_convolution_backward_frees_dy") else {
        return;
    };
    let device = gpu.device();
    let mut rng = SplitMix64::new(53);
    let mut normal = |shape: &[usize], sd: f64| normal_tensor(&gpu, &mut rng, shape, sd);
    let (x, w) = (normal(&[2, 4, 6, 6], 1.0), normal(&[5, 4, 3, 3], 0.3));
    let dy_values = gpu.to_vec(&normal(&[2, 5, 6, 6], 1.0)).unwrap();
    let conv = Conv2dParams::new(1, 1);
    let cudnn = each_conv_engine(device).filter(|&engine| engine == ConvEngine::Cudnn);
    for format in cudnn.flat_map(|_| FORMATS) {
        device.set_precision(format.precision()).unwrap();
        let what = format.precision();
        let (_, context) = gpu.conv2d_forward(&x, &w, None, conv).unwrap();
        let dy = gpu
            .tensor_from_vec(&[2, 5, 6, 6], dy_values.clone())
            .unwrap();
        let peak_of = |dy: CudaTensor<f32>| {
            let (grads, rise) =
                with_peak_rise(device, || gpu.conv2d_backward(dy, &context).unwrap());
            (rise, host(&gpu, &[&grads.input, &grads.weight]))
        };
        let (held, kept_grads) = peak_of(dy.clone());
        let (handed, grads) = peak_of(dy);
        let half_bytes = dy_values.len() * size_of::<u16>();
        assert!(
            held >= handed + half_bytes,
            "{what}: the peak with dy handed over ({handed}) is not below the peak with dy kept \
             ({held}) by its 16-bit copy ({half_bytes})"
        );
        assert!(
            same_bits(&grads, &kept_grads),
            "{what}: the gradients differ"
        );
    }
    device.set_precision(Precision::F32).unwrap();
}

/// A convolution over a neuron's spikes keeps them one bit each (`SavedInput::Spikes`), in every
/// precision and on both engines: dropping the spikes frees all of their bytes, the context
/// holds one 32-bit word per 32 elements (a partial last word included), and the backward gives
/// the bits of a convolution over a plain copy of the spikes, which the context keeps as it is.
/// A smooth neuron's output is not spikes.
#[test]
fn a_convolution_over_spikes_keeps_them_one_bit_each() {
    let Some(gpu) = backend_or_skip::<f32>("a_convolution_over_spikes") else {
        return;
    };
    let device = gpu.device();
    let mut rng = SplitMix64::new(47);
    let mut normal = |shape: &[usize], sd: f64| normal_tensor(&gpu, &mut rng, shape, sd);
    // 280 elements: 8 full words and a partial one.
    let currents = normal(&[2, 4, 5, 7], 1.5);
    let (w, dy) = (normal(&[5, 4, 3, 3], 0.3), normal(&[2, 5, 5, 7], 1.0));
    let heaviside = NeuronConfig::if_atan();
    let smooth = NeuronConfig {
        firing: Firing::Smooth,
        ..heaviside
    };
    let conv = Conv2dParams::new(1, 1);
    let grads_of = |context: &Conv2dContext<f32>| {
        let grads = gpu.conv2d_backward(dy.clone(), context).unwrap();
        host(&gpu, &[&grads.input, &grads.weight])
    };
    for engine in each_conv_engine(device) {
        for precision in [Precision::F32, Precision::Bf16, Precision::Fp16] {
            device.set_precision(precision).unwrap();
            let what = format!("{precision} on {}", engine.name());
            let (spikes, _) = gpu.neuron_forward(currents.clone(), &heaviside).unwrap();
            let values = gpu.to_vec(&spikes).unwrap();
            assert!(spikes.is_spikes(), "{what}: the spikes are not marked");
            assert!(
                values.contains(&0.0) && values.contains(&1.0),
                "{what}: {values:?}"
            );
            let plain = gpu.tensor_from_vec(spikes.shape(), values).unwrap();
            let (_, context) = gpu.conv2d_forward(&spikes, &w, None, conv).unwrap();
            let kept = match &context.input {
                SavedInput::Spikes { bits, .. } => bits.len(),
                other => panic!("{what}: the context keeps {other:?}"),
            };
            assert_eq!(kept, 9, "{what}: one bit per spike");
            let with_spikes = live_bytes(&gpu);
            let spike_bytes = spikes.len() * size_of::<f32>();
            drop(spikes);
            assert_eq!(with_spikes - live_bytes(&gpu), spike_bytes, "{what}: kept");
            let (_, plain_context) = gpu.conv2d_forward(&plain, &w, None, conv).unwrap();
            assert!(
                same_bits(&grads_of(&context), &grads_of(&plain_context)),
                "{what}: the backward over the spike bits differs"
            );
            let (smoothed, _) = gpu.neuron_forward(currents.clone(), &smooth).unwrap();
            assert!(!smoothed.is_spikes(), "{what}: a smooth output is marked");
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

/// The fused convolution and BatchNorm frees the spikes handed to it as soon as their bits
/// exist: on cuDNN under bf16 and fp16 its peak stays below the same op's with the spikes held by
/// the caller by at least the 16-bit operand's bytes (held, the f32 spikes sit beside the bits,
/// that operand and cuDNN's output; handed over, the bits alone are the peak of this shape, whose
/// input is large against its output), with the same bits.
#[test]
fn the_fused_convolution_frees_the_spikes_handed_to_it_once_their_bits_exist() {
    let Some(gpu) = backend_or_skip::<f32>("the_fused_convolution_frees_the_spikes") else {
        return;
    };
    let device = gpu.device();
    let mut rng = SplitMix64::new(59);
    let mut normal = |shape: &[usize], sd: f64| normal_tensor(&gpu, &mut rng, shape, sd);
    let currents = normal(&[2, 16, 8, 8], 1.5);
    let w = normal(&[2, 16, 3, 3], 0.3);
    let (gamma, beta) = (normal(&[2], 0.5), normal(&[2], 0.5));
    let norm = training_norm(&gamma, &beta);
    let kind = ConvKind::Conv2d(Conv2dParams::new(1, 1));
    let cudnn = each_conv_engine(device).filter(|&engine| engine == ConvEngine::Cudnn);
    for format in cudnn.flat_map(|_| FORMATS) {
        device.set_precision(format.precision()).unwrap();
        let what = format.precision();
        let run = |spikes: CudaTensor<f32>| {
            let (out, rise) = with_peak_rise(device, || {
                gpu.conv_batch_norm_train_forward(spikes, &w, None, kind, norm)
                    .unwrap()
            });
            (host(&gpu, &[&out.y]), rise)
        };
        let (spikes, _) = gpu
            .neuron_forward(currents.clone(), &NeuronConfig::if_atan())
            .unwrap();
        let (held_y, held) = run(spikes.clone());
        let (handed_y, handed) = run(spikes);
        assert!(same_bits(&held_y, &handed_y), "{what}: the bits differ");
        let operand = currents.len() * size_of::<u16>();
        assert!(
            handed + operand <= held,
            "{what}: handed over, the peak ({handed}) is not below the held one ({held}) by \
             the operand's {operand} bytes"
        );
    }
    device.set_precision(Precision::F32).unwrap();
}

/// `TensorOps::keep` holds a neuron's spikes one bit each (42 elements: one full 32-bit word and a
/// partial one), so that dropping the spikes frees all of their bytes, and any other tensor as it
/// is (no new bytes); `kept` gives back the same values.
#[test]
fn keep_holds_spikes_one_bit_each_and_gives_back_their_values() {
    let Some(gpu) = backend_or_skip::<f32>("keep_holds_spikes_one_bit_each") else {
        return;
    };
    let mut rng = SplitMix64::new(53);
    let currents = normal_tensor(&gpu, &mut rng, &[2, 3, 7], 1.5);
    let (spikes, _) = gpu
        .neuron_forward(currents.clone(), &NeuronConfig::if_atan())
        .unwrap();
    let values = gpu.to_vec(&spikes).unwrap();
    let before = live_bytes(&gpu);
    let kept = gpu.keep(&spikes).unwrap();
    let words = 2 * size_of::<u32>();
    assert_eq!(live_bytes(&gpu) - before, words, "one bit per spike");
    let spike_bytes = spikes.len() * size_of::<f32>();
    drop(spikes);
    assert_eq!(before - live_bytes(&gpu), spike_bytes - words);
    let back = gpu.kept(&kept).unwrap();
    assert!(same_bits(&[gpu.to_vec(&back).unwrap()], &[values]));
    let before = live_bytes(&gpu);
    let kept = gpu.keep(&currents).unwrap();
    assert_eq!(
        live_bytes(&gpu),
        before,
        "a real-valued tensor is kept as it is"
    );
    let back = gpu.kept(&kept).unwrap();
    let expected = gpu.to_vec(&currents).unwrap();
    assert!(same_bits(&[gpu.to_vec(&back).unwrap()], &[expected]));
}

/// `q^T`, `k^T`, `v^T` and `d(o^T)` of an attention test.
type Operands = (
    CudaTensor<f32>,
    CudaTensor<f32>,
    CudaTensor<f32>,
    CudaTensor<f32>,
);

/// Spiking self-attention's products as one op (`AttentionOps::attention_forward` and
/// `attention_backward`) give the bits of the products in turn (`o^T` and the three gradients),
/// in f32, bf16 and fp16, over spikes (kept one bit each) and over real values, with `d != N`
/// so that no transpose can pass for another. Under bf16 and fp16 the scores and their gradient
/// exist only in 16 bits: each pass's peak is below the products' in turn by at least the
/// scores' f32 bytes (less the spike bits, which the op keeps before its products).
#[test]
fn the_attention_op_gives_the_bits_of_its_products_in_turn() {
    let Some(gpu) = backend_or_skip::<f32>("the_attention_op_gives_the_bits") else {
        return;
    };
    let device = gpu.device();
    let mut rng = SplitMix64::new(83);
    // [T, B, h, d, N]: the scores are [T, B, h, N, N].
    let shape = [2, 2, 2, 8, 12];
    let scores_f32 = 2 * 2 * 2 * 12 * 12 * size_of::<f32>();
    let spike_words = shape.iter().product::<usize>().div_ceil(32);
    let mut operands = |spiking: bool| {
        let [q, k, v] = [0, 1, 2].map(|_| {
            let currents = normal_tensor(&gpu, &mut rng, &shape, 1.5);
            match spiking {
                true => {
                    gpu.neuron_forward(currents, &NeuronConfig::if_atan())
                        .unwrap()
                        .0
                }
                false => currents,
            }
        });
        (q, k, v, normal_tensor(&gpu, &mut rng, &shape, 1.0))
    };
    let cases = [operands(true), operands(false)];
    // `o^T` and the gradients, and the forward's and the backward's peaks above the live bytes
    // before each.
    let run = |(q, k, v, dy): &Operands, fused: bool| {
        let operands = (q.clone(), k.clone(), v.clone());
        let (forward, forward_rise) = with_peak_rise(device, || match fused {
            true => gpu.attention_forward(operands.0, operands.1, operands.2),
            false => attention_forward_in_turn(&gpu, operands.0, operands.1, operands.2),
        });
        let (o_t, kept) = forward.unwrap();
        let (grads, backward_rise) = with_peak_rise(device, || match fused {
            true => gpu.attention_backward(dy.clone(), kept),
            false => attention_backward_in_turn(&gpu, dy.clone(), kept),
        });
        let g = grads.unwrap();
        let values = host(&gpu, &[&o_t, &g.q_t, &g.k_t, &g.v_t]);
        (values, [forward_rise, backward_rise])
    };
    for precision in [Precision::F32, Precision::Bf16, Precision::Fp16] {
        device.set_precision(precision).unwrap();
        // What the op does not hold: the scores in f32, less the spike bits it keeps before its
        // products rather than after.
        let scores = if precision == Precision::F32 {
            0
        } else {
            scores_f32
        };
        for (case, spiking) in cases.iter().zip([true, false]) {
            let what = format!("{precision}, spikes {spiking}");
            let bits = if spiking {
                3 * spike_words * size_of::<u32>()
            } else {
                0
            };
            let (in_turn, in_turn_rises) = run(case, false);
            let (fused, fused_rises) = run(case, true);
            assert!(same_bits(&fused, &in_turn), "{what}: the bits differ");
            for (pass, (fused, in_turn)) in ["forward", "backward"]
                .iter()
                .zip(fused_rises.into_iter().zip(in_turn_rises))
            {
                assert!(
                    fused + scores <= in_turn + bits,
                    "{what}, {pass}: the peaks fused ({fused}) and in turn ({in_turn}) against \
                     the scores' f32 bytes ({scores}) and the kept bits ({bits})"
                );
            }
        }
    }
    device.set_precision(Precision::F32).unwrap();
}

#[test]
fn precision_reports_what_was_set_and_f64_is_refused_with_what_to_do() {
    let Some(gpu) = backend_or_skip::<f64>("precision_reports_what_was_set") else {
        return;
    };
    let device = gpu.device();
    for precision in Precision::ALL {
        device.set_precision(precision).unwrap();
        assert_eq!(device.precision(), precision);
        assert_eq!(device.tf32_allowed(), precision == Precision::Tf32);
    }
    let x = gpu.tensor_from_vec(&[2, 3], vec![1.0; 6]).unwrap();
    let error = gpu.linear_forward(&x, &x, None).unwrap_err().to_string();
    assert!(
        error.contains("--precision fp16")
            && error.contains("f64")
            && error.contains("--device cpu"),
        "{error}"
    );
    device.allow_tf32(false).unwrap();
    assert_eq!(
        device.precision(),
        Precision::F32,
        "allow_tf32 ends a 16-bit precision"
    );
}

/// The parity fixture's spec of `family`, embedded.
fn spec(family: &str) -> ModelSpec {
    let json = match family {
        "revsresnet" => include_str!("../fixtures/parity/revsresnet.spec.json"),
        "revsformer" => include_str!("../fixtures/parity/revsformer.spec.json"),
        "msresnet" => include_str!("../fixtures/parity/msresnet.spec.json"),
        "spikingformer" => include_str!("../fixtures/parity/spikingformer.spec.json"),
        other => panic!("no fixture spec for {other}"),
    };
    ModelSpec::from_json(json).unwrap()
}

/// The loss scale of the fp16 training steps: unscaled, fp16's subnormals would hold the deep
/// layers' gradients; at the loss scaler's first scale, 2^16, the stem's weight gradient of the
/// tiny RevSResNet overflows (a step the scaler would skip). 2^8 keeps every gradient finite and
/// normal.
const FP16_LOSS_SCALE: f32 = 256.0;

/// The logits, the loss and every parameter gradient of one training step of `family` (smooth
/// firing) on `backend`, by name. In fp16 the loss is scaled by [`FP16_LOSS_SCALE`] and the
/// gradients divided by it again (exactly: a power of two).
fn training_step<B: Backend>(backend: &B, family: &str) -> Vec<(String, Vec<f64>)> {
    let loss_scale = match backend.precision() {
        Precision::Fp16 => FP16_LOSS_SCALE,
        _ => 1.0,
    };
    let spec = spec(family);
    let options = BuildOptions {
        smooth_neurons: true,
        ..Default::default()
    };
    let mut network = Network::new(backend, &spec, 7, options).unwrap();
    let (images, labels) = random_images(backend, &spec, 2, 7).unwrap();
    let mut grads = network.zero_grads();
    let report = network
        .train_step(
            backend,
            &mut grads,
            &images,
            Targets::Hard(&labels),
            PassOptions {
                loss_scale,
                ..Default::default()
            },
        )
        .unwrap();
    let mut tensors = vec![
        (
            "logits".to_string(),
            widened(backend, &report.output.logits),
        ),
        ("loss".to_string(), widened(backend, &report.output.loss)),
    ];
    for (index, entry) in network.store.entries().iter().enumerate() {
        if entry.kind == EntryKind::Parameter
            && let Some(grad) = grads.get(ParamId(index))
        {
            let unscaled = widened(backend, grad)
                .into_iter()
                .map(|g| g / f64::from(loss_scale))
                .collect();
            tensors.push((format!("grad.{}", entry.name), unscaled));
        }
    }
    tensors
}

/// The bar of one tensor of the training step in `precision`, given `noise`, the tensor's relative
/// error in the CPU's f32 step against its f64 step. `noise / u_f32` is how much the step
/// amplifies relative perturbations of the size of its own roundings, the tensor's condition
/// number `kappa` (tests/gpu_models.rs allows 10 times `noise` in f32 for the same reason). The two
/// backends sum in different orders, so where a sum is rounded to 16 bits (a GEMM operand, a
/// convolution output) some elements land one spacing `2 u` apart; a fraction `p` of them is a
/// relative perturbation of `2 u sqrt(p)`, which the step amplifies to `kappa 2 u sqrt(p)`. The bar
/// takes `p` up to 1/16 (the per-op tests count flips in at most 5% of an output), and is at least
/// `u`: `max(u, kappa u / 2)`. Well-conditioned tensors (`noise` about 1e-7) get about `u`; the
/// ones whose exact value is nearly 0 (the gradient of a bias before a BatchNorm) are checked only
/// loosely, as in f32. On an H200 (2026-12-04) the worst tensors came out at 8.8e-4 (the tiny
/// RevSResNet's stem weight gradient, fp16, `kappa` 470) and 8.0e-3 (a Spikingformer attention
/// projection's weight gradient, fp16, `kappa` 850), beyond a first bar of `u` and a second of
/// `10 sqrt(2 u noise)`. A missing rounding still shows in the well-conditioned tensors, and the
/// test requires every 16-bit step to be more than `u` away from the f32 one.
fn step_bar(precision: Precision, noise: f64) -> f64 {
    let u = precision.unit_roundoff();
    let kappa = noise / Precision::F32.unit_roundoff();
    u.max(kappa * u / 2.0)
}

#[test]
fn a_training_step_of_every_family_matches_the_cpu_in_bf16_and_fp16() {
    let Some(gpu) = backend_or_skip::<f32>("a_training_step_in_bf16_and_fp16") else {
        return;
    };
    for family in FAMILIES {
        gpu.device().set_precision(Precision::F32).unwrap();
        let full = training_step(&gpu, family);
        let noise: Vec<f64> = training_step(&Cpu::<f32>::new(), family)
            .iter()
            .zip(&training_step(&Cpu::<f64>::new(), family))
            .map(|((_, single), (_, double))| relative_error(single, double))
            .collect();
        for format in FORMATS {
            let precision = format.precision();
            gpu.device().set_precision(precision).unwrap();
            let cuda = training_step(&gpu, family);
            let emulated = training_step(&Cpu::<f32>::with_precision(precision), family);
            assert_eq!(cuda.len(), emulated.len());
            let from_f32 = full
                .iter()
                .zip(&cuda)
                .map(|((_, f), (_, c))| relative_error(c, f))
                .fold(0.0, f64::max);
            assert!(
                from_f32 > precision.unit_roundoff(),
                "{family}: every tensor is within {from_f32:e} of the f32 step's: {precision} did not run"
            );
            let mut worst = (0.0f64, "every tensor exact".to_string());
            for (((name, got), (_, want)), &noise) in cuda.iter().zip(&emulated).zip(&noise) {
                let case = format!("{family} {precision} {name}");
                assert!(got.iter().all(|v| v.is_finite()), "{case} not finite");
                let error = relative_error(got, want);
                let bar = step_bar(precision, noise);
                assert!(
                    error <= bar,
                    "{case}: {error:e} > {bar:e} (f32 noise {noise:e})"
                );
                if error / bar > worst.0 {
                    worst = (error / bar, format!("{name}: {error:.2e} of {bar:.2e}"));
                }
            }
            println!(
                "{family} {precision}: cuda vs cpu at most {:.2} of the bar ({}); \
                 f32 step up to {from_f32:.2e} away",
                worst.0, worst.1
            );
        }
    }
    gpu.device().set_precision(Precision::F32).unwrap();
}

#[test]
fn reversible_backward_in_bf16_and_fp16_on_cuda_equals_stored_activations_with_exact_coupling() {
    let Some(gpu) = backend_or_skip::<f32>("reversible backward in bf16 and fp16") else {
        return;
    };
    for family in ["revsresnet", "revsformer"] {
        for format in FORMATS {
            let precision = format.precision();
            let device = Device::Cuda(gpu.device().clone())
                .with_precision(precision)
                .unwrap();
            let report =
                verify_on(&device, &spec(family), DType::F32, Coupling::Exact, 7, 2, 1).unwrap();
            let case = format!("{family} {precision}: {report:?}");
            // The recompute rounds as the forward did, and the exact coupling inverts bitwise.
            assert_eq!(report.reconstruction_max_rel_err, 0.0, "{case}");
            assert_eq!(report.spike_flips, 0, "{case}");
            assert!(report.spikes_compared > 0, "{case}");
            assert_eq!(report.grad_max_rel_err_vs_bptt, 0.0, "{case}");
            let versus = report.versus_f64.expect("a 16-bit run compares with f64");
            assert_eq!(versus.precision, precision, "{case}");
            assert!(versus.logits_max_abs_err.is_finite(), "{case}");
            println!(
                "{family} {precision}: reversible = stored bitwise; against f64 {} of {} spikes differ",
                versus.spike_flips, versus.spikes_compared
            );
        }
    }
    gpu.device().set_precision(Precision::F32).unwrap();
}

/// bf16 on a card older than compute capability 8.0 is refused before any work, naming the card
/// and what to run instead, without the advice for a missing device. On the CUDA emulator posing
/// as a 7.5 card (`REVSNN_EMU_CC`); a real card cannot pose, and the test says SKIP.
#[test]
fn bf16_on_a_card_without_it_is_refused_with_the_alternatives() {
    let needs = "which can pose as a card without bf16";
    if emulator_or_skip("bf16_on_a_card_without_it", needs).is_none() {
        return;
    }
    let spec = scratch("bf16-refused").join("tiny.json");
    std::fs::write(&spec, TINY_REVSRESNET).unwrap();
    let args = [
        "bench",
        "--device",
        "cuda",
        "--precision",
        "bf16",
        "--batch",
        "1",
    ];
    let out = revsnn_command(&args)
        .args(["--steps", "1", "--spec", &spec.display().to_string()])
        .env("REVSNN_EMU_CC", "7.5")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(
            "--precision bf16 needs compute capability 8.0 or newer, and revsnn CPU emulator has \
             compute capability 7.5: use --precision fp16 or f32 on revsnn CPU emulator, or run \
             bf16 with --device cpu"
        ) && !said.contains("finds a CUDA device"),
        "{said}"
    );
}

#[test]
fn train_on_cuda_in_bf16_runs_and_records_it() {
    if backend_or_skip::<f32>("train_on_cuda_in_bf16").is_none() {
        return;
    }
    let dir = scratch("train-bf16");
    let spec = dir.join("tiny.json");
    std::fs::write(&spec, TINY_REVSRESNET).unwrap();
    let out = dir.join("run");
    let (spec, out_arg) = (spec.display().to_string(), out.display().to_string());
    ok(revsnn(&[
        "train",
        "--spec",
        &spec,
        "--out",
        &out_arg,
        "--batch",
        "4",
        "--train-samples",
        "8",
        "--test-samples",
        "4",
        "--epochs",
        "1",
        "--seed",
        "5",
        "--quiet",
        "--device",
        "cuda",
        "--precision",
        "bf16",
    ]));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(line["precision"], "bf16", "{line}");
    assert_eq!(line["backend"], "cuda", "{line}");
    // two waits for the device per step (the loss and logits, then the parameters' non-finite
    // count) and two uploads (the batch's images and labels)
    assert_eq!(
        (&line["host_waits_per_step"], &line["uploads_per_step"]),
        (&2.0.into(), &2.0.into()),
        "{line}"
    );
    assert!(
        line["train_loss"].as_f64().is_some_and(f64::is_finite),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fp16_on_cuda_resumes_bit_for_bit_with_its_loss_scaler() {
    if backend_or_skip::<f32>("fp16_on_cuda_resumes_bit_for_bit").is_none() {
        return;
    }
    fp16::resumes_bit_for_bit_with_its_loss_scaler("cuda");
}

#[test]
fn fp16_on_cuda_skips_the_steps_whose_gradients_overflow_and_recovers() {
    if backend_or_skip::<f32>("fp16_on_cuda_skips_the_steps").is_none() {
        return;
    }
    fp16::skips_the_steps_whose_gradients_overflow_and_recovers("cuda");
}

#[test]
fn fp16_on_cuda_stops_when_the_loss_scale_falls_below_one() {
    if backend_or_skip::<f32>("fp16_on_cuda_stops_when_the_loss_scale").is_none() {
        return;
    }
    fp16::stops_when_the_loss_scale_falls_below_one("cuda");
}
