//! Gradients averaged over the ranks in buckets that start while the backward still runs
//! (docs/distributed.md §4.2).
//!
//! A [`GradReducer`] watches the backward's accumulations ([`FinalGrads`]). A gradient is final
//! once it has received as many contributions as in the previous step's backward (the
//! [`UsePlan`]; the model is the same every step); it is then packed, in the order gradients
//! become final, into the bucket under way, and a bucket whose bytes reach the budget starts its
//! all-reduce at once ([`Collective::start_all_reduce_sum`]). The reversible backward finishes
//! the last blocks first, so their buckets travel while the earlier blocks recompute. At the end
//! of the backward every gradient not yet handed over goes into the last buckets, the reducer
//! waits once for all of them and replaces each gradient by `sum * (1 / world_size)`. The
//! all-reduce is elementwise, so the buckets change no bit of the result.

use revsnn_reference::{Backend, Element};

use super::{Collective, flatten, unflatten};
use crate::error::{Error, Result};
use crate::model::{FinalGrads, Grads, ParamId};

/// The bytes of gradients a bucket collects before its all-reduce starts: PyTorch DDP's
/// default `bucket_cap_mb` of 25 MiB.
pub const BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// How many contributions each parameter's gradient receives in one backward, by
/// [`ParamId`]: learned from a step's backward ([`GradReducer::finish`]) for the next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsePlan {
    uses: Vec<u32>,
}

impl UsePlan {
    /// The contributions the backward makes to `id`'s gradient; 0 when unknown.
    fn uses(&self, id: ParamId) -> u32 {
        self.uses.get(id.0).copied().unwrap_or(0)
    }
}

/// A bucket whose all-reduce has started: which gradients it holds (their ids and shapes, in
/// order), and its sum to come.
struct Started<B: Backend> {
    ids: Vec<ParamId>,
    shapes: Vec<Vec<usize>>,
    sum: B::Tensor,
}

/// One backward's gradients, averaged over `group` in buckets of about `bucket_bytes` started
/// as soon as they are full.
pub struct GradReducer<'g, B: Backend> {
    group: &'g dyn Collective<B>,
    bucket_bytes: usize,
    plan: UsePlan,
    /// Contributions seen so far in this backward, by parameter.
    seen: Vec<u32>,
    /// Whether each parameter's gradient has been packed into a bucket.
    handed_over: Vec<bool>,
    /// The final gradients of the bucket under way, in the order they became final.
    pending: Vec<ParamId>,
    pending_bytes: usize,
    started: Vec<Started<B>>,
}

impl<'g, B: Backend> GradReducer<'g, B> {
    /// A reducer over `group` for a backward into gradients of `entries` store entries, with
    /// buckets of `bucket_bytes` and the contribution counts of `plan` (the previous step's;
    /// with an empty plan nothing is known final before the end and every gradient goes in the
    /// buckets [`GradReducer::finish`] starts).
    pub fn new(
        group: &'g dyn Collective<B>,
        entries: usize,
        bucket_bytes: usize,
        plan: UsePlan,
    ) -> Self {
        GradReducer {
            group,
            bucket_bytes,
            plan,
            seen: vec![0; entries],
            handed_over: vec![false; entries],
            pending: Vec::new(),
            pending_bytes: 0,
            started: Vec::new(),
        }
    }

    /// Hands over every gradient of `grads` not handed over yet (in store order), starts the
    /// last buckets, orders the device after every bucket of the backward and replaces each
    /// gradient by its mean over the ranks, all queued without a host wait: the caller waits with
    /// [`Collective::wait_started`] before it reads anything back. Returns the contribution
    /// counts this backward made: the plan of the next step's.
    pub fn finish(mut self, backend: &B, grads: &mut Grads<B>) -> Result<UsePlan> {
        for index in 0..self.handed_over.len() {
            let id = ParamId(index);
            if !self.handed_over[index] && grads.get(id).is_some() {
                self.hand_over(backend, id, grads)?;
            }
        }
        self.start_pending(backend, grads)?;
        self.group.join_started(backend)?;
        let mean_factor = B::Elem::cast(1.0 / self.group.world_size() as f64);
        for bucket in &self.started {
            let sums = unflatten(backend, &bucket.sum, &bucket.shapes)?;
            for (&id, sum) in bucket.ids.iter().zip(sums) {
                grads.replace(id, backend.scale(&sum, mean_factor)?);
            }
        }
        Ok(UsePlan { uses: self.seen })
    }

