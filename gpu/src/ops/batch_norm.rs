//! Batch normalisation on the GPU with deterministic reductions; twin of
//! `reference/src/ops/batch_norm.rs`, kernels in `gpu/kernels/batch_norm.cu`.
//!
//! Statistics are per channel over every axis but `C` of `x [N, C, ...]`. Each per-channel
//! reduction (the forward's mean and variance, the backward's `sum dy` and `sum dy x_hat`) is
//! accumulated in `f64` in two passes over a partition fixed by the shape: block `(c, chunk)`
//! reduces one contiguous run of channel `c`'s elements through a fixed shared-memory tree into a
//! partial, then block `c` reduces its partials the same way. No atomics, so the bits do not depend
//! on the launch (docs/design.md principle 4). The forward reads `x` once for its statistics
//! (each thread's sums of differences from its first element, merged pairwise with Chan's
//! formula) where the reference sums the squared deviations in a second read; the two differ only
//! by rounding.

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    CudaFunction, DevicePtrMut, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use revsnn_reference::contract::shapes::{
    BatchNormShape, check_channel_vector, check_context_statistics, check_same_shape,
    check_train_context,
};
use revsnn_reference::{
    AvgPoolGrad, BatchNormGrads, BatchNormMode, BatchNormParams, BatchNormTrainOutput, BatchStats,
    Combine, Onto, RunningStats,
};

use super::precision::{HalfFormat, require_f32};
use super::saved_input::{InputOperand, SavedInput, bias_pointer};
use super::{GpuElement, elementwise_launch, pool, tensor};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::kernels::BATCH_NORM;
use crate::memory::DeviceBuffer;
use crate::tensor::CudaTensor;

/// A training BatchNorm whose output a kernel makes as it reads it (the `NORMALISED_PARAMS` of
/// neuron.cu, and the average pool's `avg_pool_forward_from_normalised_*` of pool.cu): its
/// context and shift, and its input's channels and elements per channel and image.
pub(crate) struct NormalisedMap<'a, E> {
    norm: &'a BatchNormContext<E>,
    beta: &'a CudaTensor<E>,
    channels: i64,
    inner: i64,
}

impl<'a, E: GpuElement> NormalisedMap<'a, E> {
    /// The map of `norm` and `beta`, after checking that `norm` is a training context and `beta`
    /// is `[C]`; `op` names the caller in the errors.
    pub(crate) fn of(
        op: &'static str,
        norm: &'a BatchNormContext<E>,
        beta: &'a CudaTensor<E>,
    ) -> Result<Self, GpuError> {
        check_train_context(op, norm.mode)?;
        let split = BatchNormShape::new(op, norm.input.shape())?;
        check_channel_vector(op, "beta", beta.shape(), split.channels)?;
        Ok(NormalisedMap {
            norm,
            beta,
            channels: split.channels as i64,
            inner: split.inner as i64,
        })
    }

    /// The BatchNorm's input shape.
    pub(crate) fn shape(&self) -> &[usize] {
        self.norm.input.shape()
    }

    /// The BatchNorm's input as the kernel reads it ([`super::saved_input::SavedInput::operand`]),
    /// and the kernel name's suffix for it: `_input_<format>` for 16-bit patterns, else none.
    pub(crate) fn input(
        &self,
        device: &'a GpuDevice,
        op: &'static str,
    ) -> Result<(InputOperand<'a>, String), GpuError> {
        let input = self.norm.input.operand(device, op)?;
        let suffix = input
            .format
            .map_or(String::new(), |f| format!("_input_{}", f.name()));
        Ok((input, suffix))
    }

    /// Pushes the kernel's `x, x_bias, mean, inv_std, gamma, beta, channels`, `x` and `x_bias`
    /// being `input`'s.
    pub(crate) fn push_map<'b>(&'b self, input: &'b InputOperand<'_>, launch: &mut LaunchArgs<'b>) {
        input.push(launch);
        launch
            .arg(self.norm.mean.slice())
            .arg(self.norm.inv_std.slice())
            .arg(self.norm.gamma.slice())
            .arg(self.beta.slice())
            .arg(&self.channels);
    }

    /// Pushes the neuron kernels' `x, x_bias, mean, inv_std, gamma, beta, channels, inner`, `x`
    /// and `x_bias` being `input`'s.
    pub(crate) fn push<'b>(&'b self, input: &'b InputOperand<'_>, launch: &mut LaunchArgs<'b>) {
        self.push_map(input, launch);
        launch.arg(&self.inner);
    }
}

/// Threads per block of the reduction kernels (`BN_THREADS` in batch_norm.cu: the tree needs
/// exactly this many).
const REDUCE_THREADS: u32 = 256;
/// The elements a thread of the elementwise kernels takes where the layout allows (`BN_VEC` in
/// batch_norm.cu).
const BN_VEC: usize = 4;
/// The most elements of one channel one pass-1 block sums.
const CHUNK_ELEMENTS: usize = 16 * 1024;
/// The most pass-1 blocks per channel (so pass 2 sums at most this many partials).
const MAX_CHUNKS: usize = 512;
/// The most blocks of a reduction launch; blocks loop over their work with a grid stride.
const MAX_REDUCE_BLOCKS: usize = 1 << 16;

/// What [`backward`] needs: the input (as [`SavedInput::exact`] keeps it) and the per-channel
/// constants of the forward, as in the reference's context.
#[derive(Debug)]
pub struct BatchNormContext<E> {
    /// The forward's input `x [N, C, ...]`: its 16-bit patterns when it was widened from them
    /// exactly (a 16-bit convolution's output), else `x` itself.
    pub input: SavedInput<E>,
    /// `[C]`: the mean the forward subtracted, the batch mean (train) or the running mean (eval).
    pub mean: DeviceBuffer<f64>,
    /// `[C]`: `1 / sqrt(var + eps)` with the biased batch variance (train) or the running one (eval).
    pub inv_std: DeviceBuffer<f64>,
    /// The scale `gamma [C]` (shared with the caller).
    pub gamma: CudaTensor<E>,
    pub mode: BatchNormMode,
}

