//! Batch normalisation over `[N, C, ...]`, training and evaluation (docs/conventions.md §1).
//!
//! Statistics are taken per channel over every axis but `C` (for the RevSNN layers that is
//! `T·B·H·W`, docs/conventions.md §1). Every per-channel reduction is a pairwise sum in `f64` over the channel's
//! elements in row-major order (leaves of 64 elements, each summed in 4 interleaved lanes),
//! computed by one rayon task per channel: the bits do not depend on the number of threads
//! (docs/design.md principle 4).

use rayon::prelude::*;

use super::{slice_of, standard, tensor};
use crate::contract::shapes::{
    BatchNormShape, check_channel_vector, check_context_statistics, check_train_context,
};
use crate::contract::{
    BatchNormGrads, BatchNormMode, BatchNormParams, BatchNormTrainOutput, BatchStats, Element,
    Result, RunningStats,
};
use crate::cpu::CpuTensor;

/// What the batch-norm backward needs: the input (shared with the caller, row-major) and the
/// per-channel constants of the forward, in `f64`, `[C]` each.
#[derive(Debug)]
pub struct BatchNormContext<E> {
    /// The forward's input `x [N, C, ...]`, standard layout.
    pub input: CpuTensor<E>,
    /// The mean the forward subtracted: the batch mean (train) or the running mean (eval).
    pub mean: Vec<f64>,
    /// `1 / sqrt(var + eps)` with the biased batch variance (train) or the running variance (eval).
    pub inv_std: Vec<f64>,
    /// The scale `gamma`.
    pub gamma: Vec<f64>,
    pub mode: BatchNormMode,
}

/// Elements per pairwise-summation leaf.
const PAIRWISE_BLOCK: usize = 64;

/// A leaf is summed in this many interleaved partial sums (element `m` of the leaf into lane
/// `m % 4`), then `(lane 0 + lane 1) + (lane 2 + lane 3)`: four independent chains of additions.
const LEAF_LANES: usize = 4;

/// The pairwise per-channel sums of this module's kernels over the contract's split of
/// `x [N, C, ...]`: channel `c`'s elements sit at `(b C + c) inner + i` of the row-major buffer.
impl BatchNormShape {
    /// `sum_j term(flat(c, j))[s]` for each `s < M` over the channel's elements `j` in row-major
    /// order, pairwise: `M` sums taken in one pass over the data, each in the order (and so with the
    /// bits) it would have alone.
    fn channel_sums<const M: usize>(
        &self,
        c: usize,
        term: &impl Fn(usize) -> [f64; M],
    ) -> [f64; M] {
        self.pairwise(c, 0, self.per_channel(), term)
    }

    fn pairwise<const M: usize>(
        &self,
        c: usize,
        lo: usize,
        hi: usize,
        term: &impl Fn(usize) -> [f64; M],
    ) -> [f64; M] {
        if hi - lo > PAIRWISE_BLOCK {
            let mid = lo + (hi - lo) / 2;
            let (left, right) = (
                self.pairwise(c, lo, mid, term),
                self.pairwise(c, mid, hi, term),
            );
            return std::array::from_fn(|s| left[s] + right[s]);
        }
        self.leaf(c, lo, hi, term)
    }

