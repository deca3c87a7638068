//! Average and max pooling on the GPU; twin of `revsnn_reference::ops::pool`, kernels in
//! `gpu/kernels/pool.cu`.

use revsnn_reference::Pool2dParams;

use super::GpuElement;
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::memory::DeviceBuffer;
use crate::tensor::CudaTensor;

/// What [`max_backward`] needs: the flat input index of each window's maximum.
#[derive(Debug)]
pub struct MaxPoolContext {
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    pub argmax: DeviceBuffer<u32>,
}

/// Average pooling with `count_include_pad=True`.
pub fn avg_forward<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    params: Pool2dParams,
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}

/// The backward of [`avg_forward`].
pub fn avg_backward<E: GpuElement>(
    device: &GpuDevice,
    grad_y: &CudaTensor<E>,
    input_shape: &[usize],
    params: Pool2dParams,
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}

/// Max pooling, ties to the first maximum in row-major window order.
pub fn max_forward<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    params: Pool2dParams,
) -> Result<(CudaTensor<E>, MaxPoolContext), GpuError> {
    todo!()
}

/// The backward of [`max_forward`].
pub fn max_backward<E: GpuElement>(
    device: &GpuDevice,
    grad_y: &CudaTensor<E>,
    context: &MaxPoolContext,
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}
