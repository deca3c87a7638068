//! Training recipes (SPEC.md 5), scaled to the run's length: SGD with momentum 0.9, weight decay
//! 1e-4 and a multistep schedule (x0.1 at 50% and 75% of the epochs) for the ResNets; AdamW with
//! weight decay 0.06 and a cosine schedule with linear warmup and a cooldown at `min_lr` for the
//! transformers.

use revsnn_reference::{AdamWParams, SgdParams};

use crate::optim::OptimizerKind;
use crate::spec::ModelSpec;

/// How the learning rate moves over the epochs.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// `base * gamma^k` after the `k`-th milestone epoch.
    MultiStep { milestones: Vec<usize>, gamma: f64 },
    /// timm's per-epoch cosine: warmup from `min_lr` over `warmup` epochs, cosine over `cycle`
    /// epochs (counted from 0), then `min_lr` (the cooldown).
    Cosine {
        warmup: usize,
        cycle: usize,
        min_lr: f64,
    },
}

/// An optimizer and its schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub optimizer: OptimizerKind,
    pub base_lr: f64,
    pub schedule: Schedule,
}

impl Recipe {
    /// The family's recipe for a run of `epochs` epochs at batch size `batch`, with the base
    /// learning rate `lr` when given (defaults: SGD 0.1 at the paper's batch 32, scaled linearly
    /// with the batch size; AdamW 5e-4).
    pub fn for_spec(spec: &ModelSpec, epochs: usize, batch: usize, lr: Option<f64>) -> Recipe {
        let epochs = epochs.max(1);
        if spec.arch.is_resnet() {
            let base_lr = lr.unwrap_or(0.1 * batch as f64 / 32.0);
            Recipe {
                optimizer: OptimizerKind::Sgd(SgdParams {
                    lr: base_lr,
                    momentum: 0.9,
                    weight_decay: 1e-4,
                }),
                base_lr,
                schedule: Schedule::MultiStep {
                    milestones: vec![epochs / 2, epochs * 3 / 4]
                        .into_iter()
                        .filter(|&m| m > 0)
                        .collect(),
                    gamma: 0.1,
                },
            }
        } else {
            let base_lr = lr.unwrap_or(5e-4);
            // the paper: 20 warmup of 300 cosine + 10 cooldown epochs; scaled down
            let cooldown = epochs / 31;
            let warmup = (epochs * 2).div_ceil(31).min(epochs.saturating_sub(1));
            Recipe {
                optimizer: OptimizerKind::AdamW(AdamWParams::new(base_lr, 0.06)),
                base_lr,
                schedule: Schedule::Cosine {
                    warmup,
                    cycle: (epochs - cooldown).max(1),
                    min_lr: 1e-5_f64.min(base_lr),
                },
            }
        }
    }

    /// The learning rate of epoch `epoch` (counted from 0).
    pub fn lr(&self, epoch: usize) -> f64 {
        match &self.schedule {
            Schedule::MultiStep { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| epoch >= m).count();
                self.base_lr * gamma.powi(passed as i32)
            }
            Schedule::Cosine {
                warmup,
                cycle,
                min_lr,
            } => {
                if epoch < *warmup {
                    min_lr + epoch as f64 * (self.base_lr - min_lr) / *warmup as f64
                } else if epoch >= *cycle {
                    *min_lr
                } else {
                    let phase = std::f64::consts::PI * epoch as f64 / *cycle as f64;
                    min_lr + 0.5 * (self.base_lr - min_lr) * (1.0 + phase.cos())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet_steps_down_and_transformer_warms_up_then_decays() {
        let resnet = ModelSpec::preset("revsresnet21").unwrap();
        let recipe = Recipe::for_spec(&resnet, 8, 16, Some(0.1));
        assert_eq!(Recipe::for_spec(&resnet, 8, 16, None).lr(0), 0.05);
        assert_eq!(recipe.lr(0), 0.1);
        assert!((recipe.lr(4) - 0.01).abs() < 1e-12);
        assert!((recipe.lr(7) - 0.001).abs() < 1e-12);
        let former = ModelSpec::preset("revsformer-4-384").unwrap();
        let recipe = Recipe::for_spec(&former, 310, 64, None);
        assert!((recipe.lr(0) - 1e-5).abs() < 1e-12);
        assert!(
            (recipe.lr(20)
                - (1e-5
                    + 0.5 * (5e-4 - 1e-5) * (1.0 + (std::f64::consts::PI * 20.0 / 300.0).cos())))
            .abs()
                < 1e-12
        );
        assert_eq!(recipe.lr(305), 1e-5);
    }
}
