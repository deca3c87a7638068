//! The shape rules of every op, one module per op family (twins of `crate::ops` and of the CUDA
//! backend's `ops`): each takes operand shapes and returns the sizes an op needs, or an
//! [`OpError`](super::OpError) saying what does not fit. Both backends check their operands with
//! these and nothing else, so they accept and reject the same operands with the same messages.

pub mod batch_norm;
pub mod conv;
pub mod linear;
pub mod loss;
pub mod neuron;
pub mod optim;
pub mod pool;
pub mod tensor;

pub use batch_norm::{
    BatchNormShape, check_channel_vector, check_context_statistics, check_train_context,
};
pub use conv::{Conv1dAs2d, Conv2dGeometry};
pub use linear::{LinearShape, MatmulShape};
pub use loss::{check_context_targets, check_labels, check_soft_targets, logits_shape};
pub use neuron::{check_neuron_backward, check_normalised_neuron_backward, time_by_neurons};
pub use optim::check_like_param;
pub use pool::{Pool2dGeometry, check_pool_grad};
pub use tensor::{
    MeanAxes, check_axis, check_quantize_step, check_same_shape, concat_shape, element_count,
    narrowed_shape, permuted_shape, repeated_shape, split_leading, time_split,
};
