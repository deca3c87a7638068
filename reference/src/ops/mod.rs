//! CPU kernels, one module per op family; each public one is the twin of the module of the same
//! name in `gpu/src/ops/` (same public functions) and of `gpu/kernels/<same name>.cu`. The one GPU
//! module without a twin here is `precision`: its twin is `crate::contract::precision` (the
//! operand rounding of `Precision::round`). Operands are checked with the contract's shape rules
//! (`crate::contract`).

pub mod batch_norm;
pub mod conv;
mod gemm;
pub mod linear;
pub mod loss;
pub mod neuron;
pub mod optim;
pub mod pool;
mod simd;
pub mod tensor;

use ndarray::{ArcArray, IxDyn};

use crate::contract::Element;
use crate::cpu::CpuTensor;

/// `x` itself when it is row-major already (no copy), else a row-major copy.
fn standard<E: Element>(x: &CpuTensor<E>) -> CpuTensor<E> {
    if x.is_standard_layout() {
        x.clone()
    } else {
        x.as_standard_layout().into_owned().into_shared()
    }
}

/// The elements of a tensor made row-major by [`standard`].
fn slice_of<E: Element>(x: &CpuTensor<E>) -> &[E] {
    x.as_slice()
        .expect("a tensor made standard by `standard` is contiguous")
}

/// A freshly computed tensor of `shape` from its row-major `data`.
fn tensor<E: Element>(shape: &[usize], data: Vec<E>) -> CpuTensor<E> {
    ArcArray::from_shape_vec(IxDyn(shape), data)
        .expect("the data of a freshly computed tensor fits its shape")
}