/// How `x [N, C, ...]` splits into channels, and how pass 1 splits each channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    /// The contract's split of `x`.
    split: BatchNormShape,
    channels: usize,
    /// The product of the trailing axes.
    inner: usize,
    /// `n = N inner`, the elements of one channel.
    per_channel: usize,
    /// `N C inner`.
    total: usize,
    /// Pass-1 blocks per channel, at least 1.
    chunks: usize,
    /// Elements per pass-1 block: `chunks chunk_len >= per_channel`.
    chunk_len: usize,
}

impl Layout {
    fn of(op: &'static str, shape: &[usize]) -> Result<Layout, GpuError> {
        let split = BatchNormShape::new(op, shape)?;
        let (channels, inner, per_channel) = (split.channels, split.inner, split.per_channel());
        let chunks = per_channel.div_ceil(CHUNK_ELEMENTS).clamp(1, MAX_CHUNKS);
        Ok(Layout {
            split,
            channels,
            inner,
            per_channel,
            total: per_channel * channels,
            chunks,
            chunk_len: per_channel.div_ceil(chunks),
        })
    }

    /// Whether the reductions have anything to sum (their kernels need `n >= 1`, hence
    /// `inner >= 1`, and `C >= 1`).
    fn reduces(&self) -> bool {
        self.channels > 0 && self.per_channel > 0
    }

    /// The kernels' integer arguments `channels, inner, per_channel, chunks, chunk_len`.
    fn args(&self) -> [i64; 5] {
        [
            self.channels,
            self.inner,
            self.per_channel,
            self.chunks,
            self.chunk_len,
        ]
        .map(|v| v as i64)
    }

    /// The elements per thread of the elementwise kernels (`width` in batch_norm.cu): [`BN_VEC`]
    /// consecutive ones when `inner` is a multiple of it, so that a group lies in one channel and
    /// loads as one vector, else 1.
    fn group_width(&self) -> usize {
        if self.inner.is_multiple_of(BN_VEC) {
            BN_VEC
        } else {
            1
        }
    }

    /// The elementwise kernels' integer arguments `channels, inner, total, width`.
    fn elementwise_args(&self) -> [i64; 4] {
        [self.channels, self.inner, self.total, self.group_width()].map(|v| v as i64)
    }
}

/// A launch of `blocks` reduction blocks (capped: the kernels loop with a grid stride).
fn reduce_launch(blocks: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.clamp(1, MAX_REDUCE_BLOCKS) as u32, 1, 1),
        block_dim: (REDUCE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn kernel<E: GpuElement>(device: &GpuDevice, name: &str) -> Result<CudaFunction, GpuError> {
    device.function(&BATCH_NORM, &format!("{name}_{}", E::SUFFIX))
}

/// The name suffix of batch_norm.cu's kernels for `input`: `<E>` for `x` itself,
/// `f32_from_<format>` for its 16-bit patterns.
fn input_suffix(input: &InputOperand<'_>) -> String {
    match input.format {
        None => input.element.to_string(),
        Some(format) => format!("f32_from_{}", format.name()),
    }
}

/// The kernel `name` of batch_norm.cu for `input`.
fn input_kernel(
    device: &GpuDevice,
    input: &InputOperand<'_>,
    name: &str,
) -> Result<CudaFunction, GpuError> {
    device.function(&BATCH_NORM, &format!("{name}_{}", input_suffix(input)))
}

/// The kernel `name` for `input` that stores its result as `format`'s 16-bit patterns.
fn input_kernel_to(
    device: &GpuDevice,
    input: &InputOperand<'_>,
    name: &str,
    format: HalfFormat,
) -> Result<CudaFunction, GpuError> {
    let (suffix, output) = (input_suffix(input), format.name());
    device.function(&BATCH_NORM, &format!("{name}_{suffix}_to_{output}"))
}

/// The per-channel map a BatchNorm applies, `y = gamma_c inv_std_c (x - mean_c) + beta_c`.
struct ChannelMap<'a, E> {
    mean: &'a DeviceBuffer<f64>,
    inv_std: &'a DeviceBuffer<f64>,
    gamma: &'a CudaTensor<E>,
    beta: &'a CudaTensor<E>,
}

/// `y = gamma_c inv_std_c (x - mean_c) + beta_c` into a new tensor of `x`'s shape.
fn normalise<E: GpuElement>(
    device: &GpuDevice,
    x: &SavedInput<E>,
    layout: &Layout,
    map: &ChannelMap<'_, E>,
) -> Result<CudaTensor<E>, GpuError> {
    // SAFETY: the kernel writes every one of the `total` elements (none when `total` is 0).
    let mut y = unsafe { device.alloc::<E>(layout.total) }?;
    launch_normalise(device, x, layout, map, &mut y, None)?;
    CudaTensor::new(y, x.shape())
}

