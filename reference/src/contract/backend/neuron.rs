//! [`NeuronOps`]: the multi-step spiking neurons (docs/neurons.md §2), forward and backward
//! through time, and where a neuron's backward finds its context: kept, or made again from the
//! training BatchNorm whose output was its input (docs/neurons.md §2.4.2). The CPU kernels are
//! `reference/src/ops/neuron/`, their CUDA twins `gpu/src/ops/neuron.rs`.

use std::fmt::Debug;

use super::batch_norm::BatchNormOps;
#[cfg(doc)]
use super::conv_batch_norm::ConvBatchNormOps;
use super::tensor::{TensorOps, unflatten_time};
use super::word::WordOps;
use crate::contract::error::Result;
use crate::contract::params::NeuronConfig;

/// Multi-step IF and LIF neurons over `[T, ...]` inputs. It extends [`BatchNormOps`] because a
/// neuron whose input was a training BatchNorm's output may keep nothing and have its backward
/// make that output again ([`NeuronOps::neuron_backward_from_source`]).
pub trait NeuronOps: WordOps + BatchNormOps {
    /// What [`NeuronOps::neuron_backward`] needs ([`NeuronKept`]): the membrane potentials `h`
    /// (spikes are a function of `h` and are recomputed from it), or the input `h` is charged from.
    type NeuronContext: Debug + Send + Sync;

    /// A multi-step neuron layer over `x` of shape `[T, ...]`, starting from `v = 0`
    /// (docs/neurons.md §2.2): `h[t] = charge(v[t-1], x[t])`, `s[t] = Heaviside(h[t] - V_th)`,
    /// `v[t] = (1 - s[t]) h[t]`. Returns the spikes `[T, ...]` and a context keeping `h`
    /// ([`NeuronKept::Potentials`]). `x` is handed over: a backend may write `h` over it when
    /// nothing else holds it (CUDA does, docs/neurons.md §2.4.1).
    fn neuron_forward(
        &self,
        x: Self::Tensor,
        config: &NeuronConfig,
    ) -> Result<(Self::Tensor, Self::NeuronContext)>;

    /// [`NeuronOps::neuron_forward`] whose context keeps `x` itself ([`NeuronKept::Input`]) and
    /// no tensor of its own: the backward charges `h` from `x` again, so its gradient is
    /// bitwise [`NeuronOps::neuron_forward`]'s. For callers that hold `x` through the backward.
    fn neuron_forward_keeping_input(
        &self,
        x: Self::Tensor,
        config: &NeuronConfig,
    ) -> Result<(Self::Tensor, Self::NeuronContext)>;

    /// The spikes of [`NeuronOps::neuron_forward`] and no context, with their fingerprint folded
    /// into `fingerprint` when given (as [`NeuronOps::neuron_forward_fingerprinted`] folds it): for
    /// a neuron whose input is made again for its backward (docs/neurons.md §2.4.2). `x` is
    /// handed over: CUDA writes the spikes over it when nothing else holds it. The default runs
    /// [`NeuronOps::neuron_forward_keeping_input`] and drops the context.
    fn neuron_forward_keeping_nothing(
        &self,
        x: Self::Tensor,
        config: &NeuronConfig,
        fingerprint: Option<&mut Self::Word>,
    ) -> Result<Self::Tensor> {
        let (spikes, _) = self.neuron_forward_keeping_input(x, config)?;
        if let Some(word) = fingerprint {
            self.fold_fingerprint(word, &spikes)?;
        }
        Ok(spikes)
    }

    /// [`NeuronOps::neuron_forward`], or with `keeps_input`
    /// [`NeuronOps::neuron_forward_keeping_input`], with the spikes' fingerprint folded into `word`
    /// as [`WordOps::fold_fingerprint`] folds it: the same spikes, context and word. The default
    /// runs the two; CUDA sums the fingerprint's terms in the neuron's kernel as it writes the
    /// spikes, which are then not read again.
    fn neuron_forward_fingerprinted(
        &self,
        x: Self::Tensor,
        config: &NeuronConfig,
        keeps_input: bool,
        word: &mut Self::Word,
    ) -> Result<(Self::Tensor, Self::NeuronContext)> {
        let (spikes, context) = if keeps_input {
            self.neuron_forward_keeping_input(x, config)?
        } else {
            self.neuron_forward(x, config)?
        };
        self.fold_fingerprint(word, &spikes)?;
        Ok((spikes, context))
    }

    /// The context [`NeuronOps::neuron_forward`] returns for `x` (keeping `h`), without the spikes:
    /// for a neuron whose input is made again for its backward (docs/neurons.md §2.4.2). The
    /// default runs the forward and drops the spikes; CUDA writes `h` alone, over `x` when
    /// nothing else holds it.
    fn neuron_charge(&self, x: Self::Tensor, config: &NeuronConfig) -> Result<Self::NeuronContext> {
        Ok(self.neuron_forward(x, config)?.1)
    }

