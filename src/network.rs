//! A whole model: its spec, its parameters under the official names, and its layers, with the
//! training step and evaluation every command uses.

use revsnn_reference::Backend;

use crate::collective::Collective;
use crate::error::Result;
use crate::model::build::Builder;
use crate::model::probes::DivergedRecomputes;
use crate::model::resnet::{MsResNet, RevSResNet};
use crate::model::transformer::{RevSFormer, Spikingformer};
use crate::model::{
    BuildOptions, FinalGrads, Grads, Layer, Mode, ParamStore, ReversibleAudit, Session, StepOutput,
    Targets, train_step,
};
use crate::spec::{Arch, ModelSpec};

/// The layers of one of the four families.
#[derive(Clone, Debug)]
pub enum Body {
    RevSResNet(RevSResNet),
    MsResNet(MsResNet),
    RevSFormer(RevSFormer),
    Spikingformer(Spikingformer),
}

/// A model ready to run on backend `B`.
#[derive(Clone, Debug)]
pub struct Network<B: Backend> {
    pub spec: ModelSpec,
    pub options: BuildOptions,
    pub store: ParamStore<B>,
    pub body: Body,
}

/// What a caller adds to a training step: a data-parallel rank's collectives (both `None` for one
/// rank), and the running count its diverged recomputes are added to.
pub struct StepHooks<'a, B: Backend> {
    /// The group whose ranks share training-mode BatchNorm statistics (`--sync-bn`).
    pub sync_batch_norm: Option<&'a dyn Collective<B>>,
    /// Told of every gradient contribution as the backward makes it: the all-reduce in buckets
    /// (`collective::GradReducer`).
    pub final_grads: Option<&'a mut dyn FinalGrads<B>>,
    /// The count of the steps before, which the step's own diverged recomputes are counted on
    /// top of and returned in [`StepReport::diverged_recomputes`] (a training epoch reads it
    /// once, at its end).
    pub diverged_recomputes: DivergedRecomputes<B>,
}

impl<B: Backend> Default for StepHooks<'_, B> {
    /// One rank alone, counting from 0: nothing added to the step.
    fn default() -> Self {
        StepHooks {
            sync_batch_norm: None,
            final_grads: None,
            diverged_recomputes: DivergedRecomputes::default(),
        }
    }
}

/// How one forward (and backward) pass runs: its mode and its side effects.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PassOptions {
    pub mode: Mode,
    /// Whether training-mode BatchNorms update their running statistics.
    pub update_running_stats: bool,
    /// Whether reversible sequences audit their reconstruction (keeping every block's input and
    /// spikes for the comparison: a verification mode, not for training).
    pub audit: bool,
    /// The factor the loss is multiplied by before the backward (fp16 loss scaling,
    /// docs/precision.md): every gradient comes back multiplied by it. 1 but in fp16 training.
    pub loss_scale: f32,
}

impl Default for PassOptions {
    fn default() -> Self {
        PassOptions {
            mode: Mode::Train,
            update_running_stats: true,
            audit: false,
            loss_scale: 1.0,
        }
    }
}

/// What [`Network::train_step`] reports besides the step's output.
#[derive(Debug)]
pub struct StepReport<B: Backend> {
    pub output: StepOutput<B>,
    /// Reversible recomputes whose spikes differed from the forward's (by fingerprint), counted
    /// where the backend computes on top of the count passed in ([`StepHooks`]): reading it
    /// waits for the device.
    pub diverged_recomputes: DivergedRecomputes<B>,
    /// With [`PassOptions::audit`]: reconstruction errors and spike flips, counted exactly.
    pub audit: Option<ReversibleAudit>,
}

/// Runs `$body` with `$model` bound to the concrete layers of `$network.body`.
macro_rules! with_body {
    ($network:expr, $model:ident => $body:expr) => {
        match &$network.body {
            Body::RevSResNet($model) => $body,
            Body::MsResNet($model) => $body,
            Body::RevSFormer($model) => $body,
            Body::Spikingformer($model) => $body,
        }
    };
}

