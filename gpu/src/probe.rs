//! The CUDA probe: reports whether a GPU can be used, and why not when it cannot. Never panics,
//! needs no GPU.

use cudarc::driver::{CudaContext, sys};

use crate::error::GpuError;

/// What a CUDA device is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// `(major, minor)`, e.g. `(9, 0)` for H100/H200.
    pub compute_capability: (i32, i32),
    pub total_memory_bytes: usize,
    /// The driver's CUDA version as `major * 1000 + minor * 10`, e.g. 13000.
    pub driver_version: i32,
    pub device_count: usize,
}

/// The outcome of [`probe`].
#[derive(Debug)]
pub enum CudaStatus {
    Available(DeviceInfo),
    Unavailable(GpuError),
}

/// Whether the CUDA driver library can be loaded; `cudarc` panics on first use when it cannot,
/// so every entry point asks this first.
pub fn driver_library_present() -> bool {
    // SAFETY: only tries to dlopen the driver library; no CUDA call is made.
    unsafe { sys::is_culib_present() }
}

/// Looks for a CUDA device without ever panicking: a missing library, a driver without devices
/// and a failing driver call all come back as [`CudaStatus::Unavailable`] with the reason.
pub fn probe() -> CudaStatus {
    match describe_device(0) {
        Ok(info) => CudaStatus::Available(info),
        Err(error) => CudaStatus::Unavailable(error),
    }
}

/// What device `ordinal` is, or why it cannot be used: no driver, no device, or an ordinal past
/// the devices the driver reports ([`GpuError::NoSuchDevice`], naming both).
pub fn describe_device(ordinal: usize) -> Result<DeviceInfo, GpuError> {
    if !driver_library_present() {
        return Err(GpuError::LibraryMissing {
            library: "libcuda.so (the NVIDIA driver)",
        });
    }
    let count = CudaContext::device_count().map_err(|e| GpuError::NoDevice(e.to_string()))?;
    if count < 1 {
        return Err(GpuError::NoDevice("the driver reports 0 devices".into()));
    }
    if ordinal >= count as usize {
        return Err(GpuError::NoSuchDevice {
            ordinal,
            count: count as usize,
        });
    }
    let context =
        CudaContext::new(ordinal).map_err(GpuError::driver("creating a context on the device"))?;
    let mut driver_version = 0;
    // SAFETY: the driver library is loaded (checked above) and the pointer is to a live i32.
    unsafe { sys::cuDriverGetVersion(&mut driver_version) }
        .result()
        .map_err(GpuError::driver("reading the driver version"))?;
    Ok(DeviceInfo {
        ordinal,
        name: context
            .name()
            .map_err(GpuError::driver("reading the device name"))?,
        compute_capability: context
            .compute_capability()
            .map_err(GpuError::driver("reading the compute capability"))?,
        total_memory_bytes: context
            .total_mem()
            .map_err(GpuError::driver("reading the memory size"))?,
        driver_version,
        device_count: count as usize,
    })
}
