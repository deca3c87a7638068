//! [`ThreadGroup`]: ranks that are threads of one process, exchanging through shared memory.
//!
//! Every collective is one round of an all-gather: each rank deposits its words, the last one to
//! arrive completes the round, and every rank reads all contributions and combines them itself
//! in rank order. So a sum has the same bits on every rank and in every run, whatever order the
//! threads arrive in. A rank that waits longer than the group's timeout, or sees a rank it waits
//! for leave the group (finished or panicked), stops with an error instead of hanging.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use revsnn_reference::{Backend, Element};

use super::{Collective, sum_in_rank_order};
use crate::error::{Error, Result};

/// Why a rank left after a collective of its own failed.
const GAVE_UP: &str = "gave up";

/// One rank's handle on a group of threads; make the handles with [`ThreadGroup::new`] and move
/// each into its rank's thread.
pub struct ThreadGroup {
    shared: Arc<Shared>,
    rank: usize,
}

struct Shared {
    world_size: usize,
    timeout: Duration,
    state: Mutex<Rounds>,
    changed: Condvar,
}

struct Rounds {
    /// Rounds completed so far.
    completed_rounds: u64,
    /// The contributions to the round under way, by rank.
    pending: Vec<Option<Vec<u64>>>,
    /// The contributions of the last completed round, by rank.
    last: Arc<Vec<Vec<u64>>>,
    /// Why each rank left the group, once it has.
    departed: Vec<Option<&'static str>>,
}

impl ThreadGroup {
    /// The handles of a new group of `world_size` ranks, in rank order. A rank that waits more
    /// than `timeout` for the others in one collective stops with an error.
    pub fn new(world_size: usize, timeout: Duration) -> Result<Vec<ThreadGroup>> {
        if world_size == 0 {
            return Err(Error::Usage("a group needs at least one rank".into()));
        }
        let shared = Arc::new(Shared {
            world_size,
            timeout,
            state: Mutex::new(Rounds {
                completed_rounds: 0,
                pending: vec![None; world_size],
                last: Arc::new(Vec::new()),
                departed: vec![None; world_size],
            }),
            changed: Condvar::new(),
        });
        Ok((0..world_size)
            .map(|rank| ThreadGroup {
                shared: Arc::clone(&shared),
                rank,
            })
            .collect())
    }

    /// Deposits `words` and returns every rank's words of this round, indexed by rank.
    fn exchange(&self, words: Vec<u64>) -> Result<Arc<Vec<Vec<u64>>>> {
        let mut state = self.shared.lock();
        if let Some(why) = state.departed[self.rank] {
            return Err(self.error(format!("this rank {why} already; the group is gone")));
        }
        let round = state.completed_rounds;
        state.pending[self.rank] = Some(words);
        if state.pending.iter().all(Option::is_some) {
            let contributions = state
                .pending
                .iter_mut()
                .map(|p| p.take().unwrap_or_default());
            state.last = Arc::new(contributions.collect());
            state.completed_rounds += 1;
            self.shared.changed.notify_all();
            return Ok(Arc::clone(&state.last));
        }
        let (mut state, _) = self
            .shared
            .changed
            .wait_timeout_while(state, self.shared.timeout, |s| {
                s.completed_rounds == round && s.departed_missing().is_none()
            })
            .unwrap_or_else(PoisonError::into_inner);
        if state.completed_rounds != round {
            return Ok(Arc::clone(&state.last));
        }
        // Take this rank's words back and leave, so that no rank completes the round with them
        // and every rank still waiting fails too.
        let error = self.failure(&state);
        state.pending[self.rank] = None;
        state.departed[self.rank] = Some(GAVE_UP);
        self.shared.changed.notify_all();
        Err(error)
    }

    /// Why this rank's round cannot complete: a missing rank left, or the timeout passed.
    fn failure(&self, state: &Rounds) -> Error {
        let detail = match state.departed_missing() {
            Some((rank, why)) => format!("rank {rank} {why} before this collective"),
            None => format!(
                "ranks {:?} did not reach this collective within {:?} (a rank hung or died; \
                 raise the timeout if a step legitimately takes longer)",
                state.missing().collect::<Vec<_>>(),
                self.shared.timeout
            ),
        };
        self.error(detail)
    }

