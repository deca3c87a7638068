//! Layers and models written once over any [`Backend`] (docs/design.md principle 2).
//!
//! There is no autograd: every layer is a [`Layer`], a forward that returns what its backward
//! needs (`Saved`) and a backward that consumes it. Layers compose ([`compose`]): a tuple of
//! layers is a layer whose backward runs its parts' in reverse, so a model is its layers nested
//! and only attention ([`attention`]) and the reversible sequence write a backward of their own.
//! Non-reversible parts keep their `Saved` on the caller's stack (the tape); a
//! [`reversible::ReversibleSequence`] keeps nothing but its output and rebuilds each block's
//! `Saved` in its backward (docs/reversible.md §3.3).

pub mod attention;
pub mod build;
pub mod compose;
pub mod layers;
pub mod params;
pub mod probes;
pub mod resnet;
pub mod reversible;
pub mod sync_batch_norm;
pub mod tokenizer;
pub mod transformer;

use revsnn_reference::{Backend, BatchNormParams, Onto};

use crate::collective::Collective;
use crate::error::Result;
pub use params::{EntryKind, EntryValue, FinalGrads, Grads, ParamId, ParamStore};
pub use probes::{Probes, ReversibleAudit};

/// Training (BatchNorm batch statistics) or evaluation (running statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// Everything a forward or backward pass reads and writes besides its tensors: the model's
/// state, and the verification hooks in [`Probes`].
pub struct Session<'a, B: Backend> {
    pub backend: &'a B,
    /// Weights (read) and BatchNorm running statistics (updated by training-mode forwards).
    pub store: &'a mut ParamStore<B>,
    /// Parameter gradients, accumulated by backward passes.
    pub grads: &'a mut Grads<B>,
    pub mode: Mode,
    /// Whether a training-mode BatchNorm updates its running statistics now; the reversible
    /// backward turns it off while recomputing under the `once` policy.
    pub update_running_stats: bool,
    /// The factor the loss is multiplied by before the backward (fp16 loss scaling): the
    /// gradient of the loss the backward starts from. 1 by default.
    pub loss_scale: f32,
    pub batch_norm: BatchNormParams,
    /// The data-parallel group whose ranks share training-mode BatchNorm statistics
    /// ([`sync_batch_norm`]); `None`: each BatchNorm uses its own batch's.
    pub sync_batch_norm: Option<&'a dyn Collective<B>>,
    /// Told of every contribution to a gradient ([`Session::accumulate`]); `None`: nobody
    /// listens (one rank).
    pub final_grads: Option<&'a mut dyn FinalGrads<B>>,
    /// What the pass records for verification (all off by default).
    pub probes: Probes<B>,
}

impl<'a, B: Backend> Session<'a, B> {
    /// A session with PyTorch's BatchNorm constants, updating running statistics in training,
    /// every probe off.
    pub fn new(
        backend: &'a B,
        store: &'a mut ParamStore<B>,
        grads: &'a mut Grads<B>,
        mode: Mode,
    ) -> Self {
        Session {
            backend,
            store,
            grads,
            mode,
            update_running_stats: true,
            loss_scale: 1.0,
            batch_norm: BatchNormParams::default(),
            sync_batch_norm: None,
            final_grads: None,
            probes: Probes::default(),
        }
    }
}

impl<B: Backend> Session<'_, B> {
    /// `grad[id] += value`, then tells [`Session::final_grads`], if any, of the contribution.
    /// Every backward adds its parameter gradients through here.
    pub fn accumulate(&mut self, id: ParamId, value: B::Tensor) -> Result<()> {
        self.grads.accumulate(self.backend, id, value)?;
        match &mut self.final_grads {
            Some(sink) => sink.accumulated(self.backend, id, self.grads),
            None => Ok(()),
        }
    }
}

/// A differentiable piece of a model. Both passes take their tensor by value, so that a layer can
/// let its input or incoming gradient go as soon as it has read it: an enclosing composition then
/// keeps nothing alive that only this layer needed (docs/memory.md §9.6). A caller that needs the
/// tensor afterwards passes a clone, which shares the storage.
pub trait Layer<B: Backend> {
    /// What the backward needs.
    type Saved;

