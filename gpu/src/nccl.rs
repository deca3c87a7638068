//! [`Communicator`]: one rank's NCCL communicator on its device, for data-parallel training on
//! several GPUs (docs/distributed.md §7). NCCL is loaded at run time like the other CUDA
//! libraries; a build never needs it.
//!
//! Every collective runs on the communicator's own stream, in the order the host issues them:
//! the communication stream first waits for what the device's compute stream has queued (an
//! event), so a collective reads its input after the ops that wrote it. A blocking collective
//! ([`Communicator::all_reduce_sum`], [`Communicator::all_gather_u64`]) then makes the compute
//! stream wait for the communication stream, and the host waits for it. A started all-reduce
//! ([`Communicator::start_all_reduce_sum`], a gradient bucket) does not: the compute stream runs
//! on (the rest of the backward) while it travels, and [`Communicator::wait_started`] makes the
//! compute stream wait once for all of them and the host with it. Each host wait polls NCCL for
//! an asynchronous error, for at most the communicator's timeout: a rank whose peer died or
//! hangs aborts the communicator and returns [`GpuError::Nccl`] instead of waiting forever. The
//! timeout bounds the device's other host waits too (synchronisations, downloads, an allocation's
//! retry), which fail with the contract's `DeviceError::Stalled` past it.

use std::any::Any;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
use cudarc::nccl::{NcclType, result, sys};

use revsnn_reference::DeviceError;

use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::ops::GpuElement;
use crate::tensor::CudaTensor;

/// The size of NCCL's unique id, the bytes rank 0 hands every rank at the rendezvous.
pub const UNIQUE_ID_BYTES: usize = 128;

/// Whether NCCL can be loaded; cudarc panics on first use when it cannot.
pub fn nccl_present() -> bool {
    // SAFETY: only tries to dlopen the library; no NCCL call is made.
    unsafe { sys::is_culib_present() }
}

/// NCCL's version `(major, minor, patch)`, or why it cannot be loaded.
pub fn version() -> Result<(i32, i32, i32), GpuError> {
    if !nccl_present() {
        return Err(GpuError::NcclMissing);
    }
    let code = result::get_nccl_version().map_err(|e| nccl_error(0, "reading the version", e))?;
    // NCCL 2.9 and newer: major * 10000 + minor * 100 + patch
    Ok((code / 10000, code / 100 % 100, code % 100))
}

