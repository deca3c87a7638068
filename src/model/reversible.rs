//! The reversible spiking block and sequence (docs/reversible.md §3): the forward keeps only its output; the
//! backward walks the blocks last to first, recomputing G then F from `v = 0` and reconstructing
//! each block's input from its output:
//!
//! ```text
//! forward:   y1 = x1 + F(x2)            y2 = x2 + G(y1)
//! backward:  dY1 = dy1 + G'(y1)^T dy2   x2 = y2 - G(y1)
//!            dx2 = dy2 + F'(x2)^T dY1   x1 = y1 - F(x2)        dx1 = dY1
//! ```
//!
//! Two couplings: [`Coupling::Float`] is the paper's; [`Coupling::Exact`] keeps the stream and
//! every F/G output on the grid of multiples of `2^-k`, where sums and differences are exact in
//! the float type, so the inverse reconstructs every input bit for bit (the rounding's gradient
//! is taken as the identity).

use revsnn_reference::{Backend, DType, Element, Onto, WordOps};

use super::layers::KeepInput;
use super::probes::BlockRecord;
use super::{Layer, Mode, Session};
use crate::error::Result;

/// How the two halves of the stream are coupled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Coupling {
    /// `y1 = x1 + F(x2)`, `y2 = x2 + G(y1)` in floating point (the official code).
    #[default]
    Float,
    /// The same with F, G and the stream rounded to multiples of `2^-k` ([`Coupling::grid_bits`]),
    /// making the inverse exact.
    Exact,
}

impl Coupling {
    /// `k` of the exact coupling's grid `2^-k` for `dtype`. Values on the grid stay exact while
    /// `|v| < 2^(p - k)` for `p` mantissa bits: f32 (p = 24) uses k = 12, so resolution
    /// 2.4e-4 and range +-4096; f64 (p = 53) uses k = 30, so resolution 9.3e-10 and range +-8.4e6.
    /// Activations of these models (BatchNorm outputs summed over a few dozen blocks) stay far
    /// inside both ranges.
    pub fn grid_bits(dtype: DType) -> i32 {
        match dtype {
            DType::F32 => 12,
            DType::F64 => 30,
        }
    }
}

/// What the backward's recompute does to BatchNorm running statistics (docs/choices.md §A3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RecomputeStats {
    /// The recompute normalises with its own batch statistics and leaves the running statistics
    /// alone, so each step updates them once.
    #[default]
    Once,
    /// The recompute updates them a second time, as the official code does.
    Faithful,
}

/// What the forward keeps for the backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Storage {
    /// Only the output: the backward recomputes (the reversible algorithm).
    #[default]
    Reversible,
    /// Every block's F and G contexts: plain backpropagation through the same model, the
    /// baseline the reversible gradients are checked against.
    StoredActivations,
}

/// How a reversible sequence runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReversibleOptions {
    pub coupling: Coupling,
    pub recompute_stats: RecomputeStats,
    pub storage: Storage,
}

/// One reversible block: F and G act on half the channels each.
#[derive(Clone, Debug)]
pub struct ReversibleBlock<F, G> {
    pub f: F,
    pub g: G,
}

impl<F: KeepInput, G: KeepInput> ReversibleBlock<F, G> {
    /// The block of `f` and `g`, each keeping its input for its backward rather than its first
    /// neuron's potentials: the reverse holds F's and G's inputs through their backward anyway
    /// (§3.3 of docs/reversible.md; docs/neurons.md §2.4.1).
    pub fn keeping_inputs(f: F, g: G) -> Self {
        ReversibleBlock {
            f: f.keeping_input(),
            g: g.keeping_input(),
        }
    }
}

/// A sequence of reversible blocks over `[T, B, C, ...]`, split along the channel axis 2 into
/// contiguous halves (docs/reversible.md §3.1).
#[derive(Clone, Debug)]
pub struct ReversibleSequence<F, G> {
    pub blocks: Vec<ReversibleBlock<F, G>>,
    pub options: ReversibleOptions,
}

/// What a [`ReversibleSequence`] forward keeps.
pub enum SequenceSaved<B: Backend, FS, GS> {
    /// The output and, per block, the fingerprints of the spikes F and G produced; under an
    /// audit ([`super::Probes::audit`]) also each block's input and spikes.
    Reversible {
        output: B::Tensor,
        fingerprints: Vec<FingerprintPair<B>>,
        audit: Vec<BlockRecord<B::Tensor>>,
    },
    /// Every block's F and G contexts.
    Stored { contexts: Vec<(FS, GS)> },
}

/// The spike fingerprints of one block's F and G runs, kept where the backend computes.
type FingerprintPair<B> = (Option<<B as WordOps>::Word>, Option<<B as WordOps>::Word>);

/// The channel axis of `[T, B, C, ...]`.
const CHANNEL_AXIS: usize = 2;