    /// `y = layer(x)`, and what the backward of this call needs.
    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)>;

    /// `residual ± layer(x)` ([`Onto`]), and what the backward of this call needs, which is
    /// the forward's: the reversible couplings (docs/reversible.md §3.3). The default lands the
    /// forward's output on the residual ([`Onto::land`]). A layer whose last op can write its
    /// output over the residual passes `onto` down to it, so that no output is allocated beside
    /// the residual.
    fn forward_onto(
        &self,
        session: &mut Session<B>,
        x: B::Tensor,
        onto: Onto<B::Tensor>,
    ) -> Result<(B::Tensor, Self::Saved)> {
        let (y, saved) = self.forward(session, x)?;
        Ok((onto.land(session.backend, y)?, saved))
    }

    /// `dL/dx` from `dL/dy`; parameter gradients are accumulated into `session.grads`.
    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor>;
}

/// What one training-mode forward and backward of a classifier produced.
#[derive(Debug)]
pub struct StepOutput<B: Backend> {
    /// `[B, K]`, from the training-mode forward.
    pub logits: B::Tensor,
    /// Mean cross-entropy, a `[1]` tensor where the backend computes: read it with
    /// [`StepOutput::loss_value`], or together with the logits.
    pub loss: B::Tensor,
    /// `dL/dimages`, shaped like the images.
    pub grad_input: B::Tensor,
}

impl<B: Backend> StepOutput<B> {
    /// The mean cross-entropy, read back (on a GPU, waits for the queued work).
    pub fn loss_value(&self, backend: &B) -> Result<B::Elem> {
        Ok(backend.scalar(&self.loss)?)
    }
}

/// What a classifier's loss compares its logits `[B, K]` with.
pub enum Targets<'a, B: Backend> {
    /// One class per sample: the mean cross-entropy.
    Hard(&'a [usize]),
    /// Rows of class probabilities `[B, K]` (mixup and label smoothing, docs/recipes.md §5.1,
    /// 5.3): the mean soft-target cross-entropy.
    Soft(&'a B::Tensor),
}

impl<B: Backend> Targets<'_, B> {
    /// The mean loss of `logits` against these targets, and the context of its backward.
    pub fn loss(
        &self,
        backend: &B,
        logits: &B::Tensor,
    ) -> Result<(B::Tensor, B::CrossEntropyContext)> {
        Ok(match self {
            Targets::Hard(labels) => backend.cross_entropy_loss(logits, labels)?,
            Targets::Soft(rows) => backend.soft_cross_entropy_loss(logits, rows)?,
        })
    }
}

/// Forward of `model` (images to logits `[B, K]`) in the session's mode, the mean loss against
/// `targets` and the backward of `session.loss_scale` times it, accumulating parameter
/// gradients into `session.grads`.
pub fn train_step<B: Backend, L: Layer<B>>(
    model: &L,
    session: &mut Session<B>,
    images: &B::Tensor,
    targets: Targets<B>,
) -> Result<StepOutput<B>> {
    let backend = session.backend;
    let (logits, saved) = model.forward(session, images.clone())?;
    let (loss, context) = targets.loss(backend, &logits)?;
    let grad_loss = <B::Elem as revsnn_reference::Element>::cast(f64::from(session.loss_scale));
    let grad_logits = backend.cross_entropy_backward(&context, grad_loss)?;
    let grad_input = model.backward(session, saved, grad_logits)?;
    Ok(StepOutput {
        logits,
        loss,
        grad_input,
    })
}

/// Choices made when a model is built.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BuildOptions {
    /// How the reversible sequences run (ignored by the non-reversible models).
    pub reversible: reversible::ReversibleOptions,
    /// Every neuron fires its surrogate's primitive instead of a Heaviside spike, with
    /// `detach_reset` off: a differentiable model whose exact gradient the backward computes, for
    /// finite-difference checks of whole models ([`revsnn_reference::Firing::Smooth`]).
    pub smooth_neurons: bool,
}

impl BuildOptions {
    /// `config` as this build wants it: unchanged, or made smooth.
    pub fn neuron(&self, config: revsnn_reference::NeuronConfig) -> layers::Neuron {
        let config = if self.smooth_neurons {
            revsnn_reference::NeuronConfig {
                firing: revsnn_reference::Firing::Smooth,
                detach_reset: false,
                ..config
            }
        } else {
            config
        };
        layers::Neuron::new(config)
    }
}
