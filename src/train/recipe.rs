//! Training recipes (docs/recipes.md §5): the value of every knob a run leaves open.
//!
//! - [`RecipeKind::Quick`] (the default): the paper's recipe for the model's family, scaled to a
//!   short run: 8 epochs at batch 16 on 5000 training and 1000 test samples; ResNets SGD
//!   (momentum 0.9, weight decay 1e-4, lr 0.1 at batch 32, scaled linearly with the batch size)
//!   with x0.1 steps at 50% and 75% of the epochs; transformers AdamW (weight decay 0.06, lr 5e-4)
//!   with the paper's cosine schedule, warmup, cooldown and mixup stop scaled to the epochs.
//! - [`RecipeKind::Paper`]: the full recipe of docs/recipes.md §5 for the dataset and the model's family:
//!   epochs, batch, seed, optimizer, learning rate, schedule and mixup stop as the official
//!   scripts, the whole dataset, and for presets the official head (classes, CIFAR-10
//!   transformers' 12 attention heads) and time steps.
//!
//! Both recipes augment alike (docs/recipes.md §5), by dataset and family: CIFAR ResNets crop (padding 4)
//! and flip; CIFAR transformers flip, RandAugment `rand-m9-n1-mstd0.4`, mixup (alpha 0.5) with
//! label smoothing 0.1 and random erasing 0.25; event datasets flip, SNNAugmentWide and mixup
//! (alpha 0.5, p 0.5) with label smoothing 0.1; `synthetic-cifar` as CIFAR, `synthetic` and
//! `synthetic-events` nothing.
//!
//! A knob's default may follow another knob: the learning rate, weight decay and schedule follow
//! the optimizer, the quick recipe's schedule the epochs and batch size.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use super::config::{
    AugmentSettings, GivenSettings, LoaderSettings, OptimizerSettings, ScheduleSettings,
};
use crate::data::augment::{Mixup, RandAugment};
use crate::device::DeviceChoice;
use crate::error::{Error, Result};
use crate::spec::{Arch, ModelSpec};
use revsnn_reference::Precision;

/// Which recipe fills in the knobs a run leaves open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RecipeKind {
    /// The paper's recipe for the model's family scaled to a short run (8 epochs, batch 16).
    #[default]
    Quick,
    /// The full recipe of docs/recipes.md §5 for the dataset (cifar10, cifar100, cifar10-dvs,
    /// dvs128-gesture) and the model.
    Paper,
}

impl RecipeKind {
    /// The name `--recipe` takes.
    pub fn name(self) -> &'static str {
        match self {
            RecipeKind::Quick => "quick",
            RecipeKind::Paper => "paper",
        }
    }
}

/// The optimizers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    /// SGD with momentum; weight decay on every parameter.
    Sgd,
    /// AdamW; no weight decay on biases and 1-D parameters.
    Adamw,
}

/// The learning-rate schedules, stepped per epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleName {
    /// x gamma at each milestone epoch.
    Multistep,
    /// timm's cosine with linear warmup from min_lr and a cooldown at min_lr.
    Cosine,
}

/// How the learning rate moves over the epochs.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// `base * gamma^k` after the `k`-th milestone epoch.
    MultiStep { milestones: Vec<usize>, gamma: f64 },
    /// timm's per-epoch cosine (docs/recipes.md §5.1): linear warmup from `min_lr` over `warmup_epochs`,
    /// a cosine over the `epochs - cooldown_epochs` epochs counted from 0, then `min_lr` for the
    /// last `cooldown_epochs`.
    Cosine {
        warmup_epochs: usize,
        cooldown_epochs: usize,
        min_lr: f64,
    },
}

impl Schedule {
    /// The learning rate of epoch `epoch` (counted from 0) of a run of `epochs` epochs whose
    /// base learning rate is `base_lr`.
    pub fn lr(&self, base_lr: f64, epoch: usize, epochs: usize) -> f64 {
        match self {
            Schedule::MultiStep { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| epoch >= m).count();
                base_lr * gamma.powi(passed as i32)
            }
            Schedule::Cosine {
                warmup_epochs,
                cooldown_epochs,
                min_lr,
            } => {
                let cycle = epochs.saturating_sub(*cooldown_epochs).max(1);
                if epoch < *warmup_epochs {
                    min_lr + epoch as f64 * (base_lr - min_lr) / *warmup_epochs as f64
                } else if epoch >= cycle {
                    *min_lr
                } else {
                    let phase = std::f64::consts::PI * epoch as f64 / cycle as f64;
                    min_lr + 0.5 * (base_lr - min_lr) * (1.0 + phase.cos())
                }
            }
        }
    }
}

