//! Cross-entropy losses over logits `[B, K]` (docs/recipes.md §5: the CIFAR ResNets train with class
//! labels, the transformers with mixup / label-smoothing soft targets).
//!
//! Each row's log-sum-exp is computed stably in `f64` (`m + ln(1 + sum_{k != argmax} exp(x_k -
//! m))`, `m` the row maximum) by one rayon task per row; the mean over rows is a sequential sum in row order, so the
//! bits do not depend on the number of threads (docs/design.md principle 4).

use rayon::prelude::*;

use super::{slice_of, standard, tensor};
use crate::contract::shapes::{
    check_context_targets, check_labels, check_soft_targets, logits_shape,
};
use crate::contract::{Element, OpError, Result};
use crate::cpu::CpuTensor;

/// What a cross-entropy was taken against.
#[derive(Debug)]
pub enum Targets<E> {
    /// One class index per row, each `< K` (checked by the forward).
    Labels(Vec<usize>),
    /// A target distribution per row, `[B, K]`, row-major.
    Soft(CpuTensor<E>),
}

/// What the cross-entropy backward needs: the softmax of the logits and the targets.
#[derive(Debug)]
pub struct CrossEntropyContext<E> {
    /// `softmax(logits)` per row, `[B, K]`, row-major.
    pub softmax: CpuTensor<E>,
    pub targets: Targets<E>,
}

/// A row's log-sum-exp `lse = m + ln(1 + r)`, kept as its two parts: the row maximum `m` and
/// `ln_1p(r)` with `r = sum_{k != first argmax} exp(x_k - m)`. A row loss `lse - x_k` is formed as
/// `(m - x_k) + ln_1p(r)`, which keeps a confident row's tiny loss instead of rounding it to 0.
#[derive(Clone, Copy, Debug)]
struct LogSumExp {
    max: f64,
    log1p_rest: f64,
}

impl LogSumExp {
    fn of<E: Element>(row: &[E]) -> LogSumExp {
        let (mut max, mut at) = (f64::NEG_INFINITY, 0);
        for (k, &x) in row.iter().enumerate() {
            if x.widen() > max {
                (max, at) = (x.widen(), k);
            }
        }
        let rest: f64 = row
            .iter()
            .enumerate()
            .filter(|&(k, _)| k != at)
            .map(|(_, &x)| (x.widen() - max).exp())
            .sum();
        LogSumExp {
            max,
            log1p_rest: rest.ln_1p(),
        }
    }

    /// `-log softmax(row)[k] = lse - x_k`.
    fn neg_log_softmax(&self, x: f64) -> f64 {
        (self.max - x) + self.log1p_rest
    }
}

/// The softmax of every row and each row's loss `row_loss(row logits, log-sum-exp, b)`;
/// returns `(mean loss, softmax [B, K])`.
fn softmax_and_mean<E: Element>(
    logits: &CpuTensor<E>,
    classes: usize,
    row_loss: impl Fn(&[E], LogSumExp, usize) -> f64 + Sync,
) -> (E, CpuTensor<E>) {
    let logits = standard(logits);
    let mut softmax = vec![E::zero(); logits.len()];
    let losses: Vec<f64> = softmax
        .par_chunks_mut(classes)
        .zip(slice_of(&logits).par_chunks(classes))
        .enumerate()
        .map(|(b, (p_row, x_row))| {
            let lse = LogSumExp::of(x_row);
            for (p, &x) in p_row.iter_mut().zip(x_row) {
                *p = E::cast((-lse.neg_log_softmax(x.widen())).exp());
            }
            row_loss(x_row, lse, b)
        })
        .collect();
    let batch = losses.len() as f64;
    let mean = losses.iter().sum::<f64>() / batch;
    (E::cast(mean), tensor(logits.shape(), softmax))
}

