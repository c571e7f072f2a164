//! SQLite (bundled): WAL journal mode, `synchronous=FULL` (the WAL is fsynced at every commit),
//! one transaction per group. A second connection serves reads so they do not queue behind the
//! writer.

use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};

use crate::kv::{KvBackend, Op};

/// The SQLite backend.
pub struct Sqlite {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

/// Opens a connection with the durability settings under test.
fn connect(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Converts a key to SQLite's signed integer.
fn to_sql(key: u64) -> anyhow::Result<i64> {
    Ok(i64::try_from(key)?)
}

impl Sqlite {
    /// Opens or creates `dir/queue.db`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("queue.db");
        let writer = connect(&path)?;
        writer.execute_batch(
            "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)",
        )?;
        let reader = connect(&path)?;
        Ok(Self {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }
}

impl KvBackend for Sqlite {
    fn commit(&self, ops: &[&Op]) -> anyhow::Result<()> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO messages (seq, payload) VALUES (?1, ?2)")?;
            let mut delete = tx.prepare_cached("DELETE FROM messages WHERE seq = ?1")?;
            for op in ops {
                match op {
                    Op::Append { first, payloads } => {
                        for (key, payload) in (*first..).zip(payloads) {
                            insert.execute(params![to_sql(key)?, payload])?;
                        }
                    }
                    Op::Delete(keys) => {
                        for &key in keys {
                            delete.execute(params![to_sql(key)?])?;
                        }
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn read_range(&self, from: u64, to: u64, max: usize) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
        let conn = self.reader.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, payload FROM messages WHERE seq >= ?1 AND seq < ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![
                to_sql(from)?,
                to_sql(to.min(i64::MAX as u64))?,
                to_sql(max as u64)?
            ],
            |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?)),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (key, payload) = row?;
            out.push((u64::try_from(key)?, payload));
        }
        Ok(out)
    }

    fn bounds(&self) -> anyhow::Result<Option<(u64, u64)>> {
        let conn = self.reader.lock();
        let bounds: Option<(Option<i64>, Option<i64>)> = conn
            .query_row("SELECT min(seq), max(seq) FROM messages", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        match bounds {
            Some((Some(first), Some(last))) => {
                Ok(Some((u64::try_from(first)?, u64::try_from(last)?)))
            }
            _ => Ok(None),
        }
    }
}
