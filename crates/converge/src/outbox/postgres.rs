//! The outbox in PostgreSQL: the table, enqueue, the horizon-bounded read, marking, cleanup,
//! the leader lock and the notification listener.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgListener, PgPool};
use sqlx::types::Json;
use sqlx::{Connection, Row};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::row::{NewRow, PendingRow};
use super::{Outbox, OutboxError};

/// The high half of the relay's advisory lock key ("conv"); the low half is the table's oid,
/// so that each outbox table has its own leader and no unrelated lock is taken by accident.
const RELAY_LOCK_CLASS: i64 = 0x636f_6e76;

/// The first key of the migration's advisory lock ("conm"); the second is a hash of the table
/// name (the table may not exist yet, so it has no oid).
const MIGRATE_LOCK_CLASS: i32 = 0x636f_6e6d;

/// Creates the table and its indexes under a transaction-scoped advisory lock.
pub(super) async fn migrate(outbox: &Outbox, pool: &PgPool) -> Result<(), OutboxError> {
    let table = outbox.table();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(MIGRATE_LOCK_CLASS)
        .bind(table)
        .execute(&mut *tx)
        .await?;
    let statements = [
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                id bigserial PRIMARY KEY,
                txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
                topic text NOT NULL,
                data bytea NOT NULL,
                attributes jsonb NOT NULL DEFAULT '{{}}',
                ordering_key text NOT NULL DEFAULT '',
                idempotency_key text NOT NULL UNIQUE,
                created_at timestamptz NOT NULL DEFAULT now(),
                published_at timestamptz,
                message_id text
            )"
        ),
        // What the relay reads: unpublished rows in (txid, id) order.
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {table} (txid, id) WHERE published_at IS NULL",
            outbox.index_name("pending")
        ),
        // What cleanup deletes: published rows by age.
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {table} (published_at) \
             WHERE published_at IS NOT NULL",
            outbox.index_name("published")
        ),
    ];
    for statement in &statements {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    tracing::debug!(table = %table, "outbox table ready");
    Ok(())
}

/// Inserts the row and, in the same statement, queues the notification (PostgreSQL delivers
/// it at commit, and drops it on rollback). A key already present inserts and notifies
/// nothing.
pub(super) async fn enqueue(
    outbox: &Outbox,
    conn: &mut PgConnection,
    row: NewRow,
) -> Result<bool, OutboxError> {
    let table = outbox.table();
    let wake = if outbox.notify() {
        "pg_notify($6, '')"
    } else {
        "1"
    };
    let sql = format!(
        "WITH inserted AS (
            INSERT INTO {table} (topic, data, attributes, ordering_key, idempotency_key)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (idempotency_key) DO NOTHING
            RETURNING id
        )
        SELECT {wake} FROM inserted"
    );
    let mut query = sqlx::query(&sql)
        .bind(&row.topic)
        .bind(&row.data)
        .bind(Json(&row.attributes))
        .bind(&row.ordering_key)
        .bind(&row.idempotency_key);
    if outbox.notify() {
        query = query.bind(outbox.channel());
    }
    let inserted = query
        .fetch_optional(conn)
        .await
        .map_err(|e| OutboxError::from_sqlx(table, e))?
        .is_some();
    if !inserted {
        tracing::debug!(table = %table, idempotency_key = %row.idempotency_key, "outbox key already present");
    }
    Ok(inserted)
}

/// Unpublished rows below the snapshot horizon, in `(txid, id)` order, and whether committed
/// rows above it are waiting (so the relay should look again soon rather than at the next
/// poll: the transaction holding the horizon down may never notify).
///
/// One statement, so that both answers come from one snapshot: asked separately, the
/// transaction holding rows back could end in between, and the relay would find neither rows
/// to publish nor rows waiting, and sleep until the next poll.
pub(super) async fn fetch_pending(
    outbox: &Outbox,
    pool: &PgPool,
    limit: usize,
) -> Result<(Vec<PendingRow>, bool), OutboxError> {
    let table = outbox.table();
    let sql = format!(
        "WITH horizon AS MATERIALIZED (
            SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
        )
        SELECT w.waiting, p.id, p.topic, p.data, p.attributes, p.ordering_key,
               p.idempotency_key, p.age
        FROM (
            SELECT EXISTS (
                SELECT 1 FROM {table}
                WHERE published_at IS NULL AND txid >= (SELECT xmin FROM horizon)
            ) AS waiting
        ) AS w
        LEFT JOIN LATERAL (
            SELECT id, txid, topic, data, attributes, ordering_key, idempotency_key,
                   greatest(EXTRACT(EPOCH FROM clock_timestamp() - created_at), 0)::float8 AS age
            FROM {table}
            WHERE published_at IS NULL AND txid < (SELECT xmin FROM horizon)
            ORDER BY txid, id
            LIMIT $1
        ) AS p ON true
        ORDER BY p.txid, p.id"
    );
    let rows = sqlx::query(&sql)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await
        .map_err(|e| OutboxError::from_sqlx(table, e))?;
    let mut waiting = false;
    let mut pending = Vec::with_capacity(rows.len());
    for row in rows {
        waiting = row.try_get("waiting")?;
        // Nothing below the horizon: the one row carries `waiting` only.
        let Some(id) = row.try_get::<Option<i64>, _>("id")? else {
            continue;
        };
        let Json(attributes): Json<HashMap<String, String>> = row.try_get("attributes")?;
        let age: f64 = row.try_get("age")?;
        pending.push(PendingRow::new(
            id,
            row.try_get("topic")?,
            row.try_get("data")?,
            attributes,
            row.try_get("ordering_key")?,
            row.try_get("idempotency_key")?,
            Duration::try_from_secs_f64(age).unwrap_or_default(),
        ));
    }
    Ok((pending, waiting))
}

