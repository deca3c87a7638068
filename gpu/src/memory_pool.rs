//! The device's stream-ordered memory pool (`cuMemAllocAsync`), which every [`crate::GpuDevice`]
//! buffer comes from: made a caching allocator when the device opens, read for its sizes, and
//! emptied of its cached blocks when an allocation finds the device full (docs/memory.md §9.5).

use cudarc::driver::{CudaContext, sys};

use crate::error::GpuError;

/// Makes the pool a caching allocator: by default it returns freed memory to the driver at every
/// synchronisation; with the release threshold at `u64::MAX` it keeps it for reuse.
pub(crate) fn keep_freed_blocks(context: &CudaContext) -> Result<(), GpuError> {
    let mut threshold = u64::MAX;
    // SAFETY: the pool is the device's live default pool; the attribute is a u64.
    unsafe {
        sys::cuMemPoolSetAttribute(
            default_pool(context)?,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
    }
    .result()
    .map_err(GpuError::driver(
        "setting the memory pool's release threshold",
    ))
}

/// The most bytes the pool has held from the driver since the device opened, fragmentation
/// included (the twin of PyTorch's `max_memory_reserved`).
pub(crate) fn reserved_high(context: &CudaContext) -> Result<u64, GpuError> {
    attribute(
        context,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
    )
}

/// The bytes the pool holds from the driver but no live buffer uses: `cuMemGetInfo` counts them as
/// used. The blocks among them with no live buffer left [`release_cached_blocks`] hands back; the
/// free ranges between live buffers only serve allocations that fit them. 0 on a device without
/// the pool, whose buffers go back to the driver when freed.
pub(crate) fn cached_bytes(context: &CudaContext) -> Result<u64, GpuError> {
    if !context.has_async_alloc() {
        return Ok(0);
    }
    let reserved = attribute(
        context,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
    )?;
    let used = attribute(
        context,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
    )?;
    Ok(reserved.saturating_sub(used))
}

/// Hands every block with no live buffer back to the driver (`cuMemPoolTrimTo` to 0). A block
/// freed in stream order may count as in use until the host has seen its free, so the caller
/// waits for the stream first.
pub(crate) fn release_cached_blocks(context: &CudaContext) -> Result<(), GpuError> {
    // SAFETY: the pool is the device's live default pool.
    unsafe { sys::cuMemPoolTrimTo(default_pool(context)?, 0) }
        .result()
        .map_err(GpuError::driver(
            "releasing the memory pool's cached blocks",
        ))
}

fn attribute(context: &CudaContext, attribute: sys::CUmemPool_attribute) -> Result<u64, GpuError> {
    let mut bytes: u64 = 0;
    // SAFETY: the pool is the device's live default pool; the attributes read here are u64s.
    unsafe {
        sys::cuMemPoolGetAttribute(
            default_pool(context)?,
            attribute,
            &mut bytes as *mut u64 as *mut std::ffi::c_void,
        )
    }
    .result()
    .map_err(GpuError::driver("reading the memory pool's sizes"))?;
    Ok(bytes)
}

fn default_pool(context: &CudaContext) -> Result<sys::CUmemoryPool, GpuError> {
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: the device handle belongs to a live context; `pool` is a live out-pointer.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, context.cu_device()) }
        .result()
        .map_err(GpuError::driver("getting the device's memory pool"))?;
    Ok(pool)
}
