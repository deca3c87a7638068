//! The shape rules of the ops other than convolution and pooling ([`super::geometry`]): each
//! function takes operand shapes, returns the sizes an op needs or an [`OpError`] saying what
//! does not fit. Both backends check their operands with these, so they accept and reject the
//! same operands with the same messages.

use super::error::{OpError, Result};
use super::params::NeuronConfig;

// ---------------------------------------------------------------- tensors

/// The product of `shape`, or an error when it overflows `usize`.
pub fn element_count(op: &'static str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| OpError::shape(op, format!("the size of shape {shape:?} overflows")))
}

/// Errors unless `axis < ndim`.
pub fn check_axis(op: &'static str, axis: usize, ndim: usize) -> Result<()> {
    if axis >= ndim {
        return Err(OpError::parameter(
            op,
            "axis",
            axis,
            "must be smaller than the number of axes of the input",
        ));
    }
    Ok(())
}

/// Errors unless the two operands of an elementwise op have equal shapes.
pub fn check_same_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<()> {
    if a != b {
        return Err(OpError::shape(
            op,
            format!("operands have shapes {a:?} and {b:?}"),
        ));
    }
    Ok(())
}

/// `y.shape[a] = shape[axes[a]]`, or an error unless `axes` is a permutation of `0..d`.
pub fn permuted_shape(shape: &[usize], axes: &[usize]) -> Result<Vec<usize>> {
    let ndim = shape.len();
    let mut seen = vec![false; ndim];
    let is_permutation = axes.len() == ndim
        && axes
            .iter()
            .all(|&a| a < ndim && !std::mem::replace(&mut seen[a], true));
    if !is_permutation {
        return Err(OpError::shape(
            "permute",
            format!("axes {axes:?} are not a permutation of the {ndim} axes of {shape:?}"),
        ));
    }
    Ok(axes.iter().map(|&a| shape[a]).collect())
}

/// The shape of `narrow(x, axis, start, len)`: `shape` with `len` along `axis`, or an error
/// unless `axis` is in range and `start + len <= shape[axis]`.
pub fn narrowed_shape(
    shape: &[usize],
    axis: usize,
    start: usize,
    len: usize,
) -> Result<Vec<usize>> {
    const OP: &str = "narrow";
    check_axis(OP, axis, shape.len())?;
    let dim = shape[axis];
    if start.checked_add(len).is_none_or(|end| end > dim) {
        return Err(OpError::shape(
            OP,
            format!(
                "range {start}..{start}+{len} is out of bounds for axis {axis} of size {dim} in {shape:?}"
            ),
        ));
    }
    let mut out = shape.to_vec();
    out[axis] = len;
    Ok(out)
}

/// The shape of `concat(parts, axis)`: at least one part, all of one shape outside `axis`,
/// whose sizes along `axis` add up.
pub fn concat_shape(parts: &[&[usize]], axis: usize) -> Result<Vec<usize>> {
    const OP: &str = "concat";
    let Some(first) = parts.first() else {
        return Err(OpError::shape(OP, "needs at least one part"));
    };
    check_axis(OP, axis, first.len())?;
    let mut shape = first.to_vec();
    shape[axis] = 0;
    for part in parts {
        let fits = part.len() == first.len()
            && part
                .iter()
                .zip(first.iter())
                .enumerate()
                .all(|(a, (p, f))| a == axis || p == f);
        if !fits {
            return Err(OpError::shape(
                OP,
                format!("part of shape {part:?} does not match {first:?} outside axis {axis}"),
            ));
        }
        shape[axis] = shape[axis]
            .checked_add(part[axis])
            .ok_or_else(|| OpError::shape(OP, "the concatenated axis overflows"))?;
    }
    element_count(OP, &shape)?;
    Ok(shape)
}

/// The shape `[times, ...]` of `repeat_leading(x, times)`, `times >= 1`.
pub fn repeated_shape(shape: &[usize], times: usize) -> Result<Vec<usize>> {
    const OP: &str = "repeat_leading";
    if times == 0 {
        return Err(OpError::parameter(OP, "times", times, "must be >= 1"));
    }
    let mut out = vec![times];
    out.extend_from_slice(shape);
    element_count(OP, &out)?;
    Ok(out)
}

