//! [`NcclGroup`]: ranks that are processes, one per GPU, exchanging through NCCL
//! (docs/distributed.md §7). It implements [`Collective`] for the CUDA backend only; the
//! training loop, generic over the backend, gets it as its own backend's collective from
//! [`NcclGroup::into_collective`].

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use revsnn_gpu::nccl::{Communicator, unique_id};
use revsnn_gpu::ops::GpuElement;
use revsnn_gpu::{Cuda, CudaTensor, GpuDevice, GpuError};
use revsnn_reference::Backend;

use super::{Collective, ProcessRank, rendezvous};
use crate::error::{Error, Result};

/// This process's rank of a multi-GPU run: its NCCL communicator.
pub struct NcclGroup {
    communicator: Communicator,
}

impl NcclGroup {
    /// Joins the group of a run whose ranks are processes, as `me`, on `device`: the
    /// rendezvous first (every rank started with the same `settings`; rank 0 makes NCCL's
    /// unique id and hands it out), then the communicator. Each step waits at most `timeout`
    /// for the other ranks.
    pub fn join(
        me: &ProcessRank,
        device: &Arc<GpuDevice>,
        settings: &str,
        timeout: Duration,
    ) -> Result<NcclGroup> {
        let id = rendezvous(
            me,
            settings,
            || unique_id().map_err(Error::CudaCannot),
            timeout,
        )?;
        let communicator = Communicator::join(device.clone(), me.rank, me.world_size, &id, timeout)
            .map_err(Error::CudaCannot)?;
        Ok(NcclGroup { communicator })
    }

    /// This rank's index.
    pub fn rank(&self) -> usize {
        self.communicator.rank()
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.communicator.world_size()
    }

    /// This group as the collective of backend `B`, which must be a CUDA backend (NCCL moves
    /// device memory): an error naming the backend otherwise.
    pub fn into_collective<B: Backend>(self) -> Result<Box<dyn Collective<B> + Send>> {
        let boxed: Box<dyn Any> = match std::any::TypeId::of::<B>() {
            t if t == std::any::TypeId::of::<Cuda<f32>>() => {
                Box::new(Box::new(self) as Box<dyn Collective<Cuda<f32>> + Send>)
            }
            t if t == std::any::TypeId::of::<Cuda<f64>>() => {
                Box::new(Box::new(self) as Box<dyn Collective<Cuda<f64>> + Send>)
            }
            _ => return Err(not_cuda::<B>()),
        };
        boxed
            .downcast::<Box<dyn Collective<B> + Send>>()
            .map(|collective| *collective)
            .map_err(|_| not_cuda::<B>())
    }

    fn error(&self, error: GpuError) -> Error {
        Error::Collective {
            rank: self.rank(),
            detail: error.to_string(),
        }
    }
}

/// The error of an NCCL group asked to serve a backend that is not CUDA.
fn not_cuda<B>() -> Error {
    Error::Usage(format!(
        "NCCL ranks exchange GPU memory, and this run computes on {}: several GPUs need \
         --device cuda",
        std::any::type_name::<B>()
    ))
}

impl<E: GpuElement> Collective<Cuda<E>> for NcclGroup {
    fn rank(&self) -> usize {
        self.communicator.rank()
    }

    fn world_size(&self) -> usize {
        self.communicator.world_size()
    }

    fn all_reduce_sum(&self, _backend: &Cuda<E>, x: &CudaTensor<E>) -> Result<CudaTensor<E>> {
        self.communicator
            .all_reduce_sum(x)
            .map_err(|e| self.error(e))
    }

    fn start_all_reduce_sum(&self, _backend: &Cuda<E>, x: &CudaTensor<E>) -> Result<CudaTensor<E>> {
        self.communicator
            .start_all_reduce_sum(x)
            .map_err(|e| self.error(e))
    }

    fn join_started(&self, _backend: &Cuda<E>) -> Result<()> {
        self.communicator.join_started().map_err(|e| self.error(e))
    }

    fn wait_started(&self, _backend: &Cuda<E>) -> Result<()> {
        self.communicator.wait_started().map_err(|e| self.error(e))
    }

    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        self.communicator
            .all_gather_u64(value)
            .map_err(|e| self.error(e))
    }
}
