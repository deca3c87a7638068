//! Shared by the GPU tests: open the device or skip.
//!
//! Without a GPU every GPU test prints `SKIP: no CUDA device (<reason>)` and passes; with
//! `REVSNN_REQUIRE_GPU=1` (set by `gpu/check.sh`) a missing GPU fails the test instead.

use std::io::Write;
use std::sync::Arc;

use crate::backend::Cuda;
use crate::device::GpuDevice;
use crate::ops::GpuElement;

/// The device, or `None` after printing why the calling test skips. Panics (fails the test) when
/// `REVSNN_REQUIRE_GPU=1` and there is no usable device.
pub fn device_or_skip(test: &str) -> Option<GpuDevice> {
    match GpuDevice::open() {
        Ok(device) => Some(device),
        Err(reason) => {
            if std::env::var("REVSNN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: REVSNN_REQUIRE_GPU=1 but no CUDA device: {reason}");
            }
            // Written past the test harness's capture, so the skip shows in every log.
            let _ = writeln!(std::io::stderr(), "SKIP: no CUDA device ({test}: {reason})");
            None
        }
    }
}

/// The CUDA backend on the device, or `None` after printing why the calling test skips (see
/// [`device_or_skip`]).
pub fn backend_or_skip<E: GpuElement>(test: &str) -> Option<Cuda<E>> {
    device_or_skip(test).map(|device| Cuda::on(Arc::new(device)))
}