/// The datasets, as the recipes tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    Synthetic,
    SyntheticCifar,
    SyntheticEvents,
    Cifar10,
    Cifar100,
    Cifar10Dvs,
    Dvs128Gesture,
}

impl DatasetKind {
    /// Every dataset, in the order `--dataset` lists them.
    pub const ALL: [DatasetKind; 7] = [
        DatasetKind::Synthetic,
        DatasetKind::SyntheticCifar,
        DatasetKind::SyntheticEvents,
        DatasetKind::Cifar10,
        DatasetKind::Cifar100,
        DatasetKind::Dvs128Gesture,
        DatasetKind::Cifar10Dvs,
    ];

    /// The name `--dataset` takes.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Synthetic => "synthetic",
            DatasetKind::SyntheticCifar => "synthetic-cifar",
            DatasetKind::SyntheticEvents => "synthetic-events",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Cifar10Dvs => "cifar10-dvs",
            DatasetKind::Dvs128Gesture => "dvs128-gesture",
        }
    }

    /// The dataset called `name`, or an error listing the names.
    pub fn from_name(name: &str) -> Result<DatasetKind> {
        DatasetKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
                Error::Usage(format!(
                    "unknown dataset {name:?}; the datasets are {}",
                    names.join(", ")
                ))
            })
    }

    /// CIFAR-10, CIFAR-100 or synthetic-cifar: CIFAR's `u8` images, which the CIFAR recipes
    /// and RandAugment take.
    pub fn is_cifar(self) -> bool {
        matches!(
            self,
            DatasetKind::Cifar10 | DatasetKind::Cifar100 | DatasetKind::SyntheticCifar
        )
    }

    /// One of the paper's event datasets.
    pub fn is_real_events(self) -> bool {
        matches!(self, DatasetKind::Cifar10Dvs | DatasetKind::Dvs128Gesture)
    }

    /// The training and test samples of the paper's datasets (docs/data.md §6); `None` for the
    /// synthetic ones, which have no fixed size.
    fn split_sizes(self) -> Option<(usize, usize)> {
        match self {
            DatasetKind::Cifar10 | DatasetKind::Cifar100 => Some((50_000, 10_000)),
            DatasetKind::Cifar10Dvs => Some((9_000, 1_000)),
            DatasetKind::Dvs128Gesture => Some((1_176, 288)),
            DatasetKind::Synthetic | DatasetKind::SyntheticCifar | DatasetKind::SyntheticEvents => {
                None
            }
        }
    }

    /// The classes of the paper's datasets.
    fn classes(self) -> usize {
        match self {
            DatasetKind::Cifar100 => 100,
            DatasetKind::Dvs128Gesture => 11,
            _ => 10,
        }
    }
}

/// Momentum of every SGD recipe (docs/recipes.md §5.2).
pub const SGD_MOMENTUM: f64 = 0.9;
/// AdamW's betas in every recipe (docs/recipes.md §5.1, 5.3).
pub const ADAMW_BETAS: [f64; 2] = [0.9, 0.999];
/// AdamW's eps in every recipe (docs/recipes.md §5.1, 5.3).
pub const ADAMW_EPS: f64 = 1e-8;
/// Label smoothing of the soft-target recipes (docs/recipes.md §5.1, 5.3).
pub const LABEL_SMOOTHING: f64 = 0.1;
/// Random-erasing probability of the CIFAR transformer recipe (docs/recipes.md §5.1).
pub const RANDOM_ERASING: f64 = 0.25;
/// The floor of the cosine schedules, and where their warmup starts (docs/recipes.md §5.1, 5.3).
pub const COSINE_MIN_LR: f64 = 1e-5;

/// What the recipes decide by: the recipe, the model's family and the dataset.
#[derive(Clone, Copy, Debug)]
pub struct RecipeInput {
    /// Which recipe.
    pub recipe: RecipeKind,
    /// The model's family.
    pub arch: Arch,
    /// The dataset.
    pub dataset: DatasetKind,
}

