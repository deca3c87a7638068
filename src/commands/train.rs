//! `revsnn train`: trains a model on a dataset (the default: a small RevSResNet on `synthetic`),
//! see [`crate::train`].

use std::path::PathBuf;

use clap::Args;

use crate::device::Device as OpenDevice;
use crate::error::{Error, Result};
use crate::spec::ModelSpec;
use crate::train::config::TrainSettings;
use crate::train::{Run, TrainOptions, config_file_text, default_spec, train};

/// The arguments of `revsnn train`: the run's settings, each a flag or a key of the `--config`
/// file, and what this invocation does.
#[derive(Clone, Debug, Args)]
pub struct TrainArgs {
    /// A TOML file of settings: each key is a flag's name with `_` for `-`, in the section of
    /// its help heading (`[optimizer]`, `[schedule]`, `[augment]`, `[loader]`; --optimizer and
    /// --schedule are `name` there). Flags override the file; relative paths are relative to
    /// the file. A run folder's config.toml reruns that run.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint, bit for bit, with its own settings
    /// (flags may repeat them; only --epochs, --data-dir, --device, --workers and --prefetch may
    /// change them).
    #[arg(long)]
    pub resume: bool,
    /// Print the run's settings, every knob resolved, as a config file, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// CPU threads (default: all).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stop after this many epochs of this invocation; --resume continues the run exactly.
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub settings: TrainSettings,
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
    let mut given = args.settings.clone();
    if let Some(path) = &args.config {
        given = given.over(TrainSettings::read(path)?);
    }
    let run = if args.resume {
        Run::resume(given)?
    } else {
        Run::start(given)?
    };
    if args.print_config {
        print!("{}", config_file_text(&run.config, None)?);
        return Ok(());
    }
    let device = run.config.device.open()?;
    set_threads(args.threads)?;
    if let OpenDevice::Cuda(_) = device {
        eprintln!("device: CUDA {}", device.name());
    }
    let summary = train(
        &run,
        &TrainOptions {
            stop_after: args.stop_after,
            quiet: args.quiet,
        },
        &device,
    )?;
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
