//! The op contract: every op a RevSNN model needs, as a forward that returns its output and the
//! context its backward needs, and a backward that consumes that context (docs/design.md principle
//! 1). There is no general autograd: layers call these ops and keep the contexts on their own tape.
//!
//! Layouts follow PyTorch: images `[N, C, H, W]`, sequences time-first `[T, ...]`, weights
//! `[C_out, C_in, k_h, k_w]` and `[out, in]`. Every op checks its shapes and parameters and returns
//! an [`OpError`](crate::OpError) instead of panicking.
//!
//! The ops come in small traits, one per op family, each in a module named like the family's
//! kernels where it has kernels of its own (`reference/src/ops/<family>`, `gpu/src/ops/<family>`),
//! with the gradient and context types its ops return:
//!
//! - [`TensorOps`] ([`tensor`]): the element type, the tensor, and the ops on tensors alone;
//!   every other trait extends it.
//! - [`WordOps`] ([`word`]): fingerprints, and words that fold them where the backend computes.
//! - [`NeuronOps`] ([`neuron`]), [`ConvOps`] ([`conv`]), [`BatchNormOps`] ([`batch_norm`]),
//!   [`PoolOps`] ([`pool`]), [`LinearOps`] ([`linear`]), [`LossOps`] ([`loss`]) and
//!   [`OptimOps`] ([`optim`]): one op family each.
//! - [`ConvBatchNormOps`] ([`conv_batch_norm`]) and [`AttentionOps`] ([`attention`]): chains of
//!   the ops above as one op, whose defaults run the chain in turn and which a backend may fuse.
//!
//! [`Backend`] is all of them: what a layer, a model and the training loop ask of a backend. It
//! is implemented for every type that implements the traits, so a backend implements only those.

pub mod attention;
pub mod batch_norm;
pub mod conv;
pub mod conv_batch_norm;
pub mod linear;
pub mod loss;
pub mod neuron;
pub mod optim;
pub mod pool;
pub mod tensor;
pub mod word;

pub use attention::{
    AttentionGrads, AttentionKept, AttentionOps, attention_backward_in_turn,
    attention_forward_in_turn,
};
pub use batch_norm::{
    BatchNormAffine, BatchNormGrads, BatchNormMode, BatchNormOps, BatchNormTrainOutput, BatchStats,
    RunningStats,
};
pub use conv::{Conv2dGrads, ConvOps};
pub use conv_batch_norm::{
    AvgPoolGrad, Combine, ConvBatchNormGrads, ConvBatchNormOps, ConvBatchNormTrainOutput,
    NeuronFire, Onto, avg_pool_conv_batch_norm_backward_in_turn, conv_batch_norm_backward_in_turn,
    conv_batch_norm_train_avg_pool_in_turn, conv_batch_norm_train_fire_in_turn,
    conv_batch_norm_train_forward_in_turn, spiking_conv_batch_norm_backward_in_turn,
};
pub use linear::{LinearGrads, LinearOps};
pub use loss::LossOps;
pub use neuron::{
    BackendNeuronSource, NeuronBackward, NeuronKept, NeuronOps, NeuronSource,
    neuron_backward_from_source_in_turn, neuron_context,
};
pub use optim::{AdamWState, AdamWTensors, OptimOps, SgdState, SgdTensors};
pub use pool::PoolOps;
pub use tensor::{TensorOps, flatten_time, unflatten_time};
pub use word::WordOps;

/// The op contract, implemented by the CPU reference ([`crate::Cpu`]) and the CUDA backend:
/// every op trait of this module. Code generic over a backend asks for `B: Backend`, or for the
/// one trait it uses. A backend implements the traits in this order, one impl block each.
pub trait Backend:
    TensorOps
    + WordOps
    + NeuronOps
    + ConvOps
    + BatchNormOps
    + PoolOps
    + ConvBatchNormOps
    + LinearOps
    + AttentionOps
    + LossOps
    + OptimOps
{
}

impl<B> Backend for B where
    B: TensorOps
        + WordOps
        + NeuronOps
        + ConvOps
        + BatchNormOps
        + PoolOps
        + ConvBatchNormOps
        + LinearOps
        + AttentionOps
        + LossOps
        + OptimOps
{
}
