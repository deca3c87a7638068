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

use std::fmt::Display;
use std::path::{Path, PathBuf};

use clap::Args;
use revsnn_reference::{AdamWParams, Precision, SgdParams};
use serde::{Deserialize, Serialize};

use super::recipe::{DatasetKind, OptimizerName, RecipeInput, RecipeKind, Schedule, ScheduleName};
use crate::data::augment::{Augmentation, Mixup, RandAugment};
use crate::device::DeviceChoice;
use crate::error::{Error, Result};
use crate::optim::OptimizerKind;
use crate::spec::{Arch, ModelSpec};

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
        with = "precision_key"
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

/// The optimizer's knobs (`[optimizer]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Args)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Optimizer ([optimizer] in a config file)")]
pub struct OptimizerSettings {
    /// sgd or adamw (default: sgd for ResNets, adamw for transformers and the paper's event
    /// ResNets).
    #[arg(id = "optimizer", long = "optimizer", value_enum)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<OptimizerName>,
    /// Base learning rate (default: SGD 0.1, quick: 0.1 x batch / 32; AdamW 5e-4, paper on
    /// events 1e-3).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// SGD momentum (default 0.9).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// Weight decay (default: SGD 1e-4 on every parameter; AdamW 0.06, none on biases and 1-D
    /// parameters; paper event ResNets 0).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// AdamW's betas, two numbers (default 0.9,0.999).
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub betas: Option<Vec<f64>>,
    /// AdamW's eps (default 1e-8).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
}

/// The schedule's knobs (`[schedule]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Args)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Schedule ([schedule] in a config file)")]
pub struct ScheduleSettings {
    /// multistep or cosine, stepped per epoch (default: multistep with SGD, cosine with AdamW).
    #[arg(id = "schedule", long = "schedule", value_enum)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<ScheduleName>,
    /// Multistep: the epochs after which the learning rate is multiplied by gamma, comma-separated
    /// (default: paper CIFAR-10 100,150, CIFAR-100 60,120,160; else 50% and 75% of the epochs).
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milestones: Option<Vec<usize>>,
    /// Multistep: the factor at each milestone (default 0.1).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
    /// Cosine: epochs of linear warmup from min_lr (default: paper 20 CIFAR, 10 events; quick 20
    /// of 310 scaled).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_epochs: Option<usize>,
    /// Cosine: the last epochs, at min_lr (default: paper 10; quick 10 of 310 scaled).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_epochs: Option<usize>,
    /// Cosine: the floor of the learning rate (default 1e-5, or the base lr if lower).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lr: Option<f64>,
}

/// The augmentation's knobs (`[augment]`); the defaults depend on the dataset and the family.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Args)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Augmentation ([augment] in a config file)")]
pub struct AugmentSettings {
    /// Random crop from the sample zero-padded by this many pixels; 0: none (default: 4 for
    /// CIFAR ResNets, else 0).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop_padding: Option<usize>,
    /// Horizontal flip with probability 0.5: true or false (default: true on CIFAR and the event
    /// datasets).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flip: Option<bool>,
    /// RandAugment operations per image (n), CIFAR only; 0: off (default: 1 for CIFAR
    /// transformers, else 0).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rand_augment_n: Option<usize>,
    /// RandAugment magnitude m, of 10 (default 9).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rand_augment_m: Option<f64>,
    /// RandAugment: the standard deviation of the noise on m (default 0.4).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rand_augment_mstd: Option<f64>,
    /// SNNAugmentWide, on float samples (not CIFAR): true or false (default: true on the event
    /// datasets).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snn_augment_wide: Option<bool>,
    /// Random-erasing probability per sample (default: 0.25 for CIFAR transformers, else 0).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_erasing: Option<f64>,
    /// Mixup's Beta(alpha, alpha); 0: off (default: 0.5 for CIFAR transformers and the event
    /// datasets, else 0). Needs an even batch.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixup_alpha: Option<f64>,
    /// The probability that a batch is mixed (default: 1 CIFAR, 0.5 events).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixup_prob: Option<f64>,
    /// The first epoch (from 0) without mixup (default: paper 200 CIFAR, 75 events; quick
    /// scaled to the epochs).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixup_off_epoch: Option<usize>,
    /// Label smoothing of the soft targets (default: 0.1 for CIFAR transformers and the event
    /// datasets, else 0: hard labels).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_smoothing: Option<f64>,
}

/// The input pipeline's knobs (`[loader]`); they change the speed and the memory, never the
/// training batches, and the evaluation's scores only by rounding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Args)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Input pipeline ([loader] in a config file)")]
pub struct LoaderSettings {
    /// Threads that assemble and augment training batches (default 1).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Batches each worker keeps ready ahead (default 4).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<usize>,
    /// Samples per batch of the evaluation after each epoch, all ranks together (default:
    /// --batch, at least 32). The scores change with it only by rounding; lower it when the
    /// evaluation runs out of device memory.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_batch: Option<usize>,
}

