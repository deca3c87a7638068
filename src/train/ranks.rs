//! Data-parallel training with ranks that are threads of this process (`train --ranks N`,
//! docs/distributed.md §4): each rank holds a replica of the model and trains on its contiguous
//! share of every global batch; gradients are averaged over the ranks before each optimizer
//! step, so every replica steps with the same bits. Rank 0, the leader, assembles the global
//! batches and hands each rank its share; it alone writes the run folder. A run of one rank has
//! no group and no collective: it is the single-process path.
//!
//! A rank that is a process of its own (one per GPU, `train --gpus N`, docs/distributed.md §7)
//! has no leader to receive from: it reads and augments only its share of every global batch
//! (and, under mixup, its rows' partners; [`ShareOf`]), which comes out as those rows of the
//! whole batch, so the shares are the threads' ones bit for bit.
//!
//! Ctrl-C stops every rank before the same step: each step starts with a vote, the count of
//! ranks whose process was asked to stop, summed over the ranks like a gradient and read back
//! with the step's loss, so that no rank leaves the others waiting in a collective
//! ([`Rank::start_stop_vote`], docs/distributed.md §4.5).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use revsnn_reference::{Backend, Element};

use super::epoch::EpochStats;
use super::evaluate::Score;
use super::interrupt;
use super::loader::{Batch, BatchSource, Loader};
use crate::collective::{
    BUCKET_BYTES, Collective, GradReducer, ThreadGroup, UsePlan, broadcast_running_stats,
};
use crate::error::{Error, Result};
use crate::model::{Grads, ParamStore};

/// How long a rank waits for the others in one collective (on GPUs: in any wait for its
/// device) before it stops with an error, unless `train --rank-timeout` says otherwise.
pub const RANK_TIMEOUT: Duration = Duration::from_secs(600);

/// Global batches the leader may hand out ahead of the slowest rank.
const SHARES_AHEAD: usize = 2;

/// One rank of a run: its group (none when it is the only one), where its batches come from and
/// whether its BatchNorms share their statistics with the other ranks.
pub struct Rank<B: Backend> {
    group: Option<Box<dyn Collective<B> + Send>>,
    feed: Feed,
    sync_bn: bool,
    /// The contributions each gradient received in the previous step's backward: when a
    /// gradient is final in the next ([`GradReducer`]).
    grad_uses: Mutex<UsePlan>,
    /// Whether a step's vote counted a rank that Ctrl-C asked to stop ([`Rank::stop_due`]).
    stop_voted: AtomicBool,
}

/// Where a rank's shares of the global batches come from.
enum Feed {
    /// Rank 0: assembles every global batch, sends rank `r` its share on channel `r - 1`, keeps
    /// its own.
    Leader(Vec<SyncSender<Batch>>),
    /// Another rank: receives its shares from the leader.
    Follower(Receiver<Batch>),
    /// A rank of its own process: assembles its share of every global batch ([`ShareOf`]).
    Own,
}

/// Rank `rank` of `world`'s share of each batch of `source`: the batch's rows [`share`] gives
/// the rank, made without the others' ([`BatchSource::rows`]).
struct ShareOf {
    source: Arc<dyn BatchSource>,
    rank: usize,
    world: usize,
}

impl BatchSource for ShareOf {
    /// Rows `rows` of the share.
    fn rows(&self, indices: &[usize], rows: Range<usize>, seed: u64) -> Result<Batch> {
        let own = share(indices.len(), self.rank, self.world);
        let within = own.start + rows.start..own.start + rows.end;
        if within.end > own.end {
            return Err(Error::Usage(format!(
                "rows {rows:?} of a share of {} samples",
                own.len()
            )));
        }
        self.source.rows(indices, within, seed)
    }

    /// The whole share.
    fn batch(&self, indices: &[usize], seed: u64) -> Result<Batch> {
        let own = share(indices.len(), self.rank, self.world);
        self.source.rows(indices, own, seed)
    }
}

/// A rank's shares of an epoch's global batches, in order ([`Rank::shares`]).
pub enum Shares<'a> {
    /// Rank 0: the loader's batches, split; rank `r`'s share sent on channel `r - 1` (none when
    /// it is alone), its own kept.
    Leader {
        loader: Loader,
        senders: &'a [SyncSender<Batch>],
    },
    /// Another rank: `left` more shares to receive from the leader.
    Follower {
        receiver: &'a Receiver<Batch>,
        rank: usize,
        left: usize,
    },
    /// A rank of its own process: its loader makes this rank's shares ([`Rank::source`]).
    Own { loader: Loader },
}

