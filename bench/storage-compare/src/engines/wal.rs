//! converge's own write-ahead log, used as the embedded engine uses it: messages are records,
//! an in-memory index holds the positions of live messages, acknowledgements are records too,
//! and space comes back by deleting whole segments once nothing before the oldest live message
//! is needed.

use std::collections::{HashSet, VecDeque};
use std::path::Path;

use anyhow::bail;
use converge_store::embedded::wal::{RecordPos, SyncMode, Wal, WalError, WalOptions};
use parking_lot::Mutex;

use crate::harness::{GroupStats, QueueStore, Ticket, ready_ticket};

/// First byte of a message record.
const TAG_MESSAGE: u8 = 0;
/// First byte of an acknowledgement record; 16 bytes per acknowledged position follow.
const TAG_ACK: u8 = 1;

/// A queue on converge's WAL.
pub struct WalQueue {
    wal: Wal,
    /// Positions of live messages not handed to the consumer yet, in log order. Pushed under
    /// this lock together with the submit, so index order is log order.
    index: Mutex<VecDeque<RecordPos>>,
}

impl WalQueue {
    /// Opens the log (verifying every segment) and rebuilds the index by replaying it: the full
    /// recovery converge does at start-up.
    pub fn open(dir: &Path, segment_bytes: u64) -> anyhow::Result<Self> {
        let wal = Wal::open(
            dir,
            WalOptions {
                segment_bytes,
                sync: SyncMode::Fsync,
            },
        )?;
        let mut live = VecDeque::new();
        let mut acked = HashSet::new();
        wal.replay(RecordPos::default(), |pos, record| {
            match record.split_first() {
                Some((&TAG_MESSAGE, _)) => live.push_back(pos),
                Some((&TAG_ACK, positions)) => acked.extend(decode_positions(positions)),
                _ => {
                    return Err(WalError::Corrupt {
                        segment: pos.segment,
                        offset: pos.offset,
                        reason: "not a record this benchmark wrote".to_owned(),
                    });
                }
            }
            Ok(())
        })?;
        live.retain(|pos| !acked.contains(pos));
        Ok(Self {
            wal,
            index: Mutex::new(live),
        })
    }

    /// Reads a message record and returns its payload (without the tag).
    fn read_message(&self, pos: RecordPos) -> anyhow::Result<Vec<u8>> {
        let mut record = self.wal.read(pos)?;
        if record.first() != Some(&TAG_MESSAGE) {
            bail!("record at {pos:?} is not a message");
        }
        record.remove(0);
        Ok(record)
    }
}

/// Encodes positions for an acknowledgement record.
fn encode_ack(positions: &[RecordPos]) -> Vec<u8> {
    let mut record = Vec::with_capacity(1 + positions.len() * 16);
    record.push(TAG_ACK);
    for pos in positions {
        record.extend_from_slice(&pos.segment.to_le_bytes());
        record.extend_from_slice(&pos.offset.to_le_bytes());
    }
    record
}

/// Decodes the body of an acknowledgement record.
fn decode_positions(body: &[u8]) -> impl Iterator<Item = RecordPos> + '_ {
    body.chunks_exact(16).map(|chunk| {
        let (segment, offset) = chunk.split_at(8);
        RecordPos::new(
            u64::from_le_bytes(segment.try_into().unwrap_or_default()),
            u64::from_le_bytes(offset.try_into().unwrap_or_default()),
        )
    })
}

impl QueueStore for WalQueue {
    fn append(&self, payloads: Vec<Vec<u8>>) -> anyhow::Result<Ticket> {
        let records = payloads
            .into_iter()
            .map(|payload| {
                let mut record = Vec::with_capacity(payload.len() + 1);
                record.push(TAG_MESSAGE);
                record.extend_from_slice(&payload);
                record
            })
            .collect();
        let mut index = self.index.lock();
        let (positions, ticket) = self.wal.submit(records)?;
        index.extend(positions);
        drop(index);
        Ok(Box::pin(async move { Ok(ticket.await?) }))
    }

    fn consume_oldest(&self, max: usize) -> anyhow::Result<(usize, Ticket)> {
        let durable = self.wal.durable_end();
        let taken: Vec<RecordPos> = {
            let mut index = self.index.lock();
            let available = index
                .iter()
                .take(max)
                .take_while(|&&pos| pos < durable)
                .count();
            index.drain(..available).collect()
        };
        if taken.is_empty() {
            return Ok((0, ready_ticket()));
        }
        for &pos in &taken {
            self.read_message(pos)?;
        }
        let (_, ticket) = self.wal.submit(vec![encode_ack(&taken)])?;
        Ok((taken.len(), Box::pin(async move { Ok(ticket.await?) })))
    }

    fn reclaim(&self) -> anyhow::Result<()> {
        // Called once the consumer's acknowledgements are durable, so every message before the
        // oldest one in the index is consumed; anything not durable yet sits at or after
        // `durable_end`.
        let oldest = self
            .index
            .lock()
            .front()
            .copied()
            .unwrap_or_else(|| self.wal.durable_end());
        let dead: Vec<u64> = self
            .wal
            .segments()
            .into_iter()
            .take_while(|&id| id < oldest.segment)
            .collect();
        if !dead.is_empty() {
            self.wal.remove_segments(&dead)?;
        }
        Ok(())
    }

    fn first_live_from_start(&self) -> anyhow::Result<Option<Vec<u8>>> {
        // converge keeps the index in memory, so the head is known without scanning; what a
        // scan from nothing costs the WAL is its recovery, measured separately.
        let Some(pos) = self.index.lock().front().copied() else {
            return Ok(None);
        };
        self.read_message(pos).map(Some)
    }

    fn backlog(&self) -> u64 {
        self.index.lock().len() as u64
    }

    fn group_stats(&self) -> GroupStats {
        let stats = self.wal.stats();
        GroupStats {
            commits: stats.commits,
            records: stats.records,
        }
    }

    fn close(self: Box<Self>) -> anyhow::Result<()> {
        // Dropping the log drains what is queued and joins its writer thread.
        drop(self);
        Ok(())
    }
}