impl OptimizerSettings {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn over(self, lower: Self) -> Self {
        OptimizerSettings {
            name: self.name.or(lower.name),
            lr: self.lr.or(lower.lr),
            momentum: self.momentum.or(lower.momentum),
            weight_decay: self.weight_decay.or(lower.weight_decay),
            betas: self.betas.or(lower.betas),
            eps: self.eps.or(lower.eps),
        }
    }
}

impl ScheduleSettings {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn over(self, lower: Self) -> Self {
        ScheduleSettings {
            name: self.name.or(lower.name),
            milestones: self.milestones.or(lower.milestones),
            gamma: self.gamma.or(lower.gamma),
            warmup_epochs: self.warmup_epochs.or(lower.warmup_epochs),
            cooldown_epochs: self.cooldown_epochs.or(lower.cooldown_epochs),
            min_lr: self.min_lr.or(lower.min_lr),
        }
    }
}

impl AugmentSettings {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn over(self, lower: Self) -> Self {
        AugmentSettings {
            crop_padding: self.crop_padding.or(lower.crop_padding),
            flip: self.flip.or(lower.flip),
            rand_augment_n: self.rand_augment_n.or(lower.rand_augment_n),
            rand_augment_m: self.rand_augment_m.or(lower.rand_augment_m),
            rand_augment_mstd: self.rand_augment_mstd.or(lower.rand_augment_mstd),
            snn_augment_wide: self.snn_augment_wide.or(lower.snn_augment_wide),
            random_erasing: self.random_erasing.or(lower.random_erasing),
            mixup_alpha: self.mixup_alpha.or(lower.mixup_alpha),
            mixup_prob: self.mixup_prob.or(lower.mixup_prob),
            mixup_off_epoch: self.mixup_off_epoch.or(lower.mixup_off_epoch),
            label_smoothing: self.label_smoothing.or(lower.label_smoothing),
        }
    }
}

impl LoaderSettings {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn over(self, lower: Self) -> Self {
        LoaderSettings {
            workers: self.workers.or(lower.workers),
            prefetch: self.prefetch.or(lower.prefetch),
            eval_batch: self.eval_batch.or(lower.eval_batch),
        }
    }
}

/// The flag of config key `key`: `--` and the last part with `-` for `_` (`[optimizer] name` is
/// `--optimizer`, `[schedule] name` is `--schedule`).
fn flag_of(key: &str) -> String {
    match key {
        "optimizer.name" => "--optimizer".into(),
        "schedule.name" => "--schedule".into(),
        _ => format!(
            "--{}",
            key.rsplit('.').next().unwrap_or(key).replace('_', "-")
        ),
    }
}

