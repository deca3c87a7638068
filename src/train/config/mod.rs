//! The settings of `revsnn train`: a TOML file (`--config FILE.toml`), flags over it, and a
//! recipe ([`super::recipe`]) for every knob left open.
//!
//! [`GivenSettings`] are the settings as given, both the file and the flags: every knob optional,
//! each a config key and a flag. [`GivenSettings::over`] lays the flags over the file;
//! [`GivenSettings::resolve`] fills in the rest from the recipe and checks every value, giving the
//! [`RunSettings`], every knob decided; [`RunSettings::to_given`] gives them back with every knob
//! set, written to the run folder as `config.toml`, from which `--config DIR/config.toml`
//! reproduces the run.
//!
//! ```toml
//! recipe = "paper"
//! model = "revsresnet37"
//! dataset = "cifar100"
//! data_dir = "/data"
//! epochs = 100
//!
//! [optimizer]
//! lr = 0.05
//!
//! [augment]
//! flip = false
//! ```
//!
//! A key is its flag's name with `_` for `-`, in the section of the flag's help heading
//! (`[optimizer]`, `[schedule]`, `[augment]`, `[loader]`); `--optimizer` and `--schedule` are
//! `name` in theirs. Relative paths in a file are relative to the file's folder. An unknown key
//! is an error that lists the valid ones; a bad value names its key and what it takes.

mod augment;
mod checks;
mod file;
mod loader;
mod model;
mod optimizer;
mod resume;
mod run;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use clap::Args;
use revsnn_reference::Precision;
use serde::{Deserialize, Serialize};

pub use augment::AugmentSettings;
pub use loader::LoaderSettings;
pub use model::{ModelSource, RunModel, default_spec};
pub use optimizer::{OptimizerSettings, ScheduleSettings, paper_optimizer};
pub use resume::{CHANGEABLE_ON_RESUME, changed_on_resume};
pub use run::RunSettings;

use super::recipe::RecipeKind;
use crate::device::DeviceChoice;
use crate::error::{Error, Result};

/// Every knob of a training run, as a TOML file or the command line gives it; unset knobs take
/// the recipe's value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Args)]
#[serde(deny_unknown_fields)]
pub struct GivenSettings {
    /// The recipe for every knob left open: `quick` (default; the paper's recipe for the model's
    /// family scaled to a short run: 8 epochs at batch 16, 5000/1000 samples) or `paper` (the
    /// full recipe of docs/recipes.md §5 for the dataset and model: epochs, batch, seed, optimizer,
    /// schedule, augmentation, the whole dataset; for presets the official head and T).
    #[arg(long, value_enum)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<RecipeKind>,
    /// A preset (see `revsnn summary --help`); without model or spec, a small RevSResNet
    /// (layers `[1,1,1,1]`, planes `[8,16,16,32]`, T = 2, 32x32, 10 classes).
    #[arg(long, conflicts_with = "spec")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A JSON model spec file.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PathBuf>,
    /// The number of classes of the model's head (default: the model's own).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// The time steps T (default: the model's own).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_steps: Option<usize>,
    /// Start from the weights of this checkpoint instead of the seed's, BatchNorm statistics
    /// included (timm's --initial-checkpoint): a state_dict under the official keys, in F32,
    /// F64, F16 or BF16, in safetensors (a run's last.safetensors, PyTorch's
    /// `save_file(model.state_dict())`) or a PyTorch file of torch.save (the official code's
    /// and timm's checkpoints; docs/pytorch-files.md). Every key must fit the model. The
    /// optimizer and the schedule start afresh. The run records the path and the file's SHA-256
    /// (initial_checkpoint_sha256). A resumed run continues from its own checkpoint.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_checkpoint: Option<PathBuf>,
    /// The SHA-256 of --initial-checkpoint's file, 64 lowercase hex digits as `sha256sum` prints
    /// them: a file with another is refused. A new run reads the file when it starts (so does
    /// --print-config) and records its digest in config.toml, so that the config runs again from
    /// the same weights or stops (docs/recipes.md §5.4).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_checkpoint_sha256: Option<String>,
    /// synthetic, synthetic-cifar, synthetic-events, cifar10, cifar100, dvs128-gesture or
    /// cifar10-dvs (default: synthetic, or synthetic-events for DVS models).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Where the real datasets live.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Training samples: the synthetic datasets' size, a cap for the real ones (default: quick
    /// 5000, paper the whole split).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_samples: Option<usize>,
    /// Test samples (default: quick 1000, paper the whole split).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_samples: Option<usize>,
    /// Total epochs (default: quick 8; paper 200 CIFAR ResNets, 310 CIFAR transformers, 106
    /// CIFAR10-DVS, 202 DVS128 Gesture). With --resume: extend or shorten the run (not below
    /// the epochs done), which rescales what the recipe scaled to it.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Batch size (default: quick 16; paper 32 CIFAR ResNets, 64 CIFAR transformers, 16 events).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// The seed of the weights, the shuffles and the augmentation (default: quick 0; paper the
    /// official scripts': 2020, 2023, 42, 2021).
    #[arg(long, value_parser = clap::value_parser!(u64).range(..=i64::MAX as u64))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Where to compute: auto (the default: CUDA when a usable GPU is found, else the CPU; one
    /// line on stderr says which and why), cpu or cuda.
    #[arg(long, value_enum)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceChoice>,
    /// The precision of the GEMM operands: f32 (default), tf32, bf16 or fp16, accumulating in
    /// f32 (docs/precision.md); fp16 scales the loss. The CPU emulates every one; CUDA runs every
    /// one (bf16 from compute capability 8.0). A resumed run keeps its own.
    #[arg(long)]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "file::precision_key"
    )]
    pub precision: Option<Precision>,
    /// The run folder (default: `runs/<model>-<dataset>-seed<S>`).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    /// Data-parallel ranks: N replicas of the model, each training on its contiguous share of
    /// every batch (--batch is the global batch and must divide by N) with gradients averaged
    /// before each step (default 1; docs/distributed.md). On the CPU they are threads of this
    /// process; on GPUs, processes with one GPU each (train --gpus N sets it).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<usize>,
    /// With --ranks: BatchNorm statistics over the whole global batch (PyTorch's SyncBatchNorm),
    /// true or false (default: true for the paper recipe's CIFAR transformers, as the official
    /// configs; else false, each rank normalising with its own share's statistics).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_bn: Option<bool>,
    /// The optimizer (`[optimizer]` in a config file).
    #[command(flatten)]
    #[serde(default, skip_serializing_if = "OptimizerSettings::is_empty")]
    pub optimizer: OptimizerSettings,
    /// The learning-rate schedule (`[schedule]`).
    #[command(flatten)]
    #[serde(default, skip_serializing_if = "ScheduleSettings::is_empty")]
    pub schedule: ScheduleSettings,
    /// The training augmentation (`[augment]`).
    #[command(flatten)]
    #[serde(default, skip_serializing_if = "AugmentSettings::is_empty")]
    pub augment: AugmentSettings,
    /// The input pipeline (`[loader]`).
    #[command(flatten)]
    #[serde(default, skip_serializing_if = "LoaderSettings::is_empty")]
    pub loader: LoaderSettings,
}

