//! The transformers' spiking tokenizer as one layer (docs/architectures.md §4.4, 4.5): stages
//! `[SN ->] SeqToANN([MaxPool ->] conv -> BN)` over `[T, B, C, H, W]`, every neuron fed by the
//! BatchNorm of the stage before it. In training with that BatchNorm's own statistics the neuron
//! keeps nothing for its backward: the backward makes the BatchNorm's output again from its
//! context and charges the neuron from it, once the stage's own backward has run
//! (docs/neurons.md §2.4.2), and the forward fires it within the stage before, over that output
//! as it is made (§2.4.3). The same gradients, bit for bit, as the stages in turn.

use revsnn_reference::{Backend, NeuronOps, OpError};

use super::compose::{SeqToAnn, handed_on_flat};
use super::layers::{BatchNorm, ConvBn, Fired, MaxPool, Neuron};
use super::{Layer, Session};
use crate::error::Result;

/// One stage: `[SN ->] SeqToANN([MaxPool ->] conv -> BN)`.
#[derive(Clone, Debug)]
pub struct TokenizerStage {
    pub neuron: Option<Neuron>,
    pub body: SeqToAnn<(Option<MaxPool>, ConvBn)>,
}

impl TokenizerStage {
    fn norm(&self) -> &BatchNorm {
        &self.body.layer.1.norm
    }

    /// The body, then `neuron` (the next stage's) over its output: the max pool over the
    /// time-flattened `x`, then [`ConvBn::forward_then_fire`], which in training with the batch's
    /// own statistics never writes the BatchNorm's output (docs/neurons.md §2.4.3). The spikes,
    /// the body's context, and the neuron's where it keeps one.
    fn body_then_fire<B: Backend>(
        &self,
        session: &mut Session<B>,
        x: B::Tensor,
        neuron: &Neuron,
    ) -> Result<Fired<B, BodySaved<B>>> {
        let (pool, conv_bn) = &self.body.layer;
        let backend = session.backend;
        let time_steps = backend.shape(&x)[0];
        let (pooled, pool_saved) = pool.forward(session, handed_on_flat(backend, x)?)?;
        let (spikes, saved, context) =
            conv_bn.forward_then_fire(session, pooled, neuron, time_steps)?;
        Ok((spikes, ((pool_saved, saved), time_steps), context))
    }
}

/// What a stage's body keeps for its backward.
type BodySaved<B> = <SeqToAnn<(Option<MaxPool>, ConvBn)> as Layer<B>>::Saved;

/// The stages in a row; the first has no neuron.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    pub stages: Vec<TokenizerStage>,
}

/// What a stage's backward needs: its neuron's context, none where the neuron kept nothing or
/// the stage has none, and the body's.
type StageSaved<B> = (Option<<B as NeuronOps>::NeuronContext>, BodySaved<B>);

impl<B: Backend> Layer<B> for Tokenizer {
    type Saved = Vec<StageSaved<B>>;

    fn forward(
        &self,
        session: &mut Session<B>,
        mut x: B::Tensor,
    ) -> Result<(B::Tensor, Self::Saved)> {
        let mut saved: Self::Saved = Vec::with_capacity(self.stages.len());
        // The context of a stage's neuron that the stage before fired, with `x` its spikes.
        let mut fired = None;
        for (i, stage) in self.stages.iter().enumerate() {
            let (spikes, neuron) = match (fired.take(), &stage.neuron) {
                (Some(context), _) => (x, context),
                (None, None) => (x, None),
                (None, Some(neuron)) => neuron.forward_after(session, None, x)?,
            };
            let (y, body) = match self.stages.get(i + 1).and_then(|next| next.neuron.as_ref()) {
                Some(next) => {
                    let (spikes, body, context) = stage.body_then_fire(session, spikes, next)?;
                    fired = Some(context);
                    (spikes, body)
                }
                None => stage.body.forward(session, spikes)?,
            };
            saved.push((neuron, body));
            x = y;
        }
        Ok((x, saved))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        mut saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        if saved.len() != self.stages.len() {
            let detail = format!("{} saved stages for {}", saved.len(), self.stages.len());
            return Err(OpError::shape("tokenizer", detail).into());
        }
        let mut grad = grad_y;
        while let Some((kept, body)) = saved.pop() {
            // the stage the popped context belongs to, the lengths being equal
            let stage = &self.stages[saved.len()];
            grad = stage.body.backward(session, body, grad)?;
            if let Some(neuron) = &stage.neuron {
                grad = self.neuron_backward(session, neuron, kept, &saved, grad)?;
            }
        }
        Ok(grad)
    }
}

impl Tokenizer {
    /// The backward of a stage's neuron, its context `kept` or made again from the BatchNorm of
    /// the stage before, whose context is the last of `before`.
    fn neuron_backward<B: Backend>(
        &self,
        session: &mut Session<B>,
        neuron: &Neuron,
        kept: Option<B::NeuronContext>,
        before: &[StageSaved<B>],
        grad: B::Tensor,
    ) -> Result<B::Tensor> {
        match before.last() {
            Some((_, ((_, (_, norm)), time_steps))) => {
                let previous = self.stages[before.len() - 1].norm();
                let source = previous.neuron_source(session, norm, kept, "tokenizer")?;
                neuron.backward_from_source(session, source, *time_steps, grad)
            }
            // the first stage's neuron, fed by no BatchNorm, always keeps its context
            None => {
                let context = kept.ok_or_else(|| {
                    let detail = "internal error: the first stage's neuron kept nothing";
                    OpError::shape("tokenizer", detail)
                })?;
                neuron.backward(session, context, grad)
            }
        }
    }
}