/// The error of knob `key` holding `value` where it takes `expected`.
fn bad_setting(key: &str, value: impl Display, expected: &str) -> Error {
    Error::Setting {
        key: key.into(),
        flag: flag_of(key),
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// `Ok` if `ok`, else [`bad_setting`].
fn require(ok: bool, key: &str, value: impl Display, expected: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(bad_setting(key, value, expected))
    }
}

/// `value` if it is a number in `[low, high]`.
fn number_in(key: &str, value: f64, low: f64, high: f64) -> Result<f64> {
    let expected = format!("a number in [{low}, {high}]");
    require((low..=high).contains(&value), key, value, &expected).map(|()| value)
}

/// `value` if it is a number in `[0, 1)`.
fn below_one(key: &str, value: f64) -> Result<f64> {
    require(
        (0.0..1.0).contains(&value),
        key,
        value,
        "a number in [0, 1)",
    )
    .map(|()| value)
}

/// `value` if it is a finite number >= 0.
fn non_negative(key: &str, value: f64) -> Result<f64> {
    require(
        value.is_finite() && value >= 0.0,
        key,
        value,
        "a finite number >= 0",
    )
    .map(|()| value)
}

/// `value` if it is a positive, finite number.
fn positive_number(key: &str, value: f64) -> Result<f64> {
    require(
        value.is_finite() && value > 0.0,
        key,
        value,
        "a positive, finite number",
    )
    .map(|()| value)
}

/// `value` if it is at least 1.
fn at_least_one(key: &str, value: usize) -> Result<usize> {
    require(value >= 1, key, value, "an integer >= 1").map(|()| value)
}

/// The most loader threads a run may ask for: far above the cores of any machine it runs on,
/// far below what the OS refuses to spawn.
const MAX_WORKERS: usize = 256;
/// The most batches a loader worker may keep ready ahead.
const MAX_PREFETCH: usize = 64;
/// The most data-parallel ranks: each holds a replica of the model (a thread, or a process with
/// a GPU).
const MAX_RANKS: usize = 256;

/// `ranks` share every batch of `batch` samples equally: the batch must divide by them.
fn check_ranks(ranks: usize, batch: usize) -> Result<()> {
    if !batch.is_multiple_of(ranks) {
        return Err(bad_setting(
            "batch",
            batch,
            &format!(
                "a multiple of --ranks {ranks}: --batch is the global batch, which the {ranks} \
                 ranks share equally ({batch} samples do not divide by {ranks})"
            ),
        ));
    }
    Ok(())
}

/// `value` of knob `key`, unless it is outside `1..=max`.
fn between(key: &str, value: usize, max: usize) -> Result<usize> {
    let expected = format!("an integer from 1 to {max}");
    require((1..=max).contains(&value), key, value, &expected).map(|()| value)
}

/// An error if knob `key` is set though what it tunes is not used (`why`).
fn unused(key: &str, is_set: bool, why: &str) -> Result<()> {
    if is_set {
        Err(Error::Usage(format!(
            "{key} ({}) is set but {why}; remove it",
            flag_of(key)
        )))
    } else {
        Ok(())
    }
}

/// The digest pinning the initial checkpoint's file (`initial_checkpoint_sha256`): 64 lowercase
/// hex digits, as `sha256sum` and the run write it (one spelling, so that settings compared as
/// text agree), and only beside the file it pins.
fn check_sha256_pin(settings: &GivenSettings) -> Result<Option<String>> {
    const KEY: &str = "initial_checkpoint_sha256";
    let Some(digest) = &settings.initial_checkpoint_sha256 else {
        return Ok(None);
    };
    if settings.initial_checkpoint.is_none() {
        let why = "there is no initial_checkpoint (--initial-checkpoint) for it to pin";
        return unused(KEY, true, why).map(|()| None);
    }
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    let valid = digest.len() == 64 && digest.bytes().all(lower_hex);
    let expected = "a SHA-256 as `sha256sum` prints it: the first field of its line, 64 \
                    lowercase hex digits";
    require(valid, KEY, digest, expected)?;
    Ok(Some(digest.clone()))
}

/// The section of the settings (`optimizer`, `schedule`, `augment`, `loader`) that has the last
/// part of the dotted `key`, where `key` puts it elsewhere (`lr` at the top, `optimizer.gamma`);
/// read from the default run's resolved settings, where every key is present.
fn misplaced_in(key: &str) -> Option<String> {
    let (written_in, name) = key.rsplit_once('.').unwrap_or(("", key));
    let table = GivenSettings::default()
        .resolve()
        .ok()?
        .to_given()
        .to_table()
        .ok()?;
    let section = table
        .into_iter()
        .find_map(|(section, value)| value.as_table()?.contains_key(name).then_some(section))?;
    (section != written_in).then_some(section)
}

/// The key, with its table (`optimizer.lr`), of the `key = value` line of `text` that holds byte
/// `offset`; `None` on a line without one.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_string(),
    })
}

/// Why settings cannot be TOML: only a seed >= 2^63 (TOML integers are signed 64-bit).
fn toml_error(error: toml::ser::Error) -> Error {
    Error::Usage(format!(
        "the settings cannot be written as TOML ({error}); a seed must be below 2^63"
    ))
}

/// The model `revsnn train` trains when given none: a small RevSResNet for 32x32 RGB, 10 classes.
pub fn default_spec() -> ModelSpec {
    ModelSpec {
        arch: Arch::Revsresnet,
        num_classes: 10,
        time_steps: 2,
        in_channels: 3,
        img_size: 32,
        layers: Some(vec![1, 1, 1, 1]),
        planes: Some(vec![8, 16, 16, 32]),
        depth: None,
        dim: None,
        heads: None,
        mlp_ratio: None,
        patch_size: None,
    }
}

/// Where a run's model comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    /// No model named: [`default_spec`].
    Default,
    /// A preset.
    Preset(String),
    /// A JSON spec file.
    File(PathBuf),
}

/// A run's model: where it comes from, its display name and its spec.
#[derive(Clone, Debug, PartialEq)]
pub struct RunModel {
    /// Where the model comes from.
    pub source: ModelSource,
    /// The preset, the spec file's path, or `revsresnet-small`.
    pub name: String,
    /// The spec as built: the recipe's head and time steps and the overrides applied.
    pub spec: ModelSpec,
}

impl RunModel {
    /// The model of a run whose resolved settings are `settings` and spec `spec`.
    pub fn of_run(settings: &GivenSettings, name: String, spec: ModelSpec) -> RunModel {
        let source = match (&settings.model, &settings.spec) {
            (Some(preset), _) => ModelSource::Preset(preset.clone()),
            (None, Some(path)) => ModelSource::File(path.clone()),
            (None, None) => ModelSource::Default,
        };
        RunModel { source, name, spec }
    }
}

impl GivenSettings {
    /// Sets the keys a run state written before they existed lacks to the one value such a run
    /// had: precision f32, one rank, no synchronised BatchNorm. `--resume` then accepts them
    /// given explicitly with those values.
    pub fn fill_keys_added_later(&mut self) {
        self.precision.get_or_insert(Precision::F32);
        self.ranks.get_or_insert(1);
        self.sync_bn.get_or_insert(false);
    }

