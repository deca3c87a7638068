//! [`CudaTensor`]: a shape over a shared, immutable device buffer, the CUDA backend's twin of
//! `revsnn_reference::CpuTensor`. `clone` and [`CudaTensor::reshaped`] share the buffer; every op
//! writes a fresh buffer, so a context may keep a tensor its caller keeps too at no cost. A tensor
//! widened from 16-bit values (a 16-bit convolution's output) carries them along, and a neuron's
//! spikes say that they are 0s and 1s, so that the next op's context can keep a compact form
//! instead (`SavedInput`).

use std::sync::Arc;

use cudarc::driver::CudaSlice;

use revsnn_reference::contract::shapes::element_count;

use crate::error::GpuError;
use crate::memory::DeviceBuffer;
use crate::ops::GpuElement;
use crate::ops::precision::HalfBits;

/// A dense row-major tensor on the device.
#[derive(Clone)]
pub struct CudaTensor<E> {
    buffer: Arc<DeviceBuffer<E>>,
    shape: Vec<usize>,
    /// The same values as 16-bit patterns, exactly, when the tensor was widened from them.
    exact_half: Option<Arc<HalfBits>>,
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
            spikes,
        } = self;
        Arc::try_unwrap(buffer).map_err(|buffer| CudaTensor {
            buffer,
            shape,
            exact_half,
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
