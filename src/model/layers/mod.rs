//! The building blocks of every model, each a [`Layer`] (docs/architectures.md §4.0): spiking
//! neurons, convolution, BatchNorm, pooling, the linear head, and the shape-only layers around
//! them (means, repetition over time, the batch-time swap, the doubled stream, the input check).
//! Stateless layers see `[T B, ...]`, the time-flattened layout of SpikingJelly's
//! `SeqToANNContainer` (docs/conventions.md §1); [`flatten_time`] and [`unflatten_time`] convert.

#[cfg(doc)]
use super::Layer;

mod batch_norm;
mod conv;
mod conv_batch_norm;
mod linear;
mod neuron;
mod pool;
mod shape;
mod spiking_conv;

pub use revsnn_reference::ConvKind;
pub use revsnn_reference::contract::{flatten_time, unflatten_time};

pub use batch_norm::{BatchNorm, BatchNormIds, BatchNormSaved};
pub use conv::Conv;
pub(super) use conv_batch_norm::Fired;
pub use conv_batch_norm::{ConvBn, ConvBnAvgPool};
pub use linear::Linear;
pub use neuron::Neuron;
pub use pool::{AvgPool, MaxPool};
pub use shape::{DuplicateChannels, InputShape, MeanOver, RepeatOverTime, SwapBatchTime};
pub use spiking_conv::{ConvBnNeuron, SpikingConvBn, SpikingConvPair};

/// A layer made to keep its input for its backward in place of a tensor of its own: its first
/// neuron keeps `x` rather than its membrane potentials (docs/neurons.md §2.4.1). Worth it only
/// where the caller holds the input through the layer's backward anyway, as the reverse of a
/// reversible block does for its F and G (docs/reversible.md §3.3); elsewhere the context would
/// hold `x` alive instead of `h`, the same bytes, and the backward would charge `h` again for
/// nothing.
pub trait KeepInput {
    /// This layer, keeping its input.
    fn keeping_input(self) -> Self;
}

/// A sequence keeps its input through its first part.
impl<A: KeepInput, C> KeepInput for (A, C) {
    fn keeping_input(self) -> Self {
        (self.0.keeping_input(), self.1)
    }
}
