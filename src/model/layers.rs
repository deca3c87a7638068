//! The building blocks of every model, each a [`Layer`] (docs/architectures.md §4.0): spiking
//! neurons, convolution, BatchNorm, pooling, the linear head, and the shape-only layers around
//! them (means, repetition over time, the batch-time swap, the doubled stream, the input check).
//! Stateless layers see `[T B, ...]`, the time-flattened layout of SpikingJelly's
//! `SeqToANNContainer` (docs/conventions.md §1); [`flatten_time`] and [`unflatten_time`] convert.

#[cfg(doc)]
use revsnn_reference::ConvBatchNormOps;
pub use revsnn_reference::ConvKind;
use revsnn_reference::contract::BackendNeuronSource;
use revsnn_reference::contract::shapes::Conv2dGeometry;
pub use revsnn_reference::contract::{flatten_time, unflatten_time};
use revsnn_reference::{
    AvgPoolGrad, Backend, BatchNormAffine, BatchNormParams, BatchStats, ConvBatchNormGrads,
    ConvBatchNormTrainOutput, NeuronBackward, NeuronConfig, NeuronFire, NeuronOps, NeuronSource,
    Onto, OpError, Pool2dParams, RunningStats, TensorOps,
};

use super::compose::{SeqToAnn, handed_on_flat};
use super::params::{ParamId, ParamStore};
use super::sync_batch_norm::{self, SyncSaved};
use super::{Layer, Mode, Session};
use crate::error::{Error, Result};

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
    pub(super) fn forward_after<B: Backend>(
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
    pub(super) fn backward_from_source<B: Backend>(
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

/// A layer made to keep its input for its backward in place of a tensor of its own: its first
/// neuron keeps `x` rather than its membrane potentials (docs/neurons.md §2.4.1). Worth it only
/// where the caller holds the input through the layer's backward anyway, as the reverse of a
/// reversible block does for its F and G (docs/reversible.md §3.3); elsewhere the context would
/// hold `x` alive instead of `h`, the same bytes, and the backward would charge `h` again for
/// nothing.
pub trait KeepInput {
    /// This layer, keeping its input.
    fn keeping_input(self) -> Self;
}

impl KeepInput for Neuron {
    fn keeping_input(self) -> Self {
        Neuron {
            keeps_input: true,
            ..self
        }
    }
}

/// A sequence keeps its input through its first part.
impl<A: KeepInput, C> KeepInput for (A, C) {
    fn keeping_input(self) -> Self {
        (self.0.keeping_input(), self.1)
    }
}

/// The ids of one BatchNorm's tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchNormIds {
    pub gamma: ParamId,
    pub beta: ParamId,
    pub running_mean: ParamId,
    pub running_var: ParamId,
    pub batches_tracked: ParamId,
}

/// BatchNorm over `[N, C, ...]`: batch statistics in training (updating the running statistics
/// when the session allows), running statistics in evaluation (docs/conventions.md §1).
#[derive(Clone, Debug)]
pub struct BatchNorm {
    pub ids: BatchNormIds,
}

/// What a [`BatchNorm`]'s backward needs: the op's context, or with synchronised statistics
/// the context of [`sync_batch_norm`].
#[derive(Debug)]
pub enum BatchNormSaved<B: Backend> {
    Local(B::BatchNormContext),
    Synced(SyncSaved<B>),
}

impl<B: Backend> BatchNormSaved<B> {
    /// Whether a neuron fed by this BatchNorm's output can keep nothing for its backward:
    /// training, with the batch's own statistics, whose context makes the output again
    /// (docs/neurons.md §2.4.2).
    pub(super) fn makes_output_again(&self, session: &Session<B>) -> bool {
        session.mode == Mode::Train && matches!(self, BatchNormSaved::Local(_))
    }

    /// The op's own context, with which the backward of the convolution before this BatchNorm runs
    /// as one op with it ([`ConvBatchNormOps::conv_batch_norm_backward`]); else `self` back.
    fn into_local(self) -> std::result::Result<B::BatchNormContext, Self> {
        match self {
            BatchNormSaved::Local(context) => Ok(context),
            norm => Err(norm),
        }
    }
}

impl BatchNorm {
    /// Where the backward of a neuron fed by this BatchNorm's output finds its context: `kept`,
    /// or where it kept nothing, `saved` (this BatchNorm's training context) and a copy of its
    /// shift, which make the output again (docs/neurons.md §2.4.2). Only the batch's own
    /// statistics do ([`BatchNormSaved::makes_output_again`]); `layer` names the caller in the
    /// internal error otherwise.
    pub(super) fn neuron_source<'a, B: Backend>(
        &self,
        session: &Session<B>,
        saved: &'a BatchNormSaved<B>,
        kept: Option<B::NeuronContext>,
        layer: &'static str,
    ) -> Result<BackendNeuronSource<'a, B>> {
        match (kept, saved) {
            (Some(context), _) => Ok(NeuronSource::Kept(context)),
            (None, BatchNormSaved::Local(norm)) => {
                let beta = session.store.get(self.ids.beta).clone();
                Ok(NeuronSource::Normalised { norm, beta })
            }
            (None, BatchNormSaved::Synced(_)) => {
                let detail = "internal error: a neuron kept nothing after a synchronised BatchNorm";
                Err(OpError::shape(layer, detail).into())
            }
        }
    }

    /// Adds a backward's `dgamma` and `dbeta` to the session's gradients.
    fn accumulate<B: Backend>(
        &self,
        session: &mut Session<B>,
        grad_gamma: B::Tensor,
        grad_beta: B::Tensor,
    ) -> Result<()> {
        session.accumulate(self.ids.gamma, grad_gamma)?;
        session.accumulate(self.ids.beta, grad_beta)
    }

    /// Folds a training batch's statistics into the running ones, when the session allows
    /// (PyTorch's update, docs/conventions.md §1), and counts the batch.
    fn record_batch<B: Backend>(
        &self,
        session: &mut Session<B>,
        batch: &BatchStats<B::Tensor>,
    ) -> Result<()> {
        if !session.update_running_stats {
            return Ok(());
        }
        let ids = self.ids;
        let running = RunningStats {
            mean: session.store.get(ids.running_mean).clone(),
            var: session.store.get(ids.running_var).clone(),
        };
        let updated = session
            .backend
            .update_running_stats(&running, batch, session.batch_norm)?;
        session.store.set(ids.running_mean, updated.mean);
        session.store.set(ids.running_var, updated.var);
        // a host counter: no round trip to the device
        let count = session.store.count(ids.batches_tracked) + 1;
        session.store.set_count(ids.batches_tracked, count);
        Ok(())
    }
}