/// `residual ± (gamma_c inv_std_c (x - mean_c) + beta_c)`: the bits of [`normalise`] then
/// `tensor::add_reusing` or `sub_reusing`, written over the residual's buffer when nothing else
/// holds it (`bn_normalise_onto_*`), so that no buffer is allocated. Errors unless the residual
/// has `x`'s shape.
fn normalise_onto<E: GpuElement>(
    device: &GpuDevice,
    x: &SavedInput<E>,
    layout: &Layout,
    map: &ChannelMap<'_, E>,
    onto: Onto<CudaTensor<E>>,
) -> Result<CudaTensor<E>, GpuError> {
    check_same_shape("batch_norm_train_onto", onto.residual.shape(), x.shape())?;
    let Onto { residual, combine } = onto;
    match residual.into_unshared_buffer() {
        Ok(mut y) => {
            launch_normalise(device, x, layout, map, &mut y, Some(combine))?;
            CudaTensor::new(y, x.shape())
        }
        Err(residual) => {
            let y = normalise(device, x, layout, map)?;
            match combine {
                Combine::Add => tensor::add_reusing(device, &residual, y),
                Combine::Sub => tensor::sub_reusing(device, &residual, y),
            }
        }
    }
}

/// Launches `bn_normalise_*` writing `y`, or with `combine` `bn_normalise_onto_*` adding to or
/// subtracting from the residual `y` holds.
fn launch_normalise<E: GpuElement>(
    device: &GpuDevice,
    x: &SavedInput<E>,
    layout: &Layout,
    map: &ChannelMap<'_, E>,
    y: &mut DeviceBuffer<E>,
    combine: Option<Combine>,
) -> Result<(), GpuError> {
    if layout.total == 0 {
        return Ok(());
    }
    let input = x.operand(device, "batch_norm")?;
    let name = match combine {
        None => "bn_normalise",
        Some(_) => "bn_normalise_onto",
    };
    let function = input_kernel(device, &input, name)?;
    let [channels, inner, total, width] = layout.elementwise_args();
    let subtract = i32::from(combine == Some(Combine::Sub));
    let mut launch = device.stream().launch_builder(&function);
    input.push(&mut launch);
    launch
        .arg(y.slice_mut())
        .arg(map.mean.slice())
        .arg(map.inv_std.slice())
        .arg(map.gamma.slice())
        .arg(map.beta.slice())
        .arg(&channels)
        .arg(&inner)
        .arg(&total)
        .arg(&width);
    if combine.is_some() {
        launch.arg(&subtract);
    }
    // SAFETY: matches `bn_normalise_<E>(x, x_bias, y, mean, inv_std, gamma, beta, channels,
    // inner, total, width)`, or with `combine` `bn_normalise_onto_<E>(..., width, subtract)` (or
    // their `_f32_from_<format>` twins, whose x is 16-bit); x and y hold `total` elements, the
    // four vectors and a non-null x_bias `channels` (checked by callers and `SavedInput`);
    // `width` divides `inner`, hence `total`; `y` is not `x`'s buffer (it had no other owner).
    unsafe { launch.launch(elementwise_launch(layout.total / layout.group_width())) }
        .map_err(GpuError::driver("launching bn_normalise"))?;
    Ok(())
}

/// A channel's statistics from the training forward's one read of `x`, each `[C]`.
struct Moments<E> {
    /// The batch mean, in `f64` for the normalisation and the context.
    mean: DeviceBuffer<f64>,
    /// `1 / sqrt(var + eps)` with the biased batch variance.
    inv_std: DeviceBuffer<f64>,
    /// The batch mean in `E`, for the batch statistics.
    mean_out: DeviceBuffer<E>,
    /// The unbiased batch variance `n / (n - 1) var`, for the running statistics.
    var_unbiased: DeviceBuffer<E>,
}

/// Each channel's mean and variance in one read of `x` (gpu/kernels/batch_norm.cu: shifted sums
/// per thread, Chan's merge of the threads and chunks), then the constants of [`Moments`].
fn moments<E: GpuElement>(
    device: &GpuDevice,
    x: &SavedInput<E>,
    layout: &Layout,
    eps: f64,
) -> Result<Moments<E>, GpuError> {
    let channels = layout.channels;
    // SAFETY (the four allocations): when the layout reduces, the finalize kernel below writes
    // every channel; otherwise they are empty.
    let mut moments = unsafe {
        Moments {
            mean: device.alloc::<f64>(channels)?,
            inv_std: device.alloc::<f64>(channels)?,
            mean_out: device.alloc::<E>(channels)?,
            var_unbiased: device.alloc::<E>(channels)?,
        }
    };
    if !layout.reduces() {
        return Ok(moments);
    }
    let stream = device.stream();
    let [c, inner, n, chunks, chunk_len] = layout.args();
    let blocks = channels * layout.chunks;
    // SAFETY: pass 1 writes all three `C chunks` partials (count, mean, m2) before pass 2 reads
    // them.
    let mut partial = unsafe { device.alloc::<f64>(3 * blocks) }?;

    let input = x.operand(device, "batch_norm")?;
    let function = input_kernel(device, &input, "bn_moments_partial")?;
    let mut launch = stream.launch_builder(&function);
    input.push(&mut launch);
    launch
        .arg(partial.slice_mut())
        .arg(&c)
        .arg(&inner)
        .arg(&n)
        .arg(&chunks)
        .arg(&chunk_len);
    // SAFETY: matches `bn_moments_partial_<E>(x, x_bias, partial, channels, inner, per_channel,
    // chunks, chunk_len)` (or its 16-bit twin, as in `normalise`); x holds `N C inner` elements,
    // a non-null x_bias C, partial 3 C chunks; n >= 2.
    unsafe { launch.launch(reduce_launch(blocks)) }
        .map_err(GpuError::driver("launching bn_moments_partial"))?;

    let function = kernel::<E>(device, "bn_moments_finalize")?;
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(partial.slice())
        .arg(moments.mean.slice_mut())
        .arg(moments.mean_out.slice_mut())
        .arg(moments.inv_std.slice_mut())
        .arg(moments.var_unbiased.slice_mut())
        .arg(&c)
        .arg(&chunks)
        .arg(&eps);
    // SAFETY: matches `bn_moments_finalize_<E>(partial, mean, mean_out, inv_std, var_unbiased,
    // channels, chunks, eps)`; the four outputs hold C elements.
    unsafe { launch.launch(reduce_launch(channels)) }
        .map_err(GpuError::driver("launching bn_moments_finalize"))?;
    Ok(moments)
}

