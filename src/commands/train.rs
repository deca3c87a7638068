//! `revsnn train`: trains a model on a dataset (the default: a small RevSResNet on `synthetic`),
//! see [`crate::train`].

use std::path::PathBuf;

use clap::Args;

use super::set_threads;
use crate::device::DeviceChoice;
use crate::error::Result;
use crate::train::config::GivenSettings;
use crate::train::{Invocation, Run, config_file_text, train};

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
    /// Also write each epoch's metrics as TensorBoard event files into RUN/tb/ (view with
    /// `tensorboard --logdir runs/`); a resumed run adds a file there.
    #[arg(long)]
    pub tensorboard: bool,
    /// With --resume: load a checkpoint holding NaN or infinities anyway (a deliberate
    /// experiment); by default it is an error naming the tensor and the first such index.
    #[arg(long)]
    pub allow_non_finite: bool,
    #[command(flatten)]
    pub settings: GivenSettings,
}

impl TrainArgs {
    /// Runs `revsnn train`.
    pub fn run(&self) -> Result<()> {
        let mut given = self.settings.clone();
        if let Some(path) = &self.config {
            given = given.over(GivenSettings::read(path)?);
        }
        let run = if self.resume {
            Run::resume(given)?
        } else {
            Run::start(given)?
        };
        if self.print_config {
            print!("{}", config_file_text(&run.config, None)?);
            return Ok(());
        }
        let device = run.config.device.open(run.config.precision)?;
        set_threads(self.threads)?;
        if run.config.device == DeviceChoice::Cuda {
            // `auto` has said which device it took, and why.
            eprintln!("device: {}", device.describe());
        }
        let options = Invocation {
            stop_after: self.stop_after,
            quiet: self.quiet,
            tensorboard: self.tensorboard,
            allow_non_finite: self.allow_non_finite,
        };
        let summary = train(&run, &options, &device)?;
        let last = |key: &str| summary.last[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "done in {:.1} s: test top-1 {:.2}% (best {:.2}%), top-5 {:.2}%; run folder {}",
            summary.seconds,
            100.0 * last("test_acc1"),
            100.0 * summary.best_test_acc1,
            100.0 * last("test_acc5"),
            summary.out.display()
        );
        Ok(())
    }
}
