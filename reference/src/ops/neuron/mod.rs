//! Multi-step IF/LIF neurons with hard reset and surrogate gradients (docs/neurons.md §2.2-2.4).
//!
//! The input `x [T, ...]` is read as `T` rows of `N` neurons (the trailing axes flattened). Each
//! neuron runs its own sequential loop over `t`; neurons are independent, so the work is split
//! into contiguous chunks of `NEURON_CHUNK` neurons that rayon runs in parallel. Within a chunk
//! the loop is `for t { for n in chunk }` with the chunk's state (`v` forward, `dL/dh[t+1]`
//! backward) in a small buffer, so every pass reads and writes whole contiguous rows: the kernels
//! are memory-bound, and the bits of every result are the same whatever the thread count.
//!
//! All arithmetic is done in the element type `E`. The surrogate is inlined with its constants
//! hoisted and cast to `E` once, in the same operation order as [`Surrogate::derivative`] and
//! [`Surrogate::primitive`], so in `f64` it is bitwise equal to them:
//!
//! * ATan: `u = (pi/2 alpha) z`, `psi = alpha / (2 (1 + u u))`, `g = atan(u) / pi + 1/2`;
//! * Sigmoid: `sig = 1 / (1 + exp((-alpha) z))`, `psi = (alpha sig) (1 - sig)`, `g = sig`.
//!
//! In `f32` the sigmoid's `exp` is [`exp::exp_f32`], straight-line arithmetic in `f64` (within one
//! unit in the last place of libm's, docs/neurons.md §2.3.1), so that the backward loop vectorises;
//! it runs compiled for the widest vector instructions the CPU has, with the same bits on every
//! path.
//!
//! Firing modes, the reset rule and the surrogate are dispatched once per call into separately
//! compiled loops; the inner loops have no data-dependent branches (the Heaviside step is a select).

use std::mem::MaybeUninit;

use ndarray::{ArrayView2, ArrayViewMut2, Axis, IxDyn, Zip};
use rayon::prelude::*;

use crate::contract::shapes::{check_neuron_backward, time_by_neurons};
use crate::contract::{
    DType, Element, Firing, NeuronConfig, NeuronKept, NeuronKind, OpError, Result, Surrogate,
};
use crate::cpu::CpuTensor;
use crate::ops::simd::{self, Kernel};

mod exp;

const OP: &str = "neuron";

/// Neurons per parallel task: the chunk's state buffer (`NEURON_CHUNK` elements) stays in L1.
const NEURON_CHUNK: usize = 2048;

/// What the neuron backward needs: the charged membrane potentials `h [T, ...]` (shaped like the
/// input) or the input they are charged from ([`NeuronKept`]), and the configuration the forward
/// ran with.
///
/// The spikes are not stored: `s[t]` is a function of `h[t]` alone (`Heaviside(h - V_th)` or
/// `g(h - V_th)`), and [`backward`] recomputes it with the same arithmetic in `E` as [`forward`],
/// so it is bitwise the forward's value. The context therefore holds `T N` elements, a third of
/// SpikingJelly's `3 T N` buffer (docs/neurons.md §2.4, "Saved for backward"), or none of its own
/// when it keeps the caller's input (docs/neurons.md §2.4.1).
#[derive(Clone, Debug)]
pub struct NeuronContext<E> {
    /// `h[t] = charge(v[t-1], x[t])` before firing and reset, or `x`; shape `[T, ...]`.
    pub kept: NeuronKept<CpuTensor<E>>,
    /// The configuration of the forward; [`backward`] must be called with the same one.
    pub config: NeuronConfig,
}

/// A multi-step neuron layer over `x [T, ...]` (T >= 1), every neuron starting from `v[-1] = 0`
/// (docs/neurons.md §2.2), for `t = 0..T-1`:
///
/// ```text
/// h[t] = v[t-1] + x[t]                       IF
///      = v[t-1] + (x[t] - v[t-1]) / tau       LIF with decay_input
///      = v[t-1] (1 - 1/tau) + x[t]            LIF without decay_input
/// s[t] = Heaviside(h[t] - V_th)   (1 if h[t] >= V_th, else 0)   with Firing::Heaviside
///      = g(h[t] - V_th)           (the surrogate's primitive)   with Firing::Smooth
/// v[t] = (1 - s[t]) h[t]          (hard reset to V_reset = 0)
/// ```
///
/// The charge is evaluated exactly as SpikingJelly 0.0.0.0.12's torch backend writes it
/// (`LIFNode.neuronal_charge` with `v_reset = 0`, `tau` and `1 - 1/tau` rounded to `E` once), so
/// spikes match the official code bit for bit. Returns the spikes `s [T, ...]` and the context
/// holding `h`.
///
/// Errors: an invalid `config` ([`NeuronConfig::validate`]), or `x` with no axis or `T = 0`.
pub fn forward<E: Element>(
    x: &CpuTensor<E>,
    config: &NeuronConfig,
) -> Result<(CpuTensor<E>, NeuronContext<E>)> {
    let (spikes, h) = charge_and_fire(x, config)?;
    let kept = NeuronKept::Potentials(h);
    Ok((
        spikes,
        NeuronContext {
            kept,
            config: *config,
        },
    ))
}

