//! One epoch of training: the epoch's shuffled, augmented batches, one optimizer step each, and
//! the statistics the metrics report.

use std::path::Path;
use std::time::Instant;

use revsnn_reference::{Backend, Element};

use super::config::RunSettings;
use super::evaluate::{Score, batch_tensor, cast, widened};
use super::loader::{Batch, Loader, shuffled};
use super::pipeline::TrainSet;
use super::progress::Progress;
use super::ranks::Rank;
use super::shuffle_seed;
use crate::collective::Collective;
use crate::data::Dataset;
use crate::device::Compute;
use crate::error::{Error, Result};
use crate::model::{BuildOptions, Grads, Targets};
use crate::network::{Network, PassOptions};
use crate::optim::Optimizer;
use crate::spec::ModelSpec;

/// The network being trained and its optimizer.
pub struct Learner<B: Backend> {
    pub network: Network<B>,
    pub optimizer: Optimizer<B>,
}

impl<B: Backend> Learner<B> {
    /// `spec` with fresh weights from the run's seed and a fresh optimizer of the run's kind.
    pub fn new(backend: &B, spec: &ModelSpec, config: &RunSettings) -> Result<Learner<B>> {
        let network = Network::new(backend, spec, config.seed, BuildOptions::default())?;
        let optimizer = Optimizer::new(config.optimizer, &network.store);
        Ok(Learner { network, optimizer })
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
    let lr = config.lr(epoch);
    let samples = data.split.data.clone();
    let seed = shuffle_seed(config.seed, epoch);
    let steps = samples.len() / config.batch;
    let mut progress = Progress::new(
        format!("epoch {}/{}", epoch + 1, config.epochs),
        steps,
        quiet || !rank.is_leader(),
    );
    let start = Instant::now();
    let classes = learner.network.spec.num_classes;
    let open_loader = || {
        let source = data.source(epoch, classes);
        let order = shuffled(samples.len(), seed);
        Loader::new(
            source,
            order,
            config.batch,
            true,
            config.workers,
            config.prefetch,
            seed,
        )
    };
    let batches = rank.shares(open_loader, steps)?;
    let mut stats = EpochStats::default();
    for (step, batch) in batches.enumerate() {
        let batch = batch?;
        let count = batch.labels.len();
        let (loss, score, mut grads) = forward_backward(
            backend,
            &mut learner.network,
            &*samples,
            batch,
            rank.sync_batch_norm(),
        )?;
        if !loss.is_finite() {
            return Err(diverged(loss, epoch, step, lr, &config.out));
        }
        rank.average_grads(backend, &mut grads)?;
        learner
            .optimizer
            .step(backend, &mut learner.network.store, &grads, lr)?;
        let non_finite = learner.network.store.count_non_finite(backend)?;
        if non_finite > 0 {
            return Err(Error::ParametersDiverged {
                count: non_finite,
                epoch: epoch + 1,
                epoch_before: epoch,
                step: step + 1,
                lr,
                out: config.out.display().to_string(),
            });
        }
        stats.loss_sum += loss * count as f64;
        stats.hits += score.top1;
        stats.images += count;
        progress.update(step + 1, stats.images, stats.loss(), stats.acc1());
    }
    backend.synchronize()?;
    saw_every_sample(
        &format!("training epoch {}", epoch + 1),
        stats.images,
        steps * config.batch / rank.world(),
    )?;
    stats.seconds = start.elapsed().as_secs_f64();
    rank.sum_stats(stats)
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

/// Forward, loss and backward of `batch` (of samples of `data`), on its soft targets where it
/// has them, else its labels, with BatchNorm statistics synchronised over `sync_batch_norm`'s
/// ranks if given: the mean loss, the score of the logits against the labels, and the
/// parameter gradients.
fn forward_backward<B: Backend>(
    backend: &B,
    network: &mut Network<B>,
    data: &dyn Dataset,
    batch: Batch,
    sync_batch_norm: Option<&dyn Collective<B>>,
) -> Result<(f64, Score, Grads<B>)> {
    let count = batch.labels.len();
    let images = batch_tensor(backend, data, batch.images, count)?;
    let mut grads = network.zero_grads();
    let run = PassOptions::default();
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
    let report =
        network.train_step_synced(backend, &mut grads, &images, targets, run, sync_batch_norm)?;
    let score = Score::of(&widened(backend, &report.output.logits)?, &batch.labels);
    Ok((report.output.loss.widen(), score, grads))
}

/// The error of a training loss that became `loss` at step `step` of epoch `epoch` (from 0).
fn diverged(loss: f64, epoch: usize, step: usize, lr: f64, out: &Path) -> Error {
    Error::Usage(format!(
        "the training loss became {loss} at epoch {}, step {} (lr {lr}): training diverged and \
         stopped. The last good checkpoint is kept in {} (after epoch {epoch}); lower --lr and \
         start again, or --resume from it",
        epoch + 1,
        step + 1,
        out.display(),
    ))
}
