//! The shape rules of the cross-entropy losses (docs/recipes.md §5).

use crate::contract::error::{OpError, Result};

/// `(B, K)` of logits `[B, K]` with `B, K >= 1`.
pub fn logits_shape(op: &'static str, logits: &[usize]) -> Result<(usize, usize)> {
    match *logits {
        [b, k] if b >= 1 && k >= 1 => Ok((b, k)),
        _ => Err(OpError::shape(
            op,
            format!("expected logits [B, K] with B, K >= 1, got {logits:?}"),
        )),
    }
}

/// `(B, K)` of `logits [B, K]` with one label `< K` per row, or why not (the cross-entropy
/// against class indices).
pub fn check_labels(logits: &[usize], labels: &[usize]) -> Result<(usize, usize)> {
    const OP: &str = "cross_entropy";
    let (batch, classes) = logits_shape(OP, logits)?;
    if labels.len() != batch {
        return Err(OpError::shape(
            OP,
            format!(
                "expected one label per row of logits {logits:?}, got {} labels",
                labels.len()
            ),
        ));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
        return Err(OpError::parameter(
            OP,
            "label",
            bad,
            "must be < K, the number of classes (the last axis of the logits)",
        ));
    }
    Ok((batch, classes))
}

/// `(B, K)` of `logits [B, K]` with `targets` of the same shape, or why not (the soft-target
/// cross-entropy).
pub fn check_soft_targets(logits: &[usize], targets: &[usize]) -> Result<(usize, usize)> {
    const OP: &str = "soft_cross_entropy";
    let shape = logits_shape(OP, logits)?;
    if targets != logits {
        return Err(OpError::shape(
            OP,
            format!("expected targets of the logits' shape {logits:?}, got {targets:?}"),
        ));
    }
    Ok(shape)
}

/// Errors unless a cross-entropy context's `targets` (a shape) fit its `softmax`.
pub fn check_context_targets(op: &'static str, targets: &[usize], softmax: &[usize]) -> Result<()> {
    if targets != softmax {
        return Err(OpError::shape(
            op,
            format!("the context's targets {targets:?} do not fit the softmax {softmax:?}"),
        ));
    }
    Ok(())
}
