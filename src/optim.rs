//! Optimizers over a model's parameters: SGD with momentum (the ResNet recipe) and AdamW (the
//! transformer recipe), each step a few backend ops over groups of parameter tensors
//! (docs/recipes.md §5).

use revsnn_reference::{AdamWParams, AdamWTensors, Backend, Element, SgdParams, SgdTensors};

use std::collections::HashMap;
use std::ops::Range;

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

/// Consecutive groups of the parameters of lengths `lens`, one optimizer op each: a group holds
/// whole parameters and at most as many elements as the largest parameter, so a group's new
/// values and state, made before its old ones are freed, never take more memory than one step of
/// the largest parameter alone, the most a step per parameter needed. The backends' ops take a
/// group in one launch or a few (RevSResNet37's 110 parameters make 22 groups).
fn update_groups(lens: &[usize]) -> Vec<Range<usize>> {
    let limit = lens.iter().copied().max().unwrap_or(0);
    let mut groups = Vec::new();
    let (mut start, mut elements) = (0, 0);
    for (index, &len) in lens.iter().enumerate() {
        if index > start && elements + len > limit {
            groups.push(start..index);
            (start, elements) = (index, 0);
        }
        elements += len;
    }
    if start < lens.len() {
        groups.push(start..lens.len());
    }
    groups
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
    /// it per step; it replaces the kind's own `lr`): one backend op per group of
    /// [`update_groups`], each group's new values replacing the old before the next group runs.
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
        let lens: Vec<usize> = stepped
            .iter()
            .map(|(id, _)| store.entries()[id.0].shape.iter().product())
            .collect();
        for group in update_groups(&lens) {
            let group = &stepped[group];
            let updated = match self.kind {
                OptimizerKind::Sgd(hp) => {
                    self.sgd_step(backend, store, group, SgdParams { lr, ..hp })
                }
                OptimizerKind::AdamW(hp) => {
                    self.adamw_step(backend, store, group, AdamWParams { lr, ..hp })
                }
            }?;
            for ((id, _), (param, slot)) in group.iter().zip(updated) {
                store.set(*id, param);
                self.slots[id.0] = slot;
            }
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

#[cfg(test)]
mod tests {
    use super::update_groups;
    use std::ops::Range;

    #[test]
    fn update_groups_cover_every_parameter_in_order_within_the_largest() {
        let lens = [4, 1, 1, 10, 3, 3, 3, 0, 2, 9, 10, 1];
        let groups = update_groups(&lens);
        let covered: Vec<usize> = groups.iter().flat_map(|g| g.clone()).collect();
        assert_eq!(covered, (0..lens.len()).collect::<Vec<_>>());
        for group in &groups {
            let elements: usize = lens[group.clone()].iter().sum();
            assert!(elements <= 10, "group {group:?} holds {elements} elements");
        }
        assert_eq!(groups, [0..3, 3..4, 4..8, 8..9, 9..10, 10..11, 11..12]);
        assert!(update_groups(&[]).is_empty());
        assert_eq!(update_groups(&[0, 0]), vec![Range { start: 0, end: 2 }]);
    }
}
