//! Tensor creation, copies and structural/elementwise ops on the GPU; twin of
//! `reference/src/ops/tensor.rs`, kernels in `gpu/kernels/tensor.cu`.
//!
//! The structural ops (permute, narrow, each part of a concat, repeat_leading and the broadcast
//! of mean_axes_backward) are one kernel, a copy along a [`Strided`] walk that the host builds
//! from the shapes. Every result equals the reference's bit for bit: the copies move bits, the
//! arithmetic rounds each operation once as the CPU does (no FMA contraction), and the sums add
//! in the reference's order; the fingerprint's wrapping integer sum is the same whatever its order.

use cudarc::driver::{CudaSlice, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};

use revsnn_reference::contract::fingerprint;
use revsnn_reference::contract::shapes::{
    MeanAxes, check_quantize_step, check_same_shape, concat_shape, element_count, narrowed_shape,
    permuted_shape, repeated_shape, split_leading,
};

use super::foreach::{TABLE_BYTES, chunk_launch, number_chunks, read_address, write_address};
use super::{GpuElement, THREADS, elementwise_launch, shape_error};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::kernels::TENSOR;
use crate::tensor::CudaTensor;
use crate::word::DeviceWord;

/// The most axes a [`Strided`] walk has after merging (`MAX_RANK` in tensor.cu).
const MAX_RANK: usize = 8;
/// `COPY_VEC` in tensor.cu: the elements a thread of `strided_copy` takes where the rows allow.
const COPY_VEC: usize = 4;

/// One axis of a walk: its size and the strides (in elements) of x and y along it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Axis {
    size: usize,
    x: usize,
    y: usize,
}

/// Drops the axes of size 1 and merges each axis into the one before it when both operands are
/// contiguous across the two (`outer.x = inner.x inner.size`, the same for y): the merged walk
/// visits the same offsets in the same order with fewer index divisions.
fn merge_axes(axes: &[Axis]) -> Vec<Axis> {
    let mut merged: Vec<Axis> = Vec::with_capacity(axes.len());
    for &axis in axes.iter().filter(|a| a.size != 1) {
        match merged.last_mut() {
            Some(last) if last.x == axis.x * axis.size && last.y == axis.y * axis.size => {
                *last = Axis {
                    size: last.size * axis.size,
                    ..axis
                };
            }
            _ => merged.push(axis),
        }
    }
    merged
}

/// A walk over an iteration shape in row-major order that reads x and writes y at
/// `offset + sum_d index[d] stride[d]`; `struct Strided` of tensor.cu, passed by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Strided {
    rank: i64,
    sizes: [i64; MAX_RANK],
    x_strides: [i64; MAX_RANK],
    y_strides: [i64; MAX_RANK],
    x_offset: i64,
    y_offset: i64,
}

// SAFETY: plain integers in `#[repr(C)]` order, the layout of `struct Strided` in tensor.cu
// (27 `long long`s, no padding).
unsafe impl DeviceRepr for Strided {}

impl Strided {
    /// The walk over `axes` (outermost first) after [`merge_axes`]; an error when more than
    /// [`MAX_RANK`] axes remain.
    fn new(
        op: &'static str,
        axes: &[Axis],
        x_offset: usize,
        y_offset: usize,
    ) -> Result<Strided, GpuError> {
        let merged = merge_axes(axes);
        if merged.len() > MAX_RANK {
            return Err(shape_error(
                op,
                format!(
                    "the walk needs {} axes after merging contiguous ones; the kernels take at most {MAX_RANK}",
                    merged.len()
                ),
            ));
        }
        let mut walk = Strided {
            rank: merged.len() as i64,
            sizes: [1; MAX_RANK],
            x_strides: [0; MAX_RANK],
            y_strides: [0; MAX_RANK],
            x_offset: x_offset as i64,
            y_offset: y_offset as i64,
        };
        for (d, axis) in merged.iter().enumerate() {
            walk.sizes[d] = axis.size as i64;
            walk.x_strides[d] = axis.x as i64;
            walk.y_strides[d] = axis.y as i64;
        }
        Ok(walk)
    }

    fn axes(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (0..self.rank as usize).map(|d| {
            (
                self.sizes[d] as usize,
                self.x_strides[d] as usize,
                self.y_strides[d] as usize,
            )
        })
    }

    /// The number of elements walked.
    fn elements(&self) -> usize {
        self.axes().map(|(size, _, _)| size).product()
    }

    /// The elements per thread of `strided_copy` (`width` in tensor.cu): [`COPY_VEC`] when the
    /// innermost axis is contiguous in both operands and its size, both offsets and every other
    /// stride are multiples of it (a thread's elements are then one aligned piece of a row), else 1.
    fn copy_width(&self) -> usize {
        let Some(inner) = (self.rank as usize).checked_sub(1) else {
            return 1;
        };
        let multiple = |v: i64| v % COPY_VEC as i64 == 0;
        let rows =
            self.x_strides[inner] == 1 && self.y_strides[inner] == 1 && multiple(self.sizes[inner]);
        let aligned = multiple(self.x_offset)
            && multiple(self.y_offset)
            && (0..inner).all(|d| multiple(self.x_strides[d]) && multiple(self.y_strides[d]));
        if rows && aligned { COPY_VEC } else { 1 }
    }

    /// Checks that a non-empty walk stays inside buffers of `x_len` and `y_len` elements, so a
    /// wrong layout is an error rather than an out-of-bounds access.
    fn check_bounds(&self, op: &'static str, x_len: usize, y_len: usize) -> Result<(), GpuError> {
        let last = |offset: i64, pick: fn((usize, usize, usize)) -> usize| {
            offset as usize
                + self
                    .axes()
                    .map(|axis| (axis.0 - 1) * pick(axis))
                    .sum::<usize>()
        };
        let (x_last, y_last) = (last(self.x_offset, |a| a.1), last(self.y_offset, |a| a.2));
        if x_last >= x_len || y_last >= y_len {
            return Err(shape_error(
                op,
                format!(
                    "internal: the walk reaches x[{x_last}] and y[{y_last}] of {x_len} and {y_len} elements"
                ),
            ));
        }
        Ok(())
    }
}