/// [`forward`] whose context keeps `x` itself (shared, not copied) instead of `h`; [`backward`]
/// charges `h` from it again, bit for bit (docs/neurons.md §2.4.1). The potentials this forward
/// charges are dropped before it returns.
pub fn forward_keeping_input<E: Element>(
    x: &CpuTensor<E>,
    config: &NeuronConfig,
) -> Result<(CpuTensor<E>, NeuronContext<E>)> {
    let (spikes, _) = charge_and_fire(x, config)?;
    let kept = NeuronKept::Input(x.clone());
    Ok((
        spikes,
        NeuronContext {
            kept,
            config: *config,
        },
    ))
}

/// The spikes `s` and the potentials `h` of [`forward`] over `x`.
fn charge_and_fire<E: Element>(
    x: &CpuTensor<E>,
    config: &NeuronConfig,
) -> Result<(CpuTensor<E>, CpuTensor<E>)> {
    config.validate()?;
    let (steps, neurons) = time_by_neurons(x.shape(), "x")?;
    let x = x.as_standard_layout();
    let x2 = x
        .view()
        .into_shape_with_order((steps, neurons))
        .map_err(|e| OpError::shape(OP, format!("cannot view x as [T, N]: {e}")))?;
    let mut h = ndarray::Array2::<E>::uninit((steps, neurons));
    let mut s = ndarray::Array2::<E>::uninit((steps, neurons));

    let kernel = ForwardKernel {
        x: x2,
        h: h.view_mut(),
        s: s.view_mut(),
    };
    match config.kind {
        NeuronKind::If => kernel.run_firing(config, |v, x| v + x),
        NeuronKind::Lif {
            tau,
            decay_input: true,
        } => {
            let tau = E::cast(tau);
            kernel.run_firing(config, move |v, x| v + (x - v) / tau)
        }
        NeuronKind::Lif {
            tau,
            decay_input: false,
        } => {
            let keep = E::cast(1.0 - 1.0 / tau);
            kernel.run_firing(config, move |v, x| v * keep + x)
        }
    }

    // SAFETY: the kernel's zip covers every `(t, n)` of `h` and `s` and writes each once.
    let (h, s) = unsafe { (h.assume_init(), s.assume_init()) };
    let shape = IxDyn(x.shape());
    Ok((into_shape(s, &shape)?, into_shape(h, &shape)?))
}