/// Training-mode BatchNorm (docs/conventions.md §1): over `x [N, C, ...]` with `n = N · prod(trailing axes)`
/// values per channel, `mean_c = (1/n) sum x`, `var_c = (1/n) sum (x - mean_c)^2` (biased, from
/// one read of `x`: [`moments`]), `y = gamma_c (x - mean_c) / sqrt(var_c + eps) + beta_c`.
///
/// Returns `y`, the batch statistics `mean_c` and `n / (n - 1) var_c` and the context. Errors, as
/// the reference: invalid `params`, `x` with fewer than 2 axes, `gamma` or `beta` not `[C]`, and
/// `n < 2` (one value per channel has no unbiased variance).
pub fn train_forward<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    gamma: &CudaTensor<E>,
    beta: &CudaTensor<E>,
    params: BatchNormParams,
) -> Result<BatchNormTrainOutput<CudaTensor<E>, BatchNormContext<E>>, GpuError> {
    train_forward_over(device, SavedInput::exact(x), gamma, beta, params, None)
}

/// [`train_forward`] over `x` as its context keeps it: both passes read the 16-bit patterns when
/// they hold `x` exactly (a 16-bit convolution's sums, which need never be widened into an `f32`
/// tensor: [`super::conv_batch_norm::train_forward`]). With `onto`, `y` lands on its residual
/// ([`normalise_onto`]).
pub(crate) fn train_forward_over<E: GpuElement>(
    device: &GpuDevice,
    x: SavedInput<E>,
    gamma: &CudaTensor<E>,
    beta: &CudaTensor<E>,
    params: BatchNormParams,
    onto: Option<Onto<CudaTensor<E>>>,
) -> Result<BatchNormTrainOutput<CudaTensor<E>, BatchNormContext<E>>, GpuError> {
    let (stats, context) = train_statistics_over(device, x, gamma, beta, params)?;
    let layout = Layout::of("batch_norm_train", context.input.shape())?;
    let map = ChannelMap {
        mean: &context.mean,
        inv_std: &context.inv_std,
        gamma,
        beta,
    };
    let y = match onto {
        None => normalise(device, &context.input, &layout, &map)?,
        Some(onto) => normalise_onto(device, &context.input, &layout, &map, onto)?,
    };
    Ok((y, stats, context))
}

/// [`train_forward_over`] up to its statistics: the batch statistics and the context, whose
/// output is then written by [`train_output`] or made as it is read by the neuron after the
/// BatchNorm (`super::neuron::fire_from_normalised`). Errors as [`train_forward`] does.
pub(crate) fn train_statistics_over<E: GpuElement>(
    device: &GpuDevice,
    x: SavedInput<E>,
    gamma: &CudaTensor<E>,
    beta: &CudaTensor<E>,
    params: BatchNormParams,
) -> Result<(BatchStats<CudaTensor<E>>, BatchNormContext<E>), GpuError> {
    const OP: &str = "batch_norm_train";
    params.validate()?;
    let layout = Layout::of(OP, x.shape())?;
    check_channel_vector(OP, "gamma", gamma.shape(), layout.channels)?;
    check_channel_vector(OP, "beta", beta.shape(), layout.channels)?;
    layout.split.check_trainable(OP, x.shape())?;
    let moments = moments(device, &x, &layout, params.eps)?;
    let channels = layout.channels;
    let stats = BatchStats {
        mean: CudaTensor::new(moments.mean_out, &[channels])?,
        var_unbiased: CudaTensor::new(moments.var_unbiased, &[channels])?,
    };
    let context = BatchNormContext {
        input: x,
        mean: moments.mean,
        inv_std: moments.inv_std,
        gamma: gamma.clone(),
        mode: BatchNormMode::Train,
    };
    Ok((stats, context))
}

/// The `y` of the training forward that made `context` (this module's or the fused convolution
/// and BatchNorm's), given the same `beta`: the same `bn_normalise_*` kernel over the input and
/// statistics the context keeps, so the same bits (docs/neurons.md §2.4.2). Errors, as the
/// reference: an evaluation context, or a `beta` that is not `[C]`.
pub fn train_output<E: GpuElement>(
    device: &GpuDevice,
    context: &BatchNormContext<E>,
    beta: &CudaTensor<E>,
) -> Result<CudaTensor<E>, GpuError> {
    const OP: &str = "batch_norm_train_output";
    check_train_context(OP, context.mode)?;
    let layout = Layout::of(OP, context.input.shape())?;
    check_channel_vector(OP, "beta", beta.shape(), layout.channels)?;
    let map = ChannelMap {
        mean: &context.mean,
        inv_std: &context.inv_std,
        gamma: &context.gamma,
        beta,
    };
    normalise(device, &context.input, &layout, &map)
}

