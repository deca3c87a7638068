//! Batch normalisation over `[N, C, ...]`, training and evaluation (SPEC.md 1).

use crate::backend::{BatchNormGrads, BatchStats, RunningStats};
use crate::cpu::CpuTensor;
use crate::element::Element;
use crate::error::Result;
use crate::params::BatchNormParams;

/// What the batch-norm backward needs.
#[derive(Debug)]
pub struct BatchNormContext<E> {
    pub input: CpuTensor<E>,
}

pub fn train_forward<E: Element>(
    x: &CpuTensor<E>,
    gamma: &CpuTensor<E>,
    beta: &CpuTensor<E>,
    params: BatchNormParams,
) -> Result<(CpuTensor<E>, BatchStats<CpuTensor<E>>, BatchNormContext<E>)> {
    todo!("{x:?} {gamma:?} {beta:?} {params:?}")
}

pub fn eval_forward<E: Element>(
    x: &CpuTensor<E>,
    gamma: &CpuTensor<E>,
    beta: &CpuTensor<E>,
    running: &RunningStats<CpuTensor<E>>,
    params: BatchNormParams,
) -> Result<(CpuTensor<E>, BatchNormContext<E>)> {
    todo!("{x:?} {gamma:?} {beta:?} {running:?} {params:?}")
}

pub fn backward<E: Element>(
    grad_y: &CpuTensor<E>,
    context: &BatchNormContext<E>,
) -> Result<BatchNormGrads<CpuTensor<E>>> {
    todo!("{grad_y:?} {context:?}")
}

pub fn update_running_stats<E: Element>(
    running: &RunningStats<CpuTensor<E>>,
    batch: &BatchStats<CpuTensor<E>>,
    params: BatchNormParams,
) -> Result<RunningStats<CpuTensor<E>>> {
    todo!("{running:?} {batch:?} {params:?}")
}