impl<B: Backend> Layer<B> for BatchNorm {
    type Saved = BatchNormSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        let ids = self.ids;
        let gamma = session.store.get(ids.gamma).clone();
        let beta = session.store.get(ids.beta).clone();
        match (session.mode, session.sync_batch_norm) {
            (Mode::Train, sync) => {
                let (y, batch, saved): (_, BatchStats<B::Tensor>, _) = match sync {
                    Some(group) => {
                        let (y, batch, saved) = sync_batch_norm::forward(
                            group,
                            backend,
                            &x,
                            &gamma,
                            &beta,
                            session.batch_norm,
                        )?;
                        (y, batch, BatchNormSaved::Synced(saved))
                    }
                    None => {
                        let (y, batch, context) = backend.batch_norm_train_forward(
                            &x,
                            &gamma,
                            &beta,
                            session.batch_norm,
                        )?;
                        (y, batch, BatchNormSaved::Local(context))
                    }
                };
                self.record_batch(session, &batch)?;
                Ok((y, saved))
            }
            (Mode::Eval, _) => {
                let running = RunningStats {
                    mean: session.store.get(ids.running_mean).clone(),
                    var: session.store.get(ids.running_var).clone(),
                };
                let (y, context) = backend.batch_norm_eval_forward(
                    &x,
                    &gamma,
                    &beta,
                    &running,
                    session.batch_norm,
                )?;
                Ok((y, BatchNormSaved::Local(context)))
            }
        }
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        let backend = session.backend;
        let grads = match (saved, session.sync_batch_norm) {
            (BatchNormSaved::Local(context), _) => {
                backend.batch_norm_backward(&grad_y, &context)?
            }
            (BatchNormSaved::Synced(saved), Some(group)) => {
                sync_batch_norm::backward(group, backend, saved, &grad_y, session.batch_norm)?
            }
            (BatchNormSaved::Synced(_), None) => {
                return Err(Error::Usage(
                    "a synchronised BatchNorm's backward ran outside its data-parallel group"
                        .into(),
                ));
            }
        };
        self.accumulate(session, grads.gamma, grads.beta)?;
        Ok(grads.input)
    }
}

