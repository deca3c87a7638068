//! `revsnn bench`: the median wall time of one training step (forward, backward, optimizer
//! step) in f32 on the CPU or a CUDA device, its GEMMs in a precision (`--precision`), images
//! per second and the step's peak memory.

use std::time::Instant;

use clap::Args;
use revsnn_reference::{DType, Precision, TransferCounts, TransfersPerStep};
use serde_json::json;

use super::{ModelArgs, ThreadsArg, full_training_step, print_json_report, random_images};
use crate::device::{Compute, Device, DeviceChoice, on_backend};
use crate::error::{Error, Result};
use crate::footprint;
use crate::model::BuildOptions;
use crate::model::reversible::Storage;
use crate::network::Network;
use crate::optim::Optimizer;
use crate::spec::ModelSpec;
use crate::train::config::paper_optimizer;

/// What `revsnn bench` measures.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    pub median_step_seconds: f64,
    pub images_per_second: f64,
    /// Peak bytes during the timed steps: the process's heap on the CPU (0 without the counting
    /// allocator), device tensors on CUDA.
    pub peak_memory_bytes: usize,
    pub step_seconds: Vec<f64>,
    /// On a device, the host waits, uploads and allocation retries of the timed steps per step
    /// (their mean; `None` on the CPU).
    pub transfers_per_step: Option<TransfersPerStep>,
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
    let setting = footprint::batch_setting(batch, spec);
    footprint::check_step(&backend, spec, batch, Storage::Reversible, &setting)?;
    let mut network = Network::new(&backend, spec, 0, BuildOptions::default())?;
    let mut optimizer = Optimizer::new(paper_optimizer(spec.arch)?, &network.store);
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
    let mut transfers = TransferCounts::default();
    for _ in 0..steps {
        let before = backend.transfer_counts();
        times.push(step()?);
        if let (Some(before), Some(after)) = (before, backend.transfer_counts()) {
            // The step's own transfers, less the synchronisation that starts its clock.
            let step = after.since(before);
            transfers.host_waits += step.host_waits.saturating_sub(1);
            transfers.uploads += step.uploads;
            transfers.alloc_retries += step.alloc_retries;
        }
    }
    let transfers_per_step = backend.transfer_counts().map(|_| transfers.per_step(steps));
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
        transfers_per_step,
    })
}

/// The arguments of `revsnn bench`.
#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per training step.
    #[arg(long)]
    pub batch: usize,
    /// Timed steps, after one untimed warm-up step; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[command(flatten)]
    pub threads: ThreadsArg,
    /// Where to compute: auto (CUDA when a usable GPU is found, else the CPU; one line on
    /// stderr says which and why), cpu or cuda.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// The precision of the GEMM operands: f32 (default), tf32, bf16 or fp16
    /// (docs/precision.md). On CUDA, tf32 lets cuBLAS and cuDNN run the f32 GEMMs on TF32
    /// tensor cores, as PyTorch does for convolutions by default: faster, about 1e-3 relative
    /// error in each product instead of 1e-6. The CPU emulates every precision (for checking,
    /// not for speed).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Print one JSON object (every step's time, memory, the device) instead of a line.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    /// Runs `revsnn bench`.
    pub fn run(&self) -> Result<()> {
        self.threads.apply()?;
        let device = self.device.open(self.precision)?;
        let (name, spec) = self.model.resolve()?;
        let report = on_backend!(&device, DType::F32, |backend| {
            measure(backend, &spec, self.batch, self.steps)
        })?;
        if self.json {
            self.print_json(&name, spec.time_steps, &device, &report);
        } else {
            self.print_line(&name, &device, &report);
        }
        Ok(())
    }

    fn print_json(&self, name: &str, time_steps: usize, device: &Device, report: &BenchReport) {
        print_json_report(
            name,
            device,
            json!({
                "dtype": "f32",
                "conv_engine": conv_engine(device),
                "batch": self.batch,
                "time_steps": time_steps,
                "steps": self.steps,
                "threads": rayon::current_num_threads(),
                "median_step_seconds": report.median_step_seconds,
                "images_per_second": report.images_per_second,
                "peak_memory_bytes": report.peak_memory_bytes,
                "step_seconds": report.step_seconds,
                "syncs_per_step": report.transfers_per_step.map(|t| t.host_waits),
                "uploads_per_step": report.transfers_per_step.map(|t| t.uploads),
                "alloc_retries_per_step": report.transfers_per_step.map(|t| t.alloc_retries),
            }),
        );
    }

    fn print_line(&self, name: &str, device: &Device, report: &BenchReport) {
        let (device_name, engine) = (device.name(), conv_engine(device));
        let place = match device {
            Device::Cpu(_) => ThreadsArg::cpu_place(),
            Device::Cuda(_) => format!("CUDA {device_name}, {engine} convolutions"),
        };
        println!(
            "{name} (batch {}, f32, precision {}, {place}): median step {:.4} s, {:.1} images/s, \
             peak {:.1} MiB",
            self.batch,
            self.precision,
            report.median_step_seconds,
            report.images_per_second,
            report.peak_memory_bytes as f64 / (1u64 << 20) as f64
        );
        let retries = report.transfers_per_step.map_or(0.0, |t| t.alloc_retries);
        if retries > 0.0 {
            let allocations = format!("{retries:.2} allocations per step");
            println!("  {}", footprint::retry_note(&allocations));
        }
    }
}

/// The convolution engine `device` runs: `cpu`, or the CUDA device's.
fn conv_engine(device: &Device) -> &'static str {
    match device {
        Device::Cpu(_) => "cpu",
        Device::Cuda(gpu) => gpu.conv_engine().name(),
    }
}
