//! Layers and models written once over any [`Backend`] (docs/design.md principle 2).
//!
//! There is no autograd: every layer is a [`Layer`], a forward that returns what its backward
//! needs (`Saved`) and a backward that consumes it. Non-reversible parts keep their `Saved` on
//! the caller's stack (the tape); a [`reversible::ReversibleSequence`] keeps nothing but its output
//! and rebuilds each block's `Saved` in its backward (docs/reversible.md §3.3).

pub mod build;
pub mod layers;
pub mod params;
pub mod resnet;
pub mod reversible;
pub mod transformer;

use revsnn_reference::{Backend, BatchNormParams};

use crate::error::Result;
pub use params::{EntryKind, EntryValue, Grads, ParamId, ParamStore};

/// Training (BatchNorm batch statistics) or evaluation (running statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// Everything a forward or backward pass reads and writes besides its tensors.
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
    pub batch_norm: BatchNormParams,
    /// When `Some`, every neuron layer folds the fingerprint of its spikes into it: the
    /// reversible sequence compares forward and recompute this way.
    pub spike_fingerprint: Option<u64>,
    /// How many F or G recomputes of reversible backwards produced spikes that differ from
    /// their forward (a reconstruction error large enough to flip a spike): 0 when the
    /// reversible gradient is exactly the stored-activation one.
    pub diverged_recomputes: usize,
    /// When `Some`, reversible sequences audit their reconstruction into it (verification mode).
    pub audit: Option<ReversibleAudit>,
    /// When `Some`, every neuron layer appends its spikes: how an audit compares the forward's
    /// spikes with the recompute's, element by element.
    pub spike_log: Option<Vec<B::Tensor>>,
}

/// What auditing reversible sequences found: how exactly the backward rebuilt the forward.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReversibleAudit {
    /// The largest relative L2 error between a block's input and its reconstruction.
    pub max_reconstruction_rel_err: f64,
    /// Spikes of F and G that differ between the forward and the recompute.
    pub spike_flips: u64,
    /// Spikes compared.
    pub spikes_compared: u64,
}

impl<'a, B: Backend> Session<'a, B> {
    /// A session with PyTorch's BatchNorm constants, updating running statistics in training.
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
            batch_norm: BatchNormParams::default(),
            spike_fingerprint: None,
            diverged_recomputes: 0,
            audit: None,
            spike_log: None,
        }
    }
}

/// A differentiable piece of a model.
pub trait Layer<B: Backend> {
    /// What the backward needs.
    type Saved;

    /// `y = layer(x)`, and what the backward of this call needs.
    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)>;

    /// `dL/dx` from `dL/dy`; parameter gradients are accumulated into `session.grads`.
    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor>;
}

/// Runs `layers` one after another from `x`: the last output and every layer's `Saved`, in order.
pub fn forward_each<'l, B: Backend, L: Layer<B> + 'l>(
    layers: impl IntoIterator<Item = &'l L>,
    session: &mut Session<B>,
    x: B::Tensor,
) -> Result<(B::Tensor, Vec<L::Saved>)> {
    let mut x = x;
    let mut saved = Vec::new();
    for layer in layers {
        let (y, context) = layer.forward(session, &x)?;
        saved.push(context);
        x = y;
    }
    Ok((x, saved))
}

/// The backward of [`forward_each`] over the same `layers`, last layer first.
pub fn backward_each<'l, B: Backend, L: Layer<B> + 'l>(
    layers: impl IntoIterator<Item = &'l L>,
    session: &mut Session<B>,
    saved: Vec<L::Saved>,
    grad_y: B::Tensor,
) -> Result<B::Tensor> {
    let layers: Vec<&L> = layers.into_iter().collect();
    if layers.len() != saved.len() {
        return Err(revsnn_reference::OpError::shape(
            "layer sequence",
            format!("{} saved contexts for {} layers", saved.len(), layers.len()),
        )
        .into());
    }
    let mut grad = grad_y;
    for (layer, context) in layers.into_iter().zip(saved).rev() {
        grad = layer.backward(session, context, &grad)?;
    }
    Ok(grad)
}

/// What one training-mode forward and backward of a classifier produced.
#[derive(Debug)]
pub struct StepOutput<B: Backend> {
    /// `[B, K]`, from the training-mode forward.
    pub logits: B::Tensor,
    /// Mean cross-entropy.
    pub loss: B::Elem,
    /// `dL/dimages`, shaped like the images.
    pub grad_input: B::Tensor,
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
    ) -> Result<(B::Elem, B::CrossEntropyContext)> {
        Ok(match self {
            Targets::Hard(labels) => backend.cross_entropy_forward(logits, labels)?,
            Targets::Soft(rows) => backend.soft_cross_entropy_forward(logits, rows)?,
        })
    }
}

/// Forward of `model` (images to logits `[B, K]`) in the session's mode, the mean loss against
/// `targets` and the backward, accumulating parameter gradients into `session.grads`.
pub fn train_step<B: Backend, L: Layer<B>>(
    model: &L,
    session: &mut Session<B>,
    images: &B::Tensor,
    targets: Targets<B>,
) -> Result<StepOutput<B>> {
    let backend = session.backend;
    let (logits, saved) = model.forward(session, images)?;
    let (loss, context) = targets.loss(backend, &logits)?;
    let grad_logits =
        backend.cross_entropy_backward(&context, <B::Elem as num_traits::One>::one())?;
    let grad_input = model.backward(session, saved, &grad_logits)?;
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
        layers::Neuron { config }
    }
}
