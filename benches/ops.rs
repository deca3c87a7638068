//! CPU reference ops at RevSResNet21 stage-1 shapes, f32 (the conv2d figure of README.md,
//! "Performance so far", is measured here):
//! - the multi-step IF neuron over `[T = 4, B = 8, 64, 32, 32]` (forward, backward), with
//!   throughput in bytes moved (x read, spikes and h written; dL/ds and h read, dL/dx written);
//! - the same shape through the transformers' LIF neuron with the sigmoid surrogate (group
//!   `cpu_lif_sigmoid_neuron_...`), backward only: the forward is the IF one's, with a decay;
//! - conv2d 3x3, 64 -> 64, stride 1, pad 1, on `[T*B = 32, 64, 32, 32]`, forward + backward,
//!   with throughput in elements = flops (3 GEMMs of `2 N C_out H W C_in 9` flops each);
//! - the same conv2d on a spike input (each element 1 with probability 0.2), which takes the
//!   sparse spike kernels for the forward and the weight gradient, and on the late-layer shape
//!   3x3, 512 -> 512 on `[32, 512, 4, 4]` (one block of samples), dense and spiking.
//!
//! - the spike-density cutoff (docs/ARCHITECTURE.md, "Convolutions whose input is spikes"): conv2d 3x3 at the four RevSResNet21 stage
//!   shapes on `[32, C, S, S]` spikes of density 10-40% (the sparse kernels) and 60% (above the
//!   cutoff of one half: the dense GEMMs), forward and forward + backward.
//! - conv2d 1x1 (group `cpu_conv1x1_...`): the transformers' MLP and attention projections, 384 ->
//!   1536 and 1536 -> 384 on `[T*B = 32, C, 8, 8]` (64 tokens) of 20% spikes, forward + backward
//!   (the input gradient is a dense GEMM over 64 positions per sample).
//! - the dense f32 GEMM (group `gemm`) on the im2col shapes of the ResNet convolutions (m x k x n),
//!   `A B` and `A^T B` (the input gradient's form), through one-sample `batched_matmul` (the
//!   reference's `ops::gemm`) and through ndarray's `general_mat_mul` (matrixmultiply), with
//!   throughput in elements = flops (`2 m k n`).
//!
//! - BatchNorm in training mode over `[T*B = 32, 64, 32, 32]` (group `batch_norm`), forward and
//!   backward, with throughput in bytes of the tensors read and written once (x read, y written;
//!   dL/dy and x read, dL/dx written).
//! - average pooling `AvgPool2d(3, 2, 1)` (the ResNet stems and downsampling) over
//!   `[T*B = 32, 64, 32, 32]` (group `avg_pool`), forward and backward, with throughput in bytes
//!   of the input-sized tensor (read by the forward, written by the backward).
//!
//! `cargo bench --bench ops`; quote medians and name the machine.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array2;
use ndarray::linalg::general_mat_mul;
use revsnn_reference::prelude::*;
use revsnn_reference::testing::SplitMix64;
use revsnn_reference::{BatchNormParams, Conv2dParams, Cpu, NeuronConfig, Pool2dParams};

fn random(
    backend: &Cpu<f32>,
    shape: &[usize],
    std: f64,
    shift: f64,
    seed: u64,
) -> <Cpu<f32> as TensorOps>::Tensor {
    let len = shape.iter().product();
    let data = SplitMix64::new(seed)
        .normal_vec(len, std)
        .into_iter()
        .map(|v| (v + shift) as f32)
        .collect();
    backend.tensor_from_vec(shape, data).expect("shape matches")
}

fn neuron(c: &mut Criterion) {
    let cpu = Cpu::<f32>::new();
    let shape = [4, 8, 64, 32, 32];
    let x = random(&cpu, &shape, 1.0, 0.3, 1);
    let grad = random(&cpu, &shape, 1.0, 0.0, 2);
    let config = NeuronConfig::if_atan();
    let bytes = (shape.iter().product::<usize>() * 4) as u64;
    let mut group = c.benchmark_group("cpu_if_neuron_t4_b8_64x32x32_f32");
    group.throughput(Throughput::Bytes(3 * bytes));
    group.bench_function("forward", |b| {
        b.iter(|| cpu.neuron_forward(x.clone(), &config).unwrap())
    });
    let (_, context) = cpu.neuron_forward(x, &config).unwrap();
    group.bench_function("backward", |b| {
        b.iter(|| {
            cpu.neuron_backward(grad.clone(), &context, &config)
                .unwrap()
        })
    });
    group.finish();
}