/// The augmentation a recipe chooses (docs/recipes.md §5), as the config's knobs hold it: a step that is
/// off still has its parameters (RandAugment's magnitude, mixup's probability), the values a
/// run that turns it on gets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AugmentDefaults {
    /// Zero padding of the random crop; 0: no crop.
    pub crop_padding: usize,
    /// Horizontal flip.
    pub flip: bool,
    /// RandAugment; its `num_ops` is 0 when off.
    pub rand_augment: RandAugment,
    /// SNNAugmentWide.
    pub snn_augment_wide: bool,
    /// Random-erasing probability.
    pub random_erasing: f64,
    /// Mixup's alpha (0: off) and batch probability; its targets are smoothed by
    /// `label_smoothing`.
    pub mixup: Mixup,
    /// Label smoothing of unmixed batches.
    pub label_smoothing: f64,
}

impl RecipeInput {
    /// Checks that the recipe covers the dataset: `paper` needs one of the paper's datasets.
    pub fn check(&self) -> Result<()> {
        if self.recipe == RecipeKind::Paper && self.dataset.split_sizes().is_none() {
            return Err(Error::Usage(format!(
                "recipe paper (--recipe paper) is the paper's setup for cifar10, cifar100, \
                 cifar10-dvs and dvs128-gesture, not {}: pass one of them with --dataset and \
                 --data-dir, or use --recipe quick",
                self.dataset.name()
            )));
        }
        Ok(())
    }

    fn paper(&self) -> bool {
        self.recipe == RecipeKind::Paper
    }

    /// For presets under `paper`: the official head and time steps for the dataset
    /// (docs/architectures.md §4.1-4.5; docs/choices.md §A2, A8): CIFAR ResNets keep their 100-class heads, CIFAR transformers
    /// get the dataset's classes and 12 attention heads on CIFAR-10 (and synthetic-cifar), the event models the
    /// dataset's classes; CIFAR models run 4 time steps, event models 10.
    pub fn preset_for_dataset(&self, spec: &mut ModelSpec) {
        if !self.paper() {
            return;
        }
        spec.time_steps = if self.arch.is_dvs() { 10 } else { 4 };
        if self.arch.is_dvs() || !self.arch.is_resnet() {
            spec.num_classes = self.dataset.classes();
        }
        if !self.arch.is_resnet() && !self.arch.is_dvs() {
            spec.heads = Some(
                if matches!(
                    self.dataset,
                    DatasetKind::Cifar10 | DatasetKind::SyntheticCifar
                ) {
                    12
                } else {
                    8
                },
            );
        }
    }

    /// Epochs: the official runs' (with timm's 10 cooldown epochs), or 8.
    pub fn epochs(&self) -> usize {
        if !self.paper() {
            return 8;
        }
        match self.dataset {
            DatasetKind::Cifar10Dvs => 106,
            DatasetKind::Dvs128Gesture => 202,
            _ if self.arch.is_resnet() => 200,
            _ => 310,
        }
    }

    /// The batch size: 32 (CIFAR ResNets), 64 (CIFAR transformers), 16 (events), or 16.
    pub fn batch(&self) -> usize {
        if !self.paper() || self.dataset.is_real_events() {
            16
        } else if self.arch.is_resnet() {
            32
        } else {
            64
        }
    }

    /// The seed: the official scripts' (CIFAR-10 ResNets 2020, CIFAR-100 ResNets 2023, CIFAR
    /// transformers 42, events 2021), or 0.
    pub fn seed(&self) -> u64 {
        if !self.paper() {
            0
        } else if self.dataset.is_real_events() {
            2021
        } else if !self.arch.is_resnet() {
            42
        } else if self.dataset == DatasetKind::Cifar100 {
            2023
        } else {
            2020
        }
    }

    /// Training and test samples: the whole dataset, or 5000 and 1000.
    pub fn samples(&self) -> (usize, usize) {
        match self.dataset.split_sizes() {
            Some(sizes) if self.paper() => sizes,
            _ => (5000, 1000),
        }
    }

    /// The optimizer: SGD for ResNets (AdamW for the event ResNets of the paper), AdamW for
    /// transformers.
    pub fn optimizer(&self) -> OptimizerName {
        if self.arch.is_resnet() && !(self.paper() && self.dataset.is_real_events()) {
            OptimizerName::Sgd
        } else {
            OptimizerName::Adamw
        }
    }