/// `(T, rest)` of a `[T, ...]` input of `sum_leading`, or an error for a scalar.
pub fn split_leading(shape: &[usize]) -> Result<(usize, &[usize])> {
    match shape.split_first() {
        Some((&steps, rest)) => Ok((steps, rest)),
        None => Err(OpError::shape(
            "sum_leading",
            "x must have shape [T, ...], got a scalar",
        )),
    }
}

/// Errors unless `|k| <= 60`: `quantize` scales by `2^k`, exact only in that range.
pub fn check_quantize_step(k: i32) -> Result<()> {
    if k.abs() > 60 {
        return Err(OpError::parameter(
            "quantize",
            "k",
            k,
            "must be within [-60, 60]",
        ));
    }
    Ok(())
}

/// The sizes of a mean over some axes of `shape`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeanAxes {
    /// The reduced axes, in increasing order.
    pub reduced: Vec<usize>,
    /// The kept axes, in increasing order.
    pub kept: Vec<usize>,
    /// `R >= 1`, the number of elements each output averages.
    pub count: usize,
    /// `shape` without the reduced axes.
    pub output_shape: Vec<usize>,
}

impl MeanAxes {
    /// The mean of `shape` over `axes` (distinct, each in range, in any order), or an error;
    /// also when the mean would average no element.
    pub fn new(op: &'static str, shape: &[usize], axes: &[usize]) -> Result<Self> {
        let mut reduced = axes.to_vec();
        reduced.sort_unstable();
        let distinct = reduced.windows(2).all(|w| w[0] != w[1]);
        if !distinct || reduced.last().is_some_and(|&a| a >= shape.len()) {
            return Err(OpError::parameter(
                op,
                "axes",
                format!("{axes:?}"),
                "must be distinct and smaller than the number of axes of the input",
            ));
        }
        let kept: Vec<usize> = (0..shape.len()).filter(|a| !reduced.contains(a)).collect();
        let reduced_sizes: Vec<usize> = reduced.iter().map(|&a| shape[a]).collect();
        let count = element_count(op, &reduced_sizes)?;
        if count == 0 {
            return Err(OpError::shape(
                op,
                format!("the mean over axes {reduced:?} of {shape:?} has no elements"),
            ));
        }
        let output_shape = kept.iter().map(|&a| shape[a]).collect();
        Ok(MeanAxes {
            reduced,
            kept,
            count,
            output_shape,
        })
    }

    /// The sizes of `mean_axes_backward`: the mean's, and an error unless `grad_y` has its
    /// output's shape.
    pub fn backward(grad_y: &[usize], input_shape: &[usize], axes: &[usize]) -> Result<Self> {
        const OP: &str = "mean_axes_backward";
        let mean = MeanAxes::new(OP, input_shape, axes)?;
        if grad_y != mean.output_shape.as_slice() {
            return Err(OpError::shape(
                OP,
                format!(
                    "grad_y has shape {grad_y:?}, the mean of {input_shape:?} over {axes:?} has {:?}",
                    mean.output_shape
                ),
            ));
        }
        element_count(OP, input_shape)?;
        Ok(mean)
    }
}

// ---------------------------------------------------------------- neurons

/// `(T, N)` of a neuron input `[T, ...]`: at least one axis and `T >= 1`; `N` is the product of
/// the trailing axes. `what` names the operand in the message.
pub fn time_by_neurons(shape: &[usize], what: &str) -> Result<(usize, usize)> {
    match shape.split_first() {
        Some((&steps, rest)) if steps >= 1 => Ok((steps, rest.iter().product())),
        _ => Err(OpError::shape(
            "neuron",
            format!("{what} must have shape [T, ...] with T >= 1, got {shape:?}"),
        )),
    }
}

/// The checks of a neuron backward against its context: a valid `config` equal to the one the
/// forward ran with, and `grad_spikes` shaped like the forward's `h`. Returns `(T, N)`.
pub fn check_neuron_backward(
    config: &NeuronConfig,
    forward_config: &NeuronConfig,
    grad_spikes: &[usize],
    h: &[usize],
) -> Result<(usize, usize)> {
    const OP: &str = "neuron";
    config.validate()?;
    if config != forward_config {
        return Err(OpError::parameter(
            OP,
            "config",
            format!("{config:?}"),
            "must equal the config the forward ran with (the context's)",
        ));
    }
    if grad_spikes != h {
        return Err(OpError::shape(
            OP,
            format!("grad_spikes has shape {grad_spikes:?}, the forward's input had {h:?}"),
        ));
    }
    time_by_neurons(h, "context h")
}

