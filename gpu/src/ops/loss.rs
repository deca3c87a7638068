//! Cross-entropy losses on the GPU; twin of `revsnn_reference::ops::loss`, kernels in
//! `gpu/kernels/loss.cu`.

use super::GpuElement;
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::tensor::CudaTensor;

/// What [`backward`] needs: the softmax and the target distribution, `[B, K]` each.
#[derive(Debug)]
pub struct CrossEntropyContext<E> {
    pub softmax: CudaTensor<E>,
    pub targets: CudaTensor<E>,
}

/// Mean cross-entropy against class indices.
pub fn cross_entropy_forward<E: GpuElement>(
    device: &GpuDevice,
    logits: &CudaTensor<E>,
    labels: &[usize],
) -> Result<(E, CrossEntropyContext<E>), GpuError> {
    todo!()
}

/// Mean soft-target cross-entropy.
pub fn soft_cross_entropy_forward<E: GpuElement>(
    device: &GpuDevice,
    logits: &CudaTensor<E>,
    targets: &CudaTensor<E>,
) -> Result<(E, CrossEntropyContext<E>), GpuError> {
    todo!()
}

/// `dL/dlogits = grad_loss (softmax - targets) / B`.
pub fn backward<E: GpuElement>(
    device: &GpuDevice,
    context: &CrossEntropyContext<E>,
    grad_loss: E,
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}
