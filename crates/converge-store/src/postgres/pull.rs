//! Pull on PostgreSQL (design §3.2): leasing waiting rows, and materialising new messages.
//!
//! A subscription's state is its cursor (every message id up to it has been looked at) and one
//! `deliveries` row per looked-at message it is not done with: waiting (`state = 0`, `due_at` =
//! when it may go out) or leased (`state = 1`, `due_at` = the lease's deadline). "Done" is the
//! absence of a row below the cursor, so an ack is a `DELETE`.
//!
//! Why no message is leased twice across nodes: a row is leased only by an `UPDATE` of a row
//! the same statement locked with `FOR UPDATE SKIP LOCKED` while it was waiting; a concurrent
//! puller skips it, or re-checks it after the lock and finds it leased. New messages get their
//! row while the subscription's cursor row is locked, so each gets one row. Every delivery has
//! a new lease number, so an old ack id never matches a newer lease.
//!
//! Ordering keys are decided when rows are read, never stored: a row with a key is deliverable
//! only when no earlier row of that key exists for the subscription. A stored "parked" state
//! would race with a concurrent ack on another node.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use converge_core::{Error, PullOptions, ReceivedMessage, Result, StoredMessage, SubscriptionName};
use sqlx::PgConnection;
use sqlx::postgres::PgRow;

use super::publish::{message_id, parse_attributes};
use super::resources::{col, detached_error, finish_tx};
use super::subscriptions::SubscriptionInfo;
use super::wake::POLL_INTERVAL;
use super::{PostgresStore, db_error, from_micros, to_micros, ts_column, ts_param};
use crate::embedded::delivery::AckRef;

/// New messages looked at per materialisation at least (design §3.2 c).
const MATERIALISE_CHUNK: i64 = 512;

/// A pull's leasing task whose caller may stop waiting for it: dropped before the task's
/// answer was claimed, it releases whatever the task leased.
struct ReleaseUnclaimed {
    task: Option<tokio::task::JoinHandle<Result<Vec<ReceivedMessage>>>>,
    store: PostgresStore,
    sub_id: i64,
}

impl Drop for ReleaseUnclaimed {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        let (store, sub_id) = (self.store.clone(), self.sub_id);
        tokio::spawn(async move {
            let Ok(Ok(taken)) = task.await else {
                return;
            };
            let rows: Vec<LeasedRow> = taken
                .iter()
                .filter_map(|r| {
                    let a = AckRef::decode(&r.ack_id)?;
                    Some(LeasedRow {
                        msg_id: a.message_id as i64,
                        lease: a.lease as i64,
                        attempts: r.attempts as i32,
                    })
                })
                .collect();
            if rows.is_empty() {
                return;
            }
            let now = store.clock.now();
            match store.release(sub_id, &rows, now).await {
                Ok(()) => tracing::debug!(
                    sub_id,
                    count = rows.len(),
                    "released the leases of an abandoned pull"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, sub_id, "abandoned leases not released; they expire at their deadline")
                }
            }
        });
    }
}

/// How much a materialisation may lease at once.
#[derive(Debug, Clone, Copy)]
struct LeaseBudget {
    /// Messages at most (0: lease nothing, only look).
    messages: usize,
    /// Bytes at most, if limited.
    bytes: Option<usize>,
    /// The first message goes whatever its size (nothing was leased before it in this pull).
    first_always_fits: bool,
    /// Lease length.
    lease_for: Duration,
}

/// A row this pull leased.
#[derive(Debug, Clone, Copy)]
struct LeasedRow {
    msg_id: i64,
    lease: i64,
    attempts: i32,
}

impl PostgresStore {
    /// Leases what is deliverable, waiting up to `options.wait` for something when nothing is.
    pub(super) async fn pull_leased(
        &self,
        name: &SubscriptionName,
        options: PullOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        self.check_open()?;
        let give_up_at = tokio::time::Instant::now() + options.wait;
        loop {
            let sub = self.subscription_info(name).await?;
            if sub.settings.detached {
                return Err(detached_error(name));
            }
            // Register for wake-ups before looking, so a commit in between is not missed.
            let mut by_sub = Box::pin(self.node.wake.subscription(sub.id).notified_owned());
            by_sub.as_mut().enable();
            let mut by_topic = Box::pin(self.node.wake.topic(sub.topic_id).notified_owned());
            by_topic.as_mut().enable();

            let now = self.clock.now();
            let taken = self.take_to_completion(&sub, &options, now).await?;
            if !taken.is_empty() {
                self.touch(sub.id, now).await?;
                return Ok(taken);
            }
            let now_real = tokio::time::Instant::now();
            if now_real >= give_up_at || self.check_open().is_err() {
                return Ok(Vec::new());
            }
            let mut sleep_until = give_up_at.min(now_real + POLL_INTERVAL);
            if let Some(due) = self.next_due(sub.id).await? {
                let in_clock = due
                    .duration_since(self.clock.now())
                    .unwrap_or(Duration::ZERO);
                sleep_until = sleep_until.min(now_real + in_clock + Duration::from_millis(1));
            }
            tokio::select! {
                _ = by_sub => {}
                _ = by_topic => {}
                _ = tokio::time::sleep_until(sleep_until) => {}
            }
        }
    }