// ---------------------------------------------------------------- batch normalisation

/// How `x [N, C, ...]` splits into channels: `batch = N`, `channels = C`, `inner` the product of
/// the trailing axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchNormShape {
    pub batch: usize,
    pub channels: usize,
    pub inner: usize,
}

impl BatchNormShape {
    /// The split of `x` (a shape), or an error when it has fewer than 2 axes.
    pub fn new(op: &'static str, shape: &[usize]) -> Result<Self> {
        if shape.len() < 2 {
            return Err(OpError::shape(
                op,
                format!("expected x [N, C, ...] with at least 2 axes, got {shape:?}"),
            ));
        }
        Ok(BatchNormShape {
            batch: shape[0],
            channels: shape[1],
            inner: shape[2..].iter().product(),
        })
    }

    /// Elements per channel: `n = N` times the product of the trailing axes.
    pub fn per_channel(&self) -> usize {
        self.batch * self.inner
    }

    /// Errors when `n < 2`: one value per channel has no unbiased variance (PyTorch refuses it
    /// in training).
    pub fn check_trainable(&self, op: &'static str, shape: &[usize]) -> Result<()> {
        let n = self.per_channel();
        if n < 2 {
            return Err(OpError::shape(
                op,
                format!(
                    "expected more than 1 value per channel in training, got {n} for input {shape:?}"
                ),
            ));
        }
        Ok(())
    }

    /// Errors unless `grad_y` has the input's shape.
    pub fn check_grad(op: &'static str, grad_y: &[usize], input: &[usize]) -> Result<()> {
        if grad_y != input {
            return Err(OpError::shape(
                op,
                format!("expected grad_y of the input's shape {input:?}, got {grad_y:?}"),
            ));
        }
        Ok(())
    }
}

