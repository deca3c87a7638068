//! Batches in a seeded shuffled order, assembled on worker threads that stay a few batches ahead.
//! The order and contents depend only on the seed and the epoch, never on timing or the number of
//! workers.

use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use revsnn_reference::testing::SplitMix64;

use crate::data::Dataset;
use crate::error::{Error, Result};

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
    /// Rows `rows` of the batch of samples `indices`, exactly as the whole batch has them; `seed`
    /// fixes every random choice of its augmentation. Only what those rows need is made
    /// ([`crate::data::batch_rows`]). A source whose batches are a share of the samples'
    /// (`train::ranks::ShareOf`) counts its rows within the share.
    fn rows(&self, indices: &[usize], rows: Range<usize>, seed: u64) -> Result<Batch>;

    /// The batch of samples `indices`: all its rows (a share's, for a source of shares).
    fn batch(&self, indices: &[usize], seed: u64) -> Result<Batch> {
        self.rows(indices, 0..indices.len(), seed)
    }
}

/// The samples of a dataset as they are, with hard labels (evaluation, synthetic data).
pub struct Plain(pub Arc<dyn Dataset>);

impl BatchSource for Plain {
    fn rows(&self, indices: &[usize], rows: Range<usize>, _seed: u64) -> Result<Batch> {
        let indices = indices.get(rows.clone()).ok_or_else(|| {
            Error::Usage(format!(
                "rows {rows:?} of a batch of {} samples",
                indices.len()
            ))
        })?;
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
/// and the batches come out in order. A worker that fails or panics ends the iteration with an
/// [`Error::Loader`] naming the batch and its samples, never with a silently shorter epoch.
pub struct Loader {
    /// One channel per worker, in worker order.
    receivers: Vec<Receiver<Result<Batch>>>,
    workers: Vec<JoinHandle<()>>,
    /// The sample order and the batch size, to name the samples of a failed batch.
    order: Arc<Vec<usize>>,
    batch: usize,
    /// The number of batches the workers produce.
    expected: usize,
    /// The index of the next batch.
    next: usize,
    /// Nanoseconds the workers spent assembling batches, summed over the workers.
    busy_nanos: Arc<AtomicU64>,
    /// The samples of the batches handed out so far.
    delivered: usize,
}

impl Loader {
    /// Batches of `batch` samples of `data` in `order` (a final short batch is kept unless
    /// `drop_last`), assembled by `workers` threads with up to `prefetch` batches each ready
    /// ahead; batch `k` is augmented with [`batch_seed`]`(seed, k)`. A worker thread the system
    /// refuses to start is an error.
    pub fn new(
        data: Arc<dyn BatchSource>,
        order: Vec<usize>,
        batch: usize,
        drop_last: bool,
        workers: usize,
        prefetch: usize,
        seed: u64,
    ) -> Result<Loader> {
        let order = Arc::new(order);
        let batch = batch.max(1);
        let expected = if drop_last {
            order.len() / batch
        } else {
            order.len().div_ceil(batch)
        };
        let count = workers.max(1);
        let mut receivers = Vec::with_capacity(count);
        let mut handles = Vec::with_capacity(count);
        let busy_nanos = Arc::new(AtomicU64::new(0));
        for worker in 0..count {
            let (sender, receiver) = sync_channel(prefetch.max(1));
            let (data, order, busy) = (data.clone(), order.clone(), busy_nanos.clone());
            let work = move || {
                let batches = order.chunks(batch).enumerate().take(expected);
                for (k, chunk) in batches.skip(worker).step_by(count) {
                    let start = Instant::now();
                    let result = assemble(&*data, chunk, batch_seed(seed, k));
                    busy.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    let failed = result.is_err();
                    if sender.send(result).is_err() || failed {
                        break;
                    }
                }
            };
            let handle = std::thread::Builder::new()
                .name(format!("loader-{worker}"))
                .spawn(work)
                .map_err(|e| {
                    Error::Usage(format!(
                        "cannot start data-loader thread {} of {count}: {e}; lower --workers",
                        worker + 1
                    ))
                })?;
            handles.push(handle);
            receivers.push(receiver);
        }
        Ok(Loader {
            receivers,
            workers: handles,
            order,
            batch,
            expected,
            next: 0,
            busy_nanos,
            delivered: 0,
        })
    }

    /// The seconds the workers have spent assembling batches so far, summed over the workers
    /// (time blocked on a full queue excluded): the images they delivered divided by it is the
    /// throughput of one worker.
    pub fn busy_seconds(&self) -> f64 {
        self.busy_nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// The samples of the batches handed out so far: what [`Loader::busy_seconds`] bought.
    pub fn delivered(&self) -> usize {
        self.delivered
    }

    /// The number of samples the batches hold in all.
    pub fn samples(&self) -> usize {
        (self.expected * self.batch).min(self.order.len())
    }

    /// The error for batch `k`, which failed with `detail`.
    fn failure(&self, k: usize, detail: String) -> Error {
        let start = k * self.batch;
        let chunk = &self.order[start..(start + self.batch).min(self.order.len())];
        Error::Loader {
            batch: k,
            samples: sample_list(chunk),
            detail,
        }
    }
}

/// `data.batch(indices, seed)`, with a panic turned into an error carrying its message.
fn assemble(data: &dyn BatchSource, indices: &[usize], seed: u64) -> Result<Batch> {
    std::panic::catch_unwind(AssertUnwindSafe(|| data.batch(indices, seed))).unwrap_or_else(
        |payload| {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            Err(Error::Usage(format!("the worker panicked: {message}")))
        },
    )
}

/// Up to 16 sample indices, and how many more there are.
fn sample_list(indices: &[usize]) -> String {
    const SHOWN: usize = 16;
    let shown: Vec<String> = indices.iter().take(SHOWN).map(|i| i.to_string()).collect();
    match indices.len().saturating_sub(SHOWN) {
        0 => shown.join(", "),
        more => format!("{}, and {more} more", shown.join(", ")),
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.expected {
            return None;
        }
        let k = self.next;
        let result = match self.receivers[k % self.receivers.len()].recv() {
            Ok(Ok(batch)) => {
                self.delivered += batch.labels.len();
                Ok(batch)
            }
            Ok(Err(error)) => Err(self.failure(k, error.to_string())),
            Err(_) => Err(self.failure(k, "its worker thread ended without it".into())),
        };
        // after a failure the iteration ends: later batches would make a partial epoch
        self.next = if result.is_ok() { k + 1 } else { self.expected };
        Some(result)
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
        fn rows(&self, indices: &[usize], rows: Range<usize>, seed: u64) -> Result<Batch> {
            Ok(Batch {
                images: indices[rows].iter().map(|&i| i as f32).collect(),
                labels: vec![seed as usize],
                targets: None,
            })
        }
    }

    #[test]
    fn any_number_of_workers_gives_the_same_batches_in_order() {
        let order = shuffled(23, 7);
        let one: Vec<Batch> = Loader::new(Arc::new(Echo), order.clone(), 4, true, 1, 2, 9)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        assert_eq!(one.len(), 5);
        for workers in [2, 3, 8] {
            let many: Vec<Batch> =
                Loader::new(Arc::new(Echo), order.clone(), 4, true, workers, 1, 9)
                    .unwrap()
                    .map(|b| b.unwrap())
                    .collect();
            assert_eq!(many, one, "{workers} workers");
        }
        let kept = Loader::new(Arc::new(Echo), order, 4, false, 3, 1, 9)
            .unwrap()
            .count();
        assert_eq!(kept, 6);
    }

    /// Echo, but panicking on sample 5 and failing on sample 11.
    struct Faulty;

    impl BatchSource for Faulty {
        fn rows(&self, indices: &[usize], rows: Range<usize>, seed: u64) -> Result<Batch> {
            if indices.contains(&5) {
                panic!("sample 5 is corrupt");
            }
            if indices.contains(&11) {
                return Err(Error::Usage("sample 11 is unreadable".into()));
            }
            Echo.rows(indices, rows, seed)
        }
    }

    #[test]
    fn a_failing_or_panicking_worker_is_an_error_naming_the_samples() {
        for workers in [1, 3] {
            let order: Vec<usize> = (0..16).collect();
            let results: Vec<Result<Batch>> =
                Loader::new(Arc::new(Faulty), order, 4, true, workers, 1, 0)
                    .unwrap()
                    .collect();
            assert_eq!(results.len(), 2, "{workers} workers: stops at the failure");
            assert!(results[0].is_ok());
            let message = results[1].as_ref().unwrap_err().to_string();
            assert!(
                message.contains("batch 1 (samples 4, 5, 6, 7)")
                    && message.contains("sample 5 is corrupt"),
                "{message}"
            );
        }
        let order: Vec<usize> = vec![8, 9, 10, 11];
        let error = Loader::new(Arc::new(Faulty), order, 4, false, 2, 1, 0)
            .unwrap()
            .find_map(|b| b.err())
            .unwrap()
            .to_string();
        assert!(
            error.contains("samples 8, 9, 10, 11") && error.contains("unreadable"),
            "{error}"
        );
    }

    #[test]
    fn samples_counts_what_the_batches_hold() {
        let order = shuffled(23, 7);
        assert_eq!(
            Loader::new(Arc::new(Echo), order.clone(), 4, true, 2, 1, 0)
                .unwrap()
                .samples(),
            20
        );
        assert_eq!(
            Loader::new(Arc::new(Echo), order, 4, false, 2, 1, 0)
                .unwrap()
                .samples(),
            23
        );
    }

    /// Batches of the samples' own indices as their images and labels.
    struct Numbered;

    impl BatchSource for Numbered {
        fn rows(&self, indices: &[usize], rows: Range<usize>, _seed: u64) -> Result<Batch> {
            Ok(Batch {
                images: indices[rows.clone()].iter().map(|&i| i as f32).collect(),
                labels: indices[rows].to_vec(),
                targets: None,
            })
        }
    }

    #[test]
    fn delivered_counts_the_samples_handed_out() {
        let mut loader =
            Loader::new(Arc::new(Numbered), shuffled(23, 7), 4, false, 3, 1, 0).unwrap();
        assert_eq!(loader.delivered(), 0);
        loader.next().unwrap().unwrap();
        loader.next().unwrap().unwrap();
        assert_eq!(loader.delivered(), 8);
        assert_eq!(loader.by_ref().count(), 4);
        assert_eq!(loader.delivered(), 23);
    }
}
