//! Spiking convolutions: a neuron before a [`ConvBn`] ([`SpikingConvBn`]), two of them in a row
//! ([`SpikingConvPair`]), and a neuron after one ([`ConvBnNeuron`]); each fuses the neuron's
//! backward with the convolution's, or keeps nothing for a neuron the backward charges again
//! (docs/neurons.md §2.4.2).

#[cfg(doc)]
use revsnn_reference::ConvBatchNormOps;
use revsnn_reference::contract::BackendNeuronSource;
use revsnn_reference::{Backend, NeuronBackward, NeuronOps, NeuronSource, Onto};

use super::KeepInput;
use super::conv_batch_norm::ConvBn;
use super::neuron::Neuron;
use crate::error::Result;
use crate::model::compose::{SeqToAnn, handed_on_flat};
use crate::model::{Layer, Session};

/// `SN -> SeqToANN(conv -> BN)` over `[T, B, C, ...]`: the spiking convolution every model stacks.
/// It runs as the tuple of its two parts, except that where [`ConvBn`]'s backward is one op, the
/// neuron's backward joins it: [`ConvBatchNormOps::spiking_conv_batch_norm_backward`], which a
/// backend may fuse so that no `f32` `dL/ds` is written (docs/memory.md §9.6).
#[derive(Clone, Debug)]
pub struct SpikingConvBn {
    pub neuron: Neuron,
    pub conv_bn: SeqToAnn<ConvBn>,
}

impl<B: Backend> Layer<B> for SpikingConvBn {
    type Saved = (B::NeuronContext, <SeqToAnn<ConvBn> as Layer<B>>::Saved);

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let (spikes, neuron) = self.neuron.forward(session, x)?;
        let (y, conv_bn) = self.conv_bn.forward(session, spikes)?;
        Ok((y, (neuron, conv_bn)))
    }

    fn forward_onto(
        &self,
        session: &mut Session<B>,
        x: B::Tensor,
        onto: Onto<B::Tensor>,
    ) -> Result<(B::Tensor, Self::Saved)> {
        let (spikes, neuron) = self.neuron.forward(session, x)?;
        let (y, conv_bn) = self.conv_bn.forward_onto(session, spikes, onto)?;
        Ok((y, (neuron, conv_bn)))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        (neuron, conv_bn): Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        self.backward_from(session, NeuronSource::Kept(neuron), conv_bn, grad_y)
    }
}

impl SpikingConvBn {
    pub fn new(neuron: Neuron, conv_bn: ConvBn) -> Self {
        SpikingConvBn {
            neuron,
            conv_bn: SeqToAnn { layer: conv_bn },
        }
    }

    /// The backward, the neuron's context taken from `source` once the convolution's backward
    /// has run (docs/neurons.md §2.4.2).
    fn backward_from<B: Backend>(
        &self,
        session: &mut Session<B>,
        source: BackendNeuronSource<'_, B>,
        ((conv, norm), time_steps): <SeqToAnn<ConvBn> as Layer<B>>::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        let conv_bn = &self.conv_bn.layer;
        let backend = session.backend;
        let config = &self.neuron.config;
        let context = match norm.into_local() {
            Ok(context) => context,
            Err(norm) => {
                let saved = ((conv, norm), time_steps);
                let grad = self.conv_bn.backward(session, saved, grad_y)?;
                return (self.neuron).backward_from_source(session, source, time_steps, grad);
            }
        };
        let neuron = NeuronBackward {
            source,
            config,
            time_steps,
        };
        let grad_y = handed_on_flat(backend, grad_y)?;
        let kind = conv_bn.conv.kind;
        let grads =
            backend.spiking_conv_batch_norm_backward(grad_y, conv, context, kind, neuron)?;
        conv_bn.accumulate(session, grads)
    }
}

/// Two spiking convolutions in a row, `SN1 -> conv1 -> BN1 -> SN2 -> conv2 -> BN2` over
/// `[T, B, ...]`: RevSResNet's F and G, MS-ResNet's main branch, the transformers' MLP. In
/// training with BN1's own statistics, SN2 keeps nothing for its backward: its input is BN1's
/// output, which the backward makes again from BN1's context and charges, after conv2's backward
/// has run (docs/neurons.md §2.4.2). So SN2's membrane potentials are never held between the two
/// passes, for the cost of one BatchNorm output and one charge again. The same gradients, bit
/// for bit, as the two layers in turn.
#[derive(Clone, Debug)]
pub struct SpikingConvPair {
    pub first: SpikingConvBn,
    pub second: SpikingConvBn,
}

