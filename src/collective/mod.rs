//! Collectives between the ranks of a data-parallel run (docs/distributed.md).
//!
//! Data-parallel training needs few operations between ranks: a sum of gradients (and, with
//! synchronised BatchNorm, of statistics) that every rank receives identically, and a way for the
//! ranks to compare what they were started with. [`Collective`] is that contract. [`ThreadGroup`]
//! implements it for ranks that are threads of one process, with a fixed reduction order, so the
//! algorithm of a multi-GPU run can be tested on the CPU bit for bit; [`NcclGroup`] implements it
//! for ranks that are processes, one GPU each, over NCCL.

mod buckets;
mod launch;
mod nccl;
mod rendezvous;
mod spawn;
mod threads;

pub use buckets::{BUCKET_BYTES, GradReducer, UsePlan};
pub use launch::ProcessRank;
pub use nccl::NcclGroup;
pub use rendezvous::rendezvous;
pub use spawn::run_local_ranks;
pub use threads::ThreadGroup;

use revsnn_reference::{Backend, Element};

use crate::error::Result;
use crate::model::{EntryKind, Grads, ParamId, ParamStore};

/// One rank's view of a group of `world_size` ranks.
pub trait Collective<B: Backend> {
    /// This rank's index, `0..world_size`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn world_size(&self) -> usize;

    /// `x` summed elementwise over every rank, the same bits on each: `x_0 + x_1 + ... + x_{N-1}`
    /// in rank order. Every rank must pass a tensor of the same shape.
    fn all_reduce_sum(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor>;

    /// Starts [`Collective::all_reduce_sum`] of `x` without waiting for it, and returns the sum
    /// to come: only work queued after [`Collective::join_started`] may read it, and `x` must
    /// not change before [`Collective::wait_started`]. By default the all-reduce completes at
    /// once; an implementation that starts it for real overrides the two others too.
    fn start_all_reduce_sum(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor> {
        self.all_reduce_sum(backend, x)
    }

    /// Orders the work queued on `backend` from now on after every all-reduce started, without
    /// waiting for them on the host, so the host can queue more work (the optimizer step) while
    /// the device finishes them (nothing to do by default).
    fn join_started(&self, _backend: &B) -> Result<()> {
        Ok(())
    }

    /// Waits on the host for every all-reduce started since the last wait, watching for a rank
    /// that died (nothing to do by default). It must come before any other read back from the
    /// device: a plain read would wait forever for a collective that a dead rank never joins.
    fn wait_started(&self, _backend: &B) -> Result<()> {
        Ok(())
    }

    /// Every rank's `value`, indexed by rank: how the ranks compare the hash of their settings.
    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>>;
}

/// Replaces every gradient in `grads` by its mean over the ranks: the sum of one all-reduce of
/// all of them (flattened into one bucket), times `1 / world_size`, so every rank steps with the
/// same bits. Training averages in buckets as the backward goes ([`GradReducer`]); the result
/// is the same.
pub fn average_grads<B: Backend>(
    group: &dyn Collective<B>,
    backend: &B,
    grads: &mut Grads<B>,
) -> Result<()> {
    let reducer = GradReducer::new(group, grads.len(), usize::MAX, UsePlan::default());
    reducer.finish(backend, grads)?;
    group.wait_started(backend)
}

/// Gives every rank rank 0's BatchNorm running statistics: an all-reduce to which the other
/// ranks contribute zeros (exact), as DDP's `broadcast_buffers`. Without synchronised
/// BatchNorm each rank updates them from its own share, and rank 0's are the ones its
/// checkpoints keep.
pub fn broadcast_running_stats<B: Backend>(
    group: &dyn Collective<B>,
    backend: &B,
    store: &mut ParamStore<B>,
) -> Result<()> {
    let stats: Vec<(usize, B::Tensor)> = store
        .entries()
        .iter()
        .enumerate()
        .filter(|(_, entry)| entry.kind == EntryKind::RunningStat)
        .filter_map(|(index, entry)| entry.tensor().map(|t| (index, t.clone())))
        .collect();
    let contributions = stats
        .iter()
        .map(|(_, t)| match group.rank() {
            0 => Ok(t.clone()),
            _ => backend.zeros(&backend.shape(t)),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let parts: Vec<&B::Tensor> = contributions.iter().collect();
    let broadcast = all_reduce_bucket(group, backend, &parts)?;
    for ((index, _), value) in stats.iter().zip(broadcast) {
        store.set(ParamId(*index), value);
    }
    Ok(())
}

/// The all-reduced sums of `parts`, exchanged as one flat bucket (one collective however many
/// tensors), each returned in its own shape.
fn all_reduce_bucket<B: Backend>(
    group: &dyn Collective<B>,
    backend: &B,
    parts: &[&B::Tensor],
) -> Result<Vec<B::Tensor>> {
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let (bucket, shapes) = flatten(backend, parts)?;
    let sum = group.all_reduce_sum(backend, &bucket)?;
    unflatten(backend, &sum, &shapes)
}

/// `parts` flattened and joined, in order, into one bucket, with each part's shape.
fn flatten<B: Backend>(backend: &B, parts: &[&B::Tensor]) -> Result<(B::Tensor, Vec<Vec<usize>>)> {
    let shapes: Vec<Vec<usize>> = parts.iter().map(|p| backend.shape(p)).collect();
    let flat = parts
        .iter()
        .zip(&shapes)
        .map(|(p, shape)| backend.reshape(p, &[shape.iter().product()]))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let bucket = backend.concat(&flat.iter().collect::<Vec<_>>(), 0)?;
    Ok((bucket, shapes))
}

/// The parts of a bucket [`flatten`] made (or of its sum), cut back out in order, each in its
/// shape.
fn unflatten<B: Backend>(
    backend: &B,
    bucket: &B::Tensor,
    shapes: &[Vec<usize>],
) -> Result<Vec<B::Tensor>> {
    let mut start = 0;
    shapes
        .iter()
        .map(|shape| {
            let len = shape.iter().product();
            let part = backend.narrow(bucket, 0, start, len)?;
            start += len;
            Ok(backend.reshape(&part, shape)?)
        })
        .collect()
}

/// The elementwise sum of `parts` in their order, each part's values widened to `f64` bit
/// patterns; accumulated in `E`, so an `f32` sum rounds as an `f32` accumulator does.
fn sum_in_rank_order<E: Element>(parts: &[&[u64]]) -> Vec<E> {
    let len = parts.first().map_or(0, |part| part.len());
    (0..len)
        .map(|i| {
            let mut values = parts.iter().map(|part| E::cast(f64::from_bits(part[i])));
            let first = values.next().unwrap_or_else(E::zero);
            values.fold(first, |acc, v| acc + v)
        })
        .collect()
}
