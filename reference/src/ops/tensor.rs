//! Structural and elementwise tensor ops: reshape, permute, add, sub, scale, narrow, concat,
//! repeat over time and its sum, means over axes.
//!
//! Every output is a row-major (standard-layout) `ArcArray`; inputs of any layout are accepted and
//! read in row-major logical order. Every reduction sums in a fixed order that depends only on the
//! shapes, never on the thread count (docs/design.md principle 4).

use std::borrow::Cow;

use ndarray::{ArcArray, Array, IxDyn, Zip};
use rayon::prelude::*;

use crate::contract::shapes::{
    MeanAxes, check_quantize_step, check_same_shape, concat_shape, element_count, narrowed_shape,
    permuted_shape, repeated_shape, split_leading,
};
use crate::contract::{Element, OpError, Precision, Result, fingerprint};
use crate::cpu::CpuTensor;
use crate::ops::simd::{self, Kernel};

/// The elements of `x` in row-major order, borrowed when `x` is already standard layout.
fn row_major<E: Element>(x: &CpuTensor<E>) -> Cow<'_, [E]> {
    match x.as_slice() {
        Some(data) => Cow::Borrowed(data),
        None => Cow::Owned(x.iter().copied().collect()),
    }
}

/// A tensor of `shape` from row-major `data`; `data.len()` is the product of `shape` by
/// construction in every caller, and a mismatch is reported rather than panicking.
fn tensor<E: Element>(op: &'static str, shape: &[usize], data: Vec<E>) -> Result<CpuTensor<E>> {
    let len = data.len();
    ArcArray::from_shape_vec(IxDyn(shape), data).map_err(|_| {
        OpError::shape(
            op,
            format!("internal: {len} elements cannot have shape {shape:?}"),
        )
    })
}

/// `x` as a standard-layout tensor: shared without a copy when it already is one.
fn standard<E: Element>(x: Array<E, IxDyn>) -> CpuTensor<E> {
    if x.is_standard_layout() {
        x.into_shared()
    } else {
        x.as_standard_layout().into_owned().into_shared()
    }
}

/// `x` with every element rounded to `precision`'s operand format ([`Precision::round_f64`]:
/// once, to nearest even, straight from the element type): the operand of a GEMM under a low
/// precision (docs/precision.md). Shared without a copy when every element is already exact in
/// the format: always under `f32`, and for spikes (0 and 1) in every format.
pub fn round_to_precision<E: Element>(x: &CpuTensor<E>, precision: Precision) -> CpuTensor<E> {
    let round = |v: E| E::cast(precision.round_f64(v.widen()));
    if precision == Precision::F32 || x.iter().all(|&v| round(v) == v || v.is_nan()) {
        return x.clone();
    }
    let data: Vec<E> = row_major(x).par_iter().map(|&v| round(v)).collect();
    super::tensor(x.shape(), data)
}

/// A tensor of `shape` holding `data` in row-major order.
pub fn from_vec<E: Element>(shape: &[usize], data: Vec<E>) -> Result<CpuTensor<E>> {
    let len = data.len();
    ArcArray::from_shape_vec(IxDyn(shape), data).map_err(|_| {
        OpError::shape(
            "tensor_from_vec",
            format!("{len} elements cannot have shape {shape:?}"),
        )
    })
}

/// The elements of `x` in row-major order.
pub fn to_vec<E: Element>(x: &CpuTensor<E>) -> Vec<E> {
    x.iter().copied().collect()
}

/// A tensor of zeros.
pub fn zeros<E: Element>(shape: &[usize]) -> CpuTensor<E> {
    ArcArray::zeros(IxDyn(shape))
}

