//! The CUDA backend's heavy ops, forward and backward, at the shapes of a batch-64, T = 4 training
//! step (docs/architectures.md §4.1-4.5: T·B = 256 images per layer), f32, through the op traits
//! exactly as the models call them: where a training step spends its GPU time, op by op.
//! Convolutions run on each engine the device has (`cudnn/...` and `im2col/...`), in f32 and with
//! TF32 (`.../tf32`); a convolution and its BatchNorm also in bf16, as two ops and fused, and so
//! the attention's products.
//!
//! Without a GPU it prints `SKIP: no CUDA device` and measures nothing.

use std::time::Instant;

use criterion::{
    BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};
use revsnn_gpu::ops::precision::{HalfBits, HalfFormat, half_bits, rounded};
use revsnn_gpu::testing::{backend_or_skip, each_conv_engine};
use revsnn_gpu::{Cuda, CudaTensor};
use revsnn_reference::contract::{attention_backward_in_turn, attention_forward_in_turn};
use revsnn_reference::prelude::*;
use revsnn_reference::testing::SplitMix64;
use revsnn_reference::{
    AdamWParams, BatchNormAffine, BatchNormParams, Conv2dParams, ConvKind, NeuronConfig,
    Pool2dParams, Precision,
};

/// T·B of a batch-64, T = 4 step.
const IMAGES: usize = 256;

type Gpu = Cuda<f32>;

fn random(gpu: &Gpu, shape: &[usize], seed: u64, spikes: bool) -> <Gpu as TensorOps>::Tensor {
    let mut rng = SplitMix64::new(seed);
    let len = shape.iter().product();
    let values = rng
        .normal_vec(len, 1.0)
        .into_iter()
        .map(|v| if spikes { f32::from(v > 0.8) } else { v as f32 })
        .collect();
    gpu.tensor_from_vec(shape, values).unwrap()
}

/// Times `op` (which queues kernels) with a synchronisation before the clock stops.
fn bench(group: &mut BenchmarkGroup<'_, WallTime>, gpu: &Gpu, name: &str, mut op: impl FnMut()) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            gpu.synchronize().unwrap();
            let start = Instant::now();
            for _ in 0..iters {
                op();
            }
            gpu.synchronize().unwrap();
            start.elapsed()
        })
    });
}

fn gpu_ops(c: &mut Criterion) {
    let Some(gpu) = backend_or_skip::<f32>("gpu_ops bench") else {
        return;
    };
    let mut group = c.benchmark_group("gpu_ops_b64_t4_f32");

    // (name, input [N, C, H, W] of spikes, C_out, kernel, stride, padding)
    let convs = [
        ("conv3x3_64to64_32x32", [IMAGES, 64, 32, 32], 64, 3, 1, 1),
        (
            "conv3x3_128to128_16x16",
            [IMAGES, 128, 16, 16],
            128,
            3,
            1,
            1,
        ),
        (
            "conv3x3_192to384_16x16",
            [IMAGES, 192, 16, 16],
            384,
            3,
            1,
            1,
        ),
        (
            "conv3x3s2_128to256_16x16",
            [IMAGES, 128, 16, 16],
            256,
            3,
            2,
            1,
        ),
        ("conv1x1_384to1536_8x8", [IMAGES, 384, 8, 8], 1536, 1, 1, 0),
    ];
    for engine in each_conv_engine(gpu.device()) {
        for tf32 in [false, true] {
            gpu.device().allow_tf32(tf32).unwrap();
            let math = if tf32 { "/tf32" } else { "" };
            for (seed, (name, shape, out, kernel, stride, padding)) in convs.into_iter().enumerate()
            {
                let x = random(&gpu, &shape, seed as u64, true);
                let w = random(
                    &gpu,
                    &[out, shape[1], kernel, kernel],
                    100 + seed as u64,
                    false,
                );
                let params = Conv2dParams::new(stride, padding);
                let (y, context) = gpu.conv2d_forward(&x, &w, None, params).unwrap();
                let grad_y = random(&gpu, &gpu.shape(&y), 200 + seed as u64, false);
                let engine = engine.name();
                bench(
                    &mut group,
                    &gpu,
                    &format!("{engine}{math}/{name}_forward"),
                    || {
                        gpu.conv2d_forward(&x, &w, None, params).unwrap();
                    },
                );
                bench(
                    &mut group,
                    &gpu,
                    &format!("{engine}{math}/{name}_backward"),
                    || {
                        gpu.conv2d_backward(grad_y.clone(), &context).unwrap();
                    },
                );
            }
        }
    }
    gpu.device().allow_tf32(false).unwrap();

    let pooled = random(&gpu, &[IMAGES, 192, 16, 16], 10, true);
    let (y, context) = gpu
        .max_pool2d_forward(&pooled, Pool2dParams::K3_S2_P1)
        .unwrap();
    let grad_y = random(&gpu, &gpu.shape(&y), 11, false);
    bench(&mut group, &gpu, "max_pool_192ch_16x16_forward", || {
        gpu.max_pool2d_forward(&pooled, Pool2dParams::K3_S2_P1)
            .unwrap();
    });
    bench(&mut group, &gpu, "max_pool_192ch_16x16_backward", || {
        gpu.max_pool2d_backward(&grad_y, &context).unwrap();
    });

    // spiking self-attention of RevSFormer-4-384: 12 heads of 32 over 64 tokens
    let q = random(&gpu, &[IMAGES, 12, 64, 32], 12, true);
    let k = random(&gpu, &[IMAGES, 12, 64, 32], 13, true);
    bench(&mut group, &gpu, "attention_q_kt_12x64x32", || {
        gpu.batched_matmul(&q, &k, false, true).unwrap();
    });

    // one AdamW step over RevSResNet37's 23.6M parameters as one tensor
    let params = random(&gpu, &[23_590_884], 14, false);
    let grad = random(&gpu, &[23_590_884], 15, false);
    let moment = gpu.zeros(&[23_590_884]).unwrap();
    bench(&mut group, &gpu, "adamw_step_23.6M", || {
        gpu.adamw_step(
            &params,
            &grad,
            &moment,
            &moment,
            AdamWParams::new(5e-4, 0.06),
            1,
        )
        .unwrap();
    });
    group.finish();
    batch_norm(c, &gpu);
    conv_batch_norm(c, &gpu);
    attention(c, &gpu);
}

