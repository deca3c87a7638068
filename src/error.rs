//! Errors of the model layer and the CLI, each saying what to do.

use std::path::Path;

use revsnn_reference::{DeviceError, OpError};
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
    /// Bytes that are not a safetensors file of F32, F64, F16, BF16 and I64 tensors.
    #[error("not a valid safetensors file: {0}")]
    Safetensors(String),
    /// Bytes that are not a `torch.save` file holding a `state_dict` revsnn reads
    /// (docs/pytorch-files.md).
    #[error("not a PyTorch checkpoint revsnn reads: {0}")]
    TorchFile(String),
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
    /// torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
    /// `MASTER_PORT`) that gives this process no valid place in a multi-process run.
    #[error(
        "{variable} {problem} (torchrun's environment, docs/distributed.md §6; unset WORLD_SIZE \
         to train in one process)"
    )]
    Launch {
        variable: &'static str,
        problem: String,
    },
    /// The processes of a run did not agree at the rendezvous before the first step: a rank is
    /// missing or claimed twice, or was started differently. Every rank that rank 0 answered
    /// reports the same text.
    #[error("rendezvous of the data-parallel processes: {0}")]
    Rendezvous(String),
    /// The local launcher (`--gpus N`) could not start the process of rank `rank`.
    #[error(
        "could not start the process of rank {rank}: {detail}; the ranks already started were stopped"
    )]
    RankNotStarted { rank: usize, detail: String },
    /// A process of the local launcher (`--gpus N`) failed; `ended` is how, e.g. "exited with
    /// status 3".
    #[error("rank {rank} {ended}; the other ranks were stopped; its own output above says why")]
    RankFailed { rank: usize, ended: String },
    /// The processes of the local launcher (`--gpus N`) stopped on Ctrl-C, each before the same
    /// step; rank 0 said what the run folder holds ([`Error::Interrupted`]).
    #[error("the ranks stopped on Ctrl-C; rank 0's output above says how to continue the run")]
    RanksInterrupted,
    /// fp16 loss scaling gave up: the gradients overflow even at a scale below 1.
    #[error(
        "the fp16 loss scale fell to {scale} (below 1): the gradients overflow fp16 even unscaled. \
         The run stopped and its last good checkpoint is intact; train in bf16 or f32, or lower the \
         learning rate"
    )]
    LossScaleCollapsed { scale: f32 },
    /// A data-loader worker failed or panicked while assembling a batch.
    #[error(
        "the data loader failed on batch {batch} (samples {samples}): {detail}. Nothing was \
         computed from a partial epoch; check the dataset files of those samples and run again"
    )]
    Loader {
        batch: usize,
        samples: String,
        detail: String,
    },
    /// A pass over a dataset (a training epoch, an evaluation) that did not see every sample.
    #[error(
        "{pass} saw {seen} of its {expected} samples: the data loader stopped early, so its \
         metrics would cover part of the data and none were reported. Check the dataset and run \
         again"
    )]
    IncompleteData {
        pass: String,
        seen: usize,
        expected: usize,
    },
    /// A tensor holding NaN or an infinity where finite values are required.
    #[error(
        "{origin}: tensor {tensor} holds {value} at index {index:?} (the first non-finite \
         element). Use a checkpoint saved before training diverged, or pass --allow-non-finite \
         to load it anyway for a deliberate experiment"
    )]
    NonFinite {
        origin: String,
        tensor: String,
        index: Vec<usize>,
        value: f64,
    },
    /// Training diverged: `what` became NaN or infinite. The run folder `out` keeps the
    /// checkpoint of epoch `saved` (0: none was saved).
    #[error(
        "{what}: training diverged and stopped. {}",
        diverged_advice(*saved, out)
    )]
    Diverged {
        what: String,
        saved: usize,
        out: String,
    },
    /// A run whose estimated memory exceeds what the machine has available.
    #[error(
        "{setting}: {what} needs at least {} ({needed} bytes, a lower bound), but {} is \
         available on {backend} (the RAM's MemAvailable on the CPU, free device memory on CUDA). \
         {advice}",
        crate::footprint::human(*.needed),
        crate::footprint::human(u128::from(*.available))
    )]
    TooLarge {
        setting: String,
        what: &'static str,
        /// Bytes, at least.
        needed: u128,
        /// Bytes.
        available: u64,
        backend: String,
        advice: &'static str,
    },
    /// A training step or an evaluation of a run needed more device memory than was free.
    #[error("{0}")]
    OutOfDeviceMemory(Box<RunOutOfMemory>),
    /// Ctrl-C stopped training before step `step` of epoch `epoch` (both from 1); the run folder
    /// `out` holds the checkpoint of epoch `saved` (0: none).
    #[error(
        "interrupted (Ctrl-C) before step {step} of epoch {epoch}. {}",
        kept_and_next(*saved, out, None)
    )]
    Interrupted {
        epoch: usize,
        step: usize,
        saved: usize,
        out: String,
    },
    /// A run folder's file could not be written after epoch `epoch`: training stopped, and the
    /// checkpoint of epoch `kept` (0: none yet) is intact.
    #[error(
        "{source}\nTraining stopped: epoch {epoch} is not saved. {}",
        kept_and_next(*kept, dir, Some("free space (or fix the folder)"))
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
    /// A CUDA device that cannot do what the run asks of it: a precision the card lacks, NCCL
    /// missing or failing for `--gpus`. The error itself says what to do.
    #[error("--device cuda: {0}")]
    CudaCannot(#[source] revsnn_gpu::GpuError),
    /// `revsnn kernels` could not fill the kernel cache: no NVRTC, a kernel that does not
    /// compile for the architecture, or a folder it cannot write.
    #[error("revsnn kernels: {0}")]
    Kernels(#[source] revsnn_gpu::GpuError),
}

/// What [`Error::OutOfDeviceMemory`] says: where in the run, and the device's bytes.
#[derive(Debug, Error)]
#[error(
    "out of device memory during {}, a batch of {} on this device: {} more requested with {} \
     free of the device's {}. {}",
    .place.during,
    .place.batch,
    crate::footprint::human(*.requested_bytes as u128),
    crate::footprint::human(*.free_bytes as u128),
    crate::footprint::human(*.total_bytes as u128),
    out_of_memory_advice(.place)
)]
pub struct RunOutOfMemory {
    pub place: RunPlace,
    pub requested_bytes: usize,
    pub free_bytes: usize,
    pub total_bytes: usize,
}

