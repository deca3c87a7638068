//! Host sides of the CUDA kernels; each file is the twin of `revsnn_reference::ops::<same name>`
//! and of `gpu/kernels/<same name>.cu`.

pub mod neuron;

use cudarc::driver::DeviceRepr;

/// A float the kernels are instantiated for.
pub trait GpuElement:
    revsnn_reference::Element + DeviceRepr + cudarc::driver::ValidAsZeroBits
{
    /// The suffix of the `extern "C"` kernel names, `f32` or `f64`.
    const SUFFIX: &'static str;
}

impl GpuElement for f32 {
    const SUFFIX: &'static str = "f32";
}

impl GpuElement for f64 {
    const SUFFIX: &'static str = "f64";
}