/// A new NCCL unique id (made by rank 0 and sent to the others), or why there is none.
pub fn unique_id() -> Result<Vec<u8>, GpuError> {
    if !nccl_present() {
        return Err(GpuError::NcclMissing);
    }
    let id = result::get_uniqueid().map_err(|e| nccl_error(0, "creating the unique id", e))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

/// Rank `rank` of `world_size` ranks, each on its own device, that exchange through NCCL.
pub struct Communicator {
    comm: sys::ncclComm_t,
    device: Arc<GpuDevice>,
    rank: usize,
    world_size: usize,
    timeout: Duration,
    aborted: AtomicBool,
    /// The stream every collective of this communicator runs on, beside the device's.
    stream: Arc<CudaStream>,
    /// The buffers of the all-reduces started and not yet waited for (each one's input and
    /// output): they stay allocated until the compute stream has waited for the communication
    /// stream, so the caching pool never hands their memory to an op that would run before the
    /// all-reduce has read or written it.
    in_flight: Mutex<Vec<Box<dyn Any + Send>>>,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time; `Communicator`
// is used through `&self` by the one thread that owns its rank.
unsafe impl Send for Communicator {}

impl Communicator {
    /// Joins the communicator that `id` (from [`unique_id`] on rank 0) names, as `rank` of
    /// `world_size`, on `device`. Blocks until every rank has joined; collectives wait at most
    /// `timeout` for the others, and so does every later host wait on the device
    /// (`GpuDevice::limit_host_waits`): its stream may wait on one of their collectives.
    pub fn join(
        device: Arc<GpuDevice>,
        rank: usize,
        world_size: usize,
        id: &[u8],
        timeout: Duration,
    ) -> Result<Communicator, GpuError> {
        if !nccl_present() {
            return Err(GpuError::NcclMissing);
        }
        let id = unique_id_from(id, rank)?;
        let ranks = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let stream = device
            .context()
            .new_stream()
            .map_err(GpuError::driver("creating the communication stream"))?;
        let mut comm = std::ptr::null_mut();
        // SAFETY: NCCL is loaded; `comm` receives the new communicator. NCCL creates it on the
        // current CUDA context, which `bind_to_thread` makes the device's.
        device
            .context()
            .bind_to_thread()
            .map_err(GpuError::driver("making the device current"))?;
        unsafe { result::comm_init_rank(&mut comm, ranks(world_size), id, ranks(rank)) }
            .map_err(|e| nccl_error(rank, "joining the communicator", e))?;
        device.limit_host_waits(timeout);
        Ok(Communicator {
            comm,
            device,
            rank,
            world_size,
            timeout,
            aborted: AtomicBool::new(false),
            stream,
            in_flight: Mutex::new(Vec::new()),
        })
    }

    /// This rank's index.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// `x` summed elementwise over the ranks (NCCL's all-reduce), the same bits on every rank;
    /// waits for it on the host.
    pub fn all_reduce_sum<E: GpuElement>(
        &self,
        x: &CudaTensor<E>,
    ) -> Result<CudaTensor<E>, GpuError> {
        let sum = self.enqueue_all_reduce(x)?;
        self.join_compute_stream()?;
        self.wait("an all-reduce")?;
        Ok(sum)
    }

    /// Starts the all-reduce of `x` on the communication stream and returns the sum to come,
    /// without waiting: the compute stream may read it only after [`Communicator::wait_started`].
    /// `x` and the sum stay allocated until then.
    pub fn start_all_reduce_sum<E: GpuElement>(
        &self,
        x: &CudaTensor<E>,
    ) -> Result<CudaTensor<E>, GpuError> {
        let sum = self.enqueue_all_reduce(x)?;
        self.lock_in_flight()
            .push(Box::new((x.clone(), sum.clone())));
        Ok(sum)
    }

    /// Makes the compute stream wait for every all-reduce started, without waiting on the host:
    /// work queued after this reads their sums (nothing to do when none was started).
    pub fn join_started(&self) -> Result<(), GpuError> {
        if self.lock_in_flight().is_empty() {
            return Ok(());
        }
        self.join_compute_stream()
    }

    /// Makes the compute stream wait for every all-reduce started, then waits for it on the
    /// host once (nothing to do when none was started).
    pub fn wait_started(&self) -> Result<(), GpuError> {
        if self.lock_in_flight().is_empty() {
            return Ok(());
        }
        self.join_compute_stream()?;
        let waited = self.wait("the gradient all-reduces");
        // Waited for (or aborted): the buffers may go back to the pool.
        self.lock_in_flight().clear();
        waited
    }

    /// Queues the all-reduce of `x` on the communication stream, after everything the compute
    /// stream has queued so far (the sum's allocation included).
    fn enqueue_all_reduce<E: GpuElement>(
        &self,
        x: &CudaTensor<E>,
    ) -> Result<CudaTensor<E>, GpuError> {
        // SAFETY: every element is written by the all-reduce below.
        let mut sum = unsafe { self.device.alloc::<E>(x.len()) }?;
        self.join_communication_stream()?;
        let stream = &self.stream;
        {
            let (send, _send) = x.slice().device_ptr(stream);
            let (receive, _receive) = sum.slice_mut().device_ptr_mut(stream);
            // SAFETY: both buffers hold `x.len()` elements of `E` on this communicator's device.
            unsafe {
                result::all_reduce(
                    send as *const _,
                    receive as *mut _,
                    x.len(),
                    E::as_nccl_type(),
                    sys::ncclRedOp_t::ncclSum,
                    self.comm,
                    stream.cu_stream() as sys::cudaStream_t,
                )
            }
            .map_err(|e| self.error("an all-reduce", e))?;
        }
        CudaTensor::new(sum, x.shape())
    }

    /// Makes the communication stream wait for the work queued on the compute stream.
    fn join_communication_stream(&self) -> Result<(), GpuError> {
        self.stream
            .join(self.device.stream())
            .map_err(GpuError::driver(
                "ordering a collective after the compute stream",
            ))
    }

    /// Makes the compute stream wait for the collectives queued on the communication stream.
    fn join_compute_stream(&self) -> Result<(), GpuError> {
        self.device
            .stream()
            .join(&self.stream)
            .map_err(GpuError::driver(
                "ordering the compute stream after a collective",
            ))
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, Vec<Box<dyn Any + Send>>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every rank's `value`, indexed by rank (NCCL's all-gather).
    pub fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>, GpuError> {
        let mine = self.device.upload(&[value])?;
        // SAFETY: every element is written by the all-gather below.
        let mut all = unsafe { self.device.alloc::<u64>(self.world_size) }?;
        self.join_communication_stream()?;
        let stream = &self.stream;
        {
            let (send, _send) = mine.slice().device_ptr(stream);
            let (receive, _receive) = all.slice_mut().device_ptr_mut(stream);
            // SAFETY: `mine` holds one u64 and `all` one per rank, on this device.
            unsafe {
                result::all_gather(
                    send as *const _,
                    receive as *mut _,
                    1,
                    u64::as_nccl_type(),
                    self.comm,
                    stream.cu_stream() as sys::cudaStream_t,
                )
            }
            .map_err(|e| self.error("an all-gather", e))?;
        }
        self.join_compute_stream()?;
        self.wait("an all-gather")?;
        self.device.download(&all)
    }

    /// Waits for the compute stream (which the caller made wait for the communication stream),
    /// polling NCCL for an asynchronous error (a peer that died); past the timeout, or at once
    /// when an earlier wait of the device ran past it, aborts the communicator and fails.
    fn wait(&self, during: &'static str) -> Result<(), GpuError> {
        self.device.count_host_wait();
        let waited = self
            .device
            .poll_stream(during, self.timeout, || self.check_async_error(during));
        if let Err(GpuError::Device(DeviceError::Stalled { .. })) = waited {
            self.abort();
            return Err(GpuError::Nccl {
                rank: self.rank,
                during,
                detail: format!(
                    "the other ranks did not take part within {:?} (one died or hangs; its own \
                     output says why); the communicator was aborted",
                    self.timeout
                ),
            });
        }
        waited
    }

    /// An error NCCL recorded while the collective ran, if any (the communicator is aborted).
    fn check_async_error(&self, during: &'static str) -> Result<(), GpuError> {
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: the communicator is alive and `state` is a live output location.
        unsafe { sys::ncclCommGetAsyncError(self.comm, &mut state) }
            .result()
            .map_err(|e| self.error(during, e))?;
        match state.result() {
            Ok(_) => Ok(()),
            Err(e) => {
                let error = self.error(during, e);
                self.abort();
                Err(error)
            }
        }
    }

    /// Aborts the communicator: its pending collectives end, it is unusable afterwards.
    fn abort(&self) {
        if !self.aborted.swap(true, Ordering::SeqCst) {
            // SAFETY: the communicator is alive and aborted once.
            let _ = unsafe { result::comm_abort(self.comm) };
        }
    }

    /// `error` during `during` with NCCL's own last message for this communicator.
    fn error(&self, during: &'static str, error: result::NcclError) -> GpuError {
        // SAFETY: the communicator is alive; NCCL returns a NUL-terminated string it owns.
        let last = unsafe { sys::ncclGetLastError(self.comm) };
        let mut error = nccl_error(self.rank, during, error);
        if let GpuError::Nccl { detail, .. } = &mut error
            && !last.is_null()
        {
            // SAFETY: checked non-null above; NCCL keeps the string alive until its next call.
            let last = unsafe { CStr::from_ptr(last) }.to_string_lossy();
            if !last.is_empty() {
                detail.push_str(&format!(" ({last})"));
            }
        }
        error
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        // All-reduces still in flight (a step that failed after starting buckets) are waited
        // for first, under the timeout: `ncclCommDestroy` would wait for them without one, and
        // their buffers must not go back to the pool before the compute stream has waited.
        let _ = self.wait_started();
        if !self.aborted.load(Ordering::SeqCst) {
            // SAFETY: the communicator is alive, not aborted, and destroyed once.
            let _ = unsafe { result::comm_destroy(self.comm) };
        }
    }
}

/// The unique id of `bytes`, which must be [`UNIQUE_ID_BYTES`] long.
fn unique_id_from(bytes: &[u8], rank: usize) -> Result<sys::ncclUniqueId, GpuError> {
    if bytes.len() != UNIQUE_ID_BYTES {
        return Err(GpuError::Nccl {
            rank,
            during: "reading the unique id",
            detail: format!(
                "{} bytes received, NCCL's ids have {UNIQUE_ID_BYTES}",
                bytes.len()
            ),
        });
    }
    let mut internal = [0 as std::ffi::c_char; UNIQUE_ID_BYTES];
    for (to, &from) in internal.iter_mut().zip(bytes) {
        *to = from as std::ffi::c_char;
    }
    Ok(sys::ncclUniqueId { internal })
}

/// An NCCL error code as [`GpuError::Nccl`].
fn nccl_error(rank: usize, during: &'static str, error: result::NcclError) -> GpuError {
    GpuError::Nccl {
        rank,
        during,
        detail: format!("{:?}", error.0),
    }
}
