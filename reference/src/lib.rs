//! # revsnn-reference
//!
//! The op contract of revsnn ([`Backend`]) and its deterministic CPU implementation ([`Cpu`]) on
//! `ndarray`, generic over `f32` and `f64`. This crate is the test oracle of the project: every
//! op's backward is checked against central finite differences, the neurons against the equations
//! of docs/neurons.md, and the GPU backend against this one.
//!
//! Layout: [`backend`] holds the contract (one forward returning what its backward needs, and a
//! backward, per op), [`params`] the op parameters with their validation, [`ops`] the CPU kernels
//! (one file per op family, twin of `gpu/src/ops/`), [`cpu`] the [`Backend`] implementation over
//! those kernels, [`memory`] the byte accounting and [`testing`] the finite-difference tools.

pub mod backend;
pub mod cpu;
pub mod element;
pub mod error;
pub mod memory;
pub mod ops;
pub mod params;
pub mod precision;
pub mod testing;

pub use backend::{
    AdamWState, Backend, BatchNormGrads, BatchNormTrainOutput, BatchStats, Conv2dGrads,
    LinearGrads, RunningStats,
};
pub use cpu::{Cpu, CpuTensor};
pub use element::{DType, Element};
pub use error::{OpError, Result};
pub use params::{
    AdamWParams, BatchNormParams, Conv2dParams, Firing, NeuronConfig, NeuronKind, Pool2dParams,
    SgdParams, Surrogate,
};
pub use precision::Precision;