fn halves<B: Backend>(backend: &B, x: &B::Tensor) -> Result<(B::Tensor, B::Tensor)> {
    let channels = backend.shape(x)[CHANNEL_AXIS];
    if channels % 2 != 0 {
        return Err(revsnn_reference::OpError::shape(
            "reversible block",
            format!("the channel axis must split in two halves, got {channels} channels"),
        )
        .into());
    }
    let half = channels / 2;
    Ok((
        backend.narrow(x, CHANNEL_AXIS, 0, half)?,
        backend.narrow(x, CHANNEL_AXIS, half, half)?,
    ))
}

/// One coupled run of F or G with its spikes' fingerprint, and under an audit the spikes
/// themselves.
struct Recorded<B: Backend, S> {
    /// The coupling's result, `residual ± F(x)` or `residual ± G(x)`.
    output: B::Tensor,
    saved: S,
    fingerprint: Option<B::Word>,
    spikes: Vec<B::Tensor>,
}

impl<F, G> ReversibleSequence<F, G> {
    fn grid<B: Backend>(&self) -> Option<i32> {
        (self.options.coupling == Coupling::Exact)
            .then(|| Coupling::grid_bits(<B::Elem as Element>::DTYPE))
    }

    /// `residual ± layer(x)` with `layer`'s context: the update lands on the residual, written
    /// over its storage where the backend can ([`Layer::forward_onto`]; F's and G's outputs and
    /// the residual serve nothing else). Under the exact coupling the update is first rounded to
    /// the grid, then added ([`Onto::land`]).
    fn coupled<B: Backend, L: Layer<B>>(
        &self,
        layer: &L,
        session: &mut Session<B>,
        x: B::Tensor,
        onto: Onto<B::Tensor>,
    ) -> Result<(B::Tensor, L::Saved)> {
        let Some(k) = self.grid::<B>() else {
            return layer.forward_onto(session, x, onto);
        };
        let backend = session.backend;
        let (update, saved) = layer.forward(session, x)?;
        let on_grid = backend.quantize(&update, k)?;
        drop(update);
        Ok((onto.land(backend, on_grid)?, saved))
    }

    /// [`Self::coupled`] with spike fingerprinting on, and when auditing with its spikes logged
    /// into the result ([`super::Probes::start_run`]).
    fn recorded<B: Backend, L: Layer<B>>(
        &self,
        layer: &L,
        session: &mut Session<B>,
        x: B::Tensor,
        onto: Onto<B::Tensor>,
    ) -> Result<Recorded<B, L::Saved>> {
        let outer = session.probes.start_run(session.backend)?;
        let result = self.coupled(layer, session, x, onto);
        let (fingerprint, spikes) = session.probes.end_run(outer);
        let (output, saved) = result?;
        Ok(Recorded {
            output,
            saved,
            fingerprint,
            spikes,
        })
    }
}

impl<B, F, G> Layer<B> for ReversibleSequence<F, G>
where
    B: Backend,
    F: Layer<B>,
    G: Layer<B>,
{
    type Saved = SequenceSaved<B, F::Saved, G::Saved>;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        // The stream travels as its two halves; the whole tensor exists only at the two ends, so
        // no block holds a stream beside its own copy in halves.
        let (mut x1, mut x2) = match self.grid::<B>() {
            Some(k) => halves(backend, &backend.quantize(&x, k)?)?,
            None => halves(backend, &x)?,
        };
        drop(x);
        let keep =
            self.options.storage == Storage::StoredActivations && session.mode == Mode::Train;
        let auditing = session.probes.audit.is_some() && !keep;
        let mut contexts = Vec::new();
        let mut fingerprints = Vec::with_capacity(self.blocks.len());
        let mut audit = Vec::new();
        for block in &self.blocks {
            let input = auditing.then(|| (x1.clone(), x2.clone()));
            // Unless activations are stored, F's context drops as soon as F returns, before G
            // runs, and G's as soon as G returns: one sub-graph's context at a time. F lands on
            // x1 and G on x2, which serve nothing else.
            let f = self.recorded(&block.f, session, x2.clone(), Onto::add(x1))?;
            let f_saved = keep.then_some(f.saved);
            let y1 = f.output;
            let g = self.recorded(&block.g, session, y1.clone(), Onto::add(x2))?;
            let g_saved = keep.then_some(g.saved);
            if let Some(input) = input {
                audit.push(BlockRecord {
                    input,
                    f_spikes: f.spikes,
                    g_spikes: g.spikes,
                });
            }
            (x1, x2) = (y1, g.output);
            fingerprints.push((f.fingerprint, g.fingerprint));
            if let (Some(f_saved), Some(g_saved)) = (f_saved, g_saved) {
                contexts.push((f_saved, g_saved));
            }
        }
        let stream = backend.concat(&[&x1, &x2], CHANNEL_AXIS)?;
        let saved = if keep {
            SequenceSaved::Stored { contexts }
        } else {
            SequenceSaved::Reversible {
                output: stream.clone(),
                fingerprints,
                audit,
            }
        };
        Ok((stream, saved))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        let backend = session.backend;
        match saved {
            SequenceSaved::Stored { contexts } => {
                let (mut dy1, mut dy2) = halves(backend, &grad_y)?;
                drop(grad_y);
                for (block, (f_saved, g_saved)) in self.blocks.iter().zip(contexts).rev() {
                    let g_grad = block.g.backward(session, g_saved, dy2.clone())?;
                    let dx1 = backend.add_reusing(&dy1, g_grad)?;
                    let f_grad = block.f.backward(session, f_saved, dx1.clone())?;
                    let dx2 = backend.add_reusing(&dy2, f_grad)?;
                    (dy1, dy2) = (dx1, dx2);
                }
                Ok(backend.concat(&[&dy1, &dy2], CHANNEL_AXIS)?)
            }
            SequenceSaved::Reversible {
                output,
                fingerprints,
                audit,
            } => {
                let update_before = session.update_running_stats;
                session.update_running_stats =
                    update_before && self.options.recompute_stats == RecomputeStats::Faithful;
                let result = self.reverse(session, output, fingerprints, audit, grad_y);
                session.update_running_stats = update_before;
                result
            }
        }
    }
}