impl SpikingConvPair {
    /// The first layer and SN2: the spikes, the first's context, and SN2's context unless SN2
    /// keeps nothing.
    fn forward_first<B: Backend>(
        &self,
        session: &mut Session<B>,
        x: B::Tensor,
    ) -> Result<(B::Tensor, PairSaved<B>)> {
        let (spikes, neuron) = self.first.neuron.forward(session, x)?;
        let (spikes, conv_bn, context) =
            (self.first.conv_bn).forward_then_fire(session, spikes, &self.second.neuron)?;
        Ok((spikes, ((neuron, conv_bn), context)))
    }
}

/// What [`SpikingConvPair`]'s backward needs of its first layer and SN2.
type PairSaved<B> = (
    <SpikingConvBn as Layer<B>>::Saved,
    Option<<B as NeuronOps>::NeuronContext>,
);

impl<B: Backend> Layer<B> for SpikingConvPair {
    type Saved = (PairSaved<B>, <SeqToAnn<ConvBn> as Layer<B>>::Saved);

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let (spikes, first) = self.forward_first(session, x)?;
        let (y, second) = self.second.conv_bn.forward(session, spikes)?;
        Ok((y, (first, second)))
    }

    fn forward_onto(
        &self,
        session: &mut Session<B>,
        x: B::Tensor,
        onto: Onto<B::Tensor>,
    ) -> Result<(B::Tensor, Self::Saved)> {
        let (spikes, first) = self.forward_first(session, x)?;
        let (y, second) = self.second.conv_bn.forward_onto(session, spikes, onto)?;
        Ok((y, (first, second)))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        ((first, neuron), second): Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        let (_, ((_, norm), _)) = &first;
        let first_norm = &self.first.conv_bn.layer.norm;
        let source = first_norm.neuron_source(session, norm, neuron, "spiking_conv_pair")?;
        let grad = self.second.backward_from(session, source, second, grad_y)?;
        self.first.backward(session, first, grad)
    }
}

impl KeepInput for SpikingConvPair {
    fn keeping_input(self) -> Self {
        SpikingConvPair {
            first: self.first.keeping_input(),
            ..self
        }
    }
}

impl KeepInput for SpikingConvBn {
    fn keeping_input(self) -> Self {
        SpikingConvBn {
            neuron: self.neuron.keeping_input(),
            ..self
        }
    }
}

/// `SN(BN(conv(x)))` over `[T, B, ...]`, the attention's `q`, `k` and `v` projections
/// (docs/architectures.md §4.0). In training the neuron fires over the BatchNorm's output keeping
/// nothing (as the op makes that output, never written: docs/neurons.md §2.4.3), and the backward
/// makes that output again from the BatchNorm's context and charges the
/// neuron from it (docs/neurons.md §2.4.2), so the neuron's membrane potentials are never held
/// between the passes. The same gradients, bit for bit, as the two layers in turn.
#[derive(Clone, Debug)]
pub struct ConvBnNeuron {
    pub conv_bn: SeqToAnn<ConvBn>,
    pub neuron: Neuron,
}

impl<B: Backend> Layer<B> for ConvBnNeuron {
    type Saved = (
        <SeqToAnn<ConvBn> as Layer<B>>::Saved,
        Option<B::NeuronContext>,
    );

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let (spikes, conv_bn, neuron) = self.conv_bn.forward_then_fire(session, x, &self.neuron)?;
        Ok((spikes, (conv_bn, neuron)))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        (conv_bn, neuron): Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        let ((_, norm), time_steps) = &conv_bn;
        let source =
            (self.conv_bn.layer.norm).neuron_source(session, norm, neuron, "conv_bn_neuron")?;
        let grad = (self.neuron).backward_from_source(session, source, *time_steps, grad_y)?;
        self.conv_bn.backward(session, conv_bn, grad)
    }
}
