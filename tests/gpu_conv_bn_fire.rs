//! `ConvBatchNormOps::conv_batch_norm_train_fire`: a convolution (with a bias or without), its
//! training BatchNorm and a neuron firing over the BatchNorm's output keeping nothing
//! (docs/neurons.md §2.4.3). On CUDA the BatchNorm computes its statistics only and the neuron's
//! kernel maps the BatchNorm's input as it reads it, so the output is never written. It must give
//! the bits of the ops in turn (`conv_batch_norm_train_fire_in_turn`): the spikes, their
//! fingerprint, the batch statistics and both contexts (read through the backward they feed), in
//! f64, and in f32, bf16 and fp16 on each convolution engine; for each neuron configuration the
//! neuron tests sweep; for 1, 4 and 17 steps (the forward holds no step in a thread's memory, so it
//! has no limit); over a 3x3 and a 1-D convolution, each with and without a bias. A `T` that does
//! not divide the batch is refused as the ops in turn refuse it. Skips without a GPU
//! (`SKIP: no CUDA device`), fails then with `REVSNN_REQUIRE_GPU=1`.

mod common;

use common::layer_pass::{bits, on_each_engine_and_precision, random};
use common::neurons::configs;
use revsnn_gpu::testing::backend_or_skip;
use revsnn_reference::contract::conv_batch_norm_train_fire_in_turn;
use revsnn_reference::prelude::*;
use revsnn_reference::{
    BatchNormAffine, BatchNormParams, Conv2dParams, ConvKind, NeuronConfig, NeuronFire,
};

/// Images per time step, and the convolution's channels in and out.
const B: usize = 2;
const C_IN: usize = 4;
const C_OUT: usize = 3;

/// A 3x3 convolution over 5x5 images, or a 1-D one over 7 tokens: its kind and the shapes of
/// its input and weight for `rows = T B`.
fn convolutions(rows: usize) -> [(ConvKind, Vec<usize>, Vec<usize>); 2] {
    [
        (
            ConvKind::Conv2d(Conv2dParams::new(1, 1)),
            vec![rows, C_IN, 5, 5],
            vec![C_OUT, C_IN, 3, 3],
        ),
        (ConvKind::Conv1d, vec![rows, C_IN, 7], vec![C_OUT, C_IN, 1]),
    ]
}

/// One forward, `fused` or the ops in turn, with a bias when `biased`, and the backward of its
/// convolution and BatchNorm from a fixed `dy`: the bits of the spikes, the fingerprint, the batch
/// mean and variance, and the gradients (the bias's last when there is one).
fn run<Bk: Backend>(
    backend: &Bk,
    fused: bool,
    biased: bool,
    (kind, x_shape, w_shape): &(ConvKind, Vec<usize>, Vec<usize>),
    config: &NeuronConfig,
    time_steps: usize,
) -> Vec<Vec<u64>> {
    let x = random(backend, x_shape, 1, 1.0).unwrap();
    let weight = random(backend, w_shape, 2, 0.5).unwrap();
    let bias = biased.then(|| random(backend, &[C_OUT], 6, 2.0).unwrap());
    let gamma = random(backend, &[C_OUT], 3, 1.5).unwrap();
    let beta = random(backend, &[C_OUT], 4, 0.5).unwrap();
    let norm = BatchNormAffine {
        gamma: &gamma,
        beta: &beta,
        params: BatchNormParams::default(),
    };
    let mut word = backend.zero_word().unwrap();
    let fire = NeuronFire {
        config,
        time_steps,
        fingerprint: Some(&mut word),
    };
    let bias = bias.as_ref();
    let output = if fused {
        backend.conv_batch_norm_train_fire(x, &weight, bias, *kind, norm, fire)
    } else {
        conv_batch_norm_train_fire_in_turn(backend, x, &weight, bias, *kind, norm, fire)
    }
    .unwrap();
    let mut y_shape = x_shape.clone();
    y_shape[1] = C_OUT;
    let dy = random(backend, &y_shape, 5, 1.0).unwrap();
    let grads = backward(backend, biased, dy, (output.conv, output.norm), *kind);
    let mut all = vec![vec![backend.read_word(&word).unwrap()]];
    let forward = [&output.y, &output.batch.mean, &output.batch.var_unbiased];
    all.extend(forward.iter().map(|t| bits(backend, t).unwrap()));
    all.extend(grads.iter().map(|t| bits(backend, t).unwrap()));
    all
}

