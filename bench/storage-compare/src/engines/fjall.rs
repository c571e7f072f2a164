//! fjall 3: an LSM tree with a journal. Each group is one atomic write batch, then the journal
//! is persisted with `PersistMode::SyncData` (fdatasync) before anyone is answered.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::kv::{KvBackend, Op};

/// The fjall backend: one database, one keyspace of messages keyed by big-endian sequence
/// number (so byte order is numeric order).
pub struct Fjall {
    db: Database,
    messages: Keyspace,
}

impl Fjall {
    /// Opens or creates the database in `dir`, recovering its journal.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let db = Database::builder(dir).open()?;
        let messages = db.keyspace("messages", KeyspaceCreateOptions::default)?;
        Ok(Self { db, messages })
    }
}

/// Decodes a big-endian key.
fn decode_key(key: &[u8]) -> anyhow::Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| anyhow::anyhow!("key of {} bytes, expected 8", key.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

impl KvBackend for Fjall {
    fn commit(&self, ops: &[&Op]) -> anyhow::Result<()> {
        let mut batch = self.db.batch();
        for op in ops {
            match op {
                Op::Append { first, payloads } => {
                    for (key, payload) in (*first..).zip(payloads) {
                        batch.insert(&self.messages, &key.to_be_bytes()[..], payload.as_slice());
                    }
                }
                Op::Delete(keys) => {
                    for key in keys {
                        batch.remove(&self.messages, &key.to_be_bytes()[..]);
                    }
                }
            }
        }
        batch.commit()?;
        self.db.persist(PersistMode::SyncData)?;
        Ok(())
    }

    fn read_range(&self, from: u64, to: u64, max: usize) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for guard in self
            .messages
            .range(from.to_be_bytes()..to.to_be_bytes())
            .take(max)
        {
            let (key, value) = guard.into_inner()?;
            out.push((decode_key(&key)?, value.to_vec()));
        }
        Ok(out)
    }

    fn bounds(&self) -> anyhow::Result<Option<(u64, u64)>> {
        let Some(first) = self.messages.first_key_value() else {
            return Ok(None);
        };
        let first = decode_key(&first.key()?)?;
        let last = match self.messages.last_key_value() {
            Some(last) => decode_key(&last.key()?)?,
            None => first,
        };
        Ok(Some((first, last)))
    }
}
