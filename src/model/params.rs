//! Named parameters and buffers of a model, under the official PyTorch `state_dict` key names,
//! and their gradients.

use revsnn_reference::Backend;
#[cfg(doc)]
use revsnn_reference::TensorOps;

use crate::error::{Error, Result};

/// Index of a tensor in a [`ParamStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

/// What a store entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A trained parameter (has a gradient).
    Parameter,
    /// A BatchNorm running mean or variance (a buffer, updated by training-mode forwards).
    RunningStat,
    /// A BatchNorm `num_batches_tracked` counter (an int64 scalar in PyTorch).
    BatchesTracked,
}

/// What an entry holds.
#[derive(Clone, Debug, PartialEq)]
pub enum EntryValue<T> {
    /// A parameter or a running statistic, on the backend's device.
    Tensor(T),
    /// A `num_batches_tracked` counter, kept on the host: a training-mode BatchNorm increments
    /// it without a round trip to the device (checkpoints write it as an int64 scalar).
    Count(u64),
}

/// One entry of a store.
#[derive(Clone, Debug)]
pub struct Entry<T> {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: EntryKind,
    /// The tensor, or for [`EntryKind::BatchesTracked`] the count.
    pub value: EntryValue<T>,
}

impl<T> Entry<T> {
    /// The tensor of a parameter or running statistic; `None` for a counter.
    pub fn tensor(&self) -> Option<&T> {
        match &self.value {
            EntryValue::Tensor(tensor) => Some(tensor),
            EntryValue::Count(_) => None,
        }
    }

    /// The count of a `num_batches_tracked` counter; `None` for a tensor.
    pub fn count(&self) -> Option<u64> {
        match self.value {
            EntryValue::Count(count) => Some(count),
            EntryValue::Tensor(_) => None,
        }
    }
}

/// Every tensor of a model in `state_dict` order.
#[derive(Clone, Debug)]
pub struct ParamStore<B: Backend> {
    entries: Vec<Entry<B::Tensor>>,
}

impl<B: Backend> Default for ParamStore<B> {
    fn default() -> Self {
        ParamStore {
            entries: Vec::new(),
        }
    }
}

impl<B: Backend> ParamStore<B> {
    /// Adds a tensor entry (a parameter or a running statistic) and returns its id; names must
    /// be unique.
    pub fn push(
        &mut self,
        name: String,
        kind: EntryKind,
        value: B::Tensor,
        backend: &B,
    ) -> Result<ParamId> {
        if kind == EntryKind::BatchesTracked {
            return Err(Error::Spec(format!(
                "{name}: a num_batches_tracked counter is pushed with push_counter"
            )));
        }
        let shape = backend.shape(&value);
        self.push_entry(Entry {
            name,
            shape,
            kind,
            value: EntryValue::Tensor(value),
        })
    }

    /// Adds a `num_batches_tracked` counter holding `count` and returns its id.
    pub fn push_counter(&mut self, name: String, count: u64) -> Result<ParamId> {
        self.push_entry(Entry {
            name,
            shape: Vec::new(),
            kind: EntryKind::BatchesTracked,
            value: EntryValue::Count(count),
        })
    }

    fn push_entry(&mut self, entry: Entry<B::Tensor>) -> Result<ParamId> {
        if self.entries.iter().any(|e| e.name == entry.name) {
            return Err(Error::Spec(format!(
                "duplicate parameter name {}",
                entry.name
            )));
        }
        self.entries.push(entry);
        Ok(ParamId(self.entries.len() - 1))
    }

    /// The tensor of a parameter or running statistic.
    ///
    /// # Panics
    /// If `id` names a counter (read those with [`ParamStore::count`]): the builder hands out
    /// counter ids only as `BatchNormIds::batches_tracked`.
    pub fn get(&self, id: ParamId) -> &B::Tensor {
        let entry = &self.entries[id.0];
        entry.tensor().unwrap_or_else(|| {
            panic!(
                "{} is a num_batches_tracked counter, not a tensor",
                entry.name
            )
        })
    }

