//! One epoch of training: the epoch's shuffled, augmented batches, one optimizer step each (in
//! fp16, a step the loss scaler skips when its gradients overflow), and the statistics the
//! metrics report.

use std::path::Path;
use std::time::Instant;

use revsnn_reference::{Backend, Element, Precision, TransfersPerStep};

use super::config::RunSettings;
use super::evaluate::{Score, batch_tensor, cast, widened};
use super::loader::{Batch, Loader, shuffled};
use super::pipeline::TrainSet;
use super::progress::Progress;
use super::ranks::Rank;
use super::shuffle_seed;
use crate::data::Dataset;
use crate::device::Compute;
use crate::error::{BatchSetting, Error, Result, RunPlace, counted};
use crate::grad_scaler::{GradScaler, GradScalerConfig, StepAction};
use crate::model::probes::DivergedRecomputes;
use crate::model::{BuildOptions, FinalGrads, Grads, StepOutput, Targets};
use crate::network::{Network, PassOptions, StepHooks, StepReport};
use crate::optim::Optimizer;
use crate::spec::ModelSpec;

/// The network being trained, its optimizer and, in fp16, its loss scaler.
pub struct Learner<B: Backend> {
    pub network: Network<B>,
    pub optimizer: Optimizer<B>,
    /// fp16's dynamic loss scaling (docs/precision.md, "Loss scaling"); `None` in the other
    /// precisions.
    pub scaler: Option<GradScaler>,
}

impl<B: Backend> Learner<B> {
    /// `spec` with fresh weights from the run's seed, a fresh optimizer of the run's kind and,
    /// in fp16, a loss scaler with PyTorch's defaults.
    pub fn new(backend: &B, spec: &ModelSpec, config: &RunSettings) -> Result<Learner<B>> {
        let network = Network::new(backend, spec, config.seed, BuildOptions::default())?;
        let optimizer = Optimizer::new(config.optimizer, &network.store);
        let scaler = match config.precision {
            Precision::Fp16 => Some(GradScaler::new(GradScalerConfig::default())?),
            _ => None,
        };
        Ok(Learner {
            network,
            optimizer,
            scaler,
        })
    }
}

/// What an epoch of training measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EpochStats {
    /// The sum over the epoch's images of their batch's mean loss.
    pub loss_sum: f64,
    /// Top-1 hits of the training-mode logits.
    pub hits: usize,
    /// Images trained on.
    pub images: usize,
    /// Wall time of the epoch's training (all queued work finished).
    pub seconds: f64,
    /// Seconds the loader's workers spent assembling the epoch's batches, summed over workers.
    pub loader_busy_seconds: f64,
    /// The samples this rank's loader delivered in those seconds: the global batches on the
    /// leader of thread ranks (or alone), a rank's shares on a rank of its own process.
    pub loader_images: usize,
    /// Seconds the training loop waited for the loader's next batch.
    pub loader_wait_seconds: f64,
    /// Steps the fp16 loss scaler skipped (their gradients overflowed).
    pub skipped_steps: usize,
    /// The fp16 loss scale at the end of the epoch (`None` in the other precisions).
    pub loss_scale: Option<f32>,
    /// F and G recomputes of the reversible backwards whose spikes differed from their
    /// forward's (docs/reversible.md §3.6); 0 for a model without
    /// reversible blocks.
    pub diverged_recomputes: usize,
    /// F and G recomputes compared with their forward, diverged or not.
    pub recomputes: usize,
    /// On a device the host waits for (CUDA): the times per step it waited for the device, and
    /// copied to it (docs/ARCHITECTURE.md, host-device round trips); `None` on the CPU.
    pub transfers_per_step: Option<TransfersPerStep>,
    /// On CUDA, the allocations of the epoch, its evaluation included, that found the device
    /// full and were retried after its memory pool released the blocks it kept
    /// (`TransferCounts::alloc_retries`); `None` on the CPU.
    pub alloc_retries: Option<u64>,
}

impl EpochStats {
    /// The mean training loss.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.images.max(1) as f64
    }

    /// The top-1 accuracy on the training batches.
    pub fn acc1(&self) -> f64 {
        self.hits as f64 / self.images.max(1) as f64
    }

    /// Adds a step of `count` images that measured `outcome`.
    fn add_step(&mut self, count: usize, outcome: &StepOutcome) {
        self.skipped_steps += usize::from(outcome.skipped);
        self.loss_sum += outcome.loss * count as f64;
        self.hits += outcome.score.top1;
        self.images += count;
    }

    /// Images one loader worker assembles per second (0 when the loader did no measurable work).
    pub fn loader_images_per_second_per_worker(&self) -> f64 {
        if self.loader_busy_seconds > 0.0 {
            self.loader_images as f64 / self.loader_busy_seconds
        } else {
            0.0
        }
    }
}

