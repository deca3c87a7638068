//! `revsnn memory`: peak bytes of one full training step (forward, backward, optimizer step) per
//! batch size, and memory per image as the slope between batch sizes and as peak / B
//! (docs/memory.md §9.3).

use clap::Args;
use revsnn_reference::{DType, Precision};
use serde_json::json;

use super::{ModelArgs, ThreadsArg, full_training_step, print_json_report, random_images};
use crate::device::{Compute, Device, DeviceChoice, on_backend};
use crate::error::{Error, Result};
use crate::footprint;
use crate::model::BuildOptions;
use crate::model::reversible::{ReversibleOptions, Storage};
use crate::network::Network;
use crate::optim::Optimizer;
use crate::spec::ModelSpec;
use crate::train::config::paper_optimizer;

/// Peak bytes of one training step at each batch size.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryReport {
    /// `(batch, peak bytes)`.
    pub per_batch: Vec<(usize, usize)>,
    /// `(peak(B_max) - peak(B_min)) / (B_max - B_min)` over the largest and smallest batch sizes;
    /// `None` with a single batch size.
    pub bytes_per_image_slope: Option<f64>,
    /// `peak(B_max) / B_max`.
    pub bytes_per_image_at_max_batch: f64,
}

/// Measures `spec` on `backend` in its float type. The peak covers everything live during the step: parameters,
/// gradients, optimizer state (allocated by a warm-up step first), the batch and every activation
/// and scratch buffer; on the CPU every heap byte of the process (the counting allocator), on
/// CUDA every device tensor ([`Compute::peak_memory_bytes`]).
pub fn measure<B: Compute>(
    backend: B,
    spec: &ModelSpec,
    batches: &[usize],
    bptt: bool,
    seed: u64,
) -> Result<MemoryReport> {
    if !backend.memory_is_counted() {
        return Err(Error::Usage(
            "memory accounting needs revsnn_reference::memory::CountingAllocator as the global allocator".into(),
        ));
    }
    if batches.is_empty() || batches.contains(&0) {
        return Err(Error::Usage(
            "--batch needs one or more batch sizes >= 1".into(),
        ));
    }
    let storage = if bptt {
        Storage::StoredActivations
    } else {
        Storage::Reversible
    };
    let options = BuildOptions {
        reversible: ReversibleOptions {
            storage,
            ..Default::default()
        },
        ..Default::default()
    };
    let largest = batches.iter().copied().max().unwrap_or(1);
    let setting = footprint::batch_setting(largest, spec);
    footprint::check_step(&backend, spec, largest, storage, &setting)?;
    let mut per_batch = Vec::new();
    for &batch in batches {
        let mut network = Network::new(&backend, spec, seed, options)?;
        let mut optimizer = Optimizer::new(paper_optimizer(spec.arch)?, &network.store);
        let (images, labels) = random_images(&backend, spec, batch, seed ^ batch as u64)?;
        full_training_step(&backend, &mut network, &mut optimizer, &images, &labels)?;
        backend.reset_peak_memory();
        full_training_step(&backend, &mut network, &mut optimizer, &images, &labels)?;
        per_batch.push((batch, backend.peak_memory_bytes()));
        // Closes the measured step, for a peak trace to report it (docs/memory.md §9.6).
        backend.reset_peak_memory();
    }
    // the smallest and the largest batch, in whatever order they were given
    let smallest = *per_batch.iter().min_by_key(|p| p.0).expect("a batch size");
    let largest = *per_batch.iter().max_by_key(|p| p.0).expect("a batch size");
    let bytes_per_image_slope = (largest.0 != smallest.0)
        .then(|| (largest.1 as f64 - smallest.1 as f64) / (largest.0 as f64 - smallest.0 as f64));
    Ok(MemoryReport {
        per_batch,
        bytes_per_image_slope,
        bytes_per_image_at_max_batch: largest.1 as f64 / largest.0 as f64,
    })
}

/// The arguments of `revsnn memory`.
#[derive(Clone, Debug, Args)]
pub struct MemoryArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub batch: Vec<usize>,
    /// Store every activation (plain backpropagation) instead of recomputing.
    #[arg(long)]
    pub bptt: bool,
    /// Where to compute: cpu (the reference), cuda, or auto (CUDA when a usable GPU is found).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceChoice,
    /// The precision of the GEMM operands (convolutions, linear layers, attention matmuls):
    /// f32 (default), tf32, bf16 or fp16, accumulating in f32 (docs/precision.md). The CPU
    /// emulates every one; so does CUDA (bf16 from compute capability 8.0).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub threads: ThreadsArg,
}

impl MemoryArgs {
    /// Runs `revsnn memory`: prints the report as a table, or as one JSON object.
    pub fn run(&self) -> Result<()> {
        self.threads.apply()?;
        let device = self.device.open(self.precision)?;
        let (name, spec) = self.model.resolve()?;
        let report = on_backend!(&device, DType::F32, |backend| {
            measure(backend, &spec, &self.batch, self.bptt, 0)
        })?;
        if self.json {
            self.print_json(&name, &spec, &device, &report);
        } else {
            self.print_table(&name, &spec, &device, &report);
        }
        Ok(())
    }

    fn print_json(&self, name: &str, spec: &ModelSpec, device: &Device, report: &MemoryReport) {
        let per_batch: Vec<_> = report
            .per_batch
            .iter()
            .map(|(b, p)| json!({"batch": b, "peak_bytes": p}))
            .collect();
        print_json_report(
            name,
            device,
            json!({
                "dtype": "f32",
                "time_steps": spec.time_steps,
                "bptt": self.bptt,
                "threads": rayon::current_num_threads(),
                "per_batch": per_batch,
                "bytes_per_image_slope": report.bytes_per_image_slope,
                "bytes_per_image_at_max_batch": report.bytes_per_image_at_max_batch,
            }),
        );
    }

    fn print_table(&self, name: &str, spec: &ModelSpec, device: &Device, report: &MemoryReport) {
        const MIB: f64 = (1u64 << 20) as f64;
        println!(
            "{name} (T = {}, f32, precision {}, {}{})",
            spec.time_steps,
            self.precision,
            match device {
                Device::Cpu(_) => ThreadsArg::cpu_place(),
                Device::Cuda(_) => format!("CUDA {}, device tensors", device.name()),
            },
            if self.bptt {
                ", stored activations"
            } else {
                ""
            }
        );
        for (batch, peak) in &report.per_batch {
            println!("  batch {batch:>4}: peak {:>10.1} MiB", *peak as f64 / MIB);
        }
        if let Some(slope) = report.bytes_per_image_slope {
            println!("  memory per image (slope): {:.2} MiB", slope / MIB);
        }
        println!(
            "  memory per image (peak / B): {:.2} MiB",
            report.bytes_per_image_at_max_batch / MIB
        );
    }
}
