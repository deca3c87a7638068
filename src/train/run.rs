//! A run ready to start or to continue: its settings resolved (a new run), or the settings of the
//! run in a folder with what this invocation may change (`--resume`), and the state it starts
//! from.

use std::path::Path;

use super::config::{GivenSettings, RunModel, RunSettings, changed_on_resume};
use super::initial;
use super::run_dir::{RunDir, RunState, STATE_FORMAT};
use super::shuffle_seed;
use crate::device::Device;
use crate::error::{Error, Result, counted};

/// A run ready to start or to continue: its settings, resolved, and where it stands.
#[derive(Clone, Debug)]
pub struct Run {
    /// Every knob of the run.
    pub config: RunSettings,
    /// The settings as given (flags over the config file), paths absolute, but the run folder.
    pub given: GivenSettings,
    /// Where a resumed run stopped; `None` for a new run.
    pub resumed: Option<RunState>,
}

impl Run {
    /// A new run of `given` (flags over the config file); reads its initial checkpoint, if any,
    /// to record the file's SHA-256 ([`initial::digest`]).
    pub fn start(given: GivenSettings) -> Result<Run> {
        let given = given.with_absolute_paths()?;
        let mut config = given.resolve()?;
        config.initial_checkpoint_sha256 = initial::digest(&config)?;
        Ok(Run {
            config,
            given: GivenSettings { out: None, ..given },
            resumed: None,
        })
    }

    /// The run in `given`'s run folder (`out`, or the default one of its model, dataset and
    /// seed), to continue with its own settings. `given` may repeat them; it may change only
    /// `epochs` (which resolves the run's given settings again for the new length), `data_dir`,
    /// `device` and the loader's knobs, and may name the model only if it is the run's. The
    /// digest of the initial checkpoint recorded when the run started is kept; the file is not
    /// read again.
    pub fn resume(given: GivenSettings) -> Result<Run> {
        let given = given.with_absolute_paths()?;
        let out = match &given.out {
            Some(out) => out.clone(),
            None => given.resolve()?.out,
        };
        let state = RunDir::new(out.clone()).read_state()?;
        check_same_model(&given, &state, &out)?;
        check_unchanged(&given, &state, &out)?;
        check_length(&given, &state, &out)?;
        let changes = GivenSettings {
            epochs: given.epochs,
            data_dir: given.data_dir.clone(),
            device: given.device,
            loader: given.loader.clone(),
            ..GivenSettings::default()
        };
        let new_length = given.epochs.is_some() && given.epochs != state.config.epochs;
        let base = if new_length {
            &state.given
        } else {
            &state.config
        };
        let model = RunModel::of_run(&state.config, state.model.clone(), state.spec.clone());
        let mut config = RunSettings::resolve(&changes.clone().over(base.clone()), model)?;
        config.out = out;
        // the digest of the file the run started from, which its given settings need not hold
        config
            .initial_checkpoint_sha256
            .clone_from(&state.config.initial_checkpoint_sha256);
        Ok(Run {
            config,
            given: changes.over(state.given.clone()),
            resumed: Some(state),
        })
    }

    /// The state the run starts from: where a resumed run stopped, with this invocation's
    /// settings; for a new run a fresh one, in a folder that must not hold a run yet.
    pub fn first_state(&self, dir: &RunDir) -> Result<RunState> {
        let config = self.config.to_given();
        if let Some(resumed) = &self.resumed {
            return Ok(RunState {
                config,
                given: self.given.clone(),
                ..resumed.clone()
            });
        }
        if dir.holds_run() {
            return Err(Error::Usage(format!(
                "{} already holds a run; pass --resume to continue it, or choose another --out",
                dir.path().display()
            )));
        }
        Ok(RunState {
            format: STATE_FORMAT.into(),
            model: self.config.model.name.clone(),
            spec: self.config.model.spec.clone(),
            config,
            given: self.given.clone(),
            epochs_done: 0,
            optimizer_steps: 0,
            optimizer_state: "last.optimizer.safetensors".into(),
            next_shuffle_seed: shuffle_seed(self.config.seed, 0),
            best_test_acc1: 0.0,
            best_epoch: None,
            loss_scaler: None,
        })
    }
}

/// `--resume` may name the model (`--model`, `--spec`, `--num-classes`, `--time-steps`) only if
/// it is the run's.
fn check_same_model(given: &GivenSettings, state: &RunState, out: &Path) -> Result<()> {
    let names_model = given.model.is_some()
        || given.spec.is_some()
        || given.num_classes.is_some()
        || given.time_steps.is_some();
    if names_model
        && given
            .clone()
            .over(state.config.clone())
            .resolve_model()?
            .spec
            != state.spec
    {
        return Err(Error::Usage(format!(
            "--resume: {} holds a run of another model ({}); leave out --model/--spec (and \
             --num-classes, --time-steps) to continue it, or choose another --out",
            out.display(),
            state.model
        )));
    }
    Ok(())
}

/// `--resume` may lengthen or shorten a run, but not below the epochs it has done.
fn check_length(given: &GivenSettings, state: &RunState, out: &Path) -> Result<()> {
    match given.epochs {
        Some(epochs) if epochs < state.epochs_done => Err(Error::Usage(format!(
            "--resume --epochs {epochs}: the run in {} has done {} already; give --epochs {} \
             or more, or leave it out",
            out.display(),
            counted(state.epochs_done, "epoch", "epochs"),
            state.epochs_done
        ))),
        _ => Ok(()),
    }
}

/// `--resume` continues a run with its own settings: `given` may repeat them, and change only
/// those of [`super::config::CHANGEABLE_ON_RESUME`].
fn check_unchanged(given: &GivenSettings, state: &RunState, out: &Path) -> Result<()> {
    let changed = changed_on_resume(given, &state.config)?;
    if changed.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = changed
        .iter()
        .map(|(key, value, run)| format!("{key} = {value} (the run has {run})"))
        .collect();
    let config = out.join("config.toml");
    Err(Error::Usage(format!(
        "--resume continues the run in {} with its own settings ({}), but these differ: {}. \
         Leave them out, or start a new run with --config {} and another --out",
        out.display(),
        config.display(),
        list.join("; "),
        config.display()
    )))
}

/// The run's settings as a config file, with comments naming the model and, for the run folder
/// `out` of an invocation computing on `device`, how to run them again and the device used (the
/// `device` key keeps the one asked for, which may be `auto`).
pub fn config_file_text(
    config: &RunSettings,
    run_folder: Option<(&Path, &Device)>,
) -> Result<String> {
    let spec = serde_json::to_string(&config.model.spec).expect("the spec serialises");
    let mut text = format!(
        "# revsnn train: every setting of the run, resolved ({} recipe).\n\
         # model {}: {spec}\n",
        config.recipe.name(),
        config.model.name
    );
    if config.ranks > 1 {
        text += &format!(
            "# data-parallel: {} ranks x {} samples = effective batch {}; the learning rate is \
             the one below, not scaled with the ranks\n",
            config.ranks,
            config.batch / config.ranks,
            config.batch
        );
    }
    if let Some((out, device)) = run_folder {
        text += &format!(
            "# Run it again: revsnn train --config {} --out NEW_FOLDER\n\
             # device used: {}\n",
            out.join("config.toml").display(),
            device.describe()
        );
    }
    Ok(text + "\n" + &config.to_given().to_toml()?)
}
