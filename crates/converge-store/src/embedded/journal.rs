//! Where the engine's records go: the write-ahead log on disk, or a vector in memory for
//! `--memory`. One type, so that the engine has a single code path for both.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use converge_core::{Error, Result};
use parking_lot::Mutex;

use super::wal::{RecordPos, Wal, WalError};

/// A future that resolves once a batch of records is durable.
pub type Durable = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// The engine's record sink and source.
pub enum Journal {
    /// The segmented write-ahead log.
    Disk(Wal),
    /// Records kept in memory (nothing survives the process).
    Memory(MemoryJournal),
}

/// In-memory records, addressed like the log so the engine cannot tell the difference.
#[derive(Default)]
pub struct MemoryJournal {
    records: Mutex<(u64, BTreeMap<u64, Vec<u8>>)>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Journal::Disk(_) => f.write_str("Journal::Disk"),
            Journal::Memory(_) => f.write_str("Journal::Memory"),
        }
    }
}

/// Maps a log failure to the domain error the API answers with.
pub fn wal_error(e: WalError) -> Error {
    match e {
        WalError::Closed => Error::Unavailable("the store is shut down".into()),
        other => Error::Internal(format!("storage failure: {other}")),
    }
}

impl Journal {
    /// Queues records; returns their positions at once and a future for their durability.
    /// Called under the engine's state lock, so log order is the order of state changes.
    pub fn submit(&self, records: Vec<Vec<u8>>) -> Result<(Vec<RecordPos>, Durable)> {
        match self {
            Journal::Disk(wal) => {
                let (positions, ticket) = wal.submit(records).map_err(wal_error)?;
                Ok((
                    positions,
                    Box::pin(async move { ticket.await.map_err(wal_error) }),
                ))
            }
            Journal::Memory(mem) => {
                let mut guard = mem.records.lock();
                let (next, map) = &mut *guard;
                let positions = records
                    .into_iter()
                    .map(|r| {
                        let pos = RecordPos {
                            segment: 0,
                            offset: *next,
                        };
                        map.insert(*next, r);
                        *next += 1;
                        pos
                    })
                    .collect();
                Ok((positions, Box::pin(async { Ok(()) })))
            }
        }
    }

    /// Everything strictly before this position is durable.
    pub fn durable_end(&self) -> RecordPos {
        match self {
            Journal::Disk(wal) => wal.durable_end(),
            Journal::Memory(mem) => RecordPos {
                segment: 0,
                offset: mem.records.lock().0,
            },
        }
    }

    /// Reads one record.
    pub fn read(&self, pos: RecordPos) -> Result<Vec<u8>> {
        match self {
            Journal::Disk(wal) => wal.read(pos).map_err(wal_error),
            Journal::Memory(mem) => mem
                .records
                .lock()
                .1
                .get(&pos.offset)
                .cloned()
                .ok_or_else(|| Error::Internal(format!("no record at {pos:?}"))),
        }
    }

    /// Forgets records the engine no longer needs. On disk whole segments go; in memory each
    /// record goes as soon as it is released.
    pub fn release(&self, positions: impl IntoIterator<Item = RecordPos>) {
        if let Journal::Memory(mem) = self {
            let mut guard = mem.records.lock();
            for pos in positions {
                guard.1.remove(&pos.offset);
            }
        }
    }

    /// Flushes and stops accepting records.
    pub async fn close(&self) -> Result<()> {
        match self {
            Journal::Disk(wal) => wal.close().await.map_err(wal_error),
            Journal::Memory(_) => Ok(()),
        }
    }
}