/// Where in a run a device ran out of memory, for [`Error::in_run_out_of_memory`].
/// Checkpoints are written whole after an epoch, so the run folder `out` keeps the one of epoch
/// `saved` and nothing of the failed epoch.
#[derive(Clone, Debug)]
pub struct RunPlace {
    /// The pass that failed: a training step, an evaluation.
    pub during: String,
    /// The samples of its batch on this device.
    pub batch: usize,
    /// The batch setting the pass ran with, to lower.
    pub lower: BatchSetting,
    /// The epoch (from 1) whose checkpoint the run folder keeps; 0: none.
    pub saved: usize,
    /// The run folder.
    pub out: String,
}

/// A pass's batch setting: `flag` (`--batch` or `--eval-batch`) at `batch` samples split over
/// `ranks` devices, which a resumed run may change when `resumable`.
#[derive(Clone, Copy, Debug)]
pub struct BatchSetting {
    pub flag: &'static str,
    pub batch: usize,
    pub ranks: usize,
    pub resumable: bool,
}

impl BatchSetting {
    /// The training's `--batch`, which a resumed run keeps.
    pub fn training(batch: usize, ranks: usize) -> BatchSetting {
        BatchSetting {
            flag: "--batch",
            batch,
            ranks,
            resumable: false,
        }
    }

    /// The evaluation's `--eval-batch`, which a resumed run may change.
    pub fn evaluation(batch: usize, ranks: usize) -> BatchSetting {
        BatchSetting {
            flag: "--eval-batch",
            batch,
            ranks,
            resumable: true,
        }
    }

    /// The batch of half the samples per device (a multiple of the ranks), or `None` where a
    /// device has one sample.
    fn halved(&self) -> Option<usize> {
        let ranks = self.ranks.max(1);
        let half_share = self.batch.div_ceil(ranks) / 2;
        (half_share > 0).then_some(half_share * ranks)
    }

    /// What to lower after the pass ran out of device memory: the flag, to half each device's
    /// share, or where that share is one sample, the time steps or the model.
    pub fn what_to_lower(&self) -> String {
        match self.halved() {
            None => "--time-steps or the model's size".into(),
            Some(half) if self.ranks <= 1 => format!("{} (e.g. to {half})", self.flag),
            Some(half) => format!(
                "{} (e.g. to {half}, {} per device)",
                self.flag,
                half / self.ranks
            ),
        }
    }

    /// The flags that lower it on `--resume` (e.g. `--eval-batch 16`), where a resumed run may.
    fn resume_flags(&self) -> Option<String> {
        let half = self.halved().filter(|_| self.resumable)?;
        Some(format!("{} {half}", self.flag))
    }
}

/// The exit code of a process that Ctrl-C stopped, by the shells' convention (128 + SIGINT).
pub const INTERRUPTED_EXIT_CODE: u8 = 130;

