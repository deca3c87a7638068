//! Every trait of the op contract, and [`Compute`], for `use revsnn_reference::prelude::*`: code
//! generic over `B: Backend` calls any op without it, but code that calls ops on a concrete backend
//! ([`Cpu`], or the CUDA backend) needs the trait that declares each op in scope.
//!
//! [`Cpu`]: crate::Cpu

pub use crate::contract::{
    AttentionOps, Backend, BatchNormOps, Compute, ConvBatchNormOps, ConvOps, LinearOps, LossOps,
    NeuronOps, OptimOps, PoolOps, TensorOps, WordOps,
};
