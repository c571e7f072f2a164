//! The plain value types of the write-ahead log: positions, options, errors and counters.

use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Where a record lives: the segment it is in and the byte offset of its frame in that segment.
///
/// Positions order the log: `(segment, offset)` compares lexicographically, so a position in a
/// later segment is always greater, which lets the engine compare any position with
/// [`Wal::durable_end`](super::Wal::durable_end) without knowing segment sizes. Serializable
/// so the engine can record in its snapshot where replay must resume.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct RecordPos {
    /// Id of the segment file (`{segment:020}.log`).
    pub segment: u64,
    /// Byte offset of the record's frame header inside the segment.
    pub offset: u64,
}

impl RecordPos {
    /// Builds a position; a shorthand for the struct literal, handy in tests and the engine.
    pub const fn new(segment: u64, offset: u64) -> Self {
        Self { segment, offset }
    }
}

/// When an append counts as done, trading durability for latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// `fdatasync` before acknowledging: the batch survives power loss.
    Fsync,
    /// `write()` only: the batch survives a crash of the broker, not of the machine. Segments
    /// are still synced when they are sealed, so recovery can trust every sealed segment.
    OsBuffer,
}

/// How to open a [`Wal`](super::Wal).
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Size after which the writer starts a new segment. A batch never spans two segments, so
    /// a batch larger than this gets a segment of its own. Smaller segments let the engine
    /// reclaim space sooner; larger ones mean fewer files and fewer sealing fsyncs.
    pub segment_bytes: u64,
    /// When an append is acknowledged.
    pub sync: SyncMode,
}

impl Default for WalOptions {
    /// 64 MiB segments, fsync before acknowledging: the safe choice for a broker.
    fn default() -> Self {
        Self {
            segment_bytes: 64 * 1024 * 1024,
            sync: SyncMode::Fsync,
        }
    }
}

/// Everything that can go wrong in the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O call failed (open, read, truncate, delete...).
    #[error("write-ahead log I/O failed: {0}")]
    Io(#[from] io::Error),
    /// A checksum or frame did not verify where the log must be intact: in a sealed segment at
    /// open, or in the durable part of the log on read or replay.
    #[error("write-ahead log segment {segment} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// Segment holding the bad frame.
        segment: u64,
        /// Offset of the bad frame in that segment.
        offset: u64,
        /// What did not verify.
        reason: String,
    },
    /// The log was closed (or its writer stopped); nothing more can be appended.
    #[error("write-ahead log is closed")]
    Closed,
    /// An earlier write or sync failed. After a failed fsync the state of the page cache is
    /// unknown, so the log refuses all further appends until it is reopened (and repaired).
    #[error("write-ahead log is unusable after a failed write or sync: {0}")]
    Poisoned(Arc<io::Error>),
    /// A record is larger than a frame can describe.
    #[error("record of {len} bytes exceeds the write-ahead log limit of {max} bytes")]
    RecordTooLarge {
        /// Size of the rejected record.
        len: usize,
        /// Largest record the log accepts.
        max: usize,
    },
    /// There is no durable record at this position (not yet durable, past the end, or in a
    /// removed segment).
    #[error("no durable write-ahead log record at segment {} offset {}", .pos.segment, .pos.offset)]
    NotFound {
        /// The position asked for.
        pos: RecordPos,
    },
}

/// Counters of the writer, for benchmarks and metrics: they show how well group commit batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalStats {
    /// Group commits done: each is one `write` round and, in [`SyncMode::Fsync`], one
    /// `fdatasync`.
    pub commits: u64,
    /// Batches made durable.
    pub batches: u64,
    /// Records made durable.
    pub records: u64,
    /// Frame bytes written (headers included).
    pub bytes: u64,
}