    /// Packs `id`'s final gradient into the bucket under way, and starts it once full.
    fn hand_over(&mut self, backend: &B, id: ParamId, grads: &Grads<B>) -> Result<()> {
        let Some(grad) = grads.get(id) else {
            return Ok(());
        };
        let len: usize = backend.shape(grad).iter().product();
        self.handed_over[id.0] = true;
        self.pending.push(id);
        self.pending_bytes += len * std::mem::size_of::<B::Elem>();
        if self.pending_bytes >= self.bucket_bytes {
            self.start_pending(backend, grads)?;
        }
        Ok(())
    }

    /// Starts the all-reduce of the bucket under way, flattened into one tensor.
    fn start_pending(&mut self, backend: &B, grads: &Grads<B>) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (ids, parts): (Vec<ParamId>, Vec<&B::Tensor>) = self
            .pending
            .drain(..)
            .filter_map(|id| grads.get(id).map(|grad| (id, grad)))
            .unzip();
        self.pending_bytes = 0;
        let (bucket, shapes) = flatten(backend, &parts)?;
        let sum = self.group.start_all_reduce_sum(backend, &bucket)?;
        self.started.push(Started { ids, shapes, sum });
        Ok(())
    }
}

impl<B: Backend> FinalGrads<B> for GradReducer<'_, B> {
    fn accumulated(&mut self, backend: &B, id: ParamId, grads: &Grads<B>) -> Result<()> {
        let Some(seen) = self.seen.get_mut(id.0) else {
            return Err(self.unknown(id));
        };
        *seen += 1;
        let seen = *seen;
        if self.handed_over[id.0] {
            return Err(Error::Collective {
                rank: self.group.rank(),
                detail: format!(
                    "parameter {} received contribution {seen} to its gradient after it was \
                     handed to the all-reduce (the previous step's backward made {}): the \
                     backward must add the same contributions every step",
                    id.0,
                    self.plan.uses(id)
                ),
            });
        }
        if seen == self.plan.uses(id) {
            self.hand_over(backend, id, grads)?;
        }
        Ok(())
    }
}

