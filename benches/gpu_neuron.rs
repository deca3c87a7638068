//! Fused LIF forward and backward on the GPU against a device-to-device copy, measured in the
//! same run (the bar: forward + backward at 70% of the copy bandwidth or more): T = 4, N = 2^22
//! neurons, f32. Throughput counts the bytes each kernel must move: x read, spikes and h written
//! (forward); dL/ds and h read, dL/dx written (backward); a copy reads and writes its bytes once.
//!
//! Without a GPU it prints `SKIP: no CUDA device` and measures nothing.

use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use revsnn_gpu::ops::neuron;
use revsnn_gpu::testing::device_or_skip;
use revsnn_reference::NeuronConfig;

const TIME_STEPS: usize = 4;
const NEURONS: usize = 1 << 22;

fn gpu_neuron(c: &mut Criterion) {
    let Some(device) = device_or_skip("gpu_neuron bench") else {
        return;
    };
    let stream = device.stream().clone();
    let len = TIME_STEPS * NEURONS;
    let config = NeuronConfig::lif_sigmoid(2.0, 1.0);
    let host: Vec<f32> = (0..len)
        .map(|i| ((i * 7919) % 1000) as f32 / 400.0)
        .collect();
    let x = stream.clone_htod(&host).unwrap();
    let grad = stream.clone_htod(&host).unwrap();
    let mut spikes = stream.alloc_zeros::<f32>(len).unwrap();
    let mut h = stream.alloc_zeros::<f32>(len).unwrap();
    let mut grad_x = stream.alloc_zeros::<f32>(len).unwrap();
    let mut copy = stream.alloc_zeros::<f32>(len).unwrap();
    let tensor_bytes = (len * std::mem::size_of::<f32>()) as u64;

    let mut group = c.benchmark_group("gpu_lif_t4_n2p22_f32");
    group.throughput(Throughput::Bytes(2 * tensor_bytes));
    group.bench_function("device_to_device_copy", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                stream.memcpy_dtod(&x, &mut copy).unwrap();
            }
            device.synchronize().unwrap();
            start.elapsed()
        })
    });
    group.throughput(Throughput::Bytes(3 * tensor_bytes));
    group.bench_function("lif_forward", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                neuron::forward_into(&device, &x, &mut spikes, &mut h, TIME_STEPS, &config)
                    .unwrap();
            }
            device.synchronize().unwrap();
            start.elapsed()
        })
    });
    group.bench_function("lif_backward", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                neuron::backward_into(&device, &grad, &h, &mut grad_x, TIME_STEPS, &config)
                    .unwrap();
            }
            device.synchronize().unwrap();
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, gpu_neuron);
criterion_main!(benches);
