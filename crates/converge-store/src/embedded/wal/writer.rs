//! The writer thread: group commit.
//!
//! One thread takes everything queued since its last round, writes it with as few `write`
//! calls as practical (frames are encoded into one buffer, flushed every [`FLUSH_AT`] bytes and
//! at segment boundaries), rolls segments where the submitters' positions say so, then syncs
//! once and completes the round's tickets in order. Appends that arrive during the sync wait for
//! the next round, so under load one fsync serves many batches.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use super::frame;
use super::segment;
use super::shared::{Pending, SegmentEntry, Shared};
use super::types::{RecordPos, SyncMode, WalError};

/// Buffered bytes after which the writer issues a `write`, bounding its memory on big rounds.
const FLUSH_AT: usize = 1024 * 1024;

/// The writer thread's own state: the active segment and the encode buffer.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    active: u64,
    file: File,
    len: u64,
    buf: Vec<u8>,
}

/// Runs [`Shared::writer_exited`] however the thread ends, panics included, so that no
/// submitter waits forever on a ticket nobody will resolve.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.writer_exited();
    }
}

impl Writer {
    /// Starts the writer on `file`, the active segment `active`, whose valid length is `len`.
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        active: u64,
        file: File,
        len: u64,
    ) -> io::Result<JoinHandle<()>> {
        let writer = Self {
            shared,
            active,
            file,
            len,
            buf: Vec::with_capacity(FLUSH_AT),
        };
        thread::Builder::new()
            .name("converge-wal".to_owned())
            .spawn(move || writer.run())
    }

    /// The group commit loop; returns when the log is closing and drained, or poisoned.
    fn run(mut self) {
        let _exit = ExitGuard(Arc::clone(&self.shared));
        while let Some(group) = self.next_group() {
            match self.commit(&group) {
                Ok(end) => self.acknowledge(group, end),
                Err(error) => {
                    self.poison(group, error);
                    return;
                }
            }
        }
        tracing::debug!(segment = self.active, "write-ahead log writer stopped");
    }

    /// Waits for work; takes the whole queue. `None` once closing with nothing left.
    fn next_group(&self) -> Option<Vec<Pending>> {
        let mut state = self.shared.state.lock();
        while state.queue.is_empty() && !state.closing {
            self.shared.wake.wait(&mut state);
        }
        if state.queue.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut state.queue))
    }

    /// Writes and syncs one group; returns the end of its last record (`None` if it held only
    /// empty barrier batches).
    fn commit(&mut self, group: &[Pending]) -> io::Result<Option<RecordPos>> {
        let mut end = None;
        for batch in group {
            let Some(last) = batch.records.len().checked_sub(1) else {
                continue;
            };
            if batch.segment != self.active {
                self.flush()?;
                self.roll(batch.segment)?;
            }
            debug_assert_eq!(
                self.len + self.buf.len() as u64,
                batch.offset,
                "writer position diverged from the positions promised at submit"
            );
            for (i, record) in batch.records.iter().enumerate() {
                frame::encode(&mut self.buf, record, i == last);
            }
            end = Some(RecordPos::new(
                self.active,
                self.len + self.buf.len() as u64,
            ));
            if self.buf.len() >= FLUSH_AT {
                self.flush()?;
            }
        }
        self.flush()?;
        if end.is_some() && self.shared.options.sync == SyncMode::Fsync {
            self.file.sync_data()?;
        }
        Ok(end)
    }

    /// Writes the encode buffer to the active segment.
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buf)?;
        self.len += self.buf.len() as u64;
        self.buf.clear();
        if self.buf.capacity() > 4 * FLUSH_AT {
            self.buf.shrink_to(FLUSH_AT);
        }
        if let Some(entry) = self.shared.segments.write().get_mut(&self.active) {
            entry.len = self.len;
        }
        Ok(())
    }

    /// Seals the active segment (synced in every mode, so recovery can trust sealed segments)
    /// and starts segment `next`.
    fn roll(&mut self, next: u64) -> io::Result<()> {
        debug_assert!(next > self.active, "segments only move forward");
        debug_assert!(self.buf.is_empty(), "flush before rolling");
        self.file.sync_data()?;
        let file = segment::create(&self.shared.dir, next)?;
        let reader = File::open(segment::path(&self.shared.dir, next))?;
        self.shared.segments.write().insert(
            next,
            SegmentEntry {
                file: Arc::new(reader),
                len: 0,
            },
        );
        tracing::debug!(
            sealed = self.active,
            sealed_bytes = self.len,
            segment = next,
            "write-ahead log rolled to a new segment"
        );
        self.file = file;
        self.active = next;
        self.len = 0;
        Ok(())
    }

    /// Publishes the new durable end, then resolves the group's tickets in order.
    fn acknowledge(&self, group: Vec<Pending>, end: Option<RecordPos>) {
        if let Some(end) = end {
            let mut durable = self.shared.durable.lock();
            debug_assert!(*durable <= end, "durable end only moves forward");
            *durable = end;
        }
        let batches = group.iter().filter(|b| !b.records.is_empty()).count() as u64;
        let records = group.iter().map(|b| b.records.len() as u64).sum();
        let bytes = group
            .iter()
            .flat_map(|b| &b.records)
            .map(|r| frame::frame_len(r.len()))
            .sum();
        if end.is_some() {
            self.shared.counters.add(batches, records, bytes);
        }
        for batch in group {
            // A submitter that dropped its ticket no longer cares.
            let _ = batch.done.send(Ok(()));
        }
    }

    /// Fails the group and every later append: after a failed write or fsync the page cache
    /// may hold data the disk never got (or lost), so no further acknowledgement is honest.
    fn poison(&self, group: Vec<Pending>, error: io::Error) {
        tracing::error!(
            error = %error,
            segment = self.active,
            batches = group.len(),
            "write-ahead log write failed; refusing further appends until reopened"
        );
        let cause = Arc::new(error);
        self.shared.state.lock().poisoned = Some(Arc::clone(&cause));
        for batch in group {
            let _ = batch.done.send(Err(WalError::Poisoned(Arc::clone(&cause))));
        }
    }
}
