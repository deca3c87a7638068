//! A rank's host waits when its stream stalls (docs/distributed.md §7): the stream waits on a
//! collective that a rank which died or hangs never joins, and no host wait may then last longer
//! than the communicator's timeout. Here an allocation finds the device full while the stream
//! stalls, so its retry must wait for the stream first (docs/memory.md §9.5): the wait ends at the
//! timeout with `DeviceError::Stalled`, and every later wait (a download, a synchronisation, the
//! collectives' own) fails at once. On the CUDA emulator, whose streams can pose as stalled
//! (`REVSNN_EMU_STREAM_STALLED`; a wait without a limit then fails at once instead of blocking)
//! and whose device can shrink; a real card says SKIP. Skips without a GPU or NCCL (`SKIP:`),
//! fails then with `REVSNN_REQUIRE_GPU=1` or `REVSNN_REQUIRE_NCCL=1`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use revsnn_gpu::nccl::{Communicator, unique_id};
use revsnn_gpu::testing::{emulator_or_skip, leave_freed_blocks, nccl_or_skip};
use revsnn_gpu::{CudaTensor, GpuError};
use revsnn_reference::DeviceError;

const MIB: usize = 1 << 20;
/// The emulated device's memory.
const DEVICE_BYTES: usize = 64 * MIB;
/// The communicator's timeout: the longest a host wait may last.
const TIMEOUT: Duration = Duration::from_millis(300);

const MEMORY_VARIABLE: &str = "REVSNN_EMU_MEMORY_BYTES";
const STALL_VARIABLE: &str = "REVSNN_EMU_STREAM_STALLED";

/// Unsets the stall when dropped, however the test ends.
struct Stall;

impl Stall {
    fn start() -> Stall {
        // SAFETY: see the test.
        unsafe { std::env::set_var(STALL_VARIABLE, "1") };
        Stall
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        // SAFETY: see the test.
        unsafe { std::env::remove_var(STALL_VARIABLE) };
    }
}

fn is_stalled<T>(result: &Result<T, GpuError>) -> bool {
    matches!(
        result,
        Err(GpuError::Device(DeviceError::Stalled { limit, .. })) if *limit == TIMEOUT
    )
}

#[test]
fn a_stalled_stream_ends_every_host_wait_of_a_rank_within_its_timeout() {
    // SAFETY: this binary's only test sets the variables; the first before it opens a device (the
    // first reader of the environment), the stall while no other thread reads it.
    unsafe { std::env::set_var(MEMORY_VARIABLE, DEVICE_BYTES.to_string()) };
    let test = "a_stalled_stream_ends_every_host_wait_of_a_rank_within_its_timeout";
    let Some(device) = emulator_or_skip(test, "whose streams can stall") else {
        return;
    };
    if !nccl_or_skip(test) {
        return;
    }
    let device = Arc::new(device);
    let communicator = Communicator::join(device.clone(), 0, 1, &unique_id().unwrap(), TIMEOUT)
        .expect("a communicator of one rank");

    // Blocks the pool keeps from freed buffers, so that a larger buffer needs the retry.
    let free = device.free_memory_bytes().unwrap();
    leave_freed_blocks(&device, 16, free * 3 / 4 / 16);
    // A gradient bucket under way: the compute stream now waits on the communication stream.
    let x = CudaTensor::new(device.upload(&[1.0f32, 2.0]).unwrap(), &[2]).unwrap();
    let _sum = communicator.start_all_reduce_sum(&x).unwrap();
    communicator.join_started().unwrap();

    let stall = Stall::start();
    let started = Instant::now();
    let retried = device.alloc_zeros::<u8>(free * 5 / 8);
    let waited = started.elapsed();
    assert!(is_stalled(&retried), "{retried:?}");
    let message = retried.unwrap_err().to_string();
    assert!(message.contains("--rank-timeout"), "{message}");
    assert!(
        waited >= TIMEOUT && waited < TIMEOUT + Duration::from_secs(5),
        "the retry's wait lasted {waited:?}, the timeout is {TIMEOUT:?}"
    );

    // Each counted as one host wait, as without a limit.
    let waits = device.transfer_counts().host_waits;
    let started = Instant::now();
    assert!(is_stalled(&device.download(x.buffer())));
    assert!(is_stalled(&device.synchronize()));
    assert_eq!(device.transfer_counts().host_waits, waits + 2);
    let error = communicator.wait_started().unwrap_err().to_string();
    assert!(error.contains("did not take part within"), "{error}");
    assert!(
        started.elapsed() < TIMEOUT,
        "the waits after the stall took {:?}",
        started.elapsed()
    );
    drop(stall);
}