/// Backward through time of [`forward`] (docs/neurons.md §2.4), with `gV = dL/dv_seq = 0`, per neuron:
///
/// ```text
/// gH = 0
/// for t = T-1 down to 0:
///     psi   = psi(h[t] - V_th)                        (the surrogate derivative, docs/neurons.md §2.3)
///     dv_dh = 1 - s[t]                                (detach_reset = true)
///           = 1 - s[t] - h[t] psi                     (detach_reset = false; V_reset = 0)
///     gH    = gS[t] psi + (k gH) dv_dh                (dL/dh[t])
///     gX[t] = r gH                                    (dL/dx[t])
/// ```
///
/// `s[t]` is recomputed from the stored `h[t]`, or `h` charged again from the kept input (see
/// [`NeuronContext`]). With
/// [`Firing::Smooth`] and `detach_reset = false` this is the exact gradient of the smooth
/// forward. Returns `dL/dx`, shaped like `x`.
///
/// Errors: an invalid `config`, a `config` other than the forward's, or `grad_spikes` not shaped
/// like the forward's input.
pub fn backward<E: Element>(
    grad_spikes: &CpuTensor<E>,
    context: &NeuronContext<E>,
    config: &NeuronConfig,
) -> Result<CpuTensor<E>> {
    let (steps, neurons) = check_neuron_backward(
        config,
        &context.config,
        grad_spikes.shape(),
        context.kept.tensor().shape(),
    )?;
    let charged;
    let h = match &context.kept {
        NeuronKept::Potentials(h) => h,
        NeuronKept::Input(x) => {
            charged = charge_and_fire(x, config)?.1;
            &charged
        }
    };
    let g = grad_spikes.as_standard_layout();
    let h = h.as_standard_layout();
    let g2 = g
        .view()
        .into_shape_with_order((steps, neurons))
        .map_err(|e| OpError::shape(OP, format!("cannot view grad_spikes as [T, N]: {e}")))?;
    let h2 = h
        .view()
        .into_shape_with_order((steps, neurons))
        .map_err(|e| OpError::shape(OP, format!("cannot view h as [T, N]: {e}")))?;
    let mut gx = ndarray::Array2::<E>::uninit((steps, neurons));

    let (k, r) = config.charge_coefficients();
    let kernel = BackwardKernel {
        h: h2,
        g: g2,
        gx: gx.view_mut(),
        k: E::cast(k),
        r: E::cast(r),
    };
    let v_th = E::cast(config.v_threshold);
    match config.surrogate {
        Surrogate::ATan { alpha } => dispatch_backward(kernel, ATan::<E>::new(alpha), config, v_th),
        Surrogate::Sigmoid { alpha } => {
            dispatch_backward(kernel, Sigmoid::<E>::new(alpha), config, v_th)
        }
    }
    // SAFETY: the kernel's chunks and their rows cover every `(t, n)` of `gx` and write each once.
    let gx = unsafe { gx.assume_init() };
    into_shape(gx, &IxDyn(grad_spikes.shape()))
}

fn into_shape<E: Element>(a: ndarray::Array2<E>, shape: &IxDyn) -> Result<CpuTensor<E>> {
    a.into_shape_with_order(shape.clone())
        .map(|a| a.into_shared())
        .map_err(|e| OpError::shape(OP, format!("cannot reshape the result: {e}")))
}

/// `1` if `h >= V_th`, else `0` (docs/neurons.md §2.2: a spike at equality).
#[inline(always)]
fn heaviside<E: Element>(h: E, v_th: E) -> E {
    if h >= v_th { E::one() } else { E::zero() }
}

/// A surrogate with its constants in `E`.
trait SurrogateFn<E>: Copy + Send + Sync {
    /// `psi(z)`.
    fn derivative(&self, z: E) -> E;
    /// `g(z)`.
    fn primitive(&self, z: E) -> E;
}

/// ATan: `c = pi/2 alpha` (rounded once from `f64`), `u = c z`.
#[derive(Clone, Copy)]
struct ATan<E> {
    alpha: E,
    c: E,
    pi: E,
    half: E,
    two: E,
}

impl<E: Element> ATan<E> {
    fn new(alpha: f64) -> Self {
        ATan {
            alpha: E::cast(alpha),
            c: E::cast(std::f64::consts::FRAC_PI_2 * alpha),
            pi: E::cast(std::f64::consts::PI),
            half: E::cast(0.5),
            two: E::cast(2.0),
        }
    }
}

impl<E: Element> SurrogateFn<E> for ATan<E> {
    #[inline(always)]
    fn derivative(&self, z: E) -> E {
        let u = self.c * z;
        self.alpha / (self.two * (E::one() + u * u))
    }

    #[inline(always)]
    fn primitive(&self, z: E) -> E {
        (self.c * z).atan() / self.pi + self.half
    }
}

/// Sigmoid: `sig = 1 / (1 + exp((-alpha) z))`.
#[derive(Clone, Copy)]
struct Sigmoid<E> {
    alpha: E,
    neg_alpha: E,
}

impl<E: Element> Sigmoid<E> {
    fn new(alpha: f64) -> Self {
        Sigmoid {
            alpha: E::cast(alpha),
            neg_alpha: E::cast(-alpha),
        }
    }
}

impl<E: Element> SurrogateFn<E> for Sigmoid<E> {
    #[inline(always)]
    fn derivative(&self, z: E) -> E {
        let sig = self.primitive(z);
        self.alpha * sig * (E::one() - sig)
    }

    #[inline(always)]
    fn primitive(&self, z: E) -> E {
        E::one() / (E::one() + sigmoid_exp(self.neg_alpha * z))
    }
}

/// `e^x` for the sigmoid: [`exp::exp_f32`] in `f32`, libm's `exp` in `f64` (the oracle's type,
/// whose results the fixtures pin).
#[inline(always)]
fn sigmoid_exp<E: Element>(x: E) -> E {
    match E::DTYPE {
        DType::F32 => E::cast(f64::from(exp::exp_f32(x.widen() as f32))),
        DType::F64 => x.exp(),
    }
}

