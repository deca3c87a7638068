//! Optimizer updates on the GPU; twin of `revsnn_reference::ops::optim`, kernels in
//! `gpu/kernels/optim.cu`.

use revsnn_reference::{AdamWParams, AdamWState, SgdParams};

use super::GpuElement;
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::tensor::CudaTensor;

/// One SGD-with-momentum step: returns the new parameter and momentum buffer.
pub fn sgd_step<E: GpuElement>(
    device: &GpuDevice,
    param: &CudaTensor<E>,
    grad: &CudaTensor<E>,
    momentum_buffer: Option<&CudaTensor<E>>,
    params: SgdParams,
) -> Result<(CudaTensor<E>, CudaTensor<E>), GpuError> {
    todo!()
}

/// One AdamW step number `step >= 1`: returns the new parameter and moments.
pub fn adamw_step<E: GpuElement>(
    device: &GpuDevice,
    param: &CudaTensor<E>,
    grad: &CudaTensor<E>,
    first_moment: &CudaTensor<E>,
    second_moment: &CudaTensor<E>,
    params: AdamWParams,
    step: u64,
) -> Result<AdamWState<CudaTensor<E>>, GpuError> {
    todo!()
}