/// `y = x` under `shape`: the same row-major elements, `prod(shape) = prod(x.shape)`. Shares the
/// data of a standard-layout `x`.
pub fn reshape<E: Element>(x: &CpuTensor<E>, shape: &[usize]) -> Result<CpuTensor<E>> {
    const OP: &str = "reshape";
    if element_count(OP, shape)? != x.len() {
        return Err(OpError::shape(
            OP,
            format!(
                "cannot reshape {:?} ({} elements) to {shape:?}",
                x.shape(),
                x.len()
            ),
        ));
    }
    if x.is_standard_layout() {
        x.clone()
            .into_shape_with_order(IxDyn(shape))
            .map_err(|e| OpError::shape(OP, format!("{e}")))
    } else {
        tensor(OP, shape, row_major(x).into_owned())
    }
}

/// `y[i_0, .., i_{d-1}] = x[j]` with `j[axes[a]] = i_a`: `y.shape[a] = x.shape[axes[a]]`,
/// materialised row-major. `axes` must be a permutation of `0..d`; the backward is `permute` by
/// the inverse permutation.
pub fn permute<E: Element>(x: &CpuTensor<E>, axes: &[usize]) -> Result<CpuTensor<E>> {
    permuted_shape(x.shape(), axes)?;
    let permuted = x.view().permuted_axes(IxDyn(axes));
    Ok(permuted.as_standard_layout().into_owned().into_shared())
}

fn elementwise<E: Element>(
    op: &'static str,
    a: &CpuTensor<E>,
    b: &CpuTensor<E>,
    f: impl Fn(E, E) -> E + Sync + Send,
) -> Result<CpuTensor<E>> {
    check_same_shape(op, a.shape(), b.shape())?;
    let (a, b) = (a.as_standard_layout(), b.as_standard_layout());
    Ok(standard(
        Zip::from(&a).and(&b).par_map_collect(|&x, &y| f(x, y)),
    ))
}

/// `y = a + b`, elementwise; equal shapes.
pub fn add<E: Element>(a: &CpuTensor<E>, b: &CpuTensor<E>) -> Result<CpuTensor<E>> {
    elementwise("add", a, b, |x, y| x + y)
}

/// `y = a - b`, elementwise; equal shapes.
pub fn sub<E: Element>(a: &CpuTensor<E>, b: &CpuTensor<E>) -> Result<CpuTensor<E>> {
    elementwise("sub", a, b, |x, y| x - y)
}

/// `y = factor x`, elementwise.
pub fn scale<E: Element>(x: &CpuTensor<E>, factor: E) -> Result<CpuTensor<E>> {
    let x = x.as_standard_layout();
    Ok(standard(Zip::from(&x).par_map_collect(|&v| factor * v)))
}

/// `y = round(x 2^k) 2^-k`: `x` rounded to the nearest multiple of `2^-k` (halves away from
/// zero; zero is always `+0.0`), the fixed-point grid of the exact reversible coupling. Scaling by a power of two is
/// exact, so the only rounding is the one intended. `k` must satisfy `|k| <= 60`.
pub fn quantize<E: Element>(x: &CpuTensor<E>, k: i32) -> Result<CpuTensor<E>> {
    check_quantize_step(k)?;
    let up = E::cast(2f64.powi(k));
    let down = E::cast(2f64.powi(-k));
    let x = x.as_standard_layout();
    // `+ 0` turns a `-0.0` (a small negative value rounded to zero) into `+0.0`, the zero that
    // sums and differences on the grid produce, so that the exact coupling's inverse returns
    // every bit, the sign of zero included.
    Ok(standard(
        Zip::from(&x).par_map_collect(|&v| (v * up).round() * down + E::zero()),
    ))
}

/// The fingerprint of [`crate::contract::fingerprint`]: `feed(shape_hash, sum_i mix64(bits(x[i])
/// ^ i C))` over the row-major index `i`, the wrapping sum taken over runs of elements in
/// parallel (any split gives the same value, the CUDA backend's included). Equal tensors (bit for
/// bit) have equal fingerprints; used to detect a reversible recompute whose spikes differ from
/// the forward's, not a defence against crafted collisions.
pub fn fingerprint<E: Element>(x: &CpuTensor<E>) -> u64 {
    const RUN: usize = 1 << 14;
    let values = row_major(x);
    let sum = values
        .par_chunks(RUN)
        .enumerate()
        .map(|(run, values)| {
            simd::widest(ElementSum {
                values,
                first: (run * RUN) as u64,
            })
        })
        .reduce(|| 0, u64::wrapping_add);
    fingerprint::from_sum(x.shape(), sum)
}

