//! Where a command computes (`--device`): the CPU reference backend or the CUDA backend. What the
//! commands need of a backend besides the ops (peak memory, waiting for queued work) is the
//! contract's [`Compute`], re-exported here.
//!
//! The models, the optimizers and the training loop are generic over
//! [`revsnn_reference::Backend`]; a command picks its backend once, at the top, with
//! `on_backend!`, which instantiates its generic code for the device and float type chosen.

use std::sync::Arc;

use revsnn_gpu::GpuDevice;
pub use revsnn_reference::Compute;

use crate::error::{Error, Result};

/// The device a user asks for (`--device`, the `device` key of a training config); [`open`]
/// turns it into a [`Device`].
///
/// [`open`]: DeviceChoice::open
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The CPU reference backend.
    #[default]
    Cpu,
    /// The CUDA backend on GPU 0 (an error, saying why, when there is none).
    Cuda,
    /// CUDA when a GPU is found, else the CPU.
    Auto,
}

impl DeviceChoice {
    /// The device this choice names, opened; `cuda` without a usable GPU is an error that says
    /// why and what to do.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda => Device::open_cuda(),
            DeviceChoice::Auto => {
                let (device, reason) = Device::auto();
                if let Some(reason) = reason {
                    eprintln!("--device auto: using the CPU (CUDA: {reason})");
                }
                Ok(device)
            }
        }
    }
}

/// An open device a command runs on: backends are made from it (`on_backend!`).
#[derive(Clone, Debug)]
pub enum Device {
    Cpu,
    /// An open CUDA device; every backend made from it shares its context, stream, memory
    /// accounting and compiled kernels.
    Cuda(Arc<GpuDevice>),
}

impl Device {
    /// Opens CUDA device 0, or says why it cannot be used and what to do (a typed error, never
    /// a panic: no driver, no device, ...).
    pub fn open_cuda() -> Result<Device> {
        GpuDevice::open()
            .map(|device| Device::Cuda(Arc::new(device)))
            .map_err(Error::Cuda)
    }

    /// CUDA when `revsnn_gpu::probe` finds a device, else the CPU; the second value says why
    /// CUDA was not taken.
    pub fn auto() -> (Device, Option<String>) {
        match revsnn_gpu::probe() {
            revsnn_gpu::CudaStatus::Available(_) => match Device::open_cuda() {
                Ok(device) => (device, None),
                Err(error) => (Device::Cpu, Some(error.to_string())),
            },
            revsnn_gpu::CudaStatus::Unavailable(reason) => (Device::Cpu, Some(reason.to_string())),
        }
    }

    /// `cpu` or `cuda`.
    pub fn kind(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda(_) => "cuda",
        }
    }

    /// `cpu`, or the card's name.
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            Device::Cuda(device) => device.info.name.clone(),
        }
    }
}

/// Evaluates `$body` with `$backend` bound to the backend of `$device` (a `&Device`) in float
/// type `$dtype` (a `DType`): `Cpu<f32>`, `Cpu<f64>`, `Cuda<f32>` or `Cuda<f64>`. The body,
/// usually a call of a function generic over [`Compute`], is instantiated for each; backends made
/// from one [`Device`] share its context, stream, memory accounting and kernels.
macro_rules! on_backend {
    ($device:expr, $dtype:expr, |$backend:ident| $body:expr) => {
        match ($device, $dtype) {
            ($crate::device::Device::Cpu, $crate::reference::DType::F32) => {
                let $backend = $crate::reference::Cpu::<f32>::new();
                $body
            }
            ($crate::device::Device::Cpu, $crate::reference::DType::F64) => {
                let $backend = $crate::reference::Cpu::<f64>::new();
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