/// `--batch` must leave at least one full batch of the `samples` training samples.
pub fn check_batch(config: &RunSettings, samples: usize) -> Result<()> {
    if samples / config.batch == 0 {
        return Err(Error::Usage(format!(
            "--batch {} is larger than the {samples} training samples; lower --batch or raise \
             --train-samples",
            config.batch
        )));
    }
    Ok(())
}

/// Trains `learner` as `rank` for epoch `epoch` (from 0) of the run `config` on `data`: full
/// batches in the epoch's shuffled order, the rank's share of each ([`Rank::shares`]), one
/// optimizer step each at the epoch's learning rate with the gradients averaged over the ranks.
/// A non-finite loss, or a NaN or infinity in the parameters after an optimizer step (one
/// reduction over the store, read once per step), stops training with an error that says what
/// to do; the last checkpoint, of the epoch before, stays as it was. The statistics returned
/// are summed over the ranks.
pub fn train_epoch<B: Compute>(
    backend: &B,
    learner: &mut Learner<B>,
    data: &TrainSet,
    config: &RunSettings,
    epoch: usize,
    quiet: bool,
    rank: &Rank<B>,
) -> Result<EpochStats> {
    let samples = &data.split.data;
    let steps = samples.len() / config.batch;
    let mut progress = Progress::new(
        format!("epoch {}/{}", epoch + 1, config.epochs),
        steps,
        quiet || !rank.is_leader(),
    );
    let start = Instant::now();
    let classes = learner.network.spec.num_classes;
    let mut batches = rank.shares(|| epoch_loader(data, classes, config, epoch, rank), steps)?;
    let lr = config.lr(epoch);
    let mut stats = EpochStats::default();
    let mut diverged = DivergedRecomputes::default();
    let transfers_before = backend.transfer_counts();
    for step in 0.. {
        let waiting = Instant::now();
        let Some(batch) = batches.next() else { break };
        let place = StepPlace {
            epoch,
            step,
            lr,
            out: &config.out,
        };
        // checked once a step is due, so that a finished epoch is always evaluated and saved
        if rank.stop_due() {
            return Err(place.interrupted());
        }
        stats.loader_wait_seconds += waiting.elapsed().as_secs_f64();
        let batch = batch?;
        let count = batch.labels.len();
        let outcome = checked_step(
            backend,
            learner,
            &**samples,
            batch,
            place,
            rank,
            &mut diverged,
        )
        .map_err(|error| place.out_of_memory(error, count, config))?;
        stats.add_step(count, &outcome);
        progress.update(step + 1, stats.images, stats.loss(), stats.acc1());
    }
    stats.transfers_per_step = transfers_before
        .zip(backend.transfer_counts())
        .map(|(before, after)| after.since(before).per_step(steps));
    backend.synchronize()?;
    stats.diverged_recomputes = diverged.read(backend)?;
    stats.recomputes = diverged.compared();
    stats.loader_busy_seconds = batches.busy_seconds();
    stats.loader_images = batches.delivered();
    saw_every_sample(
        &format!("training epoch {}", epoch + 1),
        stats.images,
        steps * config.batch / rank.world(),
    )?;
    stats.seconds = start.elapsed().as_secs_f64();
    stats.loss_scale = learner.scaler.map(|scaler| scaler.scale());
    rank.sum_stats(stats)
}

/// The loader of epoch `epoch`'s training batches of `data` (labels of `classes` classes) for
/// `rank`: full batches of the run's size in the epoch's shuffled order, augmented on the run's
/// workers.
fn epoch_loader<B: Compute>(
    data: &TrainSet,
    classes: usize,
    config: &RunSettings,
    epoch: usize,
    rank: &Rank<B>,
) -> Result<Loader> {
    let seed = shuffle_seed(config.seed, epoch);
    let source = rank.source(data.source(epoch, classes));
    let order = shuffled(data.split.data.len(), seed);
    Loader::new(
        source,
        order,
        config.batch,
        true,
        config.workers,
        config.prefetch,
        seed,
    )
}

/// fp16 loss scaling after a backward whose loss was multiplied by `scaler.scale()`: gradients
/// holding an infinity or a NaN skip the step, otherwise they are divided by that scale; either
/// way the scaler updates its scale (PyTorch's `GradScaler.step` and `update`). A scale that
/// falls below 1 is [`Error::LossScaleCollapsed`].
fn unscale<B: Backend>(
    backend: &B,
    scaler: &mut GradScaler,
    grads: &mut Grads<B>,
) -> Result<StepAction> {
    let scale = scaler.scale();
    let found_non_finite = backend.count_non_finite(&grads.tensors())? > 0;
    let action = scaler.update(found_non_finite)?;
    if action == StepAction::Apply {
        grads.scale(backend, B::Elem::cast(1.0 / f64::from(scale)))?;
    }
    Ok(action)
}