    /// A leaf of [`Self::pairwise`]: element `j` of `lo..hi` goes to lane `(j - lo) % LEAF_LANES`,
    /// the lanes summed in pairs at the end.
    fn leaf<const M: usize>(
        &self,
        c: usize,
        lo: usize,
        hi: usize,
        term: &impl Fn(usize) -> [f64; M],
    ) -> [f64; M] {
        let mut lanes = [[0.0; LEAF_LANES]; M];
        let add = |lanes: &mut [[f64; LEAF_LANES]; M], lane: usize, k: usize| {
            for (sum, value) in lanes.iter_mut().zip(term(k)) {
                sum[lane] += value;
            }
        };
        let mut element = lo;
        while element < hi {
            let (b, i) = (element / self.inner, element % self.inner);
            let len = (self.inner - i).min(hi - element);
            let start = (b * self.channels + c) * self.inner + i;
            // The run's first elements up to a whole round one by one, then whole rounds with
            // constant lanes (which the compiler keeps in vector registers), then the rest.
            let lane = |offset: usize| (element - lo + offset) % LEAF_LANES;
            let head = ((LEAF_LANES - lane(0)) % LEAF_LANES).min(len);
            let rounds = (len - head) / LEAF_LANES;
            for offset in 0..head {
                add(&mut lanes, lane(offset), start + offset);
            }
            for round in 0..rounds {
                let first = start + head + round * LEAF_LANES;
                for l in 0..LEAF_LANES {
                    add(&mut lanes, l, first + l);
                }
            }
            for offset in head + rounds * LEAF_LANES..len {
                add(&mut lanes, lane(offset), start + offset);
            }
            element += len;
        }
        lanes.map(|l| (l[0] + l[1]) + (l[2] + l[3]))
    }
}

/// The elements of a `[C]` parameter as `f64`, or a shape error naming it.
fn channel_vector<E: Element>(
    op: &'static str,
    name: &str,
    v: &CpuTensor<E>,
    channels: usize,
) -> Result<Vec<f64>> {
    check_channel_vector(op, name, v.shape(), channels)?;
    Ok(v.iter().map(|e| e.widen()).collect())
}

fn channel_tensor<E: Element>(values: &[f64]) -> CpuTensor<E> {
    tensor(
        &[values.len()],
        values.iter().map(|&v| E::cast(v)).collect(),
    )
}

/// `y = gamma[c] inv_std[c] (x - mean[c]) + beta[c]`, elementwise in parallel.
fn normalise<E: Element>(
    x: &[E],
    layout: BatchNormShape,
    mean: &[f64],
    inv_std: &[f64],
    gamma: &[f64],
    beta: &[f64],
) -> Vec<E> {
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(layout.inner.max(1))
        .zip(x.par_chunks(layout.inner.max(1)))
        .enumerate()
        .for_each(|(row, (y_row, x_row))| {
            let c = row % layout.channels;
            let scale = gamma[c] * inv_std[c];
            for (y, &x) in y_row.iter_mut().zip(x_row) {
                y.write(E::cast(scale * (x.widen() - mean[c]) + beta[c]));
            }
        });
    // SAFETY: the rows above are `x`'s rows, so every one of the `x.len()` elements was written.
    unsafe { y.set_len(x.len()) };
    y
}

/// Training-mode BatchNorm (docs/conventions.md §1): over `x [N, C, ...]` with `n = N · prod(trailing axes)`
/// values per channel,
/// `mean_c = (1/n) sum x`, `var_c = (1/n) sum (x - mean_c)^2` (biased),
/// `y = gamma_c (x - mean_c) / sqrt(var_c + eps) + beta_c`.
///
/// Returns `y`, the batch statistics `mean_c` and `n / (n - 1) var_c` (unbiased, for
/// [`update_running_stats`]) and the context. Errors when `n < 2` (PyTorch refuses one value per
/// channel in training), on shape mismatches and on invalid `params`.
pub fn train_forward<E: Element>(
    x: &CpuTensor<E>,
    gamma: &CpuTensor<E>,
    beta: &CpuTensor<E>,
    params: BatchNormParams,
) -> Result<BatchNormTrainOutput<CpuTensor<E>, BatchNormContext<E>>> {
    const OP: &str = "batch_norm_train";
    params.validate()?;
    let layout = BatchNormShape::new(OP, x.shape())?;
    let gamma = channel_vector(OP, "gamma", gamma, layout.channels)?;
    let beta = channel_vector(OP, "beta", beta, layout.channels)?;
    layout.check_trainable(OP, x.shape())?;
    let n = layout.per_channel();
    let input = standard(x);
    let data = slice_of(&input);
    let count = n as f64;
    let (mean, var): (Vec<f64>, Vec<f64>) = (0..layout.channels)
        .into_par_iter()
        .map(|c| {
            let [sum] = layout.channel_sums(c, &|k| [data[k].widen()]);
            let mean = sum / count;
            let [squares] = layout.channel_sums(c, &|k| {
                let d = data[k].widen() - mean;
                [d * d]
            });
            let var = squares / count;
            (mean, var)
        })
        .unzip();
    let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + params.eps).sqrt()).collect();
    let var_unbiased: Vec<f64> = var.iter().map(|v| v * count / (count - 1.0)).collect();
    let y = normalise(data, layout, &mean, &inv_std, &gamma, &beta);
    let stats = BatchStats {
        mean: channel_tensor(&mean),
        var_unbiased: channel_tensor(&var_unbiased),
    };
    let context = BatchNormContext {
        input,
        mean,
        inv_std,
        gamma,
        mode: BatchNormMode::Train,
    };
    Ok((tensor(x.shape(), y), stats, context))
}