impl<B: Backend> Network<B> {
    /// Builds `spec` with random weights from `seed` and the official initialisation.
    pub fn new(backend: &B, spec: &ModelSpec, seed: u64, options: BuildOptions) -> Result<Self> {
        spec.validate()?;
        let mut builder = Builder::new(backend, seed);
        let body = match spec.arch {
            Arch::Revsresnet | Arch::RevsresnetDvs => {
                Body::RevSResNet(RevSResNet::build(&mut builder, spec, &options)?)
            }
            Arch::Msresnet | Arch::MsresnetDvs => {
                Body::MsResNet(MsResNet::build(&mut builder, spec, &options)?)
            }
            Arch::Revsformer | Arch::RevsformerDvs => {
                Body::RevSFormer(RevSFormer::build(&mut builder, spec, &options)?)
            }
            Arch::Spikingformer | Arch::SpikingformerDvs => {
                Body::Spikingformer(Spikingformer::build(&mut builder, spec, &options)?)
            }
        };
        Ok(Network {
            spec: spec.clone(),
            options,
            store: builder.store,
            body,
        })
    }

    /// Fresh, empty gradients for this network.
    pub fn zero_grads(&self) -> Grads<B> {
        Grads::new(self.store.entries().len())
    }

    /// One forward (in `run.mode`), the mean loss against `targets` and the backward;
    /// parameter gradients accumulate into `grads`.
    pub fn train_step(
        &mut self,
        backend: &B,
        grads: &mut Grads<B>,
        images: &B::Tensor,
        targets: Targets<B>,
        run: PassOptions,
    ) -> Result<StepReport<B>> {
        self.train_step_hooked(backend, grads, images, targets, run, StepHooks::default())
    }

    /// [`Network::train_step`] with what the caller adds to it ([`StepHooks`]): as one rank of
    /// a data-parallel group, counting on from the steps before.
    pub fn train_step_hooked(
        &mut self,
        backend: &B,
        grads: &mut Grads<B>,
        images: &B::Tensor,
        targets: Targets<B>,
        run: PassOptions,
        hooks: StepHooks<'_, B>,
    ) -> Result<StepReport<B>> {
        let mut session = Session::new(backend, &mut self.store, grads, run.mode);
        session.update_running_stats = run.update_running_stats;
        session.loss_scale = run.loss_scale;
        session.sync_batch_norm = hooks.sync_batch_norm;
        // A shorter borrow of the listener, as long as the session's.
        session.final_grads = hooks.final_grads.map(|sink| sink as &mut dyn FinalGrads<B>);
        if run.audit {
            session.probes.audit = Some(ReversibleAudit::default());
        }
        session
            .probes
            .count_diverged_into(hooks.diverged_recomputes);
        let output = with_body!(self, model => train_step(model, &mut session, images, targets))?;
        Ok(StepReport {
            output,
            diverged_recomputes: session.probes.take_diverged(),
            audit: session.probes.audit,
        })
    }

    /// The logits `[B, K]` of a forward in `mode` (no backward).
    pub fn forward(
        &mut self,
        backend: &B,
        images: &B::Tensor,
        run: PassOptions,
    ) -> Result<B::Tensor> {
        let mut grads = Grads::new(0);
        let mut session = Session::new(backend, &mut self.store, &mut grads, run.mode);
        session.update_running_stats = run.update_running_stats;
        with_body!(self, model => Layer::<B>::forward(model, &mut session, images.clone()).map(|(logits, _)| logits))
    }

    /// [`Network::forward`], and the spikes of every neuron layer in the order they fired.
    pub fn forward_with_spikes(
        &mut self,
        backend: &B,
        images: &B::Tensor,
        run: PassOptions,
    ) -> Result<(B::Tensor, Vec<B::Tensor>)> {
        let mut grads = Grads::new(0);
        let mut session = Session::new(backend, &mut self.store, &mut grads, run.mode);
        session.update_running_stats = run.update_running_stats;
        session.probes.spike_log = Some(Vec::new());
        let logits = with_body!(self, model => Layer::<B>::forward(model, &mut session, images.clone()).map(|(logits, _)| logits))?;
        Ok((logits, session.probes.spike_log.take().unwrap_or_default()))
    }
}