    /// Backward through time (docs/neurons.md §2.4):
    /// `dL/dh[t] = dL/ds[t] psi[t] + dv/dh[t] k dL/dh[t+1]`, `dL/dx[t] = r dL/dh[t]`. `dL/ds` is
    /// handed over: a backend may write `dL/dx` over it when nothing else holds it (CUDA does for a
    /// context that keeps `h`).
    fn neuron_backward(
        &self,
        grad_spikes: Self::Tensor,
        context: &Self::NeuronContext,
        config: &NeuronConfig,
    ) -> Result<Self::Tensor>;

    /// [`NeuronOps::neuron_backward`] with the context where `neuron.source` finds it: kept, or
    /// made again from the training BatchNorm whose output was the neuron's input
    /// ([`neuron_context`], docs/neurons.md §2.4.2). The default makes the context and runs the
    /// backward ([`neuron_backward_from_source_in_turn`]). A backend may fuse them: CUDA makes the
    /// BatchNorm's output again and charges `h` inside the backward's kernel, writing neither.
    /// Every bit is the default's. Errors as the ops in turn do.
    fn neuron_backward_from_source(
        &self,
        grad_spikes: Self::Tensor,
        neuron: NeuronBackward<'_, BackendNeuronSource<'_, Self>>,
    ) -> Result<Self::Tensor> {
        neuron_backward_from_source_in_turn(self, grad_spikes, neuron)
    }
}

/// What a neuron's context keeps for its backward (docs/neurons.md §2.4.1): the membrane
/// potentials `h [T, ...]` it charged, or its input `x [T, ...]` itself, from which the backward
/// charges `h` again, bit for bit. Keeping the input costs no memory of its own when the caller
/// holds `x` through the backward anyway (a reversible block's F and G, docs/reversible.md §3.3).
#[derive(Clone, Debug)]
pub enum NeuronKept<T> {
    /// The membrane potentials `h`.
    Potentials(T),
    /// The input `x`, shared with the caller.
    Input(T),
}

impl<T> NeuronKept<T> {
    /// The kept tensor, shaped like the neuron's input.
    pub fn tensor(&self) -> &T {
        match self {
            NeuronKept::Potentials(t) | NeuronKept::Input(t) => t,
        }
    }
}

/// Where a neuron's backward finds its context (docs/neurons.md §2.4.2): the one its forward
/// returned, or, for a neuron that kept nothing because its input was a training BatchNorm's
/// output, that BatchNorm's context and a copy of its shift, from which the output is computed
/// again ([`BatchNormOps::batch_norm_train_output`]) and charged ([`NeuronOps::neuron_charge`]):
/// the same `h`, bit for bit, allocated only once the backward needs it.
#[derive(Debug)]
pub enum NeuronSource<'a, N, Norm, T> {
    Kept(N),
    Normalised { norm: &'a Norm, beta: T },
}

/// [`NeuronSource`] over a backend's types.
pub type BackendNeuronSource<'a, B> = NeuronSource<
    'a,
    <B as NeuronOps>::NeuronContext,
    <B as BatchNormOps>::BatchNormContext,
    <B as TensorOps>::Tensor,
>;

/// The neuron whose spikes a convolution read, as
/// [`ConvBatchNormOps::spiking_conv_batch_norm_backward`] takes it: where its context comes from
/// (handed over, so a backend may write the gradient over what it keeps), the configuration it ran
/// with, and `T`, which unflattens the convolution's `[T B, ...]` gradient to the neuron's
/// `[T, B, ...]`.
#[derive(Debug)]
pub struct NeuronBackward<'a, S> {
    pub source: S,
    pub config: &'a NeuronConfig,
    pub time_steps: usize,
}

/// The context `source` holds or makes again: the kept one, or the BatchNorm's `[T B, ...]`
/// output computed again, unflattened to the neuron's `[T, B, ...]` and charged.
pub fn neuron_context<B: NeuronOps>(
    backend: &B,
    source: BackendNeuronSource<'_, B>,
    config: &NeuronConfig,
    time_steps: usize,
) -> Result<B::NeuronContext> {
    match source {
        NeuronSource::Kept(context) => Ok(context),
        NeuronSource::Normalised { norm, beta } => {
            let flat = backend.batch_norm_train_output(norm, &beta)?;
            let x = unflatten_time(backend, &flat, time_steps)?;
            drop(flat);
            backend.neuron_charge(x, config)
        }
    }
}

/// [`NeuronOps::neuron_backward_from_source`] as its ops in turn: the default, and what a backend
/// that fuses them runs where it does not.
pub fn neuron_backward_from_source_in_turn<B: NeuronOps>(
    backend: &B,
    grad_spikes: B::Tensor,
    neuron: NeuronBackward<'_, BackendNeuronSource<'_, B>>,
) -> Result<B::Tensor> {
    let context = neuron_context(backend, neuron.source, neuron.config, neuron.time_steps)?;
    backend.neuron_backward(grad_spikes, &context, neuron.config)
}