    /// The base learning rate of `optimizer` at batch size `batch`: SGD 0.1 (quick: at batch 32,
    /// scaled linearly); AdamW 5e-4 (paper on events: 1e-3).
    pub fn lr(&self, optimizer: OptimizerName, batch: usize) -> f64 {
        match optimizer {
            OptimizerName::Sgd if self.paper() => 0.1,
            OptimizerName::Sgd => 0.1 * batch as f64 / 32.0,
            OptimizerName::Adamw if self.paper() && self.dataset.is_real_events() => 1e-3,
            OptimizerName::Adamw => 5e-4,
        }
    }

    /// The weight decay of `optimizer`: SGD 1e-4, AdamW 0.06 (paper: 0 for the event ResNets).
    pub fn weight_decay(&self, optimizer: OptimizerName) -> f64 {
        match optimizer {
            OptimizerName::Sgd => 1e-4,
            OptimizerName::Adamw
                if self.paper() && self.dataset.is_real_events() && self.arch.is_resnet() =>
            {
                0.0
            }
            OptimizerName::Adamw => 0.06,
        }
    }

    /// The schedule that goes with `optimizer`: multistep for SGD, cosine for AdamW.
    pub fn schedule_name(&self, optimizer: OptimizerName) -> ScheduleName {
        match optimizer {
            OptimizerName::Sgd => ScheduleName::Multistep,
            OptimizerName::Adamw => ScheduleName::Cosine,
        }
    }

    /// Multistep milestones: the paper's on CIFAR-10 (100, 150) and CIFAR-100 (60, 120, 160);
    /// otherwise 50% and 75% of the epochs, each epoch once (on 2 epochs both fall on epoch 1,
    /// which would step the lr down twice at once).
    pub fn milestones(&self, epochs: usize) -> Vec<usize> {
        match self.dataset {
            DatasetKind::Cifar10 if self.paper() => vec![100, 150],
            DatasetKind::Cifar100 if self.paper() => vec![60, 120, 160],
            _ => {
                let mut milestones = vec![epochs / 2, epochs * 3 / 4];
                milestones.retain(|&m| m > 0);
                milestones.dedup();
                milestones
            }
        }
    }

    /// Synchronised BatchNorm across data-parallel ranks: on for the paper's CIFAR transformers
    /// (the official configs set `sync_bn: True`), else off.
    pub fn sync_bn(&self) -> bool {
        self.paper() && self.dataset.is_cifar() && !self.arch.is_resnet()
    }

    /// Multistep's factor: 0.1.
    pub fn gamma(&self) -> f64 {
        0.1
    }

    /// Cosine warmup epochs: 20 (CIFAR), 10 (events); quick: 20 of 310, scaled.
    pub fn warmup_epochs(&self, epochs: usize) -> usize {
        if !self.paper() {
            (epochs * 2).div_ceil(31).min(epochs.saturating_sub(1))
        } else if self.dataset.is_real_events() {
            10
        } else {
            20
        }
    }

    /// Cosine cooldown epochs at min_lr: 10; quick: 10 of 310, scaled.
    pub fn cooldown_epochs(&self, epochs: usize) -> usize {
        if self.paper() { 10 } else { epochs / 31 }
    }

    /// The cosine floor: 1e-5, or the base learning rate if that is lower.
    pub fn min_lr(&self, lr: f64) -> f64 {
        COSINE_MIN_LR.min(lr)
    }

    /// The augmentation (the same for both recipes).
    pub fn augment(&self) -> AugmentDefaults {
        let off = AugmentDefaults {
            crop_padding: 0,
            flip: false,
            rand_augment: RandAugment {
                num_ops: 0,
                ..RandAugment::cifar()
            },
            snn_augment_wide: false,
            random_erasing: 0.0,
            mixup: Mixup {
                alpha: 0.0,
                ..Mixup::cifar()
            },
            label_smoothing: 0.0,
        };
        match self.dataset {
            kind if kind.is_cifar() && self.arch.is_resnet() => AugmentDefaults {
                crop_padding: 4,
                flip: true,
                ..off
            },
            kind if kind.is_cifar() => AugmentDefaults {
                flip: true,
                rand_augment: RandAugment::cifar(),
                random_erasing: RANDOM_ERASING,
                mixup: Mixup::cifar(),
                label_smoothing: LABEL_SMOOTHING,
                ..off
            },
            DatasetKind::Cifar10Dvs | DatasetKind::Dvs128Gesture => AugmentDefaults {
                flip: true,
                snn_augment_wide: true,
                mixup: Mixup::dvs(),
                label_smoothing: LABEL_SMOOTHING,
                ..off
            },
            _ => off,
        }
    }