/// Evaluation-mode BatchNorm (docs/conventions.md §1):
/// `y = gamma_c (x - running_mean_c) / sqrt(running_var_c + eps) + beta_c` over `x [N, C, ...]`.
/// Errors, as the reference: invalid `params`, `x` with fewer than 2 axes, and `gamma`, `beta` or
/// a running statistic not `[C]`.
pub fn eval_forward<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    gamma: &CudaTensor<E>,
    beta: &CudaTensor<E>,
    running: &RunningStats<CudaTensor<E>>,
    params: BatchNormParams,
) -> Result<(CudaTensor<E>, BatchNormContext<E>), GpuError> {
    const OP: &str = "batch_norm_eval";
    params.validate()?;
    let layout = Layout::of(OP, x.shape())?;
    let channels = layout.channels;
    check_channel_vector(OP, "gamma", gamma.shape(), channels)?;
    check_channel_vector(OP, "beta", beta.shape(), channels)?;
    check_channel_vector(OP, "running mean", running.mean.shape(), channels)?;
    check_channel_vector(OP, "running var", running.var.shape(), channels)?;
    // SAFETY (both): the kernel below writes every channel; empty when `channels` is 0.
    let mut mean = unsafe { device.alloc::<f64>(channels) }?;
    let mut inv_std = unsafe { device.alloc::<f64>(channels) }?;
    if channels > 0 {
        let function = kernel::<E>(device, "bn_eval_constants")?;
        let c = channels as i64;
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(running.mean.slice())
            .arg(running.var.slice())
            .arg(mean.slice_mut())
            .arg(inv_std.slice_mut())
            .arg(&c)
            .arg(&params.eps);
        // SAFETY: matches `bn_eval_constants_<E>(running_mean, running_var, mean, inv_std,
        // channels, eps)`; all four hold C elements.
        unsafe { launch.launch(elementwise_launch(channels)) }
            .map_err(GpuError::driver("launching bn_eval_constants"))?;
    }
    let input = SavedInput::exact(x);
    let map = ChannelMap {
        mean: &mean,
        inv_std: &inv_std,
        gamma,
        beta,
    };
    let y = normalise(device, &input, &layout, &map)?;
    let context = BatchNormContext {
        input,
        mean,
        inv_std,
        gamma: gamma.clone(),
        mode: BatchNormMode::Eval,
    };
    Ok((y, context))
}

/// Gradients of either BatchNorm forward, with `x_hat = (x - mean_c) inv_std_c` and sums per
/// channel over its `n` values (docs/conventions.md §1): `dgamma_c = sum dy x_hat`, `dbeta_c = sum dy`, and
/// train mode: `dx = gamma_c inv_std_c / n (n dy - sum dy - x_hat sum dy x_hat)`;
/// eval mode: `dx = gamma_c inv_std_c dy`. Errors when `grad_y` is not of the input's shape.
pub fn backward<E: GpuElement>(
    device: &GpuDevice,
    grad_y: &CudaTensor<E>,
    context: &BatchNormContext<E>,
) -> Result<BatchNormGrads<CudaTensor<E>>, GpuError> {
    let grads = backward_parts::<E, E>(device, grad_y, context, None)?;
    Ok(BatchNormGrads {
        input: CudaTensor::new(grads.input, context.input.shape())?,
        gamma: grads.gamma,
        beta: grads.beta,
    })
}

/// [`backward`] with `dx` stored as `format`'s 16-bit patterns: each element's `f32` value
/// rounded to the format, the bits `precision::to_half_bits` makes of [`backward`]'s `dx`, with
/// no `f32` `dx` written. It is the `dy` operand of the 16-bit convolution before the BatchNorm
/// (docs/precision.md §"Convolution outputs"). Errors as [`backward`], and for `f64` tensors.
pub(crate) fn backward_stored<E: GpuElement>(
    device: &GpuDevice,
    grad_y: &CudaTensor<E>,
    context: &BatchNormContext<E>,
    format: HalfFormat,
) -> Result<BatchNormGradParts<u16, E>, GpuError> {
    require_f32::<E>(format)?;
    backward_parts::<E, u16>(device, grad_y, context, Some(format))
}

/// A BatchNorm backward's gradients, `dx` as its last pass stores it (`D`: the element type, or
/// 16-bit patterns).
pub(crate) struct BatchNormGradParts<D, E> {
    pub input: DeviceBuffer<D>,
    pub gamma: CudaTensor<E>,
    pub beta: CudaTensor<E>,
}

/// `dy` as a BatchNorm backward reads it, handed over.
pub(crate) enum GradSource<'a, E> {
    /// A tensor of the BatchNorm's output shape.
    Tensor(CudaTensor<E>),
    /// The input gradient of an average pool after the BatchNorm, made from the gradient of the
    /// pool's output as it is read (the `_avg_pooled` kernels over pool.cuh: the values
    /// [`pool::avg_backward`] would write; docs/memory.md §9.6).
    AvgPooled(AvgPoolGrad<'a, CudaTensor<E>>),
}

impl<E: GpuElement> GradSource<'_, E> {
    /// `dy` as a tensor: the one given, or the pool's backward (the pool's gradient then freed).
    fn into_tensor(self, device: &GpuDevice) -> Result<CudaTensor<E>, GpuError> {
        match self {
            GradSource::Tensor(grad_y) => Ok(grad_y),
            GradSource::AvgPooled(pool) => {
                pool::avg_backward(device, &pool.grad_y, pool.input_shape, pool.params)
            }
        }
    }

    /// The tensor the kernels read, and the pool's kernel arguments for a pooled source, checked
    /// against the BatchNorm's input `shape`.
    fn operand(
        &self,
        op: &'static str,
        shape: &[usize],
    ) -> Result<(&CudaTensor<E>, Option<[i64; 8]>), GpuError> {
        match self {
            GradSource::Tensor(grad_y) => {
                BatchNormShape::check_grad(op, grad_y.shape(), shape)?;
                Ok((grad_y, None))
            }
            GradSource::AvgPooled(pool) => {
                BatchNormShape::check_grad(op, pool.input_shape, shape)?;
                let args = pool::avg_backward_args(op, pool.grad_y.shape(), shape, pool.params)?;
                Ok((&pool.grad_y, Some(args)))
            }
        }
    }
}

