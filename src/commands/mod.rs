//! The `revsnn` subcommands, each a function from parsed arguments to printed output.

pub mod bench;
pub mod eval;
pub mod grad;
pub mod info;
pub mod kernels;
pub mod memory;
pub mod summary;
pub mod train;
pub mod verify;

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::device::{Compute, Device};
use crate::error::{Error, Result, counted};
use crate::spec::ModelSpec;

/// Which model: a preset or a JSON spec file (one of the two), with overrides.
#[derive(Clone, Debug, Args)]
#[command(group(clap::ArgGroup::new("model_or_spec").args(["model", "spec"]).required(true)))]
pub struct ModelArgs {
    /// A preset: revsresnet21, revsresnet37, revsresnet109, revsresnet24, msresnet18, msresnet34,
    /// msresnet104, msresnet20, revsformer-2-384, revsformer-4-384, revsformer-2-256,
    /// spikingformer-2-384, spikingformer-4-384, spikingformer-2-256.
    #[arg(long)]
    pub model: Option<String>,
    /// A JSON model spec file (see the README for the format).
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Override the number of classes.
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Override the number of time steps T.
    #[arg(long)]
    pub time_steps: Option<usize>,
}

impl ModelArgs {
    /// The spec these arguments name, validated, with its display name.
    pub fn resolve(&self) -> Result<(String, ModelSpec)> {
        let (name, mut spec) = match (&self.model, &self.spec) {
            (Some(preset), _) => (preset.clone(), ModelSpec::preset(preset)?),
            (None, Some(path)) => (path.display().to_string(), ModelSpec::read(path)?),
            (None, None) => {
                return Err(Error::Usage(
                    "give --model PRESET or --spec FILE.json".into(),
                ));
            }
        };
        if let Some(classes) = self.num_classes {
            spec.num_classes = classes;
        }
        if let Some(steps) = self.time_steps {
            spec.time_steps = steps;
        }
        spec.validate()?;
        Ok((name, spec))
    }
}

/// The float type to compute in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F32,
    F64,
}

impl From<DTypeArg> for revsnn_reference::DType {
    fn from(dtype: DTypeArg) -> Self {
        match dtype {
            DTypeArg::F32 => revsnn_reference::DType::F32,
            DTypeArg::F64 => revsnn_reference::DType::F64,
        }
    }
}

/// Prints a command's report as one JSON object: `model` (the display name), `device` and
/// `backend` (the device's name and kind), `precision` (its GEMMs'), then `fields`.
pub fn print_json_report(model: &str, device: &Device, fields: serde_json::Value) {
    let mut report = serde_json::json!({
        "model": model,
        "device": device.name(),
        "backend": device.kind(),
        "precision": device.precision().name(),
    });
    if let (Some(report), serde_json::Value::Object(fields)) = (report.as_object_mut(), fields) {
        report.extend(fields);
    }
    println!("{report}");
}

/// The most compute threads `--threads` may ask for: above the cores of any machine, below what
/// the system refuses to start.
pub const MAX_THREADS: usize = 1024;

/// `--threads`, the CPU threads of every command that computes.
#[derive(Clone, Copy, Debug, Default, Args)]
pub struct ThreadsArg {
    /// CPU threads (default: all).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ThreadsArg {
    /// Sets the number of compute threads, before anything computes; none given keeps the
    /// default (all cores). Errors outside 1 to [`MAX_THREADS`].
    pub fn apply(self) -> Result<()> {
        let Some(threads) = self.threads else {
            return Ok(());
        };
        if !(1..=MAX_THREADS).contains(&threads) {
            return Err(Error::Usage(format!(
                "--threads {threads}: give 1 to {MAX_THREADS} (`revsnn info` shows the CPU threads)"
            )));
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .map_err(|e| Error::Usage(format!("--threads {threads}: {e}")))
    }

    /// `CPU, N threads`: where a CPU run computes, as `bench` and `memory` report it (the
    /// threads in use, after [`ThreadsArg::apply`]).
    pub fn cpu_place() -> String {
        let threads = counted(rayon::current_num_threads(), "thread", "threads");
        format!("CPU, {threads}")
    }
}

/// One full training step as `memory` and `bench` measure it: forward, cross-entropy, backward
/// and an optimizer step at the optimizer's own learning rate; on return every op of the step
/// has finished (the backend is synchronised).
pub fn full_training_step<B: Compute>(
    backend: &B,
    network: &mut crate::network::Network<B>,
    optimizer: &mut crate::optim::Optimizer<B>,
    images: &B::Tensor,
    labels: &[usize],
) -> Result<()> {
    let mut grads = network.zero_grads();
    network.train_step(
        backend,
        &mut grads,
        images,
        crate::model::Targets::Hard(labels),
        crate::network::PassOptions::default(),
    )?;
    optimizer.step(backend, &mut network.store, &grads, optimizer.kind.lr())?;
    Ok(backend.synchronize()?)
}

/// Random images (or event frames) and labels for a batch of `batch` samples of `spec`; a batch
/// whose element count overflows is an error.
pub fn random_batch(
    spec: &ModelSpec,
    batch: usize,
    seed: u64,
) -> Result<(Vec<usize>, Vec<f64>, Vec<usize>)> {
    let mut rng = revsnn_reference::testing::SplitMix64::new(seed);
    let mut shape = vec![batch];
    shape.extend(spec.sample_shape());
    let len = revsnn_reference::contract::shapes::element_count("random_batch", &shape)?;
    let images = if spec.arch.is_dvs() {
        // event frames: non-negative counts
        (0..len).map(|_| (rng.next_f64() * 3.0).floor()).collect()
    } else {
        rng.normal_vec(len, 1.0)
    };
    let labels = (0..batch)
        .map(|_| (rng.next_u64() % spec.num_classes as u64) as usize)
        .collect();
    Ok((shape, images, labels))
}

/// [`random_batch`] as a tensor on `backend`, and its labels.
pub fn random_images<B: revsnn_reference::Backend>(
    backend: &B,
    spec: &ModelSpec,
    batch: usize,
    seed: u64,
) -> Result<(B::Tensor, Vec<usize>)> {
    let (shape, values, labels) = random_batch(spec, batch, seed)?;
    let values = values
        .into_iter()
        .map(<B::Elem as revsnn_reference::Element>::cast)
        .collect();
    Ok((backend.tensor_from_vec(&shape, values)?, labels))
}
