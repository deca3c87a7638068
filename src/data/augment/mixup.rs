//! Mixup with label smoothing as timm draws it (docs/recipes.md §5.1, §5.3): the soft targets,
//! the Beta-distributed mixing weight and its gamma variates; [`super::super::batch_rows`] mixes
//! the rows.

use revsnn_reference::testing::SplitMix64;

use crate::error::{Error, Result};

/// Label-smoothed one-hot rows `[B, num_classes]`: `1 - s + s/K` on the label, `s/K` elsewhere
/// (timm, docs/recipes.md §5.1, 5.3).
pub fn smooth_targets(labels: &[usize], num_classes: usize, smoothing: f32) -> Result<Vec<f32>> {
    let off = smoothing / num_classes as f32;
    let on = 1.0 - smoothing + off;
    let mut out = vec![off; labels.len() * num_classes];
    for (i, &l) in labels.iter().enumerate() {
        if l >= num_classes {
            return Err(Error::Usage(format!(
                "label {l} is outside [0, {num_classes})"
            )));
        }
        out[i * num_classes + l] = on;
    }
    Ok(out)
}

/// Mixup settings (timm `Mixup` with `cutmix_alpha=0`, mode `batch`; docs/recipes.md §5.1, 5.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mixup {
    /// Beta(alpha, alpha) for the mixing weight: 0.5 in all recipes.
    pub alpha: f64,
    /// Probability that a batch is mixed: 1.0 (CIFAR transformers), 0.5 (DVS).
    pub prob: f64,
    /// Label smoothing folded into the targets: 0.1.
    pub label_smoothing: f64,
}

impl Mixup {
    /// The CIFAR transformer setting (docs/recipes.md §5.1): alpha 0.5, prob 1.0, smoothing 0.1.
    pub fn cifar() -> Self {
        Mixup {
            alpha: 0.5,
            prob: 1.0,
            label_smoothing: 0.1,
        }
    }

    /// The DVS setting (docs/recipes.md §5.3): alpha 0.5, prob 0.5, smoothing 0.1.
    pub fn dvs() -> Self {
        Mixup {
            prob: 0.5,
            ..Mixup::cifar()
        }
    }
}

/// A standard gamma variate (Marsaglia and Tsang; boosted for shape < 1).
fn gamma(rng: &mut SplitMix64, shape: f64) -> f64 {
    if shape < 1.0 {
        let u = rng.next_f64().max(f64::MIN_POSITIVE);
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = rng.normal();
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = rng.next_f64().max(f64::MIN_POSITIVE);
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// A Beta(a, b) variate.
pub fn beta(rng: &mut SplitMix64, a: f64, b: f64) -> f64 {
    let x = gamma(rng, a);
    let y = gamma(rng, b);
    if x + y > 0.0 { x / (x + y) } else { 0.5 }
}

/// Draws timm's batch mixing weight: with probability `cfg.prob`, `lam ~ Beta(alpha, alpha)`,
/// else 1 (docs/recipes.md §5.1, 5.3).
pub fn mixup_lambda(cfg: &Mixup, rng: &mut SplitMix64) -> f64 {
    if rng.next_f64() < cfg.prob {
        beta(rng, cfg.alpha, cfg.alpha)
    } else {
        1.0
    }
}
