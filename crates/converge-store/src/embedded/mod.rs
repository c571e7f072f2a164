//! The embedded engine: converge's default store, in-process, crash-safe, nothing to install.
//!
//! Layout:
//! - [`wal`]: the segmented write-ahead log with group commit (durability).
//! - [`atomic_file`]: whole-file replacement for the snapshot.
//! - [`journal`]: the log, or memory for `--memory`, behind one type.
//! - [`record`]: what is written to the log.
//! - [`state`]: the in-memory state and how each record changes it (shared by live writes and
//!   recovery).
//! - [`topic_log`]: one index of messages per topic, shared by its subscriptions.
//! - [`delivery`]: one subscription's leases, retries, ordering and cursors.
//! - [`snapshot`]: periodic snapshots that let old log segments go and bound recovery time.
//!
//! Concurrency: one mutex over the whole [`state::State`], never held across an `.await` nor
//! across an fsync. Writers queue their records into the journal while holding it (so log order
//! is state order) and wait for durability after releasing it. Subscribers see a message only
//! once it is durable (`Journal::durable_end`).

pub mod atomic_file;
pub mod delivery;
mod failures;
pub mod journal;
mod maintenance;
pub mod record;
mod seek;
pub mod snapshot;
pub mod state;
mod store_impl;
pub mod topic_log;
pub mod wal;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use converge_core::{Clock, Error, Result, StoredMessage};
use parking_lot::Mutex;
use tokio::sync::Notify;

use self::journal::{Durable, Journal, MemoryJournal};
use self::record::Record;
use self::snapshot::Snapshot;
use self::state::State;
use self::topic_log::Entry;
use self::wal::{RecordPos, SyncMode, Wal, WalOptions};

/// When a write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After `fdatasync`: survives power loss. The default.
    #[default]
    Fsync,
    /// After `write()` to the OS: survives a crash of the broker, not of the machine.
    OsBuffer,
}

/// How to open the embedded engine.
#[derive(Debug, Clone, Default)]
pub struct EmbeddedOptions {
    /// Where the data lives; `None` keeps everything in memory (nothing survives a restart).
    pub dir: Option<PathBuf>,
    /// When a write counts as done.
    pub durability: Durability,
}

/// Page size of list calls that do not ask for one.
const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page a list call returns.
const MAX_PAGE_SIZE: usize = 1000;
/// When a dead-letter topic is missing, the message waits this long before the next try.
const DEAD_LETTER_TOPIC_MISSING_RETRY: Duration = Duration::from_secs(60);
/// Least time between two snapshots.
const SNAPSHOT_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Take a snapshot once this many log bytes were written since the last one, to bound the
/// replay (and so the start-up time) after a crash.
const SNAPSHOT_EVERY_BYTES: u64 = 32 * 1024 * 1024;

/// The embedded engine. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    journal: Journal,
    clock: Arc<dyn Clock>,
    closed: AtomicBool,
    dir: Option<PathBuf>,
    segment_bytes: u64,
    snapshots: Mutex<SnapshotBook>,
}

/// When the last snapshot was taken and where replay would start from it.
struct SnapshotBook {
    resume_from: RecordPos,
    last: Option<std::time::Instant>,
}