/// Mean cross-entropy against class indices (PyTorch's `F.cross_entropy`, reduction `mean`):
/// `L = (1/B) sum_b (lse_b - logits[b, label_b])` with `lse_b = log sum_k exp logits[b, k]`,
/// i.e. `-(1/B) sum_b log softmax(logits[b])[label_b]`. Errors unless `logits` is `[B, K]`,
/// there are `B` labels and each is `< K`.
pub fn cross_entropy_forward<E: Element>(
    logits: &CpuTensor<E>,
    labels: &[usize],
) -> Result<(E, CrossEntropyContext<E>)> {
    let (_, classes) = check_labels(logits.shape(), labels)?;
    let (loss, softmax) = softmax_and_mean(logits, classes, |x_row, lse, b| {
        lse.neg_log_softmax(x_row[labels[b]].widen())
    });
    let context = CrossEntropyContext {
        softmax,
        targets: Targets::Labels(labels.to_vec()),
    };
    Ok((loss, context))
}

/// Mean soft-target cross-entropy (mixup, label smoothing; timm's `SoftTargetCrossEntropy`):
/// `L = -(1/B) sum_b sum_k targets[b, k] log softmax(logits[b])[k]
///    = (1/B) sum_b sum_k targets[b, k] (lse_b - logits[b, k])`.
/// `targets` must have the shape `[B, K]` of `logits`; its rows are not required to sum to 1.
pub fn soft_cross_entropy_forward<E: Element>(
    logits: &CpuTensor<E>,
    targets: &CpuTensor<E>,
) -> Result<(E, CrossEntropyContext<E>)> {
    let (_, classes) = check_soft_targets(logits.shape(), targets.shape())?;
    let targets = standard(targets);
    let t = slice_of(&targets);
    let (loss, softmax) = softmax_and_mean(logits, classes, |x_row, lse, b| {
        x_row
            .iter()
            .zip(&t[b * classes..(b + 1) * classes])
            .map(|(&x, &t)| t.widen() * lse.neg_log_softmax(x.widen()))
            .sum()
    });
    let context = CrossEntropyContext {
        softmax,
        targets: Targets::Soft(targets),
    };
    Ok((loss, context))
}

/// The backward of either cross-entropy:
/// `dL/dlogits[b, k] = grad_loss (softmax(logits[b])[k] - targets[b, k]) / B`, where the targets
/// of [`cross_entropy_forward`] are one-hot rows. With soft targets this assumes rows summing to
/// 1, as [`Backend`](crate::Backend) documents (the exact gradient of a row summing to `s` has
/// `s softmax` in place of `softmax`).
pub fn backward<E: Element>(
    context: &CrossEntropyContext<E>,
    grad_loss: E,
) -> Result<CpuTensor<E>> {
    const OP: &str = "cross_entropy_backward";
    let (batch, classes) = logits_shape(OP, context.softmax.shape())?;
    let softmax = standard(&context.softmax);
    let scale = grad_loss.widen() / batch as f64;
    let mut grad = vec![E::zero(); softmax.len()];
    let rows = grad
        .par_chunks_mut(classes)
        .zip(slice_of(&softmax).par_chunks(classes));
    match &context.targets {
        Targets::Labels(labels) => {
            if labels.len() != batch || labels.iter().any(|&l| l >= classes) {
                return Err(OpError::shape(
                    OP,
                    format!(
                        "the context's {} labels do not fit the softmax {:?}",
                        labels.len(),
                        softmax.shape()
                    ),
                ));
            }
            rows.enumerate().for_each(|(b, (g_row, p_row))| {
                for (k, (g, &p)) in g_row.iter_mut().zip(p_row).enumerate() {
                    let target = if k == labels[b] { 1.0 } else { 0.0 };
                    *g = E::cast(scale * (p.widen() - target));
                }
            });
        }
        Targets::Soft(targets) => {
            check_context_targets(OP, targets.shape(), softmax.shape())?;
            let targets = standard(targets);
            rows.zip(slice_of(&targets).par_chunks(classes))
                .for_each(|((g_row, p_row), t_row)| {
                    for ((g, &p), &t) in g_row.iter_mut().zip(p_row).zip(t_row) {
                        *g = E::cast(scale * (p.widen() - t.widen()));
                    }
                });
        }
    }
    Ok(tensor(softmax.shape(), grad))
}
