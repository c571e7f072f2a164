//! Failed deliveries on PostgreSQL (design §3.5): nacks and expired leases go through one path
//! that asks the subscription's policy (`Subscription::after_failure`) and applies the verdict in
//! the transaction holding the rows' locks, so an expiry never overrides a concurrent ack, and a
//! dead-letter forward commits together with the removal of its source.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use converge_core::dead_letter::dead_letter_attributes;
use converge_core::subscription::AfterFailure;
use converge_core::{NewMessage, Result};
use sqlx::PgConnection;
use sqlx::postgres::PgRow;

use super::publish::parse_attributes;
use super::resources::{col, finish_tx};
use super::subscriptions::SubscriptionInfo;
use super::{PostgresStore, db_error, from_micros, to_micros, ts_column, ts_param};

/// Expired leases handled per transaction.
pub(super) const EXPIRY_BATCH: i64 = 500;
/// How long a message whose dead-letter topic does not exist waits before trying again.
const DEAD_LETTER_TOPIC_MISSING_RETRY: Duration = Duration::from_secs(60);

/// A locked row whose delivery failed (nack or expired lease), waiting for its verdict.
pub(super) struct FailedRow {
    sub_id: i64,
    msg_id: i64,
    attempts: i32,
    first_attempt: Option<SystemTime>,
}

impl PostgresStore {
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
    pub(super) async fn fail_locked(
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
                        parse_attributes(&col::<String>(&source, "attributes")?)?,
                        &sub.settings.name,
                        from_micros(col(&source, "publish_time")?),
                        attempts,
                    ),
                    data: col::<Vec<u8>>(&source, "data")?.into(),
                    ordering_key: col(&source, "ordering_key")?,
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
            sqlx::query(
                "UPDATE deliveries d SET state = 0, lease = NULL,
                        due_at = timestamptz 'epoch' + r.t * interval '1 microsecond'
                   FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS r(sub_id, msg_id, t)
                  WHERE d.sub_id = r.sub_id AND d.msg_id = r.msg_id",
            )
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
    pub(super) fn wake_dead_letter_topics(&self, topics: Vec<i64>) {
        for topic in topics {
            self.wake_topic(topic);
        }
    }
}

pub(super) fn failed_row(row: &PgRow) -> Result<FailedRow> {
    Ok(FailedRow {
        sub_id: col(row, "sub_id")?,
        msg_id: col(row, "msg_id")?,
        attempts: col(row, "attempts")?,
        first_attempt: col::<Option<i64>>(row, "first_attempt")?.map(from_micros),
    })
}
