//! Batches in a seeded shuffled order, assembled on worker threads that stay a few batches ahead.
//! The order and contents depend only on the seed and the epoch, never on timing or the number of
//! workers.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use revsnn_reference::testing::SplitMix64;

use crate::data::Dataset;
use crate::error::Result;

/// One batch: `images` row-major `[B, sample_shape...]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    /// Soft targets `[B, K]` (mixup, label smoothing) when the recipe trains on them.
    pub targets: Option<Vec<f32>>,
}

/// Assembles batches from sample indices, augmenting them as a deterministic function of `seed`.
pub trait BatchSource: Send + Sync {
    /// The batch of samples `indices`; `seed` fixes every random choice of its augmentation.
    fn batch(&self, indices: &[usize], seed: u64) -> Result<Batch>;
}

/// The samples of a dataset as they are, with hard labels (evaluation, synthetic data).
pub struct Plain(pub Arc<dyn Dataset>);

impl BatchSource for Plain {
    fn batch(&self, indices: &[usize], _seed: u64) -> Result<Batch> {
        let mut images = Vec::new();
        let mut labels = Vec::with_capacity(indices.len());
        for &index in indices {
            let sample = self.0.get(index)?;
            images.extend(sample.values);
            labels.push(sample.label);
        }
        Ok(Batch {
            images,
            labels,
            targets: None,
        })
    }
}

/// The augmentation seed of batch `index` of an epoch whose shuffle seed is `seed`.
pub fn batch_seed(seed: u64, index: usize) -> u64 {
    let mut rng = SplitMix64::new(seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.next_u64()
}

/// A permutation of `0..len` from `seed` (Fisher-Yates).
pub fn shuffled(len: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..len).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Batches produced on worker threads: worker `w` of `W` assembles batches `w`, `w + W`, ...,
/// and the batches come out in order.
pub struct Loader {
    /// One channel per worker, in worker order.
    receivers: Vec<Receiver<Result<Batch>>>,
    workers: Vec<JoinHandle<()>>,
    /// The index of the next batch.
    next: usize,
}

impl Loader {
    /// Batches of `batch` samples of `data` in `order` (a final short batch is kept unless
    /// `drop_last`), assembled by `workers` threads with up to `prefetch` batches each ready
    /// ahead; batch `k` is augmented with [`batch_seed`]`(seed, k)`.
    pub fn new(
        data: Arc<dyn BatchSource>,
        order: Vec<usize>,
        batch: usize,
        drop_last: bool,
        workers: usize,
        prefetch: usize,
        seed: u64,
    ) -> Loader {
        let order = Arc::new(order);
        let batch = batch.max(1);
        let count = workers.max(1);
        let mut receivers = Vec::with_capacity(count);
        let mut handles = Vec::with_capacity(count);
        for worker in 0..count {
            let (sender, receiver) = sync_channel(prefetch.max(1));
            let (data, order) = (data.clone(), order.clone());
            handles.push(std::thread::spawn(move || {
                for (k, chunk) in order.chunks(batch).enumerate().skip(worker).step_by(count) {
                    if drop_last && chunk.len() < batch {
                        break;
                    }
                    let result = data.batch(chunk, batch_seed(seed, k));
                    let failed = result.is_err();
                    if sender.send(result).is_err() || failed {
                        break;
                    }
                }
            }));
            receivers.push(receiver);
        }
        Loader {
            receivers,
            workers: handles,
            next: 0,
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        let worker = self.next % self.receivers.len();
        let batch = self.receivers[worker].recv().ok()?;
        self.next += 1;
        Some(batch)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // unblock workers waiting on a full channel, then wait for them
        self.receivers.clear();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches whose images are their indices and whose labels are their seeds.
    struct Echo;

    impl BatchSource for Echo {
        fn batch(&self, indices: &[usize], seed: u64) -> Result<Batch> {
            Ok(Batch {
                images: indices.iter().map(|&i| i as f32).collect(),
                labels: vec![seed as usize],
                targets: None,
            })
        }
    }

    #[test]
    fn any_number_of_workers_gives_the_same_batches_in_order() {
        let order = shuffled(23, 7);
        let one: Vec<Batch> = Loader::new(Arc::new(Echo), order.clone(), 4, true, 1, 2, 9)
            .map(|b| b.unwrap())
            .collect();
        assert_eq!(one.len(), 5);
        for workers in [2, 3, 8] {
            let many: Vec<Batch> =
                Loader::new(Arc::new(Echo), order.clone(), 4, true, workers, 1, 9)
                    .map(|b| b.unwrap())
                    .collect();
            assert_eq!(many, one, "{workers} workers");
        }
        let kept = Loader::new(Arc::new(Echo), order, 4, false, 3, 1, 9).count();
        assert_eq!(kept, 6);
    }
}