/// The row-major strides of `shape`.
fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for a in (1..shape.len()).rev() {
        strides[a - 1] = strides[a] * shape[a];
    }
    strides
}

/// A buffer of `len` elements that the caller's kernels write entirely before anything reads it.
///
/// # Safety
/// As [`GpuDevice::alloc`]: every element is written before any is read.
unsafe fn output<E: GpuElement>(
    device: &GpuDevice,
    len: usize,
) -> Result<crate::memory::DeviceBuffer<E>, GpuError> {
    // SAFETY: guaranteed by the caller.
    unsafe { device.alloc::<E>(len) }
}

/// Queues `strided_copy_<E>` (or `strided_divide_<E>` when `divisor` is given): for every
/// element of `walk`, `y[walk.y] = x[walk.x]` (divided by `divisor`). Nothing for an empty walk.
fn launch_strided<E: GpuElement>(
    device: &GpuDevice,
    op: &'static str,
    x: &CudaSlice<E>,
    y: &mut CudaSlice<E>,
    walk: &Strided,
    divisor: Option<E>,
) -> Result<(), GpuError> {
    let elements = walk.elements();
    if elements == 0 {
        return Ok(());
    }
    walk.check_bounds(op, x.len(), y.len())?;
    let kernel = match divisor {
        Some(_) => "strided_divide",
        None => "strided_copy",
    };
    let function = device.function(&TENSOR, &format!("{kernel}_{}", E::SUFFIX))?;
    let width = match divisor {
        Some(_) => 1,
        None => walk.copy_width(),
    };
    let (n, width_arg) = (elements as i64, width as i64);
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(x).arg(y).arg(walk).arg(&n);
    match &divisor {
        Some(divisor) => launch.arg(divisor),
        None => launch.arg(&width_arg),
    };
    // SAFETY: the arguments match `strided_copy_<E>(const E*, E*, Strided, long long n, long
    // long width)` and `strided_divide_<E>(const E*, E*, Strided, long long n, E divisor)`;
    // `check_bounds` keeps every access in its buffer, and `copy_width` divides the rows.
    unsafe { launch.launch(elementwise_launch(elements / width)) }
        .map_err(GpuError::driver("launching a strided copy"))?;
    Ok(())
}

/// A device copy of `data` under `shape`.
pub fn from_vec<E: GpuElement>(
    device: &GpuDevice,
    shape: &[usize],
    data: &[E],
) -> Result<CudaTensor<E>, GpuError> {
    CudaTensor::new(device.upload(data)?, shape)
}

/// The elements of `x` in row-major order, on the host (waits for the stream).
pub fn to_vec<E: GpuElement>(device: &GpuDevice, x: &CudaTensor<E>) -> Result<Vec<E>, GpuError> {
    device.download(x.buffer())
}

/// A tensor of zeros.
pub fn zeros<E: GpuElement>(
    device: &GpuDevice,
    shape: &[usize],
) -> Result<CudaTensor<E>, GpuError> {
    CudaTensor::new(device.alloc_zeros(shape.iter().product())?, shape)
}

/// `y = x` under `shape`, the same row-major elements (no copy: the buffer is shared).
pub fn reshape<E: GpuElement>(
    x: &CudaTensor<E>,
    shape: &[usize],
) -> Result<CudaTensor<E>, GpuError> {
    x.reshaped(shape)
}

/// The output shape and walk of `permute(x, axes)`.
fn permute_walk(shape: &[usize], axes: &[usize]) -> Result<(Vec<usize>, Strided), GpuError> {
    let out_shape = permuted_shape(shape, axes)?;
    let (x_strides, y_strides) = (row_major_strides(shape), row_major_strides(&out_shape));
    let walk: Vec<Axis> = axes
        .iter()
        .enumerate()
        .map(|(i, &a)| Axis {
            size: shape[a],
            x: x_strides[a],
            y: y_strides[i],
        })
        .collect();
    Ok((out_shape, Strided::new("permute", &walk, 0, 0)?))
}

/// `y[i_0, .., i_{d-1}] = x[j]` with `j[axes[a]] = i_a`, materialised row-major; `axes` must be
/// a permutation of `0..d` (one strided copy; at most 8 axes after merging contiguous ones).
pub fn permute<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    axes: &[usize],
) -> Result<CudaTensor<E>, GpuError> {
    let (out_shape, walk) = permute_walk(x.shape(), axes)?;
    // SAFETY: the walk covers every output element once.
    let mut y = unsafe { output::<E>(device, x.len()) }?;
    launch_strided(device, "permute", x.slice(), y.slice_mut(), &walk, None)?;
    CudaTensor::new(y, &out_shape)
}

/// `kernel(a, b, y, n)` over two operands of equal shapes.
fn binary<E: GpuElement>(
    device: &GpuDevice,
    op: &'static str,
    a: &CudaTensor<E>,
    b: &CudaTensor<E>,
) -> Result<CudaTensor<E>, GpuError> {
    check_same_shape(op, a.shape(), b.shape())?;
    // SAFETY: the kernel writes every element.
    let mut y = unsafe { output::<E>(device, a.len()) }?;
    if !a.is_empty() {
        let function = device.function(&TENSOR, &format!("{op}_{}", E::SUFFIX))?;
        let n = a.len() as i64;
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(a.slice())
            .arg(b.slice())
            .arg(y.slice_mut())
            .arg(&n);
        // SAFETY: the arguments match `<op>_<E>(const E*, const E*, E*, long long)`; the three
        // buffers hold n elements.
        unsafe { launch.launch(elementwise_launch(a.len())) }
            .map_err(GpuError::driver("launching an elementwise kernel"))?;
    }
    CudaTensor::new(y, a.shape())
}

