//! An input as an op's backward keeps it (docs/precision.md §"CUDA", §"Spike bytes"): the
//! tensor itself, or a compact form that holds its values exactly and lets the caller free the
//! tensor. Kernels of the spike bytes in `gpu/kernels/spike_bytes.cu`.

use std::sync::Arc;

use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr};

use super::precision::{self, HalfBits, HalfFormat};
use super::{GpuElement, launch_conversion};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::kernels::SPIKE_BYTES;
use crate::memory::DeviceBuffer;
use crate::tensor::{CudaTensor, check_len};

/// An input as an op's backward keeps it.
#[derive(Debug)]
pub enum SavedInput<E> {
    /// The input itself, shared with the caller.
    Full(CudaTensor<E>),
    /// The input's 16-bit patterns: all that the backward reads of it, or exactly its values.
    /// Kept instead of the input, whose memory the caller can then free, and not converted again.
    Half {
        bits: Arc<HalfBits>,
        shape: Vec<usize>,
    },
    /// A spike input ([`CudaTensor::is_spikes`]) one byte per element, 0 or 1.
    Spikes {
        bytes: DeviceBuffer<u8>,
        shape: Vec<usize>,
    },
}

impl<E: GpuElement> SavedInput<E> {
    /// `x` as a backward that reads its exact values keeps it: its 16-bit patterns when they hold
    /// exactly its values ([`CudaTensor::exact_half`]), else `x` itself.
    pub fn exact(x: &CudaTensor<E>) -> SavedInput<E> {
        match x.exact_half() {
            Some(bits) => SavedInput::Half {
                bits: bits.clone(),
                shape: x.shape().to_vec(),
            },
            None => SavedInput::Full(x.clone()),
        }
    }

    /// `x` in its most compact exact form, as a convolution keeps it for its weight gradient
    /// (and `Backend::keep` any tensor): a byte per element when `x` is spikes, else as
    /// [`SavedInput::exact`] keeps it.
    pub fn compact(device: &GpuDevice, x: &CudaTensor<E>) -> Result<SavedInput<E>, GpuError> {
        if !x.is_spikes() {
            return Ok(SavedInput::exact(x));
        }
        let name = format!("to_spike_bytes_{}", E::SUFFIX);
        Ok(SavedInput::Spikes {
            bytes: converted(device, &name, x.buffer())?,
            shape: x.shape().to_vec(),
        })
    }

    /// The input's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            SavedInput::Full(x) => x.shape(),
            SavedInput::Half { shape, .. } | SavedInput::Spikes { shape, .. } => shape,
        }
    }

    /// The same input under another shape of as many elements (no copy).
    pub(crate) fn reshaped(self, shape: &[usize]) -> Result<SavedInput<E>, GpuError> {
        Ok(match self {
            SavedInput::Full(x) => SavedInput::Full(x.reshaped(shape)?),
            SavedInput::Half { bits, .. } => {
                check_len("reshape", shape, bits.bits.len())?;
                SavedInput::Half {
                    bits,
                    shape: shape.to_vec(),
                }
            }
            SavedInput::Spikes { bytes, .. } => {
                check_len("reshape", shape, bytes.len())?;
                SavedInput::Spikes {
                    bytes,
                    shape: shape.to_vec(),
                }
            }
        })
    }

    /// The input in the element type: itself, or its compact form widened.
    pub(crate) fn full(&self, device: &GpuDevice) -> Result<CudaTensor<E>, GpuError> {
        match self {
            SavedInput::Full(x) => Ok(x.clone()),
            SavedInput::Half { bits, shape } => {
                precision::widened_tensor(device, bits.format, &bits.bits, shape)
            }
            SavedInput::Spikes { bytes, shape } => {
                let name = format!("from_spike_bytes_{}", E::SUFFIX);
                CudaTensor::new(converted(device, &name, bytes)?, shape)
            }
        }
    }

    /// The input as `format`'s 16-bit patterns: those kept, or made from the compact form or the
    /// input (a 16-bit GEMM's or cuDNN's operand, freed with the result).
    pub(crate) fn half(
        &self,
        device: &GpuDevice,
        format: HalfFormat,
    ) -> Result<HalfOperand<'_>, GpuError> {
        match self {
            SavedInput::Half { bits, .. } if bits.format == format => {
                Ok(HalfOperand::Kept(&bits.bits))
            }
            SavedInput::Spikes { bytes, .. } => {
                let name = format!("from_spike_bytes_{}", format.name());
                Ok(HalfOperand::Made(converted(device, &name, bytes)?))
            }
            _ => {
                let x = self.full(device)?;
                let half = precision::to_half_bits(device, format, x.slice(), x.len())?;
                Ok(HalfOperand::Made(half))
            }
        }
    }
}

/// 16-bit patterns a backward reads: kept by a context, or made for the call.
pub(crate) enum HalfOperand<'a> {
    Kept(&'a DeviceBuffer<u16>),
    Made(DeviceBuffer<u16>),
}

impl HalfOperand<'_> {
    pub(crate) fn buffer(&self) -> &DeviceBuffer<u16> {
        match self {
            HalfOperand::Kept(bits) => bits,
            HalfOperand::Made(bits) => bits,
        }
    }
}

/// `x` converted by the kernel `name` of spike_bytes.cu into a new buffer of its length.
fn converted<X: DeviceRepr, Y: DeviceRepr>(
    device: &GpuDevice,
    name: &str,
    x: &DeviceBuffer<X>,
) -> Result<DeviceBuffer<Y>, GpuError> {
    // SAFETY: the conversion writes every element.
    let mut y = unsafe { device.alloc::<Y>(x.len()) }?;
    if x.is_empty() {
        return Ok(y);
    }
    let stream = device.stream();
    let (source, read) = x.slice().device_ptr(stream);
    let (target, write) = y.slice_mut().device_ptr_mut(stream);
    let during = "launching a spike-bytes conversion";
    // SAFETY: the kernels of spike_bytes.cu are conversions `name(const X* x, Y* y, long long n)`
    // of the element types the callers pass; both buffers hold `x.len()` elements and the guards
    // stay alive over the launch.
    let pointers = (source, target);
    unsafe { launch_conversion(device, &SPIKE_BYTES, name, pointers, x.len(), during) }?;
    drop((read, write));
    Ok(y)
}
