//! Tensor creation, copies and structural/elementwise ops on the GPU; twin of
//! `revsnn_reference::ops::tensor`, kernels in `gpu/kernels/tensor.cu`.

use super::GpuElement;
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::tensor::CudaTensor;

/// A device copy of `data` under `shape`.
pub fn from_host<E: GpuElement>(
    device: &GpuDevice,
    shape: &[usize],
    data: &[E],
) -> Result<CudaTensor<E>, GpuError> {
    CudaTensor::new(device.upload(data)?, shape)
}

/// The elements of `x` in row-major order, on the host (waits for the stream).
pub fn to_host<E: GpuElement>(device: &GpuDevice, x: &CudaTensor<E>) -> Result<Vec<E>, GpuError> {
    if x.is_empty() {
        return Ok(Vec::new());
    }
    device
        .stream()
        .clone_dtoh(x.slice())
        .map_err(GpuError::driver("copying a tensor to the host"))
}

/// A tensor of zeros.
pub fn zeros<E: GpuElement>(
    device: &GpuDevice,
    shape: &[usize],
) -> Result<CudaTensor<E>, GpuError> {
    CudaTensor::new(device.alloc_zeros(shape.iter().product())?, shape)
}

/// `y = x.permute(axes)`, materialised row-major.
pub fn permute<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    axes: &[usize],
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}

/// `y = a + b`, equal shapes.
pub fn add<E: GpuElement>(
    device: &GpuDevice,
    a: &CudaTensor<E>,
    b: &CudaTensor<E>,
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}

/// `y = a - b`, equal shapes.
pub fn sub<E: GpuElement>(
    device: &GpuDevice,
    a: &CudaTensor<E>,
    b: &CudaTensor<E>,
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}

/// `y = factor * x`.
pub fn scale<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    factor: E,
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}

/// `y = x[.., start..start + len, ..]` along `axis`.
pub fn narrow<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    axis: usize,
    start: usize,
    len: usize,
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}

/// Concatenation along `axis`.
pub fn concat<E: GpuElement>(
    device: &GpuDevice,
    parts: &[&CudaTensor<E>],
    axis: usize,
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}

/// `y[t] = x` for `t < times`.
pub fn repeat_leading<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    times: usize,
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}

/// `y = sum_t x[t]`.
pub fn sum_leading<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}

/// `y = round(x 2^k) 2^-k`.
pub fn quantize<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    k: i32,
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}

/// A hash of the shape and of every element's bits.
pub fn fingerprint<E: GpuElement>(device: &GpuDevice, x: &CudaTensor<E>) -> Result<u64, GpuError> {
    todo!()
}

/// Mean over the listed axes, which are removed.
pub fn mean_axes<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    axes: &[usize],
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}

/// `dx = broadcast(dy) / (product of the reduced sizes)`.
pub fn mean_axes_backward<E: GpuElement>(
    device: &GpuDevice,
    grad_y: &CudaTensor<E>,
    input_shape: &[usize],
    axes: &[usize],
) -> Result<CudaTensor<E>, GpuError> {
    todo!()
}
