//! Fused multi-step IF/LIF neurons on the GPU (docs/neurons.md §2.2-2.4); twin of
//! `reference/src/ops/neuron/mod.rs`, kernels in `gpu/kernels/neuron.cu`.
//!
//! One thread per neuron loops over T. The forward writes the spikes and keeps `h` for the
//! backward; the backward recomputes each spike from `h` (it is a function of `h`), so it reads
//! `dL/ds` and `h` and writes `dL/dx`: 3 tensors each way, the memory-bound minimum. A neuron
//! that keeps its input instead (docs/neurons.md §2.4.1) writes only the spikes, and its backward
//! charges `h` from `x` again inside the same kernel, into each thread's own memory (then
//! `dL/dx` may be written over `dL/ds`) or, for long runs, into `dL/dx`'s buffer. A neuron that
//! kept nothing because its input was a training BatchNorm's output (docs/neurons.md §2.4.2) has
//! its backward make that output again from the BatchNorm's context as the kernel reads it.

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaViewMut, DevicePtrMut, LaunchArgs, LaunchConfig, PushKernelArg,
};
use revsnn_reference::contract::shapes::{
    check_neuron_backward, check_normalised_neuron_backward, time_by_neurons, time_split,
};
use revsnn_reference::{Firing, NeuronConfig, NeuronFire, NeuronKept, NeuronKind, Surrogate};

use super::batch_norm::{BatchNormContext, NormalisedMap};
use super::precision::{self, HalfBits};
use super::{GpuElement, shape_error};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::kernels::NEURON;
use crate::memory::DeviceBuffer;
use crate::tensor::CudaTensor;
use crate::word::DeviceWord;

const THREADS: u32 = 256;

/// The kernels' encoding of a [`NeuronConfig`].
struct KernelConfig<E> {
    kind: i32,
    decay_input: i32,
    /// Passed as `f64`: the kernel rounds `tau`, `1/tau` and `1 - 1/tau` to `E` as the reference does.
    tau: f64,
    v_threshold: E,
    surrogate: i32,
    alpha: E,
    smooth: i32,
    detach_reset: i32,
}

impl<E: GpuElement> KernelConfig<E> {
    fn new(config: &NeuronConfig) -> Result<Self, GpuError> {
        config.validate()?;
        let (kind, decay_input, tau) = match config.kind {
            NeuronKind::If => (0, 0, 1.0),
            NeuronKind::Lif { tau, decay_input } => (1, decay_input as i32, tau),
        };
        let (surrogate, alpha) = match config.surrogate {
            Surrogate::ATan { alpha } => (0, alpha),
            Surrogate::Sigmoid { alpha } => (1, alpha),
        };
        Ok(KernelConfig {
            kind,
            decay_input,
            tau,
            v_threshold: E::cast(config.v_threshold),
            surrogate,
            alpha: E::cast(alpha),
            smooth: (config.firing == Firing::Smooth) as i32,
            detach_reset: config.detach_reset as i32,
        })
    }
}

impl<E: GpuElement> KernelConfig<E> {
    /// Pushes the arguments both kernels share, in their order: `n, time_steps, kind,
    /// decay_input, tau, v_threshold, surrogate, alpha, smooth`.
    fn push_shared<'a>(
        &'a self,
        launch: &mut LaunchArgs<'a>,
        neurons: &'a i64,
        time_steps: &'a i32,
    ) {
        launch
            .arg(neurons)
            .arg(time_steps)
            .arg(&self.kind)
            .arg(&self.decay_input)
            .arg(&self.tau)
            .arg(&self.v_threshold)
            .arg(&self.surrogate)
            .arg(&self.alpha)
            .arg(&self.smooth);
    }
}

