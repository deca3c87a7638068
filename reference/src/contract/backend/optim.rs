//! [`OptimOps`]: SGD with momentum and AdamW steps, one parameter at a time or many per launch.
//! The CPU kernels are `reference/src/ops/optim.rs`, their CUDA twins `gpu/src/ops/optim.rs`.

use super::tensor::TensorOps;
use crate::contract::error::Result;
use crate::contract::params::{AdamWParams, SgdParams};

/// Optimizer steps, which return the new parameter and state rather than writing over them.
pub trait OptimOps: TensorOps {
    /// One SGD-with-momentum step on one parameter ([`SgdParams`]): returns the new parameter
    /// and momentum buffer (the first step passes no buffer).
    fn sgd_step(
        &self,
        param: &Self::Tensor,
        grad: &Self::Tensor,
        momentum_buffer: Option<&Self::Tensor>,
        params: SgdParams,
    ) -> Result<SgdState<Self::Tensor>>;

    /// One AdamW step number `step >= 1` on one parameter ([`AdamWParams`]): returns the new
    /// parameter, first moment and second moment.
    fn adamw_step(
        &self,
        param: &Self::Tensor,
        grad: &Self::Tensor,
        first_moment: &Self::Tensor,
        second_moment: &Self::Tensor,
        params: AdamWParams,
        step: u64,
    ) -> Result<AdamWState<Self::Tensor>>;

    /// [`OptimOps::sgd_step`] on each parameter of `tensors` with the same `params`, the results
    /// in order and equal to the single steps bit for bit. This default takes them in turn; CUDA
    /// updates up to 64 tensors per launch (docs/ARCHITECTURE.md §"`--device cuda`").
    fn sgd_step_foreach(
        &self,
        tensors: &[SgdTensors<'_, Self::Tensor>],
        params: SgdParams,
    ) -> Result<Vec<SgdState<Self::Tensor>>> {
        tensors
            .iter()
            .map(|t| self.sgd_step(t.param, t.grad, t.momentum_buffer, params))
            .collect()
    }

    /// [`OptimOps::adamw_step`] number `step` on each parameter of `tensors`, with `params` where
    /// the parameter decays and a weight decay of 0 where it does not; the results in order and
    /// equal to the single steps bit for bit. This default takes them in turn; CUDA updates up
    /// to 48 tensors per launch (docs/ARCHITECTURE.md §"`--device cuda`").
    fn adamw_step_foreach(
        &self,
        tensors: &[AdamWTensors<'_, Self::Tensor>],
        params: AdamWParams,
        step: u64,
    ) -> Result<Vec<AdamWState<Self::Tensor>>> {
        tensors
            .iter()
            .map(|t| {
                let params = t.params(params);
                self.adamw_step(
                    t.param,
                    t.grad,
                    t.first_moment,
                    t.second_moment,
                    params,
                    step,
                )
            })
            .collect()
    }
}

/// A parameter and its momentum buffer after one SGD step: `(parameter, buffer)`.
pub type SgdState<T> = (T, T);

/// A parameter and its AdamW moments after one step: `(parameter, first, second)`.
pub type AdamWState<T> = (T, T, T);

/// One parameter's operands of [`OptimOps::sgd_step_foreach`].
#[derive(Clone, Copy, Debug)]
pub struct SgdTensors<'a, T> {
    pub param: &'a T,
    pub grad: &'a T,
    /// `None` before the parameter's first step.
    pub momentum_buffer: Option<&'a T>,
}

/// One parameter's operands of [`OptimOps::adamw_step_foreach`].
#[derive(Clone, Copy, Debug)]
pub struct AdamWTensors<'a, T> {
    pub param: &'a T,
    pub grad: &'a T,
    pub first_moment: &'a T,
    pub second_moment: &'a T,
    /// Whether the weight decay applies (timm exempts biases and 1-D parameters,
    /// docs/choices.md §A19).
    pub decays: bool,
}

impl<T> AdamWTensors<'_, T> {
    /// The hyperparameters of this parameter's step: `params`, with no weight decay where the
    /// parameter does not decay.
    pub fn params(&self, params: AdamWParams) -> AdamWParams {
        let weight_decay = if self.decays {
            params.weight_decay
        } else {
            0.0
        };
        AdamWParams {
            weight_decay,
            ..params
        }
    }
}
