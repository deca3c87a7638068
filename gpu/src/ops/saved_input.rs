//! An input as an op's backward keeps it (docs/precision.md §"CUDA", §"Spike bits"): the
//! tensor itself, or a compact form that holds its values exactly and lets the caller free the
//! tensor. Kernels of the spike bits in `gpu/kernels/spike_bits.cu`.

use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, PushKernelArg, SyncOnDrop};

use super::precision::{self, HalfBits, HalfFormat, require_f32};
use super::{GpuElement, elementwise_launch, launch_conversion, shape_error};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::kernels::SPIKE_BITS;
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
    /// A spike input ([`CudaTensor::is_spikes`]) one bit per element: element `i` is bit
    /// `i % 32` of word `i / 32`.
    Spikes {
        bits: DeviceBuffer<u32>,
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
    /// (and `Backend::keep` any tensor): a bit per element when `x` is spikes, else as
    /// [`SavedInput::exact`] keeps it.
    pub fn compact(device: &GpuDevice, x: &CudaTensor<E>) -> Result<SavedInput<E>, GpuError> {
        if !x.is_spikes() {
            return Ok(SavedInput::exact(x));
        }
        Ok(SavedInput::Spikes {
            bits: packed(device, x.buffer())?,
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
            SavedInput::Spikes { bits, shape: old } => {
                check_len("reshape", shape, old.iter().product())?;
                SavedInput::Spikes {
                    bits,
                    shape: shape.to_vec(),
                }
            }
        })
    }

    /// Whether this is the input's 16-bit patterns in `format` and nothing else holds them (no
    /// tensor or context shares them), so a kernel may write over them
    /// ([`SavedInput::into_half_alone`]).
    pub(crate) fn holds_half_alone(&self, format: HalfFormat) -> bool {
        match self {
            SavedInput::Half { bits, .. } => {
                bits.format == format && Arc::strong_count(bits) == 1 && Arc::weak_count(bits) == 0
            }
            _ => false,
        }
    }

    /// The 16-bit patterns of an input for which [`SavedInput::holds_half_alone`] holds, given up
    /// to be written over by `op`; an internal error for any other.
    pub(crate) fn into_half_alone(
        self,
        op: &'static str,
        format: HalfFormat,
    ) -> Result<DeviceBuffer<u16>, GpuError> {
        let shared = || {
            let detail =
                "internal error: the input to write over is not 16-bit patterns held alone";
            shape_error(op, detail)
        };
        match self {
            SavedInput::Half { bits, .. } if bits.format == format => Arc::try_unwrap(bits)
                .map(|half| half.bits)
                .map_err(|_| shared()),
            _ => Err(shared()),
        }
    }

    /// The input as kernels read it in place: `x` itself, or its 16-bit patterns, which the
    /// kernel widens as it loads each element (the same values, half the bytes, no `f32` copy).
    /// Errors for spike bits, which `op` (the caller, named in the message) does not read.
    pub(crate) fn operand<'a>(
        &'a self,
        device: &'a GpuDevice,
        op: &'static str,
    ) -> Result<InputOperand<'a>, GpuError> {
        let (format, (pointer, read)) = match self {
            SavedInput::Full(x) => (None, x.slice().device_ptr(device.stream())),
            SavedInput::Half { bits, .. } => {
                require_f32::<E>(bits.format)?;
                let pointer = bits.bits.slice().device_ptr(device.stream());
                (Some(bits.format), pointer)
            }
            SavedInput::Spikes { .. } => {
                let detail = format!("internal error: {op} reads no spike bits");
                return Err(shape_error(op, detail));
            }
        };
        Ok(InputOperand {
            element: E::SUFFIX,
            format,
            pointer,
            _read: read,
        })
    }

    /// The input in the element type: itself, or its compact form widened.
    pub(crate) fn full(&self, device: &GpuDevice) -> Result<CudaTensor<E>, GpuError> {
        match self {
            SavedInput::Full(x) => Ok(x.clone()),
            SavedInput::Half { bits, shape } => {
                precision::widened_tensor(device, bits.format, &bits.bits, shape)
            }
            SavedInput::Spikes { bits, shape } => {
                let name = format!("from_spike_bits_{}", E::SUFFIX);
                CudaTensor::new(unpacked(device, &name, bits, shape)?, shape)
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
            SavedInput::Spikes { bits, shape } => {
                let name = format!("from_spike_bits_{}", format.name());
                Ok(HalfOperand::Made(unpacked(device, &name, bits, shape)?))
            }
            _ => {
                let x = self.full(device)?;
                let half = precision::to_half_bits(device, format, x.slice(), x.len())?;
                Ok(HalfOperand::Made(half))
            }
        }
    }
}