    fn error(&self, detail: String) -> Error {
        Error::Collective {
            rank: self.rank,
            detail,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Rounds> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Rounds {
    /// The ranks that have not contributed to the round under way.
    fn missing(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.pending.len()).filter(|&r| self.pending[r].is_none())
    }

    /// A missing rank that has left the group, and why: the first that left for a reason of its
    /// own before one that gave up waiting, so an error names the cause.
    fn departed_missing(&self) -> Option<(usize, &'static str)> {
        let departed = || {
            self.missing()
                .filter_map(|rank| self.departed[rank].map(|why| (rank, why)))
        };
        let cause = departed().find(|&(_, why)| why != GAVE_UP);
        cause.or_else(|| departed().next())
    }
}

impl Drop for ThreadGroup {
    /// Tells the other ranks that this one is gone, so none waits for it until the timeout.
    fn drop(&mut self) {
        let why = if std::thread::panicking() {
            "panicked"
        } else {
            "finished"
        };
        self.shared.lock().departed[self.rank].get_or_insert(why);
        self.shared.changed.notify_all();
    }
}

impl<B: Backend> Collective<B> for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world_size
    }

    fn all_reduce_sum(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let shape = backend.shape(x);
        let mut words = shape_words(&shape);
        let header = words.len();
        words.extend(backend.to_vec(x)?.into_iter().map(|v| v.widen().to_bits()));
        let parts = self.exchange(words)?;
        self.check_alike(&parts, header, "all_reduce_sum")?;
        let values: Vec<&[u64]> = parts.iter().map(|p| &p[header..]).collect();
        let sum: Vec<B::Elem> = sum_in_rank_order(&values);
        Ok(backend.tensor_from_vec(&shape, sum)?)
    }

    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        let parts = self.exchange(vec![value])?;
        self.check_alike(&parts, 0, "all_gather_u64")?;
        Ok(parts.iter().map(|p| p[0]).collect())
    }
}

/// A shape as the words that travel ahead of a tensor's values: its rank, then its sizes.
fn shape_words(shape: &[usize]) -> Vec<u64> {
    let sizes = shape.iter().map(|&d| d as u64);
    std::iter::once(shape.len() as u64).chain(sizes).collect()
}

/// What a rank contributed, for an error: its shape (when `shaped`) or its number of words.
fn describe(words: &[u64], shaped: bool) -> String {
    let rank = words.first().map_or(0, |&r| r as usize);
    match words.get(1..1 + rank) {
        Some(shape) if shaped => format!("shape {shape:?}"),
        _ => format!("{} values", words.len()),
    }
}