/// The wrapping sum of the fingerprint terms of `values`, whose first has row-major index
/// `first`; run through [`simd::widest`] for AVX-512DQ's 64-bit multiplies (the same value:
/// integer arithmetic).
struct ElementSum<'a, E> {
    values: &'a [E],
    first: u64,
}

impl<E: Element> Kernel for ElementSum<'_, E> {
    type Output = u64;

    #[inline(always)]
    fn run(self) -> u64 {
        self.values
            .iter()
            .zip(self.first..)
            .fold(0, |sum, (v, index)| {
                sum.wrapping_add(fingerprint::element_term(v.bits(), index))
            })
    }
}

/// The number of NaN and infinite elements over all of `tensors`, each counted in parallel.
pub fn count_non_finite<E: Element>(tensors: &[&CpuTensor<E>]) -> u64 {
    tensors
        .iter()
        .map(|x| {
            Zip::from(*x).par_fold(
                || 0u64,
                |count, &v| count + u64::from(!v.widen().is_finite()),
                |a, b| a + b,
            )
        })
        .sum()
}

/// `(outer, dim, inner)`: the products of the axes before `axis`, its size, and the product of
/// the axes after it.
fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// `y[.., i, ..] = x[.., start + i, ..]` for `i < len` along `axis`; needs
/// `start + len <= x.shape[axis]` (the channel split of docs/reversible.md §3.1).
pub fn narrow<E: Element>(
    x: &CpuTensor<E>,
    axis: usize,
    start: usize,
    len: usize,
) -> Result<CpuTensor<E>> {
    const OP: &str = "narrow";
    let shape = narrowed_shape(x.shape(), axis, start, len)?;
    let (outer, dim, inner) = split_at_axis(x.shape(), axis);
    let data = row_major(x);
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let begin = (o * dim + start) * inner;
        out.extend_from_slice(&data[begin..begin + len * inner]);
    }
    tensor(OP, &shape, out)
}

/// `y = [parts[0], parts[1], ..]` along `axis`: part `p` fills
/// `y[.., o_p + i, ..] = parts[p][.., i, ..]` with `o_p` the sum of the earlier parts' sizes. At
/// least one part; all parts have the same shape except along `axis`. The backward is
/// [`narrow`] of each part.
pub fn concat<E: Element>(parts: &[&CpuTensor<E>], axis: usize) -> Result<CpuTensor<E>> {
    const OP: &str = "concat";
    let shapes: Vec<&[usize]> = parts.iter().map(|p| p.shape()).collect();
    let shape = concat_shape(&shapes, axis)?;
    let data: Vec<_> = parts.iter().map(|p| row_major(p)).collect();
    let (outer, _, inner) = split_at_axis(&shape, axis);
    let mut out = Vec::with_capacity(element_count(OP, &shape)?);
    for o in 0..outer {
        for (part, data) in parts.iter().zip(&data) {
            let block = part.shape()[axis] * inner;
            out.extend_from_slice(&data[o * block..(o + 1) * block]);
        }
    }
    tensor(OP, &shape, out)
}

/// `y[t] = x` for `t < times`: `[...] -> [times, ...]`, `times >= 1` (the direct encoding of
/// docs/architectures.md §4.1). The backward is [`sum_leading`].
pub fn repeat_leading<E: Element>(x: &CpuTensor<E>, times: usize) -> Result<CpuTensor<E>> {
    const OP: &str = "repeat_leading";
    let shape = repeated_shape(x.shape(), times)?;
    let data = row_major(x);
    let mut out = Vec::with_capacity(element_count(OP, &shape)?);
    for _ in 0..times {
        out.extend_from_slice(&data);
    }
    tensor(OP, &shape, out)
}

