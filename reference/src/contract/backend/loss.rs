//! [`LossOps`]: the mean cross-entropy against class indices or soft targets, and its backward.
//! The CPU kernels are `reference/src/ops/loss.rs`, their CUDA twins `gpu/src/ops/loss.rs`.

use std::fmt::Debug;

use super::tensor::TensorOps;
use crate::contract::error::Result;

/// Cross-entropy losses over `logits [B, K]`.
pub trait LossOps: TensorOps {
    /// What [`LossOps::cross_entropy_backward`] needs: the softmax and the targets.
    type CrossEntropyContext: Debug + Send + Sync;

    /// Mean cross-entropy of `logits [B, K]` against class indices:
    /// `L = -(1/B) sum_b log softmax(logits[b])[label_b]`, as a `[1]` tensor left where the
    /// backend computes, so that a training step reads it back with whatever else it reads.
    fn cross_entropy_loss(
        &self,
        logits: &Self::Tensor,
        labels: &[usize],
    ) -> Result<(Self::Tensor, Self::CrossEntropyContext)>;

    /// Mean soft-target cross-entropy (mixup, label smoothing):
    /// `L = -(1/B) sum_b sum_k targets[b, k] log softmax(logits[b])[k]`, as a `[1]` tensor
    /// like [`LossOps::cross_entropy_loss`].
    fn soft_cross_entropy_loss(
        &self,
        logits: &Self::Tensor,
        targets: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::CrossEntropyContext)>;

    /// [`LossOps::cross_entropy_loss`] with the loss read back.
    fn cross_entropy_forward(
        &self,
        logits: &Self::Tensor,
        labels: &[usize],
    ) -> Result<(Self::Elem, Self::CrossEntropyContext)> {
        let (loss, context) = self.cross_entropy_loss(logits, labels)?;
        Ok((self.scalar(&loss)?, context))
    }

    /// [`LossOps::soft_cross_entropy_loss`] with the loss read back.
    fn soft_cross_entropy_forward(
        &self,
        logits: &Self::Tensor,
        targets: &Self::Tensor,
    ) -> Result<(Self::Elem, Self::CrossEntropyContext)> {
        let (loss, context) = self.soft_cross_entropy_loss(logits, targets)?;
        Ok((self.scalar(&loss)?, context))
    }

    /// `dL/dlogits = grad_loss (softmax - targets) / B` for either cross-entropy.
    fn cross_entropy_backward(
        &self,
        context: &Self::CrossEntropyContext,
        grad_loss: Self::Elem,
    ) -> Result<Self::Tensor>;
}
