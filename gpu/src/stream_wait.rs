//! The host's waits for a device's stream, bounded once a communicator has set a limit
//! (docs/distributed.md §7): the stream of a rank may wait on a collective that a rank which died
//! or hangs never joins, and no wait of the rank may then last for ever.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use cudarc::driver::{CudaStream, DriverError, sys};
use revsnn_reference::DeviceError;

use crate::error::GpuError;

/// How long a bounded wait spins on the stream before it sleeps between polls.
const SPIN: Duration = Duration::from_millis(2);

/// The limit of a device's host waits, and the first wait that ran past it.
#[derive(Debug, Default)]
pub(crate) struct WaitLimit {
    /// The longest a wait may last; `None` (unbounded) until a communicator sets it.
    limit: Mutex<Option<Duration>>,
    /// The [`DeviceError::Stalled`] of the first wait that ran past the limit: the stream waits
    /// on work that will not finish, so every later wait fails with it at once.
    stall: OnceLock<DeviceError>,
}

impl WaitLimit {
    /// Bounds every later wait by `limit`, for the device's lifetime.
    pub(crate) fn set(&self, limit: Duration) {
        *self.limit.lock().unwrap_or_else(PoisonError::into_inner) = Some(limit);
    }

    /// The limit set, if any.
    pub(crate) fn get(&self) -> Option<Duration> {
        *self.limit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Polls `stream` until it has run everything queued, calling `watch` between polls (a
    /// communicator checks NCCL's asynchronous error there). A wait past `limit` is
    /// [`DeviceError::Stalled`], and so is every later one, at once, with the first's `during`.
    pub(crate) fn poll(
        &self,
        stream: &CudaStream,
        during: &'static str,
        limit: Duration,
        mut watch: impl FnMut() -> Result<(), GpuError>,
    ) -> Result<(), GpuError> {
        let started = Instant::now();
        loop {
            if let Some(stall) = self.stall.get() {
                return Err(GpuError::Device(stall.clone()));
            }
            // SAFETY: the caller's stream is alive for the call.
            match unsafe { sys::cuStreamQuery(stream.cu_stream()) } {
                sys::CUresult::CUDA_SUCCESS => return Ok(()),
                sys::CUresult::CUDA_ERROR_NOT_READY => {}
                failure => return Err(GpuError::driver(during)(DriverError(failure))),
            }
            watch()?;
            let waited = started.elapsed();
            if waited > limit {
                // A wait that stalled at the same moment may have recorded itself first.
                let _first = self.stall.set(DeviceError::Stalled { during, limit });
            } else if waited < SPIN {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}
