//! The op contract, in one place: what a backend implements and the rules both backends check
//! their operands by (docs/design.md principle 1). The CPU kernels (`crate::ops`, `crate::cpu`)
//! and the CUDA backend (`revsnn-gpu`) depend on this module and on nothing of each other, so
//! the two accept and reject the same operands with the same messages.
//!
//! - [`backend`]: the op traits, one per op family ([`TensorOps`], [`NeuronOps`], [`ConvOps`],
//!   ...), each op a forward returning its context and a backward, with the gradient and
//!   statistics types its ops return; [`Backend`] is all of them.
//! - [`compute`]: [`Compute`], synchronisation and peak memory, what the commands need besides.
//! - [`params`]: the op parameters with their validation.
//! - [`shapes`]: the shape rules, one module per op family (the checked sizes of a convolution,
//!   a pooling, a batched product, ...).
//! - [`error`]: [`OpError`], with a typed [`DeviceError`] for device failures.
//! - [`element`]: the float types, [`Element`] and [`DType`].
//! - [`fingerprint`]: the hash of a tensor's bits that both backends compute alike.
//! - [`precision`]: the arithmetic precisions of a step ([`Precision`]) and their operand
//!   rounding.

pub mod backend;
pub mod compute;
pub mod element;
pub mod error;
pub mod fingerprint;
pub mod params;
pub mod precision;
pub mod shapes;

pub use backend::{
    AdamWState, AdamWTensors, AttentionGrads, AttentionKept, AttentionOps, AvgPoolGrad, Backend,
    BackendNeuronSource, BatchNormAffine, BatchNormGrads, BatchNormMode, BatchNormOps,
    BatchNormTrainOutput, BatchStats, Combine, Conv2dGrads, ConvBatchNormGrads, ConvBatchNormOps,
    ConvBatchNormTrainOutput, ConvOps, LinearGrads, LinearOps, LossOps, NeuronBackward, NeuronFire,
    NeuronKept, NeuronOps, NeuronSource, Onto, OptimOps, PoolOps, RunningStats, SgdState,
    SgdTensors, TensorOps, WordOps, attention_backward_in_turn, attention_forward_in_turn,
    avg_pool_conv_batch_norm_backward_in_turn, conv_batch_norm_backward_in_turn,
    conv_batch_norm_train_avg_pool_in_turn, conv_batch_norm_train_fire_in_turn,
    conv_batch_norm_train_forward_in_turn, flatten_time, neuron_backward_from_source_in_turn,
    neuron_context, spiking_conv_batch_norm_backward_in_turn, unflatten_time,
};
pub use compute::{Compute, TransferCounts, TransfersPerStep};
pub use element::{DType, Element};
pub use error::{DeviceError, OpError, Result};
pub use params::{
    AdamWParams, BatchNormParams, Conv2dParams, ConvKind, Firing, NeuronConfig, NeuronKind,
    Pool2dParams, SgdParams, Surrogate,
};
pub use precision::Precision;
pub use shapes::{Conv2dGeometry, Pool2dGeometry};
