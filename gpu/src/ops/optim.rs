//! Optimizer updates on the GPU (docs/recipes.md §5: SGD for the ResNets, AdamW for the transformers);
//! twin of `reference/src/ops/optim.rs`, kernels in `gpu/kernels/optim.cu`.
//!
//! One fused kernel reads each parameter, its gradient and its state once and writes the new
//! parameter and state, for up to [`SGD_TABLE_LEN`] or [`ADAMW_TABLE_LEN`] parameter tensors per
//! launch (`super::foreach`). Each update is computed in `E` with the reference's operations in
//! its order, without FMA contraction, so the results equal the reference's bit for bit. The
//! single-tensor steps are a table of one.

use cudarc::driver::{DeviceRepr, PushKernelArg};
use revsnn_reference::contract::shapes::check_like_param;
use revsnn_reference::{AdamWParams, AdamWState, AdamWTensors, SgdParams, SgdState, SgdTensors};

use super::GpuElement;
use super::foreach::{TABLE_BYTES, chunk_launch, number_chunks, read_address, write_address};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::kernels::OPTIM;
use crate::memory::DeviceBuffer;
use crate::tensor::CudaTensor;

/// Tensors per SGD launch: `SGD_TABLE_LEN` of optim.cu.
const SGD_TABLE_LEN: usize = 64;
/// Tensors per AdamW launch: `ADAMW_TABLE_LEN` of optim.cu.
const ADAMW_TABLE_LEN: usize = 48;

/// `struct SgdTable<E>` of optim.cu: device pointers, lengths and each tensor's first block.
#[repr(C)]
#[derive(Clone, Copy)]
struct SgdTable {
    param: [u64; SGD_TABLE_LEN],
    grad: [u64; SGD_TABLE_LEN],
    /// 0 (null) before the tensor's first step.
    buffer: [u64; SGD_TABLE_LEN],
    new_param: [u64; SGD_TABLE_LEN],
    new_buffer: [u64; SGD_TABLE_LEN],
    len: [i64; SGD_TABLE_LEN],
    first_block: [i32; SGD_TABLE_LEN + 1],
}

// SAFETY: `#[repr(C)]` plain integers in the order and types of `struct SgdTable<E>` in
// optim.cu (pointers as 64-bit integers, then `long long`s, then `int`s).
unsafe impl DeviceRepr for SgdTable {}

/// `struct AdamWTable<E>` of optim.cu; `shrink` is each tensor's `1 - lr weight_decay`.
#[repr(C)]
#[derive(Clone, Copy)]
struct AdamWTable<E> {
    param: [u64; ADAMW_TABLE_LEN],
    grad: [u64; ADAMW_TABLE_LEN],
    first: [u64; ADAMW_TABLE_LEN],
    second: [u64; ADAMW_TABLE_LEN],
    new_param: [u64; ADAMW_TABLE_LEN],
    new_first: [u64; ADAMW_TABLE_LEN],
    new_second: [u64; ADAMW_TABLE_LEN],
    len: [i64; ADAMW_TABLE_LEN],
    shrink: [E; ADAMW_TABLE_LEN],
    first_block: [i32; ADAMW_TABLE_LEN + 1],
}

// SAFETY: as for `SgdTable`, with `E` (f32 or f64, `DeviceRepr`) for optim.cu's `E shrink[]`;
// the `int`s after it stay 4-byte aligned for either.
unsafe impl<E: DeviceRepr> DeviceRepr for AdamWTable<E> {}

const _: () = assert!(size_of::<SgdTable>() <= TABLE_BYTES);
const _: () = assert!(size_of::<AdamWTable<f64>>() <= TABLE_BYTES);

/// One SGD step (see [`SgdParams`]): `d = g + weight_decay p`, `b = momentum b_old + d` (`b = d`
/// on the first step, without a buffer), `p_new = p - lr b`; returns the new parameter and
/// momentum buffer.
pub fn sgd_step<E: GpuElement>(
    device: &GpuDevice,
    param: &CudaTensor<E>,
    grad: &CudaTensor<E>,
    momentum_buffer: Option<&CudaTensor<E>>,
    params: SgdParams,
) -> Result<SgdState<CudaTensor<E>>, GpuError> {
    let tensors = SgdTensors {
        param,
        grad,
        momentum_buffer,
    };
    let mut updated = sgd_step_foreach(device, &[tensors], params)?;
    Ok(updated.remove(0))
}

