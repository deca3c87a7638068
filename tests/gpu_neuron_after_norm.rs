//! `NeuronOps::neuron_backward_from_source` for a neuron that kept nothing because its input was a
//! training BatchNorm's output (docs/neurons.md §2.4.2). On CUDA the kernel makes that output
//! again from the BatchNorm's input as it reads it and charges `h` in each thread's own memory;
//! it must give the bits of the ops in turn (`neuron_backward_from_source_in_turn`:
//! `batch_norm_train_output`, `neuron_charge`, `neuron_backward`): in f64, and in f32 over a
//! BatchNorm input held in f32, bf16 or fp16 (a 16-bit convolution's sums) on each convolution
//! engine; for each neuron configuration the neuron tests sweep; past the 16 steps a thread holds (then the ops in turn run);
//! with `dL/ds` handed over (written over: not one byte allocated) or shared (left as it was).
//! Bad shapes and an evaluation context are refused as the ops in turn refuse them. Skips without
//! a GPU (`SKIP: no CUDA device`), fails then with `REVSNN_REQUIRE_GPU=1`.

mod common;

use common::layer_pass::{bits, on_each_engine_and_precision, random};
use common::neurons::configs;
use revsnn_gpu::Cuda;
use revsnn_gpu::ops::GpuElement;
use revsnn_gpu::testing::{backend_or_skip, with_peak_rise};
use revsnn_reference::contract::shapes::time_split;
use revsnn_reference::contract::{BackendNeuronSource, neuron_backward_from_source_in_turn};
use revsnn_reference::prelude::*;
use revsnn_reference::{
    BatchNormAffine, BatchNormParams, Conv2dParams, ConvKind, NeuronBackward, NeuronConfig,
    NeuronSource, RunningStats,
};

/// The BatchNorm's input `[T B, C, SIDE, SIDE]`.
const B: usize = 2;
const C: usize = 3;
const SIDE: usize = 5;

/// A training BatchNorm's context after a bias-free 3x3 convolution (as in every spiking
/// convolution), and its `beta`: under bf16 and fp16 on CUDA the context keeps the
/// convolution's 16-bit sums.
struct Normalised<Bk: Backend> {
    context: Bk::BatchNormContext,
    beta: Bk::Tensor,
    time_steps: usize,
}

impl<Bk: Backend> Normalised<Bk> {
    fn new(backend: &Bk, time_steps: usize, seed: u64) -> Self {
        let x = random(backend, &[time_steps * B, C, SIDE, SIDE], seed, 1.0).unwrap();
        let weight = random(backend, &[C, C, 3, 3], seed + 1, 0.5).unwrap();
        let gamma = random(backend, &[C], seed + 2, 1.5).unwrap();
        let beta = random(backend, &[C], seed + 3, 0.5).unwrap();
        let norm = BatchNormAffine {
            gamma: &gamma,
            beta: &beta,
            params: BatchNormParams::default(),
        };
        let kind = ConvKind::Conv2d(Conv2dParams::new(1, 1));
        let output = backend
            .conv_batch_norm_train_forward(x, &weight, None, kind, norm)
            .unwrap();
        Normalised {
            context: output.norm,
            beta,
            time_steps,
        }
    }

    /// The neuron's `dL/ds` shape, `[T, B, C, SIDE, SIDE]`.
    fn grad_shape(&self) -> Vec<usize> {
        time_split(&[self.time_steps * B, C, SIDE, SIDE], self.time_steps).unwrap()
    }

    fn neuron<'a>(&'a self, config: &'a NeuronConfig) -> NeuronBackward<'a, Source<'a, Bk>> {
        NeuronBackward {
            source: NeuronSource::Normalised {
                norm: &self.context,
                beta: self.beta.clone(),
            },
            config,
            time_steps: self.time_steps,
        }
    }
}

type Source<'a, Bk> = BackendNeuronSource<'a, Bk>;

/// A tensor only the caller holds, with `x`'s values.
fn fresh<Bk: Backend>(backend: &Bk, x: &Bk::Tensor) -> Bk::Tensor {
    let values = backend.to_vec(x).unwrap();
    backend.tensor_from_vec(&backend.shape(x), values).unwrap()
}

/// The fused backward against the ops in turn, `dL/ds` handed over and shared.
fn check_bits<Bk: Backend>(backend: &Bk, what: &str, norm: &Normalised<Bk>, seed: u64) {
    let grad = random(backend, &norm.grad_shape(), seed, 1.0).unwrap();
    let grad_bits = bits(backend, &grad).unwrap();
    for (name, config) in configs() {
        let in_turn = neuron_backward_from_source_in_turn;
        let expected = in_turn(backend, fresh(backend, &grad), norm.neuron(&config)).unwrap();
        let expected = bits(backend, &expected).unwrap();
        let handed_over = backend
            .neuron_backward_from_source(fresh(backend, &grad), norm.neuron(&config))
            .unwrap();
        let shared = backend
            .neuron_backward_from_source(grad.clone(), norm.neuron(&config))
            .unwrap();
        let t = norm.time_steps;
        assert_eq!(
            bits(backend, &handed_over).unwrap(),
            expected,
            "{what}, {name}, T {t}: dL/ds handed over"
        );
        assert_eq!(
            bits(backend, &shared).unwrap(),
            expected,
            "{what}, {name}, T {t}: dL/ds shared"
        );
        assert_eq!(
            bits(backend, &grad).unwrap(),
            grad_bits,
            "{what}, {name}, T {t}: a shared dL/ds was written"
        );
    }
}