impl<B: Backend> GradReducer<'_, B> {
    /// The error of a gradient outside the store the reducer was made for.
    fn unknown(&self, id: ParamId) -> Error {
        Error::Collective {
            rank: self.group.rank(),
            detail: format!(
                "a gradient of entry {} reached the reducer of a store of {} entries: the \
                 reducer was made for another model",
                id.0,
                self.seen.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::thread;
    use std::time::Duration;

    use revsnn_reference::testing::SplitMix64;
    use revsnn_reference::{Cpu, TensorOps};

    use super::*;
    use crate::collective::ThreadGroup;
    use crate::model::{BuildOptions, Mode, ParamStore, Session, Targets};
    use crate::network::{Network, PassOptions, StepHooks};
    use crate::spec::ModelSpec;

    type Cpu64 = Cpu<f64>;
    type CpuTensor = <Cpu64 as TensorOps>::Tensor;

    /// A group of one rank that records the values of every bucket started, in order.
    #[derive(Default)]
    struct Recorder {
        buckets: RefCell<Vec<Vec<f64>>>,
    }

    impl Collective<Cpu64> for Recorder {
        fn rank(&self) -> usize {
            0
        }

        fn world_size(&self) -> usize {
            1
        }

        fn all_reduce_sum(&self, backend: &Cpu64, x: &CpuTensor) -> Result<CpuTensor> {
            self.buckets.borrow_mut().push(backend.to_vec(x)?);
            Ok(x.clone())
        }

        fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
            Ok(vec![value])
        }
    }

    fn plan(uses: &[u32]) -> UsePlan {
        UsePlan {
            uses: uses.to_vec(),
        }
    }

    /// Adds `value` to the gradient of `id` through a session listened to by `reducer`.
    fn contribute(
        reducer: &mut GradReducer<Cpu64>,
        grads: &mut Grads<Cpu64>,
        id: usize,
        value: f64,
    ) -> Result<()> {
        let cpu = Cpu64::new();
        let mut store = ParamStore::default();
        let mut session = Session::new(&cpu, &mut store, grads, Mode::Train);
        session.final_grads = Some(reducer);
        let pair = cpu.tensor_from_vec(&[2], vec![value; 2])?;
        session.accumulate(ParamId(id), pair)
    }

    #[test]
    fn a_gradient_with_several_contributions_is_handed_over_after_the_last() {
        let recorder = Recorder::default();
        let mut grads = Grads::new(2);
        // One byte: every final gradient fills a bucket of its own and starts it at once.
        let mut reducer = GradReducer::new(&recorder, 2, 1, plan(&[2, 1]));
        contribute(&mut reducer, &mut grads, 0, 1.0).unwrap();
        assert!(recorder.buckets.borrow().is_empty(), "started before final");
        contribute(&mut reducer, &mut grads, 1, 5.0).unwrap();
        assert_eq!(*recorder.buckets.borrow(), vec![vec![5.0, 5.0]]);
        contribute(&mut reducer, &mut grads, 0, 2.0).unwrap();
        assert_eq!(recorder.buckets.borrow()[1], vec![3.0, 3.0]);
        let learned = reducer.finish(&Cpu64::new(), &mut grads).unwrap();
        assert_eq!(learned, plan(&[2, 1]));
        assert_eq!(
            recorder.buckets.borrow().len(),
            2,
            "no bucket left at the end"
        );
        let mean = Cpu64::new().to_vec(grads.get(ParamId(0)).unwrap()).unwrap();
        assert_eq!(mean, vec![3.0, 3.0]);
    }

    #[test]
    fn a_contribution_after_the_hand_over_is_an_error() {
        let recorder = Recorder::default();
        let mut grads = Grads::new(1);
        let mut reducer = GradReducer::new(&recorder, 1, 1, plan(&[1]));
        contribute(&mut reducer, &mut grads, 0, 1.0).unwrap();
        let error = contribute(&mut reducer, &mut grads, 0, 1.0).unwrap_err();
        assert!(error.to_string().contains("after it was handed"), "{error}");
    }

    #[test]
    fn without_a_plan_every_gradient_waits_for_the_end_in_store_order() {
        let recorder = Recorder::default();
        let mut grads = Grads::new(3);
        let mut reducer = GradReducer::new(&recorder, 3, usize::MAX, UsePlan::default());
        contribute(&mut reducer, &mut grads, 2, 1.0).unwrap();
        contribute(&mut reducer, &mut grads, 0, 2.0).unwrap();
        assert!(recorder.buckets.borrow().is_empty());
        let learned = reducer.finish(&Cpu64::new(), &mut grads).unwrap();
        assert_eq!(learned, plan(&[1, 0, 1]));
        assert_eq!(*recorder.buckets.borrow(), vec![vec![2.0, 2.0, 1.0, 1.0]]);
    }

    /// A rank's group, counting the all-reduces started through it.
    struct Counting {
        group: ThreadGroup,
        started: Cell<usize>,
    }

    impl<B: Backend> Collective<B> for Counting {
        fn rank(&self) -> usize {
            Collective::<B>::rank(&self.group)
        }

        fn world_size(&self) -> usize {
            Collective::<B>::world_size(&self.group)
        }

        fn all_reduce_sum(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor> {
            self.group.all_reduce_sum(backend, x)
        }

        fn start_all_reduce_sum(&self, backend: &B, x: &B::Tensor) -> Result<B::Tensor> {
            self.started.set(self.started.get() + 1);
            self.group.all_reduce_sum(backend, x)
        }

        fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
            Collective::<B>::all_gather_u64(&self.group, value)
        }
    }

    fn tiny_resnet() -> ModelSpec {
        serde_json::from_str(
            r#"{"arch": "revsresnet", "layers": [1,1,1,1], "planes": [4,4,8,8],
              "num_classes": 10, "time_steps": 2, "in_channels": 3, "img_size": 16}"#,
        )
        .unwrap()
    }

    /// What one rank's step left: its averaged gradients in store order, the contributions its
    /// backward made, and how many buckets started before the backward returned.
    struct RankStep<E> {
        grads: Vec<Vec<E>>,
        uses: UsePlan,
        started_in_backward: usize,
    }

    /// One step of the tiny model as the rank of `group`, BatchNorm synchronised (its
    /// all-reduces interleave with the buckets'), gradients reduced in buckets of `bucket_bytes`
    /// with the contributions `uses` of a previous step.
    fn rank_step<E: Element>(group: &Counting, bucket_bytes: usize, uses: UsePlan) -> RankStep<E> {
        let cpu = Cpu::<E>::new();
        let rank = Collective::<Cpu<E>>::rank(&group.group);
        let mut rng = SplitMix64::new(7 + rank as u64);
        let pixels = (0..2 * 3 * 16 * 16).map(|_| E::cast(rng.next_f64() * 2.0 - 1.0));
        let images = cpu
            .tensor_from_vec(&[2, 3, 16, 16], pixels.collect())
            .unwrap();
        let labels = [rank, 3 + rank];
        let mut network = Network::new(&cpu, &tiny_resnet(), 5, BuildOptions::default()).unwrap();
        let mut grads = network.zero_grads();
        let mut reducer = GradReducer::new(group, grads.len(), bucket_bytes, uses);
        group.started.set(0);
        let hooks = StepHooks {
            sync_batch_norm: Some(group),
            final_grads: Some(&mut reducer),
            ..StepHooks::default()
        };
        let (targets, run) = (Targets::Hard(&labels), PassOptions::default());
        network
            .train_step_hooked(&cpu, &mut grads, &images, targets, run, hooks)
            .unwrap();
        let started_in_backward = group.started.get();
        let uses = reducer.finish(&cpu, &mut grads).unwrap();
        RankStep {
            grads: grads
                .tensors()
                .iter()
                .map(|g| cpu.to_vec(g).unwrap())
                .collect(),
            uses,
            started_in_backward,
        }
    }

    /// On each of two thread ranks: a first step (no plan: one bucket at the end), then the same
    /// step with its plan in buckets of 256 bytes; returns both steps of each rank.
    fn one_then_many_buckets<E: Element>() -> Vec<(RankStep<E>, RankStep<E>)> {
        let handles: Vec<_> = ThreadGroup::new(2, Duration::from_secs(120))
            .unwrap()
            .into_iter()
            .map(|group| {
                thread::spawn(move || {
                    let group = Counting {
                        group,
                        started: Cell::new(0),
                    };
                    let one = rank_step::<E>(&group, usize::MAX, UsePlan::default());
                    let many = rank_step::<E>(&group, 256, one.uses.clone());
                    (one, many)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn many_buckets_give_the_bits_of_one<E: Element>() {
        for (one, many) in one_then_many_buckets::<E>() {
            assert_eq!(one.started_in_backward, 0);
            assert!(
                many.started_in_backward > 10,
                "{} buckets started in the backward",
                many.started_in_backward
            );
            assert_eq!(one.uses, many.uses);
            assert_eq!(one.grads.len(), many.grads.len());
            for (a, b) in one.grads.iter().zip(&many.grads) {
                let bits = |v: &[E]| v.iter().map(|x| x.widen().to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(a), bits(b));
            }
        }
    }

    #[test]
    fn many_buckets_give_the_bits_of_one_in_f64() {
        many_buckets_give_the_bits_of_one::<f64>();
    }

    #[test]
    fn many_buckets_give_the_bits_of_one_in_f32() {
        many_buckets_give_the_bits_of_one::<f32>();
    }
}