/// Errors unless the per-channel vector `name` (a shape) is `[channels]`.
pub fn check_channel_vector(
    op: &'static str,
    name: &str,
    shape: &[usize],
    channels: usize,
) -> Result<()> {
    if shape != [channels] {
        return Err(OpError::shape(
            op,
            format!("expected {name} of shape [{channels}] (one per channel), got {shape:?}"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- dense algebra

/// The sizes of a linear layer, checked: `x [rows, inputs]`, `weight [outputs, inputs]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    pub rows: usize,
    pub inputs: usize,
    pub outputs: usize,
}

impl LinearShape {
    /// The sizes of `x w^T` (shapes), or why they do not fit.
    pub fn new(op: &'static str, x: &[usize], weight: &[usize]) -> Result<Self> {
        match (x, weight) {
            (&[rows, inputs], &[outputs, w_inputs]) if inputs == w_inputs => Ok(LinearShape {
                rows,
                inputs,
                outputs,
            }),
            _ => Err(OpError::shape(
                op,
                format!("expected x [N, in] and weight [out, in], got {x:?} and {weight:?}"),
            )),
        }
    }

    /// Errors unless `bias` (a shape) is `[out]`.
    pub fn check_bias(&self, op: &'static str, bias: &[usize]) -> Result<()> {
        if bias != [self.outputs] {
            return Err(OpError::shape(
                op,
                format!("bias must be [{}], got {bias:?}", self.outputs),
            ));
        }
        Ok(())
    }

    /// Errors unless `grad_y` is `[rows, outputs]`; `x` and `weight` are named in the message.
    pub fn check_grad(
        &self,
        op: &'static str,
        grad_y: &[usize],
        x: &[usize],
        weight: &[usize],
    ) -> Result<()> {
        let expected = [self.rows, self.outputs];
        if grad_y != expected {
            return Err(OpError::shape(
                op,
                format!("grad_y must be {expected:?} (x {x:?}, weight {weight:?}), got {grad_y:?}"),
            ));
        }
        Ok(())
    }
}

/// The sizes of `c[b] = op(a[b]) op(b[b])`, checked: `batch` products of `[m, k]` by `[k, n]`
/// over operands stored `[a_rows, a_cols]` and `[b_rows, b_cols]`, giving `output_shape`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_rows: usize,
    pub a_cols: usize,
    pub b_rows: usize,
    pub b_cols: usize,
    /// `[..., m, n]`.
    pub output_shape: Vec<usize>,
}

impl MatmulShape {
    /// The sizes of a batched product of `a` and `b` (shapes), or why they do not fit: fewer than
    /// two axes, unequal batch axes or unequal inner sizes `k`.
    pub fn new(sa: &[usize], sb: &[usize], transpose_a: bool, transpose_b: bool) -> Result<Self> {
        const OP: &str = "batched_matmul";
        if sa.len() < 2 || sa.len() != sb.len() || sa[..sa.len() - 2] != sb[..sb.len() - 2] {
            return Err(OpError::shape(
                OP,
                format!(
                    "expected a [..., m, k] and b [..., k, n] with the same leading axes, got {sa:?} and {sb:?}"
                ),
            ));
        }
        let rank = sa.len();
        let (a_rows, a_cols) = (sa[rank - 2], sa[rank - 1]);
        let (b_rows, b_cols) = (sb[rank - 2], sb[rank - 1]);
        let (m, k) = if transpose_a {
            (a_cols, a_rows)
        } else {
            (a_rows, a_cols)
        };
        let (k_b, n) = if transpose_b {
            (b_cols, b_rows)
        } else {
            (b_rows, b_cols)
        };
        if k != k_b {
            return Err(OpError::shape(
                OP,
                format!(
                    "inner sizes differ: op(a) is [{m}, {k}] and op(b) is [{k_b}, {n}] \
                     (a {sa:?}, b {sb:?}, transpose_a {transpose_a}, transpose_b {transpose_b})"
                ),
            ));
        }
        let mut output_shape = sa[..rank - 2].to_vec();
        output_shape.extend([m, n]);
        Ok(MatmulShape {
            batch: sa[..rank - 2].iter().product(),
            m,
            n,
            k,
            a_rows,
            a_cols,
            b_rows,
            b_cols,
            output_shape,
        })
    }
}

// ---------------------------------------------------------------- losses

/// `(B, K)` of logits `[B, K]` with `B, K >= 1`.
pub fn logits_shape(op: &'static str, logits: &[usize]) -> Result<(usize, usize)> {
    match *logits {
        [b, k] if b >= 1 && k >= 1 => Ok((b, k)),
        _ => Err(OpError::shape(
            op,
            format!("expected logits [B, K] with B, K >= 1, got {logits:?}"),
        )),
    }
}

/// `(B, K)` of `logits [B, K]` with one label `< K` per row, or why not (the cross-entropy
/// against class indices).
pub fn check_labels(logits: &[usize], labels: &[usize]) -> Result<(usize, usize)> {
    const OP: &str = "cross_entropy";
    let (batch, classes) = logits_shape(OP, logits)?;
    if labels.len() != batch {
        return Err(OpError::shape(
            OP,
            format!(
                "expected one label per row of logits {logits:?}, got {} labels",
                labels.len()
            ),
        ));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
        return Err(OpError::parameter(
            OP,
            "label",
            bad,
            "must be < K, the number of classes (the last axis of the logits)",
        ));
    }
    Ok((batch, classes))
}

/// `(B, K)` of `logits [B, K]` with `targets` of the same shape, or why not (the soft-target
/// cross-entropy).
pub fn check_soft_targets(logits: &[usize], targets: &[usize]) -> Result<(usize, usize)> {
    const OP: &str = "soft_cross_entropy";
    let shape = logits_shape(OP, logits)?;
    if targets != logits {
        return Err(OpError::shape(
            OP,
            format!("expected targets of the logits' shape {logits:?}, got {targets:?}"),
        ));
    }
    Ok(shape)
}

/// Errors unless a cross-entropy context's `targets` (a shape) fit its `softmax`.
pub fn check_context_targets(op: &'static str, targets: &[usize], softmax: &[usize]) -> Result<()> {
    if targets != softmax {
        return Err(OpError::shape(
            op,
            format!("the context's targets {targets:?} do not fit the softmax {softmax:?}"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- optimizers

/// Errors unless an optimizer operand `what` (a gradient, a moment) has the parameter's shape.
pub fn check_like_param(
    op: &'static str,
    what: &str,
    param: &[usize],
    other: &[usize],
) -> Result<()> {
    if param != other {
        return Err(OpError::shape(
            op,
            format!("{what} has shape {other:?} but the parameter {param:?}"),
        ));
    }
    Ok(())
}