/// A convolution with an optional bias, `y = W * x (+ b)`: 2-D, or 1-D 1x1 in the attention
/// (docs/architectures.md §4.0).
#[derive(Clone, Debug)]
pub struct Conv {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
    pub kind: ConvKind,
}

impl<B: Backend> Layer<B> for Conv {
    type Saved = B::Conv2dContext;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        let weight = session.store.get(self.weight);
        let bias = self.bias.map(|id| session.store.get(id));
        Ok(backend.conv_forward(&x, weight, bias, self.kind)?)
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        let grads = session.backend.conv_backward(grad_y, &saved, self.kind)?;
        session.accumulate(self.weight, grads.weight)?;
        if let (Some(id), Some(bias)) = (self.bias, grads.bias) {
            session.accumulate(id, bias)?;
        }
        Ok(grads.input)
    }
}

/// A convolution followed by a BatchNorm, over the time-flattened `[T B, C, ...]` (the
/// `SeqToANNContainer(conv, BN)` of every model). In training with local statistics, the
/// convolution (bias or not) and its BatchNorm run as one op,
/// [`ConvBatchNormOps::conv_batch_norm_train_forward`], which a backend may fuse (docs/precision.md
/// §"Convolution outputs"); otherwise the two layers run in turn. The backward of a convolution and
/// a local BatchNorm is one op too, [`ConvBatchNormOps::conv_batch_norm_backward`]; with
/// synchronised statistics it is the two layers'. A neuron after it, in training with local
/// statistics, fires within one op too ([`ConvBn::forward_then_fire`]).
#[derive(Clone, Debug)]
pub struct ConvBn {
    pub conv: Conv,
    pub norm: BatchNorm,
}

impl ConvBn {
    /// Whether this forward runs as the one op, and a neuron after this layer fires within it,
    /// over the BatchNorm's output as it is made: training with the batch's own statistics
    /// (synchronised ones need the convolution's output: [`sync_batch_norm`]).
    fn runs_fused<B: Backend>(&self, session: &Session<B>) -> bool {
        session.mode == Mode::Train && session.sync_batch_norm.is_none()
    }

    /// The one op, its output landing on `onto` when given.
    fn forward_fused<B: Backend>(
        &self,
        session: &mut Session<B>,
        x: B::Tensor,
        onto: Option<Onto<B::Tensor>>,
    ) -> Result<(B::Tensor, <Self as Layer<B>>::Saved)> {
        let (weight, bias, norm) = self.parameters(session.store, session.batch_norm);
        let (backend, kind) = (session.backend, self.conv.kind);
        let output = match onto {
            None => backend.conv_batch_norm_train_forward(x, weight, bias, kind, norm)?,
            Some(onto) => {
                backend.conv_batch_norm_train_forward_onto(x, weight, bias, kind, norm, onto)?
            }
        };
        self.finish_fused(session, output)
    }