/// 16 steps are all a thread charges in its own memory; 17 run the ops in turn.
const STEPS: [usize; 4] = [1, 4, 16, 17];

#[test]
fn gpu_neuron_after_norm_gives_the_bits_of_the_ops_in_turn_in_f32_and_16_bits() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_neuron_after_norm f32") else {
        return;
    };
    on_each_engine_and_precision(&gpu, |what, _| {
        for (i, &steps) in STEPS.iter().enumerate() {
            let norm = Normalised::new(&gpu, steps, 10 * i as u64);
            check_bits(&gpu, what, &norm, 7 + i as u64);
        }
    });
}

#[test]
fn gpu_neuron_after_norm_gives_the_bits_of_the_ops_in_turn_in_f64() {
    let Some(gpu) = backend_or_skip::<f64>("gpu_neuron_after_norm f64") else {
        return;
    };
    for (i, &steps) in STEPS.iter().enumerate() {
        let norm = Normalised::new(&gpu, steps, 10 * i as u64);
        check_bits(&gpu, "f64", &norm, 7 + i as u64);
    }
}

/// The device bytes a backward from a handed-over `dL/ds` allocates at its peak.
fn backward_rise<E: GpuElement>(gpu: &Cuda<E>, norm: &Normalised<Cuda<E>>, fused: bool) -> usize {
    let config = NeuronConfig::lif_sigmoid(2.0, 1.0);
    let grad = random(gpu, &norm.grad_shape(), 5, 1.0).unwrap();
    let neuron = norm.neuron(&config);
    let (grad_x, rise) = with_peak_rise(gpu.device(), || {
        if fused {
            gpu.neuron_backward_from_source(grad, neuron).unwrap()
        } else {
            neuron_backward_from_source_in_turn(gpu, grad, neuron).unwrap()
        }
    });
    drop(grad_x);
    rise
}

#[test]
fn gpu_neuron_after_norm_allocates_nothing_over_a_handed_over_gradient() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_neuron_after_norm memory") else {
        return;
    };
    on_each_engine_and_precision(&gpu, |what, _| {
        let norm = Normalised::new(&gpu, 4, 3);
        let in_turn = backward_rise(&gpu, &norm, false);
        let fused = backward_rise(&gpu, &norm, true);
        let output_bytes = 4 * B * C * SIDE * SIDE * std::mem::size_of::<f32>();
        println!(
            "{what}: the ops in turn allocate {in_turn} bytes at their peak, the fused {fused}"
        );
        assert_eq!(fused, 0, "{what}: the fused backward allocated");
        assert!(
            in_turn >= output_bytes,
            "{what}: the ops in turn held less than the BatchNorm's output ({in_turn} bytes)"
        );
    });
}

#[test]
fn gpu_neuron_after_norm_refuses_what_the_ops_in_turn_refuse() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_neuron_after_norm refusals") else {
        return;
    };
    let norm = Normalised::new(&gpu, 2, 1);
    let config = NeuronConfig::lif_sigmoid(2.0, 1.0);
    let both_refuse = |what: &str, grad: &<Cuda<f32> as TensorOps>::Tensor, steps: usize| {
        let neuron = || NeuronBackward {
            time_steps: steps,
            ..norm.neuron(&config)
        };
        let in_turn = neuron_backward_from_source_in_turn(&gpu, grad.clone(), neuron());
        let fused = gpu.neuron_backward_from_source(grad.clone(), neuron());
        assert!(in_turn.is_err(), "{what}: the ops in turn accepted it");
        let error = fused.expect_err(what).to_string();
        println!("{what}: {error}");
    };
    let mut wrong_side = norm.grad_shape();
    wrong_side[4] += 1;
    both_refuse(
        "dL/ds of another shape",
        &random(&gpu, &wrong_side, 1, 1.0).unwrap(),
        2,
    );
    let grad = random(&gpu, &norm.grad_shape(), 1, 1.0).unwrap();
    both_refuse("T other than dL/ds's", &grad, 3);

    let x = random(&gpu, &[2 * B, C, SIDE, SIDE], 2, 1.0).unwrap();
    let ones = gpu.tensor_from_vec(&[C], vec![1.0; C]).unwrap();
    let running = RunningStats {
        mean: gpu.tensor_from_vec(&[C], vec![0.0; C]).unwrap(),
        var: ones.clone(),
    };
    let params = BatchNormParams::default();
    let (_, eval) = (gpu.batch_norm_eval_forward(&x, &ones, &norm.beta, &running, params)).unwrap();
    let neuron = || NeuronBackward {
        source: NeuronSource::Normalised {
            norm: &eval,
            beta: norm.beta.clone(),
        },
        config: &config,
        time_steps: 2,
    };
    assert!(neuron_backward_from_source_in_turn(&gpu, grad.clone(), neuron()).is_err());
    let error = gpu.neuron_backward_from_source(grad, neuron()).unwrap_err();
    println!("an evaluation context: {error}");
}
