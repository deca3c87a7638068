//! Optimizers over a model's parameters: SGD with momentum (the ResNet recipe) and AdamW (the
//! transformer recipe), each step one backend op over every parameter tensor (docs/recipes.md §5).

use revsnn_reference::{AdamWParams, AdamWTensors, Backend, Element, SgdParams, SgdTensors};

use std::collections::HashMap;

use crate::checkpoint::{StoredTensor, TensorData, TensorFile};
use crate::error::{Error, Result};
use crate::model::{EntryKind, Grads, ParamId, ParamStore};

/// Which update, with its hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// `torch.optim.SGD`; weight decay applies to every parameter (docs/choices.md §A19).
    Sgd(SgdParams),
    /// `torch.optim.AdamW` as timm builds it: no weight decay on biases and 1-D parameters
    /// (docs/choices.md §A19).
    AdamW(AdamWParams),
}

impl OptimizerKind {
    /// The kind's own learning rate (a schedule may replace it per step).
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerKind::Sgd(hp) => hp.lr,
            OptimizerKind::AdamW(hp) => hp.lr,
        }
    }
}

/// Per-parameter optimizer state.
#[derive(Clone, Debug)]
enum Slot<T> {
    Empty,
    Momentum(T),
    Moments { first: T, second: T },
}

/// A parameter's new value and state after a step.
type Stepped<T> = (T, Slot<T>);

/// An optimizer and its state for one [`ParamStore`].
#[derive(Clone, Debug)]
pub struct Optimizer<B: Backend> {
    pub kind: OptimizerKind,
    slots: Vec<Slot<B::Tensor>>,
    steps: u64,
}