/// The gradients the two contexts give: `dx`, `dW`, `dgamma`, `dbeta` and, after a `biased`
/// convolution, `db`. Bias-free, through the one op that fuses the two backwards.
fn backward<Bk: Backend>(
    backend: &Bk,
    biased: bool,
    dy: Bk::Tensor,
    (conv, norm): (Bk::Conv2dContext, Bk::BatchNormContext),
    kind: ConvKind,
) -> Vec<Bk::Tensor> {
    if !biased {
        let g = backend
            .conv_batch_norm_backward(dy, conv, norm, kind)
            .unwrap();
        return vec![g.input, g.weight, g.gamma, g.beta];
    }
    let normed = backend.batch_norm_backward(&dy, &norm).unwrap();
    let g = backend.conv_backward(normed.input, &conv, kind).unwrap();
    vec![
        g.input,
        g.weight,
        normed.gamma,
        normed.beta,
        g.bias.unwrap(),
    ]
}

/// The fused op against the ops in turn, for every convolution, bias, configuration and `T`.
fn check_bits<Bk: Backend>(backend: &Bk, what: &str) {
    let labels = [
        "fingerprint",
        "spikes",
        "mean",
        "variance",
        "dx",
        "dW",
        "dgamma",
        "dbeta",
        "db",
    ];
    for time_steps in [1, 4, 17] {
        for convolution in convolutions(time_steps * B) {
            for biased in [false, true] {
                for (name, config) in configs() {
                    let expected = run(backend, false, biased, &convolution, &config, time_steps);
                    let got = run(backend, true, biased, &convolution, &config, time_steps);
                    assert_eq!(got.len(), expected.len());
                    for ((got, expected), label) in got.iter().zip(&expected).zip(labels) {
                        let conv = convolution.0;
                        let case = format!("{what}, {name}, T {time_steps}, {conv:?}");
                        assert_eq!(got, expected, "{case}, bias {biased}: {label}");
                    }
                }
            }
        }
    }
}

#[test]
fn gpu_conv_bn_fire_gives_the_bits_of_the_ops_in_turn_in_f32_and_16_bits() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_conv_bn_fire f32") else {
        return;
    };
    on_each_engine_and_precision(&gpu, |what, _| check_bits(&gpu, what));
}

#[test]
fn gpu_conv_bn_fire_gives_the_bits_of_the_ops_in_turn_in_f64() {
    let Some(gpu) = backend_or_skip::<f64>("gpu_conv_bn_fire f64") else {
        return;
    };
    check_bits(&gpu, "f64");
}

/// `T = 4` over 6 rows: the spikes cannot be unflattened, and both refuse.
#[test]
fn gpu_conv_bn_fire_refuses_a_time_axis_that_does_not_divide_the_batch() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_conv_bn_fire refuses") else {
        return;
    };
    let config = NeuronConfig::if_atan();
    let [(kind, x_shape, w_shape), _] = convolutions(6);
    for fused in [false, true] {
        let x = random(&gpu, &x_shape, 1, 1.0).unwrap();
        let weight = random(&gpu, &w_shape, 2, 0.5).unwrap();
        let gamma = random(&gpu, &[C_OUT], 3, 1.5).unwrap();
        let beta = gpu.zeros(&[C_OUT]).unwrap();
        let norm = BatchNormAffine {
            gamma: &gamma,
            beta: &beta,
            params: BatchNormParams::default(),
        };
        let fire = NeuronFire {
            config: &config,
            time_steps: 4,
            fingerprint: None,
        };
        let result = if fused {
            gpu.conv_batch_norm_train_fire(x, &weight, None, kind, norm, fire)
        } else {
            conv_batch_norm_train_fire_in_turn(&gpu, x, &weight, None, kind, norm, fire)
        };
        let error = result.expect_err("T = 4 over 6 rows was accepted");
        assert!(error.to_string().contains('4'), "fused {fused}: {error}");
    }
}