/// Log bytes between two positions, counting whole segments of `segment_bytes` in between.
fn log_distance(from: RecordPos, to: RecordPos, segment_bytes: u64) -> u64 {
    if to.segment == from.segment {
        return to.offset.saturating_sub(from.offset);
    }
    (to.segment - from.segment - 1) * segment_bytes
        + segment_bytes.saturating_sub(from.offset)
        + to.offset
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("journal", &self.inner.journal)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store, replaying its log. Blocking: call from `spawn_blocking`.
    pub fn open(options: EmbeddedOptions, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::open_with_segment_bytes(options, clock, WalOptions::default().segment_bytes)
    }

    /// [`Self::open`] with a chosen log segment size (tests use small segments to exercise
    /// space reclamation).
    pub fn open_with_segment_bytes(
        options: EmbeddedOptions,
        clock: Arc<dyn Clock>,
        segment_bytes: u64,
    ) -> Result<Self> {
        let now = clock.now();
        // Message ids start at 1: a subscription's cursor 0 then means "before everything".
        let mut state = State {
            next_message_id: 1,
            ..State::default()
        };
        let mut resume_from = RecordPos::default();
        let journal = match &options.dir {
            None => Journal::Memory(MemoryJournal::default()),
            Some(dir) => {
                let stored =
                    atomic_file::read_if_exists(dir, snapshot::FILE_NAME).map_err(|e| {
                        Error::Internal(format!(
                            "cannot read the snapshot in {}: {e}",
                            dir.display()
                        ))
                    })?;
                if let Some(bytes) = stored {
                    let snapshot = Snapshot::decode(&bytes)?;
                    resume_from = snapshot.resume_from();
                    state = snapshot.restore(now)?;
                }
                let log_dir = dir.join("log");
                std::fs::create_dir_all(&log_dir).map_err(|e| {
                    Error::Internal(format!("cannot create {}: {e}", log_dir.display()))
                })?;
                let sync = match options.durability {
                    Durability::Fsync => SyncMode::Fsync,
                    Durability::OsBuffer => SyncMode::OsBuffer,
                };
                let wal = Wal::open(
                    &log_dir,
                    WalOptions {
                        sync,
                        segment_bytes,
                    },
                )
                .map_err(journal::wal_error)?;
                let started = std::time::Instant::now();
                let mut records = 0u64;
                let mut failure = None;
                let replayed = wal.replay(resume_from, |pos, bytes| {
                    records += 1;
                    let applied = Record::decode(bytes).and_then(|r| state.apply(r, pos, now));
                    applied.map_err(|e| {
                        failure = Some(e.clone());
                        wal::WalError::Corrupt {
                            segment: pos.segment,
                            offset: pos.offset,
                            reason: e.to_string(),
                        }
                    })
                });
                if let Some(e) = failure {
                    return Err(e);
                }
                replayed.map_err(journal::wal_error)?;
                tracing::info!(
                    records,
                    resumed_from_segment = resume_from.segment,
                    topics = state.topics.len(),
                    subscriptions = state.subscriptions.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    dir = %dir.display(),
                    "embedded store recovered"
                );
                Journal::Disk(wal)
            }
        };
        let snapshots = Mutex::new(SnapshotBook {
            resume_from,
            last: None,
        });
        Ok(Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                journal,
                clock,
                closed: AtomicBool::new(false),
                dir: options.dir,
                segment_bytes,
                snapshots,
            }),
        })
    }
}

impl EmbeddedStore {
    /// Bytes the log occupies on disk (0 in memory).
    pub fn disk_bytes(&self) -> u64 {
        match &self.inner.journal {
            Journal::Disk(wal) => wal.disk_bytes(),
            Journal::Memory(_) => 0,
        }
    }
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Unavailable("the store is shutting down".into()));
        }
        Ok(())
    }

    /// Appends records to the journal and applies them to the state, in one step under the
    /// state lock. The returned future resolves when they are durable.
    fn commit(&self, state: &mut State, records: Vec<Record>, now: SystemTime) -> Result<Durable> {
        let encoded = records.iter().map(Record::encode).collect();
        let (positions, durable) = self.journal.submit(encoded)?;
        for (record, pos) in records.into_iter().zip(positions) {
            state.apply(record, pos, now)?;
        }
        Ok(durable)
    }

    fn load(&self, entry: &Entry) -> Result<StoredMessage> {
        match Record::decode(&self.journal.read(entry.pos)?)? {
            Record::Message(m) => Ok(m.into_stored()),
            other => Err(Error::Internal(format!(
                "expected a message at {:?}, found {other:?}",
                entry.pos
            ))),
        }
    }

    /// Subscribers to wake once `durable` resolves: everything attached to the topics written.
    fn wake_after(&self, durable: Durable, notifies: Vec<Arc<Notify>>) {
        if notifies.is_empty() {
            return;
        }
        tokio::spawn(async move {
            if durable.await.is_ok() {
                for n in notifies {
                    n.notify_waiters();
                }
            }
        });
    }
}

/// Subscribers of the topics that `records` publish to.
fn notifies_for(state: &State, records: &[Record]) -> Vec<Arc<Notify>> {
    let mut out = Vec::new();
    for record in records {
        let Record::Message(m) = record else { continue };
        let Some(data) = state.logs.get(&m.topic_id) else {
            continue;
        };
        for sub_id in &data.attached {
            if let Some(sub) = state
                .subscription_names
                .get(sub_id)
                .and_then(|n| state.subscriptions.get(n))
            {
                out.push(sub.notify.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
