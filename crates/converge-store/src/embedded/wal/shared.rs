//! State shared between the [`Wal`](super::Wal) handle and its writer thread.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::watch;

use super::ticket::TicketSender;
use super::types::{RecordPos, WalError, WalOptions, WalStats};

/// A batch waiting for the writer, with the position its first record was promised.
pub(crate) struct Pending {
    /// Segment the whole batch goes to (a batch never spans segments).
    pub(crate) segment: u64,
    /// Offset of its first frame in that segment.
    pub(crate) offset: u64,
    /// The records, in order; empty for a pure barrier.
    pub(crate) records: Vec<Vec<u8>>,
    /// Resolves the submitter's ticket.
    pub(crate) done: TicketSender,
}

/// What submitters and the writer coordinate on; guarded by [`Shared::state`].
pub(crate) struct State {
    /// Batches submitted and not yet taken by the writer, in submit order.
    pub(crate) queue: Vec<Pending>,
    /// Where the next submitted record goes: the end of the log including queued batches.
    pub(crate) next: RecordPos,
    /// `close` was called (or the handle dropped): refuse submits, drain, stop.
    pub(crate) closing: bool,
    /// The writer thread has exited; nothing will drain the queue any more.
    pub(crate) stopped: bool,
    /// The write or sync error that poisoned the log, if any.
    pub(crate) poisoned: Option<Arc<io::Error>>,
}

impl State {
    /// The error a submit gets when the log no longer accepts appends.
    pub(crate) fn refusal(&self) -> Option<WalError> {
        if let Some(cause) = &self.poisoned {
            return Some(WalError::Poisoned(Arc::clone(cause)));
        }
        (self.closing || self.stopped).then_some(WalError::Closed)
    }
}

/// One segment on disk.
pub(crate) struct SegmentEntry {
    /// Read handle, shared so readers can `pread` without holding the map lock.
    pub(crate) file: Arc<File>,
    /// Bytes written to it so far.
    pub(crate) len: u64,
}

/// Writer counters, updated once per group commit.
#[derive(Default)]
pub(crate) struct Counters {
    commits: AtomicU64,
    batches: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    /// Accounts one group commit.
    pub(crate) fn add(&self, batches: u64, records: u64, bytes: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.batches.fetch_add(batches, Ordering::Relaxed);
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A snapshot of the counters.
    pub(crate) fn snapshot(&self) -> WalStats {
        WalStats {
            commits: self.commits.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Everything the handle and the writer thread share.
pub(crate) struct Shared {
    /// Directory of the segment files.
    pub(crate) dir: PathBuf,
    /// Options the log was opened with.
    pub(crate) options: WalOptions,
    /// Queue and lifecycle; held only for short, I/O-free sections.
    pub(crate) state: Mutex<State>,
    /// Wakes the writer when a batch is queued or the log is closing.
    pub(crate) wake: Condvar,
    /// Everything strictly before this position is durable.
    pub(crate) durable: Mutex<RecordPos>,
    /// Segments on disk by id; the last is the active one.
    pub(crate) segments: RwLock<BTreeMap<u64, SegmentEntry>>,
    /// Set to `true` when the writer thread exits, for `close` to await.
    pub(crate) stopped: watch::Sender<bool>,
    /// Group commit counters.
    pub(crate) counters: Counters,
}

impl Shared {
    /// Called when the writer thread exits, normally or by panic: fails whatever is still
    /// queued (no one will write it) and wakes `close`.
    pub(crate) fn writer_exited(&self) {
        let orphans = {
            let mut state = self.state.lock();
            state.stopped = true;
            std::mem::take(&mut state.queue)
        };
        let error = || {
            let state = self.state.lock();
            state.refusal().unwrap_or(WalError::Closed)
        };
        for pending in orphans {
            let _ = pending.done.send(Err(error()));
        }
        self.stopped.send_replace(true);
    }
}
