//! 2-D convolution as a blocked im2col GEMM.

use crate::backend::Conv2dGrads;
use crate::cpu::CpuTensor;
use crate::element::Element;
use crate::error::Result;
use crate::params::Conv2dParams;

/// What the convolution backward needs.
#[derive(Debug)]
pub struct Conv2dContext<E> {
    pub input: CpuTensor<E>,
    pub weight: CpuTensor<E>,
    pub has_bias: bool,
    pub params: Conv2dParams,
}

pub fn forward<E: Element>(
    x: &CpuTensor<E>,
    weight: &CpuTensor<E>,
    bias: Option<&CpuTensor<E>>,
    params: Conv2dParams,
) -> Result<(CpuTensor<E>, Conv2dContext<E>)> {
    todo!("conv forward {x:?} {weight:?} {bias:?} {params:?}")
}

pub fn backward<E: Element>(
    grad_y: &CpuTensor<E>,
    context: &Conv2dContext<E>,
) -> Result<Conv2dGrads<CpuTensor<E>>> {
    todo!("conv backward {grad_y:?} {context:?}")
}