impl<B: Backend> Optimizer<B> {
    /// A fresh optimizer (no state yet) for the parameters of `store`.
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
    /// it per step; it replaces the kind's own `lr`), all of them in one backend op.
    pub fn step(
        &mut self,
        backend: &B,
        store: &mut ParamStore<B>,
        grads: &Grads<B>,
        lr: f64,
    ) -> Result<()> {
        self.steps += 1;
        let stepped: Vec<(ParamId, &B::Tensor)> = store
            .entries()
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.kind == EntryKind::Parameter)
            .filter_map(|(index, _)| grads.get(ParamId(index)).map(|g| (ParamId(index), g)))
            .collect();
        let updated = match self.kind {
            OptimizerKind::Sgd(hp) => {
                self.sgd_step(backend, store, &stepped, SgdParams { lr, ..hp })
            }
            OptimizerKind::AdamW(hp) => {
                self.adamw_step(backend, store, &stepped, AdamWParams { lr, ..hp })
            }
        }?;
        for ((id, _), (param, slot)) in stepped.iter().zip(updated) {
            store.set(*id, param);
            self.slots[id.0] = slot;
        }
        Ok(())
    }

    /// The SGD step of the parameters `stepped` (with their gradients): their new values and
    /// momentum buffers.
    fn sgd_step(
        &self,
        backend: &B,
        store: &ParamStore<B>,
        stepped: &[(ParamId, &B::Tensor)],
        params: SgdParams,
    ) -> Result<Vec<Stepped<B::Tensor>>> {
        let tensors: Vec<SgdTensors<'_, B::Tensor>> = stepped
            .iter()
            .map(|&(id, grad)| SgdTensors {
                param: store.get(id),
                grad,
                momentum_buffer: match &self.slots[id.0] {
                    Slot::Momentum(buffer) => Some(buffer),
                    _ => None,
                },
            })
            .collect();
        let updated = backend.sgd_step_foreach(&tensors, params)?;
        Ok(updated
            .into_iter()
            .map(|(param, buffer)| (param, Slot::Momentum(buffer)))
            .collect())
    }

    /// The AdamW step of the parameters `stepped` (with their gradients): their new values and
    /// moments. Moments start at zero; the weight decay skips biases and 1-D parameters.
    fn adamw_step(
        &self,
        backend: &B,
        store: &ParamStore<B>,
        stepped: &[(ParamId, &B::Tensor)],
        params: AdamWParams,
    ) -> Result<Vec<Stepped<B::Tensor>>> {
        let zeros: Vec<Option<B::Tensor>> = stepped
            .iter()
            .map(|&(id, _)| match &self.slots[id.0] {
                Slot::Moments { .. } => Ok(None),
                _ => backend.zeros(&store.entries()[id.0].shape).map(Some),
            })
            .collect::<std::result::Result<_, _>>()?;
        let tensors: Vec<AdamWTensors<'_, B::Tensor>> = stepped
            .iter()
            .zip(&zeros)
            .map(|(&(id, grad), zeros)| {
                let entry = &store.entries()[id.0];
                let (first_moment, second_moment) = match (&self.slots[id.0], zeros) {
                    (Slot::Moments { first, second }, _) => (first, second),
                    (_, Some(zeros)) => (zeros, zeros),
                    (_, None) => {
                        unreachable!("zeros were made for every parameter without moments")
                    }
                };
                AdamWTensors {
                    param: store.get(id),
                    grad,
                    first_moment,
                    second_moment,
                    decays: entry.shape.len() > 1 && !entry.name.ends_with(".bias"),
                }
            })
            .collect();
        let updated = backend.adamw_step_foreach(&tensors, params, self.steps)?;
        Ok(updated
            .into_iter()
            .map(|(param, first, second)| (param, Slot::Moments { first, second }))
            .collect())
    }

    /// The state as named tensors, for checkpoints: `{param}.momentum_buffer` (SGD), or
    /// `{param}.exp_avg` and `{param}.exp_avg_sq` (AdamW), for every parameter that has state.
    /// The step count is [`Optimizer::steps`].
    pub fn state_tensors(&self, backend: &B, store: &ParamStore<B>) -> Result<TensorFile> {
        let mut tensors = Vec::new();
        for (slot, entry) in self.slots.iter().zip(store.entries()) {
            let mut push = |suffix: &str, tensor: &B::Tensor| -> Result<()> {
                let values = backend.to_vec(tensor)?;
                tensors.push((
                    format!("{}.{suffix}", entry.name),
                    StoredTensor::from_elements(entry.shape.clone(), values),
                ));
                Ok(())
            };
            match slot {
                Slot::Empty => {}
                Slot::Momentum(buffer) => push("momentum_buffer", buffer)?,
                Slot::Moments { first, second } => {
                    push("exp_avg", first)?;
                    push("exp_avg_sq", second)?;
                }
            }
        }
        Ok(tensors)
    }

    /// Restores the state written by [`Optimizer::state_tensors`] and the step count `steps`.
    /// Tensors of the other optimizer kind, unknown names and wrong shapes are errors.
    pub fn load_state_tensors(
        &mut self,
        backend: &B,
        store: &ParamStore<B>,
        tensors: &TensorFile,
        steps: u64,
    ) -> Result<()> {
        let by_name: HashMap<&str, &StoredTensor> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut used = 0;
        let mut slots = Vec::with_capacity(self.slots.len());
        for entry in store.entries() {
            let mut take = |suffix: &str| -> Result<Option<B::Tensor>> {
                let name = format!("{}.{suffix}", entry.name);
                let Some(tensor) = by_name.get(name.as_str()) else {
                    return Ok(None);
                };
                if tensor.shape != entry.shape || matches!(tensor.data, TensorData::I64(_)) {
                    return Err(Error::Spec(format!(
                        "optimizer state {name}: shape {:?} does not fit the parameter's {:?}",
                        tensor.shape, entry.shape
                    )));
                }
                used += 1;
                let values = tensor.to_f64().into_iter().map(B::Elem::cast).collect();
                Ok(Some(backend.tensor_from_vec(&entry.shape, values)?))
            };
            let slot = match self.kind {
                OptimizerKind::Sgd(_) => match take("momentum_buffer")? {
                    Some(buffer) => Slot::Momentum(buffer),
                    None => Slot::Empty,
                },
                OptimizerKind::AdamW(_) => match (take("exp_avg")?, take("exp_avg_sq")?) {
                    (Some(first), Some(second)) => Slot::Moments { first, second },
                    (None, None) => Slot::Empty,
                    _ => {
                        return Err(Error::Spec(format!(
                            "optimizer state of {}: exp_avg and exp_avg_sq must come together",
                            entry.name
                        )));
                    }
                },
            };
            slots.push(slot);
        }
        if used != tensors.len() {
            return Err(Error::Spec(format!(
                "the optimizer state has {} tensors that this model and optimizer do not use \
                 (a checkpoint of another model or optimizer?)",
                tensors.len() - used
            )));
        }
        self.slots = slots;
        self.steps = steps;
        Ok(())
    }
}