/// The forward's operands; `h` and `s` start uninitialised and [`ForwardKernel::run`] writes every
/// element of both once (no zero-filling of two activation-sized buffers per call).
struct ForwardKernel<'a, E> {
    x: ArrayView2<'a, E>,
    h: ArrayViewMut2<'a, MaybeUninit<E>>,
    s: ArrayViewMut2<'a, MaybeUninit<E>>,
}

impl<E: Element> ForwardKernel<'_, E> {
    /// Runs the forward with `charge(v, x) = h` and the firing function of `config`.
    fn run_firing(self, config: &NeuronConfig, charge: impl Fn(E, E) -> E + Sync) {
        let v_th = E::cast(config.v_threshold);
        match (config.firing, config.surrogate) {
            (Firing::Heaviside, _) => self.run(charge, move |h| heaviside(h, v_th)),
            (Firing::Smooth, Surrogate::ATan { alpha }) => {
                let sur = ATan::<E>::new(alpha);
                self.run(charge, move |h| sur.primitive(h - v_th))
            }
            (Firing::Smooth, Surrogate::Sigmoid { alpha }) => {
                let sur = Sigmoid::<E>::new(alpha);
                self.run(charge, move |h| sur.primitive(h - v_th))
            }
        }
    }

    /// Runs the forward with `charge(v, x) = h` and `fire(h) = s`, chunk by chunk in parallel.
    fn run(self, charge: impl Fn(E, E) -> E + Sync, fire: impl Fn(E) -> E + Sync) {
        let ForwardKernel { x, mut h, mut s } = self;
        x.axis_chunks_iter(Axis(1), NEURON_CHUNK)
            .into_par_iter()
            .zip(h.axis_chunks_iter_mut(Axis(1), NEURON_CHUNK))
            .zip(s.axis_chunks_iter_mut(Axis(1), NEURON_CHUNK))
            .for_each(|((x, mut h), mut s)| {
                let mut v = vec![E::zero(); x.ncols()];
                for ((x, h), s) in x
                    .outer_iter()
                    .zip(h.outer_iter_mut())
                    .zip(s.outer_iter_mut())
                {
                    Zip::from(&mut v)
                        .and(&x)
                        .and(h)
                        .and(s)
                        .for_each(|v, &x, h, s| {
                            let ht = charge(*v, x);
                            let st = fire(ht);
                            h.write(ht);
                            s.write(st);
                            *v = (E::one() - st) * ht;
                        });
                }
            });
    }
}

/// The backward's operands; `gx` starts uninitialised and [`BackwardKernel::run`] writes every
/// element once.
struct BackwardKernel<'a, E> {
    h: ArrayView2<'a, E>,
    g: ArrayView2<'a, E>,
    gx: ArrayViewMut2<'a, MaybeUninit<E>>,
    k: E,
    r: E,
}

impl<E: Element> BackwardKernel<'_, E> {
    /// Runs the backward with `local(h) = (psi, dv_dh)`, chunk by chunk in parallel.
    fn run(self, local: impl Fn(E) -> (E, E) + Sync) {
        let BackwardKernel { h, g, mut gx, k, r } = self;
        h.axis_chunks_iter(Axis(1), NEURON_CHUNK)
            .into_par_iter()
            .zip(g.axis_chunks_iter(Axis(1), NEURON_CHUNK))
            .zip(gx.axis_chunks_iter_mut(Axis(1), NEURON_CHUNK))
            .for_each(|((h, g), gx)| {
                simd::widest(BackwardChunk {
                    h,
                    g,
                    gx,
                    coefficients: (k, r),
                    local: &local,
                });
            });
    }
}

/// The operands of [`backward_chunk`], which [`simd::widest`] runs.
struct BackwardChunk<'a, E, F> {
    h: ArrayView2<'a, E>,
    g: ArrayView2<'a, E>,
    gx: ArrayViewMut2<'a, MaybeUninit<E>>,
    coefficients: (E, E),
    local: &'a F,
}

impl<E: Element, F: Fn(E) -> (E, E)> Kernel for BackwardChunk<'_, E, F> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        backward_chunk(self.h, self.g, self.gx, self.coefficients, self.local);
    }
}