    /// The first epoch without mixup: 200 (CIFAR) or 75 (events, even for the 202-epoch
    /// Gesture run; docs/choices.md §A17); quick: 200 of 310, 75 of 106 or 75 of 202, scaled.
    pub fn mixup_off_epoch(&self, epochs: usize) -> usize {
        let (off, total) = match self.dataset {
            DatasetKind::Cifar10Dvs => (75, 106),
            DatasetKind::Dvs128Gesture => (75, 202),
            _ => (200, 310),
        };
        if self.paper() {
            off
        } else {
            epochs * off / total
        }
    }
}

/// Threads assembling training batches, unless `[loader] workers` says otherwise.
pub const LOADER_WORKERS: usize = 1;
/// Batches each worker keeps ready ahead, unless `[loader] prefetch` says otherwise.
pub const LOADER_PREFETCH: usize = 4;
/// The fewest samples of an evaluation batch, unless `[loader] eval_batch` says otherwise: the
/// evaluation takes the training batch, or this many where that is smaller.
pub const EVAL_BATCH_FLOOR: usize = 32;

impl RecipeInput {
    /// The lowest layer of a run's settings: the recipe's value of every knob but the model, the
    /// data folder and the run folder. A knob whose value follows another's (the learning rate
    /// the optimizer and batch size, the schedule the optimizer and epochs, ...) follows that
    /// knob's value in `given` where `given` sets it. The knobs of a step that is off (AdamW's
    /// betas under SGD, mixup's probability without mixup) stay unset, so that one set above
    /// this layer is refused.
    pub fn defaults(&self, given: &GivenSettings) -> GivenSettings {
        let epochs = given.epochs.unwrap_or(self.epochs());
        let batch = given.batch.unwrap_or(self.batch());
        let optimizer = given.optimizer.name.unwrap_or(self.optimizer());
        let lr = given.optimizer.lr.unwrap_or(self.lr(optimizer, batch));
        let (train_samples, test_samples) = self.samples();
        GivenSettings {
            recipe: Some(self.recipe),
            train_samples: Some(train_samples),
            test_samples: Some(test_samples),
            epochs: Some(self.epochs()),
            batch: Some(self.batch()),
            seed: Some(self.seed()),
            device: Some(DeviceChoice::Auto),
            precision: Some(Precision::F32),
            ranks: Some(1),
            sync_bn: Some(self.sync_bn()),
            optimizer: self.optimizer_defaults(optimizer, batch),
            schedule: self.schedule_defaults(&given.schedule, optimizer, lr, epochs),
            augment: self.augment_defaults(&given.augment, epochs),
            loader: LoaderSettings {
                workers: Some(LOADER_WORKERS),
                prefetch: Some(LOADER_PREFETCH),
                eval_batch: Some(batch.max(EVAL_BATCH_FLOOR)),
            },
            ..GivenSettings::default()
        }
    }

    /// Optimizer `name` with the recipe's values at batch size `batch`.
    fn optimizer_defaults(&self, name: OptimizerName, batch: usize) -> OptimizerSettings {
        let sgd = name == OptimizerName::Sgd;
        OptimizerSettings {
            name: Some(name),
            lr: Some(self.lr(name, batch)),
            momentum: sgd.then_some(SGD_MOMENTUM),
            weight_decay: Some(self.weight_decay(name)),
            betas: (!sgd).then(|| ADAMW_BETAS.to_vec()),
            eps: (!sgd).then_some(ADAMW_EPS),
        }
    }

    /// The schedule `given` names (or the one that goes with `optimizer`) with the recipe's
    /// values for a run of `epochs` epochs at base learning rate `lr`.
    fn schedule_defaults(
        &self,
        given: &ScheduleSettings,
        optimizer: OptimizerName,
        lr: f64,
        epochs: usize,
    ) -> ScheduleSettings {
        let name = given.name.unwrap_or(self.schedule_name(optimizer));
        match name {
            ScheduleName::Multistep => ScheduleSettings {
                name: Some(name),
                milestones: Some(self.milestones(epochs)),
                gamma: Some(self.gamma()),
                ..ScheduleSettings::default()
            },
            ScheduleName::Cosine => ScheduleSettings {
                name: Some(name),
                warmup_epochs: Some(self.warmup_epochs(epochs)),
                cooldown_epochs: Some(self.cooldown_epochs(epochs)),
                min_lr: Some(self.min_lr(lr)),
                ..ScheduleSettings::default()
            },
        }
    }

