//! Atomic whole-file writes, for the engine's snapshot file.
//!
//! A snapshot is replaced, never edited: it is written to a temporary file, synced, renamed
//! over the old one and the directory synced, so after a crash the name holds either the old
//! snapshot or the new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Replaces `dir/name` with `bytes` atomically and durably.
///
/// The temporary file is `dir/.name.tmp`; a leftover one from a crash is simply overwritten.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let target = dir.join(name);
    let temp = temp_path(dir, name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, &target)?;
    File::open(dir)?.sync_all()?;
    tracing::debug!(file = %target.display(), bytes = bytes.len(), "checkpoint written");
    Ok(())
}

/// Reads `dir/name`, or `None` if it does not exist (a fresh store has no snapshot yet).
pub fn read_if_exists(dir: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    match fs::read(dir.join(name)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where [`write_atomic`] stages `name`: hidden, and never a name the engine reads.
fn temp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_if_exists(dir.path(), "snapshot").unwrap(), None);
    }

    #[test]
    fn write_then_overwrite_round_trips_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "snapshot", b"first version").unwrap();
        assert_eq!(
            read_if_exists(dir.path(), "snapshot").unwrap().as_deref(),
            Some(&b"first version"[..])
        );
        write_atomic(dir.path(), "snapshot", b"v2").unwrap();
        assert_eq!(
            read_if_exists(dir.path(), "snapshot").unwrap().as_deref(),
            Some(&b"v2"[..])
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["snapshot"]);
    }

    #[test]
    fn a_leftover_temporary_does_not_disturb_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(dir.path(), "snapshot", b"good").unwrap();
        fs::write(
            temp_path(dir.path(), "snapshot"),
            b"half-written garbage from a crash",
        )
        .unwrap();
        assert_eq!(
            read_if_exists(dir.path(), "snapshot").unwrap().as_deref(),
            Some(&b"good"[..])
        );
        write_atomic(dir.path(), "snapshot", b"better").unwrap();
        assert_eq!(
            read_if_exists(dir.path(), "snapshot").unwrap().as_deref(),
            Some(&b"better"[..])
        );
    }
}
