//! A convolution and its BatchNorm as one layer ([`ConvBn`]), which runs as one op of
//! [`ConvBatchNormOps`] where it can, with a neuron firing within it or an average pool after it.

#[cfg(doc)]
use revsnn_reference::ConvBatchNormOps;
use revsnn_reference::contract::shapes::Conv2dGeometry;
use revsnn_reference::contract::unflatten_time;
use revsnn_reference::{
    AvgPoolGrad, Backend, BatchNormAffine, BatchNormParams, ConvBatchNormGrads,
    ConvBatchNormTrainOutput, ConvKind, NeuronFire, NeuronOps, Onto, OpError, TensorOps,
};

use super::batch_norm::{BatchNorm, BatchNormSaved};
use super::conv::Conv;
use super::neuron::Neuron;
use super::pool::AvgPool;
use crate::error::Result;
use crate::model::compose::{SeqToAnn, handed_on_flat};
use crate::model::params::ParamStore;
#[cfg(doc)]
use crate::model::sync_batch_norm;
use crate::model::{Layer, Mode, Session};

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
    pub(in crate::model) fn forward_then_fire<B: Backend>(
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
    pub(super) fn accumulate<B: Backend>(
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
pub(in crate::model) type Fired<B, S> = (
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
