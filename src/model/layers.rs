//! The building blocks of every model, each a [`Layer`]: spiking neurons, convolution followed by
//! BatchNorm, pooling and the linear head (docs/architectures.md §4.0). Stateless layers see `[T B, ...]`, the
//! time-flattened layout of SpikingJelly's `SeqToANNContainer` (docs/conventions.md §1); [`flatten_time`] and
//! [`unflatten_time`] convert.

use revsnn_reference::{
    Backend, BatchStats, Conv2dParams, NeuronConfig, Pool2dParams, RunningStats,
};

use super::params::ParamId;
use super::{Layer, Mode, Session};
use crate::error::Result;

/// `[T, B, ...] -> [T B, ...]`.
pub fn flatten_time<B: Backend>(backend: &B, x: &B::Tensor) -> Result<B::Tensor> {
    let shape = backend.shape(x);
    let mut flat = vec![shape[0] * shape[1]];
    flat.extend_from_slice(&shape[2..]);
    Ok(backend.reshape(x, &flat)?)
}

/// `[T B, ...] -> [T, B, ...]`.
pub fn unflatten_time<B: Backend>(
    backend: &B,
    x: &B::Tensor,
    time_steps: usize,
) -> Result<B::Tensor> {
    let shape = backend.shape(x);
    let mut split = vec![time_steps, shape[0] / time_steps];
    split.extend_from_slice(&shape[1..]);
    Ok(backend.reshape(x, &split)?)
}

/// A multi-step spiking neuron layer over `[T, ...]` (docs/neurons.md §2), starting from `v = 0` at every
/// call (no state lingers between calls: docs/choices.md §A15).
#[derive(Clone, Debug)]
pub struct Neuron {
    pub config: NeuronConfig,
}

impl<B: Backend> Layer<B> for Neuron {
    type Saved = B::NeuronContext;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let (spikes, context) = session.backend.neuron_forward(x, &self.config)?;
        if let Some(fingerprint) = session.spike_fingerprint.as_mut() {
            *fingerprint = fingerprint.rotate_left(5) ^ session.backend.fingerprint(&spikes)?;
        }
        if let Some(log) = session.spike_log.as_mut() {
            log.push(spikes.clone());
        }
        Ok((spikes, context))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        Ok(session
            .backend
            .neuron_backward(grad_y, &saved, &self.config)?)
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

impl<B: Backend> Layer<B> for BatchNorm {
    type Saved = B::BatchNormContext;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        let ids = self.ids;
        let gamma = session.store.get(ids.gamma).clone();
        let beta = session.store.get(ids.beta).clone();
        let running = RunningStats {
            mean: session.store.get(ids.running_mean).clone(),
            var: session.store.get(ids.running_var).clone(),
        };
        match session.mode {
            Mode::Train => {
                let (y, batch, context): (_, BatchStats<B::Tensor>, _) =
                    backend.batch_norm_train_forward(x, &gamma, &beta, session.batch_norm)?;
                if session.update_running_stats {
                    let updated =
                        backend.update_running_stats(&running, &batch, session.batch_norm)?;
                    session.store.set(ids.running_mean, updated.mean);
                    session.store.set(ids.running_var, updated.var);
                    // a host counter: no round trip to the device
                    let count = session.store.count(ids.batches_tracked) + 1;
                    session.store.set_count(ids.batches_tracked, count);
                }
                Ok((y, context))
            }
            Mode::Eval => Ok(backend.batch_norm_eval_forward(
                x,
                &gamma,
                &beta,
                &running,
                session.batch_norm,
            )?),
        }
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let grads = session.backend.batch_norm_backward(grad_y, &saved)?;
        session
            .grads
            .accumulate(session.backend, self.ids.gamma, grads.gamma)?;
        session
            .grads
            .accumulate(session.backend, self.ids.beta, grads.beta)?;
        Ok(grads.input)
    }
}

/// Whether a [`ConvBn`] convolves `[N, C, H, W]` (2-D, any kernel) or `[N, C, L]` (1-D, 1x1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKind {
    Conv2d(Conv2dParams),
    Conv1d,
}

/// A convolution followed by a BatchNorm, the `SeqToANNContainer(conv, BN)` of every model,
/// over the time-flattened `[T B, C, ...]`.
#[derive(Clone, Debug)]
pub struct ConvBn {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
    pub kind: ConvKind,
    pub norm: BatchNorm,
}

impl<B: Backend> Layer<B> for ConvBn {
    type Saved = (B::Conv2dContext, B::BatchNormContext);

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        let weight = session.store.get(self.weight).clone();
        let bias = self.bias.map(|id| session.store.get(id).clone());
        let (y, conv) = match self.kind {
            ConvKind::Conv2d(params) => {
                backend.conv2d_forward(x, &weight, bias.as_ref(), params)?
            }
            ConvKind::Conv1d => backend.conv1d_forward(x, &weight, bias.as_ref())?,
        };
        let (y, norm) = self.norm.forward(session, &y)?;
        Ok((y, (conv, norm)))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let (conv, norm) = saved;
        let grad = self.norm.backward(session, norm, grad_y)?;
        let grads = match self.kind {
            ConvKind::Conv2d(_) => session.backend.conv2d_backward(&grad, &conv)?,
            ConvKind::Conv1d => session.backend.conv1d_backward(&grad, &conv)?,
        };
        session
            .grads
            .accumulate(session.backend, self.weight, grads.weight)?;
        if let (Some(id), Some(bias)) = (self.bias, grads.bias) {
            session.grads.accumulate(session.backend, id, bias)?;
        }
        Ok(grads.input)
    }
}

/// `AvgPool2d(kernel, stride, padding)` with `count_include_pad=True` over `[N, C, H, W]`.
#[derive(Clone, Debug)]
pub struct AvgPool {
    pub params: Pool2dParams,
}

impl<B: Backend> Layer<B> for AvgPool {
    type Saved = Vec<usize>;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        Ok((
            session.backend.avg_pool2d_forward(x, self.params)?,
            session.backend.shape(x),
        ))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        Ok(session
            .backend
            .avg_pool2d_backward(grad_y, &saved, self.params)?)
    }
}

/// `MaxPool2d(kernel, stride, padding)` over `[N, C, H, W]`.
#[derive(Clone, Debug)]
pub struct MaxPool {
    pub params: Pool2dParams,
}

impl<B: Backend> Layer<B> for MaxPool {
    type Saved = B::MaxPoolContext;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        Ok(session.backend.max_pool2d_forward(x, self.params)?)
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        Ok(session.backend.max_pool2d_backward(grad_y, &saved)?)
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

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let weight = session.store.get(self.weight);
        let bias = session.store.get(self.bias);
        Ok((
            session.backend.linear_forward(x, weight, Some(bias))?,
            x.clone(),
        ))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let weight = session.store.get(self.weight).clone();
        let grads = session
            .backend
            .linear_backward(grad_y, &saved, &weight, true)?;
        session
            .grads
            .accumulate(session.backend, self.weight, grads.weight)?;
        if let Some(bias) = grads.bias {
            session.grads.accumulate(session.backend, self.bias, bias)?;
        }
        Ok(grads.input)
    }
}
