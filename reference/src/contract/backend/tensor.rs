//! [`TensorOps`]: the tensor every other op trait builds on (its element type, its storage and
//! what a layer keeps of it), with making, reading, reshaping and the elementwise and reduction
//! ops of the reversible couplings and the model heads. The CPU kernels are
//! `reference/src/ops/tensor.rs`, their CUDA twins `gpu/src/ops/tensor.rs`.

use std::fmt::Debug;

use crate::contract::element::Element;
use crate::contract::error::{OpError, Result};
use crate::contract::precision::Precision;
use crate::contract::shapes::time_split;

/// Tensors of one backend: its element type, its dense row-major tensor and the ops on tensors
/// alone. Every other op trait of the contract ([`super::Backend`]) extends it.
///
/// A backend is a cheap handle (`Clone`); its tensors are immutable shared values whose `clone`
/// costs no copy, so a context may keep a tensor the caller keeps too without doubling memory.
pub trait TensorOps: Clone + Debug + Send + Sync + 'static {
    /// The float type every tensor of this backend holds.
    type Elem: Element;
    /// A dense row-major tensor.
    type Tensor: Clone + Debug + Send + Sync;
    /// A tensor as a layer keeps it for its backward ([`TensorOps::keep`]): its values exactly,
    /// in the backend's most compact form.
    type Kept: Debug + Send + Sync;

    /// A short name for messages, e.g. `cpu-f64`.
    fn name(&self) -> String;

    /// The precision of this backend's GEMM operands (docs/precision.md): convolutions, linear
    /// layers and batched matmuls take operands in this format, forward and backward, and
    /// accumulate in [`TensorOps::Elem`]; every other op computes in [`TensorOps::Elem`].
    fn precision(&self) -> Precision;

    // ---------------------------------------------------------------- making, reading, keeping

    /// A tensor of `shape` holding `data` in row-major order.
    fn tensor_from_vec(&self, shape: &[usize], data: Vec<Self::Elem>) -> Result<Self::Tensor>;

    /// The elements of `x` in row-major order.
    fn to_vec(&self, x: &Self::Tensor) -> Result<Vec<Self::Elem>>;

    /// The shape of `x`.
    fn shape(&self, x: &Self::Tensor) -> Vec<usize>;

    /// A tensor of zeros.
    fn zeros(&self, shape: &[usize]) -> Result<Self::Tensor>;

    /// The same elements under another shape of equal size.
    fn reshape(&self, x: &Self::Tensor, shape: &[usize]) -> Result<Self::Tensor>;

    /// `y = x.permute(axes)`, materialised row-major; its backward is the inverse permutation.
    fn permute(&self, x: &Self::Tensor, axes: &[usize]) -> Result<Self::Tensor>;

    /// `x` as a layer keeps it for its backward: the CPU keeps the tensor itself; CUDA keeps a
    /// neuron's spikes one bit each (docs/precision.md §"Spike bits"), and the tensor
    /// itself otherwise, so the caller's tensor can be freed.
    fn keep(&self, x: &Self::Tensor) -> Result<Self::Kept>;

    /// The tensor [`TensorOps::keep`] kept, with the same values.
    fn kept(&self, kept: &Self::Kept) -> Result<Self::Tensor>;

    /// The one element of a one-element tensor, read back.
    fn scalar(&self, x: &Self::Tensor) -> Result<Self::Elem> {
        match self.to_vec(x)?.as_slice() {
            [value] => Ok(*value),
            values => Err(OpError::shape(
                "scalar",
                format!("expected one element, got {}", values.len()),
            )),
        }
    }

    // ---------------------------------------------------------------- elementwise and structure

    /// `y = a + b`, equal shapes.
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;

    /// `y = a - b`, equal shapes.
    fn sub(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;

    /// [`TensorOps::add`] with `b` handed over: the same values, which a backend may write over
    /// `b`'s storage when nothing else holds it, allocating nothing (the reversible stream's
    /// couplings and gradient sums, docs/reversible.md §3.3). The default calls `add`.
    fn add_reusing(&self, a: &Self::Tensor, b: Self::Tensor) -> Result<Self::Tensor> {
        self.add(a, &b)
    }

    /// [`TensorOps::sub`] with `b` handed over, as [`TensorOps::add_reusing`].
    fn sub_reusing(&self, a: &Self::Tensor, b: Self::Tensor) -> Result<Self::Tensor> {
        self.sub(a, &b)
    }

    /// `y = factor * x`.
    fn scale(&self, x: &Self::Tensor, factor: Self::Elem) -> Result<Self::Tensor>;

    /// `y = x[.., start..start + len, ..]` along `axis` (the channel split of docs/reversible.md
    /// §3.1).
    fn narrow(
        &self,
        x: &Self::Tensor,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<Self::Tensor>;

    /// Concatenation along `axis`; the backward is [`TensorOps::narrow`] of each part.
    fn concat(&self, parts: &[&Self::Tensor], axis: usize) -> Result<Self::Tensor>;

    /// `y[t] = x` for `t < times`: `[...] -> [times, ...]`, the direct encoding of
    /// docs/architectures.md §4.1.
    fn repeat_leading(&self, x: &Self::Tensor, times: usize) -> Result<Self::Tensor>;

    /// `y = round(x 2^k) 2^-k`, the fixed-point grid of the exact reversible coupling (its
    /// gradient is taken as the identity, straight through).
    fn quantize(&self, x: &Self::Tensor, k: i32) -> Result<Self::Tensor>;

    // ---------------------------------------------------------------- reductions

    /// The number of NaN and infinite elements over all of `tensors`: one reduction whose single
    /// count is read back, so that training can check every parameter after each optimizer step
    /// at the cost of one pass over them.
    fn count_non_finite(&self, tensors: &[&Self::Tensor]) -> Result<u64>;

    /// `y = sum_t x[t]`: `[T, ...] -> [...]`, the backward of [`TensorOps::repeat_leading`].
    fn sum_leading(&self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// Mean over the listed axes, which are removed: the mean over time, over tokens, and the
    /// adaptive average pool to 1x1 (`mean_axes(x, &[2, 3])` on `[N, C, H, W]`).
    fn mean_axes(&self, x: &Self::Tensor, axes: &[usize]) -> Result<Self::Tensor>;

    /// The backward of [`TensorOps::mean_axes`]:
    /// `dx = broadcast(dy) / (product of the reduced sizes)`.
    fn mean_axes_backward(
        &self,
        grad_y: &Self::Tensor,
        input_shape: &[usize],
        axes: &[usize],
    ) -> Result<Self::Tensor>;
}

/// `[T, B, ...] -> [T B, ...]`, the time-flattened layout of SpikingJelly's `SeqToANNContainer`
/// (docs/conventions.md §1). Errors when `x` has fewer than two axes.
pub fn flatten_time<B: TensorOps>(backend: &B, x: &B::Tensor) -> Result<B::Tensor> {
    let shape = backend.shape(x);
    if shape.len() < 2 {
        let detail = format!("a tensor of shape {shape:?} has no [T, B] axes to flatten");
        return Err(OpError::shape("flatten_time", detail));
    }
    let mut flat = vec![shape[0] * shape[1]];
    flat.extend_from_slice(&shape[2..]);
    backend.reshape(x, &flat)
}

/// `[T B, ...] -> [T, B, ...]` ([`time_split`]).
pub fn unflatten_time<B: TensorOps>(
    backend: &B,
    x: &B::Tensor,
    time_steps: usize,
) -> Result<B::Tensor> {
    backend.reshape(x, &time_split(&backend.shape(x), time_steps)?)
}
