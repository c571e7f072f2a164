//! The leader's sweeps on PostgreSQL (design §4): retention, log truncation, expiration of
//! subscriptions, snapshots and idempotency keys; and the backlog figures.
//!
//! Each sweep follows the embedded engine's `maintain_state` and `truncate_logs`, and re-checks
//! its condition in the statement that acts (under the row lock it takes), so a second leader
//! that has not yet noticed it lost the lock wastes work but breaks nothing. Large deletes go in
//! chunks of [`CHUNK`] rows, each its own statement, so no sweep holds many locks or one long
//! transaction.

use std::time::{Duration, SystemTime};

use converge_core::store::SubscriptionStats;
use converge_core::{Result, SubscriptionName};

use super::seek::{col, decode, finish_tx};
use super::{PostgresStore, db_error, from_micros, to_micros, ts_column, ts_param};
use crate::embedded::record::SubscriptionRecord;

/// Rows deleted per statement.
const CHUNK: i64 = 10_000;

/// `now - ms` in microseconds.
fn minus_ms(now_us: i64, ms: u64) -> i64 {
    now_us.saturating_sub((ms.min(i64::MAX as u64 / 1000) as i64).saturating_mul(1000))
}

impl PostgresStore {
    /// One pass of the leader's sweeps other than lease expiry: expiration of idle
    /// subscriptions, retention of unacknowledged messages, expired snapshots, idempotency keys
    /// past their window, and log truncation (in that order, as in the embedded engine, so that
    /// what expires first no longer holds the log back).
    pub(super) async fn sweep_retention(&self, now: SystemTime) -> Result<()> {
        self.sweep_subscriptions(now).await?;
        self.expire_snapshots(now).await?;
        self.expire_dedup_keys(now).await?;
        self.truncate_logs(now).await
    }