    /// Runs [`Self::take`] as a task of its own, so that it finishes even if the caller stops
    /// waiting (StreamingPull drops a pull when its stream's deadline changes). The server relies
    /// on a pull it gave up having leased nothing: leases committed for a caller that is gone
    /// are released at once, instead of waiting out their deadline.
    async fn take_to_completion(
        &self,
        sub: &Arc<SubscriptionInfo>,
        options: &PullOptions,
        now: SystemTime,
    ) -> Result<Vec<ReceivedMessage>> {
        let (store, task_sub, options) = (self.clone(), sub.clone(), options.clone());
        let task = tokio::spawn(async move { store.take(&task_sub, &options, now).await });
        let mut pending = ReleaseUnclaimed {
            task: Some(task),
            store: self.clone(),
            sub_id: sub.id,
        };
        let joined = pending.task.as_mut().expect("just set").await;
        pending.task = None;
        joined.map_err(|e| Error::Internal(format!("a pull task failed: {e}")))?
    }

    /// When the subscription's next retry comes due or its next lease expires.
    async fn next_due(&self, sub_id: i64) -> Result<Option<SystemTime>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            ts_column!("min(due_at)"),
            " AS due FROM deliveries WHERE sub_id = $1"
        ))
        .bind(sub_id)
        .fetch_one(&self.lease_pool)
        .await
        .map_err(db_error)?;
        Ok(col::<Option<i64>>(&row, "due")?.map(from_micros))
    }

    /// One attempt at leasing: expired leases first go through their failure, then waiting rows
    /// whose time has come, then messages nobody has looked at yet.
    async fn take(
        &self,
        sub: &SubscriptionInfo,
        options: &PullOptions,
        now: SystemTime,
    ) -> Result<Vec<ReceivedMessage>> {
        self.expire_leases(Some(sub.id), now).await?;
        let lease_for = options.ack_deadline.unwrap_or(sub.settings.ack_deadline);
        let max = options.max_messages.max(1);
        let mut out = Vec::new();
        let mut bytes = 0usize;

        let waiting = self.lease_waiting(sub.id, max, now, lease_for).await?;
        let (kept, surplus) = self
            .load_leased(sub, &waiting, options.max_bytes, &mut bytes, &mut out)
            .await?;
        if !surplus.is_empty() {
            self.release(sub.id, &surplus, now).await?;
        }
        let full = out.len() >= max || (kept < waiting.len());
        if !full {
            let budget = options.max_bytes.map(|m| m.saturating_sub(bytes));
            let (fresh, waiting) = self
                .materialise(
                    sub,
                    LeaseBudget {
                        messages: max - out.len(),
                        bytes: budget,
                        first_always_fits: out.is_empty(),
                        lease_for,
                    },
                    now,
                )
                .await?;
            if waiting > 0 {
                // Rows other pullers can lease now (those of other nodes among them, which
                // found the cursor locked by this materialisation and went back to waiting).
                self.wake_subscription(sub.id).await?;
            }
            let (_, surplus) = self
                .load_leased(sub, &fresh, options.max_bytes, &mut bytes, &mut out)
                .await?;
            if !surplus.is_empty() {
                self.release(sub.id, &surplus, now).await?;
            }
        }
        if !out.is_empty() {
            metrics::counter!("converge_messages_delivered_total").increment(out.len() as u64);
            let redelivered = out.iter().filter(|m| m.attempts > 1).count();
            if redelivered > 0 {
                metrics::counter!("converge_messages_redelivered_total")
                    .increment(redelivered as u64);
            }
        }
        Ok(out)
    }

    /// Leases up to `max` waiting rows whose time has come (design §3.2 b).
    async fn lease_waiting(
        &self,
        sub_id: i64,
        max: usize,
        now: SystemTime,
        lease_for: Duration,
    ) -> Result<Vec<LeasedRow>> {
        let rows = sqlx::query(concat!(
            "WITH c AS (
               SELECT d.msg_id FROM deliveries d
                WHERE d.sub_id = $1 AND d.state = 0 AND d.due_at <= ",
            ts_param!("$2"),
            "     AND (d.ordering_key = '' OR NOT EXISTS (
                        SELECT 1 FROM deliveries p WHERE p.sub_id = d.sub_id
                           AND p.ordering_key = d.ordering_key AND p.msg_id < d.msg_id))
                ORDER BY d.due_at, d.msg_id LIMIT $3
                FOR UPDATE SKIP LOCKED)
             UPDATE deliveries d
                SET state = 1, lease = nextval('lease_seq'), attempts = d.attempts + 1,
                    first_attempt = coalesce(d.first_attempt, ",
            ts_param!("$2"),
            "), due_at = ",
            ts_param!("$2"),
            " + $4::int8 * interval '1 microsecond'
               FROM c WHERE d.sub_id = $1 AND d.msg_id = c.msg_id
             RETURNING d.msg_id, d.lease, d.attempts"
        ))
        .bind(sub_id)
        .bind(to_micros(now))
        .bind(max as i64)
        .bind(lease_for.as_micros() as i64)
        .fetch_all(&self.lease_pool)
        .await
        .map_err(db_error)?;
        let mut leased = rows
            .iter()
            .map(|r| {
                Ok(LeasedRow {
                    msg_id: col(r, "msg_id")?,
                    lease: col(r, "lease")?,
                    attempts: col(r, "attempts")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        leased.sort_by_key(|r| r.msg_id);
        Ok(leased)
    }

    /// Reads the payloads of leased rows and turns them into deliveries, within the byte budget.
    /// Returns how many were kept and the rows that did not fit (to be released). Rows whose
    /// message is gone (retention dropped it) are finished.
    async fn load_leased(
        &self,
        sub: &SubscriptionInfo,
        leased: &[LeasedRow],
        max_bytes: Option<usize>,
        bytes: &mut usize,
        out: &mut Vec<ReceivedMessage>,
    ) -> Result<(usize, Vec<LeasedRow>)> {
        if leased.is_empty() {
            return Ok((0, Vec::new()));
        }
        let ids: Vec<i64> = leased.iter().map(|r| r.msg_id).collect();
        let (first, last) = ids.iter().fold((i64::MAX, i64::MIN), |(lo, hi), &id| {
            (lo.min(id), hi.max(id))
        });
        // The bounds are redundant with `ANY`, and there for the planner: right after a large
        // publish its statistics still think the topic small, and it chose to read every row
        // of the topic and filter on `ANY` (170 ms per thousand messages from a backlog of
        // 300k). A pull's messages lie close together, so the range keeps the scan short.
        let rows = sqlx::query(concat!(
            "SELECT id, ",
            ts_column!("publish_time"),
            " AS publish_time, ordering_key, attributes::text AS attributes, data
               FROM messages WHERE topic_id = $1 AND id = ANY($2) AND id BETWEEN $3 AND $4"
        ))
        .bind(sub.topic_id)
        .bind(&ids)
        .bind(first)
        .bind(last)
        .fetch_all(&self.lease_pool)
        .await
        .map_err(db_error)?;
        let mut messages: HashMap<i64, StoredMessage> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = col(row, "id")?;
            messages.insert(
                id,
                StoredMessage {
                    id: message_id(sub.topic_id, id),
                    publish_time: from_micros(col(row, "publish_time")?),
                    data: col::<Vec<u8>>(row, "data")?.into(),
                    attributes: parse_attributes(&col::<String>(row, "attributes")?)?,
                    ordering_key: col(row, "ordering_key")?,
                },
            );
        }
        let has_dead_letter = sub.settings.dead_letter_policy.is_some();
        let mut kept = 0;
        let mut surplus = Vec::new();
        let mut gone = Vec::new();
        for row in leased {
            let Some(message) = messages.remove(&row.msg_id) else {
                gone.push(row.msg_id);
                continue;
            };
            let size = message.size();
            let fits = out.is_empty() || max_bytes.is_none_or(|max| *bytes + size <= max);
            if !fits || !surplus.is_empty() {
                surplus.push(*row);
                continue;
            }
            *bytes += size;
            kept += 1;
            let attempts = row.attempts.max(1) as u32;
            out.push(ReceivedMessage {
                ack_id: AckRef {
                    subscription_id: sub.id as u64,
                    message_id: row.msg_id as u64,
                    lease: row.lease as u64,
                }
                .encode(),
                message,
                delivery_attempt: if has_dead_letter { attempts } else { 0 },
                attempts,
            });
        }
        if !gone.is_empty() {
            sqlx::query("DELETE FROM deliveries WHERE sub_id = $1 AND msg_id = ANY($2)")
                .bind(sub.id)
                .bind(&gone)
                .execute(&self.lease_pool)
                .await
                .map_err(db_error)?;
        }
        Ok((kept, surplus))
    }

    /// Gives back leases this pull took but could not hand out (byte budget): they wait again,
    /// as if never delivered.
    async fn release(&self, sub_id: i64, rows: &[LeasedRow], now: SystemTime) -> Result<()> {
        // Each row's lease is looked up at its message's position, not joined with `unnest`
        // (see `ack::MATCHING` for why); the rows of one lease are unique messages.
        let (ids, leases): (Vec<i64>, Vec<i64>) = rows.iter().map(|r| (r.msg_id, r.lease)).unzip();
        debug_assert_eq!(
            ids.iter().collect::<HashSet<_>>().len(),
            ids.len(),
            "released rows are unique messages"
        );
        sqlx::query(concat!(
            "UPDATE deliveries d SET state = 0, lease = NULL, due_at = ",
            ts_param!("$4"),
            ", attempts = d.attempts - 1,
                   first_attempt = CASE WHEN d.attempts <= 1 THEN NULL ELSE d.first_attempt END
              WHERE d.sub_id = $1 AND d.msg_id = ANY($2::int8[])
               AND d.lease = ($3::int8[])[array_position($2::int8[], d.msg_id)]
               AND d.state = 1"
        ))
        .bind(sub_id)
        .bind(&ids)
        .bind(&leases)
        .bind(to_micros(now))
        .execute(&self.lease_pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// Looks at messages past the subscription's cursor (design §3.2 c): a filter's rejects are
    /// done (no row), the rest get rows, leased at once up to `want` (and the byte budget) when
    /// their ordering key is free, waiting otherwise. Another node materialising the same
    /// subscription holds its cursor row; then this one takes nothing new.
    async fn materialise(
        &self,
        sub: &SubscriptionInfo,
        budget: LeaseBudget,
        now: SystemTime,
    ) -> Result<(Vec<LeasedRow>, usize)> {
        let mut tx = self.lease_pool.begin().await.map_err(db_error)?;
        let result = self.materialise_in(&mut tx, sub, budget, now).await;
        finish_tx(tx, result).await
    }

    async fn materialise_in(
        &self,
        tx: &mut PgConnection,
        sub: &SubscriptionInfo,
        budget: LeaseBudget,
        now: SystemTime,
    ) -> Result<(Vec<LeasedRow>, usize)> {
        let LeaseBudget {
            messages: want,
            bytes: byte_budget,
            first_always_fits,
            lease_for,
        } = budget;
        let cursor =
            sqlx::query("SELECT cursor FROM sub_cursors WHERE sub_id = $1 FOR UPDATE SKIP LOCKED")
                .bind(sub.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        let Some(cursor) = cursor else {
            return Ok((Vec::new(), 0));
        };
        let cursor: i64 = col(&cursor, "cursor")?;
        let rows = sqlx::query(concat!(
            "SELECT id, ",
            ts_column!("publish_time"),
            " AS publish_time, ordering_key, attributes::text AS attributes,
                    octet_length(data) AS data_len
               FROM messages WHERE topic_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(sub.topic_id)
        .bind(cursor)
        .bind(MATERIALISE_CHUNK.max(want as i64))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(last) = rows.last() else {
            return Ok((Vec::new(), 0));
        };
        let last_looked_at: i64 = col(last, "id")?;
        let ordering = sub.settings.enable_message_ordering;

        struct Candidate {
            id: i64,
            key: String,
            publish_time: i64,
            size: usize,
        }
        let mut candidates = Vec::with_capacity(rows.len());
        let mut rejected = 0u64;
        for row in &rows {
            let attributes = parse_attributes(&col::<String>(row, "attributes")?)?;
            if let Some(filter) = &sub.filter
                && !filter.matches(&attributes)
            {
                // Rejected messages are acknowledged at once, as Pub/Sub does: no row.
                rejected += 1;
                continue;
            }
            let key: String = col(row, "ordering_key")?;
            let size = col::<i32>(row, "data_len")? as usize
                + key.len()
                + attributes
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
            candidates.push(Candidate {
                id: col(row, "id")?,
                key: if ordering { key } else { String::new() },
                publish_time: col(row, "publish_time")?,
                size,
            });
        }
        if rejected > 0 {
            metrics::counter!("converge_messages_filtered_total").increment(rejected);
        }
        // Keys with an unfinished earlier message: their new messages wait behind it.
        let keys: Vec<&str> = candidates
            .iter()
            .filter(|c| !c.key.is_empty())
            .map(|c| c.key.as_str())
            .collect();
        let mut busy: HashSet<String> = HashSet::new();
        if !keys.is_empty() {
            let rows = sqlx::query(
                "SELECT DISTINCT ordering_key FROM deliveries
                  WHERE sub_id = $1 AND ordering_key = ANY($2)",
            )
            .bind(sub.id)
            .bind(&keys)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            for row in rows {
                busy.insert(col(&row, "ordering_key")?);
            }
        }
        let (mut ids, mut okeys, mut times, mut leased_flags) = (vec![], vec![], vec![], vec![]);
        let mut taken = 0usize;
        let mut bytes = 0usize;
        let mut budget_spent = false;
        for c in &candidates {
            let key_free = c.key.is_empty() || !busy.contains(&c.key);
            let fits = (first_always_fits && taken == 0)
                || byte_budget.is_none_or(|max| bytes + c.size <= max);
            if !fits {
                budget_spent = true;
            }
            let lease_now = key_free && taken < want && !budget_spent;
            if lease_now {
                taken += 1;
                bytes += c.size;
            }
            if !c.key.is_empty() {
                busy.insert(c.key.clone());
            }
            ids.push(c.id);
            okeys.push(c.key.as_str());
            times.push(c.publish_time);
            leased_flags.push(lease_now);
        }
        let mut leased = Vec::new();
        if !ids.is_empty() {
            let rows = sqlx::query(concat!(
                "INSERT INTO deliveries (sub_id, msg_id, ordering_key, publish_time, state, due_at,
                                         attempts, first_attempt, lease)
                 SELECT $1, u.id, u.ok, timestamptz 'epoch' + u.pt * interval '1 microsecond',
                        CASE WHEN u.l THEN 1 ELSE 0 END,
                        CASE WHEN u.l THEN ",
                ts_param!("$2"),
                " + $7::int8 * interval '1 microsecond' ELSE ",
                ts_param!("$2"),
                " END,
                        CASE WHEN u.l THEN 1 ELSE 0 END,
                        CASE WHEN u.l THEN ",
                ts_param!("$2"),
                " END,
                        CASE WHEN u.l THEN nextval('lease_seq') END
                   FROM unnest($3::int8[], $4::text[], $5::int8[], $6::bool[]) AS u(id, ok, pt, l)
                 RETURNING msg_id, lease, attempts, state"
            ))
            .bind(sub.id)
            .bind(to_micros(now))
            .bind(&ids)
            .bind(&okeys)
            .bind(&times)
            .bind(&leased_flags)
            .bind(lease_for.as_micros() as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            for row in &rows {
                if col::<i16>(row, "state")? == 1 {
                    leased.push(LeasedRow {
                        msg_id: col(row, "msg_id")?,
                        lease: col(row, "lease")?,
                        attempts: col(row, "attempts")?,
                    });
                }
            }
            leased.sort_by_key(|r| r.msg_id);
        }
        sqlx::query("UPDATE sub_cursors SET cursor = $2 WHERE sub_id = $1")
            .bind(sub.id)
            .bind(last_looked_at)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let waiting = ids.len() - leased.len();
        Ok((leased, waiting))
    }

    /// Runs a filtered subscription's filter over messages past its cursor (rejected ones are
    /// done, accepted ones get waiting rows), so that its backlog counts only what it delivers.
    /// Bounded per call; the leader calls it every tick.
    pub(super) async fn filter_ahead(&self, sub_id: i64) -> Result<()> {
        let Some(sub) = self.subscription_by_id(sub_id).await? else {
            return Ok(());
        };
        if sub.filter.is_none() || sub.settings.detached {
            return Ok(());
        }
        let now = self.clock.now();
        for _ in 0..8 {
            let mut tx = self.lease_pool.begin().await.map_err(db_error)?;
            let before = sqlx::query("SELECT cursor FROM sub_cursors WHERE sub_id = $1")
                .bind(sub.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
            let result = self
                .materialise_in(
                    &mut tx,
                    &sub,
                    LeaseBudget {
                        messages: 0,
                        bytes: None,
                        first_always_fits: false,
                        lease_for: Duration::ZERO,
                    },
                    now,
                )
                .await;
            finish_tx(tx, result).await?;
            let after = sqlx::query("SELECT cursor FROM sub_cursors WHERE sub_id = $1")
                .bind(sub.id)
                .fetch_optional(&self.lease_pool)
                .await
                .map_err(db_error)?;
            let cursor = |r: Option<PgRow>| r.map(|r| col::<i64>(&r, "cursor")).transpose();
            if cursor(before)? == cursor(after)? {
                break;
            }
        }
        Ok(())
    }
}
