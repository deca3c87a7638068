//! Launches over many tensors at once (kernel side in `gpu/kernels/foreach.cuh`): a kernel takes
//! a table of tensors by value, and each block works on one chunk of [`CHUNK`] elements of one
//! tensor, so one launch covers tensors of any sizes. A table's `#[repr(C)]` twin in Rust fills
//! its device addresses with [`read_address`] and [`write_address`] and numbers its chunks with
//! [`number_chunks`]; [`chunk_launch`] is the launch. The optimizer steps and the non-finite
//! count use it (up to 64, 48 or 128 tensors per launch where they took one each); a table must
//! fit [`TABLE_BYTES`].

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, SyncOnDrop};

use super::{THREADS, shape_error};
use crate::error::GpuError;

/// Elements per block: `FOREACH_CHUNK` of foreach.cuh.
const CHUNK: usize = 4096;

/// The most bytes a table may take: every CUDA device accepts 4 KiB of kernel parameters, and
/// the kernels' other parameters (a counter's address, or up to five scalars) take at most 64.
pub(crate) const TABLE_BYTES: usize = 4096 - 64;

/// Numbers the chunks of one launch's tensors, of lengths `lens`: tensor `t`'s are the blocks
/// `first_block[t]` to `first_block[t + 1] - 1`, and every entry past the last tensor holds the
/// number of blocks, which it returns. An error names `op` when they overflow the kernels'
/// `int`.
pub(crate) fn number_chunks(
    op: &'static str,
    lens: impl Iterator<Item = usize>,
    first_block: &mut [i32],
) -> Result<u32, GpuError> {
    let mut total = 0usize;
    let mut entries = first_block.iter_mut();
    for (len, entry) in lens.zip(entries.by_ref()) {
        *entry = total as i32;
        total += len.div_ceil(CHUNK);
        if total > i32::MAX as usize {
            let detail = format!(
                "{total} chunks of {CHUNK} elements in one launch; the kernels number at most {}",
                i32::MAX
            );
            return Err(shape_error(op, detail));
        }
    }
    entries.for_each(|entry| *entry = total as i32);
    Ok(total as u32)
}

/// One block of [`THREADS`] threads per chunk.
pub(crate) fn chunk_launch(blocks: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `x`'s device address for a table; the read is recorded on `stream` when `guards` drop, so
/// they must live until the launch is queued.
pub(crate) fn read_address<'a, E>(
    x: &'a CudaSlice<E>,
    stream: &'a CudaStream,
    guards: &mut Vec<SyncOnDrop<'a>>,
) -> u64 {
    let (address, guard) = x.device_ptr(stream);
    guards.push(guard);
    address
}

/// [`read_address`] for a buffer the kernel writes.
pub(crate) fn write_address<'a, E>(
    y: &'a mut CudaSlice<E>,
    stream: &'a CudaStream,
    guards: &mut Vec<SyncOnDrop<'a>>,
) -> u64 {
    let (address, guard) = y.device_ptr_mut(stream);
    guards.push(guard);
    address
}
