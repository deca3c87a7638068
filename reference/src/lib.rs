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
//! byte accounting and [`testing`] the finite-difference tools. [`prelude`] brings every op
//! trait into scope, for code that calls ops on a concrete backend such as [`Cpu`].

pub mod contract;
pub mod cpu;
pub mod memory;
pub mod ops;
pub mod prelude;
pub mod testing;

pub use contract::{
    AdamWParams, AdamWState, AdamWTensors, AttentionGrads, AttentionKept, AttentionOps,
    AvgPoolGrad, Backend, BatchNormAffine, BatchNormGrads, BatchNormMode, BatchNormOps,
    BatchNormParams, BatchNormTrainOutput, BatchStats, Combine, Compute, Conv2dGrads, Conv2dParams,
    ConvBatchNormGrads, ConvBatchNormOps, ConvBatchNormTrainOutput, ConvKind, ConvOps, DType,
    DeviceError, Element, Firing, LinearGrads, LinearOps, LossOps, NeuronBackward, NeuronConfig,
    NeuronFire, NeuronKept, NeuronKind, NeuronOps, NeuronSource, Onto, OpError, OptimOps,
    Pool2dParams, PoolOps, Precision, Result, RunningStats, SgdParams, SgdState, SgdTensors,
    Surrogate, TensorOps, TransferCounts, TransfersPerStep, WordOps,
};
pub use cpu::{Cpu, CpuTensor};
