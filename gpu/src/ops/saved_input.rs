//! An input as an op's backward keeps it (docs/precision.md §"CUDA", §"Spike bits"): the
//! tensor itself, or a compact form that holds its values exactly and lets the caller free the
//! tensor. Kernels of the spike bits in `gpu/kernels/spike_bits.cu`.

use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, LaunchArgs, PushKernelArg, SyncOnDrop};
use revsnn_reference::contract::shapes::BatchNormShape;

use super::linear::fill_bias;
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
    /// A biased 16-bit convolution's output `y = bias[c] + sums` (one `f32` addition, `c` the
    /// channel, axis 1 of `shape`), kept as its 16-bit sums and its bias: the kernels that read
    /// it add the bias as they load each element (`plus_bias` in gpu/kernels/batch_norm.cuh),
    /// so the `f32` output is never written (docs/precision.md §"Convolution outputs").
    BiasedHalf {
        sums: Arc<HalfBits>,
        bias: CudaTensor<E>,
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
    /// (and `TensorOps::keep` any tensor): a bit per element when `x` is spikes, else as
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
            SavedInput::Half { shape, .. }
            | SavedInput::BiasedHalf { shape, .. }
            | SavedInput::Spikes { shape, .. } => shape,
        }
    }

    /// The same input under another shape of as many elements (no copy); a biased input's shape
    /// keeps its channel axis (axis 1), which its bias is indexed by.
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
            SavedInput::BiasedHalf {
                sums,
                bias,
                shape: old,
            } => {
                check_len("reshape", shape, sums.bits.len())?;
                if shape.get(1) != old.get(1) {
                    let detail = format!(
                        "internal error: a biased input of shape {old:?} reshaped to {shape:?}, \
                         which moves its channel axis"
                    );
                    return Err(shape_error("reshape", detail));
                }
                SavedInput::BiasedHalf {
                    sums,
                    bias,
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

    /// Whether this is the input's 16-bit patterns (or a biased input's 16-bit sums) in `format`
    /// and nothing else holds them (no tensor or context shares them), so a kernel may write over
    /// them ([`SavedInput::into_half_alone`]).
    pub(crate) fn holds_half_alone(&self, format: HalfFormat) -> bool {
        match self {
            SavedInput::Half { bits, .. } | SavedInput::BiasedHalf { sums: bits, .. } => {
                bits.format == format && Arc::strong_count(bits) == 1 && Arc::weak_count(bits) == 0
            }
            _ => false,
        }
    }

    /// The 16-bit patterns of an input for which [`SavedInput::holds_half_alone`] holds, given up
    /// to be written over by `op`, with the bias a biased input's kernels add as they read them;
    /// an internal error for any other.
    pub(crate) fn into_half_alone(
        self,
        op: &'static str,
        format: HalfFormat,
    ) -> Result<(DeviceBuffer<u16>, Option<CudaTensor<E>>), GpuError> {
        let shared = || {
            let detail =
                "internal error: the input to write over is not 16-bit patterns held alone";
            shape_error(op, detail)
        };
        let (bits, bias) = match self {
            SavedInput::Half { bits, .. } => (bits, None),
            SavedInput::BiasedHalf { sums, bias, .. } => (sums, Some(bias)),
            _ => return Err(shared()),
        };
        if bits.format != format {
            return Err(shared());
        }
        let bits = Arc::try_unwrap(bits).map_err(|_| shared())?.bits;
        Ok((bits, bias))
    }

    /// The input as kernels read it in place: `x` itself, or its 16-bit patterns, which the
    /// kernel widens as it loads each element (the same values, half the bytes, no `f32` copy),
    /// adding a biased input's bias. Errors for spike bits, which `op` (the caller, named in the
    /// message) does not read.
    pub(crate) fn operand<'a>(
        &'a self,
        device: &'a GpuDevice,
        op: &'static str,
    ) -> Result<InputOperand<'a>, GpuError> {
        let stream = device.stream();
        let (format, (pointer, read)) = match self {
            SavedInput::Full(x) => (None, x.slice().device_ptr(stream)),
            SavedInput::Half { bits, .. } | SavedInput::BiasedHalf { sums: bits, .. } => {
                require_f32::<E>(bits.format)?;
                (Some(bits.format), bits.bits.slice().device_ptr(stream))
            }
            SavedInput::Spikes { .. } => {
                let detail = format!("internal error: {op} reads no spike bits");
                return Err(shape_error(op, detail));
            }
        };
        let bias = match self {
            SavedInput::BiasedHalf { bias, .. } => Some(bias),
            _ => None,
        };
        let (bias, bias_read) = bias_pointer(device, bias);
        Ok(InputOperand {
            element: E::SUFFIX,
            format,
            pointer,
            bias,
            _read: (read, bias_read),
        })
    }

    /// The input in the element type: itself, or its compact form widened.
    pub(crate) fn full(&self, device: &GpuDevice) -> Result<CudaTensor<E>, GpuError> {
        match self {
            SavedInput::Full(x) => Ok(x.clone()),
            SavedInput::Half { bits, shape } => {
                precision::widened_tensor(device, bits.format, &bits.bits, shape)
            }
            SavedInput::BiasedHalf { sums, bias, shape } => {
                let split = BatchNormShape::new("a biased convolution's output", shape)?;
                // SAFETY: the bias fill writes every element.
                let mut y = unsafe { device.alloc::<E>(sums.bits.len()) }?;
                fill_bias(device, bias, &mut y, split.channels, split.inner)?;
                precision::widen_into(device, sums.format, &sums.bits, &mut y, true)?;
                CudaTensor::new(y, shape)
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
    /// The bias the kernel adds to each element of a [`SavedInput::BiasedHalf`], else null
    /// ([`NO_BIAS`]): the `x_bias` after `x` of every kernel that reads an input this way.
    pub(crate) bias: CUdeviceptr,
    /// Orders the launches after the input's (and its bias's) writes (cudarc's stream tracking).
    _read: (SyncOnDrop<'a>, Option<SyncOnDrop<'a>>),
}

/// The null `x_bias` of an input without a bias.
const NO_BIAS: CUdeviceptr = 0;

/// The `x_bias` of a kernel that reads an input plus `bias`, or null ([`NO_BIAS`]) without one,
/// with the guard that orders the launch after the bias's writes.
pub(crate) fn bias_pointer<'a, E: GpuElement>(
    device: &'a GpuDevice,
    bias: Option<&'a CudaTensor<E>>,
) -> (CUdeviceptr, Option<SyncOnDrop<'a>>) {
    match bias {
        Some(bias) => {
            let (pointer, read) = bias.slice().device_ptr(device.stream());
            (pointer, Some(read))
        }
        None => (NO_BIAS, None),
    }
}

impl<'b> InputOperand<'_> {
    /// Pushes the kernel's `x, x_bias`.
    pub(crate) fn push(&'b self, launch: &mut LaunchArgs<'b>) {
        launch.arg(&self.pointer).arg(&self.bias);
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