impl Shares<'_> {
    /// The seconds the loader's workers spent assembling batches so far (0 on a rank that
    /// receives its shares): [`Loader::busy_seconds`].
    pub fn busy_seconds(&self) -> f64 {
        match self {
            Shares::Leader { loader, .. } | Shares::Own { loader } => loader.busy_seconds(),
            Shares::Follower { .. } => 0.0,
        }
    }

    /// The samples this rank's loader handed out so far, for the leader the whole global
    /// batches it splits (0 on a rank that receives its shares): [`Loader::delivered`].
    pub fn delivered(&self) -> usize {
        match self {
            Shares::Leader { loader, .. } | Shares::Own { loader } => loader.delivered(),
            Shares::Follower { .. } => 0,
        }
    }
}

impl Iterator for Shares<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        match self {
            Shares::Leader {
                loader,
                senders: [],
            } => loader.next(),
            Shares::Leader { loader, senders } => {
                let batch = loader.next()?;
                Some(batch.and_then(|batch| hand_out(batch, senders)))
            }
            Shares::Follower {
                receiver,
                rank,
                left,
            } => {
                *left = left.checked_sub(1)?;
                Some(receiver.recv().map_err(|_| left_error(*rank, 0)))
            }
            Shares::Own { loader } => loader.next(),
        }
    }
}

/// Splits `batch` into one share per rank, sends rank `r`'s on `senders[r - 1]` and returns
/// rank 0's.
fn hand_out(batch: Batch, senders: &[SyncSender<Batch>]) -> Result<Batch> {
    let mut shares = split(batch, senders.len() + 1);
    let others = shares.split_off(1);
    for (rank, (share, sender)) in others.into_iter().zip(senders).enumerate() {
        sender.send(share).map_err(|_| left_error(0, rank + 1))?;
    }
    // `senders.len() + 1` >= 1 shares: rank 0's is left
    Ok(shares.swap_remove(0))
}

impl<B: Backend> Rank<B> {
    /// A rank in `group` fed by `feed`, before its first step: no gradient contributions seen,
    /// no stop voted.
    fn new(group: Option<Box<dyn Collective<B> + Send>>, feed: Feed, sync_bn: bool) -> Rank<B> {
        Rank {
            group,
            feed,
            sync_bn,
            grad_uses: Mutex::default(),
            stop_voted: AtomicBool::new(false),
        }
    }

    /// The ranks of a run of `ranks`, in rank order: one rank alone (no collective at all), or
    /// a [`ThreadGroup`] whose collectives wait at most `timeout`.
    pub fn all(ranks: usize, sync_bn: bool, timeout: Duration) -> Result<Vec<Rank<B>>> {
        if ranks <= 1 {
            return Ok(vec![Rank::new(None, Feed::Leader(Vec::new()), false)]);
        }
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (1..ranks).map(|_| sync_channel(SHARES_AHEAD)).unzip();
        let feeds =
            std::iter::once(Feed::Leader(senders)).chain(receivers.into_iter().map(Feed::Follower));
        let groups = ThreadGroup::new(ranks, timeout)?;
        Ok(groups
            .into_iter()
            .zip(feeds)
            .map(|(group, feed)| {
                let group = Box::new(group) as Box<dyn Collective<B> + Send>;
                Rank::new(Some(group), feed, sync_bn)
            })
            .collect())
    }

    /// This process's rank of a run whose ranks are processes, exchanging through `group`
    /// (NCCL, one GPU each): it assembles the global batches itself and keeps its share.
    pub fn process(group: Box<dyn Collective<B> + Send>, sync_bn: bool) -> Rank<B> {
        Rank::new(Some(group), Feed::Own, sync_bn)
    }

    /// This rank's index.
    pub fn index(&self) -> usize {
        self.group.as_ref().map_or(0, |g| g.rank())
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.group.as_ref().map_or(1, |g| g.world_size())
    }

    /// Whether this is rank 0, which writes the run folder (and, with thread ranks, assembles
    /// the batches).
    pub fn is_leader(&self) -> bool {
        self.index() == 0
    }

