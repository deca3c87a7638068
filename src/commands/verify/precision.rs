//! `verify --precision P`: a forward in `P` against the `f64` reference on the same weights and
//! images (docs/precision.md, "Bounds against f64"): the logits' and the loss's errors, the spikes
//! that differ, and the bound the format's unit roundoff gives the logits while no spike differs.
//!
//! The bound holds for the spiking ResNets, whose head reads spikes: with every spike equal to the
//! reference's, the head's input `x_t = mean over H, W of the last spikes` lies in `[0, 1]` and
//! is the reference's up to one `f32` rounding, so the only other errors are the head's: operands
//! `W` and `x_t` rounded to the format (relative `u` each; their product is exact in `f32`), an
//! `f32` sum over `C` channels and the bias, and the `f32` mean over `T` steps. For logit `i`:
//!
//! ```text
//! |z_i - z_i^f64| <= theta (||W_i||_1 + |b_i|),   theta = (1 + u)^2 (1 + gamma_n) - 1,
//! n = C + T + 1,  gamma_n = n u_32 / (1 - n u_32) + n u_64 / (1 - n u_64)
//! ```
//!
//! and the mean cross-entropy moves by at most `2 max_i |dz_i|` (its gradient `softmax - onehot`
//! has an L1 norm below 2), plus its own `f32` evaluation, `(K + 4) u_32 (|L| + max |z|)`.
//! The transformers' heads read the real-valued residual stream, whose error no such closed form
//! bounds: their errors are reported without a bound.

use revsnn_reference::{Backend, Element, Precision};

use crate::checkpoint;
use crate::error::Result;
use crate::model::Mode;
use crate::network::{Network, PassOptions};
use crate::spec::ModelSpec;
use crate::train::evaluate::widened;

/// A forward in a precision against the `f64` reference.
#[derive(Clone, Debug, PartialEq)]
pub struct PrecisionReport {
    /// The precision compared.
    pub precision: Precision,
    /// `max |z - z_ref|` over the batch's logits.
    pub logits_max_abs_err: f64,
    /// `max |z_ref|`, the scale of the logits.
    pub logits_max_abs: f64,
    /// `|L - L_ref|`, the mean cross-entropy's error.
    pub loss_abs_err: f64,
    /// Spikes that differ from the reference forward's.
    pub spike_flips: u64,
    /// Spikes compared.
    pub spikes_compared: u64,
    /// The bounds on the logits' and the loss's errors, for a head that reads spikes.
    pub bounds: Option<ErrorBounds>,
}

/// The bounds of the module documentation for one model, batch and precision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorBounds {
    pub logits: f64,
    pub loss: f64,
}

impl PrecisionReport {
    /// Whether the errors are within their bounds: `None` when no bound applies (a head that
    /// reads real-valued features, or spikes that differ from the reference's).
    pub fn within_bounds(&self) -> Option<bool> {
        let bounds = self.holding_bounds()?;
        Some(self.logits_max_abs_err <= bounds.logits && self.loss_abs_err <= bounds.loss)
    }

    /// The bounds, where they hold: a bound in `u` holds only while no spike differs from the
    /// reference's (docs/precision.md, "Bounds against f64").
    fn holding_bounds(&self) -> Option<ErrorBounds> {
        self.bounds.filter(|_| self.spike_flips == 0)
    }
}

impl PrecisionReport {
    /// The report as the `versus_f64` object of `verify --json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "precision": self.precision.name(),
            "logits_max_abs_err": self.logits_max_abs_err,
            "logits_max_abs": self.logits_max_abs,
            "loss_abs_err": self.loss_abs_err,
            "spike_flips": self.spike_flips,
            "spikes_compared": self.spikes_compared,
            "logits_bound": self.bounds.map(|b| b.logits),
            "loss_bound": self.bounds.map(|b| b.loss),
            "within_bounds": self.within_bounds(),
        })
    }

    /// The report as lines of `verify`'s table, each error with its own bound and verdict.
    pub fn print_table(&self) {
        let verdict = |error: f64, bound: Option<f64>| match (bound, self.holding_bounds()) {
            (None, _) => "no bound: the head reads real values",
            (Some(_), None) => "bound void: spikes differ",
            (Some(bound), Some(_)) if error <= bound => "ok",
            _ => "FAILED",
        };
        let shown = |b: Option<f64>| b.map_or("-".to_string(), |b| format!("{b:.1e}"));
        let (logits, loss) = (self.bounds.map(|b| b.logits), self.bounds.map(|b| b.loss));
        println!(
            "  {} vs f64: spikes differing     {:>10} of {}",
            self.precision, self.spike_flips, self.spikes_compared
        );
        println!(
            "  {} vs f64: logits max abs. error {:>10.3e}  (bound {}, max |z| {:.3})  {}",
            self.precision,
            self.logits_max_abs_err,
            shown(logits),
            self.logits_max_abs,
            verdict(self.logits_max_abs_err, logits)
        );
        println!(
            "  {} vs f64: loss abs. error       {:>10.3e}  (bound {})  {}",
            self.precision,
            self.loss_abs_err,
            shown(loss),
            verdict(self.loss_abs_err, loss)
        );
    }
}