    /// This layer over the time-flattened `x`, then `neuron` over its output unflattened by `T`:
    /// in training with the batch's own statistics, the one op whose neuron fires keeping
    /// nothing ([`ConvBn::forward_firing`]); else the layer, then [`Neuron::forward_after`]. The
    /// spikes, this layer's context, and the neuron's where it keeps one.
    pub(super) fn forward_then_fire<B: Backend>(
        &self,
        session: &mut Session<B>,
        x: B::Tensor,
        neuron: &Neuron,
        time_steps: usize,
    ) -> Result<Fired<B, <Self as Layer<B>>::Saved>> {
        if self.runs_fused(session) {
            let (spikes, saved) = self.forward_firing(session, x, neuron, time_steps)?;
            return Ok((spikes, saved, None));
        }
        let (y_flat, saved) = self.forward(session, x)?;
        let y = unflatten_time(session.backend, &y_flat, time_steps)?;
        drop(y_flat);
        let (spikes, context) = neuron.forward_after(session, Some(&saved.1), y)?;
        Ok((spikes, saved, context))
    }

    /// The one op with `neuron` firing over its output, unflattened by `T`, keeping nothing
    /// ([`ConvBatchNormOps::conv_batch_norm_train_fire`], docs/neurons.md §2.4.3): the spikes.
    fn forward_firing<B: Backend>(
        &self,
        session: &mut Session<B>,
        x: B::Tensor,
        neuron: &Neuron,
        time_steps: usize,
    ) -> Result<(B::Tensor, <Self as Layer<B>>::Saved)> {
        let (weight, bias, norm) = self.parameters(session.store, session.batch_norm);
        let fire = NeuronFire {
            config: &neuron.config,
            time_steps,
            fingerprint: session.probes.spike_fingerprint_mut(),
        };
        let (backend, kind) = (session.backend, self.conv.kind);
        let output = backend.conv_batch_norm_train_fire(x, weight, bias, kind, norm, fire)?;
        session.probes.log_spikes(&output.y);
        self.finish_fused(session, output)
    }

    /// The convolution's weight and bias (if any) and the BatchNorm's affine parameters in
    /// `store`, with the BatchNorm settings `params`.
    fn parameters<'s, B: Backend>(
        &self,
        store: &'s ParamStore<B>,
        params: BatchNormParams,
    ) -> (
        &'s B::Tensor,
        Option<&'s B::Tensor>,
        BatchNormAffine<'s, B::Tensor>,
    ) {
        let ids = self.norm.ids;
        let norm = BatchNormAffine {
            gamma: store.get(ids.gamma),
            beta: store.get(ids.beta),
            params,
        };
        let bias = self.conv.bias.map(|id| store.get(id));
        (store.get(self.conv.weight), bias, norm)
    }

    /// Records the one op's batch statistics; its output and the two contexts.
    fn finish_fused<B: Backend>(
        &self,
        session: &mut Session<B>,
        output: ConvBatchNormTrainOutput<B::Tensor, B::Conv2dContext, B::BatchNormContext>,
    ) -> Result<(B::Tensor, <Self as Layer<B>>::Saved)> {
        self.norm.record_batch(session, &output.batch)?;
        Ok((output.y, (output.conv, BatchNormSaved::Local(output.norm))))
    }

    /// The convolution and the BatchNorm in turn.
    fn forward_in_turn<B: Backend>(
        &self,
        session: &mut Session<B>,
        x: B::Tensor,
    ) -> Result<(B::Tensor, <Self as Layer<B>>::Saved)> {
        let (y, conv) = self.conv.forward(session, x)?;
        let (y, norm) = self.norm.forward(session, y)?;
        Ok((y, (conv, norm)))
    }

    /// Adds the one op's parameter gradients to the session's; returns `dx`.
    fn accumulate<B: Backend>(
        &self,
        session: &mut Session<B>,
        grads: ConvBatchNormGrads<B::Tensor>,
    ) -> Result<B::Tensor> {
        self.norm.accumulate(session, grads.gamma, grads.beta)?;
        session.accumulate(self.conv.weight, grads.weight)?;
        if let (Some(id), Some(bias)) = (self.conv.bias, grads.bias) {
            session.accumulate(id, bias)?;
        }
        Ok(grads.input)
    }
}

