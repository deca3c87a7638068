//! # revsnn-reference
//!
//! The op contract of revsnn ([`contract`]: [`Backend`], [`Compute`], the op parameters, the
//! shape rules and the errors) and its deterministic CPU implementation ([`Cpu`]) on `ndarray`,
//! generic over `f32` and `f64`. This crate is the test oracle of the project: every op's
//! backward is checked against central finite differences, the neurons against the equations of
//! docs/neurons.md, and the GPU backend against this one.
//!
//! Layout: [`contract`] holds what both backends share (the CUDA backend depends on it and on
//! nothing else of this crate), [`ops`] the CPU kernels (one module per op family, twin of
//! `gpu/src/ops/`), [`cpu`] the [`Backend`] implementation over those kernels, [`memory`] the
//! byte accounting and [`testing`] the finite-difference tools.

pub mod contract;
pub mod cpu;
pub mod memory;
pub mod ops;
pub mod testing;

pub use contract::{
    AdamWParams, AdamWState, AdamWTensors, AttentionGrads, AttentionKept, AvgPoolGrad, Backend,
    BatchNormAffine, BatchNormGrads, BatchNormMode, BatchNormParams, BatchNormTrainOutput,
    BatchStats, Combine, Compute, Conv2dGrads, Conv2dParams, ConvBatchNormGrads,
    ConvBatchNormTrainOutput, ConvKind, DType, DeviceError, Element, Firing, LinearGrads,
    NeuronBackward, NeuronConfig, NeuronFire, NeuronKept, NeuronKind, NeuronSource, Onto, OpError,
    Pool2dParams, Precision, Result, RunningStats, SgdParams, SgdState, SgdTensors, Surrogate,
    TransferCounts, TransfersPerStep,
};
pub use cpu::{Cpu, CpuTensor};
