//! The shape rules of batch normalisation over `x [N, C, ...]` (docs/conventions.md §1).

use crate::contract::backend::BatchNormMode;
use crate::contract::error::{OpError, Result};

/// How `x [N, C, ...]` splits into channels: `batch = N`, `channels = C`, `inner` the product of
/// the trailing axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchNormShape {
    pub batch: usize,
    pub channels: usize,
    pub inner: usize,
}

impl BatchNormShape {
    /// The split of `x` (a shape), or an error when it has fewer than 2 axes.
    pub fn new(op: &'static str, shape: &[usize]) -> Result<Self> {
        if shape.len() < 2 {
            return Err(OpError::shape(
                op,
                format!("expected x [N, C, ...] with at least 2 axes, got {shape:?}"),
            ));
        }
        Ok(BatchNormShape {
            batch: shape[0],
            channels: shape[1],
            inner: shape[2..].iter().product(),
        })
    }

    /// Elements per channel: `n = N` times the product of the trailing axes.
    pub fn per_channel(&self) -> usize {
        self.batch * self.inner
    }

    /// Errors when `n < 2`: one value per channel has no unbiased variance (PyTorch refuses it
    /// in training).
    pub fn check_trainable(&self, op: &'static str, shape: &[usize]) -> Result<()> {
        let n = self.per_channel();
        if n < 2 {
            return Err(OpError::shape(
                op,
                format!(
                    "expected more than 1 value per channel in training, got {n} for input {shape:?}"
                ),
            ));
        }
        Ok(())
    }

    /// Errors unless `grad_y` has the input's shape.
    pub fn check_grad(op: &'static str, grad_y: &[usize], input: &[usize]) -> Result<()> {
        if grad_y != input {
            return Err(OpError::shape(
                op,
                format!("expected grad_y of the input's shape {input:?}, got {grad_y:?}"),
            ));
        }
        Ok(())
    }
}

/// The checks of a BatchNorm backward against its context: `gamma` (a shape), `mean` and
/// `inv_std` (lengths) each hold one value per channel of the forward's input.
pub fn check_context_statistics(
    op: &'static str,
    channels: usize,
    gamma: &[usize],
    mean: usize,
    inv_std: usize,
) -> Result<()> {
    check_channel_vector(op, "the context's gamma", gamma, channels)?;
    if mean != channels || inv_std != channels {
        return Err(OpError::shape(
            op,
            format!(
                "the context's mean ({mean}) and inv_std ({inv_std}) do not have one value per \
                 channel ({channels})"
            ),
        ));
    }
    Ok(())
}

/// Errors unless a context whose output is made again is a training forward's (an evaluation
/// output is never needed again).
pub fn check_train_context(op: &'static str, mode: BatchNormMode) -> Result<()> {
    if mode != BatchNormMode::Train {
        let requirement = "a training forward's context";
        return Err(OpError::parameter(
            op,
            "context",
            format!("{mode:?}"),
            requirement,
        ));
    }
    Ok(())
}

/// Errors unless the per-channel vector `name` (a shape) is `[channels]`.
pub fn check_channel_vector(
    op: &'static str,
    name: &str,
    shape: &[usize],
    channels: usize,
) -> Result<()> {
    if shape != [channels] {
        return Err(OpError::shape(
            op,
            format!("expected {name} of shape [{channels}] (one per channel), got {shape:?}"),
        ));
    }
    Ok(())
}
