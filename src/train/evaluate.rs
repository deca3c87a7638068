//! Evaluation: loss, top-1 and top-5 accuracy of a network over a dataset, in eval mode with the
//! running statistics; and the scoring of logits that training reports per batch.

use std::sync::Arc;

use revsnn_reference::{Backend, Element};

use super::epoch::saw_every_sample;
use super::loader::{Loader, Plain};
use super::ranks::share;
use crate::data::Dataset;
use crate::error::Result;
use crate::model::Mode;
use crate::network::{Network, PassOptions};

/// Loss and accuracies over a dataset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalResult {
    pub loss: f64,
    pub acc1: f64,
    pub acc5: f64,
    pub samples: usize,
}

/// Evaluates `network` (eval mode, running statistics) on all of `data`.
pub fn evaluate<B: Backend>(
    backend: &B,
    network: &mut Network<B>,
    data: Arc<dyn Dataset>,
    batch: usize,
) -> Result<EvalResult> {
    let expected = data.len();
    EvalResult::of(score_share(backend, network, data, batch, 0, 1)?, expected)
}

/// The score of `network` (eval mode, running statistics) on rank `rank`'s share of `data` in
/// a data-parallel evaluation by `world` ranks: of each batch of `batch` samples in order, its
/// contiguous share ([`share`]); the ranks' scores sum to that of the whole.
pub fn score_share<B: Backend>(
    backend: &B,
    network: &mut Network<B>,
    data: Arc<dyn Dataset>,
    batch: usize,
    rank: usize,
    world: usize,
) -> Result<Score> {
    let all: Vec<usize> = (0..data.len()).collect();
    let order: Vec<usize> = all
        .chunks(batch.max(1))
        .flat_map(|chunk| chunk[share(chunk.len(), rank, world)].to_vec())
        .collect();
    let eval = PassOptions {
        mode: Mode::Eval,
        update_running_stats: false,
        audit: false,
        loss_scale: 1.0,
    };
    let mut total = Score::default();
    let share_batch = batch.div_ceil(world);
    let batches = Loader::new(
        Arc::new(Plain(data.clone())),
        order,
        share_batch,
        false,
        1,
        2,
        0,
    )?;
    let expected = batches.samples();
    for next in batches {
        let next = next?;
        let images = batch_tensor(backend, data.as_ref(), next.images, next.labels.len())?;
        let logits = network.forward(backend, &images, eval)?;
        total += Score::of(&widened(backend, &logits)?, &next.labels);
    }
    saw_every_sample("evaluation", total.samples, expected)?;
    Ok(total)
}

impl EvalResult {
    /// The result of `total`, the score of a pass over a dataset of `expected` samples; an
    /// error unless it saw them all.
    pub fn of(total: Score, expected: usize) -> Result<EvalResult> {
        saw_every_sample("evaluation", total.samples, expected)?;
        let n = total.samples.max(1) as f64;
        Ok(EvalResult {
            loss: total.loss / n,
            acc1: total.top1 as f64 / n,
            acc5: total.top5 as f64 / n,
            samples: total.samples,
        })
    }
}

/// Summed cross-entropy, top-1 and top-5 hits over the samples scored so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Score {
    pub loss: f64,
    pub top1: usize,
    pub top5: usize,
    pub samples: usize,
}

impl Score {
    /// The score of logits `[B, K]` against `labels`.
    pub fn of(logits: &[f64], labels: &[usize]) -> Score {
        let classes = logits.len() / labels.len().max(1);
        let mut score = Score {
            samples: labels.len(),
            ..Score::default()
        };
        for (row, &label) in logits.chunks_exact(classes).zip(labels) {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
            score.loss += max + sum.ln() - row[label];
            let better = row.iter().filter(|&&v| v > row[label]).count();
            score.top1 += usize::from(better == 0);
            score.top5 += usize::from(better < 5);
        }
        score
    }
}

impl std::ops::AddAssign for Score {
    fn add_assign(&mut self, other: Score) {
        self.loss += other.loss;
        self.top1 += other.top1;
        self.top5 += other.top5;
        self.samples += other.samples;
    }
}

/// A batch of `count` samples of `data` as a tensor `[count, ...sample shape]`.
pub fn batch_tensor<B: Backend>(
    backend: &B,
    data: &dyn Dataset,
    images: Vec<f32>,
    count: usize,
) -> Result<B::Tensor> {
    let mut shape = vec![count];
    shape.extend(data.sample_shape());
    Ok(backend.tensor_from_vec(&shape, cast(images))?)
}

/// `values` in the backend's element type.
pub fn cast<E: Element>(values: Vec<f32>) -> Vec<E> {
    values.into_iter().map(|v| E::cast(f64::from(v))).collect()
}

/// The elements of `tensor`, widened to f64.
pub fn widened<B: Backend>(backend: &B, tensor: &B::Tensor) -> Result<Vec<f64>> {
    Ok(backend
        .to_vec(tensor)?
        .into_iter()
        .map(Element::widen)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_count_top1_and_top5() {
        // rows of 7 classes: label 6 is the best; label 0 is second; label 1 is sixth
        let logits = [
            0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 6.0, 1.0, 2.0,
            3.0, 4.0, 5.0, 7.0,
        ];
        let score = Score::of(&logits, &[6, 0, 1]);
        assert_eq!((score.top1, score.top5, score.samples), (1, 2, 3));
        assert!(score.loss > 0.0);
    }
}