/// Marks rows published, with the ids the broker gave them. Rows already marked (by a relay
/// that lost the lock without noticing) are left as they are.
pub(super) async fn mark_published(
    outbox: &Outbox,
    pool: &PgPool,
    published: &[(i64, String)],
) -> Result<u64, OutboxError> {
    let table = outbox.table();
    let (ids, message_ids): (Vec<i64>, Vec<String>) = published.iter().cloned().unzip();
    let sql = format!(
        "UPDATE {table} AS o SET published_at = now(), message_id = m.message_id
         FROM unnest($1::bigint[], $2::text[]) AS m(id, message_id)
         WHERE o.id = m.id AND o.published_at IS NULL"
    );
    let done = sqlx::query(&sql)
        .bind(ids)
        .bind(message_ids)
        .execute(pool)
        .await
        .map_err(|e| OutboxError::from_sqlx(table, e))?;
    Ok(done.rows_affected())
}

/// Deletes up to `batch` rows published more than `retention` ago; returns how many.
pub(super) async fn delete_published(
    outbox: &Outbox,
    pool: &PgPool,
    retention: Duration,
    batch: usize,
) -> Result<u64, OutboxError> {
    let table = outbox.table();
    let sql = format!(
        "DELETE FROM {table} WHERE id IN (
            SELECT id FROM {table}
            WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)
            ORDER BY published_at
            LIMIT $2
        )"
    );
    let done = sqlx::query(&sql)
        .bind(retention.as_secs_f64())
        .bind(i64::try_from(batch).unwrap_or(i64::MAX))
        .execute(pool)
        .await
        .map_err(|e| OutboxError::from_sqlx(table, e))?;
    Ok(done.rows_affected())
}

/// The session holding (or waiting to take) the leader's lock: a session-level advisory lock
/// on a connection of its own, taken out of the pool. PostgreSQL releases the lock when that
/// session ends, so a relay that dies (process killed, network gone) hands over to a standby
/// without any lease to expire. Standbys keep their session and retry the lock on it.
#[derive(Debug)]
pub(super) struct LockSession {
    conn: PgConnection,
    key: i64,
}

impl LockSession {
    /// Opens the session and works out the lock key from the table's oid.
    pub(super) async fn open(outbox: &Outbox, pool: &PgPool) -> Result<Self, OutboxError> {
        let table = outbox.table();
        // A connection from the pool carries the pool's settings (`search_path` from
        // `after_connect`, say), so the table name resolves as it does for the relay's queries.
        let mut conn = pool.acquire().await?.detach();
        let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::bigint")
            .bind(table)
            .fetch_one(&mut conn)
            .await?;
        let Some(oid) = oid else {
            let _ = conn.close().await;
            return Err(OutboxError::MissingTable(table.to_owned()));
        };
        Ok(Self {
            conn,
            key: (RELAY_LOCK_CLASS << 32) | oid,
        })
    }

    /// Takes the lock if it is free; `false` if another relay holds it.
    pub(super) async fn try_lock(&mut self) -> Result<bool, OutboxError> {
        Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(&mut self.conn)
            .await?)
    }

    /// Whether the session (and so the lock, once taken) is still alive.
    pub(super) async fn check(&mut self) -> Result<(), OutboxError> {
        self.conn.ping().await.map_err(OutboxError::from)
    }

    /// Ends the session, giving the lock up if it was held.
    pub(super) async fn close(self) {
        if let Err(error) = self.conn.close().await {
            tracing::debug!(%error, "closing the relay lock session failed; the server ends it");
        }
    }
}

/// Listens on the outbox's channel and signals `wake` on every notification, and after every
/// reconnection (notifications sent while disconnected are lost, so the relay should look).
/// `ready` fires once the first attempt to listen is over, successful or not: the relay reads
/// only after that, so that no commit falls between its first read and the `LISTEN`.
/// Runs until `shutdown`; failures are logged and retried, since polling covers the gaps.
/// Runs as a task of its own because `PgListener::recv` is not meant to be cancelled midway.
pub(super) async fn listen(
    outbox: Outbox,
    pool: PgPool,
    wake: Arc<Notify>,
    ready: oneshot::Sender<()>,
    shutdown: CancellationToken,
) {
    let channel = outbox.channel().to_owned();
    let mut retry = Duration::from_millis(100);
    let mut ready = Some(ready);
    let mut listener = loop {
        let attempt = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(&channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = attempt => result,
        };
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        match result {
            Ok(listener) => break listener,
            Err(error) => {
                tracing::warn!(%error, channel = %channel, "cannot listen for outbox notifications; polling meanwhile");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(Duration::from_secs(30));
            }
        }
    };
    tracing::debug!(channel = %channel, "listening for outbox notifications");
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            next = listener.try_recv() => next,
        };
        match next {
            Ok(Some(_)) => {
                retry = Duration::from_millis(100);
                wake.notify_one();
            }
            Ok(None) => {
                tracing::debug!(channel = %channel, "notification connection lost; reconnecting");
                wake.notify_one();
            }
            Err(error) => {
                tracing::warn!(%error, channel = %channel, "outbox notifications failed; polling meanwhile");
                wake.notify_one();
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(Duration::from_secs(30));
            }
        }
    }
}
