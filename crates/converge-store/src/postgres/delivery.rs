//! Pull, acknowledge and ack-deadline changes on PostgreSQL (design §3.2-3.5).
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
use std::time::{Duration, Instant, SystemTime};

use converge_core::dead_letter::dead_letter_attributes;
use converge_core::filter::Filter;
use converge_core::message::Attributes;
use converge_core::subscription::AfterFailure;
use converge_core::{
    AckId, AckOutcome, Error, NewMessage, PullOptions, ReceivedMessage, Result, StoredMessage,
    Subscription, SubscriptionName,
};
use parking_lot::Mutex;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::publish::message_id;
use super::resources::{SUBSCRIPTION_SELECT, detached_error, finish_tx, subscription_from_row};
use super::wake::POLL_INTERVAL;
use super::{PostgresStore, db_error, from_micros, to_micros, ts_column, ts_param};
use crate::embedded::delivery::{AckRef, parse_filter};
use crate::embedded::state::not_found;

/// How long a node trusts its cached copy of a subscription's settings. Changes made on this
/// node drop the copy at once, and other nodes hear of them by NOTIFY; the TTL bounds how stale
/// a copy can be when a notification was lost.
const SETTINGS_TTL: Duration = Duration::from_secs(2);
/// New messages looked at per materialisation at least (design §3.2 c).
const MATERIALISE_CHUNK: i64 = 128;
/// Expired leases handled per transaction.
pub(super) const EXPIRY_BATCH: i64 = 500;
/// How long a message whose dead-letter topic does not exist waits before trying again.
const DEAD_LETTER_TOPIC_MISSING_RETRY: Duration = Duration::from_secs(60);
/// `last_activity` (for the expiration policy) is written at most this often per subscription
/// and node, so pulls do not each write the subscription's row.
const ACTIVITY_WRITE_INTERVAL: Duration = Duration::from_secs(60);

/// What a node keeps of a subscription.
#[derive(Debug)]
pub(super) struct SubscriptionInfo {
    /// Identity (changes when the name is deleted and created again).
    pub id: i64,
    /// The topic log it reads (kept after the topic is deleted).
    pub topic_id: i64,
    /// Settings, as stored.
    pub settings: Subscription,
    /// The parsed filter.
    pub filter: Option<Filter>,
    loaded: Instant,
}

/// Cached subscription settings, by name and by id.
#[derive(Debug, Default)]
pub(super) struct SubscriptionCache {
    by_name: Mutex<HashMap<SubscriptionName, Arc<SubscriptionInfo>>>,
    by_id: Mutex<HashMap<i64, Arc<SubscriptionInfo>>>,
    /// When this node last wrote each subscription's `last_activity`, in store-clock time.
    activity: Mutex<HashMap<i64, SystemTime>>,
}

impl SubscriptionCache {
    /// Forgets everything (another node changed a resource).
    pub(super) fn clear(&self) {
        self.by_name.lock().clear();
        self.by_id.lock().clear();
    }

    fn forget(&self, name: &SubscriptionName) {
        if let Some(info) = self.by_name.lock().remove(name) {
            self.by_id.lock().remove(&info.id);
        }
    }

    fn fresh<K: std::hash::Hash + Eq>(
        map: &Mutex<HashMap<K, Arc<SubscriptionInfo>>>,
        key: &K,
    ) -> Option<Arc<SubscriptionInfo>> {
        map.lock()
            .get(key)
            .filter(|i| i.loaded.elapsed() < SETTINGS_TTL)
            .cloned()
    }

    fn insert(&self, info: Arc<SubscriptionInfo>) {
        self.by_name
            .lock()
            .insert(info.settings.name.clone(), info.clone());
        self.by_id.lock().insert(info.id, info);
    }
}

/// A locked row whose delivery failed (nack or expired lease), waiting for its verdict.
struct FailedRow {
    sub_id: i64,
    msg_id: i64,
    attempts: i32,
    first_attempt: Option<SystemTime>,
}

/// A row this pull leased.
#[derive(Debug, Clone, Copy)]
struct LeasedRow {
    msg_id: i64,
    lease: i64,
    attempts: i32,
}

fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
    row: &'r PgRow,
    name: &str,
) -> Result<T> {
    row.try_get(name).map_err(db_error)
}