/// A kernel of batch_norm.cu for a `dy` read through the pool's geometry when `pool` is given
/// (`<name>_avg_pooled`), else `name` itself.
fn grad_kernel_name(name: String, pool: &Option<[i64; 8]>) -> String {
    match pool {
        Some(_) => format!("{name}_avg_pooled"),
        None => name,
    }
}

/// [`backward_stored`] with the context handed over, `dy` read from `grad_y`: when the context
/// alone holds its input as `format`'s 16-bit patterns (a 16-bit convolution's output that
/// nothing else shares), `dx` is written over them
/// (`bn_backward_input_in_place_f32_from_<format>`: each element read before its gradient is
/// written, by the same thread), so the backward allocates no `dx`, and a pooled `dy` is made as
/// it is read, so no tensor holds it; otherwise `dy` as a tensor, then [`backward_stored`].
/// Either way the bits of [`backward_stored`] over the tensor `dy`. Errors as
/// [`backward_stored`] (and [`pool::avg_backward`] for a pooled `dy`).
pub(crate) fn backward_stored_over_input<E: GpuElement>(
    device: &GpuDevice,
    grad_y: GradSource<'_, E>,
    context: BatchNormContext<E>,
    format: HalfFormat,
) -> Result<BatchNormGradParts<u16, E>, GpuError> {
    const OP: &str = "batch_norm_backward";
    require_f32::<E>(format)?;
    let layout = checked_layout(OP, &context)?;
    if !layout.reduces() || !context.input.holds_half_alone(format) {
        return backward_stored(device, &grad_y.into_tensor(device)?, &context, format);
    }
    let (grad, pool) = grad_y.operand(OP, context.input.shape())?;
    let sums = {
        let input = context.input.operand(device, "batch_norm")?;
        gradient_sums(device, (grad, pool), &context, &layout, &input)?
    };
    let BatchNormContext {
        input,
        mean,
        inv_std,
        gamma,
        mode,
    } = context;
    let (mut grad_x, bias) = input.into_half_alone(OP, format)?;
    let name = format!("bn_backward_input_in_place_f32_from_{}", format.name());
    let function = device.function(&BATCH_NORM, &grad_kernel_name(name, &pool))?;
    let map = GradientMap {
        mean: &mean,
        inv_std: &inv_std,
        gamma: &gamma,
        mode,
    };
    let (x, write) = grad_x.slice_mut().device_ptr_mut(device.stream());
    let (x_bias, bias_read) = bias_pointer(device, bias.as_ref());
    let operands = InputGradOperands {
        x,
        x_bias,
        grad_y: grad,
        grad_x: None,
        pool,
    };
    launch_input_gradient(device, &function, operands, &map, &sums, &layout)?;
    drop((write, bias_read));
    sums.into_parts(grad_x, layout.channels)
}

/// The body of [`backward`] (`stored` none, `D = E`) and [`backward_stored`] (`D = u16`).
fn backward_parts<E: GpuElement, D: DeviceRepr + ValidAsZeroBits>(
    device: &GpuDevice,
    grad_y: &CudaTensor<E>,
    context: &BatchNormContext<E>,
    stored: Option<HalfFormat>,
) -> Result<BatchNormGradParts<D, E>, GpuError> {
    const OP: &str = "batch_norm_backward";
    BatchNormShape::check_grad(OP, grad_y.shape(), context.input.shape())?;
    let layout = checked_layout(OP, context)?;
    if !layout.reduces() {
        // No element: the sums are 0 and dx is empty.
        let channels = layout.channels;
        return Ok(BatchNormGradParts {
            input: device.alloc_zeros::<D>(layout.total)?,
            gamma: CudaTensor::new(device.alloc_zeros::<E>(channels)?, &[channels])?,
            beta: CudaTensor::new(device.alloc_zeros::<E>(channels)?, &[channels])?,
        });
    }
    let input = context.input.operand(device, "batch_norm")?;
    let sums = gradient_sums(device, (grad_y, None), context, &layout, &input)?;
    // SAFETY: the kernel writes all `total` elements (total >= 1 here).
    let mut grad_x = unsafe { device.alloc::<D>(layout.total) }?;
    let function = match stored {
        None => input_kernel(device, &input, "bn_backward_input")?,
        Some(format) => input_kernel_to(device, &input, "bn_backward_input", format)?,
    };
    let (target, write) = grad_x.slice_mut().device_ptr_mut(device.stream());
    let operands = InputGradOperands {
        x: input.pointer,
        x_bias: input.bias,
        grad_y,
        grad_x: Some(target),
        pool: None,
    };
    let map = GradientMap::of(context);
    launch_input_gradient(device, &function, operands, &map, &sums, &layout)?;
    drop(write);
    sums.into_parts(grad_x, layout.channels)
}

/// The input-gradient pass's operands.
struct InputGradOperands<'a, E> {
    x: CUdeviceptr,
    /// The bias a biased input's kernel adds to each element of `x`, else null.
    x_bias: CUdeviceptr,
    grad_y: &'a CudaTensor<E>,
    /// None for a pass in place.
    grad_x: Option<CUdeviceptr>,
    /// The pool's kernel arguments for a pooled `grad_y`.
    pool: Option<[i64; 8]>,
}

/// What the input-gradient pass reads of a context besides its input.
struct GradientMap<'a, E> {
    mean: &'a DeviceBuffer<f64>,
    inv_std: &'a DeviceBuffer<f64>,
    gamma: &'a CudaTensor<E>,
    mode: BatchNormMode,
}

