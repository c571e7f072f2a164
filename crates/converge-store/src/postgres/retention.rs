//! The leader's sweeps on PostgreSQL (design §4): retention, log truncation, expiration of
//! subscriptions, snapshots and idempotency keys; and the backlog figures.
//!
//! Each sweep follows the embedded engine's `maintain_state` and `truncate_logs`, and re-checks
//! its condition in the statement that acts (under the row lock it takes), so a second leader
//! that has not yet noticed it lost the lock wastes work but breaks nothing. A tick costs a few
//! statements whatever the number of subscriptions and topics: per-subscription parameters go
//! in arrays (`unnest`), and only what has work to do gets statements of its own. Large deletes
//! go in chunks of [`CHUNK`] rows, each its own statement, so no sweep holds many locks or one
//! long transaction.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use converge_core::store::SubscriptionStats;
use converge_core::{Result, SubscriptionName};

use super::resources::{col, decode, finish_tx};
use super::{PostgresStore, db_error, from_micros, to_micros, ts_column, ts_param};
use crate::embedded::record::SubscriptionRecord;

/// Rows deleted per statement.
const CHUNK: i64 = 10_000;

/// `now - ms` in microseconds.
fn minus_ms(now_us: i64, ms: u64) -> i64 {
    now_us.saturating_sub((ms.min(i64::MAX as u64 / 1000) as i64).saturating_mul(1000))
}

/// SQL turning an `int8` expression of microseconds into a `timestamptz` (for array columns,
/// where `ts_param!` does not apply).
macro_rules! ts_expr {
    ($e:literal) => {
        concat!(
            "(timestamptz 'epoch' + ",
            $e,
            " * interval '1 microsecond')"
        )
    };
}

/// The retention cut-offs of the attached subscriptions, as parallel arrays for `unnest`.
#[derive(Default)]
struct Cutoffs {
    sub_ids: Vec<i64>,
    topic_ids: Vec<i64>,
    /// Messages published before this (microseconds) are dropped.
    cutoffs: Vec<i64>,
}

/// Per topic log, the longest retention of acknowledged messages among its readers
/// (`retain_acked_messages`), in milliseconds.
type AckedRetention = HashMap<i64, u64>;

impl PostgresStore {
    /// One pass of the leader's sweeps other than lease expiry: expiration of idle
    /// subscriptions, retention of unacknowledged messages, expired snapshots, idempotency keys
    /// past their window, and log truncation (in that order, as in the embedded engine, so that
    /// what expires first no longer holds the log back).
    pub(super) async fn sweep_retention(&self, now: SystemTime) -> Result<()> {
        let acked_retention = self.sweep_subscriptions(now).await?;
        self.expire_snapshots(now).await?;
        self.expire_dedup_keys(now).await?;
        self.truncate_logs(now, &acked_retention).await
    }