    /// The recipe's augmentation; RandAugment's and mixup's parameters where `given` or the
    /// recipe turns them on.
    fn augment_defaults(&self, given: &AugmentSettings, epochs: usize) -> AugmentSettings {
        let recipe = self.augment();
        let rand_augment = given.rand_augment_n.unwrap_or(recipe.rand_augment.num_ops) != 0;
        let mixup = given.mixup_alpha.unwrap_or(recipe.mixup.alpha) != 0.0;
        AugmentSettings {
            crop_padding: Some(recipe.crop_padding),
            flip: Some(recipe.flip),
            rand_augment_n: Some(recipe.rand_augment.num_ops),
            rand_augment_m: rand_augment.then_some(recipe.rand_augment.magnitude),
            rand_augment_mstd: rand_augment.then_some(recipe.rand_augment.magnitude_std),
            snn_augment_wide: Some(recipe.snn_augment_wide),
            random_erasing: Some(recipe.random_erasing),
            mixup_alpha: Some(recipe.mixup.alpha),
            mixup_prob: mixup.then_some(recipe.mixup.prob),
            mixup_off_epoch: mixup.then(|| self.mixup_off_epoch(epochs)),
            label_smoothing: Some(recipe.label_smoothing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(recipe: RecipeKind, preset: &str, dataset: DatasetKind) -> RecipeInput {
        RecipeInput {
            recipe,
            arch: ModelSpec::preset(preset).unwrap().arch,
            dataset,
        }
    }

    #[test]
    fn multistep_steps_down_and_cosine_warms_up_then_decays() {
        let steps = Schedule::MultiStep {
            milestones: vec![4, 6],
            gamma: 0.1,
        };
        assert_eq!(steps.lr(0.1, 0, 8), 0.1);
        assert!((steps.lr(0.1, 4, 8) - 0.01).abs() < 1e-12);
        assert!((steps.lr(0.1, 7, 8) - 0.001).abs() < 1e-12);
        let cosine = Schedule::Cosine {
            warmup_epochs: 20,
            cooldown_epochs: 10,
            min_lr: 1e-5,
        };
        assert!((cosine.lr(5e-4, 0, 310) - 1e-5).abs() < 1e-12);
        let expected = 1e-5 + 0.5 * (5e-4 - 1e-5) * (1.0 + (std::f64::consts::PI / 15.0).cos());
        assert!((cosine.lr(5e-4, 20, 310) - expected).abs() < 1e-12);
        assert_eq!(cosine.lr(5e-4, 305, 310), 1e-5);
    }

    #[test]
    fn quick_scales_the_paper_to_the_run() {
        let quick = input(RecipeKind::Quick, "revsresnet21", DatasetKind::Synthetic);
        assert_eq!((quick.epochs(), quick.batch(), quick.seed()), (8, 16, 0));
        assert_eq!(quick.optimizer(), OptimizerName::Sgd);
        assert_eq!(quick.lr(OptimizerName::Sgd, 16), 0.05);
        assert_eq!(quick.milestones(8), vec![4, 6]);
        assert_eq!(quick.milestones(2), vec![1]);
        assert_eq!(quick.milestones(1), Vec::<usize>::new());
        let former = input(RecipeKind::Quick, "revsformer-4-384", DatasetKind::Cifar10);
        assert_eq!(former.optimizer(), OptimizerName::Adamw);
        assert_eq!(
            (former.warmup_epochs(310), former.cooldown_epochs(310)),
            (20, 10)
        );
        assert_eq!(former.mixup_off_epoch(31), 20);
        assert_eq!(former.samples(), (5000, 1000));
    }

    #[test]
    fn paper_needs_a_paper_dataset() {
        assert!(
            input(RecipeKind::Paper, "revsresnet21", DatasetKind::Synthetic)
                .check()
                .is_err()
        );
        assert!(
            input(RecipeKind::Paper, "revsresnet21", DatasetKind::Cifar10)
                .check()
                .is_ok()
        );
    }
}
