//! [`BatchNormOps`]: batch normalisation in training and evaluation mode, its backward, and the
//! running statistics' update (PyTorch's rule, docs/conventions.md §1). The CPU kernels are
//! `reference/src/ops/batch_norm.rs`, their CUDA twins `gpu/src/ops/batch_norm.rs`.

use std::fmt::Debug;

#[cfg(doc)]
use super::conv_batch_norm::ConvBatchNormOps;
use super::tensor::TensorOps;
use crate::contract::error::Result;
use crate::contract::params::BatchNormParams;

/// Batch normalisation over `x [N, C, ...]`, per channel.
pub trait BatchNormOps: TensorOps {
    /// What [`BatchNormOps::batch_norm_backward`] needs.
    type BatchNormContext: Debug + Send + Sync;

    /// Training mode over `x [N, C, ...]`: statistics over every axis but `C`,
    /// `y = gamma (x - mean) / sqrt(var_biased + eps) + beta`. Returns `y`, the batch statistics
    /// (for [`BatchNormOps::update_running_stats`]) and the context.
    fn batch_norm_train_forward(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        params: BatchNormParams,
    ) -> Result<BatchNormTrainOutput<Self::Tensor, Self::BatchNormContext>>;

    /// The `y` of the training forward that made `context` (this op's or the fused
    /// [`ConvBatchNormOps::conv_batch_norm_train_forward`]'s, given the same `beta`), computed
    /// again from the input and the statistics the context keeps, bit for bit: so a layer can drop
    /// `y` and make it again for its backward (docs/neurons.md §2.4.2). Errors on a context of
    /// [`BatchNormOps::batch_norm_eval_forward`], or a `beta` that is not `[C]`.
    fn batch_norm_train_output(
        &self,
        context: &Self::BatchNormContext,
        beta: &Self::Tensor,
    ) -> Result<Self::Tensor>;

    /// Evaluation mode: `y = gamma (x - running_mean) / sqrt(running_var + eps) + beta`.
    fn batch_norm_eval_forward(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        running: &RunningStats<Self::Tensor>,
        params: BatchNormParams,
    ) -> Result<(Self::Tensor, Self::BatchNormContext)>;

    /// Gradients of either batch-norm forward.
    fn batch_norm_backward(
        &self,
        grad_y: &Self::Tensor,
        context: &Self::BatchNormContext,
    ) -> Result<BatchNormGrads<Self::Tensor>>;

    /// `running = (1 - momentum) running + momentum batch`, with the unbiased batch variance
    /// (PyTorch's rule, docs/conventions.md §1).
    fn update_running_stats(
        &self,
        running: &RunningStats<Self::Tensor>,
        batch: &BatchStats<Self::Tensor>,
        params: BatchNormParams,
    ) -> Result<RunningStats<Self::Tensor>>;
}

/// Gradients of a batch normalisation.
#[derive(Clone, Debug)]
pub struct BatchNormGrads<T> {
    pub input: T,
    pub gamma: T,
    pub beta: T,
}

/// Per-channel statistics of one training-mode batch normalisation: the biased variance
/// normalises, the unbiased one (`n / (n - 1)` times it) updates the running variance.
#[derive(Clone, Debug)]
pub struct BatchStats<T> {
    pub mean: T,
    pub var_unbiased: T,
}

/// What a training-mode batch normalisation returns: the output, the batch statistics and the
/// context of its backward.
pub type BatchNormTrainOutput<T, C> = (T, BatchStats<T>, C);

/// A BatchNorm's affine parameters `gamma` and `beta` (each `[C]`) and its parameters.
#[derive(Debug)]
pub struct BatchNormAffine<'a, T> {
    pub gamma: &'a T,
    pub beta: &'a T,
    pub params: BatchNormParams,
}

// Copied whatever `T` is (a derive would ask `T: Copy`).
impl<T> Clone for BatchNormAffine<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for BatchNormAffine<'_, T> {}

/// Which batch-norm forward made a context, and so which backward applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchNormMode {
    /// Batch statistics: the gradient flows through the mean and the variance too.
    Train,
    /// Running statistics: a fixed per-channel affine map.
    Eval,
}

/// A BatchNorm layer's running statistics, `[C]` each.
#[derive(Clone, Debug)]
pub struct RunningStats<T> {
    pub mean: T,
    pub var: T,
}
