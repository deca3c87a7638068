//! The shape rules of the tensor ops (reshape, permute, elementwise, narrow, concat, repeat
//! over time and its sum, quantize, means over axes).

use crate::contract::error::{OpError, Result};

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

/// `[T B, ...]` split into `[T, B, ...]`, the inverse of flattening time into the batch
/// (docs/conventions.md §1). Errors when `T` is 0 or does not divide the first axis.
pub fn time_split(shape: &[usize], time_steps: usize) -> Result<Vec<usize>> {
    match shape.split_first() {
        Some((&batch, rest)) if time_steps > 0 && batch.is_multiple_of(time_steps) => {
            let mut split = vec![time_steps, batch / time_steps];
            split.extend_from_slice(rest);
            Ok(split)
        }
        _ => Err(OpError::shape(
            "unflatten_time",
            format!("a tensor of shape {shape:?} cannot split into T = {time_steps}"),
        )),
    }
}
