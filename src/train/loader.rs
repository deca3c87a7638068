//! Batches in a seeded shuffled order, assembled on a worker thread that stays a few batches
//! ahead. The order and contents depend only on the seed and the epoch, never on timing.

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

/// Batches produced on a worker thread.
pub struct Loader {
    receiver: Receiver<Result<Batch>>,
    worker: Option<JoinHandle<()>>,
}

impl Loader {
    /// Batches of `batch` samples of `data` in `order` (a final short batch is kept unless
    /// `drop_last`), with up to `prefetch` batches ready ahead; batch `k` is augmented with
    /// [`batch_seed`]`(seed, k)`.
    pub fn new(
        data: Arc<dyn BatchSource>,
        order: Vec<usize>,
        batch: usize,
        drop_last: bool,
        prefetch: usize,
        seed: u64,
    ) -> Loader {
        let (sender, receiver) = sync_channel(prefetch.max(1));
        let worker = std::thread::spawn(move || {
            for (k, chunk) in order.chunks(batch.max(1)).enumerate() {
                if drop_last && chunk.len() < batch {
                    break;
                }
                let result = data.batch(chunk, batch_seed(seed, k));
                let failed = result.is_err();
                if sender.send(result).is_err() || failed {
                    break;
                }
            }
        });
        Loader {
            receiver,
            worker: Some(worker),
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        self.receiver.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // unblock a worker waiting on a full channel, then wait for it
        let (_, dummy) = sync_channel(0);
        drop(std::mem::replace(&mut self.receiver, dummy));
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
