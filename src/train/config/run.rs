//! [`RunSettings`]: the given settings over the recipe's, every knob checked into a typed value,
//! and back.

use std::path::{Path, PathBuf};

use revsnn_reference::Precision;

use super::augment::{AugmentSettings, check_augment};
use super::checks::{at_least_one, bad_setting, between, require, set, unused};
use super::loader::{LoaderSettings, check_loader};
use super::optimizer::{OptimizerSettings, ScheduleSettings, check_optimizer, check_schedule};
use super::{GivenSettings, ModelSource, RunModel};
use crate::data::augment::Augmentation;
use crate::device::DeviceChoice;
use crate::error::Result;
use crate::optim::OptimizerKind;
use crate::train::recipe::{DatasetKind, RecipeInput, RecipeKind, Schedule};

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
    /// [`Run::start`](crate::train::Run::start) reads the file and records its own; a resumed run
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
        let (workers, prefetch, eval_batch) = check_loader(&settings.loader)?;
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

/// The default run folder: `runs/<model>-<dataset>-seed<seed>`, the model by its file stem.
fn default_out(model: &str, dataset: DatasetKind, seed: u64) -> PathBuf {
    let short_name = Path::new(model)
        .file_stem()
        .map_or_else(|| model.to_string(), |s| s.to_string_lossy().into_owned());
    PathBuf::from("runs").join(format!("{short_name}-{}-seed{seed}", dataset.name()))
}

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
