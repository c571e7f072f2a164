//! redb: a copy-on-write B-tree in one file. One write transaction per group, committed with
//! `Durability::Immediate` (fsync before `commit` returns).

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::kv::{KvBackend, Op};

/// Messages by sequence number.
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");

/// The redb backend.
pub struct Redb {
    db: Database,
}

impl Redb {
    /// Opens or creates `dir/queue.redb` and makes sure the table exists.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("queue.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(MESSAGES)?;
        tx.commit()?;
        Ok(Self { db })
    }
}

impl KvBackend for Redb {
    fn commit(&self, ops: &[&Op]) -> anyhow::Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut table = tx.open_table(MESSAGES)?;
            for op in ops {
                match op {
                    Op::Append { first, payloads } => {
                        for (key, payload) in (*first..).zip(payloads) {
                            table.insert(key, payload.as_slice())?;
                        }
                    }
                    Op::Delete(keys) => {
                        for &key in keys {
                            table.remove(key)?;
                        }
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn read_range(&self, from: u64, to: u64, max: usize) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(MESSAGES)?;
        let mut out = Vec::new();
        for entry in table.range(from..to)?.take(max) {
            let (key, value) = entry?;
            out.push((key.value(), value.value().to_vec()));
        }
        Ok(out)
    }

    fn bounds(&self) -> anyhow::Result<Option<(u64, u64)>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(MESSAGES)?;
        let first = table.first()?.map(|(key, _)| key.value());
        let last = table.last()?.map(|(key, _)| key.value());
        Ok(first.zip(last))
    }
}
