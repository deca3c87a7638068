//! Files written whole or not at all: every file of a run folder (checkpoints, `last.json`,
//! `metrics.jsonl`, `curves.png`, `config.toml`) and `revsnn grad`'s output.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: to `PATH.partial` beside it, flushed to disk, then renamed
/// over `path`, so that a failure (a full disk, a killed process) never leaves a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".partial");
    let temporary = PathBuf::from(temporary);
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        Error::file(
            path,
            format!("cannot write: {e} (check that the folder is writable and the disk has space)"),
        )
    })
}