    /// Parses a config file's text; `path` names it in errors and anchors its relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<GivenSettings> {
        let mut settings: GivenSettings = toml::from_str(text).map_err(|e| {
            let key = e.span().and_then(|span| key_at(text, span.start));
            let named = key
                .as_ref()
                .map_or(String::new(), |key| format!(" (key `{key}`)"));
            let section = key
                .as_deref()
                .and_then(misplaced_in)
                .map_or(String::new(), |section| {
                    format!("; that key belongs in the [{section}] section")
                });
            Error::File {
                path: path.display().to_string(),
                detail: format!(
                    "not a revsnn train config{named}; `revsnn train --help` lists the keys \
                     (flags with `_` for `-`): {}{section}",
                    e.to_string().trim_end()
                ),
            }
        })?;
        let folder = path.parent().unwrap_or(Path::new(""));
        for relative in [
            &mut settings.spec,
            &mut settings.initial_checkpoint,
            &mut settings.data_dir,
            &mut settings.out,
        ]
        .into_iter()
        .flatten()
        {
            if relative.is_relative() {
                *relative = folder.join(&*relative);
            }
        }
        Ok(settings)
    }

    /// Reads a config file.
    pub fn read(path: &Path) -> Result<GivenSettings> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::File {
            path: path.display().to_string(),
            detail: format!("cannot read the config file: {e}"),
        })?;
        GivenSettings::from_toml(&text, path)
    }

    /// The settings as a config file.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(toml_error)
    }

    /// The settings as a TOML table.
    fn to_table(&self) -> Result<toml::Table> {
        toml::Table::try_from(self).map_err(toml_error)
    }

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

    /// The dataset, by default `synthetic` (or `synthetic-events` for DVS models).
    fn dataset_kind(&self, spec: &ModelSpec) -> Result<DatasetKind> {
        match &self.dataset {
            Some(name) => DatasetKind::from_name(name),
            None if spec.arch.is_dvs() => Ok(DatasetKind::SyntheticEvents),
            None => Ok(DatasetKind::Synthetic),
        }
    }

    /// The model these settings name, with the recipe's head and time steps for a preset
    /// (`paper`, see [`RecipeInput::preset_for_dataset`]) and `num_classes` and `time_steps` over
    /// them.
    pub fn resolve_model(&self) -> Result<RunModel> {
        let (source, name, mut spec) = match (&self.model, &self.spec) {
            (Some(_), Some(_)) => {
                return Err(Error::Usage(
                    "model and spec both name the model: keep one (in the config file, or give \
                     --model or --spec, which replaces the file's)"
                        .into(),
                ));
            }
            (Some(preset), None) => (
                ModelSource::Preset(preset.clone()),
                preset.clone(),
                ModelSpec::preset(preset)?,
            ),
            (None, Some(path)) => (
                ModelSource::File(path.clone()),
                path.display().to_string(),
                ModelSpec::read(path)?,
            ),
            (None, None) => (
                ModelSource::Default,
                "revsresnet-small".to_string(),
                default_spec(),
            ),
        };
        if matches!(source, ModelSource::Preset(_)) {
            RecipeInput {
                recipe: self.recipe.unwrap_or_default(),
                arch: spec.arch,
                dataset: self.dataset_kind(&spec)?,
            }
            .preset_for_dataset(&mut spec);
        }
        if let Some(classes) = self.num_classes {
            spec.num_classes = classes;
        }
        if let Some(steps) = self.time_steps {
            spec.time_steps = steps;
        }
        spec.validate()?;
        Ok(RunModel { source, name, spec })
    }
}

/// The settings of a run with every knob decided and checked, in typed values: what the
/// training loop runs.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSettings {
    /// The recipe the open knobs came from.
    pub recipe: RecipeKind,
    /// The model, as built.
    pub model: RunModel,
    /// The checkpoint whose weights a new run starts from, in place of the seed's.
    pub initial_checkpoint: Option<PathBuf>,
    /// The SHA-256 of the initial checkpoint's file in lowercase hex: as given, until
    /// [`Run::start`](super::Run::start) reads the file and records its own; a resumed run
    /// keeps the one recorded when it started.
    pub initial_checkpoint_sha256: Option<String>,
    /// The dataset.
    pub dataset: DatasetKind,
    /// Where the real dataset is read from.
    pub data_dir: Option<PathBuf>,
    /// Training samples (the synthetic datasets' size, a cap for the real ones).
    pub train_samples: usize,
    /// Test samples (the same).
    pub test_samples: usize,
    /// Total epochs.
    pub epochs: usize,
    /// Training batch size.
    pub batch: usize,
    /// The seed of the weights, the shuffles and the augmentation.
    pub seed: u64,
    /// Where to compute.
    pub device: DeviceChoice,
    /// The precision of the GEMM operands.
    pub precision: Precision,
    /// The run folder.
    pub out: PathBuf,
    /// Data-parallel ranks (threads), each training on `batch / ranks` samples of every batch.
    pub ranks: usize,
    /// Whether BatchNorm statistics are reduced over the ranks (SyncBatchNorm).
    pub sync_bn: bool,
    /// The optimizer with its base learning rate.
    pub optimizer: OptimizerKind,
    /// The learning-rate schedule over the epochs.
    pub schedule: Schedule,
    /// The training augmentation (mixup until `mixup_off_epoch`).
    pub augmentation: Augmentation,
    /// The first epoch without mixup.
    pub mixup_off_epoch: usize,
    /// Threads assembling training batches.
    pub workers: usize,
    /// Batches each worker keeps ready ahead.
    pub prefetch: usize,
    /// Samples per batch of the evaluation after each epoch, all ranks together.
    pub eval_batch: usize,
}