/// `theta` of the module documentation for a head of `channels` inputs over `time_steps`.
pub fn head_error_factor(precision: Precision, channels: usize, time_steps: usize) -> f64 {
    let n = (channels + time_steps + 1) as f64;
    let gamma = |unit: f64| n * unit / (1.0 - n * unit);
    let u = precision.unit_roundoff();
    (1.0 + u).powi(2) * (1.0 + gamma(f64::from(f32::EPSILON) / 2.0) + gamma(f64::EPSILON / 2.0))
        - 1.0
}

/// The forward of `spec` (random weights of `seed`, a random batch) on `backend`, in its
/// precision, against the same weights and images on `reference` (`f64`, full precision):
/// training-mode BatchNorm that leaves the running statistics alone, as a training step's forward.
pub fn compare_with_f64<B: Backend, R: Backend>(
    backend: &B,
    reference: &R,
    spec: &ModelSpec,
    seed: u64,
    batch: usize,
) -> Result<PrecisionReport> {
    let mut network = Network::new(backend, spec, seed, Default::default())?;
    let mut truth = Network::new(reference, spec, seed, Default::default())?;
    let weights = checkpoint::state_dict(backend, &network.store)?;
    checkpoint::load_state_dict(reference, &mut truth.store, &weights)?;
    let (shape, values, labels) = super::random_batch(spec, batch, seed)?;
    let images: Vec<B::Elem> = values.into_iter().map(B::Elem::cast).collect();
    let exact: Vec<R::Elem> = images.iter().map(|v| R::Elem::cast(v.widen())).collect();
    let pass = PassOptions {
        mode: Mode::Train,
        update_running_stats: false,
        ..PassOptions::default()
    };
    let (logits, spikes) =
        network.forward_with_spikes(backend, &backend.tensor_from_vec(&shape, images)?, pass)?;
    let (logits_ref, spikes_ref) =
        truth.forward_with_spikes(reference, &reference.tensor_from_vec(&shape, exact)?, pass)?;
    let (loss, _) = backend.cross_entropy_forward(&logits, &labels)?;
    let (loss_ref, _) = reference.cross_entropy_forward(&logits_ref, &labels)?;
    let (z, z_ref) = (widened(backend, &logits)?, widened(reference, &logits_ref)?);
    let (mut spike_flips, mut spikes_compared) = (0, 0);
    for (a, b) in spikes.iter().zip(&spikes_ref) {
        let (a, b) = (widened(backend, a)?, widened(reference, b)?);
        spikes_compared += a.len() as u64;
        spike_flips += a.iter().zip(&b).filter(|(x, y)| x != y).count() as u64;
    }
    let logits_max_abs = z_ref.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let loss_ref = loss_ref.widen();
    let bounds = spiking_head_bounds(backend, &network, spec, loss_ref, logits_max_abs)?;
    Ok(PrecisionReport {
        precision: backend.precision(),
        logits_max_abs_err: z
            .iter()
            .zip(&z_ref)
            .fold(0.0, |m, (a, b)| m.max((a - b).abs())),
        logits_max_abs,
        loss_abs_err: (loss.widen() - loss_ref).abs(),
        spike_flips,
        spikes_compared,
        bounds,
    })
}

/// The bounds of the module documentation when `network`'s head reads spikes (its `fc` layer:
/// the spiking ResNets), else `None`.
fn spiking_head_bounds<B: Backend>(
    backend: &B,
    network: &Network<B>,
    spec: &ModelSpec,
    loss: f64,
    logits_max_abs: f64,
) -> Result<Option<ErrorBounds>> {
    let store = &network.store;
    let (Some(weight), Some(bias)) = (store.id_of("fc.weight"), store.id_of("fc.bias")) else {
        return Ok(None);
    };
    let (weight, bias) = (
        widened(backend, store.get(weight))?,
        widened(backend, store.get(bias))?,
    );
    let channels = weight.len() / bias.len().max(1);
    let theta = head_error_factor(backend.precision(), channels, spec.time_steps);
    let largest_row = weight
        .chunks(channels.max(1))
        .zip(&bias)
        .map(|(row, b)| row.iter().map(|w| w.abs()).sum::<f64>() + b.abs())
        .fold(0.0, f64::max);
    let logits = theta * largest_row;
    let evaluation = (bias.len() + 4) as f64 * f64::from(f32::EPSILON) / 2.0;
    Ok(Some(ErrorBounds {
        logits,
        loss: 2.0 * logits + evaluation * (loss.abs() + logits_max_abs),
    }))
}