    /// Replaces the tensor of a parameter or running statistic.
    ///
    /// # Panics
    /// If `id` names a counter (see [`ParamStore::get`]).
    pub fn set(&mut self, id: ParamId, value: B::Tensor) {
        let entry = &mut self.entries[id.0];
        match &mut entry.value {
            EntryValue::Tensor(tensor) => *tensor = value,
            EntryValue::Count(_) => panic!(
                "{} is a num_batches_tracked counter, not a tensor",
                entry.name
            ),
        }
    }

    /// The count of a `num_batches_tracked` counter.
    ///
    /// # Panics
    /// If `id` names a tensor.
    pub fn count(&self, id: ParamId) -> u64 {
        let entry = &self.entries[id.0];
        entry
            .count()
            .unwrap_or_else(|| panic!("{} is a tensor, not a counter", entry.name))
    }

    /// Sets a `num_batches_tracked` counter.
    ///
    /// # Panics
    /// If `id` names a tensor.
    pub fn set_count(&mut self, id: ParamId, count: u64) {
        let entry = &mut self.entries[id.0];
        match &mut entry.value {
            EntryValue::Count(value) => *value = count,
            EntryValue::Tensor(_) => panic!("{} is a tensor, not a counter", entry.name),
        }
    }

    pub fn entries(&self) -> &[Entry<B::Tensor>] {
        &self.entries
    }

    pub fn id_of(&self, name: &str) -> Option<ParamId> {
        self.entries
            .iter()
            .position(|e| e.name == name)
            .map(ParamId)
    }

    /// The NaN and infinite values over every tensor of the store (parameters and running
    /// statistics), counted by one backend reduction ([`TensorOps::count_non_finite`]) and read
    /// back once.
    pub fn count_non_finite(&self, backend: &B) -> Result<u64> {
        let tensors: Vec<&B::Tensor> = self.entries.iter().filter_map(Entry::tensor).collect();
        Ok(backend.count_non_finite(&tensors)?)
    }

    /// The number of trained scalars (PyTorch's `sum(p.numel() for p in model.parameters())`).
    pub fn parameter_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::Parameter)
            .map(|e| e.shape.iter().product::<usize>())
            .sum()
    }
}

/// Gradients of the parameters of a [`ParamStore`], accumulated (`+=`) by the backward passes:
/// the reversible backward adds each block's contribution as it goes (docs/reversible.md §3.3).
#[derive(Clone, Debug)]
pub struct Grads<B: Backend> {
    slots: Vec<Option<B::Tensor>>,
}

impl<B: Backend> Grads<B> {
    /// No gradient yet for any of `len` entries.
    pub fn new(len: usize) -> Self {
        Grads {
            slots: vec![None; len],
        }
    }

    /// The number of entries (gradients or not) of the store these gradients belong to.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the store has no entries.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// `grad[id] += value`.
    pub(super) fn accumulate(&mut self, backend: &B, id: ParamId, value: B::Tensor) -> Result<()> {
        let slot = &mut self.slots[id.0];
        *slot = Some(match slot.take() {
            Some(previous) => backend.add(&previous, &value)?,
            None => value,
        });
        Ok(())
    }

    /// The gradient of `id`, `None` when no backward reached it.
    pub fn get(&self, id: ParamId) -> Option<&B::Tensor> {
        self.slots[id.0].as_ref()
    }

    /// Every gradient a backward reached.
    pub fn tensors(&self) -> Vec<&B::Tensor> {
        self.slots.iter().flatten().collect()
    }

    /// Multiplies every gradient by `factor` (fp16 loss scaling's unscale).
    pub fn scale(&mut self, backend: &B, factor: B::Elem) -> Result<()> {
        for slot in self.slots.iter_mut().flatten() {
            *slot = backend.scale(slot, factor)?;
        }
        Ok(())
    }

    /// Replaces the gradient of `id` by `value` (the data-parallel average of buckets).
    pub fn replace(&mut self, id: ParamId, value: B::Tensor) {
        self.slots[id.0] = Some(value);
    }
}

/// Told of every contribution a backward adds to a gradient ([`super::Session::accumulate`]),
/// so that it can take each gradient as soon as it is final: the data-parallel all-reduce in
/// buckets (`collective::GradReducer`). The model never learns who listens.
pub trait FinalGrads<B: Backend> {
    /// `grads` has just received one more contribution to the gradient of `id`.
    fn accumulated(&mut self, backend: &B, id: ParamId, grads: &Grads<B>) -> Result<()>;
}