/// BatchNorm's training forward and backward, with the bytes their kernels must move as the
/// throughput: the forward reads `x` for the statistics, then reads it again and writes `y` (3
/// passes); the backward reads `x` and `dy` for its sums, then both again and writes `dx` (5).
/// Against the card's memory bandwidth this says how near memory speed BatchNorm runs. The
/// backward also runs over an input kept as its bf16 patterns, as a BatchNorm after a bias-free
/// 16-bit convolution keeps it (`_bf16_input`: `x`'s two reads at half the bytes, 4 passes).
fn batch_norm(c: &mut Criterion, gpu: &Gpu) {
    let mut group = c.benchmark_group("gpu_batch_norm_b64_t4_f32");
    let bn = BatchNormParams::default();
    // a first-stage layer (64 MiB of x, beyond the L2 cache) and a last-stage one
    for (seed, shape) in [[IMAGES, 64, 32, 32], [IMAGES, 256, 8, 8]]
        .into_iter()
        .enumerate()
    {
        let seed = 20 + 3 * seed as u64;
        let x = random(gpu, &shape, seed, false);
        let (gamma, beta) = (
            random(gpu, &shape[1..2], seed + 1, false),
            random(gpu, &shape[1..2], seed + 2, false),
        );
        let (_, _, context) = gpu.batch_norm_train_forward(&x, &gamma, &beta, bn).unwrap();
        let bytes = (shape.iter().product::<usize>() * size_of::<f32>()) as u64;
        let name = format!("{}ch_{}x{}", shape[1], shape[2], shape[3]);
        group.throughput(Throughput::Bytes(3 * bytes));
        bench(&mut group, gpu, &format!("{name}_train_forward"), || {
            gpu.batch_norm_train_forward(&x, &gamma, &beta, bn).unwrap();
        });
        group.throughput(Throughput::Bytes(5 * bytes));
        bench(&mut group, gpu, &format!("{name}_backward"), || {
            gpu.batch_norm_backward(&x, &context).unwrap();
        });
        let x16 = with_bf16_sums(gpu, &x);
        let (_, _, context) = gpu
            .batch_norm_train_forward(&x16, &gamma, &beta, bn)
            .unwrap();
        group.throughput(Throughput::Bytes(4 * bytes));
        bench(
            &mut group,
            gpu,
            &format!("{name}_backward_bf16_input"),
            || {
                gpu.batch_norm_backward(&x, &context).unwrap();
            },
        );
    }
    group.finish();
}

