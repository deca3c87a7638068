//! `revsnn train`: trains a model on a dataset (the default: a small RevSResNet on `synthetic`),
//! see [`crate::train`].

use std::path::PathBuf;

use clap::Args;

use super::DeviceArg;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::spec::ModelSpec;
use crate::train::{TrainConfig, default_spec, train};

/// The arguments of `revsnn train`.
#[derive(Clone, Debug, Args)]
pub struct TrainArgs {
    /// A preset (see `revsnn summary --help`); without --model or --spec, a small RevSResNet
    /// (layers [1,1,1,1], planes [8,16,16,32], T = 2, 32x32, 10 classes).
    #[arg(long, conflicts_with = "spec")]
    pub model: Option<String>,
    /// A JSON model spec file.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Override the number of classes.
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Override the number of time steps T.
    #[arg(long)]
    pub time_steps: Option<usize>,
    /// synthetic, synthetic-events, cifar10, cifar100, dvs128-gesture or cifar10-dvs (default:
    /// synthetic, or synthetic-events for DVS models).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Where the real datasets live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Total epochs (default 8; with --resume, the run's own).
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Base learning rate (default: the recipe's: SGD 0.1 x batch / 32, AdamW 5e-4).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceArg,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The run folder (default: runs/<model>-<dataset>-seed<S>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint, bit for bit.
    #[arg(long)]
    pub resume: bool,
    /// Training samples (the synthetic datasets' size; a cap for the real ones).
    #[arg(long, default_value_t = 5000)]
    pub train_samples: usize,
    /// Test samples.
    #[arg(long, default_value_t = 1000)]
    pub test_samples: usize,
    /// CPU threads (default: all).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop after this many epochs of this invocation; --resume continues the run exactly.
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Sets the number of compute threads; `None` keeps the default (all cores).
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(threads) = threads {
        if threads == 0 {
            return Err(Error::Usage("--threads must be >= 1".into()));
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .map_err(|e| Error::Usage(format!("--threads {threads}: {e}")))?;
    }
    Ok(())
}

/// The model's display name and spec.
pub fn resolve_model(
    model: &Option<String>,
    spec: &Option<PathBuf>,
    num_classes: Option<usize>,
    time_steps: Option<usize>,
) -> Result<(String, ModelSpec)> {
    let (name, mut spec) = match (model, spec) {
        (None, None) => ("revsresnet-small".to_string(), default_spec()),
        _ => super::ModelArgs {
            model: model.clone(),
            spec: spec.clone(),
            num_classes: None,
            time_steps: None,
        }
        .resolve()?,
    };
    if let Some(classes) = num_classes {
        spec.num_classes = classes;
    }
    if let Some(steps) = time_steps {
        spec.time_steps = steps;
    }
    spec.validate()?;
    Ok((name, spec))
}

/// Runs `revsnn train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    let device = args.device.open()?;
    set_threads(args.threads)?;
    let (name, spec) = resolve_model(&args.model, &args.spec, args.num_classes, args.time_steps)?;
    let dataset = args.dataset.clone().unwrap_or_else(|| {
        if spec.arch.is_dvs() {
            "synthetic-events".into()
        } else {
            "synthetic".into()
        }
    });
    let short_name = std::path::Path::new(&name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.clone());
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("{short_name}-{dataset}-seed{}", args.seed))
    });
    let config = TrainConfig {
        model_name: name,
        spec,
        dataset,
        data_dir: args.data_dir.clone(),
        epochs: args.epochs,
        batch: args.batch,
        lr: args.lr,
        seed: args.seed,
        out,
        resume: args.resume,
        train_samples: args.train_samples,
        test_samples: args.test_samples,
        stop_after: args.stop_after,
        model_given: args.model.is_some() || args.spec.is_some(),
        quiet: args.quiet,
    };
    if let Device::Cuda(_) = device {
        eprintln!("device: CUDA {}", device.name());
    }
    let summary = train(&config, &device)?;
    println!(
        "done in {:.1} s: test top-1 {:.2}% (best {:.2}%), top-5 {:.2}%; run folder {}",
        summary.seconds,
        100.0 * summary.last["test_acc1"].as_f64().unwrap_or(f64::NAN),
        100.0 * summary.best_test_acc1,
        100.0 * summary.last["test_acc5"].as_f64().unwrap_or(f64::NAN),
        summary.out.display()
    );
    Ok(())
}