/// The backward of one chunk of neurons `[T, chunk]`, from the last step to the first, with the
/// chunk's `dL/dh[t+1]` in a buffer: `dL/dh[t] = g[t] psi[t] + (k dL/dh[t+1]) dv_dh[t]` and
/// `gx[t] = r dL/dh[t]`, where `local(h[t]) = (psi[t], dv_dh[t])`.
#[inline(always)]
fn backward_chunk<E: Element>(
    h: ArrayView2<'_, E>,
    g: ArrayView2<'_, E>,
    mut gx: ArrayViewMut2<'_, MaybeUninit<E>>,
    (k, r): (E, E),
    local: &impl Fn(E) -> (E, E),
) {
    const CONTIGUOUS: &str = "the rows of a chunk of a standard-layout [T, N] are contiguous";
    let mut grad_h = vec![E::zero(); h.ncols()];
    for ((h, g), mut gx) in h
        .outer_iter()
        .zip(g.outer_iter())
        .zip(gx.outer_iter_mut())
        .rev()
    {
        let (h, g) = (
            h.to_slice().expect(CONTIGUOUS),
            g.to_slice().expect(CONTIGUOUS),
        );
        let gx = gx.as_slice_mut().expect(CONTIGUOUS);
        for (((grad_h, &h), &g), gx) in grad_h.iter_mut().zip(h).zip(g).zip(gx) {
            let (psi, dv_dh) = local(h);
            *grad_h = g * psi + (k * *grad_h) * dv_dh;
            gx.write(r * *grad_h);
        }
    }
}

/// Picks the `(psi, dv_dh)` rule of `config` (firing mode, reset detached or not) once.
fn dispatch_backward<E: Element, S: SurrogateFn<E>>(
    kernel: BackwardKernel<'_, E>,
    sur: S,
    config: &NeuronConfig,
    v_th: E,
) {
    let one = E::one();
    match (config.firing, config.detach_reset) {
        (Firing::Heaviside, true) => kernel.run(move |h| {
            let psi = sur.derivative(h - v_th);
            (psi, one - heaviside(h, v_th))
        }),
        (Firing::Heaviside, false) => kernel.run(move |h| {
            let psi = sur.derivative(h - v_th);
            (psi, one - heaviside(h, v_th) - h * psi)
        }),
        (Firing::Smooth, true) => kernel.run(move |h| {
            let z = h - v_th;
            (sur.derivative(z), one - sur.primitive(z))
        }),
        (Firing::Smooth, false) => kernel.run(move |h| {
            let z = h - v_th;
            let psi = sur.derivative(z);
            (psi, one - sur.primitive(z) - h * psi)
        }),
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;
    use crate::testing::SplitMix64;

    /// `[T, N]` membrane potentials around the threshold 1, with the arguments at which the
    /// sigmoid's exponential clamps or overflows, infinities and a NaN among them.
    fn potentials(steps: usize, neurons: usize) -> Array2<f32> {
        let mut rng = SplitMix64::new(11);
        let specials = [
            30.0,
            -30.0,
            1e6,
            -1e6,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        Array2::from_shape_fn((steps, neurons), |(t, n)| match n % 97 {
            0 => specials[t % specials.len()],
            _ => (1.0 + 3.0 * rng.normal()) as f32,
        })
    }

    /// The chunk's backward as dispatched (AVX-512 or AVX2 on x86-64 CPUs that have them) and as
    /// the portable loop, over the sigmoid and ATan surrogates.
    #[test]
    fn vectorised_backward_gives_the_portable_loops_bits() {
        let (steps, neurons) = (4, 1000);
        let h = potentials(steps, neurons);
        let g = potentials(steps, neurons).mapv(|v| v.clamp(-3.0, 3.0) - 1.0);
        let sigmoid = Sigmoid::<f32>::new(4.0);
        let atan = ATan::<f32>::new(2.0);
        let locals: [&dyn Fn(f32) -> (f32, f32); 2] = [
            &|h| {
                (
                    sigmoid.derivative(h - 1.0),
                    1.0 - sigmoid.primitive(h - 1.0),
                )
            },
            &|h| (atan.derivative(h - 1.0), 1.0 - heaviside(h, 1.0)),
        ];
        for local in locals {
            let run = |vectorised: bool| {
                let mut gx = Array2::<f32>::uninit((steps, neurons));
                let chunk = BackwardChunk {
                    h: h.view(),
                    g: g.view(),
                    gx: gx.view_mut(),
                    coefficients: (0.5, 0.5),
                    local: &local,
                };
                if vectorised {
                    simd::widest(chunk);
                } else {
                    chunk.run();
                }
                // SAFETY: both loops write every element of `gx`.
                unsafe { gx.assume_init() }.mapv(f32::to_bits)
            };
            assert_eq!(run(true), run(false));
        }
    }
}
