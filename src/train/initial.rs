//! The checkpoint a new run starts from (`--initial-checkpoint`), pinned by its SHA-256
//! (`initial_checkpoint_sha256`): the run records the digest of the file it read in config.toml,
//! and a file with another digest is refused, so that the config runs again from the same
//! weights or stops (docs/recipes.md §5.4).

use std::path::Path;

use super::Run;
use super::config::RunSettings;
use super::epoch::Learner;
use crate::checkpoint::{self, TensorFile};
use crate::device::Compute;
use crate::error::{Error, Result};
use crate::finite;

/// The SHA-256 of the file a new run of `config` starts from, which must be the pinned one
/// (`config.initial_checkpoint_sha256`) where there is a pin; `None` without an initial
/// checkpoint.
pub fn digest(config: &RunSettings) -> Result<Option<String>> {
    let Some(path) = &config.initial_checkpoint else {
        return Ok(None);
    };
    let found = checkpoint::file_sha256(path).map_err(naming_flag)?;
    check_pin(&found, config.initial_checkpoint_sha256.as_deref())
        .map_err(|error| of_file(path, error))?;
    Ok(Some(found))
}

/// The tensors a new run starts from, with the path they were read from, finite unless
/// `allow_non_finite`; parsed only from bytes whose digest is the one the run recorded
/// ([`digest`]), so that a file that changed since is refused. `None` for a resumed run, which
/// continues from its own checkpoint, and for a run without an initial checkpoint.
pub fn weights(run: &Run, allow_non_finite: bool) -> Result<Option<(&Path, TensorFile)>> {
    let (None, Some(path)) = (&run.resumed, &run.config.initial_checkpoint) else {
        return Ok(None);
    };
    let pinned = run.config.initial_checkpoint_sha256.as_deref();
    let weights = checkpoint::read_accepted_weights(path, |found| check_pin(found, pinned))
        .map_err(naming_flag)?;
    finite::check_loaded(path, &weights, allow_non_finite)?;
    Ok(Some((path, weights)))
}

/// Loads `weights`, read from `path`, into each rank's `learners` in place of the seed's, before
/// the run folder is made: every key must fit the model, and a misfit (an error naming the
/// file) leaves no folder.
pub fn load<B: Compute>(
    path: &Path,
    weights: &TensorFile,
    backend: &B,
    learners: &mut [Learner<B>],
) -> Result<()> {
    for learner in learners {
        let store = &mut learner.network.store;
        checkpoint::load_state_dict(backend, store, weights).map_err(|error| match error {
            Error::Usage(_) => of_file(path, error),
            other => other,
        })?;
    }
    Ok(())
}

/// `Ok` when there is no pin or the file's digest `found` is the pinned one; else what differs
/// and what to do (the caller names the file).
fn check_pin(found: &str, pinned: Option<&str>) -> Result<()> {
    match pinned {
        Some(pinned) if pinned != found => Err(Error::Usage(format!(
            "its SHA-256 is {found}, not {pinned} (initial_checkpoint_sha256, \
             --initial-checkpoint-sha256): the file has changed since that digest was recorded, \
             or the digest is another file's. Restore the file, or start from what it holds now \
             with --initial-checkpoint-sha256 {found}"
        ))),
        _ => Ok(()),
    }
}

/// `error`, about the file at `path`, as the initial checkpoint's file error.
fn of_file(path: &Path, error: Error) -> Error {
    naming_flag(Error::file(path, error.to_string()))
}

/// A file error of the initial checkpoint, its detail saying which flag named the file.
fn naming_flag(error: Error) -> Error {
    match error {
        Error::File { path, detail } => Error::File {
            path,
            detail: format!("--initial-checkpoint: {detail}"),
        },
        other => other,
    }
}
