//! `revsnn bench`: the median wall time of one training step (forward, backward, optimizer
//! step) in f32 on the CPU, images per second and the step's peak memory.

use std::time::Instant;

use revsnn_reference::{Backend, Cpu, memory};
use serde_json::json;

use super::memory::paper_optimizer;
use super::{DeviceArg, ModelArgs, full_training_step, random_batch};
use crate::error::{Error, Result};
use crate::model::BuildOptions;
use crate::network::Network;
use crate::optim::Optimizer;

/// What `revsnn bench` measures.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    pub median_step_seconds: f64,
    pub images_per_second: f64,
    /// Peak bytes during the timed steps (0 without the counting allocator).
    pub peak_memory_bytes: usize,
    pub step_seconds: Vec<f64>,
}

/// Times `steps` training steps at batch `batch` after one warm-up step.
pub fn measure(args: &ModelArgs, batch: usize, steps: usize) -> Result<(String, BenchReport)> {
    if batch == 0 || steps == 0 {
        return Err(Error::Usage("--batch and --steps must be >= 1".into()));
    }
    let (name, spec) = args.resolve()?;
    let backend = Cpu::<f32>::new();
    let mut network = Network::new(&backend, &spec, 0, BuildOptions::default())?;
    let mut optimizer = Optimizer::new(paper_optimizer(&spec), &network.store);
    let (shape, values, labels) = random_batch(&spec, batch, 1);
    let images = backend.tensor_from_vec(&shape, values.into_iter().map(|v| v as f32).collect())?;
    let mut step = || -> Result<f64> {
        let start = Instant::now();
        full_training_step(&backend, &mut network, &mut optimizer, &images, &labels)?;
        Ok(start.elapsed().as_secs_f64())
    };
    step()?;
    memory::reset_peak();
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        times.push(step()?);
    }
    let peak = memory::stats().peak_bytes;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if steps % 2 == 1 {
        sorted[steps / 2]
    } else {
        0.5 * (sorted[steps / 2 - 1] + sorted[steps / 2])
    };
    Ok((
        name,
        BenchReport {
            median_step_seconds: median,
            images_per_second: batch as f64 / median,
            peak_memory_bytes: peak,
            step_seconds: times,
        },
    ))
}

/// Runs `revsnn bench`.
pub fn run(
    args: &ModelArgs,
    batch: usize,
    steps: usize,
    device: DeviceArg,
    json_output: bool,
) -> Result<()> {
    device.require_cpu()?;
    let (name, report) = measure(args, batch, steps)?;
    let threads = rayon::current_num_threads();
    if json_output {
        println!(
            "{}",
            json!({
                "model": name,
                "device": "cpu",
                "dtype": "f32",
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
        println!(
            "{name} (batch {batch}, f32, CPU, {threads} threads): median step {:.4} s, {:.1} images/s, peak {:.1} MiB",
            report.median_step_seconds,
            report.images_per_second,
            report.peak_memory_bytes as f64 / (1u64 << 20) as f64
        );
    }
    Ok(())
}
