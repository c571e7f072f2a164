//! Segment files: naming, discovery, verification and repair at open, and positioned reads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::frame::{FrameScanner, HEADER_LEN, Header, ScanError};
use super::types::{RecordPos, WalError};

/// Suffix of segment files.
const SUFFIX: &str = ".log";

/// Digits of a segment id in its file name; zero-padded so names sort like ids.
const ID_DIGITS: usize = 20;

/// Read buffer for sequential scans: large enough that a scan is a few big reads.
pub(crate) const SCAN_BUFFER: usize = 256 * 1024;

/// Path of segment `id` in `dir`.
pub(crate) fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:0ID_DIGITS$}{SUFFIX}"))
}

/// Ids of the segment files in `dir`, oldest first. Other files (the engine's snapshot,
/// temporaries) are ignored.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
            continue;
        };
        if stem.len() != ID_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(id) = stem.parse() {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Makes a directory entry change (file created, renamed or deleted) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates an empty segment file and makes its directory entry durable. Fails if it exists:
/// the writer never reuses an id.
pub(crate) fn create(dir: &Path, id: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(path(dir, id))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Opens an existing segment for appending at its end.
pub(crate) fn open_append(dir: &Path, id: u64) -> io::Result<File> {
    OpenOptions::new().append(true).open(path(dir, id))
}

/// How far the valid part of a segment goes.
struct Scan {
    /// End of the last frame that closes a batch: everything before is whole batches.
    batch_end: u64,
    /// Bytes in the file.
    file_len: u64,
    /// Why the scan stopped before the end of the file, if it did.
    stop: Option<(u64, &'static str)>,
}

/// Verifies every frame of segment `id`, streaming.
fn scan(dir: &Path, id: u64) -> Result<Scan, WalError> {
    let file = File::open(path(dir, id))?;
    let file_len = file.metadata()?.len();
    let mut scanner = FrameScanner::new(BufReader::with_capacity(SCAN_BUFFER, file), 0, file_len);
    let mut payload = Vec::new();
    let mut batch_end = 0;
    loop {
        match scanner.next_into(&mut payload) {
            Ok(Some(frame)) if frame.batch_end => batch_end = scanner.offset(),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(ScanError::Io(e)) => return Err(e.into()),
            Err(ScanError::Invalid { offset, reason }) => {
                return Ok(Scan {
                    batch_end,
                    file_len,
                    stop: Some((offset, reason)),
                });
            }
        }
    }
    Ok(Scan {
        batch_end,
        file_len,
        stop: None,
    })
}

/// Checks that sealed segment `id` holds only whole, valid batches; returns its length.
///
/// A sealed segment was fsynced before its successor was created, so damage there is real
/// corruption of acknowledged data: refuse rather than silently drop it.
pub(crate) fn verify_sealed(dir: &Path, id: u64) -> Result<u64, WalError> {
    let scan = scan(dir, id)?;
    if let Some((offset, reason)) = scan.stop {
        return Err(WalError::Corrupt {
            segment: id,
            offset,
            reason: reason.to_owned(),
        });
    }
    if scan.batch_end != scan.file_len {
        return Err(WalError::Corrupt {
            segment: id,
            offset: scan.batch_end,
            reason: "sealed segment ends inside a batch".to_owned(),
        });
    }
    Ok(scan.file_len)
}

/// Verifies the last segment and cuts off a torn or corrupt tail, keeping whole batches only;
/// returns the length kept.
///
/// Bytes past the last whole batch were never acknowledged (the writer acknowledges after the
/// batch's last frame is written), so dropping them loses nothing that was promised.
pub(crate) fn repair_tail(dir: &Path, id: u64) -> Result<u64, WalError> {
    let scan = scan(dir, id)?;
    if scan.batch_end == scan.file_len {
        return Ok(scan.file_len);
    }
    debug_assert!(scan.batch_end < scan.file_len);
    let (bad_offset, reason) = scan
        .stop
        .unwrap_or((scan.batch_end, "trailing batch has no closing record"));
    tracing::warn!(
        segment = id,
        file_bytes = scan.file_len,
        kept_bytes = scan.batch_end,
        discarded_bytes = scan.file_len - scan.batch_end,
        bad_offset,
        reason,
        "truncating the torn tail of the write-ahead log"
    );
    let file = OpenOptions::new().write(true).open(path(dir, id))?;
    file.set_len(scan.batch_end)?;
    file.sync_all()?;
    Ok(scan.batch_end)
}

/// Reads and verifies the record whose frame starts at `pos.offset` of `file`, which must end
/// at or before `limit` (the durable end of that segment).
pub(crate) fn read_record(file: &File, pos: RecordPos, limit: u64) -> Result<Vec<u8>, WalError> {
    let not_found = || WalError::NotFound { pos };
    if pos
        .offset
        .checked_add(HEADER_LEN)
        .is_none_or(|end| end > limit)
    {
        return Err(not_found());
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    read_exact_at(file, &mut raw, pos.offset)?;
    let header = Header::decode(raw);
    let corrupt = |reason: &str| WalError::Corrupt {
        segment: pos.segment,
        offset: pos.offset,
        reason: reason.to_owned(),
    };
    if pos.offset + HEADER_LEN + header.payload_len() > limit {
        return Err(corrupt("frame length runs past the durable end"));
    }
    let mut payload = vec![0u8; header.payload_len() as usize];
    read_exact_at(file, &mut payload, pos.offset + HEADER_LEN)?;
    if !header.verifies(&payload) {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(payload)
}

/// Opens segment `id` for a sequential scan of `[start, end)`.
pub(crate) fn scanner(
    dir: &Path,
    id: u64,
    start: u64,
    end: u64,
) -> io::Result<FrameScanner<BufReader<File>>> {
    let mut file = File::open(path(dir, id))?;
    file.seek(SeekFrom::Start(start))?;
    Ok(FrameScanner::new(
        BufReader::with_capacity(SCAN_BUFFER, file),
        start,
        end,
    ))
}

/// Positioned read that does not move a shared cursor, so readers need no lock.
#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

/// Positioned read that does not move a shared cursor, so readers need no lock.
#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}
