//! The write-ahead log of the embedded engine: a segmented, append-only log of opaque records
//! with group commit.
//!
//! The broker answers a publish only once its messages are on disk, and an fsync costs a
//! fraction of a millisecond: one per message would cap throughput at a few thousand messages
//! a second. Like JetStream and Kafka, the log therefore commits in groups: a dedicated writer
//! thread takes every batch queued while the previous sync ran and makes them all durable with
//! one `write` round and one `fdatasync` (see the `writer` module).
//!
//! It is written by hand rather than taken from a crate because it *is* the product's core: its
//! durability contract (acknowledge only after sync, all-or-nothing batches, refuse to open on
//! damaged acknowledged data, poison on a failed sync), its position scheme (the engine indexes
//! records by [`RecordPos`]) and its concurrency contract (positions fixed at submit, under the
//! engine's lock, without I/O) are exactly what the engine needs and no more.
//!
//! # Layout
//! Segment files `{dir}/{segment:020}.log`, each up to [`WalOptions::segment_bytes`]; records
//! are framed as described in the `frame` module. A batch never spans two segments, and the last frame
//! of each batch carries a marker, so recovery can drop a trailing incomplete batch whole.
//! A segment is synced before the next one is created: at open, damage in the last segment is
//! a torn tail (cut off, with a warning), damage anywhere else is corruption (refused).

mod frame;
mod segment;
mod shared;
mod ticket;
mod types;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::watch;

use self::frame::{MAX_PAYLOAD, ScanError, frame_len};
use self::shared::{Counters, Pending, SegmentEntry, Shared, State};
use self::writer::Writer;

pub use self::ticket::AppendTicket;
pub use self::types::{RecordPos, SyncMode, WalError, WalOptions, WalStats};