impl<'a, E> GradientMap<'a, E> {
    fn of(context: &'a BatchNormContext<E>) -> GradientMap<'a, E> {
        GradientMap {
            mean: &context.mean,
            inv_std: &context.inv_std,
            gamma: &context.gamma,
            mode: context.mode,
        }
    }
}

/// The layout of a backward's context, checked against the context's per-channel statistics.
fn checked_layout<E: GpuElement>(
    op: &'static str,
    context: &BatchNormContext<E>,
) -> Result<Layout, GpuError> {
    let layout = Layout::of(op, context.input.shape())?;
    check_context_statistics(
        op,
        layout.channels,
        context.gamma.shape(),
        context.mean.len(),
        context.inv_std.len(),
    )?;
    Ok(layout)
}

/// Launches the input-gradient pass `function` over `x` and `grad_y` into `grad_x`, or over
/// `x` in place when `grad_x` is `None` (the `_in_place` kernels, which take no `grad_x`),
/// `grad_y` read through the pool's geometry when its kernel arguments are given.
fn launch_input_gradient<E: GpuElement>(
    device: &GpuDevice,
    function: &CudaFunction,
    operands: InputGradOperands<'_, E>,
    map: &GradientMap<'_, E>,
    sums: &GradientSums<E>,
    layout: &Layout,
) -> Result<(), GpuError> {
    let [c, inner, total, width] = layout.elementwise_args();
    let train = (map.mode == BatchNormMode::Train) as i32;
    let InputGradOperands {
        x,
        x_bias,
        grad_y,
        grad_x,
        pool,
    } = operands;
    let mut launch = device.stream().launch_builder(function);
    launch.arg(&x).arg(&x_bias).arg(grad_y.slice());
    if let Some(grad_x) = &grad_x {
        launch.arg(grad_x);
    }
    launch
        .arg(map.mean.slice())
        .arg(map.inv_std.slice())
        .arg(map.gamma.slice())
        .arg(sums.means.slice())
        .arg(&c)
        .arg(&inner)
        .arg(&total)
        .arg(&width)
        .arg(&train);
    for value in pool.iter().flatten() {
        launch.arg(value);
    }
    // SAFETY: matches `bn_backward_input_<E>(x, x_bias, grad_y, grad_x, mean, inv_std, gamma,
    // means, channels, inner, total, width, train)`, a twin whose x is 16-bit
    // (`_f32_from_<format>`) and whose grad_x is 16-bit patterns (`_to_<format>`), or a twin
    // with no grad_x that writes over its 16-bit x (`bn_backward_input_in_place_f32_from_<format>`),
    // which with `_avg_pooled` reads grad_y as an average pool's output gradient and takes the
    // pool's `planes, h, w, out_h, out_w, kernel, stride, padding` last; x and grad_x hold
    // `N C inner` elements, grad_y as many or the pool's `planes out_h out_w` (checked by
    // `operand`), mean, inv_std, gamma and a non-null x_bias C, means 2 C; `width` divides
    // `total`.
    unsafe { launch.launch(elementwise_launch(layout.total / layout.group_width())) }
        .map_err(GpuError::driver("launching bn_backward_input"))?;
    Ok(())
}

/// The backward's per-channel sums: `means = [sum dy / n (C), sum dy x_hat / n (C)]` in `f64`
/// for the input gradient, and `dgamma`, `dbeta` in the element type.
struct GradientSums<E> {
    means: DeviceBuffer<f64>,
    grad_gamma: DeviceBuffer<E>,
    grad_beta: DeviceBuffer<E>,
}

impl<E: GpuElement> GradientSums<E> {
    /// The gradients: `grad_x`, and `dgamma`, `dbeta` of `channels` elements.
    fn into_parts<D>(
        self,
        grad_x: DeviceBuffer<D>,
        channels: usize,
    ) -> Result<BatchNormGradParts<D, E>, GpuError> {
        Ok(BatchNormGradParts {
            input: grad_x,
            gamma: CudaTensor::new(self.grad_gamma, &[channels])?,
            beta: CudaTensor::new(self.grad_beta, &[channels])?,
        })
    }
}

/// The backward's two reduction passes over `x` and `dy` (for a layout that reduces).
fn gradient_sums<E: GpuElement>(
    device: &GpuDevice,
    (grad_y, pool): (&CudaTensor<E>, Option<[i64; 8]>),
    context: &BatchNormContext<E>,
    layout: &Layout,
    input: &InputOperand<'_>,
) -> Result<GradientSums<E>, GpuError> {
    let stream = device.stream();
    let channels = layout.channels;
    let [c, inner, n, chunks, chunk_len] = layout.args();
    let blocks = channels * layout.chunks;
    // SAFETY: pass 1 writes both sums' `C chunks` partials before pass 2 reads them.
    let mut partial = unsafe { device.alloc::<f64>(2 * blocks) }?;
    // SAFETY (the three): pass 2 writes every channel of each.
    let mut means = unsafe { device.alloc::<f64>(2 * channels) }?;
    let mut grad_gamma = unsafe { device.alloc::<E>(channels) }?;
    let mut grad_beta = unsafe { device.alloc::<E>(channels) }?;

    let name = format!("bn_grad_partial_{}", input_suffix(input));
    let function = device.function(&BATCH_NORM, &grad_kernel_name(name, &pool))?;
    let mut launch = stream.launch_builder(&function);
    input.push(&mut launch);
    launch
        .arg(grad_y.slice())
        .arg(context.mean.slice())
        .arg(context.inv_std.slice())
        .arg(partial.slice_mut())
        .arg(&c)
        .arg(&inner)
        .arg(&n)
        .arg(&chunks)
        .arg(&chunk_len);
    for value in pool.iter().flatten() {
        launch.arg(value);
    }
    // SAFETY: matches `bn_grad_partial_<E>(x, x_bias, grad_y, mean, inv_std, partial, channels,
    // inner, per_channel, chunks, chunk_len)` (or its `_f32_from_<format>` twin, whose x is 16-bit,
    // which with `_avg_pooled` reads grad_y as an average pool's output gradient and takes the
    // pool's `planes, h, w, out_h, out_w, kernel, stride, padding` last); x holds `N C inner`
    // elements, grad_y as many or the pool's `planes out_h out_w`, mean, inv_std and a non-null
    // x_bias C, partial 2 C chunks; n >= 1.
    unsafe { launch.launch(reduce_launch(blocks)) }
        .map_err(GpuError::driver("launching bn_grad_partial"))?;

    let function = kernel::<E>(device, "bn_grad_finalize")?;
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(partial.slice())
        .arg(means.slice_mut())
        .arg(grad_gamma.slice_mut())
        .arg(grad_beta.slice_mut())
        .arg(&c)
        .arg(&chunks)
        .arg(&n);
    // SAFETY: matches `bn_grad_finalize_<E>(partial, means, grad_gamma, grad_beta, channels,
    // chunks, per_channel)`; means holds 2 C elements, the gradients C.
    unsafe { launch.launch(reduce_launch(channels)) }
        .map_err(GpuError::driver("launching bn_grad_finalize"))?;
    Ok(GradientSums {
        means,
        grad_gamma,
        grad_beta,
    })
}

/// PyTorch's running-statistics update (docs/conventions.md §1), per channel in `f64`:
/// `running_mean = (1 - momentum) running_mean + momentum batch_mean`,
/// `running_var = (1 - momentum) running_var + momentum batch_var_unbiased`.
/// Errors on invalid `params` and when the four vectors are not all `[C]`.
pub fn update_running_stats<E: GpuElement>(
    device: &GpuDevice,
    running: &RunningStats<CudaTensor<E>>,
    batch: &BatchStats<CudaTensor<E>>,
    params: BatchNormParams,
) -> Result<RunningStats<CudaTensor<E>>, GpuError> {
    const OP: &str = "update_running_stats";
    params.validate()?;
    let channels = running.mean.len();
    check_channel_vector(OP, "running mean", running.mean.shape(), channels)?;
    check_channel_vector(OP, "running var", running.var.shape(), channels)?;
    check_channel_vector(OP, "batch mean", batch.mean.shape(), channels)?;
    check_channel_vector(OP, "batch var", batch.var_unbiased.shape(), channels)?;
    // SAFETY (both): the kernel writes every channel; empty when `channels` is 0.
    let mut mean = unsafe { device.alloc::<E>(channels) }?;
    let mut var = unsafe { device.alloc::<E>(channels) }?;
    if channels > 0 {
        let function = kernel::<E>(device, "bn_update_running")?;
        let c = channels as i64;
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(running.mean.slice())
            .arg(running.var.slice())
            .arg(batch.mean.slice())
            .arg(batch.var_unbiased.slice())
            .arg(mean.slice_mut())
            .arg(var.slice_mut())
            .arg(&c)
            .arg(&params.momentum);
        // SAFETY: matches `bn_update_running_<E>(running_mean, running_var, batch_mean,
        // batch_var, new_mean, new_var, channels, momentum)`; all six hold C elements.
        unsafe { launch.launch(elementwise_launch(channels)) }
            .map_err(GpuError::driver("launching bn_update_running"))?;
    }
    Ok(RunningStats {
        mean: CudaTensor::new(mean, &[channels])?,
        var: CudaTensor::new(var, &[channels])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pass 1's chunks tile each channel exactly: none past the end, the last one reaching it,
    /// at most `MAX_CHUNKS` per channel, and `CHUNK_ELEMENTS` each until that cap binds.
    #[test]
    fn chunks_tile_every_channel() {
        for per_channel in [
            1,
            2,
            255,
            256,
            257,
            CHUNK_ELEMENTS - 1,
            CHUNK_ELEMENTS,
            CHUNK_ELEMENTS + 1,
            (1 << 20) + 3,
            CHUNK_ELEMENTS * MAX_CHUNKS,
            CHUNK_ELEMENTS * MAX_CHUNKS + 1,
            123_456_789,
        ] {
            let layout = Layout::of("test", &[per_channel, 3]).unwrap();
            assert_eq!(layout.per_channel, per_channel);
            assert_eq!(layout.total, 3 * per_channel);
            let (chunks, len) = (layout.chunks, layout.chunk_len);
            assert!((1..=MAX_CHUNKS).contains(&chunks), "{per_channel}");
            assert!(chunks * len >= per_channel, "{per_channel}: not covered");
            assert!(
                (chunks - 1) * len < per_channel,
                "{per_channel}: empty chunk"
            );
            if per_channel <= CHUNK_ELEMENTS * MAX_CHUNKS {
                assert!(len <= CHUNK_ELEMENTS, "{per_channel}: chunk of {len}");
            }
        }
    }

    #[test]
    fn layout_reads_channels_and_trailing_axes() {
        let layout = Layout::of("test", &[4, 5, 6, 7]).unwrap();
        assert_eq!(
            (layout.channels, layout.inner, layout.per_channel),
            (5, 42, 168)
        );
        assert_eq!(layout.args(), [5, 42, 168, 1, 168]);
        assert!(layout.reduces());
        let matrix = Layout::of("test", &[9, 2]).unwrap();
        assert_eq!((matrix.inner, matrix.per_channel), (1, 9));
        assert!(!Layout::of("test", &[0, 3, 4]).unwrap().reduces());
        assert!(!Layout::of("test", &[2, 0, 4]).unwrap().reduces());
        assert!(!Layout::of("test", &[2, 3, 0]).unwrap().reduces());
        assert!(Layout::of("test", &[5]).is_err());
        assert!(Layout::of("test", &[]).is_err());
    }
}
