//! Collectives between the ranks of a data-parallel run (docs/distributed.md).
//!
//! Data-parallel training needs few operations between ranks: a sum of gradients (and, with
//! synchronised BatchNorm, of statistics) that every rank receives identically, and a way for the
//! ranks to compare what they were started with. [`Collective`] is that contract. [`ThreadGroup`]
//! implements it for ranks that are threads of one process, with a fixed reduction order, so the
//! algorithm of a multi-GPU run can be tested on the CPU bit for bit.

mod threads;

pub use threads::ThreadGroup;

use revsnn_reference::{Backend, Element};

use crate::error::Result;

/// One rank's view of a group of `world_size` ranks.
pub trait Collective<B: Backend> {
    /// This rank's index, `0..world_size`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn world_size(&self) -> usize;

    /// `x` summed elementwise over every rank, the same bits on each: `x_0 + x_1 + ... + x_{N-1}`
    /// in rank order. Every rank must pass a tensor of the same shape.
    fn all_reduce_sum(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor>;

    /// Every rank's `value`, indexed by rank: how the ranks compare the hash of their settings.
    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>>;
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
