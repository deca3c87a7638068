//! BatchNorm as a layer: the batch's own statistics or synchronised ones in training, the
//! running ones in evaluation (docs/conventions.md §1), and where a neuron after it finds its
//! context (docs/neurons.md §2.4.2).

#[cfg(doc)]
use revsnn_reference::ConvBatchNormOps;
use revsnn_reference::contract::BackendNeuronSource;
use revsnn_reference::{Backend, BatchStats, NeuronSource, OpError, RunningStats};

use crate::error::{Error, Result};
use crate::model::params::ParamId;
use crate::model::sync_batch_norm::{self, SyncSaved};
use crate::model::{Layer, Mode, Session};

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
    pub(super) fn into_local(self) -> std::result::Result<B::BatchNormContext, Self> {
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
    pub(in crate::model) fn neuron_source<'a, B: Backend>(
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
    pub(super) fn accumulate<B: Backend>(
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
    pub(super) fn record_batch<B: Backend>(
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
