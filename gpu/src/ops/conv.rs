//! 2-D convolution on the GPU; twin of `revsnn_reference::ops::conv`, kernels in
//! `gpu/kernels/conv.cu`.

use revsnn_reference::{Conv2dGrads, Conv2dParams};

use super::GpuElement;
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::tensor::CudaTensor;

/// What [`backward`] needs.
#[derive(Debug)]
pub struct Conv2dContext<E> {
    pub input: CudaTensor<E>,
    pub weight: CudaTensor<E>,
    pub has_bias: bool,
    pub params: Conv2dParams,
}

/// `y[n, o] = bias[o] + sum_{c, i, j} w[o, c, i, j] x_pad[n, c, stride y + i, stride x + j]`.
pub fn forward<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    weight: &CudaTensor<E>,
    bias: Option<&CudaTensor<E>>,
    params: Conv2dParams,
) -> Result<(CudaTensor<E>, Conv2dContext<E>), GpuError> {
    todo!()
}

/// Gradients with respect to input, weight and bias.
pub fn backward<E: GpuElement>(
    device: &GpuDevice,
    grad_y: &CudaTensor<E>,
    context: &Conv2dContext<E>,
) -> Result<Conv2dGrads<CudaTensor<E>>, GpuError> {
    todo!()
}
