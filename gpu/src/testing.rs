//! Shared by the GPU tests and benches: open the device (or the emulator) or skip; run on each
//! convolution engine; NCCL or skip; the device memory a pass allocates.
//!
//! Without a GPU every GPU test prints `SKIP: no CUDA device (<reason>)` and passes; with
//! `REVSNN_REQUIRE_GPU=1` (set by `gpu/check.sh`) a missing GPU fails the test instead.

use std::io::Write;
use std::sync::Arc;

use crate::backend::Cuda;
use crate::device::GpuDevice;
use crate::ops::GpuElement;
use crate::ops::conv::ConvEngine;

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

/// Whether `device` is the CPU emulator of the CUDA stack (`gpu/emulator/`), which can do what a
/// card cannot: shrink its memory, pose as another card, add in the reference's order.
pub fn is_emulator(device: &GpuDevice) -> bool {
    device.info.name == "revsnn CPU emulator"
}

/// The device when it is the CUDA emulator, or `None` after printing why the calling test skips:
/// no device ([`device_or_skip`]), or a real card, which lacks what the test `needs` of the
/// emulator (e.g. "whose device can shrink").
pub fn emulator_or_skip(test: &str, needs: &str) -> Option<GpuDevice> {
    let device = device_or_skip(test)?;
    if is_emulator(&device) {
        return Some(device);
    }
    // Written past the test harness's capture, so the skip shows in every log.
    let _ = writeln!(
        std::io::stderr(),
        "SKIP: {test} needs the CUDA emulator, {needs}"
    );
    None
}

/// Allocates `count` buffers of `bytes` each on `device` and frees them: its memory pool keeps
/// the blocks for reuse, so an allocation larger than each needs the pool to release them.
pub fn leave_freed_blocks(device: &GpuDevice, count: usize, bytes: usize) {
    let buffers: Vec<_> = (0..count)
        .map(|_| device.alloc_zeros::<u8>(bytes).unwrap())
        .collect();
    drop(buffers);
}

/// The CUDA backend on the device, or `None` after printing why the calling test skips (see
/// [`device_or_skip`]).
pub fn backend_or_skip<E: GpuElement>(test: &str) -> Option<Cuda<E>> {
    device_or_skip(test).map(|device| Cuda::on(Arc::new(device)))
}

/// Each convolution engine `device` can run, set on it in turn as the iterator yields it: im2col
/// always, then cuDNN where it loads. Without cuDNN it prints `SKIP: cuDNN engine not run:
/// <reason>` past the test harness's capture, once per process, so the line shows in every log
/// (CI's included) although the test passes; it panics (fails the caller) instead when
/// `REVSNN_REQUIRE_CUDNN=1`.
pub fn each_conv_engine(device: &GpuDevice) -> impl Iterator<Item = ConvEngine> + '_ {
    let cudnn = match device.set_conv_engine(ConvEngine::Cudnn) {
        Ok(()) => Some(ConvEngine::Cudnn),
        Err(reason) => {
            if std::env::var("REVSNN_REQUIRE_CUDNN").is_ok_and(|v| v == "1") {
                panic!("REVSNN_REQUIRE_CUDNN=1 but cuDNN does not load: {reason}");
            }
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                let _ = writeln!(std::io::stderr(), "SKIP: cuDNN engine not run: {reason}");
            });
            None
        }
    };
    [Some(ConvEngine::Im2colGemm), cudnn]
        .into_iter()
        .flatten()
        .inspect(move |&engine| device.set_conv_engine(engine).unwrap())
}

/// Whether NCCL loads, for the tests of several GPU ranks; prints `SKIP: NCCL not found (<test>)`
/// past the harness's capture when it does not, and panics (fails the test) instead when
/// `REVSNN_REQUIRE_NCCL=1` (set by the emulator's test script, which provides a fake NCCL).
pub fn nccl_or_skip(test: &str) -> bool {
    if crate::nccl::nccl_present() {
        return true;
    }
    if std::env::var("REVSNN_REQUIRE_NCCL").is_ok_and(|v| v == "1") {
        panic!("{test}: REVSNN_REQUIRE_NCCL=1 but libnccl.so does not load");
    }
    let _ = writeln!(std::io::stderr(), "SKIP: NCCL not found ({test})");
    false
}

/// What `pass` returns, with the most device memory it held above the live bytes before it (the
/// queue drained on both sides, so that the count is of this pass alone).
pub fn with_peak_rise<R>(device: &GpuDevice, pass: impl FnOnce() -> R) -> (R, usize) {
    device.synchronize().unwrap();
    let before = device.reset_peak_memory().live_bytes;
    let result = pass();
    device.synchronize().unwrap();
    (result, device.memory().peak_bytes - before)
}
