//! Structural and elementwise tensor ops: reshape, permute, add, sub, scale, narrow, concat,
//! repeat over time and its sum, means over axes.

use crate::cpu::CpuTensor;
use crate::element::Element;
use crate::error::Result;

pub fn reshape<E: Element>(x: &CpuTensor<E>, shape: &[usize]) -> Result<CpuTensor<E>> {
    todo!("{x:?} {shape:?}")
}

pub fn permute<E: Element>(x: &CpuTensor<E>, axes: &[usize]) -> Result<CpuTensor<E>> {
    todo!("{x:?} {axes:?}")
}

pub fn add<E: Element>(a: &CpuTensor<E>, b: &CpuTensor<E>) -> Result<CpuTensor<E>> {
    todo!("{a:?} {b:?}")
}

pub fn sub<E: Element>(a: &CpuTensor<E>, b: &CpuTensor<E>) -> Result<CpuTensor<E>> {
    todo!("{a:?} {b:?}")
}

pub fn scale<E: Element>(x: &CpuTensor<E>, factor: E) -> Result<CpuTensor<E>> {
    todo!("{x:?} {factor}")
}

pub fn narrow<E: Element>(
    x: &CpuTensor<E>,
    axis: usize,
    start: usize,
    len: usize,
) -> Result<CpuTensor<E>> {
    todo!("{x:?} {axis} {start} {len}")
}

pub fn concat<E: Element>(parts: &[&CpuTensor<E>], axis: usize) -> Result<CpuTensor<E>> {
    todo!("{parts:?} {axis}")
}

pub fn repeat_leading<E: Element>(x: &CpuTensor<E>, times: usize) -> Result<CpuTensor<E>> {
    todo!("{x:?} {times}")
}

pub fn sum_leading<E: Element>(x: &CpuTensor<E>) -> Result<CpuTensor<E>> {
    todo!("{x:?}")
}

pub fn mean_axes<E: Element>(x: &CpuTensor<E>, axes: &[usize]) -> Result<CpuTensor<E>> {
    todo!("{x:?} {axes:?}")
}

pub fn mean_axes_backward<E: Element>(
    grad_y: &CpuTensor<E>,
    input_shape: &[usize],
    axes: &[usize],
) -> Result<CpuTensor<E>> {
    todo!("{grad_y:?} {input_shape:?} {axes:?}")
}
