//! Named parameters and buffers of a model, under the official PyTorch `state_dict` key names,
//! and their gradients.

use revsnn_reference::Backend;

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

/// One entry of a store.
#[derive(Clone, Debug)]
pub struct Entry<T> {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: EntryKind,
    /// The tensor; for [`EntryKind::BatchesTracked`] a scalar tensor holding the count.
    pub value: T,
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
    /// Adds an entry and returns its id; names must be unique.
    pub fn push(
        &mut self,
        name: String,
        kind: EntryKind,
        value: B::Tensor,
        backend: &B,
    ) -> Result<ParamId> {
        if self.entries.iter().any(|e| e.name == name) {
            return Err(Error::Spec(format!("duplicate parameter name {name}")));
        }
        let shape = backend.shape(&value);
        self.entries.push(Entry {
            name,
            shape,
            kind,
            value,
        });
        Ok(ParamId(self.entries.len() - 1))
    }

    pub fn get(&self, id: ParamId) -> &B::Tensor {
        &self.entries[id.0].value
    }

    pub fn set(&mut self, id: ParamId, value: B::Tensor) {
        self.entries[id.0].value = value;
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
/// the reversible backward adds each block's contribution as it goes (SPEC.md 3.3).
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

    /// `grad[id] += value`.
    pub fn accumulate(&mut self, backend: &B, id: ParamId, value: B::Tensor) -> Result<()> {
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
}