/// `y = a + b`, elementwise; equal shapes.
pub fn add<E: GpuElement>(
    device: &GpuDevice,
    a: &CudaTensor<E>,
    b: &CudaTensor<E>,
) -> Result<CudaTensor<E>, GpuError> {
    binary(device, "add", a, b)
}

/// `y = a - b`, elementwise; equal shapes.
pub fn sub<E: GpuElement>(
    device: &GpuDevice,
    a: &CudaTensor<E>,
    b: &CudaTensor<E>,
) -> Result<CudaTensor<E>, GpuError> {
    binary(device, "sub", a, b)
}

/// [`add`] with `b` handed over: written over `b`'s buffer when no other tensor shares it
/// (`add_in_place_<E>`, the same bits), else into a new one.
pub fn add_reusing<E: GpuElement>(
    device: &GpuDevice,
    a: &CudaTensor<E>,
    b: CudaTensor<E>,
) -> Result<CudaTensor<E>, GpuError> {
    binary_reusing(device, "add", a, b)
}

/// [`sub`] with `b` handed over, as [`add_reusing`] (`sub_in_place_<E>`).
pub fn sub_reusing<E: GpuElement>(
    device: &GpuDevice,
    a: &CudaTensor<E>,
    b: CudaTensor<E>,
) -> Result<CudaTensor<E>, GpuError> {
    binary_reusing(device, "sub", a, b)
}

/// `op(a, b)` written over `b`'s buffer by `<op>_in_place_<E>` when `b` holds it alone, else
/// [`binary`].
fn binary_reusing<E: GpuElement>(
    device: &GpuDevice,
    op: &'static str,
    a: &CudaTensor<E>,
    b: CudaTensor<E>,
) -> Result<CudaTensor<E>, GpuError> {
    check_same_shape(op, a.shape(), b.shape())?;
    let shape = b.shape().to_vec();
    let mut y = match b.into_unshared_buffer() {
        Ok(buffer) => buffer,
        Err(b) => return binary(device, op, a, &b),
    };
    if !a.is_empty() {
        let function = device.function(&TENSOR, &format!("{op}_in_place_{}", E::SUFFIX))?;
        let n = a.len() as i64;
        let mut launch = device.stream().launch_builder(&function);
        launch.arg(a.slice()).arg(y.slice_mut()).arg(&n);
        // SAFETY: the arguments match `<op>_in_place_<E>(const E*, E*, long long)`; both
        // buffers hold n elements, and `a`'s is not `y`'s (`y` had no other owner).
        unsafe { launch.launch(elementwise_launch(a.len())) }
            .map_err(GpuError::driver("launching an elementwise kernel"))?;
    }
    CudaTensor::new(y, &shape)
}

/// `y = factor x`, elementwise.
pub fn scale<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    factor: E,
) -> Result<CudaTensor<E>, GpuError> {
    // SAFETY: the kernel writes every element.
    let mut y = unsafe { output::<E>(device, x.len()) }?;
    if !x.is_empty() {
        let function = device.function(&TENSOR, &format!("scale_{}", E::SUFFIX))?;
        let n = x.len() as i64;
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(x.slice())
            .arg(y.slice_mut())
            .arg(&n)
            .arg(&factor);
        // SAFETY: the arguments match `scale_<E>(const E*, E*, long long, E)`; both buffers
        // hold n elements.
        unsafe { launch.launch(elementwise_launch(x.len())) }
            .map_err(GpuError::driver("launching scale"))?;
    }
    CudaTensor::new(y, x.shape())
}

/// The output shape and walk of `narrow(x, axis, start, len)`.
fn narrow_walk(
    shape: &[usize],
    axis: usize,
    start: usize,
    len: usize,
) -> Result<(Vec<usize>, Strided), GpuError> {
    const OP: &str = "narrow";
    let out_shape = narrowed_shape(shape, axis, start, len)?;
    let (x_strides, y_strides) = (row_major_strides(shape), row_major_strides(&out_shape));
    let walk: Vec<Axis> = (0..shape.len())
        .map(|a| Axis {
            size: out_shape[a],
            x: x_strides[a],
            y: y_strides[a],
        })
        .collect();
    let walk = Strided::new(OP, &walk, start * x_strides[axis], 0)?;
    Ok((out_shape, walk))
}

/// `y[.., i, ..] = x[.., start + i, ..]` for `i < len` along `axis`; needs
/// `start + len <= x.shape[axis]` (the channel split of docs/reversible.md §3.1). One strided copy.
pub fn narrow<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    axis: usize,
    start: usize,
    len: usize,
) -> Result<CudaTensor<E>, GpuError> {
    let (out_shape, walk) = narrow_walk(x.shape(), axis, start, len)?;
    // SAFETY: the walk covers every output element once.
    let mut y = unsafe { output::<E>(device, element_count("narrow", &out_shape)?) }?;
    launch_strided(device, "narrow", x.slice(), y.slice_mut(), &walk, None)?;
    CudaTensor::new(y, &out_shape)
}

/// The output shape and one walk per part of `concat(parts, axis)`.
fn concat_walks(shapes: &[&[usize]], axis: usize) -> Result<(Vec<usize>, Vec<Strided>), GpuError> {
    const OP: &str = "concat";
    let out_shape = concat_shape(shapes, axis)?;
    let y_strides = row_major_strides(&out_shape);
    let mut start = 0;
    let mut walks = Vec::with_capacity(shapes.len());
    for part in shapes {
        let x_strides = row_major_strides(part);
        let walk: Vec<Axis> = (0..part.len())
            .map(|a| Axis {
                size: part[a],
                x: x_strides[a],
                y: y_strides[a],
            })
            .collect();
        walks.push(Strided::new(OP, &walk, 0, start * y_strides[axis])?);
        start += part[axis];
    }
    Ok((out_shape, walks))
}