/// [`sgd_step`] on each parameter of `tensors`, [`SGD_TABLE_LEN`] tensors per launch; returns
/// the new parameters and momentum buffers in order.
pub fn sgd_step_foreach<E: GpuElement>(
    device: &GpuDevice,
    tensors: &[SgdTensors<'_, CudaTensor<E>>],
    params: SgdParams,
) -> Result<Vec<SgdState<CudaTensor<E>>>, GpuError> {
    const OP: &str = "sgd";
    params.validate()?;
    for t in tensors {
        check_like_param(OP, "the gradient", t.param.shape(), t.grad.shape())?;
        if let Some(buffer) = t.momentum_buffer {
            check_like_param(OP, "the momentum buffer", t.param.shape(), buffer.shape())?;
        }
    }
    let mut outputs = allocate_outputs::<E, 2>(device, tensors.iter().map(|t| t.param.len()))?;
    let function = device.function(&OPTIM, &format!("sgd_step_foreach_{}", E::SUFFIX))?;
    let (lr, momentum, weight_decay) = (
        E::cast(params.lr),
        E::cast(params.momentum),
        E::cast(params.weight_decay),
    );
    let stream = device.stream();
    for (inputs, outputs) in tensors
        .chunks(SGD_TABLE_LEN)
        .zip(outputs.chunks_mut(SGD_TABLE_LEN))
    {
        let mut guards = Vec::new();
        let mut table = SgdTable {
            param: [0; SGD_TABLE_LEN],
            grad: [0; SGD_TABLE_LEN],
            buffer: [0; SGD_TABLE_LEN],
            new_param: [0; SGD_TABLE_LEN],
            new_buffer: [0; SGD_TABLE_LEN],
            len: [0; SGD_TABLE_LEN],
            first_block: [0; SGD_TABLE_LEN + 1],
        };
        for (i, (t, [new_param, new_buffer])) in inputs.iter().zip(outputs.iter_mut()).enumerate() {
            table.param[i] = read_address(t.param.slice(), stream, &mut guards);
            table.grad[i] = read_address(t.grad.slice(), stream, &mut guards);
            table.buffer[i] = t
                .momentum_buffer
                .map_or(0, |b| read_address(b.slice(), stream, &mut guards));
            table.new_param[i] = write_address(new_param.slice_mut(), stream, &mut guards);
            table.new_buffer[i] = write_address(new_buffer.slice_mut(), stream, &mut guards);
            table.len[i] = t.param.len() as i64;
        }
        let blocks = number_chunks(
            OP,
            inputs.iter().map(|t| t.param.len()),
            &mut table.first_block,
        )?;
        if blocks > 0 {
            let mut launch = stream.launch_builder(&function);
            launch
                .arg(&table)
                .arg(&lr)
                .arg(&momentum)
                .arg(&weight_decay);
            // SAFETY: the arguments match `sgd_step_foreach_<E>(SgdTable<E> table, E lr,
            // E momentum, E weight_decay)`; every pointer of the table's first `inputs.len()`
            // entries holds `len` elements (the shapes were checked above), the guards keep them
            // live for the launch, and the blocks are the chunks the table numbers.
            unsafe { launch.launch(chunk_launch(blocks)) }
                .map_err(GpuError::driver("launching sgd_step_foreach"))?;
        }
    }
    let shapes = tensors.iter().map(|t| t.param.shape());
    let updated = output_tensors(outputs, shapes)?;
    Ok(updated
        .into_iter()
        .map(|[param, buffer]| (param, buffer))
        .collect())
}

/// One AdamW step number `step >= 1` (see [`AdamWParams`]): `m = b1 m + (1 - b1) g`,
/// `v = b2 v + (1 - b2) g g`, `p_new = p (1 - lr wd) - (lr / (1 - b1^t)) m / (sqrt(v) /
/// sqrt(1 - b2^t) + eps)`, the scalar factors computed in `f64` and rounded to `E` as the
/// reference does; returns the new parameter and moments.
pub fn adamw_step<E: GpuElement>(
    device: &GpuDevice,
    param: &CudaTensor<E>,
    grad: &CudaTensor<E>,
    first_moment: &CudaTensor<E>,
    second_moment: &CudaTensor<E>,
    params: AdamWParams,
    step: u64,
) -> Result<AdamWState<CudaTensor<E>>, GpuError> {
    let tensors = AdamWTensors {
        param,
        grad,
        first_moment,
        second_moment,
        decays: true,
    };
    let mut updated = adamw_step_foreach(device, &[tensors], params, step)?;
    Ok(updated.remove(0))
}

/// [`adamw_step`] on each parameter of `tensors` (with no weight decay where it does not
/// decay), [`ADAMW_TABLE_LEN`] tensors per launch; returns the new parameters and moments in
/// order.
pub fn adamw_step_foreach<E: GpuElement>(
    device: &GpuDevice,
    tensors: &[AdamWTensors<'_, CudaTensor<E>>],
    params: AdamWParams,
    step: u64,
) -> Result<Vec<AdamWState<CudaTensor<E>>>, GpuError> {
    const OP: &str = "adamw";
    params.validate()?;
    AdamWParams::check_step(step)?;
    for t in tensors {
        let shape = t.param.shape();
        check_like_param(OP, "the gradient", shape, t.grad.shape())?;
        check_like_param(OP, "the first moment", shape, t.first_moment.shape())?;
        check_like_param(OP, "the second moment", shape, t.second_moment.shape())?;
    }
    let mut outputs = allocate_outputs::<E, 3>(device, tensors.iter().map(|t| t.param.len()))?;
    let function = device.function(&OPTIM, &format!("adamw_step_foreach_{}", E::SUFFIX))?;
    let (beta1, beta2) = (E::cast(params.beta1), E::cast(params.beta2));
    let step_size = E::cast(params.lr / (1.0 - params.beta1.powf(step as f64)));
    let correction2_sqrt = E::cast((1.0 - params.beta2.powf(step as f64)).sqrt());
    let eps = E::cast(params.eps);
    let stream = device.stream();
    for (inputs, outputs) in tensors
        .chunks(ADAMW_TABLE_LEN)
        .zip(outputs.chunks_mut(ADAMW_TABLE_LEN))
    {
        let mut guards = Vec::new();
        let mut table = AdamWTable {
            param: [0; ADAMW_TABLE_LEN],
            grad: [0; ADAMW_TABLE_LEN],
            first: [0; ADAMW_TABLE_LEN],
            second: [0; ADAMW_TABLE_LEN],
            new_param: [0; ADAMW_TABLE_LEN],
            new_first: [0; ADAMW_TABLE_LEN],
            new_second: [0; ADAMW_TABLE_LEN],
            len: [0; ADAMW_TABLE_LEN],
            shrink: [E::cast(1.0); ADAMW_TABLE_LEN],
            first_block: [0; ADAMW_TABLE_LEN + 1],
        };
        for (i, (t, [new_param, new_first, new_second])) in
            inputs.iter().zip(outputs.iter_mut()).enumerate()
        {
            table.param[i] = read_address(t.param.slice(), stream, &mut guards);
            table.grad[i] = read_address(t.grad.slice(), stream, &mut guards);
            table.first[i] = read_address(t.first_moment.slice(), stream, &mut guards);
            table.second[i] = read_address(t.second_moment.slice(), stream, &mut guards);
            table.new_param[i] = write_address(new_param.slice_mut(), stream, &mut guards);
            table.new_first[i] = write_address(new_first.slice_mut(), stream, &mut guards);
            table.new_second[i] = write_address(new_second.slice_mut(), stream, &mut guards);
            table.len[i] = t.param.len() as i64;
            table.shrink[i] = E::cast(1.0 - params.lr * t.params(params).weight_decay);
        }
        let blocks = number_chunks(
            OP,
            inputs.iter().map(|t| t.param.len()),
            &mut table.first_block,
        )?;
        if blocks > 0 {
            let mut launch = stream.launch_builder(&function);
            launch
                .arg(&table)
                .arg(&beta1)
                .arg(&beta2)
                .arg(&step_size)
                .arg(&correction2_sqrt)
                .arg(&eps);
            // SAFETY: the arguments match `adamw_step_foreach_<E>(AdamWTable<E> table, E beta1,
            // E beta2, E step_size, E correction2_sqrt, E eps)`; every pointer of the table's
            // first `inputs.len()` entries holds `len` elements (the shapes were checked above),
            // the guards keep them live for the launch, and the blocks are the chunks the table
            // numbers.
            unsafe { launch.launch(chunk_launch(blocks)) }
                .map_err(GpuError::driver("launching adamw_step_foreach"))?;
        }
    }
    let shapes = tensors.iter().map(|t| t.param.shape());
    let updated = output_tensors(outputs, shapes)?;
    Ok(updated
        .into_iter()
        .map(|[param, first, second]| (param, first, second))
        .collect())
}

/// `N` uninitialised buffers per tensor, of each tensor's length (the kernels write every
/// element).
fn allocate_outputs<E: GpuElement, const N: usize>(
    device: &GpuDevice,
    lens: impl Iterator<Item = usize>,
) -> Result<Vec<[DeviceBuffer<E>; N]>, GpuError> {
    lens.map(|len| {
        let buffers: Vec<DeviceBuffer<E>> = (0..N)
            // SAFETY: the optimizer's kernel writes every element before anything reads it.
            .map(|_| unsafe { device.alloc::<E>(len) })
            .collect::<Result<_, _>>()?;
        Ok(buffers
            .try_into()
            .unwrap_or_else(|_| unreachable!("{N} buffers were allocated")))
    })
    .collect()
}

/// The buffers of [`allocate_outputs`] as tensors, each tensor's `N` of the shape `shapes` gives
/// it.
fn output_tensors<'a, E: GpuElement, const N: usize>(
    outputs: Vec<[DeviceBuffer<E>; N]>,
    shapes: impl Iterator<Item = &'a [usize]>,
) -> Result<Vec<[CudaTensor<E>; N]>, GpuError> {
    outputs
        .into_iter()
        .zip(shapes)
        .map(|(buffers, shape)| {
            let tensors: Vec<CudaTensor<E>> = buffers
                .into_iter()
                .map(|buffer| CudaTensor::new(buffer, shape))
                .collect::<Result<_, _>>()?;
            Ok(tensors
                .try_into()
                .unwrap_or_else(|_| unreachable!("{N} tensors were made")))
        })
        .collect()
}
