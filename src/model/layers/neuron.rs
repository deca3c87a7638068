//! The multi-step spiking neuron layer (docs/neurons.md §2) and its backward from wherever its
//! context is: kept, or made again from the BatchNorm before it (docs/neurons.md §2.4.2).

use revsnn_reference::contract::BackendNeuronSource;
use revsnn_reference::{Backend, NeuronBackward, NeuronConfig};

use super::KeepInput;
use super::batch_norm::BatchNormSaved;
use crate::error::Result;
use crate::model::{Layer, Session};

/// A multi-step spiking neuron layer over `[T, ...]` (docs/neurons.md §2), starting from `v = 0` at every
/// call (no state lingers between calls: docs/choices.md §A15).
#[derive(Clone, Debug)]
pub struct Neuron {
    pub config: NeuronConfig,
    /// Whether the backward's context keeps the input rather than the membrane potentials, which
    /// the backward then charges again (docs/neurons.md §2.4.1); see [`KeepInput`].
    pub keeps_input: bool,
}

impl Neuron {
    /// A neuron of `config` whose context keeps its membrane potentials.
    pub fn new(config: NeuronConfig) -> Self {
        Neuron {
            config,
            keeps_input: false,
        }
    }
}

impl Neuron {
    /// The forward over `x`, the output of the BatchNorm whose training context is `norm` (none
    /// for an input of another kind): the spikes, and the context unless the BatchNorm makes its
    /// output again for the backward ([`BatchNormSaved::makes_output_again`]), where the neuron
    /// keeps nothing (docs/neurons.md §2.4.2).
    pub(in crate::model) fn forward_after<B: Backend>(
        &self,
        session: &mut Session<B>,
        norm: Option<&BatchNormSaved<B>>,
        x: B::Tensor,
    ) -> Result<(B::Tensor, Option<B::NeuronContext>)> {
        if !norm.is_some_and(|norm| norm.makes_output_again(session)) {
            let (spikes, context) = self.forward(session, x)?;
            return Ok((spikes, Some(context)));
        }
        let backend = session.backend;
        let word = session.probes.spike_fingerprint_mut();
        let spikes = backend.neuron_forward_keeping_nothing(x, &self.config, word)?;
        session.probes.log_spikes(&spikes);
        Ok((spikes, None))
    }
}

impl Neuron {
    /// The backward with the context where `source` finds it, kept or made again from the
    /// BatchNorm before (`NeuronOps::neuron_backward_from_source`, docs/neurons.md §2.4.2); `T`
    /// unflattens that BatchNorm's `[T B, ...]` output.
    pub(in crate::model) fn backward_from_source<B: Backend>(
        &self,
        session: &Session<B>,
        source: BackendNeuronSource<'_, B>,
        time_steps: usize,
        grad_spikes: B::Tensor,
    ) -> Result<B::Tensor> {
        let neuron = NeuronBackward {
            source,
            config: &self.config,
            time_steps,
        };
        Ok(session
            .backend
            .neuron_backward_from_source(grad_spikes, neuron)?)
    }
}

impl<B: Backend> Layer<B> for Neuron {
    type Saved = B::NeuronContext;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let (backend, config) = (session.backend, &self.config);
        let (spikes, context) = match session.probes.spike_fingerprint_mut() {
            Some(word) => {
                backend.neuron_forward_fingerprinted(x, config, self.keeps_input, word)?
            }
            None if self.keeps_input => backend.neuron_forward_keeping_input(x, config)?,
            None => backend.neuron_forward(x, config)?,
        };
        session.probes.log_spikes(&spikes);
        Ok((spikes, context))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        Ok(session
            .backend
            .neuron_backward(grad_y, &saved, &self.config)?)
    }
}

impl KeepInput for Neuron {
    fn keeping_input(self) -> Self {
        Neuron {
            keeps_input: true,
            ..self
        }
    }
}