/// The `y` of the [`train_forward`] that made `context`, given the same `beta`: the same
/// [`normalise`] over the input and statistics the context keeps, so the same bits
/// (docs/neurons.md §2.4.2). Errors on an evaluation context and on a `beta` that is not `[C]`.
pub fn train_output<E: Element>(
    context: &BatchNormContext<E>,
    beta: &CpuTensor<E>,
) -> Result<CpuTensor<E>> {
    const OP: &str = "batch_norm_train_output";
    check_train_context(OP, context.mode)?;
    let x = &context.input;
    let layout = BatchNormShape::new(OP, x.shape())?;
    let beta = channel_vector(OP, "beta", beta, layout.channels)?;
    let (mean, inv_std, gamma) = (&context.mean, &context.inv_std, &context.gamma);
    let y = normalise(slice_of(x), layout, mean, inv_std, gamma, &beta);
    Ok(tensor(x.shape(), y))
}

/// Evaluation-mode BatchNorm (docs/conventions.md §1):
/// `y = gamma_c (x - running_mean_c) / sqrt(running_var_c + eps) + beta_c` over `x [N, C, ...]`.
pub fn eval_forward<E: Element>(
    x: &CpuTensor<E>,
    gamma: &CpuTensor<E>,
    beta: &CpuTensor<E>,
    running: &RunningStats<CpuTensor<E>>,
    params: BatchNormParams,
) -> Result<(CpuTensor<E>, BatchNormContext<E>)> {
    const OP: &str = "batch_norm_eval";
    params.validate()?;
    let layout = BatchNormShape::new(OP, x.shape())?;
    let gamma = channel_vector(OP, "gamma", gamma, layout.channels)?;
    let beta = channel_vector(OP, "beta", beta, layout.channels)?;
    let mean = channel_vector(OP, "running mean", &running.mean, layout.channels)?;
    let var = channel_vector(OP, "running var", &running.var, layout.channels)?;
    let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + params.eps).sqrt()).collect();
    let input = standard(x);
    let y = normalise(slice_of(&input), layout, &mean, &inv_std, &gamma, &beta);
    let context = BatchNormContext {
        input,
        mean,
        inv_std,
        gamma,
        mode: BatchNormMode::Eval,
    };
    Ok((tensor(x.shape(), y), context))
}