impl<B: Backend> Layer<B> for ConvBn {
    type Saved = (B::Conv2dContext, BatchNormSaved<B>);

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        if self.runs_fused(session) {
            self.forward_fused(session, x, None)
        } else {
            self.forward_in_turn(session, x)
        }
    }

    /// The fused op writes its output over the residual where the backend can
    /// ([`ConvBatchNormOps::conv_batch_norm_train_forward_onto`]); the two layers in turn land
    /// theirs.
    fn forward_onto(
        &self,
        session: &mut Session<B>,
        x: B::Tensor,
        onto: Onto<B::Tensor>,
    ) -> Result<(B::Tensor, Self::Saved)> {
        if self.runs_fused(session) {
            return self.forward_fused(session, x, Some(onto));
        }
        let (y, saved) = self.forward_in_turn(session, x)?;
        Ok((onto.land(session.backend, y)?, saved))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        (conv, norm): Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        match norm.into_local() {
            Ok(context) => {
                let backend = session.backend;
                let grads =
                    backend.conv_batch_norm_backward(grad_y, conv, context, self.conv.kind)?;
                self.accumulate(session, grads)
            }
            Err(norm) => {
                let grad = self.norm.backward(session, norm, grad_y)?;
                self.conv.backward(session, conv, grad)
            }
        }
    }
}

/// What a layer followed by a neuron returns ([`ConvBn::forward_then_fire`]): the spikes, the
/// layer's context `S`, and the neuron's where it keeps one.
pub(super) type Fired<B, S> = (
    <B as TensorOps>::Tensor,
    S,
    Option<<B as NeuronOps>::NeuronContext>,
);

impl SeqToAnn<ConvBn> {
    /// This layer, then `neuron` over its output ([`ConvBn::forward_then_fire`] over the
    /// time-flattened `x`).
    pub(super) fn forward_then_fire<B: Backend>(
        &self,
        session: &mut Session<B>,
        x: B::Tensor,
        neuron: &Neuron,
    ) -> Result<Fired<B, <Self as Layer<B>>::Saved>> {
        let time_steps = session.backend.shape(&x)[0];
        let flat = handed_on_flat(session.backend, x)?;
        let (spikes, saved, context) =
            (self.layer).forward_then_fire(session, flat, neuron, time_steps)?;
        Ok((spikes, (saved, time_steps), context))
    }
}

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

/// `AvgPool2d(kernel, stride, padding)` with `count_include_pad=True` over `[N, C, H, W]`.
#[derive(Clone, Debug)]
pub struct AvgPool {
    pub params: Pool2dParams,
}

impl<B: Backend> Layer<B> for AvgPool {
    type Saved = Vec<usize>;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        Ok((
            session.backend.avg_pool2d_forward(&x, self.params)?,
            session.backend.shape(&x),
        ))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        Ok(session
            .backend
            .avg_pool2d_backward(&grad_y, &saved, self.params)?)
    }
}

/// A [`ConvBn`] and the [`AvgPool`] after it (RevSResNet24's event stem, docs/architectures.md
/// §4.3). Where the [`ConvBn`] runs as one op (training, the batch's own statistics), so do the
/// three: forward [`ConvBatchNormOps::conv_batch_norm_train_avg_pool`], backward
/// [`ConvBatchNormOps::avg_pool_conv_batch_norm_backward`], which a backend may run without a
/// tensor for the BatchNorm's output or the pool's `dx` (docs/memory.md §9.6); elsewhere the layers
/// in turn.
#[derive(Clone, Debug)]
pub struct ConvBnAvgPool {
    pub conv_bn: ConvBn,
    pub pool: AvgPool,
}