impl ThreadGroup {
    /// An error unless every rank contributed what this one did: as many words, led by the
    /// same `header` words (a tensor's shape). Ranks that differ run different models, batch
    /// shapes or collectives in a different order.
    fn check_alike(&self, parts: &[Vec<u64>], header: usize, op: &str) -> Result<()> {
        let here = &parts[self.rank];
        let differs = |p: &Vec<u64>| p.len() != here.len() || p.get(..header) != here.get(..header);
        match parts.iter().position(differs) {
            None => Ok(()),
            Some(rank) => Err(self.error(format!(
                "{op} of {} here, {} on rank {rank}: the ranks run different models, batch \
                 shapes or collectives",
                describe(here, header > 0),
                describe(&parts[rank], header > 0)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::thread;
    use std::time::{Duration, Instant};

    use revsnn_reference::{Cpu, TensorOps};

    use super::*;

    const GENEROUS: Duration = Duration::from_secs(60);

    /// Runs `body(rank, handle)` on one thread per rank and returns the results in rank order.
    fn on_ranks<T: Send + 'static>(
        world_size: usize,
        timeout: Duration,
        body: impl Fn(usize, ThreadGroup) -> T + Send + Sync + 'static,
    ) -> Vec<thread::Result<T>> {
        let body = Arc::new(body);
        let handles: Vec<_> = ThreadGroup::new(world_size, timeout)
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(rank, group)| {
                let body = Arc::clone(&body);
                thread::spawn(move || body(rank, group))
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    }

    /// Rank `r` contributes `values[r]`, arriving after a delay that reverses the rank order.
    fn reduce_f32(values: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
        let n = values.len();
        let values = Arc::new(values);
        on_ranks(n, GENEROUS, move |rank, group| {
            thread::sleep(Duration::from_millis(10 * (n - rank) as u64));
            let cpu = Cpu::<f32>::new();
            let x = cpu
                .tensor_from_vec(&[values[rank].len()], values[rank].clone())
                .unwrap();
            let sum = group.all_reduce_sum(&cpu, &x).unwrap();
            cpu.to_vec(&sum).unwrap()
        })
        .into_iter()
        .map(|result| result.unwrap())
        .collect()
    }

    #[test]
    fn the_sum_is_in_rank_order_with_the_same_bits_on_every_rank() {
        // In f32, 1e8 + 1 - 1e8 is 0 and 1e8 - 1e8 + 1 is 1: the order shows in the result.
        let sums = reduce_f32(vec![vec![1e8, 1.0], vec![1.0, 2.0], vec![-1e8, 3.0]]);
        for sum in &sums {
            assert_eq!(sum, &vec![(1e8f32 + 1.0) - 1e8, 6.0]);
        }
    }

    #[test]
    fn many_rounds_in_a_row_complete_in_order() {
        let results = on_ranks(4, GENEROUS, |rank, group| {
            let cpu = Cpu::<f64>::new();
            (0..200)
                .map(|round| {
                    let x = cpu
                        .tensor_from_vec(&[1], vec![(round * 10 + rank) as f64])
                        .unwrap();
                    cpu.to_vec(&group.all_reduce_sum(&cpu, &x).unwrap())
                        .unwrap()[0]
                })
                .collect::<Vec<_>>()
        });
        let expected: Vec<f64> = (0..200).map(|round| (round * 40 + 6) as f64).collect();
        for result in results {
            assert_eq!(result.unwrap(), expected);
        }
    }

    #[test]
    fn all_gather_returns_each_ranks_value_by_rank() {
        let results = on_ranks(3, GENEROUS, |rank, group| {
            Collective::<Cpu<f32>>::all_gather_u64(&group, 100 + rank as u64).unwrap()
        });
        for result in results {
            assert_eq!(result.unwrap(), vec![100, 101, 102]);
        }
    }

    #[test]
    fn different_lengths_are_an_error_naming_the_rank() {
        let results = on_ranks(2, GENEROUS, |rank, group| {
            let cpu = Cpu::<f32>::new();
            let x = cpu.zeros(&[rank + 1]).unwrap();
            group
                .all_reduce_sum(&cpu, &x)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        });
        let first = results[0].as_ref().unwrap();
        assert!(
            first.contains("shape [1] here, shape [2] on rank 1"),
            "{first}"
        );
    }

    #[test]
    fn shapes_with_the_same_size_must_still_agree() {
        let results = on_ranks(2, GENEROUS, |rank, group| {
            let cpu = Cpu::<f32>::new();
            let shape = if rank == 0 { [2, 3] } else { [3, 2] };
            let x = cpu.zeros(&shape).unwrap();
            let result = group.all_reduce_sum(&cpu, &x);
            result.map(|_| ()).unwrap_err().to_string()
        });
        let second = results[1].as_ref().unwrap();
        assert!(
            second.contains("shape [3, 2] here, shape [2, 3] on rank 0"),
            "{second}"
        );
    }

    #[test]
    fn a_rank_that_gives_up_takes_its_words_back_and_the_others_fail_too() {
        let mut groups = ThreadGroup::new(3, Duration::from_millis(100)).unwrap();
        let late = groups.pop().unwrap();
        let waiting = groups.pop().unwrap();
        let first = groups.pop().unwrap();
        let gather = |g: &ThreadGroup, v| Collective::<Cpu<f32>>::all_gather_u64(g, v);
        // Rank 0 waits for the others and gives up; rank 1 arrives too late to complete the
        // round with rank 0's words, and rank 2 after both.
        assert!(gather(&first, 0).is_err());
        let error = gather(&waiting, 1).unwrap_err().to_string();
        assert!(error.contains("rank 0 gave up"), "{error}");
        let error = gather(&late, 2).unwrap_err().to_string();
        assert!(error.contains("gave up"), "{error}");
        let again = gather(&first, 0).unwrap_err().to_string();
        assert!(again.contains("already"), "{again}");
    }

    #[test]
    fn a_rank_that_never_arrives_times_out_with_an_error_naming_it() {
        let mut groups = ThreadGroup::new(2, Duration::from_millis(200)).unwrap();
        let _silent = groups.pop().unwrap();
        let waiting = groups.pop().unwrap();
        let start = Instant::now();
        let error = Collective::<Cpu<f32>>::all_gather_u64(&waiting, 7).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(200));
        let message = error.to_string();
        assert!(
            message.contains("rank 0: ranks [1] did not reach"),
            "{message}"
        );
    }

    #[test]
    fn a_rank_that_panics_stops_the_others_at_once() {
        let results = on_ranks(3, GENEROUS, |rank, group| {
            if rank == 2 {
                panic!("rank 2 fails on purpose");
            }
            let start = Instant::now();
            let error = Collective::<Cpu<f32>>::all_gather_u64(&group, 1).unwrap_err();
            (start.elapsed(), error.to_string())
        });
        for result in &results[..2] {
            let (elapsed, message) = result.as_ref().unwrap();
            assert!(*elapsed < GENEROUS / 2, "waited {elapsed:?}");
            assert!(message.contains("rank 2 panicked"), "{message}");
        }
        assert!(results[2].is_err());
    }

    #[test]
    fn a_group_needs_a_rank() {
        assert!(ThreadGroup::new(0, GENEROUS).is_err());
    }
}
