//! The `[optimizer]` and `[schedule]` sections: their knobs, laid over one another, checked into
//! the optimizer and the learning-rate schedule, and written back.

use clap::Args;
use revsnn_reference::{AdamWParams, SgdParams};
use serde::{Deserialize, Serialize};

use super::GivenSettings;
use super::checks::{bad_setting, below_one, non_negative, positive_number, set, unused};
use crate::error::Result;
use crate::optim::OptimizerKind;
use crate::spec::Arch;
use crate::train::recipe::{
    DatasetKind, OptimizerName, RecipeInput, RecipeKind, Schedule, ScheduleName,
};

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

impl OptimizerSettings {
    pub(super) fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub(super) fn over(self, lower: Self) -> Self {
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
    pub(super) fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub(super) fn over(self, lower: Self) -> Self {
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

/// The optimizer `settings` name with its knobs, each checked; a knob of the other optimizer is
/// refused.
pub(super) fn check_optimizer(settings: &OptimizerSettings) -> Result<OptimizerKind> {
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

/// The schedule `settings` name with its knobs, each checked; a knob of the other schedule is
/// refused.
pub(super) fn check_schedule(settings: &ScheduleSettings) -> Result<Schedule> {
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
