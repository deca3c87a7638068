//! Dynamic loss scaling for fp16 training, with the semantics and defaults of PyTorch's
//! `GradScaler`, and one addition: a scale below 1 stops the run (docs/precision.md, "Loss
//! scaling"). `revsnn train --precision fp16` trains with one (`crate::train::epoch`), and its
//! state is part of the run's `last.json`.
//!
//! The loss is multiplied by `scale` before the backward, so that small gradients stay inside
//! fp16's range; the gradients are divided by it again before the optimizer step. A step whose
//! gradients hold an infinity or a NaN is skipped and the scale halves; after `growth_interval`
//! clean steps in a row the scale doubles. The state serialises, so that a run's checkpoint can
//! hold it and a resumed run scale exactly as the uninterrupted one would; a state read back is
//! checked as a new one is.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The scaler's hyperparameters: PyTorch's defaults unless a run says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradScalerConfig {
    /// The scale of the first step: 2^16.
    pub init_scale: f32,
    /// The factor after `growth_interval` clean steps: 2.
    pub growth_factor: f32,
    /// The factor after a step with non-finite gradients: 0.5.
    pub backoff_factor: f32,
    /// Clean steps in a row before the scale grows: 2000.
    pub growth_interval: u64,
}

impl Default for GradScalerConfig {
    fn default() -> Self {
        GradScalerConfig {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

/// What to do with a step's gradients once they are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepAction {
    /// Finite gradients: divide them by the scale the backward used, and step the optimizer.
    Apply,
    /// An infinity or a NaN: skip the optimizer step; the next backward uses a smaller scale.
    Skip,
}

/// The scaler's state: the current scale (an `f32`, as PyTorch keeps it, so it saturates where
/// PyTorch's does) and the clean steps since it last changed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SavedScaler")]
pub struct GradScaler {
    pub config: GradScalerConfig,
    scale: f32,
    growth_tracker: u64,
}

/// A [`GradScaler`] as read from a checkpoint, before its checks.
#[derive(Deserialize)]
struct SavedScaler {
    config: GradScalerConfig,
    scale: f32,
    growth_tracker: u64,
}

impl TryFrom<SavedScaler> for GradScaler {
    type Error = Error;

    fn try_from(saved: SavedScaler) -> Result<Self> {
        let scaler = GradScaler::new(saved.config)?;
        if !(saved.scale.is_finite() && saved.scale >= 1.0)
            || saved.growth_tracker >= saved.config.growth_interval
        {
            return Err(Error::Usage(format!(
                "a saved loss scaler with scale {} and {} clean steps of {} is not one this \
                 program writes: the checkpoint's state is damaged",
                saved.scale, saved.growth_tracker, saved.config.growth_interval
            )));
        }
        Ok(GradScaler {
            scale: saved.scale,
            growth_tracker: saved.growth_tracker,
            ..scaler
        })
    }
}

impl GradScaler {
    /// A scaler at `config.init_scale`, after checking the configuration.
    pub fn new(config: GradScalerConfig) -> Result<Self> {
        let valid = config.init_scale.is_finite()
            && config.init_scale >= 1.0
            && config.growth_factor > 1.0
            && config.growth_factor.is_finite()
            && config.backoff_factor > 0.0
            && config.backoff_factor < 1.0
            && config.growth_interval >= 1;
        if !valid {
            return Err(Error::Usage(format!(
                "invalid loss-scaler settings {config:?}: init_scale must be finite and >= 1, \
                 growth_factor > 1, backoff_factor in (0, 1) and growth_interval >= 1"
            )));
        }
        Ok(GradScaler {
            config,
            scale: config.init_scale,
            growth_tracker: 0,
        })
    }

    /// The factor the next backward multiplies the loss by.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Clean steps since the scale last changed.
    pub fn growth_tracker(&self) -> u64 {
        self.growth_tracker
    }

    /// Records whether this step's scaled gradients held a non-finite value, updates the scale as
    /// PyTorch's `GradScaler.update` does, and says whether to apply the step. A scale that falls
    /// below 1 means the gradients overflow even unscaled: that is an error here (PyTorch keeps
    /// halving), and the run stops with its last good checkpoint as it is.
    pub fn update(&mut self, found_non_finite: bool) -> Result<StepAction> {
        if found_non_finite {
            self.scale *= self.config.backoff_factor;
            self.growth_tracker = 0;
            if self.scale < 1.0 {
                return Err(Error::LossScaleCollapsed { scale: self.scale });
            }
            return Ok(StepAction::Skip);
        }
        self.growth_tracker += 1;
        if self.growth_tracker >= self.config.growth_interval {
            let grown = self.scale * self.config.growth_factor;
            if grown.is_finite() {
                self.scale = grown;
            }
            self.growth_tracker = 0;
        }
        Ok(StepAction::Apply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaler(growth_interval: u64) -> GradScaler {
        GradScaler::new(GradScalerConfig {
            growth_interval,
            ..GradScalerConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn defaults_are_pytorchs() {
        let s = GradScaler::new(GradScalerConfig::default()).unwrap();
        assert_eq!(s.scale(), 65536.0);
        assert_eq!(s.config.growth_factor, 2.0);
        assert_eq!(s.config.backoff_factor, 0.5);
        assert_eq!(s.config.growth_interval, 2000);
    }

    #[test]
    fn the_scale_doubles_after_growth_interval_clean_steps() {
        let mut s = scaler(3);
        for _ in 0..2 {
            assert_eq!(s.update(false).unwrap(), StepAction::Apply);
            assert_eq!(s.scale(), 65536.0);
        }
        assert_eq!(s.update(false).unwrap(), StepAction::Apply);
        assert_eq!((s.scale(), s.growth_tracker()), (131072.0, 0));
    }

    #[test]
    fn a_non_finite_step_is_skipped_halves_the_scale_and_restarts_the_count() {
        let mut s = scaler(3);
        s.update(false).unwrap();
        s.update(false).unwrap();
        assert_eq!(s.update(true).unwrap(), StepAction::Skip);
        assert_eq!((s.scale(), s.growth_tracker()), (32768.0, 0));
        for _ in 0..2 {
            s.update(false).unwrap();
        }
        assert_eq!(
            s.scale(),
            32768.0,
            "two clean steps after the skip are not three"
        );
        s.update(false).unwrap();
        assert_eq!(s.scale(), 65536.0);
    }

    #[test]
    fn a_scale_below_one_is_an_error() {
        let mut s = GradScaler::new(GradScalerConfig {
            init_scale: 4.0,
            ..GradScalerConfig::default()
        })
        .unwrap();
        assert_eq!(s.update(true).unwrap(), StepAction::Skip);
        assert_eq!(s.update(true).unwrap(), StepAction::Skip);
        let error = s.update(true).unwrap_err().to_string();
        assert!(error.contains("0.5"), "{error}");
        assert!(error.contains("last good checkpoint"), "{error}");
    }

    #[test]
    fn the_scale_never_grows_to_infinity() {
        let mut s = GradScaler::new(GradScalerConfig {
            init_scale: f32::MAX,
            growth_interval: 1,
            ..GradScalerConfig::default()
        })
        .unwrap();
        s.update(false).unwrap();
        assert_eq!(s.scale(), f32::MAX);
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let mut s = scaler(5);
        s.update(true).unwrap();
        s.update(false).unwrap();
        let text = serde_json::to_string(&s).unwrap();
        let back: GradScaler = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn a_damaged_saved_state_is_refused() {
        let s = scaler(5);
        let mut value = serde_json::to_value(s).unwrap();
        value["growth_tracker"] = 5.into();
        assert!(serde_json::from_value::<GradScaler>(value.clone()).is_err());
        value["growth_tracker"] = 0.into();
        value["scale"] = 0.25.into();
        assert!(serde_json::from_value::<GradScaler>(value.clone()).is_err());
        value["scale"] = 8.0.into();
        assert_eq!(
            serde_json::from_value::<GradScaler>(value).unwrap().scale(),
            8.0
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        for config in [
            GradScalerConfig {
                init_scale: 0.5,
                ..GradScalerConfig::default()
            },
            GradScalerConfig {
                backoff_factor: 1.0,
                ..GradScalerConfig::default()
            },
            GradScalerConfig {
                growth_factor: 1.0,
                ..GradScalerConfig::default()
            },
            GradScalerConfig {
                growth_interval: 0,
                ..GradScalerConfig::default()
            },
        ] {
            assert!(GradScaler::new(config).is_err(), "{config:?}");
        }
    }
}
