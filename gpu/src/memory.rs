//! Device memory: every tensor's buffer is a [`DeviceBuffer`] whose bytes are counted while it
//! lives, so a training step's live and peak device bytes are known exactly (the GPU twin of
//! `revsnn_reference::memory`).
//!
//! Caching: buffers come from the device's stream-ordered memory pool (`cuMemAllocAsync`), whose
//! release threshold [`crate::GpuDevice::open`] raises to "never", so a freed block goes back to
//! the pool and is reused by the next allocation of the step without a driver round trip; an
//! allocation that finds the device full has the pool release its unused blocks and tries again
//! ([`crate::GpuDevice::alloc`]). The
//! counters here count the bytes of live tensors (PyTorch's `max_memory_allocated`); the pool's
//! own high-water mark, which includes fragmentation, is [`crate::GpuDevice::pool_reserved_high`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cudarc::driver::{CudaSlice, DeviceRepr};

use crate::peak_trace::PeakTrace;

/// Live and peak bytes of the device buffers of one device.
#[derive(Debug, Default)]
pub struct MemoryAccounting {
    live: AtomicUsize,
    peak: AtomicUsize,
    /// Where each live buffer was allocated, under `REVSNN_TRACE_PEAK_MEMORY`.
    trace: Option<PeakTrace>,
}

/// A snapshot of [`MemoryAccounting`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceMemoryStats {
    /// Bytes held by live buffers now.
    pub live_bytes: usize,
    /// The most bytes held at once since the device opened or [`MemoryAccounting::reset_peak`].
    pub peak_bytes: usize,
}

impl MemoryAccounting {
    /// Counters from zero, with a [`PeakTrace`] when the environment asks for one.
    pub(crate) fn new() -> MemoryAccounting {
        MemoryAccounting {
            trace: PeakTrace::from_env(),
            ..Default::default()
        }
    }

    fn allocated(&self, bytes: usize) -> Option<u64> {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
        self.trace.as_ref().map(|trace| trace.allocated(bytes))
    }

    fn released(&self, bytes: usize, trace_id: Option<u64>) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
        if let (Some(trace), Some(id)) = (&self.trace, trace_id) {
            trace.released(id);
        }
    }

    /// The current counters.
    pub fn stats(&self) -> DeviceMemoryStats {
        DeviceMemoryStats {
            live_bytes: self.live.load(Ordering::Relaxed),
            peak_bytes: self.peak.load(Ordering::Relaxed),
        }
    }

    /// Sets the peak to the live bytes and returns the counters from before; under a trace, first
    /// prints what was live at the peak to stderr.
    pub fn reset_peak(&self) -> DeviceMemoryStats {
        if let Some(trace) = &self.trace {
            eprint!("{}", trace.report_and_reset());
        }
        let before = self.stats();
        self.peak.store(before.live_bytes, Ordering::Relaxed);
        before
    }
}

/// A device allocation of `len` elements of `T`, counted in its device's [`MemoryAccounting`]
/// from creation to drop. An empty buffer holds one unused element, since the driver allocates no
/// zero-byte blocks; kernels are never launched over it (ops return early on empty tensors).
pub struct DeviceBuffer<T> {
    slice: CudaSlice<T>,
    len: usize,
    accounting: Arc<MemoryAccounting>,
    trace_id: Option<u64>,
}

impl<T: DeviceRepr> DeviceBuffer<T> {
    /// Takes ownership of `slice`, which holds `len` elements (or one unused element when `len`
    /// is 0), and counts the `len` elements' bytes.
    pub(crate) fn counted(
        slice: CudaSlice<T>,
        len: usize,
        accounting: &Arc<MemoryAccounting>,
    ) -> Self {
        debug_assert_eq!(slice.len(), len.max(1));
        let trace_id = accounting.allocated(len * std::mem::size_of::<T>());
        DeviceBuffer {
            slice,
            len,
            accounting: accounting.clone(),
            trace_id,
        }
    }

    /// The elements, for reading in a kernel launch.
    pub fn slice(&self) -> &CudaSlice<T> {
        &self.slice
    }

    /// The elements, for writing in a kernel launch.
    pub fn slice_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.slice
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        self.accounting
            .released(self.len * std::mem::size_of::<T>(), self.trace_id);
    }
}

impl<T> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer<{}>[{}]",
            std::any::type_name::<T>(),
            self.len
        )
    }
}