impl ConvBnAvgPool {
    /// The pool's input shape: the convolution's output for `x`, a 2-D one.
    fn pool_input_shape<B: Backend>(
        &self,
        session: &Session<B>,
        x: &B::Tensor,
    ) -> Result<Vec<usize>> {
        let backend = session.backend;
        let ConvKind::Conv2d(params) = self.conv_bn.conv.kind else {
            let detail = "an average pool follows a 2-D convolution";
            return Err(OpError::shape("avg_pool2d", detail).into());
        };
        let weight = backend.shape(session.store.get(self.conv_bn.conv.weight));
        let geometry = Conv2dGeometry::new(&backend.shape(x), &weight, params)?;
        Ok(geometry.output_shape().to_vec())
    }
}

impl<B: Backend> Layer<B> for ConvBnAvgPool {
    type Saved = (<ConvBn as Layer<B>>::Saved, <AvgPool as Layer<B>>::Saved);

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        if !self.conv_bn.runs_fused(session) {
            let (y, conv_bn) = self.conv_bn.forward(session, x)?;
            let (pooled, input_shape) = self.pool.forward(session, y)?;
            return Ok((pooled, (conv_bn, input_shape)));
        }
        let input_shape = self.pool_input_shape(session, &x)?;
        let (weight, bias, norm) = self.conv_bn.parameters(session.store, session.batch_norm);
        let (backend, kind, pool) = (session.backend, self.conv_bn.conv.kind, self.pool.params);
        let output = backend.conv_batch_norm_train_avg_pool(x, weight, bias, kind, norm, pool)?;
        let (pooled, conv_bn) = self.conv_bn.finish_fused(session, output)?;
        Ok((pooled, (conv_bn, input_shape)))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        ((conv, norm), input_shape): Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        match norm.into_local() {
            Ok(context) => {
                let pool = AvgPoolGrad {
                    grad_y,
                    input_shape: &input_shape,
                    params: self.pool.params,
                };
                let kind = self.conv_bn.conv.kind;
                let backend = session.backend;
                let grads = backend.avg_pool_conv_batch_norm_backward(pool, conv, context, kind)?;
                self.conv_bn.accumulate(session, grads)
            }
            Err(norm) => {
                let grad = self.pool.backward(session, input_shape, grad_y)?;
                self.conv_bn.backward(session, (conv, norm), grad)
            }
        }
    }
}

/// `MaxPool2d(kernel, stride, padding)` over `[N, C, H, W]`.
#[derive(Clone, Debug)]
pub struct MaxPool {
    pub params: Pool2dParams,
}

impl<B: Backend> Layer<B> for MaxPool {
    type Saved = B::MaxPoolContext;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        Ok(session.backend.max_pool2d_forward(&x, self.params)?)
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        Ok(session.backend.max_pool2d_backward(&grad_y, &saved)?)
    }
}

/// `y = x w^T + b` over `[N, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: ParamId,
    pub bias: ParamId,
}

impl<B: Backend> Layer<B> for Linear {
    type Saved = B::Tensor;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let weight = session.store.get(self.weight);
        let bias = session.store.get(self.bias);
        Ok((session.backend.linear_forward(&x, weight, Some(bias))?, x))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        let weight = session.store.get(self.weight).clone();
        let grads = session
            .backend
            .linear_backward(&grad_y, &saved, &weight, true)?;
        session.accumulate(self.weight, grads.weight)?;
        if let Some(bias) = grads.bias {
            session.accumulate(self.bias, bias)?;
        }
        Ok(grads.input)
    }
}

/// The mean over `axes`: `y = mean_{axes} x`, those axes removed (`AdaptiveAvgPool2d(1)` over
/// `H, W`, or a mean over time).
#[derive(Clone, Debug)]
pub struct MeanOver {
    pub axes: Vec<usize>,
}