    /// Deletes subscriptions idle for longer than their `expiration_ttl`, and applies every
    /// other subscription's retention (the longer of its own and its topic's).
    async fn sweep_subscriptions(&self, now: SystemTime) -> Result<()> {
        let rows = sqlx::query(concat!(
            "SELECT s.id, s.name, s.topic_id, s.detached, s.settings, t.retention_ms, ",
            ts_column!("s.last_activity"),
            " AS last_activity FROM subscriptions s LEFT JOIN topics t ON t.id = s.topic_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let now_us = to_micros(now);
        for row in &rows {
            let sub_id: i64 = col(row, "id")?;
            let name: String = col(row, "name")?;
            let record: SubscriptionRecord =
                decode(&col::<Vec<u8>>(row, "settings")?, "subscription")?;
            if let Some(ttl_ms) = record.expiration_ttl_ms {
                let last_activity: i64 = col(row, "last_activity")?;
                let idle_since = minus_ms(now_us, ttl_ms);
                if last_activity < idle_since
                    && self.expire_subscription(sub_id, &name, idle_since).await?
                {
                    continue;
                }
            }
            let topic_id = match (col::<Option<i64>>(row, "topic_id")?, col(row, "detached")?) {
                (Some(topic_id), false) => topic_id,
                _ => continue,
            };
            let topic_retention =
                col::<Option<i64>>(row, "retention_ms")?.unwrap_or(0).max(0) as u64;
            let retention = record.retention_ms.max(topic_retention);
            let cutoff = minus_ms(now_us, retention);
            let dropped = self.expire_before(sub_id, topic_id, cutoff).await?;
            if dropped > 0 {
                tracing::debug!(subscription = %name, dropped, "retention dropped messages");
                metrics::counter!("converge_messages_dropped_total", "reason" => "retention")
                    .increment(dropped);
            }
        }
        Ok(())
    }

    /// Deletes a subscription if it is still idle since before `idle_since` (another node may
    /// have recorded activity since the list was read). Returns whether it was deleted.
    async fn expire_subscription(&self, sub_id: i64, name: &str, idle_since: i64) -> Result<bool> {
        let deleted = sqlx::query(concat!(
            "DELETE FROM subscriptions WHERE id = $1 AND last_activity < ",
            ts_param!("$2")
        ))
        .bind(sub_id)
        .bind(idle_since)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        if deleted.rows_affected() == 0 {
            return Ok(false);
        }
        tracing::info!(subscription = %name, "subscription expired after inactivity");
        if let Ok(parsed) = SubscriptionName::parse(name) {
            self.forget_subscription(&parsed);
        }
        // Long polls on it end (they find it gone).
        self.wake_subscription(sub_id).await?;
        Ok(true)
    }

    /// Completes every message of the subscription published before `cutoff` (microseconds),
    /// as the embedded `expire_before`: its rows are deleted, and the cursor passes the
    /// messages not yet looked at that were published before the cutoff. Returns how many
    /// messages were dropped.
    async fn expire_before(&self, sub_id: i64, topic_id: i64, cutoff: i64) -> Result<u64> {
        let mut dropped = 0u64;
        // Old rows first, in chunks and without the cursor lock: pulls go on meanwhile.
        loop {
            let deleted = sqlx::query(concat!(
                "DELETE FROM deliveries WHERE sub_id = $1 AND msg_id IN (
                   SELECT msg_id FROM deliveries WHERE sub_id = $1 AND publish_time < ",
                ts_param!("$2"),
                " LIMIT $3)"
            ))
            .bind(sub_id)
            .bind(cutoff)
            .bind(CHUNK)
            .execute(&self.pool)
            .await
            .map_err(db_error)?
            .rows_affected();
            dropped += deleted;
            if deleted < CHUNK as u64 {
                break;
            }
        }
        // The cursor moves only if the next message it would look at is old: checked without
        // a lock first, since this runs for every subscription on every tick.
        let stale = sqlx::query(concat!(
            "SELECT 1 FROM sub_cursors c JOIN messages m ON m.topic_id = $2 AND m.id = c.cursor + 1
              WHERE c.sub_id = $1 AND m.publish_time < ",
            ts_param!("$3")
        ))
        .bind(sub_id)
        .bind(topic_id)
        .bind(cutoff)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        if stale.is_none() {
            return Ok(dropped);
        }
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let result: Result<u64> = async {
            let Some(cursor) = sqlx::query_scalar::<_, i64>(
                "SELECT cursor FROM sub_cursors WHERE sub_id = $1 FOR UPDATE",
            )
            .bind(sub_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            else {
                return Ok(0);
            };
            // The old messages past the cursor are a prefix (publish times follow ids, and the
            // embedded engine also stops at the first message inside the retention).
            let advanced: i64 = sqlx::query_scalar(concat!(
                "SELECT coalesce(
                   (SELECT id - 1 FROM messages WHERE topic_id = $1 AND id > $2
                       AND publish_time >= ",
                ts_param!("$3"),
                " ORDER BY id LIMIT 1),
                   (SELECT max(id) FROM messages WHERE topic_id = $1 AND id > $2),
                   $2)"
            ))
            .bind(topic_id)
            .bind(cursor)
            .bind(cutoff)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
            if advanced <= cursor {
                return Ok(0);
            }
            // Rows a pull materialised between the chunks above and this lock.
            let late = sqlx::query(concat!(
                "DELETE FROM deliveries WHERE sub_id = $1 AND publish_time < ",
                ts_param!("$2")
            ))
            .bind(sub_id)
            .bind(cutoff)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected();
            sqlx::query("UPDATE sub_cursors SET cursor = $2 WHERE sub_id = $1")
                .bind(sub_id)
                .bind(advanced)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            Ok(late + (advanced - cursor) as u64)
        }
        .await;
        Ok(dropped + finish_tx(tx, result).await?)
    }

    /// Deletes the Pub/Sub snapshots whose expire time has come.
    async fn expire_snapshots(&self, now: SystemTime) -> Result<()> {
        let expired: Vec<String> = sqlx::query_scalar(concat!(
            "DELETE FROM snapshots WHERE expire_time <= ",
            ts_param!("$1"),
            " RETURNING name"
        ))
        .bind(to_micros(now))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        for name in expired {
            tracing::info!(snapshot = %name, "snapshot expired");
        }
        Ok(())
    }

    /// Deletes idempotency keys older than their topic's window (a key is kept while its age
    /// is below the window, as in the embedded engine). Publish checks the window itself, so
    /// this only gives the space back.
    async fn expire_dedup_keys(&self, now: SystemTime) -> Result<()> {
        let Some(min_window) =
            sqlx::query_scalar::<_, Option<i64>>("SELECT min(dedup_window_ms) FROM topics")
                .fetch_one(&self.pool)
                .await
                .map_err(db_error)?
        else {
            return Ok(());
        };
        let now_us = to_micros(now);
        loop {
            // `$2` bounds the scan of `dedup_age` by the shortest window of any topic.
            let deleted = sqlx::query(concat!(
                "DELETE FROM dedup WHERE (topic_id, key) IN (
                   SELECT d.topic_id, d.key FROM dedup d JOIN topics t ON t.id = d.topic_id
                    WHERE d.published_at <= ",
                ts_param!("$2"),
                " AND d.published_at <= ",
                ts_param!("$1"),
                " - t.dedup_window_ms * interval '1 millisecond'
                    LIMIT $3)"
            ))
            .bind(now_us)
            .bind(minus_ms(now_us, min_window.max(0) as u64))
            .bind(CHUNK)
            .execute(&self.pool)
            .await
            .map_err(db_error)?
            .rows_affected();
            if deleted < CHUNK as u64 {
                return Ok(());
            }
        }
    }

    /// Drops the oldest messages of each topic log once every reader is done with them, no
    /// snapshot's floor is below them, and neither the topic's retention nor a reader's
    /// retention of acknowledged messages keeps them (the embedded `truncate_logs`). The log of
    /// a deleted topic with no reader and no snapshot goes whole.
    async fn truncate_logs(&self, now: SystemTime) -> Result<()> {
        let logs = sqlx::query(
            "SELECT t.id, t.deleted, t.retention_ms,
                    (SELECT min(m.id) FROM messages m WHERE m.topic_id = t.id) AS first_id,
                    (SELECT max(m.id) FROM messages m WHERE m.topic_id = t.id) AS last_id
               FROM topics t JOIN topic_heads h ON h.topic_id = t.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let now_us = to_micros(now);
        for log in &logs {
            let topic_id: i64 = col(log, "id")?;
            let deleted: bool = col(log, "deleted")?;
            let bounds = (
                col::<Option<i64>>(log, "first_id")?,
                col::<Option<i64>>(log, "last_id")?,
            );
            // Readers: the subscriptions that still read this log, with their floors.
            let readers = sqlx::query(
                "SELECT s.settings,
                        coalesce((SELECT min(d.msg_id) - 1 FROM deliveries d WHERE d.sub_id = s.id),
                                 c.cursor) AS floor
                   FROM subscriptions s JOIN sub_cursors c ON c.sub_id = s.id
                  WHERE s.topic_id = $1 AND NOT s.detached",
            )
            .bind(topic_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            let snapshots_floor: Option<i64> =
                sqlx::query_scalar("SELECT min(floor) FROM snapshots WHERE topic_id = $1")
                    .bind(topic_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(db_error)?;
            let has_snapshots = sqlx::query("SELECT 1 FROM snapshots WHERE topic_id = $1 LIMIT 1")
                .bind(topic_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?
                .is_some();
            if deleted && readers.is_empty() && !has_snapshots {
                self.drop_log(topic_id, bounds).await?;
                continue;
            }
            let (Some(first_id), Some(last_id)) = bounds else {
                continue;
            };
            let mut watermark = snapshots_floor.unwrap_or(i64::MAX);
            let mut acked_retention: Option<u64> = None;
            for reader in &readers {
                watermark = watermark.min(col::<i64>(reader, "floor")?);
                let record: SubscriptionRecord =
                    decode(&col::<Vec<u8>>(reader, "settings")?, "subscription")?;
                if record.retain_acked_messages {
                    acked_retention = acked_retention.max(Some(record.retention_ms));
                }
            }
            let topic_retention = col::<Option<i64>>(log, "retention_ms")?.map(|r| r.max(0) as u64);
            let mut limit = watermark.min(last_id);
            if let Some(keep) = topic_retention.max(acked_retention) {
                // Stop at the first message still retained, as the embedded engine does.
                let first_kept: Option<i64> = sqlx::query_scalar(concat!(
                    "SELECT id FROM messages WHERE topic_id = $1 AND id >= $2 AND publish_time > ",
                    ts_param!("$3"),
                    " ORDER BY id LIMIT 1"
                ))
                .bind(topic_id)
                .bind(first_id)
                .bind(minus_ms(now_us, keep))
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
                if let Some(kept) = first_kept {
                    limit = limit.min(kept - 1);
                }
            }
            let removed = self.delete_messages(topic_id, first_id, limit).await?;
            if removed > 0 {
                tracing::debug!(topic_id, upto = limit, removed, "topic log truncated");
            }
        }
        Ok(())
    }

    /// Deletes the messages of a log with ids in `[from, upto]`, [`CHUNK`] ids per statement
    /// (ids are dense within a topic). Returns how many rows went.
    async fn delete_messages(&self, topic_id: i64, from: i64, upto: i64) -> Result<u64> {
        let mut removed = 0;
        let mut lo = from;
        while lo <= upto {
            let hi = upto.min(lo.saturating_add(CHUNK - 1));
            removed +=
                sqlx::query("DELETE FROM messages WHERE topic_id = $1 AND id >= $2 AND id <= $3")
                    .bind(topic_id)
                    .bind(lo)
                    .bind(hi)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error)?
                    .rows_affected();
            if hi == i64::MAX {
                break;
            }
            lo = hi + 1;
        }
        Ok(removed)
    }

    /// Removes the log of a deleted topic that nothing reads any more: its messages, its
    /// idempotency keys and its head. The `topics` row stays (detached subscriptions may still
    /// name it, and it is what keeps the id from being reused); without a head it is no log.
    async fn drop_log(
        &self,
        topic_id: i64,
        (first, last): (Option<i64>, Option<i64>),
    ) -> Result<()> {
        let removed = match (first, last) {
            (Some(first), Some(last)) => self.delete_messages(topic_id, first, last).await?,
            _ => 0,
        };
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let result: Result<()> = async {
            // Re-checked under the topic row's lock: still deleted, still unread.
            let still_unused = sqlx::query(
                "SELECT 1 FROM topics t WHERE t.id = $1 AND t.deleted
                    AND NOT EXISTS (SELECT 1 FROM subscriptions s
                                     WHERE s.topic_id = t.id AND NOT s.detached)
                    AND NOT EXISTS (SELECT 1 FROM snapshots n WHERE n.topic_id = t.id)
                  FOR UPDATE",
            )
            .bind(topic_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            .is_some();
            if !still_unused {
                return Ok(());
            }
            for sql in [
                "DELETE FROM messages WHERE topic_id = $1",
                "DELETE FROM dedup WHERE topic_id = $1",
                "DELETE FROM topic_heads WHERE topic_id = $1",
            ] {
                sqlx::query(sql)
                    .bind(topic_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
            }
            Ok(())
        }
        .await;
        finish_tx(tx, result).await?;
        tracing::info!(topic_id, removed, "log of a deleted topic removed");
        Ok(())
    }

    /// Backlog figures of every subscription, by name: unacknowledged messages (its rows plus
    /// the messages past its cursor) and the age of the oldest. A filtered subscription's
    /// filter first runs over what it has not looked at, so rejected messages do not count. A
    /// detached subscription has no backlog.
    pub(super) async fn stats(&self) -> Result<Vec<SubscriptionStats>> {
        let filtered = sqlx::query("SELECT id, settings FROM subscriptions WHERE NOT detached")
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        for row in &filtered {
            let record: SubscriptionRecord =
                decode(&col::<Vec<u8>>(row, "settings")?, "subscription")?;
            if !record.filter.is_empty() {
                self.filter_ahead(col(row, "id")?).await?;
            }
        }
        let now = self.clock.now();
        let rows = sqlx::query(concat!(
            "SELECT s.name, s.detached,
                    (SELECT count(*) FROM deliveries d WHERE d.sub_id = s.id)
                      + greatest(coalesce(h.last_id, c.cursor) - c.cursor, 0) AS backlog, ",
            ts_column!(
                "least((SELECT min(d.publish_time) FROM deliveries d WHERE d.sub_id = s.id),
                       (SELECT m.publish_time FROM messages m
                         WHERE m.topic_id = s.topic_id AND m.id > c.cursor ORDER BY m.id LIMIT 1))"
            ),
            " AS oldest
               FROM subscriptions s JOIN sub_cursors c ON c.sub_id = s.id
               LEFT JOIN topic_heads h ON h.topic_id = s.topic_id
              ORDER BY s.name"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let name = SubscriptionName::parse(&col::<String>(row, "name")?)?;
                if col::<bool>(row, "detached")? {
                    return Ok(SubscriptionStats {
                        name,
                        backlog: 0,
                        oldest_unacked_age: Duration::ZERO,
                    });
                }
                let backlog = col::<i64>(row, "backlog")?.max(0) as u64;
                let oldest = col::<Option<i64>>(row, "oldest")?.map(from_micros);
                Ok(SubscriptionStats {
                    name,
                    backlog,
                    oldest_unacked_age: oldest
                        .and_then(|t| now.duration_since(t).ok())
                        .unwrap_or(Duration::ZERO),
                })
            })
            .collect()
    }
}
