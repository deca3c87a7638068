//! Linear layers and batched matmuls on the GPU through cuBLAS; twin of
//! `revsnn_reference::ops::linear`.

use revsnn_reference::LinearGrads;

use super::GpuElement;
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::tensor::CudaTensor;

/// `y = x w^T + b`.
pub fn forward<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    weight: &CudaTensor<E>,
    bias: Option<&CudaTensor<E>>,
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}

/// `dx = dy w`, `dw = dy^T x`, `db = sum_n dy`.
pub fn backward<E: GpuElement>(
    device: &GpuDevice,
    grad_y: &CudaTensor<E>,
    x: &CudaTensor<E>,
    weight: &CudaTensor<E>,
    has_bias: bool,
) -> Result<LinearGrads<CudaTensor<E>>, GpuError> {
    todo!()
}

/// `c[b] = op(a[b]) op(b[b])`.
pub fn batched_matmul<E: GpuElement>(
    device: &GpuDevice,
    a: &CudaTensor<E>,
    b: &CudaTensor<E>,
    transpose_a: bool,
    transpose_b: bool,
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}
