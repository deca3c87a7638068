//! Batch normalisation on the GPU with deterministic reductions; twin of
//! `revsnn_reference::ops::batch_norm`, kernels in `gpu/kernels/batch_norm.cu`.

use revsnn_reference::{BatchNormGrads, BatchNormParams, BatchStats, RunningStats};

use super::GpuElement;
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::tensor::CudaTensor;

/// What [`backward`] needs.
#[derive(Debug)]
pub struct BatchNormContext<E> {
    pub input: CudaTensor<E>,
}

/// Training mode: statistics over every axis but `C`.
pub fn train_forward<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    gamma: &CudaTensor<E>,
    beta: &CudaTensor<E>,
    params: BatchNormParams,
) -> Result<
    (
        CudaTensor<E>,
        BatchStats<CudaTensor<E>>,
        BatchNormContext<E>,
    ),
    GpuError,
> {
    todo!()
}

/// Evaluation mode with the running statistics.
pub fn eval_forward<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    gamma: &CudaTensor<E>,
    beta: &CudaTensor<E>,
    running: &RunningStats<CudaTensor<E>>,
    params: BatchNormParams,
) -> Result<(CudaTensor<E>, BatchNormContext<E>), GpuError> {
    todo!()
}

/// Gradients of either forward.
pub fn backward<E: GpuElement>(
    device: &GpuDevice,
    grad_y: &CudaTensor<E>,
    context: &BatchNormContext<E>,
) -> Result<BatchNormGrads<CudaTensor<E>>, GpuError> {
    todo!()
}

/// `running = (1 - momentum) running + momentum batch`.
pub fn update_running_stats<E: GpuElement>(
    device: &GpuDevice,
    running: &RunningStats<CudaTensor<E>>,
    batch: &BatchStats<CudaTensor<E>>,
    params: BatchNormParams,
) -> Result<RunningStats<CudaTensor<E>>, GpuError> {
    todo!()
}
