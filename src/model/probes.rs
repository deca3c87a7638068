//! The verification hooks of a [`super::Session`]: what neuron layers record of their spikes and
//! what reversible sequences find when they rebuild their inputs (docs/reversible.md §3.3). None
//! of them changes a result; each is off (`None`) until a caller turns it on.

use revsnn_reference::testing::relative_error;
use revsnn_reference::{Backend, Element};

use crate::error::Result;

/// What a forward or backward pass records for verification besides its results.
pub struct Probes<B: Backend> {
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

impl<B: Backend> Default for Probes<B> {
    /// Every hook off, nothing counted.
    fn default() -> Self {
        Probes {
            spike_fingerprint: None,
            diverged_recomputes: 0,
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

/// The hooks a recorded run ([`Probes::start_run`]) set aside, restored when it ends.
pub struct OuterProbes<T> {
    fingerprint: Option<u64>,
    /// `Some(outer log)` when the run logs its own spikes (under an audit).
    log: Option<Option<Vec<T>>>,
}

impl<B: Backend> Probes<B> {
    /// Called by every neuron layer with the spikes it fired.
    pub fn record_spikes(&mut self, backend: &B, spikes: &B::Tensor) -> Result<()> {
        if let Some(fingerprint) = self.spike_fingerprint.as_mut() {
            *fingerprint = fingerprint.rotate_left(5) ^ backend.fingerprint(spikes)?;
        }
        if let Some(log) = self.spike_log.as_mut() {
            log.push(spikes.clone());
        }
        Ok(())
    }

    /// Starts one recorded run of F or G: a fresh fingerprint, and when auditing a fresh spike
    /// log. Without an audit an outer spike log (if any) keeps receiving every spike.
    pub fn start_run(&mut self) -> OuterProbes<B::Tensor> {
        let fingerprint = self.spike_fingerprint.replace(0);
        let log = self
            .audit
            .is_some()
            .then(|| self.spike_log.replace(Vec::new()));
        OuterProbes { fingerprint, log }
    }

    /// Ends the run [`Probes::start_run`] started: its spikes' fingerprint and, when auditing,
    /// its spikes; the outer hooks are back in place.
    pub fn end_run(&mut self, outer: OuterProbes<B::Tensor>) -> (u64, Vec<B::Tensor>) {
        let fingerprint = self.spike_fingerprint.take().unwrap_or(0);
        let spikes = match outer.log {
            Some(log) => std::mem::replace(&mut self.spike_log, log).unwrap_or_default(),
            None => Vec::new(),
        };
        self.spike_fingerprint = outer.fingerprint;
        (fingerprint, spikes)
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