/// The transformers' neuron (LIF, tau 2, sigmoid surrogate) over the same shape: its backward
/// evaluates an exponential per element.
fn lif_sigmoid_neuron(c: &mut Criterion) {
    let cpu = Cpu::<f32>::new();
    let shape = [4, 8, 64, 32, 32];
    let x = random(&cpu, &shape, 1.0, 0.3, 1);
    let grad = random(&cpu, &shape, 1.0, 0.0, 2);
    let config = NeuronConfig::lif_sigmoid(2.0, 1.0);
    let bytes = (shape.iter().product::<usize>() * 4) as u64;
    let mut group = c.benchmark_group("cpu_lif_sigmoid_neuron_t4_b8_64x32x32_f32");
    group.throughput(Throughput::Bytes(3 * bytes));
    let (_, context) = cpu.neuron_forward(x, &config).unwrap();
    group.bench_function("backward", |b| {
        b.iter(|| {
            cpu.neuron_backward(grad.clone(), &context, &config)
                .unwrap()
        })
    });
    group.finish();
}

/// `[shape]` spikes: each element 1 with probability `density`, else 0.
fn spikes(
    backend: &Cpu<f32>,
    shape: &[usize],
    density: f64,
    seed: u64,
) -> <Cpu<f32> as TensorOps>::Tensor {
    let mut rng = SplitMix64::new(seed);
    let data = (0..shape.iter().product())
        .map(|_| f32::from(rng.next_f64() < density))
        .collect();
    backend.tensor_from_vec(shape, data).expect("shape matches")
}

/// conv2d 3x3, stride 1, pad 1, `channels -> channels` on `[n, channels, size, size]`: forward,
/// and forward + backward, on a dense normal input and on 20% spikes.
fn conv_case(c: &mut Criterion, n: usize, channels: usize, size: usize) {
    let cpu = Cpu::<f32>::new();
    let dense = random(&cpu, &[n, channels, size, size], 1.0, 0.0, 3);
    let spiking = spikes(&cpu, &[n, channels, size, size], 0.2, 6);
    let weight = random(&cpu, &[channels, channels, 3, 3], 0.06, 0.0, 4);
    let grad = random(&cpu, &[n, channels, size, size], 1.0, 0.0, 5);
    let params = Conv2dParams::new(1, 1);
    let flops_per_gemm = (2 * n * channels * size * size * channels * 9) as u64;
    let mut group = c.benchmark_group(format!("cpu_conv3x3_{n}x{channels}x{size}x{size}_f32"));
    group.sample_size(10);
    for (name, x) in [("dense", &dense), ("spikes20", &spiking)] {
        group.throughput(Throughput::Elements(flops_per_gemm));
        group.bench_function(format!("{name}/forward"), |b| {
            b.iter(|| cpu.conv2d_forward(x, &weight, None, params).unwrap())
        });
        group.throughput(Throughput::Elements(3 * flops_per_gemm));
        group.bench_function(format!("{name}/forward_backward"), |b| {
            b.iter(|| {
                let (_, context) = cpu.conv2d_forward(x, &weight, None, params).unwrap();
                cpu.conv2d_backward(grad.clone(), &context).unwrap()
            })
        });
    }
    group.finish();
}

fn conv(c: &mut Criterion) {
    conv_case(c, 32, 64, 32);
    conv_case(c, 32, 512, 4);
}

/// The spike kernels against the dense path at each density, per RevSResNet21 stage shape.
fn spike_density(c: &mut Criterion) {
    let cpu = Cpu::<f32>::new();
    let params = Conv2dParams::new(1, 1);
    for (channels, size) in [(64, 32), (128, 16), (256, 8), (448, 4)] {
        let shape = [32, channels, size, size];
        let weight = random(&cpu, &[channels, channels, 3, 3], 0.06, 0.0, 4);
        let grad = random(&cpu, &shape, 1.0, 0.0, 5);
        let mut group = c.benchmark_group(format!("cpu_conv3x3_density_{channels}x{size}x{size}"));
        group.sample_size(10);
        for percent in [10, 20, 30, 40, 60] {
            let x = spikes(&cpu, &shape, f64::from(percent) / 100.0, 6);
            group.bench_function(format!("{percent}/forward"), |b| {
                b.iter(|| cpu.conv2d_forward(&x, &weight, None, params).unwrap())
            });
            group.bench_function(format!("{percent}/forward_backward"), |b| {
                b.iter(|| {
                    let (_, context) = cpu.conv2d_forward(&x, &weight, None, params).unwrap();
                    cpu.conv2d_backward(grad.clone(), &context).unwrap()
                })
            });
        }
        group.finish();
    }
}