impl RunSettings {
    /// The settings of a run of `model`: `given` (the flags over the config file) laid over the
    /// recipe's defaults ([`RecipeInput::defaults`]), then every knob checked.
    pub fn resolve(given: &GivenSettings, model: RunModel) -> Result<RunSettings> {
        let input = RecipeInput {
            recipe: given.recipe.unwrap_or_default(),
            arch: model.spec.arch,
            dataset: given.dataset_kind(&model.spec)?,
        };
        input.check()?;
        let settings = given.clone().over(input.defaults(given));
        RunSettings::check(&settings, input.dataset, model)
    }

    /// `settings` (every knob the recipe fills set) checked and turned into typed values.
    fn check(settings: &GivenSettings, dataset: DatasetKind, model: RunModel) -> Result<Self> {
        let epochs = at_least_one("epochs", set(&settings.epochs))?;
        let batch = at_least_one("batch", set(&settings.batch))?;
        let seed = set(&settings.seed);
        // TOML integers are signed 64-bit: the seed must fit to be written to config.toml
        require(
            i64::try_from(seed).is_ok(),
            "seed",
            seed,
            "an integer in [0, 2^63)",
        )?;
        let train_samples = at_least_one("train_samples", set(&settings.train_samples))?;
        let test_samples = at_least_one("test_samples", set(&settings.test_samples))?;
        let out = settings
            .out
            .clone()
            .unwrap_or_else(|| default_out(&model.name, dataset, seed));
        let optimizer = check_optimizer(&settings.optimizer)?;
        let schedule = check_schedule(&settings.schedule)?;
        let (augmentation, mixup_off_epoch) = check_augment(&settings.augment, dataset)?;
        if augmentation.mixup.is_some() && batch % 2 != 0 {
            return Err(bad_setting(
                "batch",
                batch,
                "an even batch size: mixup (augment.mixup_alpha) mixes pairs of samples; or \
                 turn mixup off with --mixup-alpha 0",
            ));
        }
        let ranks = between("ranks", set(&settings.ranks), MAX_RANKS)?;
        check_ranks(ranks, batch)?;
        let workers = between("loader.workers", set(&settings.loader.workers), MAX_WORKERS)?;
        let prefetch = between(
            "loader.prefetch",
            set(&settings.loader.prefetch),
            MAX_PREFETCH,
        )?;
        let eval_batch = at_least_one("loader.eval_batch", set(&settings.loader.eval_batch))?;
        Ok(RunSettings {
            recipe: set(&settings.recipe),
            model,
            initial_checkpoint: settings.initial_checkpoint.clone(),
            initial_checkpoint_sha256: check_sha256_pin(settings)?,
            dataset,
            data_dir: settings.data_dir.clone(),
            train_samples,
            test_samples,
            epochs,
            batch,
            seed,
            device: set(&settings.device),
            precision: set(&settings.precision),
            out,
            ranks,
            sync_bn: set(&settings.sync_bn),
            optimizer,
            schedule,
            augmentation,
            mixup_off_epoch,
            workers,
            prefetch,
            eval_batch,
        })
    }

    /// The learning rate of epoch `epoch` (from 0).
    pub fn lr(&self, epoch: usize) -> f64 {
        self.schedule.lr(self.optimizer.lr(), epoch, self.epochs)
    }

    /// Every knob of the run as given settings, each set: `config.toml` of the run folder.
    /// Resolving them again gives this run (the run folder, `out`, is left out: a copy reproduces the run elsewhere).
    pub fn to_given(&self) -> GivenSettings {
        let (model, spec) = match &self.model.source {
            ModelSource::Default => (None, None),
            ModelSource::Preset(preset) => (Some(preset.clone()), None),
            ModelSource::File(path) => (None, Some(path.clone())),
        };
        GivenSettings {
            recipe: Some(self.recipe),
            model,
            spec,
            num_classes: Some(self.model.spec.num_classes),
            time_steps: Some(self.model.spec.time_steps),
            initial_checkpoint: self.initial_checkpoint.clone(),
            initial_checkpoint_sha256: self.initial_checkpoint_sha256.clone(),
            dataset: Some(self.dataset.name().into()),
            data_dir: self.data_dir.clone(),
            train_samples: Some(self.train_samples),
            test_samples: Some(self.test_samples),
            epochs: Some(self.epochs),
            batch: Some(self.batch),
            seed: Some(self.seed),
            device: Some(self.device),
            precision: Some(self.precision),
            out: None,
            ranks: Some(self.ranks),
            sync_bn: Some(self.sync_bn),
            optimizer: OptimizerSettings::of(&self.optimizer),
            schedule: ScheduleSettings::of(&self.schedule),
            augment: AugmentSettings::of(&self.augmentation, self.mixup_off_epoch),
            loader: LoaderSettings {
                workers: Some(self.workers),
                prefetch: Some(self.prefetch),
                eval_batch: Some(self.eval_batch),
            },
        }
    }
}