/// A first-stage convolution over spikes and its training BatchNorm under bf16 on each engine:
/// the two ops in turn against the fused ones (`conv_batch_norm_train_forward`, and with
/// `conv_batch_norm_backward` a whole layer's forward and backward). The differences are the
/// passes the fusion removes: the convolution output's widening to f32 in the forward, the
/// BatchNorm's f32 `dx` and its conversion to the convolution's 16-bit `dy` in the backward
/// (docs/precision.md §"Convolution outputs").
fn conv_batch_norm(c: &mut Criterion, gpu: &Gpu) {
    let device = gpu.device();
    if let Err(e) = device.set_precision(Precision::Bf16) {
        println!("SKIP: gpu_conv_batch_norm_b64_t4_bf16: {e}");
        return;
    }
    let mut group = c.benchmark_group("gpu_conv_batch_norm_b64_t4_bf16");
    let shape = [IMAGES, 64, 32, 32];
    let x = random(gpu, &shape, 30, true);
    let w = random(gpu, &[64, 64, 3, 3], 31, false);
    let dy = random(gpu, &shape, 32, false);
    let (gamma, beta) = (random(gpu, &[64], 33, false), random(gpu, &[64], 34, false));
    let norm = BatchNormAffine {
        gamma: &gamma,
        beta: &beta,
        params: BatchNormParams::default(),
    };
    let kind = ConvKind::Conv2d(Conv2dParams::new(1, 1));
    let two_ops_forward = || {
        let (conv_y, conv) = gpu.conv_forward(&x, &w, None, kind).unwrap();
        let (_, _, norm) = gpu
            .batch_norm_train_forward(&conv_y, &gamma, &beta, norm.params)
            .unwrap();
        (conv, norm)
    };
    let fused_forward = || {
        let out = gpu
            .conv_batch_norm_train_forward(x.clone(), &w, None, kind, norm)
            .unwrap();
        (out.conv, out.norm)
    };
    for engine in each_conv_engine(device) {
        let engine = engine.name();
        bench(
            &mut group,
            gpu,
            &format!("{engine}/two_ops_forward"),
            || {
                two_ops_forward();
            },
        );
        bench(&mut group, gpu, &format!("{engine}/fused_forward"), || {
            fused_forward();
        });
        let name = format!("{engine}/two_ops_forward_backward");
        bench(&mut group, gpu, &name, || {
            let (conv, norm) = two_ops_forward();
            let normed = gpu.batch_norm_backward(&dy, &norm).unwrap();
            drop(norm);
            gpu.conv_backward(normed.input, &conv, kind).unwrap();
        });
        let name = format!("{engine}/fused_forward_backward");
        bench(&mut group, gpu, &name, || {
            let (conv, norm) = fused_forward();
            gpu.conv_batch_norm_backward(dy.clone(), conv, norm, kind)
                .unwrap();
        });
    }
    group.finish();
    device.set_precision(Precision::F32).unwrap();
}

/// RevSFormer-4-384's spiking self-attention products (12 heads of 32 over 64 tokens) under
/// bf16, forward and backward: the five products in turn (`attention_*_in_turn`, each
/// converting its operands and writing `f32`) against the one op of each pass
/// (`attention_forward`, `attention_backward`), which makes each operand's 16-bit patterns once,
/// from the spike bits it keeps, and writes the scores and their gradient in 16 bits
/// (docs/precision.md §"Attention").
fn attention(c: &mut Criterion, gpu: &Gpu) {
    let device = gpu.device();
    if let Err(e) = device.set_precision(Precision::Bf16) {
        println!("SKIP: gpu_attention_b64_t4_bf16: {e}");
        return;
    }
    let mut group = c.benchmark_group("gpu_attention_b64_t4_bf16");
    // the per-head transposes [T B, h, d, N]
    let shape = [IMAGES, 12, 32, 64];
    let [q_t, k_t, v_t] = [40, 41, 42].map(|seed| {
        let currents = random(gpu, &shape, seed, false);
        let (spikes, _) = gpu
            .neuron_forward(currents, &NeuronConfig::if_atan())
            .unwrap();
        spikes
    });
    let dy = random(gpu, &shape, 43, false);
    let operands = || (q_t.clone(), k_t.clone(), v_t.clone());
    bench(&mut group, gpu, "in_turn_forward_backward", || {
        let (q, k, v) = operands();
        let (_, kept) = attention_forward_in_turn(gpu, q, k, v).unwrap();
        attention_backward_in_turn(gpu, dy.clone(), kept).unwrap();
    });
    bench(&mut group, gpu, "fused_forward_backward", || {
        let (q, k, v) = operands();
        let (_, kept) = gpu.attention_forward(q, k, v).unwrap();
        gpu.attention_backward(dy.clone(), kept).unwrap();
    });
    group.finish();
    device.set_precision(Precision::F32).unwrap();
}

/// `x` rounded to bf16, carrying the bf16 patterns it holds exactly (`CudaTensor::exact_half`),
/// as a bias-free 16-bit convolution hands on its output.
fn with_bf16_sums(gpu: &Gpu, x: &CudaTensor<f32>) -> CudaTensor<f32> {
    let (device, format) = (gpu.device(), HalfFormat::Bf16);
    let bits = device
        .upload(&half_bits(device, x, format).unwrap())
        .unwrap();
    let wide = gpu.to_vec(&rounded(device, x, format).unwrap()).unwrap();
    let half = HalfBits { bits, format };
    CudaTensor::widened_from(device.upload(&wide).unwrap(), x.shape(), half).unwrap()
}

criterion_group!(benches, gpu_ops);
criterion_main!(benches);
