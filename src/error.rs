//! Errors of the model layer and the CLI, each saying what to do.

use std::path::Path;

use revsnn_reference::OpError;
use thiserror::Error;

/// What went wrong above the ops.
#[derive(Debug, Error)]
pub enum Error {
    /// An op rejected its inputs.
    #[error(transparent)]
    Op(#[from] OpError),
    /// A model spec that cannot be built.
    #[error("invalid model spec: {0}")]
    Spec(String),
    /// A file that cannot be read or written.
    #[error("{path}: {detail}")]
    File { path: String, detail: String },
    /// A setting of `revsnn train` (a config key and its flag) with a value it cannot take.
    #[error("{key} = {value}: expected {expected} (config key `{key}`, flag {flag})")]
    Setting {
        key: String,
        flag: String,
        value: String,
        expected: String,
    },
    /// Bad command-line input.
    #[error("{0}")]
    Usage(String),
    /// A collective between data-parallel ranks failed: a rank left, hung or disagrees.
    #[error("data-parallel rank {rank}: {detail}")]
    Collective { rank: usize, detail: String },
    /// fp16 loss scaling gave up: the gradients overflow even at a scale below 1.
    #[error(
        "the fp16 loss scale fell to {scale} (below 1): the gradients overflow fp16 even unscaled. \
         The run stopped and its last good checkpoint is intact; train in bf16 or f32, or lower the \
         learning rate"
    )]
    LossScaleCollapsed { scale: f32 },
    /// A run folder's file could not be written after epoch `epoch`: training stopped, and the
    /// checkpoint of epoch `kept` (0: none yet) is intact.
    #[error(
        "{source}\nTraining stopped: epoch {epoch} is not saved. {}",
        kept_checkpoint(*kept, dir)
    )]
    NotSaved {
        epoch: usize,
        kept: usize,
        dir: String,
        source: Box<Error>,
    },
    /// `--device cuda` without a usable CUDA device (no driver library, no device, ...).
    #[error("--device cuda: {0}. Use --device cpu, or run where `revsnn info` finds a CUDA device")]
    Cuda(#[source] revsnn_gpu::GpuError),
}

impl Error {
    /// [`Error::File`]: `detail` about the file at `path`.
    pub fn file(path: &Path, detail: impl Into<String>) -> Error {
        Error::File {
            path: path.display().to_string(),
            detail: detail.into(),
        }
    }
}

/// What [`Error::NotSaved`] says is kept in the run folder `dir` and how to go on.
fn kept_checkpoint(kept: usize, dir: &str) -> String {
    if kept == 0 {
        format!(
            "No epoch of the run was saved yet: free space (or fix the folder {dir}), then start \
             the run again"
        )
    } else {
        format!(
            "The checkpoint of epoch {kept} in {dir} is intact: free space (or fix the folder), \
             then continue with `revsnn train --out {dir} --resume`"
        )
    }
}

/// The result of a model-level operation.
pub type Result<T> = std::result::Result<T, Error>;