    /// Deletes subscriptions idle for longer than their `expiration_ttl`, and applies every
    /// other attached subscription's retention (the longer of its own and its topic's).
    /// Returns the retention of acknowledged messages per topic log, for truncation.
    async fn sweep_subscriptions(&self, now: SystemTime) -> Result<AckedRetention> {
        let rows = sqlx::query(concat!(
            "SELECT s.id, s.name, s.topic_id, s.detached, s.settings, t.retention_ms, ",
            ts_column!("s.last_activity"),
            " AS last_activity FROM subscriptions s LEFT JOIN topics t ON t.id = s.topic_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let now_us = to_micros(now);
        let mut attached = Cutoffs::default();
        let mut acked_retention = AckedRetention::new();
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
            if record.retain_acked_messages {
                let longest = acked_retention.entry(topic_id).or_default();
                *longest = (*longest).max(record.retention_ms);
            }
            let topic_retention =
                col::<Option<i64>>(row, "retention_ms")?.unwrap_or(0).max(0) as u64;
            attached.sub_ids.push(sub_id);
            attached.topic_ids.push(topic_id);
            attached
                .cutoffs
                .push(minus_ms(now_us, record.retention_ms.max(topic_retention)));
        }
        let dropped = self.expire_old(&attached).await?;
        if dropped > 0 {
            tracing::debug!(dropped, "retention dropped messages");
            metrics::counter!("converge_messages_dropped_total", "reason" => "retention")
                .increment(dropped);
        }
        Ok(acked_retention)
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

    /// Completes every message published before its subscription's cut-off, as the embedded
    /// `expire_before`: old rows are deleted, and cursors pass the old messages not yet looked
    /// at. Returns how many messages were dropped.
    async fn expire_old(&self, subs: &Cutoffs) -> Result<u64> {
        if subs.sub_ids.is_empty() {
            return Ok(0);
        }
        let mut dropped = 0u64;
        // Old rows of every subscription, in chunks, without cursor locks: pulls go on.
        loop {
            let deleted = sqlx::query(concat!(
                "DELETE FROM deliveries WHERE (sub_id, msg_id) IN (
                   SELECT d.sub_id, d.msg_id
                     FROM unnest($1::int8[], $2::int8[]) AS r(sub_id, cutoff)
                     JOIN deliveries d ON d.sub_id = r.sub_id
                                      AND d.publish_time < ",
                ts_expr!("r.cutoff"),
                " LIMIT $3)"
            ))
            .bind(&subs.sub_ids)
            .bind(&subs.cutoffs)
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
        // The cursors to move: those whose next message is old (one statement for all).
        let stale = sqlx::query(concat!(
            "SELECT r.sub_id, r.topic_id, r.cutoff
               FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS r(sub_id, topic_id, cutoff)
               JOIN sub_cursors c ON c.sub_id = r.sub_id
               JOIN messages m ON m.topic_id = r.topic_id AND m.id = c.cursor + 1
              WHERE m.publish_time < ",
            ts_expr!("r.cutoff")
        ))
        .bind(&subs.sub_ids)
        .bind(&subs.topic_ids)
        .bind(&subs.cutoffs)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        for row in &stale {
            dropped += self
                .advance_cursor(
                    col(row, "sub_id")?,
                    col(row, "topic_id")?,
                    col(row, "cutoff")?,
                )
                .await?;
        }
        Ok(dropped)
    }

    /// Moves a subscription's cursor past the messages published before `cutoff`
    /// (microseconds) that it has not looked at, under its cursor lock (so no materialisation
    /// interleaves), and deletes the old rows materialised since the chunked delete. Returns
    /// how many messages that dropped.
    async fn advance_cursor(&self, sub_id: i64, topic_id: i64, cutoff: i64) -> Result<u64> {
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
        finish_tx(tx, result).await
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
    ///
    /// A reader's floor is `min(its rows) - 1`, or its cursor: everything up to it is done.
    /// One statement reads every log's bounds and floors, in one consistent view.
    async fn truncate_logs(&self, now: SystemTime, acked_retention: &AckedRetention) -> Result<()> {
        let logs = sqlx::query(
            "SELECT t.id, t.deleted, t.retention_ms,
                    (SELECT min(m.id) FROM messages m WHERE m.topic_id = t.id) AS first_id,
                    (SELECT max(m.id) FROM messages m WHERE m.topic_id = t.id) AS last_id,
                    EXISTS (SELECT 1 FROM subscriptions s
                             WHERE s.topic_id = t.id AND NOT s.detached) AS read,
                    (SELECT min(coalesce((SELECT min(d.msg_id) - 1 FROM deliveries d
                                           WHERE d.sub_id = s.id), c.cursor))
                       FROM subscriptions s JOIN sub_cursors c ON c.sub_id = s.id
                      WHERE s.topic_id = t.id AND NOT s.detached) AS readers_floor,
                    (SELECT min(n.floor) FROM snapshots n WHERE n.topic_id = t.id) AS snapshots_floor
               FROM topics t JOIN topic_heads h ON h.topic_id = t.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let now_us = to_micros(now);
        for log in &logs {
            let topic_id: i64 = col(log, "id")?;
            let bounds = (
                col::<Option<i64>>(log, "first_id")?,
                col::<Option<i64>>(log, "last_id")?,
            );
            let readers_floor: Option<i64> = col(log, "readers_floor")?;
            let snapshots_floor: Option<i64> = col(log, "snapshots_floor")?;
            if col(log, "deleted")? && !col::<bool>(log, "read")? && snapshots_floor.is_none() {
                self.drop_log(topic_id, bounds).await?;
                continue;
            }
            let (Some(first_id), Some(last_id)) = bounds else {
                continue;
            };
            let watermark = [readers_floor, snapshots_floor, Some(last_id)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(last_id);
            if watermark < first_id {
                continue;
            }
            let topic_retention = col::<Option<i64>>(log, "retention_ms")?.map(|r| r.max(0) as u64);
            let keep = topic_retention.max(acked_retention.get(&topic_id).copied());
            let mut limit = watermark;
            if let Some(keep) = keep {
                // Stop at the first message still retained, as the embedded engine does.
                let first_kept: Option<i64> = sqlx::query_scalar(concat!(
                    "SELECT id FROM messages WHERE topic_id = $1 AND id >= $2 AND id <= $3
                        AND publish_time > ",
                    ts_param!("$4"),
                    " ORDER BY id LIMIT 1"
                ))
                .bind(topic_id)
                .bind(first_id)
                .bind(limit)
                .bind(minus_ms(now_us, keep))
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
                if let Some(kept) = first_kept {
                    limit = kept - 1;
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
        let result: Result<bool> = async {
            // Re-checked under the topic row's lock: still deleted, still unread. (Once a
            // deleted topic is unread it stays so: nothing can subscribe to it or snapshot it.)
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
                return Ok(false);
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
            Ok(true)
        }
        .await;
        if finish_tx(tx, result).await? {
            tracing::info!(topic_id, removed, "log of a deleted topic removed");
        }
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

/// The sweeps and figures against the real PostgreSQL, with rows read back where the API does
/// not show them (truncation and the removal of a deleted topic's log are only visible there).
#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use converge_core::{Clock as _, ManualClock, Store as _, Subscription, Topic};

    use super::super::PostgresStore;
    use super::super::tests::TestSchema;
    use crate::conformance::start_time;
    use crate::conformance::support::{
        msg, msg_with, pubsub_snapshot, pull_and_ack, pull_now, snapshot_name, sub_name,
        subscription, topic, topic_name,
    };

    /// A store in a schema of its own on a manual clock; the schema is dropped with the value
    /// (also when the test fails).
    pub(in crate::postgres) struct Scratch {
        pub store: PostgresStore,
        pub clock: ManualClock,
        /// Last, so that it is dropped (with the schema) after the store.
        _schema: TestSchema,
    }

    impl Scratch {
        pub async fn new() -> Self {
            let schema = TestSchema::new();
            let clock = ManualClock::new(start_time());
            let store = schema.open(&clock).await;
            Self {
                store,
                clock,
                _schema: schema,
            }
        }

        /// One `bigint` computed by `sql` in the schema.
        pub async fn number(&self, sql: &str) -> i64 {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(self.store.pool())
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }

        /// Runs `sql` in the schema.
        pub async fn execute(&self, sql: &str) {
            sqlx::query(sql)
                .execute(self.store.pool())
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }

        /// How many rows of `messages` the topic log of live topic `id` holds.
        pub async fn log_len(&self, id: &str) -> i64 {
            self.number(&format!(
                "SELECT count(*) FROM messages m JOIN topics t ON t.id = m.topic_id
                  WHERE t.name = '{}' AND NOT t.deleted",
                topic_name(id)
            ))
            .await
        }

        /// The backlog and oldest unacknowledged age `subscription_stats` reports for `sub`.
        pub async fn stats_of(&self, sub: &str) -> (u64, Duration) {
            let stats = self.store.subscription_stats().await.unwrap();
            let st = stats
                .iter()
                .find(|st| st.name == sub_name(sub))
                .unwrap_or_else(|| panic!("no stats for {sub}: {stats:?}"));
            (st.backlog, st.oldest_unacked_age)
        }

        /// Closes the store, so that a failure to close fails the test.
        pub async fn finish(self) {
            self.store.close().await.expect("the store closes");
        }
    }

    /// The log keeps exactly what someone may still need: messages above a reader's floor
    /// (its oldest unfinished message), above a snapshot's floor, and inside the topic's
    /// retention or a reader's retention of acknowledged messages. A log nobody reads keeps
    /// nothing else.
    #[tokio::test]
    async fn truncation_keeps_what_readers_snapshots_and_retention_need() {
        let x = Scratch::new().await;
        let s = &x.store;
        s.create_topic(topic("unread")).await.unwrap();
        s.publish(&topic_name("unread"), vec![msg("a"), msg("b")])
            .await
            .unwrap();

        s.create_topic(topic("read")).await.unwrap();
        s.create_subscription(subscription("sub", "read"))
            .await
            .unwrap();
        s.publish(&topic_name("read"), vec![msg("a"), msg("b"), msg("c")])
            .await
            .unwrap();
        // a and c acknowledged, b still leased: the floor is a.
        assert_eq!(pull_and_ack(s, "sub", &["a", "c"]).await, ["a", "b", "c"]);
        s.maintain().await.unwrap();
        assert_eq!(
            x.log_len("unread").await,
            0,
            "a log nobody reads keeps nothing"
        );
        assert_eq!(
            x.log_len("read").await,
            2,
            "the reader's floor (below b) keeps b and c"
        );

        s.create_snapshot(pubsub_snapshot("snap"), &sub_name("sub"))
            .await
            .unwrap();
        x.clock.advance(Duration::from_secs(11));
        let b = pull_now(s, "sub").await;
        assert_eq!(b.len(), 1);
        s.acknowledge(&sub_name("sub"), &[b[0].ack_id.clone()])
            .await
            .unwrap();
        s.maintain().await.unwrap();
        assert_eq!(
            x.log_len("read").await,
            2,
            "all acknowledged, but the snapshot's floor keeps b and c"
        );
        s.delete_snapshot(&snapshot_name("snap")).await.unwrap();
        s.maintain().await.unwrap();
        assert_eq!(x.log_len("read").await, 0);

        // Retention of acknowledged messages by a reader, and by the topic.
        let keep = Subscription {
            retain_acked_messages: true,
            message_retention: Duration::from_secs(600),
            ..subscription("keep", "read")
        };
        s.create_subscription(keep).await.unwrap();
        s.create_topic(Topic {
            message_retention: Some(Duration::from_secs(1200)),
            ..topic("kept")
        })
        .await
        .unwrap();
        s.publish(&topic_name("read"), vec![msg("d")])
            .await
            .unwrap();
        s.publish(&topic_name("kept"), vec![msg("e")])
            .await
            .unwrap();
        assert_eq!(pull_and_ack(s, "sub", &["d"]).await, ["d"]);
        assert_eq!(pull_and_ack(s, "keep", &["d"]).await, ["d"]);
        s.maintain().await.unwrap();
        assert_eq!(x.log_len("read").await, 1, "retain_acked_messages keeps d");
        assert_eq!(x.log_len("kept").await, 1, "the topic's retention keeps e");
        x.clock.advance(Duration::from_secs(601));
        s.maintain().await.unwrap();
        assert_eq!(x.log_len("read").await, 0, "past the reader's retention");
        assert_eq!(x.log_len("kept").await, 1);
        x.clock.advance(Duration::from_secs(600));
        s.maintain().await.unwrap();
        assert_eq!(x.log_len("kept").await, 0, "past the topic's retention");
        x.finish().await;
    }

    /// A deleted topic's log lives while a subscription reads it or a snapshot marks it, and
    /// then goes whole: messages, idempotency keys and head.
    #[tokio::test]
    async fn a_deleted_topics_log_goes_once_nothing_reads_it() {
        let x = Scratch::new().await;
        let s = &x.store;
        s.create_topic(topic("gone")).await.unwrap();
        s.create_subscription(subscription("sub", "gone"))
            .await
            .unwrap();
        s.publish(
            &topic_name("gone"),
            vec![msg_with("m", &[("converge-idempotency-key", "k1")], "")],
        )
        .await
        .unwrap();
        s.create_snapshot(pubsub_snapshot("snap"), &sub_name("sub"))
            .await
            .unwrap();
        let log = x
            .number(&format!(
                "SELECT id FROM topics WHERE name = '{}'",
                topic_name("gone")
            ))
            .await;
        let rows = |table: &'static str| {
            let x = &x;
            async move {
                x.number(&format!(
                    "SELECT count(*) FROM {table} WHERE topic_id = {log}"
                ))
                .await
            }
        };
        s.delete_topic(&topic_name("gone")).await.unwrap();
        s.maintain().await.unwrap();
        assert_eq!(rows("messages").await, 1, "a subscription still reads it");
        s.delete_subscription(&sub_name("sub")).await.unwrap();
        s.maintain().await.unwrap();
        assert_eq!(rows("messages").await, 1, "a snapshot still marks it");
        assert_eq!(rows("dedup").await, 1);
        s.delete_snapshot(&snapshot_name("snap")).await.unwrap();
        s.maintain().await.unwrap();
        assert_eq!(rows("messages").await, 0);
        assert_eq!(rows("dedup").await, 0);
        assert_eq!(rows("topic_heads").await, 0);
        x.finish().await;
    }

    /// Logs and backlogs larger than one delete chunk go completely: retention deletes every
    /// old row and moves the cursor past every old unread message, and truncation then empties
    /// the log.
    #[tokio::test]
    async fn large_logs_and_backlogs_go_in_chunks() {
        let x = Scratch::new().await;
        let s = &x.store;
        s.create_topic(topic("big")).await.unwrap();
        let short = Subscription {
            message_retention: Duration::from_secs(600),
            ..subscription("short", "big")
        };
        s.create_subscription(short).await.unwrap();
        let n = 2 * super::CHUNK + 2_345;
        for _ in 0..n / 1000 {
            let batch = (0..1000).map(|_| msg("m")).collect();
            s.publish(&topic_name("big"), batch).await.unwrap();
        }
        let batch = (0..n % 1000).map(|_| msg("m")).collect();
        s.publish(&topic_name("big"), batch).await.unwrap();
        assert_eq!(x.log_len("big").await, n);
        // Most of it looked at and waiting (a retry backlog), the rest never read: the state
        // the data model allows, written directly rather than through 20,000 pulls.
        let looked_at = n - 1_000;
        x.execute(&format!(
            "INSERT INTO deliveries (sub_id, msg_id, publish_time, state, due_at)
             SELECT s.id, m.id, m.publish_time, 0, m.publish_time
               FROM subscriptions s JOIN messages m ON m.topic_id = s.topic_id
              WHERE m.id <= {looked_at}"
        ))
        .await;
        x.execute(&format!("UPDATE sub_cursors SET cursor = {looked_at}"))
            .await;
        assert_eq!(x.stats_of("short").await.0, n as u64);
        s.maintain().await.unwrap();
        assert_eq!(x.log_len("big").await, n, "nothing is old yet");

        x.clock.advance(Duration::from_secs(601));
        s.maintain().await.unwrap();
        assert_eq!(x.number("SELECT count(*) FROM deliveries").await, 0);
        assert_eq!(x.number("SELECT cursor FROM sub_cursors").await, n);
        assert_eq!(x.stats_of("short").await, (0, Duration::ZERO));
        assert_eq!(x.log_len("big").await, 0, "and the log is truncated");
        assert!(pull_now(s, "short").await.is_empty());
        x.finish().await;
    }

    /// An idempotency key row lives for its topic's window and is deleted after it.
    #[tokio::test]
    async fn idempotency_keys_leave_the_table_after_their_window() {
        let x = Scratch::new().await;
        let s = &x.store;
        s.create_topic(topic("top")).await.unwrap();
        let window = s.get_topic(&topic_name("top")).await.unwrap().dedup_window;
        s.publish(
            &topic_name("top"),
            vec![msg_with("m", &[("converge-idempotency-key", "k")], "")],
        )
        .await
        .unwrap();
        x.clock.advance(window - Duration::from_secs(1));
        s.maintain().await.unwrap();
        assert_eq!(x.number("SELECT count(*) FROM dedup").await, 1);
        x.clock.advance(Duration::from_secs(1));
        s.maintain().await.unwrap();
        assert_eq!(x.number("SELECT count(*) FROM dedup").await, 0);
        x.finish().await;
    }

    /// The backlog counts leased, waiting and unread messages, the age is the oldest one's on
    /// the store's clock, and a detached subscription reports nothing.
    #[tokio::test]
    async fn stats_count_every_unfinished_message_and_age_the_oldest() {
        let x = Scratch::new().await;
        let s = &x.store;
        s.create_topic(topic("top")).await.unwrap();
        s.create_subscription(subscription("sub", "top"))
            .await
            .unwrap();
        s.create_subscription(subscription("other", "top"))
            .await
            .unwrap();
        assert_eq!(x.stats_of("sub").await, (0, Duration::ZERO));
        s.publish(&topic_name("top"), vec![msg("a")]).await.unwrap();
        x.clock.advance(Duration::from_secs(30));
        s.publish(&topic_name("top"), vec![msg("b"), msg("c")])
            .await
            .unwrap();
        x.clock.advance(Duration::from_secs(10));
        assert_eq!(
            x.stats_of("sub").await,
            (3, Duration::from_secs(40)),
            "nothing looked at yet"
        );
        let got = s.pull(&sub_name("sub"), 2, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(x.stats_of("sub").await, (3, Duration::from_secs(40)));
        s.acknowledge(&sub_name("sub"), &[got[0].ack_id.clone()])
            .await
            .unwrap();
        assert_eq!(
            x.stats_of("sub").await,
            (2, Duration::from_secs(10)),
            "b leased, c unread"
        );
        s.detach_subscription(&sub_name("other")).await.unwrap();
        assert_eq!(x.stats_of("other").await, (0, Duration::ZERO));
        let names: Vec<_> = s
            .subscription_stats()
            .await
            .unwrap()
            .into_iter()
            .map(|st| st.name)
            .collect();
        assert_eq!(names, [sub_name("other"), sub_name("sub")], "by name");
        x.finish().await;
    }

    /// Expiration goes by the recorded last activity, not by the creation time: activity
    /// recorded by any node (the column) keeps a subscription.
    #[tokio::test]
    async fn expiration_counts_from_the_last_recorded_activity() {
        let x = Scratch::new().await;
        let s = &x.store;
        s.create_topic(topic("top")).await.unwrap();
        let ttl = Duration::from_secs(86_400);
        let expiring = Subscription {
            expiration_ttl: Some(ttl),
            ..subscription("sub", "top")
        };
        s.create_subscription(expiring).await.unwrap();
        x.clock.advance(Duration::from_secs(3600));
        // Activity another node recorded an hour after creation.
        let at = super::to_micros(x.clock.now());
        x.execute(&format!(
            "UPDATE subscriptions SET last_activity = timestamptz 'epoch' + {at} * interval '1 microsecond'"
        ))
        .await;
        x.clock.advance(ttl - Duration::from_secs(1800));
        s.maintain().await.unwrap();
        assert!(s.get_subscription(&sub_name("sub")).await.is_ok());
        x.clock.advance(Duration::from_secs(1801));
        s.maintain().await.unwrap();
        assert!(matches!(
            s.get_subscription(&sub_name("sub")).await,
            Err(converge_core::Error::NotFound(_))
        ));
        x.finish().await;
    }
}
