//! Optimizers over a model's parameters: SGD with momentum (the ResNet recipe) and AdamW (the
//! transformer recipe), each update one backend op per parameter tensor (SPEC.md 5).

use revsnn_reference::{AdamWParams, Backend, SgdParams};

use crate::error::Result;
use crate::model::{EntryKind, Grads, ParamStore};

/// Which update, with its hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// `torch.optim.SGD`; weight decay applies to every parameter (SPEC.md A19).
    Sgd(SgdParams),
    /// `torch.optim.AdamW` as timm builds it: no weight decay on biases and 1-D parameters
    /// (SPEC.md A19).
    AdamW(AdamWParams),
}

/// Per-parameter optimizer state.
#[derive(Clone, Debug)]
enum Slot<T> {
    Empty,
    Momentum(T),
    Moments { first: T, second: T },
}

/// An optimizer and its state for one [`ParamStore`].
#[derive(Clone, Debug)]
pub struct Optimizer<B: Backend> {
    pub kind: OptimizerKind,
    slots: Vec<Slot<B::Tensor>>,
    steps: u64,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(kind: OptimizerKind, store: &ParamStore<B>) -> Self {
        Optimizer {
            kind,
            slots: vec![Slot::Empty; store.entries().len()],
            steps: 0,
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Updates every parameter that has a gradient, with the learning rate `lr` (schedules set
    /// it per step; it replaces the kind's own `lr`).
    pub fn step(
        &mut self,
        backend: &B,
        store: &mut ParamStore<B>,
        grads: &Grads<B>,
        lr: f64,
    ) -> Result<()> {
        self.steps += 1;
        let ids: Vec<_> = (0..store.entries().len())
            .map(crate::model::ParamId)
            .collect();
        for id in ids {
            let entry = &store.entries()[id.0];
            if entry.kind != EntryKind::Parameter {
                continue;
            }
            let Some(grad) = grads.get(id) else { continue };
            let decays = entry.shape.len() > 1 && !entry.name.ends_with(".bias");
            let param = store.get(id);
            let (updated, slot) = match (self.kind, &self.slots[id.0]) {
                (OptimizerKind::Sgd(hp), slot) => {
                    let buffer = match slot {
                        Slot::Momentum(buffer) => Some(buffer),
                        _ => None,
                    };
                    let (updated, buffer) =
                        backend.sgd_step(param, grad, buffer, SgdParams { lr, ..hp })?;
                    (updated, Slot::Momentum(buffer))
                }
                (OptimizerKind::AdamW(hp), slot) => {
                    let zeros;
                    let (first, second) = match slot {
                        Slot::Moments { first, second } => (first, second),
                        _ => {
                            zeros = backend.zeros(&entry.shape)?;
                            (&zeros, &zeros)
                        }
                    };
                    let weight_decay = if decays { hp.weight_decay } else { 0.0 };
                    let (updated, first, second) = backend.adamw_step(
                        param,
                        grad,
                        first,
                        second,
                        AdamWParams {
                            lr,
                            weight_decay,
                            ..hp
                        },
                        self.steps,
                    )?;
                    (updated, Slot::Moments { first, second })
                }
            };
            store.set(id, updated);
            self.slots[id.0] = slot;
        }
        Ok(())
    }
}