/// `y = [parts[0], parts[1], ..]` along `axis`: part `p` fills `y[.., o_p + i, ..]` with `o_p`
/// the sum of the earlier parts' sizes. At least one part; all parts have the same shape except
/// along `axis`. One strided copy per non-empty part.
pub fn concat<E: GpuElement>(
    device: &GpuDevice,
    parts: &[&CudaTensor<E>],
    axis: usize,
) -> Result<CudaTensor<E>, GpuError> {
    let shapes: Vec<&[usize]> = parts.iter().map(|p| p.shape()).collect();
    let (out_shape, walks) = concat_walks(&shapes, axis)?;
    // SAFETY: the parts' walks together cover every output element once.
    let mut y = unsafe { output::<E>(device, element_count("concat", &out_shape)?) }?;
    for (part, walk) in parts.iter().zip(&walks) {
        launch_strided(device, "concat", part.slice(), y.slice_mut(), walk, None)?;
    }
    CudaTensor::new(y, &out_shape)
}

/// The output shape and walk of `repeat_leading(x, times)`.
fn repeat_walk(shape: &[usize], times: usize) -> Result<(Vec<usize>, Strided), GpuError> {
    const OP: &str = "repeat_leading";
    let out_shape = repeated_shape(shape, times)?;
    let n = element_count(OP, shape)?;
    let walk = [
        Axis {
            size: times,
            x: 0,
            y: n,
        },
        Axis {
            size: n,
            x: 1,
            y: 1,
        },
    ];
    Ok((out_shape, Strided::new("permute", &walk, 0, 0)?))
}

/// `y[t] = x` for `t < times`: `[...] -> [times, ...]`, `times >= 1` (the direct encoding of
/// docs/architectures.md §4.1). One strided copy reading x with stride 0 along the new axis.
pub fn repeat_leading<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    times: usize,
) -> Result<CudaTensor<E>, GpuError> {
    let (out_shape, walk) = repeat_walk(x.shape(), times)?;
    // SAFETY: the walk covers every output element once.
    let mut y = unsafe { output::<E>(device, element_count("repeat_leading", &out_shape)?) }?;
    launch_strided(
        device,
        "repeat_leading",
        x.slice(),
        y.slice_mut(),
        &walk,
        None,
    )?;
    CudaTensor::new(y, &out_shape)
}

/// `y = x[0] + x[1] + .. + x[T-1]`, summed in that order (one thread per output element):
/// `[T, ...] -> [...]`, the backward of [`repeat_leading`]. `T = 0` gives zeros.
pub fn sum_leading<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
) -> Result<CudaTensor<E>, GpuError> {
    const OP: &str = "sum_leading";
    let (steps, rest) = split_leading(x.shape())?;
    let n = element_count(OP, rest)?;
    if steps == 0 || n == 0 {
        return zeros(device, rest);
    }
    // SAFETY: the kernel writes every element.
    let mut y = unsafe { output::<E>(device, n) }?;
    let function = device.function(&TENSOR, &format!("sum_leading_{}", E::SUFFIX))?;
    let (n_arg, steps_arg) = (n as i64, steps as i64);
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(x.slice())
        .arg(y.slice_mut())
        .arg(&n_arg)
        .arg(&steps_arg);
    // SAFETY: the arguments match `sum_leading_<E>(const E*, E*, long long n, long long steps)`;
    // x holds steps * n elements and y n.
    unsafe { launch.launch(elementwise_launch(n)) }
        .map_err(GpuError::driver("launching sum_leading"))?;
    CudaTensor::new(y, rest)
}

/// `y = round(x 2^k) 2^-k`: `x` rounded to the nearest multiple of `2^-k` (halves away from zero,
/// as Rust's `round` and CUDA's; zero is always `+0.0`), the fixed-point grid of the exact
/// reversible coupling (docs/reversible.md §3). `k` must satisfy `|k| <= 60`.
pub fn quantize<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    k: i32,
) -> Result<CudaTensor<E>, GpuError> {
    check_quantize_step(k)?;
    let up = E::cast(2f64.powi(k));
    let down = E::cast(2f64.powi(-k));
    // SAFETY: the kernel writes every element.
    let mut y = unsafe { output::<E>(device, x.len()) }?;
    if !x.is_empty() {
        let function = device.function(&TENSOR, &format!("quantize_{}", E::SUFFIX))?;
        let n = x.len() as i64;
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(x.slice())
            .arg(y.slice_mut())
            .arg(&n)
            .arg(&up)
            .arg(&down);
        // SAFETY: the arguments match `quantize_<E>(const E*, E*, long long, E up, E down)`;
        // both buffers hold n elements.
        unsafe { launch.launch(elementwise_launch(x.len())) }
            .map_err(GpuError::driver("launching quantize"))?;
    }
    CudaTensor::new(y, x.shape())
}

/// The fingerprint of `revsnn_reference::contract::fingerprint`, the reference's value: the
/// element terms `mix64(bits(x[i]) ^ i C)` summed on the device with integer atomics (a
/// wrapping sum, so the order of the atomics does not matter), then fed after the shape's hash.
/// Used, like the reference's, to detect a reversible recompute whose spikes differ from the
/// forward's; waits for the stream ([`fold_fingerprint`] does not).
pub fn fingerprint<E: GpuElement>(device: &GpuDevice, x: &CudaTensor<E>) -> Result<u64, GpuError> {
    let mut sum = device.alloc_zeros::<u64>(1)?;
    add_element_sum(device, x, &mut sum.slice_mut().slice_mut(..))?;
    let sum = device.download(&sum)?.first().copied().unwrap_or(0);
    Ok(fingerprint::from_sum(x.shape(), sum))
}

/// `word = word.rotate_left(5) ^ fingerprint(x)` on the device: the element sum of
/// [`fingerprint()`] added into one of the word's slots, which the word folds later
/// ([`DeviceWord`]); no wait, no launch besides the sum's.
pub fn fold_fingerprint<E: GpuElement>(
    device: &GpuDevice,
    word: &mut DeviceWord,
    x: &CudaTensor<E>,
) -> Result<(), GpuError> {
    let mut slot = word.sum_slot(device, x.shape())?;
    add_element_sum(device, x, &mut slot)
}