fn launch_config(neurons: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (neurons.div_ceil(THREADS as usize).max(1) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn check_len(
    op: &'static str,
    what: &str,
    len: usize,
    time_steps: usize,
) -> Result<usize, GpuError> {
    if time_steps == 0 || !len.is_multiple_of(time_steps) {
        return Err(shape_error(
            op,
            format!("{what} has {len} elements, not a positive multiple of T = {time_steps}"),
        ));
    }
    Ok(len / time_steps)
}

/// What [`backward`] needs: the membrane potentials `h` `[T, ...]` (each spike is recomputed
/// from its `h`) or the input they are charged from again, and the configuration the forward ran
/// with.
#[derive(Debug)]
pub struct NeuronContext<E> {
    pub kept: NeuronKept<CudaTensor<E>>,
    /// The configuration of the forward; [`backward`] must be called with the same one.
    pub config: NeuronConfig,
}

/// The forward of docs/neurons.md §2.2 over `x` `[T, ...]`: returns the spikes `[T, ...]` (with
/// Heaviside firing marked as 0s and 1s, [`CudaTensor::is_spikes`]) and the context holding `h`
/// and `config`. With `x` held by nothing else, `h` is written over it
/// (`neuron_forward_in_place_<E>`: each thread reads `x[t]` before it writes `h[t]`), so the
/// forward allocates only the spikes. Errors, as the reference: an invalid `config`, or `x` with
/// no axis or `T = 0`.
pub fn forward<E: GpuElement>(
    device: &GpuDevice,
    x: CudaTensor<E>,
    config: &NeuronConfig,
) -> Result<(CudaTensor<E>, NeuronContext<E>), GpuError> {
    fire(device, x, config, false, None)
}

/// [`forward`] whose context keeps `x` itself and no buffer of its own: the kernel writes the
/// spikes only, and [`backward`] charges `h` from `x` again, bit for bit (docs/neurons.md
/// §2.4.1).
pub fn forward_keeping_input<E: GpuElement>(
    device: &GpuDevice,
    x: CudaTensor<E>,
    config: &NeuronConfig,
) -> Result<(CudaTensor<E>, NeuronContext<E>), GpuError> {
    fire(device, x, config, true, None)
}

/// [`forward`] (or, when `keeps_input`, [`forward_keeping_input`]) that also folds the spikes'
/// fingerprint into `word`, as [`super::tensor::fold_fingerprint`] would: the kernel sums the
/// fingerprint's terms as it writes the spikes, which are not read again.
pub fn forward_fingerprinted<E: GpuElement>(
    device: &GpuDevice,
    x: CudaTensor<E>,
    config: &NeuronConfig,
    keeps_input: bool,
    word: &mut DeviceWord,
) -> Result<(CudaTensor<E>, NeuronContext<E>), GpuError> {
    fire(device, x, config, keeps_input, Some(word))
}

/// The spikes of [`forward`] and no context, for a neuron whose input is made again for its
/// backward (docs/neurons.md §2.4.2): written over `x` when nothing else holds it
/// (`neuron_fire_in_place_<E>`: each thread reads `x[t]` before it writes `s[t]`), into a buffer
/// of their own otherwise (`neuron_fire_<E>`); their fingerprint folded into `fingerprint` when
/// given, as [`forward_fingerprinted`] folds it. Errors as [`forward`] does.
pub fn forward_keeping_nothing<E: GpuElement>(
    device: &GpuDevice,
    x: CudaTensor<E>,
    config: &NeuronConfig,
    fingerprint: Option<&mut DeviceWord>,
) -> Result<CudaTensor<E>, GpuError> {
    let shape = x.shape().to_vec();
    let mut x = match x.into_unshared_buffer() {
        Ok(x) => x,
        // A shared `x` stays as it is: the spikes of the forward that keeps it, its context
        // (which holds only `x`) dropped.
        Err(x) => return Ok(fire(device, x, config, true, fingerprint)?.0),
    };
    fingerprinted(device, &shape, config, fingerprint, |launch| {
        if x.is_empty() {
            return Ok(());
        }
        launch_forward(
            device,
            ChargeBuffers::FireInPlace(x.slice_mut()),
            None,
            launch,
        )
    })?;
    spikes_tensor(x, &shape, config)
}

/// The spikes over `x`, and a context keeping `x` itself or the `h` the kernel also writes (over
/// `x` when nothing else holds it); the spikes' fingerprint folded into `fingerprint` when there
/// is one.
fn fire<E: GpuElement>(
    device: &GpuDevice,
    x: CudaTensor<E>,
    config: &NeuronConfig,
    keeps_input: bool,
    fingerprint: Option<&mut DeviceWord>,
) -> Result<(CudaTensor<E>, NeuronContext<E>), GpuError> {
    let shape = x.shape().to_vec();
    let (spikes, kept) = fingerprinted(device, &shape, config, fingerprint, |launch| {
        // SAFETY: the kernel writes every element before anything reads them.
        let mut spikes = unsafe { device.alloc::<E>(x.len()) }?;
        let kept = if keeps_input {
            if !x.is_empty() {
                let charge = ChargeBuffers::FireOnly(x.slice());
                launch_forward(device, charge, Some(spikes.slice_mut()), launch)?;
            }
            NeuronKept::Input(x)
        } else if x.is_empty() {
            // An empty buffer's slice holds one unused element: launch nothing over it; an
            // empty `x` is its own `h`.
            NeuronKept::Potentials(x)
        } else {
            let spikes = Some(spikes.slice_mut());
            NeuronKept::Potentials(charge_potentials(device, x, spikes, launch)?)
        };
        Ok((spikes, kept))
    })?;
    Ok((
        spikes_tensor(spikes, &shape, config)?,
        NeuronContext {
            kept,
            config: *config,
        },
    ))
}

/// The spikes of [`forward_keeping_nothing`] over the output of the training BatchNorm whose
/// context is `norm` (with its shift `beta`), unflattened by `fire.time_steps` to `[T, B, ...]`,
/// without that output: the kernel maps each element of the BatchNorm's input as it reads it,
/// with the bits `super::batch_norm::train_output` writes, and fires over it
/// (`neuron_fire_from_normalised_<E>[_input_<format>]`, docs/neurons.md §2.4.3). The fingerprint
/// is folded into `fire.fingerprint` when given, as [`forward_keeping_nothing`] folds it. Errors:
/// an evaluation context, a `beta` that is not `[C]`, `T` not dividing the input's first axis,
/// or an invalid configuration.
pub fn fire_from_normalised<E: GpuElement>(
    device: &GpuDevice,
    norm: &BatchNormContext<E>,
    beta: &CudaTensor<E>,
    fire: NeuronFire<'_, DeviceWord>,
) -> Result<CudaTensor<E>, GpuError> {
    let map = NormalisedMap::of("neuron_forward", norm, beta)?;
    let shape = time_split(norm.input.shape(), fire.time_steps)?;
    let len: usize = shape.iter().product();
    let config = fire.config;
    let spikes = fingerprinted(device, &shape, config, fire.fingerprint, |launch| {
        // SAFETY: the kernel writes every element before anything reads them.
        let mut spikes = unsafe { device.alloc::<E>(len) }?;
        if len > 0 {
            launch_fire_from_normalised(device, spikes.slice_mut(), &map, launch)?;
        }
        Ok(spikes)
    })?;
    spikes_tensor(spikes, &shape, config)
}

/// Launches `neuron_fire_from_normalised_<E>[_input_<format>]` writing `spikes`, `T N`
/// elements, from the BatchNorm `map`, which [`fire_from_normalised`] has checked.
fn launch_fire_from_normalised<E: GpuElement>(
    device: &GpuDevice,
    spikes: &mut CudaSlice<E>,
    map: &NormalisedMap<'_, E>,
    launch: Launch<'_>,
) -> Result<(), GpuError> {
    let params = KernelConfig::<E>::new(launch.config)?;
    let (input, input_format) = map.input(device, "neuron_forward")?;
    let name = format!("neuron_fire_from_normalised_{}{input_format}", E::SUFFIX);
    let function = device.function(&NEURON, &name)?;
    let stream = device.stream();
    let neurons = spikes.len() / launch.steps;
    let (n, t) = (neurons as i64, launch.steps as i32);
    let mut sum = launch.fingerprint_sum;
    let sum = sum.as_mut().map(|sum| sum.device_ptr_mut(stream));
    let sum_pointer: CUdeviceptr = sum.as_ref().map_or(0, |(pointer, _)| *pointer);
    let mut builder = stream.launch_builder(&function);
    builder.arg(spikes).arg(&sum_pointer);
    map.push(&input, &mut builder);
    params.push_shared(&mut builder, &n, &t);
    // SAFETY: the arguments match `neuron_fire_from_normalised_*` in neuron.cu: T N spikes of E,
    // the fingerprint sum (one u64) or null, the BatchNorm's input (T N elements, 16-bit only
    // with E = f32: `operand`), its C-element statistics and affine vectors, C and the elements
    // per channel and image.
    unsafe { builder.launch(launch_config(neurons)) }.map_err(GpuError::driver(
        "launching the neuron forward from a BatchNorm",
    ))?;
    Ok(())
}

/// Runs `charge` with the [`Launch`] of a forward over `shape` and, when `fingerprint` is given,
/// the word's slot for this tensor's sum ([`DeviceWord::sum_slot`]), which the kernel adds the
/// spikes' terms to and the word folds later. Errors on an invalid `config` or a shape with no
/// time axis.
fn fingerprinted<R>(
    device: &GpuDevice,
    shape: &[usize],
    config: &NeuronConfig,
    fingerprint: Option<&mut DeviceWord>,
    charge: impl FnOnce(Launch<'_>) -> Result<R, GpuError>,
) -> Result<R, GpuError> {
    config.validate()?;
    let (steps, _) = time_by_neurons(shape, "x")?;
    let fingerprint_sum = fingerprint
        .map(|word| word.sum_slot(device, shape))
        .transpose()?;
    charge(Launch {
        steps,
        config,
        fingerprint_sum,
    })
}

/// The context [`forward`] returns for `x`, without the spikes: the kernel writes `h` alone
/// (`neuron_forward_in_place_<E>` or `neuron_forward_<E>` with no spike buffer), over `x` when
/// nothing else holds it. For a neuron whose input is made again for its backward
/// (docs/neurons.md §2.4.2). Errors as [`forward`] does.
pub fn charge<E: GpuElement>(
    device: &GpuDevice,
    x: CudaTensor<E>,
    config: &NeuronConfig,
) -> Result<NeuronContext<E>, GpuError> {
    let shape = x.shape().to_vec();
    let h = fingerprinted(device, &shape, config, None, |launch| {
        if x.is_empty() {
            return Ok(x);
        }
        charge_potentials(device, x, None, launch)
    })?;
    Ok(NeuronContext {
        kept: NeuronKept::Potentials(h),
        config: *config,
    })
}

/// Charges and fires over `x` into `spikes` (when given), and returns `h`: written over `x`'s
/// buffer when nothing else holds it, into a buffer of its own otherwise.
fn charge_potentials<E: GpuElement>(
    device: &GpuDevice,
    x: CudaTensor<E>,
    mut spikes: Option<&mut CudaSlice<E>>,
    launch: Launch<'_>,
) -> Result<CudaTensor<E>, GpuError> {
    let shape = x.shape().to_vec();
    let h = match x.into_unshared_buffer() {
        Ok(mut x) => {
            let charge = ChargeBuffers::InPlace(x.slice_mut());
            launch_forward(device, charge, spikes.take(), launch)?;
            x
        }
        Err(x) => {
            // SAFETY: the kernel writes every element before anything reads them.
            let mut h = unsafe { device.alloc::<E>(x.len()) }?;
            let charge = ChargeBuffers::Apart {
                x: x.slice(),
                h: h.slice_mut(),
            };
            launch_forward(device, charge, spikes, launch)?;
            h
        }
    };
    CudaTensor::new(h, &shape)
}

/// The spikes of `shape`, marked as 0s and 1s under Heaviside firing.
fn spikes_tensor<E: GpuElement>(
    spikes: DeviceBuffer<E>,
    shape: &[usize],
    config: &NeuronConfig,
) -> Result<CudaTensor<E>, GpuError> {
    let spikes = CudaTensor::new(spikes, shape)?;
    Ok(match config.firing {
        Firing::Heaviside => spikes.into_spikes(),
        Firing::Smooth => spikes,
    })
}

/// [`forward`] into caller-owned `spikes` and `h` of `x`'s length.
pub fn forward_into<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaSlice<E>,
    spikes: &mut CudaSlice<E>,
    h: &mut CudaSlice<E>,
    time_steps: usize,
    config: &NeuronConfig,
) -> Result<(), GpuError> {
    let launch = Launch {
        steps: time_steps,
        config,
        fingerprint_sum: None,
    };
    launch_forward(device, ChargeBuffers::Apart { x, h }, Some(spikes), launch)
}

/// The input a forward launch reads and the `h` it writes, `T N` elements each: `x` alone
/// (`neuron_fire_<E>`, no `h`), one buffer that holds `x` and receives the spikes
/// (`neuron_fire_in_place_<E>`, no `h`), `x` and a buffer for `h` (`neuron_forward_<E>`), or one
/// buffer that holds `x` and receives `h` (`neuron_forward_in_place_<E>`).
enum ChargeBuffers<'a, E> {
    FireOnly(&'a CudaSlice<E>),
    FireInPlace(&'a mut CudaSlice<E>),
    Apart {
        x: &'a CudaSlice<E>,
        h: &'a mut CudaSlice<E>,
    },
    InPlace(&'a mut CudaSlice<E>),
}

/// What a forward launch runs over besides its buffers: `T`, the configuration, and the
/// fingerprint sum (one element) that the kernel adds the spikes' terms to, when there is one.
struct Launch<'a> {
    steps: usize,
    config: &'a NeuronConfig,
    fingerprint_sum: Option<CudaViewMut<'a, u64>>,
}

/// Launches the forward kernel that `charge` names, writing the spikes when given or over `x`
/// ([`ChargeBuffers::FireInPlace`]), and `h` unless it fires only, every buffer `T N` elements.
fn launch_forward<E: GpuElement>(
    device: &GpuDevice,
    charge: ChargeBuffers<'_, E>,
    spikes: Option<&mut CudaSlice<E>>,
    launch: Launch<'_>,
) -> Result<(), GpuError> {
    let params = KernelConfig::<E>::new(launch.config)?;
    let (x_len, h_len, kernel) = match &charge {
        ChargeBuffers::FireOnly(x) => (x.len(), x.len(), "neuron_fire"),
        ChargeBuffers::FireInPlace(x) => (x.len(), x.len(), "neuron_fire_in_place"),
        ChargeBuffers::Apart { x, h } => (x.len(), h.len(), "neuron_forward"),
        ChargeBuffers::InPlace(x) => (x.len(), x.len(), "neuron_forward_in_place"),
    };
    let neurons = check_len("neuron_forward", "x", x_len, launch.steps)?;
    let spikes_len = spikes.as_ref().map_or(x_len, |spikes| spikes.len());
    if spikes_len != x_len || h_len != x_len {
        return Err(shape_error(
            "neuron_forward",
            format!("x has {x_len} elements but spikes {spikes_len} and h {h_len}"),
        ));
    }
    if neurons == 0 {
        return Ok(());
    }
    let function = device.function(&NEURON, &format!("{kernel}_{}", E::SUFFIX))?;
    let stream = device.stream();
    let (n, t) = (neurons as i64, launch.steps as i32);
    // Null pointers for no spikes and no sum to add to; the guards order the launch after the
    // buffers' last uses.
    let spikes = spikes.map(|spikes| spikes.device_ptr_mut(stream));
    let spikes_pointer: CUdeviceptr = spikes.as_ref().map_or(0, |(pointer, _)| *pointer);
    let mut sum = launch.fingerprint_sum;
    let sum = sum.as_mut().map(|sum| sum.device_ptr_mut(stream));
    let sum_pointer: CUdeviceptr = sum.as_ref().map_or(0, |(pointer, _)| *pointer);
    let mut builder = stream.launch_builder(&function);
    match charge {
        ChargeBuffers::FireOnly(x) => builder.arg(x).arg(&spikes_pointer),
        ChargeBuffers::FireInPlace(x_then_spikes) => builder.arg(x_then_spikes),
        ChargeBuffers::Apart { x, h } => builder.arg(x).arg(&spikes_pointer).arg(h),
        ChargeBuffers::InPlace(x_then_h) => builder.arg(x_then_h).arg(&spikes_pointer),
    };
    builder.arg(&sum_pointer);
    params.push_shared(&mut builder, &n, &t);
    // SAFETY: the argument list matches `neuron_fire_<E>`, `neuron_fire_in_place_<E>`,
    // `neuron_forward_<E>` or `neuron_forward_in_place_<E>` in neuron.cu (no spikes argument for
    // `neuron_fire_in_place_<E>`, whose spikes are `x`), every buffer holds T * N elements of E (the
    // spikes, when not null), and the fingerprint sum, when not null, one u64.
    unsafe { builder.launch(launch_config(neurons)) }
        .map_err(GpuError::driver("launching the neuron forward"))?;
    Ok(())
}

/// The most time steps whose `h` the backward from a kept input charges into each thread's own
/// memory (`LOCAL_STEPS` in neuron.cu), so that it may write `dL/dx` over `dL/ds`.
const NEURON_LOCAL_STEPS: usize = 16;

/// The backward of docs/neurons.md §2.4: `dL/dx` `[T, ...]` from `dL/ds` and the forward's `h`,
/// kept or charged again from the kept input. With `grad_spikes` held by nothing else, `dL/dx`
/// is written over it (`neuron_backward_in_place_<E>`, or from the input
/// `neuron_backward_from_input_in_place_<E>`, which charges `h` into each thread's own memory
/// for `T` up to [`NEURON_LOCAL_STEPS`]): each thread reads an element before it writes it.
/// Otherwise `dL/dx` gets a buffer of its own, which also holds the `h` charged from a kept
/// input. Errors, as the reference: an invalid `config`, a `config` other than the forward's, or
/// `grad_spikes` not shaped like the forward's input.
pub fn backward<E: GpuElement>(
    device: &GpuDevice,
    grad_spikes: CudaTensor<E>,
    context: &NeuronContext<E>,
    config: &NeuronConfig,
) -> Result<CudaTensor<E>, GpuError> {
    let (steps, _) = check_neuron_backward(
        config,
        &context.config,
        grad_spikes.shape(),
        context.kept.tensor().shape(),
    )?;
    let shape = grad_spikes.shape().to_vec();
    if grad_spikes.is_empty() {
        return CudaTensor::new(device.alloc_zeros::<E>(0)?, &shape);
    }
    let (kernel, kept, in_place) = match &context.kept {
        NeuronKept::Potentials(h) => ("neuron_backward", h, true),
        NeuronKept::Input(x) => ("neuron_backward_from_input", x, steps <= NEURON_LOCAL_STEPS),
    };
    over_or_beside(device, grad_spikes, in_place, |buffers| {
        launch_backward(device, kernel, buffers, kept.slice(), steps, config)
    })
}

/// `dL/dx` from a backward `launch` over `grad_spikes`: written over `grad_spikes` when `in_place`
/// allows and nothing else holds it, else into a buffer of its own.
fn over_or_beside<E: GpuElement>(
    device: &GpuDevice,
    mut grad_spikes: CudaTensor<E>,
    in_place: bool,
    launch: impl FnOnce(GradientBuffers<'_, E>) -> Result<(), GpuError>,
) -> Result<CudaTensor<E>, GpuError> {
    let shape = grad_spikes.shape().to_vec();
    if in_place {
        match grad_spikes.into_unshared_buffer() {
            Ok(mut grad) => {
                launch(GradientBuffers::InPlace(grad.slice_mut()))?;
                return CudaTensor::new(grad, &shape);
            }
            Err(shared) => grad_spikes = shared,
        }
    }
    // SAFETY: the kernel writes every element before anything reads them.
    let mut grad_x = unsafe { device.alloc::<E>(grad_spikes.len()) }?;
    launch(GradientBuffers::Apart {
        grad_spikes: grad_spikes.slice(),
        grad_x: grad_x.slice_mut(),
    })?;
    CudaTensor::new(grad_x, &shape)
}

/// [`backward`] from `dL/ds` as 16-bit patterns (a 16-bit convolution's `dx`, handed over by
/// `conv_batch_norm::spiking_backward`), each widened as the kernel reads it: the bits
/// [`backward`] gives for the widened `dL/ds`, with no `f32` copy of it. The context is handed
/// over too: `dL/dx` is written over the kept `h` when nothing else holds it
/// (`neuron_backward_over_potentials_f32_from_<format>`), else into a buffer of its own, which
/// also holds the `h` charged from a kept input. Errors as [`backward`] does, `shape` standing
/// for `dL/ds`'s.
pub fn backward_from_half<E: GpuElement>(
    device: &GpuDevice,
    grad_spikes: HalfBits,
    shape: &[usize],
    context: NeuronContext<E>,
    config: &NeuronConfig,
) -> Result<CudaTensor<E>, GpuError> {
    precision::require_f32::<E>(grad_spikes.format)?;
    let kept_shape = context.kept.tensor().shape();
    let (steps, _) = check_neuron_backward(config, &context.config, shape, kept_shape)?;
    if grad_spikes.bits.len() != context.kept.tensor().len() {
        let detail = format!(
            "internal error: {} 16-bit gradients for {shape:?}",
            grad_spikes.bits.len()
        );
        return Err(shape_error("neuron_backward", detail));
    }
    let (kernel, kept) = match context.kept {
        NeuronKept::Potentials(h) => match h.into_unshared_buffer() {
            Ok(mut h) => {
                let target = HalfGradTarget::OverPotentials(h.slice_mut());
                let kernel = "neuron_backward_over_potentials";
                launch_backward_from_half(device, kernel, &grad_spikes, target, steps, config)?;
                return CudaTensor::new(h, shape);
            }
            Err(h) => ("neuron_backward", h),
        },
        NeuronKept::Input(x) => ("neuron_backward_from_input", x),
    };
    // SAFETY: the kernel writes every element before anything reads them.
    let mut grad_x = unsafe { device.alloc::<E>(kept.len()) }?;
    let target = HalfGradTarget::Apart {
        kept: kept.slice(),
        grad_x: grad_x.slice_mut(),
    };
    launch_backward_from_half(device, kernel, &grad_spikes, target, steps, config)?;
    CudaTensor::new(grad_x, shape)
}

/// Whether [`backward_from_normalised`] and [`backward_from_half_normalised`] run for
/// `time_steps`: their kernels charge `h` into each thread's own memory, which holds
/// [`NEURON_LOCAL_STEPS`].
pub fn charges_from_normalised(time_steps: usize) -> bool {
    time_steps <= NEURON_LOCAL_STEPS
}

/// The backward of a neuron that kept nothing because its input was the output of the training
/// BatchNorm whose context is `norm` (docs/neurons.md §2.4.2): the kernel makes that output
/// again from `norm`'s input and constants and `beta` as it reads it, with the bits of
/// [`super::batch_norm::train_output`], and charges `h` into each thread's own memory, so
/// neither is written: the bits of `charge` then [`backward`], one pass over `dL/ds`, the input
/// and `dL/dx`. `dL/dx` is written over `grad_spikes` when nothing else holds it, else into a
/// buffer of its own. Errors: `time_steps` past [`charges_from_normalised`], an evaluation
/// context, a `beta` that is not `[C]`, `grad_spikes` not `norm`'s input split into
/// `[time_steps, B, ...]`, or an invalid `config`.
pub fn backward_from_normalised<E: GpuElement>(
    device: &GpuDevice,
    grad_spikes: CudaTensor<E>,
    (norm, beta): (&BatchNormContext<E>, &CudaTensor<E>),
    time_steps: usize,
    config: &NeuronConfig,
) -> Result<CudaTensor<E>, GpuError> {
    let source = NormalisedSource::of(norm, beta, grad_spikes.shape(), time_steps, config)?;
    over_or_beside(device, grad_spikes, true, |buffers| {
        let gradients = NormalisedGradients::Full(buffers);
        launch_backward_from_normalised(device, gradients, &source, config)
    })
}

/// [`backward_from_normalised`] from `dL/ds` as 16-bit patterns of `shape` (a 16-bit
/// convolution's `dx`, handed over by `conv_batch_norm::spiking_backward`), each widened as the
/// kernel reads it, into a new `dL/dx`: the bits [`backward_from_normalised`] gives for the
/// widened `dL/ds`. Errors as it does.
pub fn backward_from_half_normalised<E: GpuElement>(
    device: &GpuDevice,
    grad_spikes: HalfBits,
    shape: &[usize],
    (norm, beta): (&BatchNormContext<E>, &CudaTensor<E>),
    config: &NeuronConfig,
) -> Result<CudaTensor<E>, GpuError> {
    precision::require_f32::<E>(grad_spikes.format)?;
    let time_steps = shape.first().copied().unwrap_or(0);
    let source = NormalisedSource::of(norm, beta, shape, time_steps, config)?;
    if grad_spikes.bits.len() != source.len {
        let detail = format!(
            "internal error: {} 16-bit gradients for {shape:?}",
            grad_spikes.bits.len()
        );
        return Err(shape_error("neuron_backward", detail));
    }
    // SAFETY: the kernel writes every element before anything reads them.
    let mut grad_x = unsafe { device.alloc::<E>(source.len) }?;
    let buffers = NormalisedGradients::Half {
        grad_spikes: &grad_spikes,
        grad_x: grad_x.slice_mut(),
    };
    launch_backward_from_normalised(device, buffers, &source, config)?;
    CudaTensor::new(grad_x, shape)
}

/// What a backward from a BatchNorm's output made again reads of the BatchNorm (its
/// [`NormalisedMap`]), checked against `dL/ds`'s shape.
struct NormalisedSource<'a, E> {
    map: NormalisedMap<'a, E>,
    time_steps: usize,
    /// `T N`, the elements of `dL/ds`.
    len: usize,
}

impl<'a, E: GpuElement> NormalisedSource<'a, E> {
    fn of(
        norm: &'a BatchNormContext<E>,
        beta: &'a CudaTensor<E>,
        grad_shape: &[usize],
        time_steps: usize,
        config: &NeuronConfig,
    ) -> Result<Self, GpuError> {
        const OP: &str = "neuron_backward";
        let map = NormalisedMap::of(OP, norm, beta)?;
        let (steps, neurons) =
            check_normalised_neuron_backward(config, grad_shape, norm.input.shape(), time_steps)?;
        if !charges_from_normalised(steps) {
            let detail = format!(
                "T = {steps} is more than the {NEURON_LOCAL_STEPS} steps a thread charges; \
                 make the BatchNorm's output again and charge it (neuron_context)"
            );
            return Err(shape_error(OP, detail));
        }
        Ok(NormalisedSource {
            map,
            time_steps: steps,
            len: steps * neurons,
        })
    }
}

/// Where a backward from a BatchNorm's output made again reads `dL/ds` and writes `dL/dx`, each
/// `T N` elements: `dL/ds` in `E`, apart or over one buffer, or in 16 bits into a new `dL/dx`.
enum NormalisedGradients<'a, E> {
    Full(GradientBuffers<'a, E>),
    Half {
        grad_spikes: &'a HalfBits,
        grad_x: &'a mut CudaSlice<E>,
    },
}

/// Launches `neuron_backward_from_normalised[_in_place]_<E>[_from_<format>][_input_<format>]`
/// over `gradients` and `source`, whose lengths the callers have checked.
fn launch_backward_from_normalised<E: GpuElement>(
    device: &GpuDevice,
    gradients: NormalisedGradients<'_, E>,
    source: &NormalisedSource<'_, E>,
    config: &NeuronConfig,
) -> Result<(), GpuError> {
    let (input, input_format) = source.map.input(device, "neuron_backward")?;
    let (in_place, from) = match &gradients {
        NormalisedGradients::Full(GradientBuffers::Apart { .. }) => ("", String::new()),
        NormalisedGradients::Full(GradientBuffers::InPlace(_)) => ("_in_place", String::new()),
        NormalisedGradients::Half { grad_spikes, .. } => {
            ("", format!("_from_{}", grad_spikes.format.name()))
        }
    };
    let name = format!(
        "neuron_backward_from_normalised{in_place}_{}{from}{input_format}",
        E::SUFFIX
    );
    let (len, steps) = (source.len, source.time_steps);
    let Some(kernel) = BackwardKernel::<E>::new(device, &name, len, steps, config)? else {
        return Ok(());
    };
    // SAFETY: the buffers match the kernel's (neuron.cu: `grad_spikes, grad_x` or `grad`, then
    // `x, mean, inv_std, gamma, beta, channels, inner`): T N elements each for the gradients and
    // the input (a 16-bit one only with E = f32, `operand`), C for the four vectors (checked by
    // `NormalisedMap::of`).
    unsafe {
        kernel.launch(device, |launch| {
            match gradients {
                NormalisedGradients::Full(GradientBuffers::Apart {
                    grad_spikes,
                    grad_x,
                }) => launch.arg(grad_spikes).arg(grad_x),
                NormalisedGradients::Full(GradientBuffers::InPlace(grad)) => launch.arg(grad),
                NormalisedGradients::Half {
                    grad_spikes,
                    grad_x,
                } => launch.arg(grad_spikes.bits.slice()).arg(grad_x),
            };
            source.map.push(&input, launch);
        })
    }
}

/// [`backward`] into a caller-owned `grad_x` of `h`'s length.
pub fn backward_into<E: GpuElement>(
    device: &GpuDevice,
    grad_spikes: &CudaSlice<E>,
    h: &CudaSlice<E>,
    grad_x: &mut CudaSlice<E>,
    time_steps: usize,
    config: &NeuronConfig,
) -> Result<(), GpuError> {
    let buffers = GradientBuffers::Apart {
        grad_spikes,
        grad_x,
    };
    launch_backward(device, "neuron_backward", buffers, h, time_steps, config)
}

/// The gradients a backward launch reads and writes, `T N` elements each: `dL/ds` and a
/// buffer for `dL/dx`, or one buffer that holds `dL/ds` and receives `dL/dx`.
enum GradientBuffers<'a, E> {
    Apart {
        grad_spikes: &'a CudaSlice<E>,
        grad_x: &'a mut CudaSlice<E>,
    },
    InPlace(&'a mut CudaSlice<E>),
}

/// Where a backward from 16-bit `dL/ds` reads `h` (or the kept input) and writes `dL/dx`, each
/// `T N` elements: apart, or one buffer that holds `h` and receives `dL/dx`.
enum HalfGradTarget<'a, E> {
    Apart {
        kept: &'a CudaSlice<E>,
        grad_x: &'a mut CudaSlice<E>,
    },
    OverPotentials(&'a mut CudaSlice<E>),
}

/// Launches `{kernel}_f32_from_{format}` over `dL/ds` in 16 bits and `target`, whose lengths
/// the caller has checked against `grad_spikes`.
fn launch_backward_from_half<E: GpuElement>(
    device: &GpuDevice,
    kernel: &str,
    grad_spikes: &HalfBits,
    target: HalfGradTarget<'_, E>,
    time_steps: usize,
    config: &NeuronConfig,
) -> Result<(), GpuError> {
    let name = format!("{kernel}_{}_from_{}", E::SUFFIX, grad_spikes.format.name());
    let len = grad_spikes.bits.len();
    let Some(kernel) = BackwardKernel::<E>::new(device, &name, len, time_steps, config)? else {
        return Ok(());
    };
    // SAFETY: the buffers match those of `neuron_backward_f32_from_<format>`,
    // `neuron_backward_from_input_f32_from_<format>` or
    // `neuron_backward_over_potentials_f32_from_<format>` in neuron.cu (E is f32:
    // `require_f32`), each T * N elements.
    unsafe {
        kernel.launch(device, |launch| {
            launch.arg(grad_spikes.bits.slice());
            match target {
                HalfGradTarget::Apart { kept, grad_x } => launch.arg(kept).arg(grad_x),
                HalfGradTarget::OverPotentials(h_then_grad_x) => launch.arg(h_then_grad_x),
            };
        })
    }
}

/// A backward kernel of neuron.cu ready to launch, one thread per neuron, with the scalar
/// arguments that follow the buffers in each of them.
struct BackwardKernel<E> {
    function: CudaFunction,
    params: KernelConfig<E>,
    neurons: usize,
    n: i64,
    t: i32,
}

impl<E: GpuElement> BackwardKernel<E> {
    /// The kernel `name` over `len = T N` elements; `None` when there are no neurons. Errors
    /// unless `T` divides `len`, or on an invalid `config`.
    fn new(
        device: &GpuDevice,
        name: &str,
        len: usize,
        time_steps: usize,
        config: &NeuronConfig,
    ) -> Result<Option<Self>, GpuError> {
        let params = KernelConfig::<E>::new(config)?;
        let neurons = check_len("neuron_backward", "grad_spikes", len, time_steps)?;
        if neurons == 0 {
            return Ok(None);
        }
        Ok(Some(BackwardKernel {
            function: device.function(&NEURON, name)?,
            params,
            neurons,
            n: neurons as i64,
            t: time_steps as i32,
        }))
    }

    /// Launches the kernel with the buffers `push_buffers` pushes, then `n, time_steps, kind,
    /// decay_input, tau, v_threshold, surrogate, alpha, smooth, detach_reset`.
    ///
    /// # Safety
    /// The buffers pushed must be the kernel's, in its order, each `T N` elements of their type.
    unsafe fn launch<'a>(
        &'a self,
        device: &'a GpuDevice,
        push_buffers: impl FnOnce(&mut LaunchArgs<'a>),
    ) -> Result<(), GpuError> {
        let mut launch = device.stream().launch_builder(&self.function);
        push_buffers(&mut launch);
        self.params.push_shared(&mut launch, &self.n, &self.t);
        launch.arg(&self.params.detach_reset);
        // SAFETY: the scalars match every backward kernel's; the buffers are the caller's
        // obligation.
        unsafe { launch.launch(launch_config(self.neurons)) }
            .map_err(GpuError::driver("launching neuron_backward"))?;
        Ok(())
    }
}

/// Launches the backward `kernel` (with `_in_place` for [`GradientBuffers::InPlace`]) over the
/// gradients and `h` (or the kept input `x`), each `T N` elements.
fn launch_backward<E: GpuElement>(
    device: &GpuDevice,
    kernel: &str,
    gradients: GradientBuffers<'_, E>,
    h: &CudaSlice<E>,
    time_steps: usize,
    config: &NeuronConfig,
) -> Result<(), GpuError> {
    let (len, grad_x_len, in_place) = match &gradients {
        GradientBuffers::Apart {
            grad_spikes,
            grad_x,
        } => (grad_spikes.len(), grad_x.len(), ""),
        GradientBuffers::InPlace(grad) => (grad.len(), grad.len(), "_in_place"),
    };
    check_len("neuron_backward", "grad_spikes", len, time_steps)?;
    if h.len() != len || grad_x_len != len {
        return Err(shape_error(
            "neuron_backward",
            format!(
                "grad_spikes has {len} elements but h {} and grad_x {grad_x_len}",
                h.len()
            ),
        ));
    }
    let name = format!("{kernel}{in_place}_{}", E::SUFFIX);
    let Some(kernel) = BackwardKernel::<E>::new(device, &name, len, time_steps, config)? else {
        return Ok(());
    };
    // SAFETY: the buffers match those of `neuron_backward_<E>`, `neuron_backward_from_input_<E>`
    // or their `_in_place` twins in neuron.cu, each T * N elements of E, and the caller launches
    // `neuron_backward_from_input_in_place_<E>` for T <= NEURON_LOCAL_STEPS only.
    unsafe {
        kernel.launch(device, |launch| {
            match gradients {
                GradientBuffers::Apart {
                    grad_spikes,
                    grad_x,
                } => launch.arg(grad_spikes).arg(h).arg(grad_x),
                GradientBuffers::InPlace(grad) => launch.arg(grad).arg(h),
            };
        })
    }
}
