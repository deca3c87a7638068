//! The verification hooks of a [`super::Session`]: what neuron layers record of their spikes and
//! what reversible sequences find when they rebuild their inputs (docs/reversible.md §3.3). None
//! of them changes a result; each is off (`None`) until a caller turns it on.

use revsnn_reference::testing::relative_error;
use revsnn_reference::{Backend, Element};

use crate::error::Result;

/// What a forward or backward pass records for verification besides its results.
pub struct Probes<B: Backend> {
    /// When `Some`, every neuron layer folds the fingerprint of its spikes into it, where the
    /// backend computes: the reversible sequence compares forward and recompute this way.
    pub spike_fingerprint: Option<B::Word>,
    /// How many F or G recomputes of reversible backwards produced spikes that differ from
    /// their forward, counted where the backend computes, and how many were compared; read
    /// with [`Probes::diverged_recomputes`].
    diverged: DivergedRecomputes<B>,
    /// When `Some`, reversible sequences audit their reconstruction into it (verification mode).
    pub audit: Option<ReversibleAudit>,
    /// When `Some`, every neuron layer appends its spikes: how an audit compares the forward's
    /// spikes with the recompute's, element by element.
    pub spike_log: Option<Vec<B::Tensor>>,
}

impl<B: Backend> Default for Probes<B> {
    /// Every hook off, nothing counted.
    fn default() -> Self {
        Probes {
            spike_fingerprint: None,
            diverged: DivergedRecomputes::default(),
            audit: None,
            spike_log: None,
        }
    }
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

/// What an audited forward records of one reversible block, for the backward to compare against.
pub struct BlockRecord<T> {
    /// The block's input halves `(x1, x2)`.
    pub input: (T, T),
    /// The spikes F produced, layer by layer.
    pub f_spikes: Vec<T>,
    /// The spikes G produced.
    pub g_spikes: Vec<T>,
}

/// A count of diverged recomputes, still where the backend computes, and of the recomputes
/// compared, on the host: a finished pass's ([`Probes::take_diverged`]), or a running count
/// that passes add to ([`Probes::count_diverged_into`]), so that a training epoch reads its
/// count once.
#[derive(Debug)]
pub struct DivergedRecomputes<B: Backend> {
    /// No word until the first comparison: a count of 0.
    count: Option<B::Word>,
    compared: usize,
}

impl<B: Backend> Default for DivergedRecomputes<B> {
    /// Nothing compared, nothing counted.
    fn default() -> Self {
        DivergedRecomputes {
            count: None,
            compared: 0,
        }
    }
}

impl<B: Backend> DivergedRecomputes<B> {
    /// The count, read back (on a GPU, waits for the queued work): see
    /// [`Probes::diverged_recomputes`].
    pub fn read(&self, backend: &B) -> Result<usize> {
        match &self.count {
            Some(count) => Ok(backend.read_word(count)? as usize),
            None => Ok(0),
        }
    }

    /// How many recomputes were compared with their forward: those of the reversible blocks
    /// whose runs record fingerprints, two (F and G) per block and backward.
    pub fn compared(&self) -> usize {
        self.compared
    }
}

/// The hooks a recorded run ([`Probes::start_run`]) set aside, restored when it ends.
pub struct OuterProbes<B: Backend> {
    fingerprint: Option<B::Word>,
    /// `Some(outer log)` when the run logs its own spikes (under an audit).
    log: Option<Option<Vec<B::Tensor>>>,
}

impl<B: Backend> Probes<B> {
    /// The word into which a neuron layer folds the fingerprint of the spikes it fires
    /// (`NeuronOps::neuron_forward_fingerprinted`), when a run records one.
    pub fn spike_fingerprint_mut(&mut self) -> Option<&mut B::Word> {
        self.spike_fingerprint.as_mut()
    }

    /// Called by every neuron layer with the spikes it fired: kept when a log is on.
    pub fn log_spikes(&mut self, spikes: &B::Tensor) {
        if let Some(log) = self.spike_log.as_mut() {
            log.push(spikes.clone());
        }
    }

