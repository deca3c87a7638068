//! The collectives of one rank's NCCL communicator on the device (docs/distributed.md §7): a
//! started all-reduce costs no host wait, however many are started, and waiting for them is one;
//! a blocking collective is one each. Skips without a CUDA device (or the emulator) and NCCL (or
//! the emulator's fake one) unless `REVSNN_REQUIRE_GPU=1` and `REVSNN_REQUIRE_NCCL=1`. With one
//! rank an all-reduce is a copy, so its results are its inputs.

use std::sync::Arc;
use std::time::Duration;

use revsnn_gpu::nccl::{Communicator, unique_id};
use revsnn_gpu::testing::{device_or_skip, nccl_or_skip};
use revsnn_gpu::{CudaTensor, GpuDevice};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A communicator of one rank on the device, or `None` (skipped).
fn alone(test: &str) -> Option<(Arc<GpuDevice>, Communicator)> {
    let device = Arc::new(device_or_skip(test)?);
    if !nccl_or_skip(test) {
        return None;
    }
    let id = unique_id().unwrap();
    let communicator = Communicator::join(device.clone(), 0, 1, &id, TIMEOUT).unwrap();
    Some((device, communicator))
}

fn tensor(device: &GpuDevice, values: &[f32]) -> CudaTensor<f32> {
    CudaTensor::new(device.upload(values).unwrap(), &[values.len()]).unwrap()
}

fn values(device: &GpuDevice, tensor: &CudaTensor<f32>) -> Vec<f32> {
    device.download(tensor.buffer()).unwrap()
}

#[test]
fn started_all_reduces_cost_one_host_wait_together() {
    let Some((device, communicator)) = alone("started_all_reduces_cost_one_host_wait_together")
    else {
        return;
    };
    let buckets: Vec<Vec<f32>> = (0..5).map(|b| vec![b as f32, 0.5, -1.25]).collect();
    let inputs: Vec<_> = buckets.iter().map(|b| tensor(&device, b)).collect();
    let before = device.transfer_counts().host_waits;
    let sums: Vec<_> = inputs
        .iter()
        .map(|x| communicator.start_all_reduce_sum(x).unwrap())
        .collect();
    drop(inputs);
    assert_eq!(
        device.transfer_counts().host_waits,
        before,
        "a start waited"
    );
    communicator.wait_started().unwrap();
    assert_eq!(device.transfer_counts().host_waits, before + 1);
    communicator.wait_started().unwrap();
    assert_eq!(
        device.transfer_counts().host_waits,
        before + 1,
        "nothing left to wait for"
    );
    for (sum, bucket) in sums.iter().zip(&buckets) {
        assert_eq!(&values(&device, sum), bucket);
    }
}

#[test]
fn a_blocking_all_reduce_waits_once() {
    let Some((device, communicator)) = alone("a_blocking_all_reduce_waits_once") else {
        return;
    };
    let x = tensor(&device, &[1.0, 2.0]);
    let before = device.transfer_counts().host_waits;
    let sum = communicator.all_reduce_sum(&x).unwrap();
    assert_eq!(device.transfer_counts().host_waits, before + 1);
    assert_eq!(values(&device, &sum), vec![1.0, 2.0]);
    assert_eq!(communicator.all_gather_u64(7).unwrap(), vec![7]);
}
