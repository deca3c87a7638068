//! Where a command computes (`--device`): the CPU reference backend or the CUDA backend. What the
//! commands need of a backend besides the ops (peak memory, waiting for queued work) is the
//! contract's [`Compute`], re-exported here.
//!
//! The models, the optimizers and the training loop are generic over
//! [`revsnn_reference::Backend`]; a command picks its backend once, at the top, with
//! [`Device::run`], which instantiates a [`Task`] for the device and float type chosen.

use std::sync::Arc;

use revsnn_gpu::{Cuda, GpuDevice};
pub use revsnn_reference::Compute;
use revsnn_reference::{Cpu, DType};

use crate::error::{Error, Result};

/// Work to run on whichever backend the command chose: [`Device::run`] calls `run` with the
/// backend instantiated for the device and float type.
pub trait Task {
    type Output;

    fn run<B: Compute>(self, backend: B) -> Result<Self::Output>;
}

/// A device a command runs on.
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

    /// Runs `task` on this device in `dtype`.
    pub fn run<T: Task>(&self, dtype: DType, task: T) -> Result<T::Output> {
        match (self, dtype) {
            (Device::Cpu, DType::F32) => task.run(Cpu::<f32>::new()),
            (Device::Cpu, DType::F64) => task.run(Cpu::<f64>::new()),
            (Device::Cuda(device), DType::F32) => task.run(Cuda::<f32>::on(device.clone())),
            (Device::Cuda(device), DType::F64) => task.run(Cuda::<f64>::on(device.clone())),
        }
    }
}
