//! Small measurements of the machine itself: what one fsync costs, and how much disk a
//! directory really takes.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

/// The cost of one durable 1 KiB write on the data directory's filesystem.
#[derive(Debug, Clone, Copy)]
pub struct FsyncCost {
    /// Writes timed.
    pub iterations: usize,
    /// Median microseconds of `write` + `fdatasync`.
    pub p50_us: f64,
    /// Mean microseconds of `write` + `fdatasync`.
    pub mean_us: f64,
}

/// How the probe writes: growing the file (as an append-only log does) or overwriting bytes
/// already allocated (as a preallocated or recycled file does). On ext4 the first also has to
/// commit the new file size, so it tells whether preallocating log segments would pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeWrite {
    /// Append 1 KiB at the end of the file.
    Append,
    /// Overwrite the first 1 KiB of an already written, synced file.
    Overwrite,
}

/// Writes 1 KiB and `fdatasync`s, `iterations` times, in a scratch file under `dir`: the floor
/// under any engine that acknowledges only durable writes, and why group commit matters.
pub fn fsync_cost(dir: &Path, iterations: usize, mode: ProbeWrite) -> anyhow::Result<FsyncCost> {
    debug_assert!(iterations > 0, "time at least one fsync");
    let path = dir.join("fsync-probe");
    let block = vec![0x5a_u8; 1024];
    let mut file = match mode {
        ProbeWrite::Append => OpenOptions::new().create(true).append(true).open(&path)?,
        ProbeWrite::Overwrite => {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)?;
            file.write_all(&block)?;
            file.sync_all()?;
            file
        }
    };
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        if mode == ProbeWrite::Overwrite {
            file.seek(SeekFrom::Start(0))?;
        }
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    fs::remove_file(&path)?;
    samples.sort_by(f64::total_cmp);
    Ok(FsyncCost {
        iterations,
        p50_us: samples[samples.len() / 2],
        mean_us: samples.iter().sum::<f64>() / samples.len() as f64,
    })
}

/// Bytes actually allocated on disk under `dir` (like `du`), recursively. Allocated rather than
/// apparent size, so sparse or preallocated files count for what they occupy.
pub fn disk_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            disk_bytes(&entry.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_bytes_counts_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        let empty = disk_bytes(dir.path()).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/a"), vec![1_u8; 64 * 1024]).unwrap();
        let after = disk_bytes(dir.path()).unwrap();
        assert!(
            after >= empty + 64 * 1024,
            "{after} should include the 64 KiB file"
        );
    }

    #[test]
    fn fsync_probe_cleans_up_and_reports_positive_times() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [ProbeWrite::Append, ProbeWrite::Overwrite] {
            let cost = fsync_cost(dir.path(), 5, mode).unwrap();
            assert!(cost.p50_us > 0.0 && cost.mean_us > 0.0);
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }
}