/// An [`Error::IncompleteData`] unless a pass over data that should see `expected` samples saw
/// `seen`.
pub fn saw_every_sample(pass: &str, seen: usize, expected: usize) -> Result<()> {
    if seen == expected {
        Ok(())
    } else {
        Err(Error::IncompleteData {
            pass: pass.into(),
            seen,
            expected,
        })
    }
}

/// Where a step is in the run, for its error messages.
#[derive(Clone, Copy)]
struct StepPlace<'a> {
    /// The epoch, from 0.
    epoch: usize,
    /// The step of the epoch, from 0.
    step: usize,
    lr: f64,
    /// The run folder.
    out: &'a Path,
}

impl StepPlace<'_> {
    /// [`Error::Diverged`]: `what` happened at this step, and the run folder keeps the
    /// checkpoint of the epoch before.
    fn diverged(&self, what: String) -> Error {
        Error::Diverged {
            what,
            saved: self.epoch,
            out: self.out.display().to_string(),
        }
    }

    /// [`Error::Interrupted`]: Ctrl-C stopped training before this step.
    fn interrupted(&self) -> Error {
        Error::Interrupted {
            epoch: self.epoch + 1,
            step: self.step + 1,
            saved: self.epoch,
            out: self.out.display().to_string(),
        }
    }

    /// `error` of this step on `count` samples of a run of `config`, as
    /// [`Error::OutOfDeviceMemory`] when the device ran out of memory.
    fn out_of_memory(&self, error: Error, count: usize, config: &RunSettings) -> Error {
        error.in_run_out_of_memory(|| RunPlace {
            during: format!("the training step at {self}"),
            batch: count,
            lower: BatchSetting::training(config.batch, config.ranks),
            saved: self.epoch,
            out: self.out.display().to_string(),
        })
    }
}

/// "epoch E, step S (lr L)", counted from 1, the lr with at most 4 significant digits: in
/// scientific notation when non-zero and outside `[1e-4, 1e4)`, else in plain decimals
/// (0.010000000000000002, a cosine schedule's value, as 0.01).
impl std::fmt::Display for StepPlace<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (epoch, step) = (self.epoch + 1, self.step + 1);
        write!(
            f,
            "epoch {epoch}, step {step} (lr {})",
            four_digits(self.lr)
        )
    }
}

/// `x` with at most 4 significant digits and no trailing zeros: in scientific notation when
/// non-zero and outside `[1e-4, 1e4)`, else in plain decimals.
fn four_digits(x: f64) -> String {
    let magnitude = x.abs();
    if magnitude == 0.0 || !magnitude.is_finite() {
        return format!("{x}");
    }
    if !(1e-4..1e4).contains(&magnitude) {
        let scientific = format!("{x:.3e}");
        let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exponent}");
    }
    let decimals = (3 - magnitude.log10().floor() as i32).max(0) as usize;
    let fixed = format!("{x:.decimals$}");
    match fixed.contains('.') {
        true => fixed.trim_end_matches('0').trim_end_matches('.').into(),
        false => fixed,
    }
}

/// What one optimizer step measured.
struct StepOutcome {
    /// The batch's mean loss (unscaled).
    loss: f64,
    score: Score,
    /// Whether fp16's loss scaler skipped the step (its gradients overflowed).
    skipped: bool,
}

/// One optimizer step of `learner` as `rank` on `batch` (of samples of `data`): its mean loss
/// and the score of its logits. The gradients are averaged over the ranks first, so every rank
/// takes the same step. In fp16 the loss is scaled, and the averaged gradients are unscaled or
/// the step skipped on every rank alike ([`unscale`]: one read of the gradients' non-finite
/// count). With several ranks the step also carries their vote on stopping
/// ([`Rank::start_stop_vote`]). The optimizer step is queued before anything else is read back,
/// the wait for the ranks' all-reduces included (in fp16 the unscaling reads first), so the
/// device runs the whole step without waiting for the host; then one read brings the loss, the
/// logits and the vote, and one the parameters' non-finite count. A non-finite loss is
/// reported first, as the step that produced it (the stepped parameters are never saved), then
/// non-finite parameters. The step's diverged recomputes are counted on top of `counted`.
fn checked_step<B: Compute>(
    backend: &B,
    learner: &mut Learner<B>,
    data: &dyn Dataset,
    batch: Batch,
    place: StepPlace,
    rank: &Rank<B>,
    counted: &mut DivergedRecomputes<B>,
) -> Result<StepOutcome> {
    let labels = batch.labels.clone();
    let loss_scale = learner.scaler.map_or(1.0, |scaler| scaler.scale());
    let network = &mut learner.network;
    let stop_votes = rank.start_stop_vote(backend)?;
    let mut reducer = rank.grad_reducer(network.store.entries().len());
    let hooks = StepHooks {
        sync_batch_norm: rank.sync_batch_norm(),
        final_grads: reducer.as_mut().map(|r| r as &mut dyn FinalGrads<B>),
        diverged_recomputes: std::mem::take(counted),
    };
    let (report, mut grads) = forward_backward(backend, network, data, batch, loss_scale, hooks)?;
    let output = report.output;
    *counted = report.diverged_recomputes;
    rank.average_grads(reducer, backend, &mut grads)?;
    let skipped = match &mut learner.scaler {
        Some(scaler) => {
            rank.wait_collectives(backend)?;
            unscale(backend, scaler, &mut grads)? == StepAction::Skip
        }
        None => false,
    };
    let store = &mut learner.network.store;
    if !skipped {
        learner.optimizer.step(backend, store, &grads, place.lr)?;
    }
    rank.wait_collectives(backend)?;
    let (loss, score, votes) = read_step(backend, &output, &labels, stop_votes.as_ref())?;
    rank.record_stop_votes(votes);
    let non_finite = if skipped {
        0
    } else {
        store.count_non_finite(backend)?
    };
    if !loss.is_finite() {
        return Err(diverged(loss, &place));
    }
    if non_finite > 0 {
        return Err(parameters_diverged(non_finite, &place));
    }
    Ok(StepOutcome {
        loss,
        score,
        skipped,
    })
}

