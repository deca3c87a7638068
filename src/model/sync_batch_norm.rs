//! Synchronised BatchNorm: training-mode statistics over the whole global batch of a
//! data-parallel run, PyTorch's `SyncBatchNorm` (docs/distributed.md §4.3).
//!
//! Built from the op contract as it is, so both backends run it unchanged: each rank's
//! training-mode forward gives its share's per-channel mean and unbiased variance, the ranks
//! exchange them (one all-reduce of a `[ranks, 2, C]` tensor holding each rank's row) and every
//! rank combines them in rank order into the global statistics, which an evaluation-mode forward
//! then applies. The backward's per-channel sums `sum dy` and `sum dy x_hat` (the evaluation-mode
//! backward's `beta` and `gamma` gradients) are all-reduced, and the input gradient
//! `gamma inv_std (dy - (sum dy + x_hat sum dy x_hat) / n)` subtracts the global part with one
//! more evaluation-mode forward: `gamma' x_hat + beta'` with per-channel `gamma'`, `beta'`. The
//! parameter gradients stay the rank's own sums; the gradient all-reduce averages them with the
//! rest. Each forward runs BatchNorm's normalisation twice (the local one only for its
//! statistics): the price of an unchanged contract.

use revsnn_reference::{
    Backend, BatchNormGrads, BatchNormParams, BatchNormTrainOutput, BatchStats, Element,
    RunningStats,
};

use crate::collective::Collective;
use crate::error::Result;

/// What the backward of a synchronised BatchNorm needs.
#[derive(Debug)]
pub struct SyncSaved<B: Backend> {
    /// The evaluation-mode context of the forward under the global statistics.
    context: B::BatchNormContext,
    input: B::Tensor,
    gamma: B::Tensor,
    /// The global mean and biased variance the forward normalised with.
    statistics: RunningStats<B::Tensor>,
    /// Values per channel over every rank.
    count: usize,
}

/// The training-mode forward of `x [N, C, ...]` with the statistics of every rank's `x`: the
/// output, the global batch statistics (for the running statistics) and the backward's context.
pub fn forward<B: Backend>(
    group: &dyn Collective<B>,
    backend: &B,
    x: &B::Tensor,
    gamma: &B::Tensor,
    beta: &B::Tensor,
    params: BatchNormParams,
) -> Result<BatchNormTrainOutput<B::Tensor, SyncSaved<B>>> {
    let (_, local, _) = backend.batch_norm_train_forward(x, gamma, beta, params)?;
    let shape = backend.shape(x);
    let per_rank = shape[0] * shape[2..].iter().product::<usize>();
    let rows = gather_rows(group, backend, &[&local.mean, &local.var_unbiased])?;
    let global = Global::combine(&rows, per_rank);
    let statistics = RunningStats {
        mean: vector(backend, &global.mean)?,
        var: vector(backend, &global.var_biased)?,
    };
    let (y, context) = backend.batch_norm_eval_forward(x, gamma, beta, &statistics, params)?;
    let batch = BatchStats {
        mean: statistics.mean.clone(),
        var_unbiased: vector(backend, &global.var_unbiased)?,
    };
    let saved = SyncSaved {
        context,
        input: x.clone(),
        gamma: gamma.clone(),
        statistics,
        count: per_rank * group.world_size(),
    };
    Ok((y, batch, saved))
}

