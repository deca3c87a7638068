//! [`CudaTensor`]: a shape over a shared, immutable device buffer, the CUDA backend's twin of
//! `revsnn_reference::CpuTensor`. `clone` and [`CudaTensor::reshaped`] share the buffer; every op
//! writes a fresh buffer, so a context may keep a tensor its caller keeps too at no cost. A tensor
//! widened from 16-bit values (a 16-bit convolution's output) carries them along, and a neuron's
//! spikes say that they are 0s and 1s, so that the next op's context can keep a compact form
//! instead (`SavedInput`). A weight keeps the 16-bit copy its first 16-bit product made
//! ([`CudaTensor::rounded_half`]), so the forward, the recompute and the backward of one step
//! convert it once.

use std::sync::{Arc, OnceLock};

use cudarc::driver::CudaSlice;

use revsnn_reference::contract::shapes::element_count;

use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::memory::DeviceBuffer;
use crate::ops::GpuElement;
use crate::ops::precision::{self, HalfBits, HalfFormat};

/// A dense row-major tensor on the device.
#[derive(Clone)]
pub struct CudaTensor<E> {
    buffer: Arc<DeviceBuffer<E>>,
    shape: Vec<usize>,
    /// The same values as 16-bit patterns, exactly, when the tensor was widened from them.
    exact_half: Option<Arc<HalfBits>>,
    /// The values rounded to a 16-bit format, once [`CudaTensor::rounded_half`] made them;
    /// shared by every tensor over the same buffer.
    rounded_half: Arc<OnceLock<Arc<HalfBits>>>,
    /// Whether every element is 0 or 1: a neuron's Heaviside spikes.
    spikes: bool,
}

impl<E: GpuElement> CudaTensor<E> {
    /// `buffer` under `shape`; the element counts must agree.
    pub fn new(buffer: DeviceBuffer<E>, shape: &[usize]) -> Result<Self, GpuError> {
        check_len("tensor", shape, buffer.len())?;
        Ok(CudaTensor {
            buffer: Arc::new(buffer),
            shape: shape.to_vec(),
            exact_half: None,
            rounded_half: Arc::default(),
            spikes: false,
        })
    }

    /// `buffer` under `shape`, widened from `half`, which holds exactly its values: an op that
    /// keeps the tensor for a backward can keep `half` instead
    /// ([`SavedInput::exact`](crate::ops::saved_input::SavedInput::exact)).
    pub fn widened_from(
        buffer: DeviceBuffer<E>,
        shape: &[usize],
        half: HalfBits,
    ) -> Result<Self, GpuError> {
        check_len("tensor", shape, half.bits.len())?;
        let mut tensor = CudaTensor::new(buffer, shape)?;
        tensor.exact_half = Some(Arc::new(half));
        Ok(tensor)
    }

    /// `self`, marked as holding only 0s and 1s; only a neuron's Heaviside forward marks its
    /// spikes so ([`SavedInput::compact`](crate::ops::saved_input::SavedInput::compact)).
    pub(crate) fn into_spikes(mut self) -> Self {
        self.spikes = true;
        self
    }

    /// The same elements under another shape of equal size (no copy).
    pub fn reshaped(&self, shape: &[usize]) -> Result<Self, GpuError> {
        check_len("reshape", shape, self.len())?;
        Ok(CudaTensor {
            buffer: self.buffer.clone(),
            shape: shape.to_vec(),
            exact_half: self.exact_half.clone(),
            rounded_half: self.rounded_half.clone(),
            spikes: self.spikes,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// The device buffer holding the elements.
    pub fn buffer(&self) -> &DeviceBuffer<E> {
        &self.buffer
    }

    /// The buffer itself when no other tensor shares it (an op may then write its result over
    /// it), else `self` back.
    pub(crate) fn into_unshared_buffer(self) -> Result<DeviceBuffer<E>, Self> {
        let CudaTensor {
            buffer,
            shape,
            exact_half,
            rounded_half,
            spikes,
        } = self;
        Arc::try_unwrap(buffer).map_err(|buffer| CudaTensor {
            buffer,
            shape,
            exact_half,
            rounded_half,
            spikes,
        })
    }

    /// The elements, for a kernel launch.
    pub fn slice(&self) -> &CudaSlice<E> {
        self.buffer.slice()
    }

    /// Whether every element is 0 or 1 (a neuron's spikes).
    pub fn is_spikes(&self) -> bool {
        self.spikes
    }

    /// The 16-bit patterns this tensor was widened from, when it was.
    pub fn exact_half(&self) -> Option<&Arc<HalfBits>> {
        self.exact_half.as_ref()
    }

    /// The elements rounded to `format`'s 16-bit patterns (round to nearest even,
    /// docs/precision.md §"CUDA"): made by the first call and kept with the buffer,
    /// whose elements never change (every op writes a fresh buffer), so a weight that a
    /// forward, its recompute and its backward each read as a 16-bit operand is converted once
    /// per optimizer step, and its copy freed with it. A call in the other format makes a copy
    /// of its own and keeps none. For weights: an activation's copy would live as long as it.
    pub(crate) fn rounded_half(
        &self,
        device: &GpuDevice,
        format: HalfFormat,
    ) -> Result<Arc<HalfBits>, GpuError> {
        if let Some(kept) = self.rounded_half.get()
            && kept.format == format
        {
            return Ok(kept.clone());
        }
        let bits = precision::to_half_bits(device, format, self.slice(), self.len())?;
        let made = Arc::new(HalfBits { bits, format });
        let _kept_first = self.rounded_half.set(made.clone());
        Ok(made)
    }
}

/// Errors unless `shape` has `len` elements.
pub(crate) fn check_len(op: &'static str, shape: &[usize], len: usize) -> Result<(), GpuError> {
    let elements = element_count(op, shape)?;
    if elements != len {
        return Err(crate::ops::shape_error(
            op,
            format!("{len} elements cannot have shape {shape:?}"),
        ));
    }
    Ok(())
}

impl<E> std::fmt::Debug for CudaTensor<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaTensor<{}>{:?}",
            std::any::type_name::<E>(),
            self.shape
        )
    }
}
