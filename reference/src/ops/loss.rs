//! Cross-entropy losses over logits `[B, K]`.

use crate::cpu::CpuTensor;
use crate::element::Element;
use crate::error::Result;

/// What the cross-entropy backward needs.
#[derive(Debug)]
pub struct CrossEntropyContext<E> {
    pub softmax: CpuTensor<E>,
    pub targets: CpuTensor<E>,
}

pub fn cross_entropy_forward<E: Element>(
    logits: &CpuTensor<E>,
    labels: &[usize],
) -> Result<(E, CrossEntropyContext<E>)> {
    todo!("{logits:?} {labels:?}")
}

pub fn soft_cross_entropy_forward<E: Element>(
    logits: &CpuTensor<E>,
    targets: &CpuTensor<E>,
) -> Result<(E, CrossEntropyContext<E>)> {
    todo!("{logits:?} {targets:?}")
}

pub fn cross_entropy_backward<E: Element>(
    context: &CrossEntropyContext<E>,
    grad_loss: E,
) -> Result<CpuTensor<E>> {
    todo!("{context:?} {grad_loss}")
}