/// `*sum += ` the fingerprint's element terms of `x` (nothing when `x` is empty).
fn add_element_sum<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    sum: &mut CudaViewMut<'_, u64>,
) -> Result<(), GpuError> {
    if x.is_empty() {
        return Ok(());
    }
    let function = device.function(&TENSOR, &format!("fingerprint_{}", E::SUFFIX))?;
    let n = x.len() as i64;
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(x.slice()).arg(sum).arg(&n);
    let config = reduction_launch(x.len());
    // SAFETY: the arguments match `fingerprint_<E>(const E*, unsigned long long*, long long)`;
    // x holds n elements and sum one; the block size is a multiple of the warp size, as the
    // kernel's full-mask shuffles need.
    unsafe { launch.launch(config) }.map_err(GpuError::driver("launching fingerprint"))?;
    Ok(())
}

/// The number of NaN and infinite elements over all of `tensors`: one `count_non_finite_<E>`
/// launch per [`COUNT_TABLE_LEN`] tensors (`super::foreach`), all adding into one device counter
/// (integer atomics, so the count does not depend on the launch), which is read back once; waits
/// for the stream.
pub fn count_non_finite<E: GpuElement>(
    device: &GpuDevice,
    tensors: &[&CudaTensor<E>],
) -> Result<u64, GpuError> {
    let mut count = device.alloc_zeros::<u64>(1)?;
    let function = device.function(&TENSOR, &format!("count_non_finite_{}", E::SUFFIX))?;
    let stream = device.stream();
    for tensors in tensors.chunks(COUNT_TABLE_LEN) {
        let mut guards = Vec::new();
        let mut table = CountTable {
            x: [0; COUNT_TABLE_LEN],
            len: [0; COUNT_TABLE_LEN],
            first_block: [0; COUNT_TABLE_LEN + 1],
        };
        for (i, x) in tensors.iter().enumerate() {
            table.x[i] = read_address(x.slice(), stream, &mut guards);
            table.len[i] = x.len() as i64;
        }
        let lens = tensors.iter().map(|x| x.len());
        let blocks = number_chunks("count_non_finite", lens, &mut table.first_block)?;
        if blocks > 0 {
            let counter = write_address(count.slice_mut(), stream, &mut guards);
            let mut launch = stream.launch_builder(&function);
            launch.arg(&table).arg(&counter);
            // SAFETY: the arguments match `count_non_finite_<E>(CountTable<E> table, unsigned
            // long long* count)`; every address of the table's first `tensors.len()` entries
            // holds `len` elements, `counter` one, and the guards keep them live for the launch;
            // the blocks are the chunks the table numbers, each a multiple of the warp size, as
            // the kernel's full-mask shuffles need.
            unsafe { launch.launch(chunk_launch(blocks)) }
                .map_err(GpuError::driver("launching count_non_finite"))?;
        }
    }
    Ok(device.download(&count)?[0])
}

/// Tensors per `count_non_finite` launch: `COUNT_TABLE_LEN` of tensor.cu.
const COUNT_TABLE_LEN: usize = 128;

/// `struct CountTable<E>` of tensor.cu: each tensor's device address and length, and the
/// numbering of their chunks (`super::foreach`).
#[repr(C)]
#[derive(Clone, Copy)]
struct CountTable {
    x: [u64; COUNT_TABLE_LEN],
    len: [i64; COUNT_TABLE_LEN],
    first_block: [i32; COUNT_TABLE_LEN + 1],
}

// SAFETY: `#[repr(C)]` plain integers in the order and types of `struct CountTable<E>` in
// tensor.cu (the address as a 64-bit integer, then `long long`s, then `int`s).
unsafe impl DeviceRepr for CountTable {}

const _: () = assert!(size_of::<CountTable>() <= TABLE_BYTES);