/// conv2d 1x1 at the transformers' token shapes, `[32, C_in, 8, 8]` spikes of density 0.2.
fn pointwise_conv(c: &mut Criterion) {
    let cpu = Cpu::<f32>::new();
    let params = Conv2dParams::new(1, 0);
    let mut group = c.benchmark_group("cpu_conv1x1_32xCx8x8_spikes20_f32");
    group.sample_size(10);
    for (c_in, c_out) in [(384, 1536), (1536, 384)] {
        let x = spikes(&cpu, &[32, c_in, 8, 8], 0.2, 6);
        let weight = random(&cpu, &[c_out, c_in, 1, 1], 0.05, 0.0, 4);
        let grad = random(&cpu, &[32, c_out, 8, 8], 1.0, 0.0, 5);
        group.throughput(Throughput::Elements(
            (3 * 2 * 32 * 64 * c_in * c_out) as u64,
        ));
        group.bench_function(format!("{c_in}to{c_out}/forward_backward"), |b| {
            b.iter(|| {
                let (_, context) = cpu.conv2d_forward(&x, &weight, None, params).unwrap();
                cpu.conv2d_backward(grad.clone(), &context).unwrap()
            })
        });
    }
    group.finish();
}

/// The reference's GEMM against matrixmultiply at the convolutions' im2col shapes (m x k x n):
/// `A B` and `A^T B`, each call writing a freshly allocated `C` in both.
fn gemm(c: &mut Criterion) {
    let cpu = Cpu::<f32>::new();
    let mut group = c.benchmark_group("gemm");
    group.sample_size(10);
    let shapes = [
        (576, 64, 2048),
        (64, 576, 2048),
        (1152, 128, 2048),
        (2304, 256, 2048),
        (4032, 448, 2048),
        (4608, 512, 2048),
    ];
    for (m, k, n) in shapes {
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let b = random(&cpu, &[1, k, n], 1.0, 0.0, 8);
        let b_matrix = Array2::from_shape_vec((k, n), b.iter().copied().collect()).unwrap();
        for (form, transpose_a) in [("ab", false), ("atb", true)] {
            let a_shape = if transpose_a { [1, k, m] } else { [1, m, k] };
            let a = random(&cpu, &a_shape, 1.0, 0.0, 7);
            let a_stored =
                Array2::from_shape_vec((a_shape[1], a_shape[2]), a.iter().copied().collect())
                    .unwrap();
            let a_matrix = if transpose_a {
                a_stored.t()
            } else {
                a_stored.view()
            };
            group.bench_function(format!("reference/{m}x{k}x{n}/{form}"), |bench| {
                bench.iter(|| cpu.batched_matmul(&a, &b, transpose_a, false).unwrap())
            });
            group.bench_function(format!("matrixmultiply/{m}x{k}x{n}/{form}"), |bench| {
                bench.iter(|| {
                    let mut product = Array2::<f32>::zeros((m, n));
                    general_mat_mul(1.0, &a_matrix, &b_matrix, 0.0, &mut product);
                    product
                })
            });
        }
    }
    group.finish();
}

fn batch_norm(c: &mut Criterion) {
    let cpu = Cpu::<f32>::new();
    let shape = [32, 64, 32, 32];
    let x = random(&cpu, &shape, 1.0, 0.3, 1);
    let grad = random(&cpu, &shape, 1.0, 0.0, 2);
    let gamma = random(&cpu, &[64], 0.1, 1.0, 3);
    let beta = random(&cpu, &[64], 0.1, 0.0, 4);
    let params = BatchNormParams::default();
    let bytes = (shape.iter().product::<usize>() * 4) as u64;
    let mut group = c.benchmark_group("cpu_batch_norm_train_32x64x32x32_f32");
    group.throughput(Throughput::Bytes(2 * bytes));
    group.bench_function("forward", |b| {
        b.iter(|| {
            cpu.batch_norm_train_forward(&x, &gamma, &beta, params)
                .unwrap()
        })
    });
    let (_, _, context) = cpu
        .batch_norm_train_forward(&x, &gamma, &beta, params)
        .unwrap();
    group.throughput(Throughput::Bytes(3 * bytes));
    group.bench_function("backward", |b| {
        b.iter(|| cpu.batch_norm_backward(&grad, &context).unwrap())
    });
    group.finish();
}

fn avg_pool(c: &mut Criterion) {
    let cpu = Cpu::<f32>::new();
    let shape = [32, 64, 32, 32];
    let params = Pool2dParams::K3_S2_P1;
    let x = random(&cpu, &shape, 1.0, 0.0, 1);
    let y = cpu.avg_pool2d_forward(&x, params).unwrap();
    let grad = random(&cpu, &cpu.shape(&y), 1.0, 0.0, 2);
    let mut group = c.benchmark_group("cpu_avg_pool_k3_s2_p1_32x64x32x32_f32");
    group.throughput(Throughput::Bytes(
        (shape.iter().product::<usize>() * 4) as u64,
    ));
    group.bench_function("forward", |b| {
        b.iter(|| cpu.avg_pool2d_forward(&x, params).unwrap())
    });
    group.bench_function("backward", |b| {
        b.iter(|| cpu.avg_pool2d_backward(&grad, &shape, params).unwrap())
    });
    group.finish();
}

criterion_group!(
    benches,
    neuron,
    lif_sigmoid_neuron,
    conv,
    spike_density,
    pointwise_conv,
    gemm,
    batch_norm,
    avg_pool
);
criterion_main!(benches);
