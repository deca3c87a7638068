//! Where a command computes (`--device`): the CPU reference backend or the CUDA backend. What the
//! commands need of a backend besides the ops (peak memory, waiting for queued work) is the
//! contract's [`Compute`], re-exported here.
//!
//! The models, the optimizers and the training loop are generic over
//! [`revsnn_reference::Backend`]; a command picks its backend once, at the top, with
//! `on_backend!`, which instantiates its generic code for the device and float type chosen.
//!
//! A device computes its GEMMs in a [`Precision`] (`--precision`, docs/precision.md): the CPU
//! reference emulates every precision; CUDA runs `f32` and `tf32` (its TF32 switch) and `bf16`
//! and `fp16` as 16-bit GEMM operands into f32 (bf16 from compute capability 8.0).

use std::sync::Arc;

use revsnn_gpu::{CudaStatus, GpuDevice, GpuError};
pub use revsnn_reference::Compute;
use revsnn_reference::Precision;

use crate::error::{Error, Result};

/// The device a user asks for (`--device`, the `device` key of a training config); [`open`]
/// turns it into a [`Device`]. `train`, `bench` and `eval` default to `auto`; `grad`, `verify`
/// and `memory`, the oracle's commands, to `cpu`.
///
/// [`open`]: DeviceChoice::open
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The CPU reference backend.
    Cpu,
    /// The CUDA backend on GPU 0 (an error, saying why, when there is none).
    Cuda,
    /// CUDA when a usable GPU is found, else the CPU.
    Auto,
}

impl DeviceChoice {
    /// The device this choice names, opened, computing in `precision`. `cuda` without a usable
    /// GPU is an error that says why and what to do; `auto` says on stderr, in one line, which
    /// device it took and why; a precision the device cannot run is an error naming the card
    /// and the alternatives ([`Device::with_precision`]).
    pub fn open(self, precision: Precision) -> Result<Device> {
        let device = match self {
            DeviceChoice::Cpu => Device::Cpu(Precision::F32),
            DeviceChoice::Cuda => Device::open_cuda()?,
            DeviceChoice::Auto => {
                let (device, reason) = Device::auto();
                eprintln!("device: {} (auto: {reason})", device.kind());
                device
            }
        };
        device.with_precision(precision)
    }
}

/// An open device a command runs on: backends are made from it (`on_backend!`).
#[derive(Clone, Debug)]
pub enum Device {
    /// The CPU reference, emulating a precision in its GEMMs.
    Cpu(Precision),
    /// An open CUDA device; every backend made from it shares its context, stream, memory
    /// accounting and compiled kernels.
    Cuda(Arc<GpuDevice>),
}

impl Device {
    /// Opens CUDA device 0, or says why it cannot be used and what to do (a typed error, never
    /// a panic: no driver, no device, ...).
    pub fn open_cuda() -> Result<Device> {
        Device::open_cuda_ordinal(0)
    }

    /// Opens CUDA device `ordinal` (a rank of a multi-GPU run opens its `LOCAL_RANK`); an
    /// ordinal past the devices is an error naming both numbers.
    pub fn open_cuda_ordinal(ordinal: usize) -> Result<Device> {
        GpuDevice::open_ordinal(ordinal)
            .map(|device| Device::Cuda(Arc::new(device)))
            .map_err(Error::Cuda)
    }

    /// CUDA device 0 when `revsnn_gpu::probe` finds it and it opens, else the CPU; with why.
    pub fn auto() -> (Device, String) {
        match revsnn_gpu::probe() {
            CudaStatus::Available(info) => match GpuDevice::open() {
                Ok(device) => (
                    Device::Cuda(Arc::new(device)),
                    format!(
                        "found {}, compute capability {}.{}, {} GiB",
                        info.name,
                        info.compute_capability.0,
                        info.compute_capability.1,
                        info.total_memory_bytes >> 30
                    ),
                ),
                Err(error) => (
                    Device::Cpu(Precision::F32),
                    format!("found {} but cannot use it: {error}", info.name),
                ),
            },
            CudaStatus::Unavailable(GpuError::LibraryMissing { library }) => (
                Device::Cpu(Precision::F32),
                format!("no CUDA: {library} not found"),
            ),
            CudaStatus::Unavailable(reason) => (Device::Cpu(Precision::F32), reason.to_string()),
        }
    }

    /// This device computing its GEMMs in `precision`: the CPU emulates any; a CUDA device
    /// switches TF32 on or off or takes 16-bit GEMM operands (`GpuDevice::set_precision`; bf16 on
    /// a card older than compute capability 8.0 is an error that names the card and the
    /// alternatives).
    pub fn with_precision(self, precision: Precision) -> Result<Device> {
        match self {
            Device::Cpu(_) => Ok(Device::Cpu(precision)),
            Device::Cuda(gpu) => {
                gpu.set_precision(precision).map_err(Error::CudaCannot)?;
                Ok(Device::Cuda(gpu))
            }
        }
    }

    /// The precision of this device's GEMMs.
    pub fn precision(&self) -> Precision {
        match self {
            Device::Cpu(precision) => *precision,
            Device::Cuda(gpu) => gpu.precision(),
        }
    }

    /// `cpu` or `cuda`.
    pub fn kind(&self) -> &'static str {
        match self {
            Device::Cpu(_) => "cpu",
            Device::Cuda(_) => "cuda",
        }
    }

    /// `cpu`, or `cuda` and the card's name: `cuda (NVIDIA H200)`.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu(_) => "cpu".into(),
            Device::Cuda(device) => format!("cuda ({})", device.info.name),
        }
    }

    /// `cpu`, or the card's name.
    pub fn name(&self) -> String {
        match self {
            Device::Cpu(_) => "cpu".into(),
            Device::Cuda(device) => device.info.name.clone(),
        }
    }
}

/// Evaluates `$body` with `$backend` bound to the backend of `$device` (a `&Device`) in float
/// type `$dtype` (a `DType`): `Cpu<f32>`, `Cpu<f64>` (in the device's precision), `Cuda<f32>`
/// or `Cuda<f64>`. The body,
/// usually a call of a function generic over [`Compute`], is instantiated for each; backends made
/// from one [`Device`] share its context, stream, memory accounting and kernels.
macro_rules! on_backend {
    ($device:expr, $dtype:expr, |$backend:ident| $body:expr) => {
        match ($device, $dtype) {
            ($crate::device::Device::Cpu(precision), $crate::reference::DType::F32) => {
                let $backend = $crate::reference::Cpu::<f32>::with_precision(*precision);
                $body
            }
            ($crate::device::Device::Cpu(precision), $crate::reference::DType::F64) => {
                let $backend = $crate::reference::Cpu::<f64>::with_precision(*precision);
                $body
            }
            ($crate::device::Device::Cuda(gpu), $crate::reference::DType::F32) => {
                let $backend = $crate::gpu::Cuda::<f32>::on(::std::sync::Arc::clone(gpu));
                $body
            }
            ($crate::device::Device::Cuda(gpu), $crate::reference::DType::F64) => {
                let $backend = $crate::gpu::Cuda::<f64>::on(::std::sync::Arc::clone(gpu));
                $body
            }
        }
    };
}
pub(crate) use on_backend;
