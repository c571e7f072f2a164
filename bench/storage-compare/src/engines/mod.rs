//! The engines under comparison and how each is opened as a [`QueueStore`].

mod fjall;
mod redb;
mod sqlite;
mod wal;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

use crate::harness::QueueStore;
use crate::kv::KvQueue;

/// One candidate engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// converge's segmented log with group commit (the baseline of every ratio).
    Wal,
    /// redb, one write transaction per group with `Durability::Immediate`.
    Redb,
    /// fjall 3, a write batch then `persist(SyncData)` per group.
    Fjall,
    /// SQLite, WAL journal, `synchronous=FULL`, one transaction per group.
    Sqlite,
}

impl EngineKind {
    /// All engines, the baseline first.
    pub const ALL: [EngineKind; 4] = [Self::Wal, Self::Redb, Self::Fjall, Self::Sqlite];

    /// Opens (or creates) the store in `dir`, doing all the work needed before it can serve:
    /// that is what the recovery figures time.
    pub fn open(self, dir: &Path, options: &EngineOptions) -> anyhow::Result<Box<dyn QueueStore>> {
        Ok(match self {
            Self::Wal => Box::new(wal::WalQueue::open(dir, options.wal_segment_bytes)?),
            Self::Redb => Box::new(KvQueue::start(redb::Redb::open(dir)?)?),
            Self::Fjall => Box::new(KvQueue::start(fjall::Fjall::open(dir)?)?),
            Self::Sqlite => Box::new(KvQueue::start(sqlite::Sqlite::open(dir)?)?),
        })
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Wal => "converge WAL",
            Self::Redb => "redb",
            Self::Fjall => "fjall",
            Self::Sqlite => "SQLite",
        })
    }
}

/// Engine settings that the command line can change.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Segment size of the WAL; converge's default unless overridden.
    pub wal_segment_bytes: u64,
}
