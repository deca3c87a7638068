//! The `[augment]` section: its knobs, laid over one another, checked into the augmentation on a
//! dataset, and written back.

use clap::Args;
use serde::{Deserialize, Serialize};

use super::checks::{bad_setting, below_one, non_negative, number_in, set, unused};
use crate::data::augment::{Augmentation, Mixup, RandAugment};
use crate::error::Result;
use crate::train::recipe::DatasetKind;

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

impl AugmentSettings {
    pub(super) fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub(super) fn over(self, lower: Self) -> Self {
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

/// The augmentation on `dataset`, and the first epoch without mixup (0 without mixup).
pub(super) fn check_augment(
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
