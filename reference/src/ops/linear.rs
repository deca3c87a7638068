//! Linear layers and batched matrix products.

use crate::backend::LinearGrads;
use crate::cpu::CpuTensor;
use crate::element::Element;
use crate::error::Result;

pub fn forward<E: Element>(
    x: &CpuTensor<E>,
    weight: &CpuTensor<E>,
    bias: Option<&CpuTensor<E>>,
) -> Result<CpuTensor<E>> {
    todo!("{x:?} {weight:?} {bias:?}")
}

pub fn backward<E: Element>(
    grad_y: &CpuTensor<E>,
    x: &CpuTensor<E>,
    weight: &CpuTensor<E>,
    has_bias: bool,
) -> Result<LinearGrads<CpuTensor<E>>> {
    todo!("{grad_y:?} {x:?} {weight:?} {has_bias}")
}

pub fn batched_matmul<E: Element>(
    a: &CpuTensor<E>,
    b: &CpuTensor<E>,
    transpose_a: bool,
    transpose_b: bool,
) -> Result<CpuTensor<E>> {
    todo!("{a:?} {b:?} {transpose_a} {transpose_b}")
}