/// The launch of the whole-tensor fingerprint over `len` elements: full blocks of [`THREADS`], at
/// most 1024 of them, striding over the rest.
fn reduction_launch(len: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (len.div_ceil(THREADS as usize).clamp(1, 1024) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The launch of `mean_axes_<E>`: `kept` walks the outputs (x side: the offset of each output's
/// first reduced element; y side: the output's index), `rest` the reduced elements but the
/// innermost merged axis, which `inner_len` and `inner_stride` describe.
#[derive(Debug)]
struct MeanWalks {
    out_shape: Vec<usize>,
    kept: Strided,
    rest: Strided,
    rest_count: usize,
    inner_len: usize,
    inner_stride: usize,
    /// `R`, the number of reduced elements of each output.
    count: usize,
}

fn mean_walks(shape: &[usize], axes: &[usize]) -> Result<MeanWalks, GpuError> {
    const OP: &str = "mean_axes";
    let MeanAxes {
        reduced: sorted,
        kept,
        count,
        output_shape: out_shape,
    } = MeanAxes::new(OP, shape, axes)?;
    let x_strides = row_major_strides(shape);
    let (y_strides, block_strides) = (
        row_major_strides(&out_shape),
        row_major_strides(&sorted.iter().map(|&a| shape[a]).collect::<Vec<_>>()),
    );
    let kept_walk: Vec<Axis> = kept
        .iter()
        .enumerate()
        .map(|(i, &a)| Axis {
            size: shape[a],
            x: x_strides[a],
            y: y_strides[i],
        })
        .collect();
    // The reduced elements in row-major order of the reduced axes (increasing axis order).
    let reduced_walk: Vec<Axis> = sorted
        .iter()
        .enumerate()
        .map(|(j, &a)| Axis {
            size: shape[a],
            x: x_strides[a],
            y: block_strides[j],
        })
        .collect();
    let mut reduced = merge_axes(&reduced_walk);
    let (inner_len, inner_stride) = reduced.pop().map_or((1, 0), |inner| (inner.size, inner.x));
    Ok(MeanWalks {
        kept: Strided::new(OP, &kept_walk, 0, 0)?,
        rest: Strided::new(OP, &reduced, 0, 0)?,
        rest_count: count / inner_len,
        inner_len,
        inner_stride,
        count,
        out_shape,
    })
}

/// `y[kept] = (sum over the listed axes of x) / R`, with `R` the product of the reduced sizes
/// (at least 1); the listed axes are removed (`mean_axes(x, &[2, 3])` on `[N, C, H, W]` is the
/// adaptive average pool to 1x1). Axes are distinct and in range, in any order. One thread per
/// output sums its `R` inputs sequentially in row-major order of the reduced axes (in increasing
/// axis order), starting from 0, then divides by `R`: the reference's order, so its bits.
pub fn mean_axes<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    axes: &[usize],
) -> Result<CudaTensor<E>, GpuError> {
    const OP: &str = "mean_axes";
    let walks = mean_walks(x.shape(), axes)?;
    let outputs = element_count(OP, &walks.out_shape)?;
    let divisor = E::from_usize(walks.count)
        .ok_or_else(|| shape_error(OP, format!("cannot divide by {}", walks.count)))?;
    // SAFETY: the kernel writes every output.
    let mut y = unsafe { output::<E>(device, outputs) }?;
    if outputs > 0 {
        // The last element read is the last output's last reduced one.
        let x_last = walks.kept.x_offset as usize
            + walks
                .kept
                .axes()
                .chain(walks.rest.axes())
                .map(|(size, x, _)| (size - 1) * x)
                .sum::<usize>()
            + (walks.inner_len - 1) * walks.inner_stride;
        if x_last >= x.len() {
            return Err(shape_error(
                OP,
                format!("internal: the reduction reaches x[{x_last}] of {}", x.len()),
            ));
        }
        let function = device.function(&TENSOR, &format!("mean_axes_{}", E::SUFFIX))?;
        let args = [
            outputs as i64,
            walks.rest_count as i64,
            walks.inner_len as i64,
            walks.inner_stride as i64,
        ];
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(x.slice())
            .arg(y.slice_mut())
            .arg(&walks.kept)
            .arg(&walks.rest)
            .arg(&args[0])
            .arg(&args[1])
            .arg(&args[2])
            .arg(&args[3])
            .arg(&divisor);
        // SAFETY: the arguments match `mean_axes_<E>(const E*, E*, Strided kept, Strided rest,
        // long long outputs, long long rest_count, long long inner_len, long long inner_stride,
        // E divisor)`; y holds `outputs` elements and every read is checked above.
        unsafe { launch.launch(elementwise_launch(outputs)) }
            .map_err(GpuError::driver("launching mean_axes"))?;
    }
    CudaTensor::new(y, &walks.out_shape)
}

/// The walk of `mean_axes_backward` (reads `grad_y` with stride 0 along the reduced axes, writes
/// `dx` row-major) and `R`.
fn mean_backward_walk(
    grad_shape: &[usize],
    input_shape: &[usize],
    axes: &[usize],
) -> Result<(Strided, usize), GpuError> {
    const OP: &str = "mean_axes_backward";
    let MeanAxes {
        kept,
        count,
        output_shape: out_shape,
        ..
    } = MeanAxes::backward(grad_shape, input_shape, axes)?;
    let (grad_strides, x_strides) = (
        row_major_strides(&out_shape),
        row_major_strides(input_shape),
    );
    let walk: Vec<Axis> = (0..input_shape.len())
        .map(|a| Axis {
            size: input_shape[a],
            x: kept
                .iter()
                .position(|&k| k == a)
                .map_or(0, |i| grad_strides[i]),
            y: x_strides[a],
        })
        .collect();
    Ok((Strided::new(OP, &walk, 0, 0)?, count))
}

/// The backward of [`mean_axes`]: `dx[i] = dy[kept(i)] / R`, `grad_y` divided by the number `R`
/// of reduced elements and broadcast along the reduced axes of `input_shape` (one strided
/// divide). `grad_y` must have `input_shape` without the listed axes.
pub fn mean_axes_backward<E: GpuElement>(
    device: &GpuDevice,
    grad_y: &CudaTensor<E>,
    input_shape: &[usize],
    axes: &[usize],
) -> Result<CudaTensor<E>, GpuError> {
    const OP: &str = "mean_axes_backward";
    let (walk, count) = mean_backward_walk(grad_y.shape(), input_shape, axes)?;
    let divisor =
        E::from_usize(count).ok_or_else(|| shape_error(OP, format!("cannot divide by {count}")))?;
    // SAFETY: the walk covers every element of dx once.
    let mut grad_x = unsafe { output::<E>(device, element_count(OP, input_shape)?) }?;
    launch_strided(
        device,
        OP,
        grad_y.slice(),
        grad_x.slice_mut(),
        &walk,
        Some(divisor),
    )?;
    CudaTensor::new(grad_x, input_shape)
}

#[cfg(test)]
mod tests {
    //! The walks, replayed on the host exactly as tensor.cu's kernels walk them, against the
    //! reference's ops (no GPU needed).

    use revsnn_reference::prelude::*;
    use revsnn_reference::testing::SplitMix64;
    use revsnn_reference::{Cpu, CpuTensor};

    use super::*;

    /// `strided_offsets` of tensor.cu.
    fn offsets(walk: &Strided, mut i: i64) -> (usize, usize) {
        let (mut x, mut y) = (walk.x_offset, walk.y_offset);
        for d in (0..walk.rank as usize).rev() {
            let mut c = i;
            if d > 0 {
                c = i % walk.sizes[d];
                i /= walk.sizes[d];
            }
            x += c * walk.x_strides[d];
            y += c * walk.y_strides[d];
        }
        (x as usize, y as usize)
    }

    /// `strided_copy` (or `strided_divide`) of tensor.cu, with the host's bounds check.
    fn replay(walk: &Strided, x: &[f64], y: &mut [f64], divisor: Option<f64>) {
        if walk.elements() == 0 {
            return;
        }
        walk.check_bounds("test", x.len(), y.len()).unwrap();
        for i in 0..walk.elements() as i64 {
            let (xo, yo) = offsets(walk, i);
            y[yo] = divisor.map_or(x[xo], |d| x[xo] / d);
        }
    }

    /// `mean_axes` of tensor.cu.
    fn replay_mean(walks: &MeanWalks, x: &[f64]) -> Vec<f64> {
        let outputs: usize = walks.out_shape.iter().product();
        (0..outputs as i64)
            .map(|o| {
                let (base, _) = offsets(&walks.kept, o);
                let mut acc = 0.0;
                for r in 0..walks.rest_count as i64 {
                    let (outer, _) = offsets(&walks.rest, r);
                    for j in 0..walks.inner_len {
                        acc += x[base + outer + j * walks.inner_stride];
                    }
                }
                acc / walks.count as f64
            })
            .collect()
    }

    fn random(shape: &[usize], seed: u64) -> (CpuTensor<f64>, Vec<f64>) {
        let data = SplitMix64::new(seed).normal_vec(shape.iter().product(), 1.0);
        let tensor = Cpu::<f64>::new()
            .tensor_from_vec(shape, data.clone())
            .unwrap();
        (tensor, data)
    }

    fn values(x: &CpuTensor<f64>) -> Vec<f64> {
        Cpu::<f64>::new().to_vec(x).unwrap()
    }

    #[test]
    fn merging_keeps_the_walk_and_drops_unit_axes() {
        // Contiguous in x and y across every axis: one axis.
        let axes = [
            Axis {
                size: 2,
                x: 12,
                y: 12,
            },
            Axis {
                size: 1,
                x: 99,
                y: 99,
            },
            Axis {
                size: 3,
                x: 4,
                y: 4,
            },
            Axis {
                size: 4,
                x: 1,
                y: 1,
            },
        ];
        assert_eq!(
            merge_axes(&axes),
            vec![Axis {
                size: 24,
                x: 1,
                y: 1
            }]
        );
        // x has a gap after its first axis (a narrow): the inner two merge only.
        let narrowed = [
            Axis {
                size: 2,
                x: 24,
                y: 12,
            },
            Axis {
                size: 3,
                x: 4,
                y: 4,
            },
            Axis {
                size: 4,
                x: 1,
                y: 1,
            },
        ];
        assert_eq!(
            merge_axes(&narrowed),
            vec![
                narrowed[0],
                Axis {
                    size: 12,
                    x: 1,
                    y: 1
                }
            ]
        );
        let split = [
            Axis {
                size: 3,
                x: 1,
                y: 5,
            },
            Axis {
                size: 5,
                x: 3,
                y: 1,
            },
        ];
        assert_eq!(merge_axes(&split), split.to_vec());
        let broadcast = [
            Axis {
                size: 4,
                x: 0,
                y: 6,
            },
            Axis {
                size: 6,
                x: 1,
                y: 1,
            },
        ];
        assert_eq!(merge_axes(&broadcast), broadcast.to_vec());
        assert_eq!(row_major_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(row_major_strides(&[]), Vec::<usize>::new());
    }

    #[test]
    fn copies_take_four_elements_a_thread_only_along_aligned_contiguous_rows() {
        let walk = |axes: &[(usize, usize, usize)], x_offset, y_offset| {
            let axes: Vec<Axis> = axes
                .iter()
                .map(|&(size, x, y)| Axis { size, x, y })
                .collect();
            Strided::new("test", &axes, x_offset, y_offset).unwrap()
        };
        // the second half of the channels of [2, 8, 4, 4]: rows of 64 from offset 64
        assert_eq!(walk(&[(2, 128, 64), (64, 1, 1)], 64, 0).copy_width(), 4);
        // a broadcast over the outer axis (x stride 0) keeps whole rows
        assert_eq!(walk(&[(3, 0, 8), (8, 1, 1)], 0, 0).copy_width(), 4);
        // a row length, an offset or an outer stride off the multiple, or a transposed row
        assert_eq!(walk(&[(2, 128, 66), (66, 1, 1)], 0, 0).copy_width(), 1);
        assert_eq!(walk(&[(2, 128, 64), (64, 1, 1)], 2, 0).copy_width(), 1);
        assert_eq!(walk(&[(2, 130, 64), (64, 1, 1)], 0, 0).copy_width(), 1);
        assert_eq!(walk(&[(3, 1, 5), (5, 3, 1)], 0, 0).copy_width(), 1);
        assert_eq!(walk(&[], 0, 0).copy_width(), 1);
    }

    #[test]
    fn permute_walks_match_the_reference() {
        let cases: [(&[usize], &[usize]); 6] = [
            (&[2, 3, 4], &[2, 0, 1]),
            (&[5, 1, 7], &[1, 2, 0]),
            (&[3, 4], &[1, 0]),
            (&[2, 3, 4, 5, 2], &[0, 3, 1, 4, 2]),
            (&[6], &[0]),
            (&[2, 3, 5], &[0, 1, 2]),
        ];
        for (seed, (shape, axes)) in cases.into_iter().enumerate() {
            let (x, data) = random(shape, seed as u64);
            let expected = Cpu::<f64>::new().permute(&x, axes).unwrap();
            let (out_shape, walk) = permute_walk(shape, axes).unwrap();
            assert_eq!(out_shape, expected.shape());
            let mut y = vec![f64::NAN; data.len()];
            replay(&walk, &data, &mut y, None);
            assert_eq!(y, values(&expected), "permute {shape:?} by {axes:?}");
        }
        assert_eq!(permute_walk(&[2, 3, 4], &[0, 1, 2]).unwrap().1.rank, 1);
        assert!(permute_walk(&[2, 3], &[0, 0]).is_err());
        assert!(permute_walk(&[2, 3], &[0]).is_err());
        assert!(permute_walk(&[2, 3], &[0, 2]).is_err());
        // Nine axes that no merge can reduce exceed the kernels' eight.
        let shape = [2; 9];
        let reversed: Vec<usize> = (0..9).rev().collect();
        assert!(permute_walk(&shape, &reversed).is_err());
    }

    #[test]
    fn narrow_and_concat_walks_match_the_reference() {
        let (x, data) = random(&[3, 5, 4, 2], 7);
        for (axis, start, len) in [(0, 1, 2), (1, 2, 3), (1, 0, 5), (3, 1, 1), (2, 4, 0)] {
            let expected = Cpu::<f64>::new().narrow(&x, axis, start, len).unwrap();
            let (out_shape, walk) = narrow_walk(x.shape(), axis, start, len).unwrap();
            assert_eq!(out_shape, expected.shape());
            let mut y = vec![f64::NAN; expected.len()];
            replay(&walk, &data, &mut y, None);
            assert_eq!(y, values(&expected), "narrow axis {axis} {start}+{len}");
        }
        assert!(narrow_walk(&[3, 5], 2, 0, 1).is_err());
        assert!(narrow_walk(&[3, 5], 1, 3, 3).is_err());
        assert!(narrow_walk(&[3, 5], 1, usize::MAX, 2).is_err());

        for axis in 0..3 {
            let shapes: Vec<Vec<usize>> = [1, 0, 3, 2]
                .iter()
                .map(|&s| {
                    let mut shape = vec![2, 3, 4];
                    shape[axis] = s;
                    shape
                })
                .collect();
            let parts: Vec<(CpuTensor<f64>, Vec<f64>)> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| random(s, 100 + i as u64))
                .collect();
            let tensors: Vec<&CpuTensor<f64>> = parts.iter().map(|(t, _)| t).collect();
            let expected = Cpu::<f64>::new().concat(&tensors, axis).unwrap();
            let shape_refs: Vec<&[usize]> = shapes.iter().map(|s| s.as_slice()).collect();
            let (out_shape, walks) = concat_walks(&shape_refs, axis).unwrap();
            assert_eq!(out_shape, expected.shape());
            let mut y = vec![f64::NAN; expected.len()];
            for ((_, data), walk) in parts.iter().zip(&walks) {
                replay(walk, data, &mut y, None);
            }
            assert_eq!(y, values(&expected), "concat along {axis}");
        }
        assert!(concat_walks(&[], 0).is_err());
        assert!(concat_walks(&[&[2, 3], &[2, 4]], 0).is_err());
        assert!(concat_walks(&[&[2, 3], &[2, 3, 1]], 1).is_err());
        assert!(concat_walks(&[&[2, 3]], 2).is_err());
    }

    #[test]
    fn repeat_walk_matches_the_reference() {
        for shape in [&[3, 4][..], &[7], &[]] {
            let (x, data) = random(shape, 3);
            let expected = Cpu::<f64>::new().repeat_leading(&x, 3).unwrap();
            let (out_shape, walk) = repeat_walk(shape, 3).unwrap();
            assert_eq!(out_shape, expected.shape());
            let mut y = vec![f64::NAN; expected.len()];
            replay(&walk, &data, &mut y, None);
            assert_eq!(y, values(&expected));
        }
        assert!(repeat_walk(&[3], 0).is_err());
    }

    #[test]
    fn mean_walks_match_the_reference_bit_for_bit() {
        let cases: [(&[usize], &[usize]); 8] = [
            (&[2, 3, 4, 5], &[2, 3]),
            (&[2, 3, 4, 5], &[0]),
            (&[2, 3, 4, 5], &[3, 1]),
            (&[2, 3, 4, 5], &[0, 2]),
            (&[2, 3, 4, 5], &[0, 1, 2, 3]),
            (&[4, 1, 6], &[1]),
            (&[4, 6], &[]),
            (&[3, 0, 2], &[2]),
        ];
        for (seed, (shape, axes)) in cases.into_iter().enumerate() {
            let (x, data) = random(shape, 40 + seed as u64);
            let expected = Cpu::<f64>::new().mean_axes(&x, axes).unwrap();
            let walks = mean_walks(shape, axes).unwrap();
            assert_eq!(walks.out_shape, expected.shape());
            assert_eq!(
                replay_mean(&walks, &data),
                values(&expected),
                "mean of {shape:?} over {axes:?}"
            );

            let (grad, grad_data) = random(expected.shape(), 80 + seed as u64);
            let expected = Cpu::<f64>::new()
                .mean_axes_backward(&grad, shape, axes)
                .unwrap();
            let (walk, count) = mean_backward_walk(grad.shape(), shape, axes).unwrap();
            let mut dx = vec![f64::NAN; expected.len()];
            replay(&walk, &grad_data, &mut dx, Some(count as f64));
            assert_eq!(
                dx,
                values(&expected),
                "mean backward {shape:?} over {axes:?}"
            );
        }
        assert!(mean_walks(&[2, 3], &[2]).is_err());
        assert!(mean_walks(&[2, 3], &[1, 1]).is_err());
        assert!(mean_walks(&[2, 0], &[1]).is_err());
        assert!(mean_backward_walk(&[3], &[2, 3], &[1]).is_err());
        assert!(mean_backward_walk(&[2], &[2, 3], &[1]).is_ok());
    }

    #[test]
    fn a_walk_outside_its_buffers_is_an_error() {
        let walk = Strided::new(
            "test",
            &[Axis {
                size: 4,
                x: 1,
                y: 2,
            }],
            1,
            0,
        )
        .unwrap();
        assert!(walk.check_bounds("test", 5, 7).is_ok());
        assert!(walk.check_bounds("test", 4, 7).is_err());
        assert!(walk.check_bounds("test", 5, 6).is_err());
    }

    #[test]
    fn the_strided_struct_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<Strided>(), 27 * 8);
        assert_eq!(std::mem::align_of::<Strided>(), 8);
    }
}
