//! Acknowledge and ack-deadline changes on PostgreSQL (design §3.3, §3.4): an ack deletes the
//! row of a current lease; an extension moves its deadline; a nack is a failure (`failure.rs`).
//! An ack id matches only the lease it was issued for (subscription id, message, lease number),
//! and with exactly-once delivery only before its deadline.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use converge_core::{AckId, AckOutcome, Result, SubscriptionName};

use super::failure::failed_row;
use super::resources::{col, finish_tx};
use super::subscriptions::SubscriptionInfo;
use super::{PostgresStore, db_error, to_micros, ts_column, ts_param};
use crate::embedded::delivery::AckRef;

/// (message, lease) pairs whose ack or deadline change took effect.
type AckSet = HashSet<(i64, i64)>;

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

/// What an ack or a deadline change works on: the subscription, the time, and the (message,
/// lease) pairs of the ack ids that are this subscription's.
struct AckRequest {
    sub: Arc<SubscriptionInfo>,
    now: SystemTime,
    ids: Vec<i64>,
    leases: Vec<i64>,
}

impl PostgresStore {
    /// Reads the subscription and decodes `ack_ids`; `None` when none of them is this
    /// subscription's (every outcome is then `Invalid`, and nothing needs the database).
    async fn ack_request(
        &self,
        name: &SubscriptionName,
        ack_ids: &[AckId],
    ) -> Result<Option<AckRequest>> {
        self.check_open()?;
        let sub = self.subscription_info(name).await?;
        let (ids, leases) = decode_acks(sub.id, ack_ids);
        if ids.is_empty() {
            return Ok(None);
        }
        Ok(Some(AckRequest {
            now: self.clock.now(),
            sub,
            ids,
            leases,
        }))
    }

    /// Acknowledges deliveries: the rows of current leases are deleted (design §3.3).
    pub(super) async fn ack(
        &self,
        name: &SubscriptionName,
        ack_ids: &[AckId],
    ) -> Result<Vec<AckOutcome>> {
        let Some(AckRequest {
            sub,
            now,
            ids,
            leases,
        }) = self.ack_request(name, ack_ids).await?
        else {
            return Ok(vec![AckOutcome::Invalid; ack_ids.len()]);
        };
        let rows = sqlx::query(concat!(
            "DELETE FROM deliveries d USING unnest($2::int8[], $3::int8[]) AS a(msg_id, lease)
              WHERE d.sub_id = $1 AND d.msg_id = ANY($2::int8[]) AND d.msg_id = a.msg_id
               AND d.lease = a.lease AND d.state = 1
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
            applied.insert((col(row, "msg_id")?, col(row, "lease")?));
            frees_a_key |= !col::<String>(row, "ordering_key")?.is_empty();
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
        let Some(AckRequest {
            sub,
            now,
            ids,
            leases,
        }) = self.ack_request(name, ack_ids).await?
        else {
            return Ok(vec![AckOutcome::Invalid; ack_ids.len()]);
        };
        let matching = concat!(
            "d.sub_id = $1 AND d.msg_id = ANY($2::int8[]) AND d.msg_id = a.msg_id
               AND d.lease = a.lease AND d.state = 1
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
                .map(|r| Ok((col(r, "msg_id")?, col(r, "lease")?)))
                .collect::<Result<HashSet<(i64, i64)>>>()?;
            self.touch(sub.id, now).await?;
            return Ok(outcomes(sub.id, ack_ids, &applied));
        }
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let result: Result<(AckSet, Vec<i64>)> = async {
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
                applied.insert((col(row, "msg_id")?, col(row, "lease")?));
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
}
