//! The device's memory pool near a full card (docs/memory.md §9.5): blocks it keeps from freed
//! buffers, each too small for a larger buffer, are released and the allocation retried, so a
//! buffer that fits beside the live ones is never refused; one that does not is
//! `DeviceError::OutOfMemory` with the sizes after the release. On the CUDA emulator, whose
//! device shrinks to `REVSNN_EMU_MEMORY_BYTES` and whose pool keeps freed blocks in chunks as the
//! driver's (gpu/README.md); a real card would have to be filled, starving the tests that share
//! it, and the test says SKIP. Skips without a GPU (`SKIP: no CUDA device`), fails then with
//! `REVSNN_REQUIRE_GPU=1`.

use revsnn_gpu::testing::{emulator_or_skip, leave_freed_blocks};
use revsnn_gpu::{GpuDevice, GpuError};
use revsnn_reference::DeviceError;

const MIB: usize = 1 << 20;
/// The emulated device's memory.
const DEVICE_BYTES: usize = 64 * MIB;

/// `len` zeroed bytes on `device`, or the error.
fn bytes(device: &GpuDevice, len: usize) -> Result<revsnn_gpu::memory::DeviceBuffer<u8>, GpuError> {
    device.alloc_zeros::<u8>(len)
}

#[test]
fn cached_blocks_are_released_for_a_buffer_that_fits_and_a_buffer_that_does_not_is_out_of_memory() {
    // SAFETY: this binary's only test sets the variable before it opens a device, the first
    // reader of the environment, and starts no thread.
    unsafe { std::env::set_var("REVSNN_EMU_MEMORY_BYTES", DEVICE_BYTES.to_string()) };
    let Some(device) = emulator_or_skip("memory_pool", "whose device can shrink") else {
        return;
    };
    let free = device.free_memory_bytes().unwrap();
    assert!(free > 48 * MIB, "{free} bytes free of {DEVICE_BYTES}");

    // 3/4 of the free memory in 16 blocks, freed: the pool keeps them, so the driver's count of
    // free bytes shrinks while what new buffers can get does not
    let small = free * 3 / 4 / 16;
    leave_freed_blocks(&device, 16, small);
    assert_eq!(device.free_memory_bytes().unwrap(), free);
    assert!(device.pool_reserved_high().unwrap() >= 16 * small as u64);
    assert_eq!(device.transfer_counts().alloc_retries, 0);

    // larger than any kept block and than the driver's free bytes: fits after the release
    let large = free * 5 / 8;
    let held = bytes(&device, large).unwrap();
    assert_eq!(held.len(), large);
    assert_eq!(device.transfer_counts().alloc_retries, 1);
    assert_eq!(device.free_memory_bytes().unwrap(), free - large);

    // beside `held` there is no room, kept blocks or not
    let requested = free / 2;
    let error = bytes(&device, requested).unwrap_err();
    assert_eq!(device.transfer_counts().alloc_retries, 2);
    let GpuError::Device(DeviceError::OutOfMemory {
        requested_bytes,
        free_bytes,
        live_bytes,
        total_bytes,
    }) = error
    else {
        panic!("expected out of memory, got {error}");
    };
    assert_eq!(
        (requested_bytes, free_bytes, live_bytes, total_bytes),
        (requested, free - large, large, DEVICE_BYTES)
    );
    drop(held);
}