    /// Starts one recorded run of F or G: a fresh fingerprint, and when auditing a fresh spike
    /// log. Without an audit an outer spike log (if any) keeps receiving every spike.
    pub fn start_run(&mut self, backend: &B) -> Result<OuterProbes<B>> {
        let fingerprint = self.spike_fingerprint.replace(backend.zero_word()?);
        let log = self
            .audit
            .is_some()
            .then(|| self.spike_log.replace(Vec::new()));
        Ok(OuterProbes { fingerprint, log })
    }

    /// Ends the run [`Probes::start_run`] started: its spikes' fingerprint and, when auditing,
    /// its spikes; the outer hooks are back in place.
    pub fn end_run(&mut self, outer: OuterProbes<B>) -> (Option<B::Word>, Vec<B::Tensor>) {
        let fingerprint = self.spike_fingerprint.take();
        let spikes = match outer.log {
            Some(log) => std::mem::replace(&mut self.spike_log, log).unwrap_or_default(),
            None => Vec::new(),
        };
        self.spike_fingerprint = outer.fingerprint;
        (fingerprint, spikes)
    }

    /// Counts a recompute whose spikes' fingerprint differs from its forward's, where the
    /// backend computes (no wait); runs without a fingerprint have nothing to compare.
    pub fn compare_recompute(
        &mut self,
        backend: &B,
        forward: Option<&B::Word>,
        recompute: Option<&B::Word>,
    ) -> Result<()> {
        let (Some(forward), Some(recompute)) = (forward, recompute) else {
            return Ok(());
        };
        self.diverged.compared += 1;
        let count = match self.diverged.count.as_mut() {
            Some(count) => count,
            None => self.diverged.count.insert(backend.zero_word()?),
        };
        Ok(backend.count_unequal(count, forward, recompute)?)
    }

    /// How many F or G recomputes of reversible backwards produced spikes that differ from
    /// their forward (a reconstruction error large enough to flip a spike): 0 when the
    /// reversible gradient is exactly the stored-activation one. Reads the count back (on a
    /// GPU, waits for the queued work).
    pub fn diverged_recomputes(&self, backend: &B) -> Result<usize> {
        self.diverged.read(backend)
    }

    /// Counts the pass's diverged recomputes on top of `count` (a running count, taken back
    /// with [`Probes::take_diverged`]) instead of from 0.
    pub fn count_diverged_into(&mut self, count: DivergedRecomputes<B>) {
        self.diverged = count;
    }

    /// Moves the count of diverged recomputes out, for reading after the pass.
    pub fn take_diverged(&mut self) -> DivergedRecomputes<B> {
        std::mem::take(&mut self.diverged)
    }

    /// Adds the differences between recorded and recomputed spikes, and the reconstruction
    /// error of one block's input, to the audit.
    pub fn audit_block(
        &mut self,
        backend: &B,
        record: &BlockRecord<B::Tensor>,
        recomputed: (&[B::Tensor], &[B::Tensor]),
        reconstructed: (&B::Tensor, &B::Tensor),
    ) -> Result<()> {
        let widen = |t: &B::Tensor| -> Result<Vec<f64>> {
            Ok(backend.to_vec(t)?.into_iter().map(Element::widen).collect())
        };
        let (mut flips, mut compared) = (0u64, 0u64);
        for (before, again) in record
            .f_spikes
            .iter()
            .zip(recomputed.0)
            .chain(record.g_spikes.iter().zip(recomputed.1))
        {
            let (before, again) = (widen(before)?, widen(again)?);
            compared += before.len() as u64;
            flips += before.iter().zip(&again).filter(|(a, b)| a != b).count() as u64;
        }
        let mut original = widen(&record.input.0)?;
        original.extend(widen(&record.input.1)?);
        let mut rebuilt = widen(reconstructed.0)?;
        rebuilt.extend(widen(reconstructed.1)?);
        let error = relative_error(&rebuilt, &original);
        if let Some(audit) = self.audit.as_mut() {
            audit.spike_flips += flips;
            audit.spikes_compared += compared;
            audit.max_reconstruction_rel_err = audit.max_reconstruction_rel_err.max(error);
        }
        Ok(())
    }
}