impl GivenSettings {
    /// These settings laid over `lower` (flags over a file): each knob set here wins. A model
    /// named here (`model` or `spec`) replaces both of `lower`'s; an initial checkpoint named
    /// here drops `lower`'s digest, which pins `lower`'s file.
    pub fn over(self, lower: GivenSettings) -> GivenSettings {
        let names_model = self.model.is_some() || self.spec.is_some();
        let names_checkpoint = self.initial_checkpoint.is_some();
        GivenSettings {
            recipe: self.recipe.or(lower.recipe),
            model: if names_model { self.model } else { lower.model },
            spec: if names_model { self.spec } else { lower.spec },
            num_classes: self.num_classes.or(lower.num_classes),
            time_steps: self.time_steps.or(lower.time_steps),
            initial_checkpoint: self.initial_checkpoint.or(lower.initial_checkpoint),
            initial_checkpoint_sha256: match names_checkpoint {
                true => self.initial_checkpoint_sha256,
                false => self
                    .initial_checkpoint_sha256
                    .or(lower.initial_checkpoint_sha256),
            },
            dataset: self.dataset.or(lower.dataset),
            data_dir: self.data_dir.or(lower.data_dir),
            train_samples: self.train_samples.or(lower.train_samples),
            test_samples: self.test_samples.or(lower.test_samples),
            epochs: self.epochs.or(lower.epochs),
            batch: self.batch.or(lower.batch),
            seed: self.seed.or(lower.seed),
            device: self.device.or(lower.device),
            precision: self.precision.or(lower.precision),
            out: self.out.or(lower.out),
            ranks: self.ranks.or(lower.ranks),
            sync_bn: self.sync_bn.or(lower.sync_bn),
            optimizer: self.optimizer.over(lower.optimizer),
            schedule: self.schedule.over(lower.schedule),
            augment: self.augment.over(lower.augment),
            loader: self.loader.over(lower.loader),
        }
    }

    /// The same settings with the paths of what is trained on (spec, initial checkpoint,
    /// data_dir) made absolute against the current folder, so that a run's settings mean the
    /// same from anywhere.
    pub fn with_absolute_paths(mut self) -> Result<GivenSettings> {
        let paths = [
            &mut self.spec,
            &mut self.initial_checkpoint,
            &mut self.data_dir,
        ];
        for path in paths.into_iter().flatten() {
            *path = std::path::absolute(&*path).map_err(|e| Error::File {
                path: path.display().to_string(),
                detail: format!("cannot make the path absolute: {e}"),
            })?;
        }
        Ok(self)
    }

    /// Every knob decided and checked: the recipe's values for those left open.
    pub fn resolve(&self) -> Result<RunSettings> {
        RunSettings::resolve(self, self.resolve_model()?)
    }
}
