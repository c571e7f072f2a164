//! The group-commit harness for the key-value engines (redb, fjall, SQLite).
//!
//! converge's WAL has its group commit built in. To compare like with like, the other engines
//! get the same shape here: submitters queue operations on a channel and wait on a oneshot; one
//! writer thread blocks for the first operation, drains everything else queued meanwhile and
//! commits the lot as one durable transaction (one fsync), then answers every submitter.
//!
//! Messages are keyed by a sequence number assigned at submit, under the same lock that queues
//! them, so commit order is key order and "everything below `durable_end`" is well defined.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::harness::{GroupStats, QueueStore, Ticket, ready_ticket};

/// One queued change.
#[derive(Debug)]
pub enum Op {
    /// Insert `payloads` under keys `first`, `first + 1`, ...
    Append {
        /// Key of the first payload.
        first: u64,
        /// The message bodies.
        payloads: Vec<Vec<u8>>,
    },
    /// Delete these keys.
    Delete(Vec<u64>),
}

/// What an engine must offer to be driven by [`KvQueue`]: a durable multi-op commit and
/// ordered reads.
pub trait KvBackend: Send + Sync + 'static {
    /// Applies `ops` in one transaction and returns only once it is durable (fsynced).
    fn commit(&self, ops: &[&Op]) -> anyhow::Result<()>;

    /// Up to `max` live messages with keys in `from..to`, in key order.
    fn read_range(&self, from: u64, to: u64, max: usize) -> anyhow::Result<Vec<(u64, Vec<u8>)>>;

    /// The smallest and largest live key, found from scratch (this is the recovery work).
    fn bounds(&self) -> anyhow::Result<Option<(u64, u64)>>;
}

/// A submitted operation waiting for the writer.
struct Pending {
    op: Op,
    done: oneshot::Sender<Result<(), String>>,
}

/// State shared by submitters and the writer thread.
struct Shared<B> {
    backend: B,
    /// Every key below this is durable (and visible).
    durable_end: AtomicU64,
    commits: AtomicU64,
    records: AtomicU64,
}

/// The submit side: the channel and the next key, locked together so that key order is queue
/// order.
struct Submit {
    tx: Option<mpsc::Sender<Pending>>,
    next_key: u64,
}

/// A [`QueueStore`] over any [`KvBackend`], with converge-style group commit.
pub struct KvQueue<B: KvBackend> {
    shared: Arc<Shared<B>>,
    submit: Mutex<Submit>,
    /// The consumer's position: the next key it has not read.
    cursor: Mutex<u64>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl<B: KvBackend> KvQueue<B> {
    /// Recovers the queue bounds from `backend` (timed as part of "open") and starts the
    /// writer thread.
    pub fn start(backend: B) -> anyhow::Result<Self> {
        let (first, next) = match backend.bounds()? {
            Some((first, last)) => (first, last + 1),
            None => (0, 0),
        };
        let shared = Arc::new(Shared {
            backend,
            durable_end: AtomicU64::new(next),
            commits: AtomicU64::new(0),
            records: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("kv-group-commit".to_owned())
                .spawn(move || writer_loop(&shared, &rx))
                .context("spawning the group commit writer")?
        };
        Ok(Self {
            shared,
            submit: Mutex::new(Submit {
                tx: Some(tx),
                next_key: next,
            }),
            cursor: Mutex::new(first),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Queues `op` and returns the ticket of its commit.
    fn queue(&self, submit: &Submit, op: Op) -> anyhow::Result<Ticket> {
        let tx = submit.tx.as_ref().context("queue is closed")?;
        let (done, rx) = oneshot::channel();
        tx.send(Pending { op, done })
            .map_err(|_| anyhow::anyhow!("group commit writer has stopped"))?;
        Ok(Box::pin(async move {
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::anyhow!("commit failed: {e}")),
                Err(_) => Err(anyhow::anyhow!("group commit writer dropped the operation")),
            }
        }))
    }
}

/// Takes everything queued, commits it as one transaction, answers every submitter.
fn writer_loop<B: KvBackend>(shared: &Shared<B>, rx: &mpsc::Receiver<Pending>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        let ops: Vec<&Op> = group.iter().map(|p| &p.op).collect();
        let result = shared.backend.commit(&ops).map_err(|e| format!("{e:#}"));
        if result.is_ok() {
            let mut appended = 0;
            for op in &ops {
                if let Op::Append { first, payloads } = op {
                    appended += payloads.len() as u64;
                    shared
                        .durable_end
                        .fetch_max(first + payloads.len() as u64, Ordering::Release);
                }
            }
            shared.commits.fetch_add(1, Ordering::Relaxed);
            shared.records.fetch_add(appended, Ordering::Relaxed);
        }
        for pending in group {
            // A submitter that stopped waiting no longer cares.
            let _ = pending.done.send(result.clone());
        }
    }
}

impl<B: KvBackend> QueueStore for KvQueue<B> {
    fn append(&self, payloads: Vec<Vec<u8>>) -> anyhow::Result<Ticket> {
        let mut submit = self.submit.lock();
        let first = submit.next_key;
        let count = payloads.len() as u64;
        let ticket = self.queue(&submit, Op::Append { first, payloads })?;
        submit.next_key += count;
        Ok(ticket)
    }

    fn consume_oldest(&self, max: usize) -> anyhow::Result<(usize, Ticket)> {
        let mut cursor = self.cursor.lock();
        let durable_end = self.shared.durable_end.load(Ordering::Acquire);
        // Seek from the consumer's cursor, as a real consumer would, not from the start.
        let messages = self.shared.backend.read_range(*cursor, durable_end, max)?;
        let Some(&(last, _)) = messages.last() else {
            return Ok((0, ready_ticket()));
        };
        *cursor = last + 1;
        let keys: Vec<u64> = messages.into_iter().map(|(key, _)| key).collect();
        let count = keys.len();
        let submit = self.submit.lock();
        let ticket = self.queue(&submit, Op::Delete(keys))?;
        Ok((count, ticket))
    }

    fn reclaim(&self) -> anyhow::Result<()> {
        Ok(())
    }

    fn first_live_from_start(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let durable_end = self.shared.durable_end.load(Ordering::Acquire);
        let mut first = self.shared.backend.read_range(0, durable_end, 1)?;
        Ok(first.pop().map(|(_, payload)| payload))
    }

    fn backlog(&self) -> u64 {
        let next = self.submit.lock().next_key;
        next.saturating_sub(*self.cursor.lock())
    }

    fn group_stats(&self) -> GroupStats {
        GroupStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            records: self.shared.records.load(Ordering::Relaxed),
        }
    }

    fn close(self: Box<Self>) -> anyhow::Result<()> {
        // Dropping the sender ends the writer loop once the queue is drained.
        self.submit.lock().tx = None;
        if let Some(writer) = self.writer.lock().take() {
            writer
                .join()
                .map_err(|_| anyhow::anyhow!("group commit writer panicked"))?;
        }
        Ok(())
    }
}