    /// The group the training-mode BatchNorms reduce their statistics over: with `--sync-bn`
    /// and more than one rank.
    pub fn sync_batch_norm(&self) -> Option<&dyn Collective<B>> {
        self.group
            .as_deref()
            .filter(|_| self.sync_bn)
            .map(|g| g as &dyn Collective<B>)
    }

    /// What this rank's loader assembles its batches from: `source` itself, or on a rank of its
    /// own process only this rank's share of each batch ([`ShareOf`]).
    pub fn source(&self, source: Arc<dyn BatchSource>) -> Arc<dyn BatchSource> {
        match self.feed {
            Feed::Own => Arc::new(ShareOf {
                source,
                rank: self.index(),
                world: self.world(),
            }),
            Feed::Leader(_) | Feed::Follower(_) => source,
        }
    }

    /// This rank's shares of an epoch's `count` global batches: the leader's come from the
    /// loader `open` makes (over [`Rank::source`]), whose batches it splits ([`split`]) and
    /// hands out; the other threads receive theirs; a rank of its own process takes its own
    /// loader's, which makes only its shares.
    pub fn shares(
        &self,
        open: impl FnOnce() -> Result<Loader>,
        count: usize,
    ) -> Result<Shares<'_>> {
        Ok(match &self.feed {
            Feed::Leader(senders) => Shares::Leader {
                loader: open()?,
                senders,
            },
            Feed::Follower(receiver) => Shares::Follower {
                receiver,
                rank: self.index(),
                left: count,
            },
            Feed::Own => Shares::Own { loader: open()? },
        })
    }

    /// The reducer that averages the gradients of a backward into `entries` store entries over
    /// the ranks, in buckets of [`BUCKET_BYTES`] started as the backward finishes them; `None`
    /// alone. Hand it to the backward, then to [`Rank::average_grads`].
    pub fn grad_reducer(&self, entries: usize) -> Option<GradReducer<'_, B>> {
        let plan = self.lock_grad_uses().clone();
        let group = self.group.as_deref()?;
        Some(GradReducer::new(group, entries, BUCKET_BYTES, plan))
    }

    /// Replaces `grads` by their mean over the ranks, queued after `reducer`'s buckets without
    /// a host wait (nothing to do alone), and keeps what the backward contributed for the next
    /// step's reducer. [`Rank::wait_collectives`] must come before anything is read back.
    pub fn average_grads(
        &self,
        reducer: Option<GradReducer<'_, B>>,
        backend: &B,
        grads: &mut Grads<B>,
    ) -> Result<()> {
        if let Some(reducer) = reducer {
            *self.lock_grad_uses() = reducer.finish(backend, grads)?;
        }
        Ok(())
    }

    /// Waits on the host for the step's started all-reduces (its gradient buckets and its stop
    /// vote), watching for a rank that died (nothing to do alone, or once waited). Called after
    /// the optimizer step is queued, the device runs on from the backward into it instead of
    /// idling while the host queues it.
    pub fn wait_collectives(&self, backend: &B) -> Result<()> {
        match &self.group {
            Some(group) => group.wait_started(backend),
            None => Ok(()),
        }
    }

    /// Starts this step's vote on stopping: 1 where Ctrl-C asked this rank's process to stop
    /// ([`interrupt::requested`]), else 0, summed over the ranks. Started before the forward, it
    /// completes with the step's gradient all-reduces ([`Rank::wait_collectives`] waits for both at
    /// once), and its count is read back with the step's loss, then given to
    /// [`Rank::record_stop_votes`]. `None` alone: one rank reads the request itself.
    pub fn start_stop_vote(&self, backend: &B) -> Result<Option<B::Tensor>> {
        let Some(group) = &self.group else {
            return Ok(None);
        };
        let asked = f64::from(u8::from(interrupt::requested()));
        let vote = backend.tensor_from_vec(&[1], vec![B::Elem::cast(asked)])?;
        group.start_all_reduce_sum(backend, &vote).map(Some)
    }

    /// Records a step's vote count: once it is above 0, [`Rank::stop_due`] holds on every rank
    /// alike.
    pub fn record_stop_votes(&self, votes: f64) {
        if votes > 0.0 {
            self.stop_voted.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the run stops before its next step: alone, once Ctrl-C asked; with several
    /// ranks, once a step's vote counted a rank that was asked, so that every rank stops before
    /// the same step.
    pub fn stop_due(&self) -> bool {
        match &self.group {
            None => interrupt::requested(),
            Some(_) => self.stop_voted.load(Ordering::Relaxed),
        }
    }

    fn lock_grad_uses(&self) -> std::sync::MutexGuard<'_, UsePlan> {
        self.grad_uses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives every rank rank 0's BatchNorm running statistics (nothing to do alone).
    pub fn share_running_stats(&self, backend: &B, store: &mut ParamStore<B>) -> Result<()> {
        match &self.group {
            Some(group) => broadcast_running_stats(group.as_ref(), backend, store),
            None => Ok(()),
        }
    }

    /// The epoch's statistics: loss, hits, images and the recomputes (diverged, and compared)
    /// summed over the ranks in rank order, the rest (wall time, loader, loss scale) this rank's.
    pub fn sum_stats(&self, stats: EpochStats) -> Result<EpochStats> {
        let [loss_sum, hits, images, diverged, recomputes] = self.sum_words([
            stats.loss_sum.to_bits(),
            stats.hits as u64,
            stats.images as u64,
            stats.diverged_recomputes as u64,
            stats.recomputes as u64,
        ])?;
        Ok(EpochStats {
            loss_sum: f64::from_bits(loss_sum),
            hits: hits as usize,
            images: images as usize,
            diverged_recomputes: diverged as usize,
            recomputes: recomputes as usize,
            ..stats
        })
    }

    /// The evaluation scores summed over the ranks, in rank order: the counts exactly.
    pub fn sum_score(&self, score: Score) -> Result<Score> {
        let [loss, top1, top5, samples] = self.sum_words([
            score.loss.to_bits(),
            score.top1 as u64,
            score.top5 as u64,
            score.samples as u64,
        ])?;
        Ok(Score {
            loss: f64::from_bits(loss),
            top1: top1 as usize,
            top5: top5 as usize,
            samples: samples as usize,
        })
    }

    /// Each word summed over the ranks in rank order: the first as the bits of an `f64`, the
    /// others as counts.
    fn sum_words<const N: usize>(&self, words: [u64; N]) -> Result<[u64; N]> {
        let Some(group) = &self.group else {
            return Ok(words);
        };
        let mut sums = [0; N];
        for (i, word) in words.into_iter().enumerate() {
            let all = group.all_gather_u64(word)?;
            sums[i] = if i == 0 {
                all.iter()
                    .map(|&bits| f64::from_bits(bits))
                    .sum::<f64>()
                    .to_bits()
            } else {
                all.iter().sum()
            };
        }
        Ok(sums)
    }
}

/// The part of `len` items that rank `rank` of `world` takes: a contiguous range, the first
/// `len % world` ranks one item more.
pub fn share(len: usize, rank: usize, world: usize) -> Range<usize> {
    let (base, extra) = (len / world, len % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// `batch` cut into `world` shares ([`share_of`]), in rank order.
pub fn split(batch: Batch, world: usize) -> Vec<Batch> {
    (0..world)
        .map(|rank| share_of(&batch, rank, world))
        .collect()
}

/// Rank `rank`'s contiguous share ([`share`]) of `batch` cut into `world` shares: its samples'
/// images, labels and targets.
pub fn share_of(batch: &Batch, rank: usize, world: usize) -> Batch {
    let count = batch.labels.len();
    let per_sample = batch.images.len() / count.max(1);
    let classes = batch.targets.as_ref().map_or(0, |t| t.len() / count.max(1));
    let range = share(count, rank, world);
    let rows = |width: usize| range.start * width..range.end * width;
    Batch {
        images: batch.images[rows(per_sample)].to_vec(),
        labels: batch.labels[range.clone()].to_vec(),
        targets: batch.targets.as_ref().map(|t| t[rows(classes)].to_vec()),
    }
}

/// The error of rank `rank` that found rank `other` gone from the batch hand-out.
fn left_error(rank: usize, other: usize) -> Error {
    Error::Collective {
        rank,
        detail: format!(
            "rank {other} stopped exchanging batches (it failed; its own error says why)"
        ),
    }
}

/// Runs `work` on each of `jobs`, job `r` as rank `r` on a thread of its own (on this thread
/// when there is one job), and returns rank 0's result. When ranks fail, the error is that of
/// the first rank that failed for a reason of its own rather than a collective that failed
/// because another rank left.
pub fn on_threads<J: Send, T: Send>(
    mut jobs: Vec<J>,
    work: impl Fn(J) -> Result<T> + Sync,
) -> Result<T> {
    if jobs.len() == 1 {
        return work(jobs.remove(0));
    }
    let results: Vec<Result<T>> = std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = jobs
            .into_iter()
            .enumerate()
            .map(|(rank, job)| {
                std::thread::Builder::new()
                    .name(format!("rank-{rank}"))
                    .spawn_scoped(scope, move || work(job))
                    .map_err(|e| {
                        Error::Usage(format!(
                            "cannot start the thread of rank {rank}: {e}; lower --ranks"
                        ))
                    })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, handle)| {
                handle?.join().unwrap_or_else(|_| {
                    Err(Error::Usage(format!("data-parallel rank {rank} panicked")))
                })
            })
            .collect()
    });
    rank_zero_or_cause(results)
}

/// Rank 0's value, or the error of the first rank that failed for a reason of its own (else the
/// first error).
fn rank_zero_or_cause<T>(results: Vec<Result<T>>) -> Result<T> {
    let mut leader = None;
    let mut cause: Option<(bool, Error)> = None;
    for result in results {
        match result {
            Ok(value) => {
                leader.get_or_insert(value);
            }
            Err(error) => {
                let own = !matches!(error, Error::Collective { .. });
                if cause
                    .as_ref()
                    .is_none_or(|(first_own, _)| own && !first_own)
                {
                    cause = Some((own, error));
                }
            }
        }
    }
    match (cause, leader) {
        (Some((_, error)), _) => Err(error),
        (None, Some(value)) => Ok(value),
        (None, None) => Err(Error::Usage("a run needs at least one rank".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_contiguous_and_cover_every_item_once() {
        for (len, world) in [(12, 3), (10, 4), (3, 4), (0, 2), (7, 1)] {
            let shares: Vec<_> = (0..world).map(|r| share(len, r, world)).collect();
            assert_eq!(shares[0].start, 0);
            assert_eq!(shares[world - 1].end, len);
            for pair in shares.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert!(pair[0].len() >= pair[1].len());
            }
        }
        assert_eq!(share(10, 1, 4), 3..6);
    }

    #[test]
    fn a_failed_run_reports_the_rank_that_failed_for_its_own_reason() {
        let outcome: Result<()> = on_threads(vec![0, 1, 2], |rank| match rank {
            1 => Err(Error::Usage("rank 1's own failure".into())),
            _ => Err(Error::Collective {
                rank,
                detail: "rank 1 finished before this collective".into(),
            }),
        });
        let message = outcome.unwrap_err().to_string();
        assert_eq!(message, "rank 1's own failure");
        let values = on_threads(vec![10, 11], |job| Ok(job * 2));
        assert_eq!(values.unwrap(), 20, "rank 0's value");
    }

    #[test]
    fn a_process_rank_makes_its_share_of_each_batch_as_the_leader_splits_it() {
        use crate::data::synthetic::Synthetic;
        use crate::train::loader::Plain;
        let data = Synthetic::new(3, crate::data::synthetic::Split::Train, 16, 8).unwrap();
        let source: Arc<dyn BatchSource> = Arc::new(Plain(Arc::new(data)));
        let indices = [4, 9, 1, 15, 0, 7, 3];
        let whole = source.batch(&indices, 5).unwrap();
        for world in 1..=4 {
            for rank in 0..world {
                let own = ShareOf {
                    source: source.clone(),
                    rank,
                    world,
                };
                assert_eq!(
                    own.batch(&indices, 5).unwrap(),
                    share_of(&whole, rank, world)
                );
                let len = share(indices.len(), rank, world).len();
                assert!(own.rows(&indices, 0..len + 1, 5).is_err());
            }
        }
    }

    #[test]
    fn a_split_batch_keeps_each_samples_image_label_and_targets_together() {
        let batch = Batch {
            images: (0..12).map(|v| v as f32).collect(),
            labels: vec![0, 1, 2, 3],
            targets: Some((0..8).map(|v| v as f32 * 0.5).collect()),
        };
        let parts = split(batch, 2);
        assert_eq!(parts[1].images, vec![6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
        assert_eq!(parts[1].labels, vec![2, 3]);
        assert_eq!(parts[1].targets, Some(vec![2.0, 2.5, 3.0, 3.5]));
        assert_eq!(parts[0].labels, vec![0, 1]);
    }
}