impl<B: Backend> Layer<B> for MeanOver {
    /// The input's shape.
    type Saved = Vec<usize>;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        Ok((backend.mean_axes(&x, &self.axes)?, backend.shape(&x)))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        Ok(session
            .backend
            .mean_axes_backward(&grad_y, &saved, &self.axes)?)
    }
}

/// `[B, ...] -> [T, B, ...]`: the same static input at every one of `time_steps` steps
/// (docs/choices.md §A25); the backward sums the gradient over time.
#[derive(Clone, Debug)]
pub struct RepeatOverTime {
    pub time_steps: usize,
}

impl<B: Backend> Layer<B> for RepeatOverTime {
    type Saved = ();

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        Ok((session.backend.repeat_leading(&x, self.time_steps)?, ()))
    }

    fn backward(&self, session: &mut Session<B>, _: (), grad_y: B::Tensor) -> Result<B::Tensor> {
        Ok(session.backend.sum_leading(&grad_y)?)
    }
}

/// `[B, T, C, H, W] <-> [T, B, C, H, W]`: event frames as a sequence (its own inverse).
#[derive(Clone, Debug)]
pub struct SwapBatchTime;

const SWAP_BATCH_TIME: [usize; 5] = [1, 0, 2, 3, 4];

impl<B: Backend> Layer<B> for SwapBatchTime {
    type Saved = ();

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        Ok((session.backend.permute(&x, &SWAP_BATCH_TIME)?, ()))
    }

    fn backward(&self, session: &mut Session<B>, _: (), grad_y: B::Tensor) -> Result<B::Tensor> {
        Ok(session.backend.permute(&grad_y, &SWAP_BATCH_TIME)?)
    }
}

/// `[T, B, C, ...] -> [T, B, 2C, ...]`, `cat([x, x], 2)`: the two equal halves a reversible
/// stream starts from (docs/architectures.md §4.4); the backward adds the halves' gradients.
#[derive(Clone, Debug)]
pub struct DuplicateChannels;

impl<B: Backend> Layer<B> for DuplicateChannels {
    type Saved = ();

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        Ok((session.backend.concat(&[&x, &x], 2)?, ()))
    }

    fn backward(&self, session: &mut Session<B>, _: (), grad_y: B::Tensor) -> Result<B::Tensor> {
        let backend = session.backend;
        let half = backend.shape(&grad_y)[2] / 2;
        Ok(backend.add(
            &backend.narrow(&grad_y, 2, 0, half)?,
            &backend.narrow(&grad_y, 2, half, half)?,
        )?)
    }
}

/// Checks a model's input, `[B, ...]` with every size >= 1 and, where `sizes` names one, the
/// size it must have; passes the input through.
#[derive(Clone, Debug)]
pub struct InputShape {
    /// What the input is, for the error: e.g. `images [B, C, H, W]`.
    pub layout: &'static str,
    /// The sizes after `B`: `Some(n)` must be `n`, `None` any.
    pub sizes: Vec<Option<usize>>,
}

impl<B: Backend> Layer<B> for InputShape {
    type Saved = ();

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let shape = session.backend.shape(&x);
        let fits = shape.len() == self.sizes.len() + 1
            && !shape.contains(&0)
            && (shape[1..].iter().zip(&self.sizes)).all(|(&n, size)| size.is_none_or(|s| s == n));
        if !fits {
            let sizes: Vec<String> = (self.sizes.iter())
                .map(|size| size.map_or("_".to_string(), |n| n.to_string()))
                .collect();
            return Err(revsnn_reference::OpError::shape(
                "model input",
                format!(
                    "expected {} = [_, {}] with every size >= 1, got {shape:?}",
                    self.layout,
                    sizes.join(", ")
                ),
            )
            .into());
        }
        Ok((x, ()))
    }

    fn backward(&self, _: &mut Session<B>, _: (), grad_y: B::Tensor) -> Result<B::Tensor> {
        Ok(grad_y)
    }
}