fn parse_attributes(text: &str) -> Result<Attributes> {
    serde_json::from_str(text)
        .map_err(|e| Error::Internal(format!("undecodable message attributes: {e}")))
}

/// The ack ids of `ack_ids` that belong to subscription `sub_id`, as (message, lease) pairs
/// with their positions.
fn decode_acks(sub_id: i64, ack_ids: &[AckId]) -> (Vec<i64>, Vec<i64>) {
    ack_ids
        .iter()
        .filter_map(AckRef::decode)
        .filter(|a| a.subscription_id == sub_id as u64)
        .map(|a| (a.message_id as i64, a.lease as i64))
        .unzip()
}

/// One outcome per ack id: `Applied` for those whose (message, lease) is in `applied`.
fn outcomes(sub_id: i64, ack_ids: &[AckId], applied: &HashSet<(i64, i64)>) -> Vec<AckOutcome> {
    ack_ids
        .iter()
        .map(|id| match AckRef::decode(id) {
            Some(a)
                if a.subscription_id == sub_id as u64
                    && applied.contains(&(a.message_id as i64, a.lease as i64)) =>
            {
                AckOutcome::Applied
            }
            _ => AckOutcome::Invalid,
        })
        .collect()
}

impl PostgresStore {
    /// A subscription's settings, from the cache when fresh.
    pub(super) async fn subscription_info(
        &self,
        name: &SubscriptionName,
    ) -> Result<Arc<SubscriptionInfo>> {
        let cache = &self.node.subscriptions;
        if let Some(info) = SubscriptionCache::fresh(&cache.by_name, name) {
            return Ok(info);
        }
        let row = sqlx::query(&format!("{SUBSCRIPTION_SELECT} WHERE s.name = $1"))
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| not_found(&name.to_string()))?;
        self.cache_row(&row)
    }

    /// A subscription's settings by id; `None` once it is deleted.
    async fn subscription_by_id(&self, id: i64) -> Result<Option<Arc<SubscriptionInfo>>> {
        let cache = &self.node.subscriptions;
        if let Some(info) = SubscriptionCache::fresh(&cache.by_id, &id) {
            return Ok(Some(info));
        }
        let row = sqlx::query(&format!("{SUBSCRIPTION_SELECT} WHERE s.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(|row| self.cache_row(&row)).transpose()
    }

    fn cache_row(&self, row: &PgRow) -> Result<Arc<SubscriptionInfo>> {
        let settings = subscription_from_row(row)?;
        let topic_id: Option<i64> = get(row, "topic_id")?;
        let info = Arc::new(SubscriptionInfo {
            id: get(row, "id")?,
            topic_id: topic_id.unwrap_or(0),
            filter: parse_filter(&settings.filter)?,
            settings,
            loaded: Instant::now(),
        });
        self.node.subscriptions.insert(info.clone());
        Ok(info)
    }

    /// Drops the cached settings of a subscription this node changed, and tells the others.
    pub(super) fn forget_subscription(&self, name: &SubscriptionName) {
        self.node.subscriptions.forget(name);
        self.notify_resources_changed();
    }

    /// Records activity for the expiration policy, at most once a minute per subscription.
    async fn touch(&self, sub_id: i64, now: SystemTime) -> Result<()> {
        {
            let mut activity = self.node.subscriptions.activity.lock();
            let recent = activity.get(&sub_id).is_some_and(|at| {
                now.duration_since(*at).unwrap_or(Duration::ZERO) < ACTIVITY_WRITE_INTERVAL
            });
            if recent {
                return Ok(());
            }
            activity.insert(sub_id, now);
        }
        sqlx::query(concat!(
            "UPDATE subscriptions SET last_activity = greatest(last_activity, ",
            ts_param!("$2"),
            ") WHERE id = $1"
        ))
        .bind(sub_id)
        .bind(to_micros(now))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

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
            let taken = self.take(&sub, &options, now).await?;
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

    /// When the subscription's next retry comes due or its next lease expires.
    async fn next_due(&self, sub_id: i64) -> Result<Option<SystemTime>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            ts_column!("min(due_at)"),
            " AS due FROM deliveries WHERE sub_id = $1"
        ))
        .bind(sub_id)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(get::<Option<i64>>(&row, "due")?.map(from_micros))
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
            let fresh = self
                .materialise(sub, max - out.len(), budget, out.is_empty(), now, lease_for)
                .await?;
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
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut leased = rows
            .iter()
            .map(|r| {
                Ok(LeasedRow {
                    msg_id: get(r, "msg_id")?,
                    lease: get(r, "lease")?,
                    attempts: get(r, "attempts")?,
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
        let rows = sqlx::query(concat!(
            "SELECT id, ",
            ts_column!("publish_time"),
            " AS publish_time, ordering_key, attributes::text AS attributes, data
               FROM messages WHERE topic_id = $1 AND id = ANY($2)"
        ))
        .bind(sub.topic_id)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut messages: HashMap<i64, StoredMessage> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = get(row, "id")?;
            messages.insert(
                id,
                StoredMessage {
                    id: message_id(sub.topic_id, id),
                    publish_time: from_micros(get(row, "publish_time")?),
                    data: get::<Vec<u8>>(row, "data")?.into(),
                    attributes: parse_attributes(&get::<String>(row, "attributes")?)?,
                    ordering_key: get(row, "ordering_key")?,
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
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
        }
        Ok((kept, surplus))
    }

    /// Gives back leases this pull took but could not hand out (byte budget): they wait again,
    /// as if never delivered.
    async fn release(&self, sub_id: i64, rows: &[LeasedRow], now: SystemTime) -> Result<()> {
        let (ids, leases): (Vec<i64>, Vec<i64>) = rows.iter().map(|r| (r.msg_id, r.lease)).unzip();
        sqlx::query(concat!(
            "UPDATE deliveries d SET state = 0, lease = NULL, due_at = ",
            ts_param!("$4"),
            ", attempts = d.attempts - 1,
                   first_attempt = CASE WHEN d.attempts <= 1 THEN NULL ELSE d.first_attempt END
               FROM unnest($2::int8[], $3::int8[]) AS a(msg_id, lease)
              WHERE d.sub_id = $1 AND d.msg_id = a.msg_id AND d.lease = a.lease AND d.state = 1"
        ))
        .bind(sub_id)
        .bind(&ids)
        .bind(&leases)
        .bind(to_micros(now))
        .execute(&self.pool)
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
        want: usize,
        byte_budget: Option<usize>,
        first_always_fits: bool,
        now: SystemTime,
        lease_for: Duration,
    ) -> Result<Vec<LeasedRow>> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let result = self
            .materialise_in(
                &mut tx,
                sub,
                want,
                byte_budget,
                first_always_fits,
                now,
                lease_for,
            )
            .await;
        finish_tx(tx, result).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn materialise_in(
        &self,
        tx: &mut PgConnection,
        sub: &SubscriptionInfo,
        want: usize,
        byte_budget: Option<usize>,
        first_always_fits: bool,
        now: SystemTime,
        lease_for: Duration,
    ) -> Result<Vec<LeasedRow>> {
        let cursor =
            sqlx::query("SELECT cursor FROM sub_cursors WHERE sub_id = $1 FOR UPDATE SKIP LOCKED")
                .bind(sub.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
        let Some(cursor) = cursor else {
            return Ok(Vec::new());
        };
        let cursor: i64 = get(&cursor, "cursor")?;
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
            return Ok(Vec::new());
        };
        let last_looked_at: i64 = get(last, "id")?;
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
            let attributes = parse_attributes(&get::<String>(row, "attributes")?)?;
            if let Some(filter) = &sub.filter
                && !filter.matches(&attributes)
            {
                // Rejected messages are acknowledged at once, as Pub/Sub does: no row.
                rejected += 1;
                continue;
            }
            let key: String = get(row, "ordering_key")?;
            let size = get::<i32>(row, "data_len")? as usize
                + key.len()
                + attributes
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
            candidates.push(Candidate {
                id: get(row, "id")?,
                key: if ordering { key } else { String::new() },
                publish_time: get(row, "publish_time")?,
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
                busy.insert(get(&row, "ordering_key")?);
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
                if get::<i16>(row, "state")? == 1 {
                    leased.push(LeasedRow {
                        msg_id: get(row, "msg_id")?,
                        lease: get(row, "lease")?,
                        attempts: get(row, "attempts")?,
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
        Ok(leased)
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
            let mut tx = self.pool.begin().await.map_err(db_error)?;
            let before = sqlx::query("SELECT cursor FROM sub_cursors WHERE sub_id = $1")
                .bind(sub.id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
            let result = self
                .materialise_in(&mut tx, &sub, 0, None, false, now, Duration::ZERO)
                .await;
            finish_tx(tx, result).await?;
            let after = sqlx::query("SELECT cursor FROM sub_cursors WHERE sub_id = $1")
                .bind(sub.id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
            let cursor = |r: Option<PgRow>| r.map(|r| get::<i64>(&r, "cursor")).transpose();
            if cursor(before)? == cursor(after)? {
                break;
            }
        }
        Ok(())
    }

    /// Acknowledges deliveries: the rows of current leases are deleted (design §3.3).
    pub(super) async fn ack(
        &self,
        name: &SubscriptionName,
        ack_ids: &[AckId],
    ) -> Result<Vec<AckOutcome>> {
        self.check_open()?;
        let sub = self.subscription_info(name).await?;
        let now = self.clock.now();
        let (ids, leases) = decode_acks(sub.id, ack_ids);
        if ids.is_empty() {
            return Ok(vec![AckOutcome::Invalid; ack_ids.len()]);
        }
        let rows = sqlx::query(concat!(
            "DELETE FROM deliveries d USING unnest($2::int8[], $3::int8[]) AS a(msg_id, lease)
              WHERE d.sub_id = $1 AND d.msg_id = a.msg_id AND d.lease = a.lease AND d.state = 1
                AND (NOT $4 OR d.due_at > ",
            ts_param!("$5"),
            ") RETURNING d.msg_id, d.lease, d.ordering_key"
        ))
        .bind(sub.id)
        .bind(&ids)
        .bind(&leases)
        .bind(sub.settings.exactly_once)
        .bind(to_micros(now))
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let mut applied = HashSet::with_capacity(rows.len());
        let mut frees_a_key = false;
        for row in &rows {
            applied.insert((get(row, "msg_id")?, get(row, "lease")?));
            frees_a_key |= !get::<String>(row, "ordering_key")?.is_empty();
        }
        if !applied.is_empty() {
            metrics::counter!("converge_messages_acked_total").increment(applied.len() as u64);
        }
        if frees_a_key {
            // The key's next message is deliverable now.
            self.wake_subscription(sub.id).await?;
        }
        self.touch(sub.id, now).await?;
        Ok(outcomes(sub.id, ack_ids, &applied))
    }

    /// Extends or shortens current leases; a zero deadline is a nack (design §3.4).
    pub(super) async fn modify_deadline(
        &self,
        name: &SubscriptionName,
        ack_ids: &[AckId],
        deadline: Duration,
    ) -> Result<Vec<AckOutcome>> {
        self.check_open()?;
        let sub = self.subscription_info(name).await?;
        let now = self.clock.now();
        let (ids, leases) = decode_acks(sub.id, ack_ids);
        if ids.is_empty() {
            return Ok(vec![AckOutcome::Invalid; ack_ids.len()]);
        }
        let matching = concat!(
            "d.sub_id = $1 AND d.msg_id = a.msg_id AND d.lease = a.lease AND d.state = 1
             AND (NOT $4 OR d.due_at > ",
            ts_param!("$5"),
            ")"
        );
        if !deadline.is_zero() {
            let rows = sqlx::query(&format!(
                "UPDATE deliveries d SET due_at = {} + $6::int8 * interval '1 microsecond'
                   FROM unnest($2::int8[], $3::int8[]) AS a(msg_id, lease)
                  WHERE {matching} RETURNING d.msg_id, d.lease",
                ts_param!("$5")
            ))
            .bind(sub.id)
            .bind(&ids)
            .bind(&leases)
            .bind(sub.settings.exactly_once)
            .bind(to_micros(now))
            .bind(deadline.as_micros() as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            let applied = rows
                .iter()
                .map(|r| Ok((get(r, "msg_id")?, get(r, "lease")?)))
                .collect::<Result<HashSet<(i64, i64)>>>()?;
            self.touch(sub.id, now).await?;
            return Ok(outcomes(sub.id, ack_ids, &applied));
        }
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let result: Result<(HashSet<(i64, i64)>, Vec<i64>)> = async {
            let rows = sqlx::query(&format!(
                "SELECT d.sub_id, d.msg_id, d.lease, d.attempts, {} AS first_attempt
                   FROM deliveries d JOIN unnest($2::int8[], $3::int8[]) AS a(msg_id, lease)
                     ON {matching}
                    FOR UPDATE OF d",
                ts_column!("d.first_attempt")
            ))
            .bind(sub.id)
            .bind(&ids)
            .bind(&leases)
            .bind(sub.settings.exactly_once)
            .bind(to_micros(now))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            let mut applied = HashSet::with_capacity(rows.len());
            let mut failed = Vec::with_capacity(rows.len());
            for row in &rows {
                applied.insert((get(row, "msg_id")?, get(row, "lease")?));
                failed.push(failed_row(row)?);
            }
            let forwarded = self.fail_locked(&mut tx, failed, now).await?;
            Ok((applied, forwarded))
        }
        .await;
        let (applied, forwarded) = finish_tx(tx, result).await?;
        self.wake_dead_letter_topics(forwarded);
        self.wake_subscription(sub.id).await?;
        self.touch(sub.id, now).await?;
        Ok(outcomes(sub.id, ack_ids, &applied))
    }

    /// Sends every lease past its deadline through its failure (design §3.5): of one
    /// subscription (a pull looking first), or of all (the leader's sweep). Returns how many.
    pub(super) async fn expire_leases(
        &self,
        sub_id: Option<i64>,
        now: SystemTime,
    ) -> Result<usize> {
        // A cheap look first: pulls run this every time and usually find nothing.
        if let Some(sub_id) = sub_id {
            let any = sqlx::query(concat!(
                "SELECT 1 FROM deliveries WHERE sub_id = $1 AND state = 1 AND due_at <= ",
                ts_param!("$2"),
                " LIMIT 1"
            ))
            .bind(sub_id)
            .bind(to_micros(now))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
            if any.is_none() {
                return Ok(0);
            }
        }
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let result: Result<(usize, Vec<i64>, Vec<i64>)> = async {
            let rows = sqlx::query(&format!(
                "SELECT sub_id, msg_id, attempts, {} AS first_attempt FROM deliveries
                  WHERE state = 1 AND due_at <= {} AND ($2::int8 IS NULL OR sub_id = $2)
                  ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED",
                ts_column!("first_attempt"),
                ts_param!("$1")
            ))
            .bind(to_micros(now))
            .bind(sub_id)
            .bind(EXPIRY_BATCH)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            let failed = rows.iter().map(failed_row).collect::<Result<Vec<_>>>()?;
            let count = failed.len();
            let mut subs: Vec<i64> = failed.iter().map(|f| f.sub_id).collect();
            subs.sort_unstable();
            subs.dedup();
            let forwarded = self.fail_locked(&mut tx, failed, now).await?;
            Ok((count, subs, forwarded))
        }
        .await;
        let (count, subs, forwarded) = finish_tx(tx, result).await?;
        self.wake_dead_letter_topics(forwarded);
        for sub in subs {
            self.wake_subscription(sub).await?;
        }
        Ok(count)
    }

    /// Applies the verdict of each failed delivery, in the caller's transaction, which holds
    /// the rows' locks: a retry waits, an exhausted message is forwarded to its dead-letter
    /// topic and removed in the same commit (so it is forwarded once and never lost), a message
    /// the schedule gave up on without a dead-letter topic is dropped.
    async fn fail_locked(
        &self,
        tx: &mut PgConnection,
        failed: Vec<FailedRow>,
        now: SystemTime,
    ) -> Result<Vec<i64>> {
        let mut dead_letter_topics = Vec::new();
        if failed.is_empty() {
            return Ok(dead_letter_topics);
        }
        let (mut wait_subs, mut wait_ids, mut wait_until) = (vec![], vec![], vec![]);
        let (mut done_subs, mut done_ids) = (vec![], vec![]);
        // Dead-letter forwards, grouped by target topic and done in name order so that two
        // sweeps never take two topics' head locks in opposite orders.
        let mut forwards: std::collections::BTreeMap<
            converge_core::TopicName,
            Vec<(Arc<SubscriptionInfo>, i64, u32)>,
        > = Default::default();
        for f in failed {
            let Some(sub) = self.subscription_by_id(f.sub_id).await? else {
                continue;
            };
            let first = f.first_attempt.unwrap_or(now);
            match sub.settings.after_failure(
                f.attempts.max(0) as u32,
                first,
                now,
                rand::random::<f64>(),
            ) {
                AfterFailure::Retry { ready_at } => {
                    metrics::counter!("converge_messages_nacked_or_expired_total").increment(1);
                    wait_subs.push(f.sub_id);
                    wait_ids.push(f.msg_id);
                    wait_until.push(to_micros(ready_at));
                }
                AfterFailure::GiveUp { attempts } => {
                    tracing::warn!(subscription = %sub.settings.name, message_id = f.msg_id, attempts,
                        "retry schedule exhausted and no dead-letter topic: message dropped");
                    metrics::counter!("converge_messages_dropped_total", "reason" => "retries_exhausted")
                        .increment(1);
                    done_subs.push(f.sub_id);
                    done_ids.push(f.msg_id);
                }
                AfterFailure::DeadLetter { attempts } => {
                    let target = sub
                        .settings
                        .dead_letter_policy
                        .as_ref()
                        .map(|p| p.topic.clone())
                        .expect("dead-lettering needs a policy");
                    forwards
                        .entry(target)
                        .or_default()
                        .push((sub, f.msg_id, attempts));
                }
            }
        }
        for (target, items) in forwards {
            for (sub, msg_id, attempts) in items {
                let source = sqlx::query(concat!(
                    "SELECT ",
                    ts_column!("publish_time"),
                    " AS publish_time, ordering_key, attributes::text AS attributes, data
                       FROM messages WHERE topic_id = $1 AND id = $2"
                ))
                .bind(sub.topic_id)
                .bind(msg_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
                let Some(source) = source else {
                    // Retention dropped it meanwhile: nothing left to forward.
                    done_subs.push(sub.id);
                    done_ids.push(msg_id);
                    continue;
                };
                let message = NewMessage {
                    attributes: dead_letter_attributes(
                        parse_attributes(&get::<String>(&source, "attributes")?)?,
                        &sub.settings.name,
                        from_micros(get(&source, "publish_time")?),
                        attempts,
                    ),
                    data: get::<Vec<u8>>(&source, "data")?.into(),
                    ordering_key: get(&source, "ordering_key")?,
                };
                match self.publish_in(tx, &target, &[message], now).await? {
                    Some(published) => {
                        metrics::counter!("converge_messages_dead_lettered_total").increment(1);
                        tracing::info!(subscription = %sub.settings.name, message_id = msg_id,
                            attempts, dead_letter_topic = %target, "message dead-lettered");
                        done_subs.push(sub.id);
                        done_ids.push(msg_id);
                        dead_letter_topics.push(published.topic_id);
                    }
                    None => {
                        tracing::warn!(subscription = %sub.settings.name, dead_letter_topic = %target,
                            "dead-letter topic does not exist; message kept");
                        wait_subs.push(sub.id);
                        wait_ids.push(msg_id);
                        wait_until.push(to_micros(now + DEAD_LETTER_TOPIC_MISSING_RETRY));
                    }
                }
            }
        }
        if !wait_ids.is_empty() {
            sqlx::query(concat!(
                "UPDATE deliveries d SET state = 0, lease = NULL,
                        due_at = timestamptz 'epoch' + r.t * interval '1 microsecond'
                   FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS r(sub_id, msg_id, t)
                  WHERE d.sub_id = r.sub_id AND d.msg_id = r.msg_id"
            ))
            .bind(&wait_subs)
            .bind(&wait_ids)
            .bind(&wait_until)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        if !done_ids.is_empty() {
            sqlx::query(
                "DELETE FROM deliveries d USING unnest($1::int8[], $2::int8[]) AS r(sub_id, msg_id)
                  WHERE d.sub_id = r.sub_id AND d.msg_id = r.msg_id",
            )
            .bind(&done_subs)
            .bind(&done_ids)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        dead_letter_topics.sort_unstable();
        dead_letter_topics.dedup();
        Ok(dead_letter_topics)
    }

    /// Wakes, after the commit, the subscribers of the topics a failure forwarded to.
    fn wake_dead_letter_topics(&self, topics: Vec<i64>) {
        for topic in topics {
            self.wake_topic(topic);
        }
    }
}

fn failed_row(row: &PgRow) -> Result<FailedRow> {
    Ok(FailedRow {
        sub_id: get(row, "sub_id")?,
        msg_id: get(row, "msg_id")?,
        attempts: get(row, "attempts")?,
        first_attempt: get::<Option<i64>>(row, "first_attempt")?.map(from_micros),
    })
}