impl OptimizerSettings {
    /// `optimizer` as settings, every knob of its kind set.
    pub fn of(optimizer: &OptimizerKind) -> OptimizerSettings {
        match optimizer {
            OptimizerKind::Sgd(hp) => OptimizerSettings {
                name: Some(OptimizerName::Sgd),
                lr: Some(hp.lr),
                momentum: Some(hp.momentum),
                weight_decay: Some(hp.weight_decay),
                betas: None,
                eps: None,
            },
            OptimizerKind::AdamW(hp) => OptimizerSettings {
                name: Some(OptimizerName::Adamw),
                lr: Some(hp.lr),
                momentum: None,
                weight_decay: Some(hp.weight_decay),
                betas: Some(vec![hp.beta1, hp.beta2]),
                eps: Some(hp.eps),
            },
        }
    }
}

impl ScheduleSettings {
    /// `schedule` as settings, every knob of its kind set.
    pub fn of(schedule: &Schedule) -> ScheduleSettings {
        match schedule {
            Schedule::MultiStep { milestones, gamma } => ScheduleSettings {
                name: Some(ScheduleName::Multistep),
                milestones: Some(milestones.clone()),
                gamma: Some(*gamma),
                ..ScheduleSettings::default()
            },
            Schedule::Cosine {
                warmup_epochs,
                cooldown_epochs,
                min_lr,
            } => ScheduleSettings {
                name: Some(ScheduleName::Cosine),
                warmup_epochs: Some(*warmup_epochs),
                cooldown_epochs: Some(*cooldown_epochs),
                min_lr: Some(*min_lr),
                ..ScheduleSettings::default()
            },
        }
    }
}

impl AugmentSettings {
    /// `aug` as settings, with mixup off from epoch `mixup_off_epoch`: every knob set but the
    /// parameters of RandAugment and mixup when they are off.
    pub fn of(aug: &Augmentation, mixup_off_epoch: usize) -> AugmentSettings {
        let rand_augment = aug.rand_augment.as_ref();
        let mixup = aug.mixup.as_ref();
        AugmentSettings {
            crop_padding: Some(aug.crop_padding),
            flip: Some(aug.flip),
            rand_augment_n: Some(rand_augment.map_or(0, |r| r.num_ops)),
            rand_augment_m: rand_augment.map(|r| r.magnitude),
            rand_augment_mstd: rand_augment.map(|r| r.magnitude_std),
            snn_augment_wide: Some(aug.snn_augment_wide),
            random_erasing: Some(aug.random_erasing),
            mixup_alpha: Some(mixup.map_or(0.0, |m| m.alpha)),
            mixup_prob: mixup.map(|m| m.prob),
            mixup_off_epoch: mixup.map(|_| mixup_off_epoch),
            label_smoothing: Some(aug.label_smoothing),
        }
    }
}

/// The value of a knob that the recipe's layer sets ([`RecipeInput::defaults`]).
fn set<T: Clone>(knob: &Option<T>) -> T {
    knob.clone()
        .expect("the recipe's layer sets every knob of a step that is on")
}

/// The default run folder: `runs/<model>-<dataset>-seed<seed>`, the model by its file stem.
fn default_out(model: &str, dataset: DatasetKind, seed: u64) -> PathBuf {
    let short_name = Path::new(model)
        .file_stem()
        .map_or_else(|| model.to_string(), |s| s.to_string_lossy().into_owned());
    PathBuf::from("runs").join(format!("{short_name}-{}-seed{seed}", dataset.name()))
}

fn check_optimizer(settings: &OptimizerSettings) -> Result<OptimizerKind> {
    let lr = positive_number("optimizer.lr", set(&settings.lr))?;
    let weight_decay = non_negative("optimizer.weight_decay", set(&settings.weight_decay))?;
    Ok(match set(&settings.name) {
        OptimizerName::Sgd => {
            unused(
                "optimizer.betas",
                settings.betas.is_some(),
                "the optimizer is SGD (betas are AdamW's: --optimizer adamw)",
            )?;
            unused(
                "optimizer.eps",
                settings.eps.is_some(),
                "the optimizer is SGD (eps is AdamW's: --optimizer adamw)",
            )?;
            OptimizerKind::Sgd(SgdParams {
                lr,
                momentum: below_one("optimizer.momentum", set(&settings.momentum))?,
                weight_decay,
            })
        }
        OptimizerName::Adamw => {
            unused(
                "optimizer.momentum",
                settings.momentum.is_some(),
                "the optimizer is AdamW (momentum is SGD's: --optimizer sgd)",
            )?;
            let betas = set(&settings.betas);
            let [beta1, beta2] = betas[..] else {
                return Err(bad_setting(
                    "optimizer.betas",
                    format!("{betas:?}"),
                    "two numbers [beta1, beta2], as --betas 0.9,0.999",
                ));
            };
            for beta in [beta1, beta2] {
                below_one("optimizer.betas", beta)?;
            }
            let eps = positive_number("optimizer.eps", set(&settings.eps))?;
            OptimizerKind::AdamW(AdamWParams {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            })
        }
    })
}