/// A [`SavedInput`] as a kernel reads it ([`SavedInput::operand`]).
pub(crate) struct InputOperand<'a> {
    /// The element type's kernel suffix (`E::SUFFIX`).
    pub(crate) element: &'static str,
    /// `None` for the input itself, else the format of its 16-bit patterns (then `E` is `f32`).
    pub(crate) format: Option<HalfFormat>,
    /// The first element.
    pub(crate) pointer: CUdeviceptr,
    /// Orders the launches after the input's writes (cudarc's stream tracking).
    _read: SyncOnDrop<'a>,
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

/// Spikes `x` packed into bits by `to_spike_bits_{E}` of spike_bits.cu, one thread per word.
fn packed<E: GpuElement>(
    device: &GpuDevice,
    x: &DeviceBuffer<E>,
) -> Result<DeviceBuffer<u32>, GpuError> {
    let words = x.len().div_ceil(32);
    // SAFETY: the packing writes every word.
    let mut y = unsafe { device.alloc::<u32>(words) }?;
    if x.is_empty() {
        return Ok(y);
    }
    let function = device.function(&SPIKE_BITS, &format!("to_spike_bits_{}", E::SUFFIX))?;
    let stream = device.stream();
    let (source, read) = x.slice().device_ptr(stream);
    let (target, write) = y.slice_mut().device_ptr_mut(stream);
    let count = x.len() as i64;
    let mut launch = stream.launch_builder(&function);
    launch.arg(&source).arg(&target).arg(&count);
    // SAFETY: `to_spike_bits_{E}(const E* x, unsigned* y, long long n)` reads the `n` elements of
    // `x` and writes the `n.div_ceil(32)` words of `y`; the guards stay alive over the launch.
    unsafe { launch.launch(elementwise_launch(words)) }
        .map_err(GpuError::driver("launching the spike packing"))?;
    drop((read, write));
    Ok(y)
}

/// The spike bits of a tensor of `shape` widened by the kernel `name` of spike_bits.cu into a new
/// buffer of one `Y` per element.
fn unpacked<Y: DeviceRepr>(
    device: &GpuDevice,
    name: &str,
    bits: &DeviceBuffer<u32>,
    shape: &[usize],
) -> Result<DeviceBuffer<Y>, GpuError> {
    let n: usize = shape.iter().product();
    // SAFETY: the widening writes every element.
    let mut y = unsafe { device.alloc::<Y>(n) }?;
    if n == 0 {
        return Ok(y);
    }
    let stream = device.stream();
    let (source, read) = bits.slice().device_ptr(stream);
    let (target, write) = y.slice_mut().device_ptr_mut(stream);
    let during = "launching a spike-bits widening";
    // SAFETY: the widening kernels of spike_bits.cu are `name(const unsigned* x, Y* y, long long
    // n)`, reading the `n.div_ceil(32)` words `bits` holds and writing the `n` elements of `y`
    // of the type the callers pass; the guards stay alive over the launch.
    let pointers = (source, target);
    unsafe { launch_conversion(device, &SPIKE_BITS, name, pointers, n, during) }?;
    drop((read, write));
    Ok(y)
}