/// Gradients of either BatchNorm forward, with `x_hat = (x - mean_c) inv_std_c` and sums per
/// channel over its `n` values (docs/conventions.md §1):
/// `dgamma_c = sum dy x_hat`, `dbeta_c = sum dy`, and
/// train mode: `dx = gamma_c inv_std_c / n (n dy - sum dy - x_hat sum dy x_hat)`
/// (the mean and variance depend on `x`); eval mode: `dx = gamma_c inv_std_c dy`.
pub fn backward<E: Element>(
    grad_y: &CpuTensor<E>,
    context: &BatchNormContext<E>,
) -> Result<BatchNormGrads<CpuTensor<E>>> {
    const OP: &str = "batch_norm_backward";
    let shape = context.input.shape();
    BatchNormShape::check_grad(OP, grad_y.shape(), shape)?;
    let layout = BatchNormShape::new(OP, shape)?;
    let (mean, inv_std, gamma) = (&context.mean, &context.inv_std, &context.gamma);
    check_context_statistics(
        OP,
        layout.channels,
        &[gamma.len()],
        mean.len(),
        inv_std.len(),
    )?;
    let x = slice_of(&context.input);
    let dy_tensor = standard(grad_y);
    let dy = slice_of(&dy_tensor);
    let (sum_dy, sum_dy_xhat): (Vec<f64>, Vec<f64>) = (0..layout.channels)
        .into_par_iter()
        .map(|c| {
            let [sum_dy, sum_dy_xhat] = layout.channel_sums(c, &|k| {
                let dy = dy[k].widen();
                [dy, dy * (x[k].widen() - mean[c]) * inv_std[c]]
            });
            (sum_dy, sum_dy_xhat)
        })
        .unzip();
    let count = layout.per_channel() as f64;
    let mut dx = Vec::with_capacity(x.len());
    dx.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(layout.inner.max(1))
        .zip(x.par_chunks(layout.inner.max(1)))
        .zip(dy.par_chunks(layout.inner.max(1)))
        .enumerate()
        .for_each(|(row, ((dx_row, x_row), dy_row))| {
            let c = row % layout.channels;
            let scale = gamma[c] * inv_std[c];
            match context.mode {
                BatchNormMode::Train => {
                    let (mean_dy, mean_dy_xhat) = (sum_dy[c] / count, sum_dy_xhat[c] / count);
                    for ((dx, &x), &dy) in dx_row.iter_mut().zip(x_row).zip(dy_row) {
                        let x_hat = (x.widen() - mean[c]) * inv_std[c];
                        dx.write(E::cast(
                            scale * (dy.widen() - mean_dy - x_hat * mean_dy_xhat),
                        ));
                    }
                }
                BatchNormMode::Eval => {
                    for (dx, &dy) in dx_row.iter_mut().zip(dy_row) {
                        dx.write(E::cast(scale * dy.widen()));
                    }
                }
            }
        });
    // SAFETY: the rows above are `x`'s rows, so every one of the `x.len()` elements was written.
    unsafe { dx.set_len(x.len()) };
    Ok(BatchNormGrads {
        input: tensor(shape, dx),
        gamma: channel_tensor(&sum_dy_xhat),
        beta: channel_tensor(&sum_dy),
    })
}

/// PyTorch's running-statistics update (docs/conventions.md §1), per channel:
/// `running_mean = (1 - momentum) running_mean + momentum batch_mean`,
/// `running_var = (1 - momentum) running_var + momentum batch_var_unbiased`, computed in `f64`.
pub fn update_running_stats<E: Element>(
    running: &RunningStats<CpuTensor<E>>,
    batch: &BatchStats<CpuTensor<E>>,
    params: BatchNormParams,
) -> Result<RunningStats<CpuTensor<E>>> {
    const OP: &str = "update_running_stats";
    params.validate()?;
    let channels = running.mean.len();
    let running_mean = channel_vector(OP, "running mean", &running.mean, channels)?;
    let running_var = channel_vector(OP, "running var", &running.var, channels)?;
    let batch_mean = channel_vector(OP, "batch mean", &batch.mean, channels)?;
    let batch_var = channel_vector(OP, "batch var", &batch.var_unbiased, channels)?;
    let m = params.momentum;
    let blend = |old: &[f64], new: &[f64]| -> Vec<f64> {
        old.iter()
            .zip(new)
            .map(|(o, n)| (1.0 - m) * o + m * n)
            .collect()
    };
    Ok(RunningStats {
        mean: channel_tensor(&blend(&running_mean, &batch_mean)),
        var: channel_tensor(&blend(&running_var, &batch_var)),
    })
}