/// The optimizer of the paper's CIFAR recipe for `arch`'s family (docs/recipes.md §5), at its
/// own learning rate: SGD for ResNets, AdamW for transformers. `memory` and `bench` step with it.
pub fn paper_optimizer(arch: Arch) -> Result<OptimizerKind> {
    let input = RecipeInput {
        recipe: RecipeKind::Paper,
        arch,
        dataset: DatasetKind::Cifar10,
    };
    check_optimizer(&input.defaults(&GivenSettings::default()).optimizer)
}

fn check_schedule(settings: &ScheduleSettings) -> Result<Schedule> {
    Ok(match set(&settings.name) {
        ScheduleName::Multistep => {
            for (key, is_set) in [
                ("schedule.warmup_epochs", settings.warmup_epochs.is_some()),
                (
                    "schedule.cooldown_epochs",
                    settings.cooldown_epochs.is_some(),
                ),
                ("schedule.min_lr", settings.min_lr.is_some()),
            ] {
                unused(
                    key,
                    is_set,
                    "the schedule is multistep (this is a cosine knob: --schedule cosine)",
                )?;
            }
            Schedule::MultiStep {
                gamma: positive_number("schedule.gamma", set(&settings.gamma))?,
                milestones: set(&settings.milestones),
            }
        }
        ScheduleName::Cosine => {
            for (key, is_set) in [
                ("schedule.milestones", settings.milestones.is_some()),
                ("schedule.gamma", settings.gamma.is_some()),
            ] {
                unused(
                    key,
                    is_set,
                    "the schedule is cosine (this is a multistep knob: --schedule multistep)",
                )?;
            }
            Schedule::Cosine {
                min_lr: non_negative("schedule.min_lr", set(&settings.min_lr))?,
                warmup_epochs: set(&settings.warmup_epochs),
                cooldown_epochs: set(&settings.cooldown_epochs),
            }
        }
    })
}

/// The augmentation on `dataset`, and the first epoch without mixup (0 without mixup).
fn check_augment(
    settings: &AugmentSettings,
    dataset: DatasetKind,
) -> Result<(Augmentation, usize)> {
    let rand_augment = check_rand_augment(settings, dataset)?;
    let snn_augment_wide = set(&settings.snn_augment_wide);
    if snn_augment_wide && dataset.is_cifar() {
        return Err(bad_setting(
            "augment.snn_augment_wide",
            true,
            "false on CIFAR: SNNAugmentWide works on float samples (event frames, synthetic \
             images); CIFAR has RandAugment",
        ));
    }
    let label_smoothing = below_one("augment.label_smoothing", set(&settings.label_smoothing))?;
    let (mixup, mixup_off_epoch) = check_mixup(settings, label_smoothing)?;
    let augmentation = Augmentation {
        crop_padding: set(&settings.crop_padding),
        flip: set(&settings.flip),
        rand_augment,
        snn_augment_wide,
        mixup,
        label_smoothing,
        random_erasing: number_in(
            "augment.random_erasing",
            set(&settings.random_erasing),
            0.0,
            1.0,
        )?,
    };
    Ok((augmentation, mixup_off_epoch))
}

/// RandAugment, CIFAR only; `None` when off (`rand_augment_n` 0).
fn check_rand_augment(
    settings: &AugmentSettings,
    dataset: DatasetKind,
) -> Result<Option<RandAugment>> {
    let num_ops = set(&settings.rand_augment_n);
    if num_ops == 0 {
        for (key, is_set) in [
            ("augment.rand_augment_m", settings.rand_augment_m.is_some()),
            (
                "augment.rand_augment_mstd",
                settings.rand_augment_mstd.is_some(),
            ),
        ] {
            unused(
                key,
                is_set,
                "RandAugment is off (turn it on with augment.rand_augment_n, --rand-augment-n)",
            )?;
        }
        return Ok(None);
    }
    if !dataset.is_cifar() {
        return Err(bad_setting(
            "augment.rand_augment_n",
            num_ops,
            "0 on this dataset: RandAugment works on CIFAR's u8 pixels, not on float samples",
        ));
    }
    Ok(Some(RandAugment {
        num_ops,
        magnitude: number_in(
            "augment.rand_augment_m",
            set(&settings.rand_augment_m),
            0.0,
            10.0,
        )?,
        magnitude_std: non_negative(
            "augment.rand_augment_mstd",
            set(&settings.rand_augment_mstd),
        )?,
        ..RandAugment::cifar()
    }))
}