/// `y = x[0] + x[1] + .. + x[T-1]`, summed in that order: `[T, ...] -> [...]`, the backward of
/// [`repeat_leading`]. `T = 0` gives zeros.
pub fn sum_leading<E: Element>(x: &CpuTensor<E>) -> Result<CpuTensor<E>> {
    const OP: &str = "sum_leading";
    let (_, rest) = split_leading(x.shape())?;
    let data = row_major(x);
    let n = rest.iter().product::<usize>();
    let mut out = vec![E::zero(); n];
    if n > 0 {
        for (t, row) in data.chunks_exact(n).enumerate() {
            if t == 0 {
                out.copy_from_slice(row);
            } else {
                out.par_iter_mut()
                    .zip(row.par_iter())
                    .for_each(|(acc, &v)| *acc += v);
            }
        }
    }
    tensor(OP, rest, out)
}

/// `y[kept] = (sum over the listed axes of x) / R`, with `R` the product of the reduced sizes
/// (at least 1); the listed axes are removed (`mean_axes(x, &[2, 3])` on `[N, C, H, W]` is the
/// adaptive average pool to 1x1). Axes are distinct and in range, in any order. Each output sums
/// its `R` inputs sequentially in row-major order of the reduced axes (in increasing axis order),
/// starting from 0, then divides by `R`.
pub fn mean_axes<E: Element>(x: &CpuTensor<E>, axes: &[usize]) -> Result<CpuTensor<E>> {
    const OP: &str = "mean_axes";
    let MeanAxes {
        reduced: sorted,
        kept,
        count,
        output_shape: out_shape,
    } = MeanAxes::new(OP, x.shape(), axes)?;
    // Kept axes first, then the reduced ones: each output owns a contiguous block of `count`.
    let order: Vec<usize> = kept.iter().chain(&sorted).copied().collect();
    let permuted = x.view().permuted_axes(IxDyn(&order));
    let permuted = permuted.as_standard_layout();
    let data: Cow<'_, [E]> = match permuted.as_slice() {
        Some(data) => Cow::Borrowed(data),
        None => Cow::Owned(permuted.iter().copied().collect()),
    };
    let divisor = E::from_usize(count)
        .ok_or_else(|| OpError::shape(OP, format!("cannot divide by {count}")))?;
    let out: Vec<E> = data
        .par_chunks_exact(count)
        .map(|block| block.iter().fold(E::zero(), |acc, &v| acc + v) / divisor)
        .collect();
    tensor(OP, &out_shape, out)
}

/// The backward of [`mean_axes`]: `dx[i] = dy[kept(i)] / R`, i.e. `grad_y` divided by the
/// number `R` of reduced elements and broadcast along the reduced axes of `input_shape`.
/// `grad_y` must have `input_shape` without the listed axes.
pub fn mean_axes_backward<E: Element>(
    grad_y: &CpuTensor<E>,
    input_shape: &[usize],
    axes: &[usize],
) -> Result<CpuTensor<E>> {
    const OP: &str = "mean_axes_backward";
    let MeanAxes {
        reduced: sorted,
        count,
        ..
    } = MeanAxes::backward(grad_y.shape(), input_shape, axes)?;
    let divisor = E::from_usize(count)
        .ok_or_else(|| OpError::shape(OP, format!("cannot divide by {count}")))?;
    let scaled: Vec<E> = row_major(grad_y).iter().map(|&g| g / divisor).collect();
    // grad_y with the reduced axes as size-1 axes, broadcast to the input shape.
    let kept_shape: Vec<usize> = input_shape
        .iter()
        .enumerate()
        .map(|(a, &d)| if sorted.contains(&a) { 1 } else { d })
        .collect();
    let scaled = tensor(OP, &kept_shape, scaled)?;
    let broadcast = scaled.broadcast(IxDyn(input_shape)).ok_or_else(|| {
        OpError::shape(
            OP,
            format!("cannot broadcast {kept_shape:?} to {input_shape:?}"),
        )
    })?;
    Ok(broadcast.as_standard_layout().into_owned().into_shared())
}
