//! What the commands need of a backend besides the ops: waiting for queued work (to time it) and
//! the peak memory of a step (docs/design.md principle 5), and the memory still available.

use super::backend::Backend;
use super::error::Result;

/// A backend the commands can run on: the op contract plus synchronisation and memory figures.
pub trait Compute: Backend {
    /// Waits until every queued op has finished (for timing), surfacing asynchronous errors; a
    /// no-op on the CPU, whose ops return when done. A device whose waits a rank has bounded
    /// fails past the bound with [`crate::DeviceError::Stalled`].
    fn synchronize(&self) -> Result<()>;

    /// Whether [`Compute::peak_memory_bytes`] measures anything: on the CPU only when the
    /// process counts its allocations (`crate::memory::CountingAllocator`, which the `revsnn`
    /// binary installs); on CUDA always (every device tensor is counted).
    fn memory_is_counted(&self) -> bool;

    /// Starts a new peak: from now on [`Compute::peak_memory_bytes`] is the most bytes held at
    /// once from this point.
    fn reset_peak_memory(&self);

    /// The most bytes held at once since the last [`Compute::reset_peak_memory`]: on the CPU
    /// every heap byte of the process, on CUDA the bytes of live device tensors (PyTorch's
    /// `max_memory_allocated`).
    fn peak_memory_bytes(&self) -> usize;

    /// The bytes new allocations can still get, what a run's memory estimate is compared with
    /// before it starts: on the CPU the kernel's `MemAvailable` (`None` where `/proc/meminfo`
    /// does not say), on CUDA the device's free memory.
    fn available_memory_bytes(&self) -> Result<Option<u64>>;

    /// How often the host has waited for the device, copied data to it and retried a failed
    /// allocation since the device opened; `None` on the CPU, which has no device to wait for.
    fn transfer_counts(&self) -> Option<TransferCounts>;
}

/// How often the host waited for a device, copied data to it, and retried an allocation that
/// found it full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferCounts {
    /// Downloads and stream synchronisations: each makes the host wait until every queued op
    /// has finished, leaving the device idle until the host queues more.
    pub host_waits: u64,
    /// Copies from (pageable) host memory to the device. A driver may synchronise the stream
    /// before such a copy, so they are counted too, apart.
    pub uploads: u64,
    /// Allocations that found the device full and succeeded or failed again after the host
    /// waited for the device and its memory pool released the blocks it kept from freed
    /// buffers (PyTorch's `num_alloc_retries`). Each costs a wait and fresh allocations from the
    /// driver afterwards; some every step mean the batch barely fits.
    pub alloc_retries: u64,
}

impl TransferCounts {
    /// The transfers since `earlier`, a count taken before this one.
    pub fn since(self, earlier: TransferCounts) -> TransferCounts {
        TransferCounts {
            host_waits: self.host_waits - earlier.host_waits,
            uploads: self.uploads - earlier.uploads,
            alloc_retries: self.alloc_retries - earlier.alloc_retries,
        }
    }

    /// These transfers, made over `steps` steps, per step.
    pub fn per_step(self, steps: usize) -> TransfersPerStep {
        let per_step = |count: u64| count as f64 / steps.max(1) as f64;
        TransfersPerStep {
            host_waits: per_step(self.host_waits),
            uploads: per_step(self.uploads),
            alloc_retries: per_step(self.alloc_retries),
        }
    }
}

/// [`TransferCounts`] per step: their means over some steps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TransfersPerStep {
    /// Downloads and synchronisations per step.
    pub host_waits: f64,
    /// Copies to the device per step.
    pub uploads: f64,
    /// Allocations retried per step.
    pub alloc_retries: f64,
}
