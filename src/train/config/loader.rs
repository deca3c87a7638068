//! The `[loader]` section: the input pipeline's knobs, laid over one another and checked
//! against their limits.

use clap::Args;
use serde::{Deserialize, Serialize};

use super::checks::{at_least_one, between, set};
use crate::error::Result;

/// The input pipeline's knobs (`[loader]`); they change the speed and the memory, never the
/// training batches, and the evaluation's scores only by rounding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, Args)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Input pipeline ([loader] in a config file)")]
pub struct LoaderSettings {
    /// Threads that assemble and augment training batches (default 1).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Batches each worker keeps ready ahead (default 4).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<usize>,
    /// Samples per batch of the evaluation after each epoch, all ranks together (default:
    /// --batch, at least 32). The scores change with it only by rounding; lower it when the
    /// evaluation runs out of device memory.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_batch: Option<usize>,
}

impl LoaderSettings {
    pub(super) fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub(super) fn over(self, lower: Self) -> Self {
        LoaderSettings {
            workers: self.workers.or(lower.workers),
            prefetch: self.prefetch.or(lower.prefetch),
            eval_batch: self.eval_batch.or(lower.eval_batch),
        }
    }
}

/// The most loader threads a run may ask for: far above the cores of any machine it runs on,
/// far below what the OS refuses to spawn.
const MAX_WORKERS: usize = 256;
/// The most batches a loader worker may keep ready ahead.
const MAX_PREFETCH: usize = 64;

/// The loader's knobs (every one set), checked: `(workers, prefetch, eval_batch)`.
pub(super) fn check_loader(settings: &LoaderSettings) -> Result<(usize, usize, usize)> {
    let workers = between("loader.workers", set(&settings.workers), MAX_WORKERS)?;
    let prefetch = between("loader.prefetch", set(&settings.prefetch), MAX_PREFETCH)?;
    let eval_batch = at_least_one("loader.eval_batch", set(&settings.eval_batch))?;
    Ok((workers, prefetch, eval_batch))
}