impl Error {
    /// The process's exit code for this error: [`INTERRUPTED_EXIT_CODE`] for a run that Ctrl-C
    /// stopped, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Interrupted { .. } | Error::RanksInterrupted => INTERRUPTED_EXIT_CODE,
            _ => 1,
        }
    }

    /// This error as a run's [`Error::OutOfDeviceMemory`] when it is a device's out-of-memory
    /// (an op's [`DeviceError::OutOfMemory`]), `place` (called only then) saying where in the
    /// run; any other error as it is.
    pub fn in_run_out_of_memory(self, place: impl FnOnce() -> RunPlace) -> Error {
        match self {
            Error::Op(OpError::Device {
                error:
                    DeviceError::OutOfMemory {
                        requested_bytes,
                        free_bytes,
                        total_bytes,
                        ..
                    },
                ..
            }) => Error::OutOfDeviceMemory(Box::new(RunOutOfMemory {
                place: place(),
                requested_bytes,
                free_bytes,
                total_bytes,
            })),
            error => error,
        }
    }

    /// [`Error::File`]: `detail` about the file at `path`.
    pub fn file(path: &Path, detail: impl Into<String>) -> Error {
        Error::File {
            path: path.display().to_string(),
            detail: detail.into(),
        }
    }
}

/// What [`Error::Diverged`] says is kept in the run folder `out` and how to go on. A resume
/// would replay the same steps (runs are deterministic and keep their settings), so the advice is
/// a new run.
fn diverged_advice(saved: usize, out: &str) -> String {
    if saved == 0 {
        format!("{out} holds no checkpoint yet; lower --lr and start again")
    } else {
        format!(
            "The last good checkpoint, of epoch {saved}, is kept in {out} (for `revsnn eval`). \
             A --resume would repeat the same steps: lower --lr and start a new run with \
             another --out"
        )
    }
}

/// What [`Error::OutOfDeviceMemory`] advises at `place`, whose run folder keeps the checkpoint of
/// epoch `saved` (0: none): lower its batch setting and start again; or, with a checkpoint,
/// continue with the setting lowered where a resumed run may change it (the evaluation's batch),
/// else (a resumed run keeps its training batch) continue on a device with more memory free or
/// start a new run in another folder.
fn out_of_memory_advice(place: &RunPlace) -> String {
    let RunPlace {
        lower, saved, out, ..
    } = place;
    let what = lower.what_to_lower();
    match (saved, lower.resume_flags()) {
        (0, _) => format!("Lower {what} and start the run again; {out} holds no checkpoint yet"),
        (_, Some(flags)) => format!(
            "{out} holds the checkpoint of epoch {saved} and nothing of the failed epoch: \
             continue it with `revsnn train --out {out} --resume {flags}`"
        ),
        (_, None) => format!(
            "{out} holds the checkpoint of epoch {saved} and nothing of the failed epoch: \
             continue it on a device with more memory free with {}, or lower {what} and start \
             a new run with another --out",
            resume_command(out)
        ),
    }
}

/// "1 epoch", "2 epochs": `n` and the noun, singular (`one`) or plural (`many`).
pub fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The command that continues the run in the folder `out`.
pub fn resume_command(out: &str) -> String {
    format!("`revsnn train --out {out} --resume`")
}

/// What the run folder `out` holds (the checkpoint of epoch `saved`; 0: none) and how to go on
/// once `fix` (if any) is done: start the run again, or continue it ([`resume_command`]). Said by
/// [`Error::Interrupted`] and [`Error::NotSaved`].
fn kept_and_next(saved: usize, out: &str, fix: Option<&str>) -> String {
    let fix = fix.map_or(String::new(), |fix| format!("{fix}, then "));
    match saved {
        0 => format!("{out} holds no checkpoint yet: {fix}start the run again"),
        _ => format!(
            "{out} holds the checkpoint of epoch {saved}: {fix}continue with {}",
            resume_command(out)
        ),
    }
}

/// The result of a model-level operation.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::BatchSetting;

    #[test]
    fn out_of_memory_advises_half_the_batch_where_that_shrinks_the_pass() {
        let what = |setting: BatchSetting| setting.what_to_lower();
        let (training, evaluation) = (BatchSetting::training, BatchSetting::evaluation);
        assert_eq!(what(training(64, 1)), "--batch (e.g. to 32)");
        assert_eq!(what(evaluation(33, 1)), "--eval-batch (e.g. to 16)");
        assert_eq!(
            what(training(512, 8)),
            "--batch (e.g. to 256, 32 per device)"
        );
        // the global batch stays a multiple of the ranks
        assert_eq!(what(training(24, 8)), "--batch (e.g. to 8, 1 per device)");
        for (batch, ranks) in [(1, 1), (8, 8), (3, 4)] {
            assert_eq!(
                what(evaluation(batch, ranks)),
                "--time-steps or the model's size"
            );
        }
    }
}
