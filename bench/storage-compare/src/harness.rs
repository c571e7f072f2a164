//! The interface every engine is driven through, so the workloads are literally the same code
//! for all of them.
//!
//! converge uses its store as a queue: producers append and wait until their message is
//! durable, a consumer reads the oldest live message and acknowledges it. [`QueueStore`] is that
//! shape and nothing more; each engine implements it the way converge would use it.

use std::future::Future;
use std::pin::Pin;

/// Resolves once the operation it was issued for is durable (fsynced), or with the error that
/// kept it from becoming durable. Boxed so that the WAL's own ticket and the group committer's
/// channel fit behind one type.
pub type Ticket = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Group commit counters: how many messages one fsync served on average.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Durable commits (one fsync each).
    pub commits: u64,
    /// Records made durable by those commits.
    pub records: u64,
}

impl GroupStats {
    /// Records per commit between two snapshots; 0 when nothing was committed.
    pub fn average_group_since(self, earlier: GroupStats) -> f64 {
        let commits = self.commits.saturating_sub(earlier.commits);
        if commits == 0 {
            return 0.0;
        }
        self.records.saturating_sub(earlier.records) as f64 / commits as f64
    }
}

/// A durable message queue on top of one storage engine, used the way converge would use it.
///
/// All methods except the tickets are synchronous and may block on I/O; the workloads call them
/// from `block_in_place` when that matters.
pub trait QueueStore: Send + Sync {
    /// Queues `payloads` as one batch; the ticket resolves once all of them are durable.
    fn append(&self, payloads: Vec<Vec<u8>>) -> anyhow::Result<Ticket>;

    /// Reads up to `max` of the oldest live, durable messages not handed out yet, then queues
    /// their deletion (or acknowledgement) as one operation. Returns how many were consumed and
    /// the ticket of the deletion; `(0, ready ticket)` when nothing is available.
    fn consume_oldest(&self, max: usize) -> anyhow::Result<(usize, Ticket)>;

    /// Gives space back once a deletion is durable. Only the WAL has work here (dropping whole
    /// segments that hold nothing live); the other engines reclaim inside their commits.
    fn reclaim(&self) -> anyhow::Result<()>;

    /// Finds the first live message the way a reader that starts from nothing would, and
    /// returns its payload: the head-of-queue trap measurement.
    fn first_live_from_start(&self) -> anyhow::Result<Option<Vec<u8>>>;

    /// Live messages the store knows of (appended, not yet consumed).
    fn backlog(&self) -> u64;

    /// Group commit counters since open.
    fn group_stats(&self) -> GroupStats;

    /// Drains what is queued, stops the writer and releases the files, so the same directory
    /// can be opened again.
    fn close(self: Box<Self>) -> anyhow::Result<()>;
}

/// A ticket that is already resolved, for operations that had nothing to do.
pub fn ready_ticket() -> Ticket {
    Box::pin(std::future::ready(Ok(())))
}

/// Builds message payloads: `len` bytes whose first 8 are the little-endian `seq`, the rest
/// pseudo-random so that no engine gains from compressing them.
#[derive(Debug, Clone)]
pub struct PayloadGen {
    state: u64,
    len: usize,
}

impl PayloadGen {
    /// A generator for payloads of `len` bytes (at least 8), seeded per producer so producers
    /// do not write identical bytes.
    pub fn new(seed: u64, len: usize) -> Self {
        debug_assert!(len >= 8, "a payload carries its 8-byte sequence number");
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            len,
        }
    }

    /// The payload of message `seq`.
    pub fn payload(&mut self, seq: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        out.extend_from_slice(&seq.to_le_bytes());
        while out.len() < self.len {
            // xorshift64: cheap, and good enough to defeat LZ4.
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let take = (self.len - out.len()).min(8);
            out.extend_from_slice(&self.state.to_le_bytes()[..take]);
        }
        out
    }
}

/// The sequence number a [`PayloadGen`] payload carries.
pub fn payload_seq(payload: &[u8]) -> Option<u64> {
    let head: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_sequence_and_differ() {
        let mut payloads = PayloadGen::new(1, 1024);
        let a = payloads.payload(41);
        let b = payloads.payload(42);
        assert_eq!(a.len(), 1024);
        assert_eq!(payload_seq(&a), Some(41));
        assert_eq!(payload_seq(&b), Some(42));
        assert_ne!(
            a[8..],
            b[8..],
            "bodies must not repeat, or compression would flatter LSMs"
        );
    }

    #[test]
    fn average_group_is_per_commit_since_the_snapshot() {
        let earlier = GroupStats {
            commits: 2,
            records: 10,
        };
        let later = GroupStats {
            commits: 6,
            records: 50,
        };
        assert_eq!(later.average_group_since(earlier), 10.0);
        assert_eq!(earlier.average_group_since(earlier), 0.0);
    }
}
