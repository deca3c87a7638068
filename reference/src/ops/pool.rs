//! Average and max pooling over `[N, C, H, W]` (SPEC.md 1).

use crate::cpu::CpuTensor;
use crate::element::Element;
use crate::error::Result;
use crate::params::Pool2dParams;

/// What the max-pool backward needs.
#[derive(Debug)]
pub struct MaxPoolContext {
    pub input_shape: Vec<usize>,
    pub argmax: Vec<usize>,
}

pub fn avg_pool2d_forward<E: Element>(
    x: &CpuTensor<E>,
    params: Pool2dParams,
) -> Result<CpuTensor<E>> {
    todo!("{x:?} {params:?}")
}

pub fn avg_pool2d_backward<E: Element>(
    grad_y: &CpuTensor<E>,
    input_shape: &[usize],
    params: Pool2dParams,
) -> Result<CpuTensor<E>> {
    todo!("{grad_y:?} {input_shape:?} {params:?}")
}

pub fn max_pool2d_forward<E: Element>(
    x: &CpuTensor<E>,
    params: Pool2dParams,
) -> Result<(CpuTensor<E>, MaxPoolContext)> {
    todo!("{x:?} {params:?}")
}

pub fn max_pool2d_backward<E: Element>(
    grad_y: &CpuTensor<E>,
    context: &MaxPoolContext,
) -> Result<CpuTensor<E>> {
    todo!("{grad_y:?} {context:?}")
}
