//! The outbox in SQLite: the table, enqueue, the read in id order, marking and cleanup.
//!
//! SQLite has one writer at a time, holding the database from its first write to its commit,
//! so rows are inserted in commit order and their `id` is a safe order on its own. Times are
//! Unix milliseconds, computed here (SQLite has no time type).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqlitePool};
use sqlx::types::Json;

use super::row::{NewRow, PendingRow};
use super::{Outbox, OutboxError};

/// Milliseconds since the Unix epoch.
fn now_millis() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// The table name as SQLite wants it in `CREATE INDEX`: the schema goes on the index name,
/// the table stays unqualified.
fn index_target<'a>(outbox: &'a Outbox, suffix: &str) -> (String, &'a str) {
    let index = match &outbox.inner.schema {
        Some(schema) => format!("{schema}.{}", outbox.index_name(suffix)),
        None => outbox.index_name(suffix),
    };
    (index, &outbox.inner.name)
}

/// Creates the table and its indexes unless they exist, in one transaction.
pub(super) async fn migrate(outbox: &Outbox, pool: &SqlitePool) -> Result<(), OutboxError> {
    let table = outbox.table();
    let (pending, name) = index_target(outbox, "pending");
    let (published, _) = index_target(outbox, "published");
    // AUTOINCREMENT: ids are never reused, even once cleanup has deleted the newest rows.
    let statements = [
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                topic TEXT NOT NULL,
                data BLOB NOT NULL,
                attributes TEXT NOT NULL DEFAULT '{{}}',
                ordering_key TEXT NOT NULL DEFAULT '',
                idempotency_key TEXT NOT NULL UNIQUE,
                created_at INTEGER NOT NULL,
                published_at INTEGER,
                message_id TEXT
            )"
        ),
        format!("CREATE INDEX IF NOT EXISTS {pending} ON {name} (id) WHERE published_at IS NULL"),
        format!(
            "CREATE INDEX IF NOT EXISTS {published} ON {name} (published_at) \
             WHERE published_at IS NOT NULL"
        ),
    ];
    let mut tx = pool.begin().await?;
    for statement in &statements {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    tracing::debug!(table = %table, "outbox table ready");
    Ok(())
}

/// Inserts the row; a key already present inserts nothing.
pub(super) async fn enqueue(
    outbox: &Outbox,
    conn: &mut SqliteConnection,
    row: NewRow,
) -> Result<bool, OutboxError> {
    let table = outbox.table();
    let sql = format!(
        "INSERT INTO {table} (topic, data, attributes, ordering_key, idempotency_key, created_at)
         VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (idempotency_key) DO NOTHING"
    );
    let done = sqlx::query(&sql)
        .bind(&row.topic)
        .bind(&row.data)
        .bind(Json(&row.attributes))
        .bind(&row.ordering_key)
        .bind(&row.idempotency_key)
        .bind(now_millis())
        .execute(conn)
        .await
        .map_err(|e| OutboxError::from_sqlx(table, e))?;
    let inserted = done.rows_affected() == 1;
    if !inserted {
        tracing::debug!(table = %table, idempotency_key = %row.idempotency_key, "outbox key already present");
    }
    Ok(inserted)
}

/// Unpublished rows in id (= commit) order. Nothing is ever held back, so the second value is
/// always `false`.
pub(super) async fn fetch_pending(
    outbox: &Outbox,
    pool: &SqlitePool,
    limit: usize,
) -> Result<(Vec<PendingRow>, bool), OutboxError> {
    let table = outbox.table();
    let sql = format!(
        "SELECT id, topic, data, attributes, ordering_key, idempotency_key, created_at
         FROM {table}
         WHERE published_at IS NULL
         ORDER BY id
         LIMIT ?"
    );
    let rows = sqlx::query(&sql)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await
        .map_err(|e| OutboxError::from_sqlx(table, e))?;
    let now = now_millis();
    let mut pending = Vec::with_capacity(rows.len());
    for row in rows {
        let Json(attributes): Json<HashMap<String, String>> = row.try_get("attributes")?;
        let created_at: i64 = row.try_get("created_at")?;
        let age = u64::try_from(now.saturating_sub(created_at)).unwrap_or(0);
        pending.push(PendingRow::new(
            row.try_get("id")?,
            row.try_get("topic")?,
            row.try_get("data")?,
            attributes,
            row.try_get("ordering_key")?,
            row.try_get("idempotency_key")?,
            Duration::from_millis(age),
        ));
    }
    Ok((pending, false))
}

/// Marks rows published, with the ids the broker gave them, in one transaction.
pub(super) async fn mark_published(
    outbox: &Outbox,
    pool: &SqlitePool,
    published: &[(i64, String)],
) -> Result<u64, OutboxError> {
    let table = outbox.table();
    let sql = format!(
        "UPDATE {table} SET published_at = ?, message_id = ? WHERE id = ? AND published_at IS NULL"
    );
    let now = now_millis();
    let mut tx = pool.begin().await?;
    let mut marked = 0;
    for (id, message_id) in published {
        marked += sqlx::query(&sql)
            .bind(now)
            .bind(message_id)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| OutboxError::from_sqlx(table, e))?
            .rows_affected();
    }
    tx.commit().await?;
    Ok(marked)
}

/// Deletes up to `batch` rows published more than `retention` ago; returns how many.
pub(super) async fn delete_published(
    outbox: &Outbox,
    pool: &SqlitePool,
    retention: Duration,
    batch: usize,
) -> Result<u64, OutboxError> {
    let table = outbox.table();
    let retention = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let sql = format!(
        "DELETE FROM {table} WHERE id IN (
            SELECT id FROM {table}
            WHERE published_at IS NOT NULL AND published_at < ?
            ORDER BY published_at
            LIMIT ?
        )"
    );
    let done = sqlx::query(&sql)
        .bind(now_millis().saturating_sub(retention))
        .bind(i64::try_from(batch).unwrap_or(i64::MAX))
        .execute(pool)
        .await
        .map_err(|e| OutboxError::from_sqlx(table, e))?;
    Ok(done.rows_affected())
}
