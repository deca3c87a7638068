//! Files written whole or not at all: every file of a run folder (checkpoints, `last.json`,
//! `metrics.jsonl`, `curves.png`, `config.toml`) and `revsnn grad`'s output.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: to a temporary file beside it (`.NAME.XXXXXX.partial`),
/// flushed to disk, then renamed over `path` (`tempfile`'s `persist`). A failure (a full disk,
/// a read-only folder) removes the temporary file and leaves `path` as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let failed = |e: std::io::Error| Error::file(path, format!("cannot write: {}", why(&e)));
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".partial");
    // Read-write for all before the umask, as `std::fs::write` creates files (tempfile's own
    // default is owner-only).
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut file = builder.tempfile_in(folder).map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.as_file().sync_all().map_err(failed)?;
    file.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}

/// Why a write failed with `error`, and what to do.
fn why(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            format!("the disk is full ({error}); free space on it")
        }
        ErrorKind::FileTooLarge => format!(
            "the file is larger than the file system or the process's file-size limit \
             (`ulimit -f`) allows ({error})"
        ),
        _ => format!("{error} (check that the folder is writable and the disk has space)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("revsnn-files-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_write_replaces_the_file_and_leaves_nothing_else() {
        let dir = scratch("replace");
        let path = dir.join("last.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "nothing but the file"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            let plain = dir.join("plain");
            std::fs::write(&plain, b"").unwrap();
            let expected = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, expected, "the mode std::fs::write gives");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_is_an_error_naming_the_file_and_keeps_the_old_one() {
        let dir = scratch("fail");
        let path = dir.join("metrics.jsonl");
        write_atomic(&path, b"kept").unwrap();
        // A folder where the file should go: the rename over it fails after the write.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        let error = write_atomic(&blocked, b"lost").unwrap_err().to_string();
        assert!(
            error.contains("blocked") && error.contains("cannot write"),
            "{error}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
