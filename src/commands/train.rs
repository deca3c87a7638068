//! `revsnn train`: trains a model on a dataset (the default: a small RevSResNet on `synthetic`),
//! see [`crate::train`]. With `--gpus N`, or started by torchrun, the ranks of a data-parallel
//! run are processes with one GPU each ([`gpus`]).

mod gpus;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::ThreadsArg;
use crate::collective::ProcessRank;
use crate::device::DeviceChoice;
use crate::error::{Error, Result, resume_command};
use crate::train::config::GivenSettings;
use crate::train::{Invocation, Run, TrainSummary, config_file_text, train};

/// The arguments of `revsnn train`: the run's settings, each a flag or a key of the `--config`
/// file, and what this invocation does. Negative numbers parse as values (`--lr -1` is refused
/// by the settings' checks, with the valid range, not taken for an unknown flag).
#[derive(Clone, Debug, Args)]
#[command(allow_negative_numbers = true)]
pub struct TrainArgs {
    /// A TOML file of settings: each key is a flag's name with `_` for `-`, in the section of
    /// its help heading (`[optimizer]`, `[schedule]`, `[augment]`, `[loader]`; --optimizer and
    /// --schedule are `name` there). Flags override the file; relative paths are relative to
    /// the file. A run folder's config.toml reruns that run.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint, bit for bit, with its own settings
    /// (flags may repeat them; only --epochs, --data-dir, --device, --workers, --prefetch and
    /// --eval-batch may change them).
    #[arg(long)]
    pub resume: bool,
    /// Print the run's settings, every knob resolved, as a config file, and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub threads: ThreadsArg,
    /// Stop after this many epochs of this invocation; --resume continues the run exactly.
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// No progress bar and no line per epoch (metrics.jsonl still records every epoch).
    #[arg(long)]
    pub quiet: bool,
    /// Also write each epoch's metrics as TensorBoard event files into RUN/tb/ (view with
    /// `tensorboard --logdir runs/`); a resumed run adds a file there.
    #[arg(long)]
    pub tensorboard: bool,
    /// With --resume or --initial-checkpoint: load a checkpoint holding NaN or infinities anyway
    /// (a deliberate experiment); by default it is an error naming the tensor and the first such
    /// index.
    #[arg(long)]
    pub allow_non_finite: bool,
    /// Train on N GPUs of this machine, one process each, exchanging through NCCL
    /// (docs/distributed.md §6, §7): starts N ranks of this command, each on GPU `LOCAL_RANK`;
    /// --batch is the global batch. Implies --device cuda and --ranks N. Under torchrun
    /// (`WORLD_SIZE` set) this process is one of the ranks instead.
    #[arg(long)]
    pub gpus: Option<usize>,
    /// Seconds a rank waits for the others (at the start and in each collective) before it
    /// stops with an error: a rank that died or hangs stops the run instead of blocking it. On
    /// GPUs it bounds every wait of a rank for its device too (docs/distributed.md §7).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub rank_timeout: u64,
    #[command(flatten)]
    pub settings: GivenSettings,
}

impl TrainArgs {
    /// Runs `revsnn train`: as the launcher of `--gpus N` ranks, as one rank of a run of
    /// processes (`WORLD_SIZE` set), or as the whole run.
    pub fn run(&self) -> Result<()> {
        if self.stop_after == Some(0) {
            return Err(Error::Usage(
                "--stop-after 0 would train no epoch: give 1 or more, or leave it out to train \
                 all of --epochs"
                    .into(),
            ));
        }
        self.threads.apply()?;
        let process = ProcessRank::from_env()?;
        if let (Some(count), None, false) = (self.gpus, &process, self.print_config) {
            return gpus::launch(count, self.settings.device);
        }
        let mut given = self.settings.clone();
        if let Some(path) = &self.config {
            given = given.over(GivenSettings::read(path)?);
        }
        if let Some(me) = &process {
            gpus::as_rank(&mut given, me, self.gpus)?;
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
        let device = gpus::open_device(&run, process.as_ref())?;
        if run.config.device == DeviceChoice::Cuda {
            // `auto` has said which device it took, and why. One write, so that the lines of
            // ranks that print at once do not interleave.
            let line = format!("device: {}\n", device.describe());
            eprint!("{line}");
        }
        let timeout = Duration::from_secs(self.rank_timeout);
        let group = match &process {
            Some(me) => Some(gpus::join(me, &device, &run, timeout)?),
            None => None,
        };
        let leader = process.as_ref().is_none_or(|me| me.rank == 0);
        let options = Invocation {
            stop_after: self.stop_after,
            ctrl_c_stops: true,
            quiet: self.quiet || !leader,
            tensorboard: self.tensorboard,
            allow_non_finite: self.allow_non_finite,
            rank_timeout: timeout,
        };
        let summary = train(&run, &options, &device, group)?;
        if !leader {
            return Ok(());
        }
        println!("{}", summary_line(&summary));
        Ok(())
    }
}

/// The line that ends a run's output: done, or stopped by `--stop-after` with how to go on; the
/// last epoch's test accuracy and the best.
fn summary_line(summary: &TrainSummary) -> String {
    let last = |key: &str| summary.last[key].as_f64().unwrap_or(f64::NAN);
    let folder = summary.out.display();
    let (start, end) = if summary.epochs_done < summary.epochs {
        (
            format!(
                "stopped after epoch {} of {} (--stop-after)",
                summary.epochs_done, summary.epochs
            ),
            format!("; continue with {}", resume_command(&folder.to_string())),
        )
    } else {
        ("done".to_string(), format!("; run folder {folder}"))
    };
    format!(
        "{start} in {:.1} s: test top-1 {:.2}% (best {:.2}%), top-5 {:.2}%{end}",
        summary.seconds,
        100.0 * last("test_acc1"),
        100.0 * summary.best_test_acc1,
        100.0 * last("test_acc5"),
    )
}