/// Forward, loss and backward of `batch` (of samples of `data`), on its soft targets where it
/// has them, else its labels, as the rank `hooks` describes (BatchNorm statistics synchronised,
/// gradients handed to the all-reduce as they become final, diverged recomputes counted on): the
/// step's report (still where the backend computes) and the parameter gradients of `loss_scale`
/// times the loss.
fn forward_backward<B: Backend>(
    backend: &B,
    network: &mut Network<B>,
    data: &dyn Dataset,
    batch: Batch,
    loss_scale: f32,
    hooks: StepHooks<'_, B>,
) -> Result<(StepReport<B>, Grads<B>)> {
    let count = batch.labels.len();
    let images = batch_tensor(backend, data, batch.images, count)?;
    let mut grads = network.zero_grads();
    let run = PassOptions {
        loss_scale,
        ..PassOptions::default()
    };
    let soft = match batch.targets {
        Some(rows) => {
            let shape = [count, rows.len() / count.max(1)];
            Some(backend.tensor_from_vec(&shape, cast(rows))?)
        }
        None => None,
    };
    let targets = match &soft {
        Some(rows) => Targets::Soft(rows),
        None => Targets::Hard(&batch.labels),
    };
    let report = network.train_step_hooked(backend, &mut grads, &images, targets, run, hooks)?;
    Ok((report, grads))
}

/// The mean loss of a step, the score of its logits against `labels` and the count of the
/// ranks' `stop_votes` (0 without), read back together: one transfer (on a GPU, one wait for
/// the queued work).
fn read_step<B: Backend>(
    backend: &B,
    output: &StepOutput<B>,
    labels: &[usize],
    stop_votes: Option<&B::Tensor>,
) -> Result<(f64, Score, f64)> {
    let logits = backend.reshape(
        &output.logits,
        &[backend.shape(&output.logits).iter().product()],
    )?;
    let mut parts = vec![&logits, &output.loss];
    parts.extend(stop_votes);
    let mut values = widened(backend, &backend.concat(&parts, 0)?)?;
    let votes = match stop_votes {
        Some(_) => values.pop().unwrap_or(0.0),
        None => 0.0,
    };
    let loss = values.pop().unwrap_or(f64::NAN);
    Ok((loss, Score::of(&values, labels), votes))
}

/// The error of a training loss that became `loss` at `place`.
fn diverged(loss: f64, place: &StepPlace) -> Error {
    place.diverged(format!("the training loss became {loss} at {place}"))
}

/// The error of `count` parameter values that became NaN or infinite at `place`.
fn parameters_diverged(count: u64, place: &StepPlace) -> Error {
    let values = counted(count as usize, "parameter value", "parameter values");
    place.diverged(format!(
        "{values} became NaN or infinite after the optimizer step at {place}"
    ))
}

#[cfg(test)]
mod tests {
    use super::four_digits;

    #[test]
    fn learning_rates_print_with_at_most_four_significant_digits() {
        for (lr, shown) in [
            (0.010000000000000002, "0.01"),
            (0.1, "0.1"),
            (0.0003456789, "0.0003457"),
            (0.00009876, "9.876e-5"),
            (1e29, "1e29"),
            (-2.5, "-2.5"),
            (1234.5678, "1235"),
            (0.0, "0"),
            (-0.0, "-0"),
            (9999.7, "10000"),
            (f64::INFINITY, "inf"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(four_digits(lr), shown, "{lr}");
        }
    }
}
