//! The transformers' spiking tokenizer as one layer (docs/architectures.md §4.4, 4.5): stages
//! `[SN ->] SeqToANN([MaxPool ->] conv -> BN)` over `[T, B, C, H, W]`, every neuron fed by the
//! BatchNorm of the stage before it. In training with that BatchNorm's own statistics the neuron
//! keeps nothing for its backward: the backward makes the BatchNorm's output again from its
//! context and charges the neuron from it, once the stage's own backward has run
//! (docs/neurons.md §2.4.2). The same gradients, bit for bit, as the stages in turn.

use revsnn_reference::{Backend, OpError};

use super::compose::SeqToAnn;
use super::layers::{BatchNorm, ConvBn, MaxPool, Neuron};
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
}

/// The stages in a row; the first has no neuron.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    pub stages: Vec<TokenizerStage>,
}

/// What a stage's backward needs: its neuron's context, none where the neuron kept nothing or
/// the stage has none, and the body's.
type StageSaved<B> = (
    Option<<B as Backend>::NeuronContext>,
    <SeqToAnn<(Option<MaxPool>, ConvBn)> as Layer<B>>::Saved,
);

impl<B: Backend> Layer<B> for Tokenizer {
    type Saved = Vec<StageSaved<B>>;

    fn forward(
        &self,
        session: &mut Session<B>,
        mut x: B::Tensor,
    ) -> Result<(B::Tensor, Self::Saved)> {
        let mut saved: Self::Saved = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            let previous = saved.last().map(|(_, ((_, (_, norm)), _))| norm);
            let (spikes, neuron) = match &stage.neuron {
                None => (x, None),
                Some(neuron) => neuron.forward_after(session, previous, x)?,
            };
            let (y, body) = stage.body.forward(session, spikes)?;
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