/// Mixup with its targets smoothed by `label_smoothing`, and its first epoch off; `None` and 0
/// when off (`mixup_alpha` 0).
fn check_mixup(settings: &AugmentSettings, label_smoothing: f64) -> Result<(Option<Mixup>, usize)> {
    let alpha = non_negative("augment.mixup_alpha", set(&settings.mixup_alpha))?;
    if alpha == 0.0 {
        for (key, is_set) in [
            ("augment.mixup_prob", settings.mixup_prob.is_some()),
            (
                "augment.mixup_off_epoch",
                settings.mixup_off_epoch.is_some(),
            ),
        ] {
            unused(
                key,
                is_set,
                "mixup is off (turn it on with augment.mixup_alpha, --mixup-alpha)",
            )?;
        }
        return Ok((None, 0));
    }
    let prob = number_in("augment.mixup_prob", set(&settings.mixup_prob), 0.0, 1.0)?;
    let mixup = Mixup {
        alpha,
        prob,
        label_smoothing,
    };
    Ok((Some(mixup), set(&settings.mixup_off_epoch)))
}

/// The `precision` key as its name (`"bf16"`), parsed back with the list of valid names on a bad
/// one.
mod precision_key {
    use revsnn_reference::Precision;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        precision: &Option<Precision>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match precision {
            Some(precision) => serializer.serialize_str(precision.name()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Precision>, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

/// The config keys a resumed run may change: where things are and how fast, not what is
/// trained. The model's keys are checked against the run's spec instead.
pub const CHANGEABLE_ON_RESUME: &[&str] = &[
    "epochs",
    "data_dir",
    "device",
    "out",
    "loader.workers",
    "loader.prefetch",
    "loader.eval_batch",
    "model",
    "spec",
    "num_classes",
    "time_steps",
];

/// The keys set in `given` to values other than the run's (`run`, resolved settings), but for
/// those in [`CHANGEABLE_ON_RESUME`]: `(key, given value, run value)`.
pub fn changed_on_resume(
    given: &GivenSettings,
    run: &GivenSettings,
) -> Result<Vec<(String, String, String)>> {
    fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
        for (key, value) in table {
            let key = format!("{prefix}{key}");
            match value {
                toml::Value::Table(inner) => flatten(&format!("{key}."), inner, out),
                _ => out.push((key, value.clone())),
            }
        }
    }
    let keys = |settings: &GivenSettings| -> Result<Vec<(String, toml::Value)>> {
        let mut keys = Vec::new();
        flatten("", &settings.to_table()?, &mut keys);
        Ok(keys)
    };
    let run = keys(run)?;
    Ok(keys(given)?
        .into_iter()
        .filter(|(key, _)| !CHANGEABLE_ON_RESUME.contains(&key.as_str()))
        .filter_map(|(key, value)| {
            let stored = run.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
            (stored != Some(&value)).then(|| {
                let stored = stored.map_or("unset".to_string(), |v| v.to_string());
                (key, value.to_string(), stored)
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_their_keys() {
        assert_eq!(flag_of("optimizer.name"), "--optimizer");
        assert_eq!(flag_of("augment.rand_augment_n"), "--rand-augment-n");
        assert_eq!(flag_of("epochs"), "--epochs");
    }

    #[test]
    fn the_default_run_is_the_quick_recipe_on_synthetic() {
        let config = GivenSettings::default().resolve().unwrap();
        assert_eq!(config.model.name, "revsresnet-small");
        assert_eq!(config.dataset, DatasetKind::Synthetic);
        assert_eq!((config.epochs, config.batch, config.seed), (8, 16, 0));
        assert_eq!(config.augmentation, Augmentation::NONE);
        assert_eq!(
            config.optimizer,
            OptimizerKind::Sgd(SgdParams {
                lr: 0.05,
                momentum: 0.9,
                weight_decay: 1e-4
            })
        );
        assert_eq!(
            config.out,
            Path::new("runs/revsresnet-small-synthetic-seed0")
        );
        let again = RunSettings::resolve(&config.to_given(), config.model.clone()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn memory_and_bench_step_with_the_paper_optimizers() {
        let sgd = SgdParams {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
        };
        for arch in [Arch::Revsresnet, Arch::MsresnetDvs] {
            assert_eq!(paper_optimizer(arch).unwrap(), OptimizerKind::Sgd(sgd));
        }
        for arch in [Arch::Revsformer, Arch::SpikingformerDvs] {
            let adamw = OptimizerKind::AdamW(AdamWParams::new(5e-4, 0.06));
            assert_eq!(paper_optimizer(arch).unwrap(), adamw);
        }
    }

    #[test]
    fn keys_of_a_step_that_is_off_are_refused() {
        let mut given = GivenSettings::default();
        given.optimizer.betas = Some(vec![0.9, 0.99]);
        let error = given.resolve().unwrap_err().to_string();
        assert!(
            error.contains("optimizer.betas") && error.contains("--betas"),
            "{error}"
        );
        let mut given = GivenSettings::default();
        given.augment.mixup_prob = Some(0.5);
        assert!(
            given
                .resolve()
                .unwrap_err()
                .to_string()
                .contains("mixup_alpha")
        );
    }
}