/// The write-ahead log. `Send + Sync`; share it as `Arc<Wal>`.
///
/// Dropping it without [`close`](Wal::close) still drains what is queued and stops the writer
/// (blocking for at most the round in progress).
pub struct Wal {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .field("options", &self.shared.options)
            .field("durable_end", &self.durable_end())
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens or creates the log in `dir`, repairing a torn tail.
    ///
    /// Verifies every segment (streaming); fails with [`WalError::Corrupt`] if a segment other
    /// than the last is damaged, since those hold acknowledged data. Blocking: from async code,
    /// call it in `spawn_blocking`.
    pub fn open(dir: &Path, options: WalOptions) -> Result<Wal, WalError> {
        fs::create_dir_all(dir)?;
        let ids = segment::list(dir)?;
        let mut segments = BTreeMap::new();
        let (active, len) = match ids.split_last() {
            None => {
                drop(segment::create(dir, 0)?);
                (0, 0)
            }
            Some((&last, sealed)) => {
                for &id in sealed {
                    let len = segment::verify_sealed(dir, id)?;
                    segments.insert(id, open_entry(dir, id, len)?);
                }
                (last, segment::repair_tail(dir, last)?)
            }
        };
        segments.insert(active, open_entry(dir, active, len)?);
        let file = segment::open_append(dir, active)?;
        // What survived in the OS buffers of an `OsBuffer` run is made durable before it is
        // reported as such.
        file.sync_data()?;
        let end = RecordPos::new(active, len);
        tracing::info!(
            dir = %dir.display(),
            segments = segments.len(),
            end_segment = end.segment,
            end_offset = end.offset,
            "write-ahead log opened"
        );
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            options,
            state: Mutex::new(State {
                queue: Vec::new(),
                next: end,
                closing: false,
                stopped: false,
                poisoned: None,
            }),
            wake: Condvar::new(),
            durable: Mutex::new(end),
            segments: RwLock::new(segments),
            stopped: watch::Sender::new(false),
            counters: Counters::default(),
        });
        let writer = Writer::spawn(Arc::clone(&shared), active, file, len)?;
        Ok(Wal {
            shared,
            writer: Some(writer),
        })
    }

    /// Calls `f` for every durable record in log order, starting at `from` (inclusive;
    /// [`RecordPos::default`] = all). Segments before `from.segment` (or removed) are skipped.
    ///
    /// Streams segment by segment through a buffered reader: memory is one record, whatever the
    /// size of the log. An error from `f` stops the replay and is returned.
    pub fn replay(
        &self,
        from: RecordPos,
        mut f: impl FnMut(RecordPos, &[u8]) -> Result<(), WalError>,
    ) -> Result<(), WalError> {
        let durable = self.durable_end();
        if from >= durable {
            return Ok(());
        }
        let ids: Vec<(u64, u64)> = self
            .shared
            .segments
            .read()
            .range(from.segment..=durable.segment)
            .map(|(&id, entry)| (id, entry.len))
            .collect();
        let mut payload = Vec::new();
        for (id, len) in ids {
            let start = if id == from.segment { from.offset } else { 0 };
            let end = if id == durable.segment {
                durable.offset
            } else {
                len
            };
            if start >= end {
                continue;
            }
            let mut scanner = match segment::scanner(&self.shared.dir, id, start, end) {
                Ok(scanner) => scanner,
                // Removed by the engine since we listed it: it no longer wants it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            loop {
                match scanner.next_into(&mut payload) {
                    Ok(Some(frame)) => f(RecordPos::new(id, frame.offset), &payload)?,
                    Ok(None) => break,
                    Err(ScanError::Io(e)) => return Err(e.into()),
                    Err(ScanError::Invalid { offset, reason }) => {
                        return Err(WalError::Corrupt {
                            segment: id,
                            offset,
                            reason: reason.to_owned(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Queues one batch and returns at once with the positions its records will have, plus a
    /// ticket that resolves once the batch is durable (per [`SyncMode`]).
    ///
    /// Does no I/O and holds a lock only for a few instructions, so the engine may call it under
    /// its own state lock, making log order = call order. The batch is all-or-nothing across a
    /// crash. An empty batch is a barrier: its ticket resolves once everything queued before it
    /// is durable.
    pub fn submit(
        &self,
        records: Vec<Vec<u8>>,
    ) -> Result<(Vec<RecordPos>, AppendTicket), WalError> {
        if let Some(record) = records.iter().find(|r| r.len() > MAX_PAYLOAD) {
            return Err(WalError::RecordTooLarge {
                len: record.len(),
                max: MAX_PAYLOAD,
            });
        }
        let batch_bytes: u64 = records.iter().map(|r| frame_len(r.len())).sum();
        let mut positions = Vec::with_capacity(records.len());
        let (done, ticket) = AppendTicket::new();
        let mut state = self.shared.state.lock();
        if let Some(refusal) = state.refusal() {
            return Err(refusal);
        }
        let next = state.next;
        if batch_bytes > 0
            && next.offset > 0
            && next.offset + batch_bytes > self.shared.options.segment_bytes
        {
            state.next = RecordPos::new(next.segment + 1, 0);
        }
        let start = state.next;
        let mut offset = start.offset;
        for record in &records {
            positions.push(RecordPos::new(start.segment, offset));
            offset += frame_len(record.len());
        }
        state.next.offset = offset;
        state.queue.push(Pending {
            segment: start.segment,
            offset: start.offset,
            records,
            done,
        });
        drop(state);
        self.shared.wake.notify_one();
        Ok((positions, ticket))
    }

    /// Everything strictly before this position is durable; it only moves forward. Readers use
    /// it to expose only durable records.
    pub fn durable_end(&self) -> RecordPos {
        *self.shared.durable.lock()
    }

    /// Reads one durable record (positioned read on the segment file, checksum verified).
    ///
    /// Fails with [`WalError::NotFound`] if `pos` is not durable yet or its segment was removed.
    pub fn read(&self, pos: RecordPos) -> Result<Vec<u8>, WalError> {
        let durable = self.durable_end();
        if pos >= durable {
            return Err(WalError::NotFound { pos });
        }
        let (file, len) = self
            .shared
            .segments
            .read()
            .get(&pos.segment)
            .map(|entry| (Arc::clone(&entry.file), entry.len))
            .ok_or(WalError::NotFound { pos })?;
        let limit = if pos.segment == durable.segment {
            durable.offset
        } else {
            len
        };
        segment::read_record(&file, pos, limit)
    }

    /// Ids of the segments on disk, oldest first; the last is the one being written.
    pub fn segments(&self) -> Vec<u64> {
        self.shared.segments.read().keys().copied().collect()
    }

    /// Deletes whole segments the engine no longer needs. The active (last) segment is never
    /// deleted, and ids that are not there are ignored, so the engine can pass a generous list.
    pub fn remove_segments(&self, ids: &[u64]) -> Result<(), WalError> {
        let removed: Vec<(u64, u64)> = {
            let mut segments = self.shared.segments.write();
            let Some(&active) = segments.keys().next_back() else {
                return Ok(());
            };
            ids.iter()
                .filter(|&&id| id < active)
                .filter_map(|id| segments.remove(id).map(|entry| (*id, entry.len)))
                .collect()
        };
        if removed.is_empty() {
            return Ok(());
        }
        for &(id, _) in &removed {
            match fs::remove_file(segment::path(&self.shared.dir, id)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        segment::sync_dir(&self.shared.dir)?;
        tracing::info!(
            segments = ?removed.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            freed_bytes = removed.iter().map(|(_, len)| len).sum::<u64>(),
            "removed write-ahead log segments"
        );
        Ok(())
    }

    /// Bytes on disk in all segments.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.segments.read().values().map(|e| e.len).sum()
    }

    /// Group commit counters since open: records per commit shows how well appends batch.
    pub fn stats(&self) -> WalStats {
        self.shared.counters.snapshot()
    }

    /// Waits for everything queued to be durable, then stops the writer; later submits fail
    /// with [`WalError::Closed`]. Safe to call more than once and from any async runtime (it
    /// never blocks a thread). Fails with [`WalError::Poisoned`] if a write had failed.
    pub async fn close(&self) -> Result<(), WalError> {
        self.begin_close();
        let mut stopped = self.shared.stopped.subscribe();
        // The sender lives in `shared`, which we hold: this ends only when the writer exits.
        let _ = stopped.wait_for(|stopped| *stopped).await;
        match &self.shared.state.lock().poisoned {
            Some(cause) => Err(WalError::Poisoned(Arc::clone(cause))),
            None => Ok(()),
        }
    }

    /// Refuses further submits and tells the writer to drain and stop.
    fn begin_close(&self) {
        self.shared.state.lock().closing = true;
        self.shared.wake.notify_all();
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.begin_close();
        let Some(writer) = self.writer.take() else {
            return;
        };
        if writer.join().is_err() {
            tracing::error!(dir = %self.shared.dir.display(), "write-ahead log writer panicked");
        }
    }
}

/// The in-memory entry of segment `id`: a read handle and its valid length.
fn open_entry(dir: &Path, id: u64, len: u64) -> io::Result<SegmentEntry> {
    Ok(SegmentEntry {
        file: Arc::new(File::open(segment::path(dir, id))?),
        len,
    })
}
