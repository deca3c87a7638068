//! `revsnn bench`: the median wall time of one training step (forward, backward, optimizer
//! step) in f32 on the CPU or a CUDA device, images per second and the step's peak memory.

use std::time::Instant;

use revsnn_reference::DType;
use serde_json::json;

use super::memory::paper_optimizer;
use super::{DeviceArg, ModelArgs, full_training_step, random_images};
use crate::device::{Compute, Device, Task};
use crate::error::{Error, Result};
use crate::model::BuildOptions;
use crate::network::Network;
use crate::optim::Optimizer;
use crate::spec::ModelSpec;

/// What `revsnn bench` measures.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    pub median_step_seconds: f64,
    pub images_per_second: f64,
    /// Peak bytes during the timed steps: the process's heap on the CPU (0 without the counting
    /// allocator), device tensors on CUDA.
    pub peak_memory_bytes: usize,
    pub step_seconds: Vec<f64>,
}

/// Times `steps` training steps of `spec` at batch `batch` on `backend` after one warm-up step
/// (which also compiles the CUDA kernels). Each step's clock stops after the backend has
/// finished every op of the step ([`full_training_step`] synchronises), so queued GPU work is
/// timed, not just launched. The peak is [`Compute::peak_memory_bytes`] over the timed steps.
pub fn measure<B: Compute>(
    backend: B,
    spec: &ModelSpec,
    batch: usize,
    steps: usize,
) -> Result<BenchReport> {
    if batch == 0 || steps == 0 {
        return Err(Error::Usage("--batch and --steps must be >= 1".into()));
    }
    let mut network = Network::new(&backend, spec, 0, BuildOptions::default())?;
    let mut optimizer = Optimizer::new(paper_optimizer(spec), &network.store);
    let (images, labels) = random_images(&backend, spec, batch, 1)?;
    let mut step = || -> Result<f64> {
        backend.synchronize()?;
        let start = Instant::now();
        full_training_step(&backend, &mut network, &mut optimizer, &images, &labels)?;
        Ok(start.elapsed().as_secs_f64())
    };
    step()?;
    backend.reset_peak_memory();
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        times.push(step()?);
    }
    let peak = backend.peak_memory_bytes();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if steps % 2 == 1 {
        sorted[steps / 2]
    } else {
        0.5 * (sorted[steps / 2 - 1] + sorted[steps / 2])
    };
    Ok(BenchReport {
        median_step_seconds: median,
        images_per_second: batch as f64 / median,
        peak_memory_bytes: peak,
        step_seconds: times,
    })
}

/// [`measure`] as a [`Task`].
struct Measure<'a> {
    spec: &'a ModelSpec,
    batch: usize,
    steps: usize,
}

impl Task for Measure<'_> {
    type Output = BenchReport;

    fn run<B: Compute>(self, backend: B) -> Result<BenchReport> {
        measure(backend, self.spec, self.batch, self.steps)
    }
}

/// Runs `revsnn bench`.
pub fn run(
    args: &ModelArgs,
    batch: usize,
    steps: usize,
    device: DeviceArg,
    tf32: bool,
    json_output: bool,
) -> Result<()> {
    let device = device.open()?;
    if tf32 {
        match &device {
            Device::Cuda(gpu) => gpu.allow_tf32(true).map_err(Error::Cuda)?,
            Device::Cpu => {
                return Err(Error::Usage(
                    "--tf32 applies to CUDA only: add --device cuda, or leave --tf32 out".into(),
                ));
            }
        }
    }
    let (name, spec) = args.resolve()?;
    let device_name = device.name();
    let report = device.run(
        DType::F32,
        Measure {
            spec: &spec,
            batch,
            steps,
        },
    )?;
    let threads = rayon::current_num_threads();
    let conv_engine = match &device {
        Device::Cpu => "cpu",
        Device::Cuda(gpu) => gpu.conv_engine().name(),
    };
    if json_output {
        println!(
            "{}",
            json!({
                "model": name,
                "device": device_name,
                "backend": device.kind(),
                "dtype": "f32",
                "tf32": tf32,
                "conv_engine": conv_engine,
                "batch": batch,
                "steps": steps,
                "threads": threads,
                "median_step_seconds": report.median_step_seconds,
                "images_per_second": report.images_per_second,
                "peak_memory_bytes": report.peak_memory_bytes,
                "step_seconds": report.step_seconds,
            })
        );
    } else {
        let place = match device {
            Device::Cpu => format!("CPU, {threads} threads"),
            Device::Cuda(_) if tf32 => {
                format!("CUDA {device_name}, {conv_engine} convolutions, TF32")
            }
            Device::Cuda(_) => format!("CUDA {device_name}, {conv_engine} convolutions"),
        };
        println!(
            "{name} (batch {batch}, f32, {place}): median step {:.4} s, {:.1} images/s, peak {:.1} MiB",
            report.median_step_seconds,
            report.images_per_second,
            report.peak_memory_bytes as f64 / (1u64 << 20) as f64
        );
    }
    Ok(())
}
