//! The run folder: every file a run writes, each written atomically ([`write_atomic`]), and read
//! back to resume.
//!
//! - `config.toml`: every knob of the run, resolved ([`super::config::RunSettings::to_given`]);
//!   `revsnn train --config DIR/config.toml --out NEW` runs it again;
//! - `last.safetensors`: the weights and BatchNorm statistics under the official key names;
//! - `last.optimizer.safetensors`: the optimizer state (see
//!   [`crate::optim::Optimizer::state_tensors`]);
//! - `last.json`: the spec, the settings, epochs done, optimizer step count, RNG state, best
//!   accuracy ([`RunState`]);
//! - `best.safetensors` and `best.json`: the weights of the best test top-1 accuracy;
//! - `metrics.jsonl` (one line per epoch), `curves.png` (drawn from it).

use std::path::{Path, PathBuf};

use revsnn_reference::Backend;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::GivenSettings;
use super::epoch::Learner;
use super::plot::{Curves, write_curves};
use super::shuffle_seed;
use crate::checkpoint;
use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::finite;
use crate::grad_scaler::GradScaler;
use crate::spec::ModelSpec;

/// The settings and position of a run, saved as `last.json` after every epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: String,
    /// The model's display name: a preset, a spec file or `revsresnet-small`.
    pub model: String,
    /// The model as built.
    pub spec: ModelSpec,
    /// Every knob of the run, resolved: what `config.toml` holds.
    pub config: GivenSettings,
    /// The settings as given (flags over the config file): `--resume --epochs N` resolves them
    /// again, so that what the recipe scaled to the run's length follows the new length.
    pub given: GivenSettings,
    /// Epochs finished; the next epoch to run.
    pub epochs_done: usize,
    /// The optimizer's step count (AdamW's bias correction needs it).
    pub optimizer_steps: u64,
    /// The optimizer state file, beside this one.
    pub optimizer_state: String,
    /// The RNG state: the shuffle of epoch `e` is seeded by `shuffle_seed(seed, e)`, so `seed`
    /// and `epochs_done` fix every later batch.
    pub next_shuffle_seed: u64,
    pub best_test_acc1: f64,
    pub best_epoch: Option<usize>,
    /// fp16's loss scaler after the last epoch done (absent in the other precisions), so that
    /// a resumed run scales as the uninterrupted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<GradScaler>,
}

impl RunState {
    /// Parses the text of a `last.json`, checked to be of this version's format; `path` only
    /// names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<RunState> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::file(path, format!("not a revsnn run state: {e}")))?;
        if value["format"] != STATE_FORMAT {
            return Err(Error::file(
                path,
                format!(
                    "run state format {}, expected {STATE_FORMAT:?}: the run was written by \
                     another version of revsnn; continue it with that version, or start a new run",
                    value["format"]
                ),
            ));
        }
        let mut state: RunState = serde_json::from_value(value)
            .map_err(|e| Error::file(path, format!("not a revsnn run state: {e}")))?;
        state.config.fill_keys_added_later();
        Ok(state)
    }

    /// Records epoch `epoch` (from 0) of a run seeded `seed` as done, after
    /// `optimizer_steps` steps in all, with test top-1 accuracy `test_acc1`; returns whether
    /// that is the best so far (the first epoch always is).
    pub fn finish_epoch(
        &mut self,
        epoch: usize,
        optimizer_steps: u64,
        test_acc1: f64,
        seed: u64,
    ) -> bool {
        self.epochs_done = epoch + 1;
        self.optimizer_steps = optimizer_steps;
        self.next_shuffle_seed = shuffle_seed(seed, epoch + 1);
        let improved = self.best_epoch.is_none() || test_acc1 > self.best_test_acc1;
        if improved {
            self.best_test_acc1 = test_acc1;
            self.best_epoch = Some(epoch + 1);
        }
        improved
    }
}

/// The `format` of [`RunState`] this version writes and reads.
pub const STATE_FORMAT: &str = "revsnn-train-state-v2";