impl<F, G> ReversibleSequence<F, G> {
    /// The input of the forward whose output is `y`, by the reverse process of docs/reversible.md §3.2
    /// without gradients: last block first, `x2 = y2 - G(y1)` then `x1 = y1 - F(x2)`, each F and
    /// G run forwards in time from `v = 0`. It must run in the forward's mode; BatchNorm running
    /// statistics are updated as the backward's recompute would ([`RecomputeStats`]). Under
    /// [`Coupling::Exact`] the result is bitwise the forward's (quantized) input.
    pub fn inverse<B>(&self, session: &mut Session<B>, y: &B::Tensor) -> Result<B::Tensor>
    where
        B: Backend,
        F: Layer<B>,
        G: Layer<B>,
    {
        let backend = session.backend;
        let update_before = session.update_running_stats;
        session.update_running_stats =
            update_before && self.options.recompute_stats == RecomputeStats::Faithful;
        let mut reconstruct = || -> Result<B::Tensor> {
            let (mut y1, mut y2) = halves(backend, y)?;
            for block in self.blocks.iter().rev() {
                let (x2, _) = self.coupled(&block.g, session, y1.clone(), Onto::sub(y2))?;
                let (x1, _) = self.coupled(&block.f, session, x2.clone(), Onto::sub(y1))?;
                (y1, y2) = (x1, x2);
            }
            Ok(backend.concat(&[&y1, &y2], CHANNEL_AXIS)?)
        };
        let result = reconstruct();
        session.update_running_stats = update_before;
        result
    }

    /// The backward by recomputation of docs/reversible.md §3.3, G before F, last block first.
    fn reverse<B>(
        &self,
        session: &mut Session<B>,
        output: B::Tensor,
        fingerprints: Vec<FingerprintPair<B>>,
        mut audit: Vec<BlockRecord<B::Tensor>>,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor>
    where
        B: Backend,
        F: Layer<B>,
        G: Layer<B>,
    {
        let backend = session.backend;
        // Output and gradient travel as halves, as in the forward: at any time this holds one
        // block's output and input halves and their gradients, and one recomputed F or G.
        let (mut y1, mut y2) = halves(backend, &output)?;
        drop(output);
        let (mut dy1, mut dy2) = halves(backend, &grad_y)?;
        drop(grad_y);
        for (block, (f_print, g_print)) in self.blocks.iter().zip(fingerprints).rev() {
            // Each reconstruction is the recompute's coupling, landing on the half it rebuilds
            // from, before the backward through it.
            let g = self.recorded(&block.g, session, y1.clone(), Onto::sub(y2))?;
            let x2 = g.output;
            let g_grad = block.g.backward(session, g.saved, dy2.clone())?;
            let dx1 = backend.add_reusing(&dy1, g_grad)?;
            drop(dy1);
            let f = self.recorded(&block.f, session, x2.clone(), Onto::sub(y1))?;
            let x1 = f.output;
            let f_grad = block.f.backward(session, f.saved, dx1.clone())?;
            let dx2 = backend.add_reusing(&dy2, f_grad)?;
            drop(dy2);
            let probes = &mut session.probes;
            probes.compare_recompute(backend, g_print.as_ref(), g.fingerprint.as_ref())?;
            probes.compare_recompute(backend, f_print.as_ref(), f.fingerprint.as_ref())?;
            if let Some(record) = audit.pop() {
                let recomputed = (&f.spikes[..], &g.spikes[..]);
                session
                    .probes
                    .audit_block(backend, &record, recomputed, (&x1, &x2))?;
            }
            (y1, y2, dy1, dy2) = (x1, x2, dx1, dx2);
        }
        // The rebuilt input has served its last block: it goes before the gradient's halves
        // are joined, so the join holds the gradient alone.
        drop((y1, y2));
        Ok(backend.concat(&[&dy1, &dy2], CHANNEL_AXIS)?)
    }
}