/// The backward of [`forward`]: the input gradient through the global statistics, and this
/// rank's `gamma` and `beta` gradients.
pub fn backward<B: Backend>(
    group: &dyn Collective<B>,
    backend: &B,
    saved: SyncSaved<B>,
    grad_y: &B::Tensor,
    params: BatchNormParams,
) -> Result<BatchNormGrads<B::Tensor>> {
    // input: gamma inv_std dy; gamma: sum dy x_hat; beta: sum dy (this rank's)
    let local = backend.batch_norm_backward(grad_y, &saved.context)?;
    let sums = backend.concat(&[&local.beta, &local.gamma], 0)?;
    let sums = widened(backend, &group.all_reduce_sum(backend, &sums)?)?;
    let channels = sums.len() / 2;
    let (sum_dy, sum_dy_xhat) = sums.split_at(channels);
    let gamma = widened(backend, &saved.gamma)?;
    let var = widened(backend, &saved.statistics.var)?;
    let per_value = |c: usize| gamma[c] / (var[c] + params.eps).sqrt() / saved.count as f64;
    let slope: Vec<f64> = (0..channels)
        .map(|c| per_value(c) * sum_dy_xhat[c])
        .collect();
    let offset: Vec<f64> = (0..channels).map(|c| per_value(c) * sum_dy[c]).collect();
    let (global_part, _) = backend.batch_norm_eval_forward(
        &saved.input,
        &vector(backend, &slope)?,
        &vector(backend, &offset)?,
        &saved.statistics,
        params,
    )?;
    Ok(BatchNormGrads {
        input: backend.sub(&local.input, &global_part)?,
        gamma: local.gamma,
        beta: local.beta,
    })
}

/// Per-channel statistics of the global batch.
struct Global {
    mean: Vec<f64>,
    var_biased: Vec<f64>,
    var_unbiased: Vec<f64>,
}

impl Global {
    /// The statistics of the union of the ranks' shares, each of `per_rank` values per channel,
    /// from each rank's row `[mean; unbiased variance]`, combined in rank order (Chan et al.'s
    /// parallel variance: the squared deviations within each share plus each share's from the
    /// global mean).
    fn combine(rows: &[Vec<f64>], per_rank: usize) -> Global {
        let channels = rows.first().map_or(0, |row| row.len() / 2);
        let n = per_rank as f64;
        let total = n * rows.len() as f64;
        let mean: Vec<f64> = (0..channels)
            .map(|c| rows.iter().map(|row| row[c]).sum::<f64>() / rows.len() as f64)
            .collect();
        let squares: Vec<f64> = (0..channels)
            .map(|c| {
                rows.iter()
                    .map(|row| {
                        let deviation = row[c] - mean[c];
                        (n - 1.0) * row[channels + c] + n * deviation * deviation
                    })
                    .sum()
            })
            .collect();
        Global {
            var_biased: squares.iter().map(|s| s / total).collect(),
            var_unbiased: squares.iter().map(|s| s / (total - 1.0)).collect(),
            mean,
        }
    }
}

/// Every rank's `parts` (per-channel vectors) concatenated into one row, indexed by rank: an
/// all-reduce of a `[ranks, row]` tensor where each rank fills its own row with zeros around it
/// (adding zeros is exact, so every row arrives with its bits).
fn gather_rows<B: Backend>(
    group: &dyn Collective<B>,
    backend: &B,
    parts: &[&B::Tensor],
) -> Result<Vec<Vec<f64>>> {
    let mut row = Vec::new();
    for part in parts {
        row.extend(backend.to_vec(part)?);
    }
    let (width, ranks) = (row.len(), group.world_size());
    let mut all = vec![<B::Elem as num_traits::Zero>::zero(); width * ranks];
    all[group.rank() * width..][..width].copy_from_slice(&row);
    let all = backend.tensor_from_vec(&[ranks, width], all)?;
    let sum = widened(backend, &group.all_reduce_sum(backend, &all)?)?;
    Ok(sum.chunks(width.max(1)).map(<[f64]>::to_vec).collect())
}

/// A `[C]` tensor of `values`.
fn vector<B: Backend>(backend: &B, values: &[f64]) -> Result<B::Tensor> {
    let elements = values.iter().map(|&v| B::Elem::cast(v)).collect();
    Ok(backend.tensor_from_vec(&[values.len()], elements)?)
}

/// The elements of `x`, widened to `f64`.
fn widened<B: Backend>(backend: &B, x: &B::Tensor) -> Result<Vec<f64>> {
    Ok(backend.to_vec(x)?.into_iter().map(Element::widen).collect())
}