/// A run folder.
#[derive(Clone, Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// The run folder at `path` (nothing is read or made yet).
    pub fn new(path: PathBuf) -> RunDir {
        RunDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Whether the folder holds a run (its `last.json`).
    pub fn holds_run(&self) -> bool {
        self.file("last.json").exists()
    }

    /// Makes the folder (and its parents).
    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.path).map_err(|e| {
            Error::file(
                &self.path,
                format!("cannot create the run folder: {e} (choose a writable --out)"),
            )
        })
    }

    /// Writes `config.toml`.
    pub fn write_config(&self, text: &str) -> Result<()> {
        write_atomic(&self.file("config.toml"), text.as_bytes())
    }

    /// Reads `last.json`: where the run stopped, checked to be of this version's format.
    pub fn read_state(&self) -> Result<RunState> {
        let path = self.file("last.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            let why = if e.kind() != std::io::ErrorKind::NotFound {
                format!("cannot read the run state to resume: {e}")
            } else if self.file("config.toml").exists() {
                "the run in this folder saved no epoch yet (it has config.toml but no \
                 last.json), so there is nothing to resume: start it again without --resume"
                    .into()
            } else {
                "no run to resume here: --out must be the folder of an earlier run".into()
            };
            Error::file(&path, why)
        })?;
        RunState::from_json(&text, &path)
    }

    /// Writes the checkpoint of the epoch `state` records as done, in three steps, so that a run
    /// stopped at any moment (killed, or a disk that fills up) keeps one complete checkpoint:
    /// 1. each file of the epoch (the optimizer state, the weights, and the best weights and
    ///    `best.json` when `improved`) to its staged name beside it ([`staged_name`]);
    /// 2. `last.json`, which commits the epoch;
    /// 3. each staged file renamed over its name.
    ///
    /// Until step 2 ends the previous checkpoint is untouched; after it, [`RunDir::finish_commit`]
    /// completes step 3 on `--resume`.
    pub fn save_checkpoint<B: Backend>(
        &self,
        backend: &B,
        learner: &Learner<B>,
        state: &RunState,
        improved: bool,
    ) -> Result<()> {
        let state_json = serde_json::to_string_pretty(state).expect("the state serialises");
        let committed = self
            .stage_checkpoint(backend, learner, state, improved, &state_json)
            .and_then(|()| write_atomic(&self.file("last.json"), state_json.as_bytes()));
        if let Err(error) = committed {
            // Nothing is committed (`write_atomic` renames last): the staged files would only
            // hold space on a disk that is probably full.
            for name in checkpoint_files(state) {
                let _ = std::fs::remove_file(self.file(&staged_name(name, state.epochs_done)));
            }
            return Err(error);
        }
        self.finish_commit(state)
    }

    /// Step 1 of [`RunDir::save_checkpoint`]: each file of the epoch to its staged name.
    fn stage_checkpoint<B: Backend>(
        &self,
        backend: &B,
        learner: &Learner<B>,
        state: &RunState,
        improved: bool,
        state_json: &str,
    ) -> Result<()> {
        let store = &learner.network.store;
        let weights = checkpoint::state_dict(backend, store)?;
        let stage = |name: &str| self.file(&staged_name(name, state.epochs_done));
        checkpoint::write(
            &stage(&state.optimizer_state),
            &learner.optimizer.state_tensors(backend, store)?,
        )?;
        checkpoint::write(&stage("last.safetensors"), &weights)?;
        if improved {
            checkpoint::write(&stage("best.safetensors"), &weights)?;
            write_atomic(&stage("best.json"), state_json.as_bytes())?;
        }
        Ok(())
    }

    /// Completes the commit of the checkpoint `state` (read from `last.json`) records: renames
    /// the files staged for its epoch over their names, and removes what an interrupted save
    /// left behind (files staged for an epoch that was never committed, temporary files).
    pub fn finish_commit(&self, state: &RunState) -> Result<()> {
        let entries = std::fs::read_dir(&self.path)
            .map_err(|e| Error::file(&self.path, format!("cannot list the run folder: {e}")))?;
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let outcome = match staged_file(&file_name, state) {
                Some((name, true)) => std::fs::rename(&path, self.file(name)),
                Some((_, false)) => std::fs::remove_file(&path),
                None if is_temporary(&file_name) => std::fs::remove_file(&path),
                None => Ok(()),
            };
            outcome
                .map_err(|e| Error::file(&path, format!("cannot complete the checkpoint: {e}")))?;
        }
        Ok(())
    }

    /// Loads the last checkpoint into `learner`: the weights and the optimizer state, both
    /// finite unless `allow_non_finite`. The `leader` first completes the commit of an
    /// interrupted save ([`RunDir::finish_commit`]); the other process ranks leave the folder as
    /// it is (removing temporary files there would delete the ones the leader is writing) and read
    /// each file where the commit has it or is about to put it ([`RunDir::committed`]).
    pub fn load_checkpoint<B: Backend>(
        &self,
        backend: &B,
        learner: &mut Learner<B>,
        state: &RunState,
        allow_non_finite: bool,
        leader: bool,
    ) -> Result<()> {
        if leader {
            self.finish_commit(state)?;
        }
        let store = &mut learner.network.store;
        let (weights_path, weights) = self.committed("last.safetensors", state)?;
        finite::check_loaded(&weights_path, &weights, allow_non_finite)?;
        checkpoint::load_state_dict(backend, store, &weights)?;
        let (optimizer_path, tensors) = self.committed(&state.optimizer_state, state)?;
        finite::check_loaded(&optimizer_path, &tensors, allow_non_finite)?;
        learner
            .optimizer
            .load_state_tensors(backend, store, &tensors, state.optimizer_steps)?;
        if learner.scaler.is_some() {
            let saved = state.loss_scaler.ok_or_else(|| {
                Error::file(
                    &self.file("last.json"),
                    "an fp16 run's state without its loss scaler (`loss_scaler`): the file is \
                     damaged; restore it, or start a new run",
                )
            })?;
            learner.scaler = Some(saved);
        }
        Ok(())
    }

    /// Reads the checkpoint file `name` of the commit `state` records: the file staged for its
    /// epoch while it is still there (the leader has not renamed it over `name` yet), else `name`
    /// itself. A rename between the two looks is caught by reading `name` after all.
    fn committed(&self, name: &str, state: &RunState) -> Result<(PathBuf, checkpoint::TensorFile)> {
        let staged = self.file(&staged_name(name, state.epochs_done));
        if staged.exists() {
            match checkpoint::read(&staged) {
                Ok(tensors) => return Ok((staged, tensors)),
                Err(_) if !staged.exists() => {}
                Err(error) => return Err(error),
            }
        }
        let path = self.file(name);
        let tensors = checkpoint::read(&path)?;
        Ok((path, tensors))
    }

    /// The first `epochs` lines of `metrics.jsonl` (fewer where it has fewer; none without it).
    pub fn read_metrics(&self, epochs: usize) -> Vec<Value> {
        let text = std::fs::read_to_string(self.file("metrics.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .take(epochs)
            .collect()
    }

    /// Writes `metrics.jsonl`, one line per epoch, and `curves.png` drawn from them.
    pub fn write_metrics(&self, lines: &[Value]) -> Result<()> {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        write_atomic(&self.file("metrics.jsonl"), text.as_bytes())?;
        let curves = Curves::of_metrics(&self.name(), lines);
        write_curves(&self.file("curves.png"), &curves)
    }

    /// The run's name: the folder's own name, or its path where it has none.
    fn name(&self) -> String {
        match self.path.file_name() {
            Some(name) => name.to_string_lossy().into_owned(),
            None => self.path.display().to_string(),
        }
    }
}

/// The name a file of the checkpoint of epoch `epoch` (epochs done) has until that checkpoint is
/// committed: `.NAME.epoch-N`, hidden beside `NAME`.
pub fn staged_name(name: &str, epoch: usize) -> String {
    format!(".{name}.epoch-{epoch}")
}

/// The file a staged file `file_name` becomes, and whether its epoch is the one `state`
/// commits; `None` for a file that is not a staged file of the checkpoint.
fn staged_file<'a>(file_name: &str, state: &'a RunState) -> Option<(&'a str, bool)> {
    let rest = file_name.strip_prefix('.')?;
    checkpoint_files(state).into_iter().find_map(|name| {
        let epoch = rest.strip_prefix(name)?.strip_prefix(".epoch-")?;
        let epoch: usize = epoch.parse().ok()?;
        Some((name, epoch == state.epochs_done))
    })
}

/// The files of a checkpoint that are staged before `last.json` commits it.
fn checkpoint_files(state: &RunState) -> [&str; 4] {
    [
        state.optimizer_state.as_str(),
        "last.safetensors",
        "best.safetensors",
        "best.json",
    ]
}

/// Whether `file_name` is a temporary file of [`write_atomic`] (`.NAME.XXXXXX.partial`), left
/// by a process that was killed while writing it.
fn is_temporary(file_name: &str) -> bool {
    file_name.starts_with('.') && file_name.ends_with(".partial")
}
