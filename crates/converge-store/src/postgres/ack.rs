//! Acknowledge and ack-deadline changes on PostgreSQL (design §3.3, §3.4): an ack deletes the
//! row of a current lease; an extension moves its deadline; a nack is a failure (`failure.rs`).
//! An ack id matches only the lease it was issued for (subscription id, message, lease number),
//! and with exactly-once delivery only before its deadline.

use std::collections::{HashMap, HashSet};
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
/// lease) pairs of the ack ids that are this subscription's, in [`passes`].
struct AckRequest {
    sub: Arc<SubscriptionInfo>,
    now: SystemTime,
    passes: Vec<Pass>,
}

/// Parallel arrays of (message, lease) pairs in which every message appears once.
#[derive(Debug, PartialEq)]
struct Pass {
    ids: Vec<i64>,
    leases: Vec<i64>,
}

/// Which rows of `deliveries` (alias `d`) a pass's pairs match: `$1` the subscription, `$2`
/// and `$3` the pass's messages and leases, `$4` exactly-once, `$5` now.
///
/// Why not a join with `unnest($2, $3)`: its generic plan (stale statistics on a table that
/// churns) came out as a nested loop rescanning the array for every candidate row, a
/// thousand squared comparisons per batch of a thousand acks, 100 to 200 ms each, which held a
/// deep backlog's drain to 15k msg/s. Here the rows come from the primary key (`msg_id =
/// ANY`), and each row's lease is looked up at its message's position in the array (the
/// messages of a pass are unique, so the position is the pair's).
const MATCHING: &str = concat!(
    "d.sub_id = $1 AND d.msg_id = ANY($2::int8[])
       AND d.lease = ($3::int8[])[array_position($2::int8[], d.msg_id)] AND d.state = 1
       AND (NOT $4 OR d.due_at > ",
    ts_param!("$5"),
    ")"
);

/// `sql`, a statement on [`MATCHING`], with its five parameters bound for one pass.
fn bind_pass<'q>(
    sql: &'q str,
    sub: &SubscriptionInfo,
    pass: &'q Pass,
    now: SystemTime,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(sub.id)
        .bind(&pass.ids)
        .bind(&pass.leases)
        .bind(sub.settings.exactly_once)
        .bind(to_micros(now))
}

/// Splits (message, lease) pairs into passes with unique messages: one pass unless a message
/// was acknowledged twice in one call (with two ack ids, at most one of which is current);
/// then its later pairs go to later passes. The same pair twice is kept once.
fn passes(ids: Vec<i64>, leases: Vec<i64>) -> Vec<Pass> {
    debug_assert_eq!(ids.len(), leases.len());
    let mut passes: Vec<Pass> = Vec::new();
    let mut seen: HashSet<(i64, i64)> = HashSet::with_capacity(ids.len());
    let mut pass_of: HashMap<i64, usize> = HashMap::with_capacity(ids.len());
    for (id, lease) in ids.into_iter().zip(leases) {
        if !seen.insert((id, lease)) {
            continue;
        }
        let n = pass_of.entry(id).and_modify(|n| *n += 1).or_insert(0);
        if passes.len() <= *n {
            passes.push(Pass {
                ids: Vec::new(),
                leases: Vec::new(),
            });
        }
        passes[*n].ids.push(id);
        passes[*n].leases.push(lease);
    }
    passes
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
            passes: passes(ids, leases),
        }))
    }

    /// Acknowledges deliveries: the rows of current leases are deleted (design §3.3).
    pub(super) async fn ack(
        &self,
        name: &SubscriptionName,
        ack_ids: &[AckId],
    ) -> Result<Vec<AckOutcome>> {
        let Some(AckRequest { sub, now, passes }) = self.ack_request(name, ack_ids).await? else {
            return Ok(vec![AckOutcome::Invalid; ack_ids.len()]);
        };
        let delete = format!(
            "DELETE FROM deliveries d WHERE {MATCHING} RETURNING d.msg_id, d.lease, d.ordering_key"
        );
        let mut rows = Vec::new();
        for pass in &passes {
            rows.extend(
                bind_pass(&delete, &sub, pass, now)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error)?,
            );
        }
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
        let Some(AckRequest { sub, now, passes }) = self.ack_request(name, ack_ids).await? else {
            return Ok(vec![AckOutcome::Invalid; ack_ids.len()]);
        };
        if !deadline.is_zero() {
            let update = format!(
                "UPDATE deliveries d SET due_at = {} + $6::int8 * interval '1 microsecond'
                  WHERE {MATCHING} RETURNING d.msg_id, d.lease",
                ts_param!("$5")
            );
            let mut applied = AckSet::new();
            for pass in &passes {
                let rows = bind_pass(&update, &sub, pass, now)
                    .bind(deadline.as_micros() as i64)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_error)?;
                for r in &rows {
                    applied.insert((col(r, "msg_id")?, col(r, "lease")?));
                }
            }
            self.touch(sub.id, now).await?;
            return Ok(outcomes(sub.id, ack_ids, &applied));
        }
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let result: Result<(AckSet, Vec<i64>)> = async {
            let select = format!(
                "SELECT d.sub_id, d.msg_id, d.lease, d.attempts, {} AS first_attempt
                   FROM deliveries d WHERE {MATCHING}
                    FOR UPDATE OF d",
                ts_column!("d.first_attempt")
            );
            let mut rows = Vec::new();
            for pass in &passes {
                rows.extend(
                    bind_pass(&select, &sub, pass, now)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(db_error)?,
                );
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One pass while messages are unique; a message acknowledged twice with two leases puts
    /// its second pair in a second pass (each pass matches a row at most once); the same pair
    /// twice counts once.
    #[test]
    fn passes_keep_messages_unique() {
        assert_eq!(
            passes(vec![1, 2, 3], vec![10, 20, 30]),
            [Pass {
                ids: vec![1, 2, 3],
                leases: vec![10, 20, 30]
            }]
        );
        assert_eq!(
            passes(vec![1, 2, 1, 1, 2], vec![10, 20, 11, 10, 20]),
            [
                Pass {
                    ids: vec![1, 2],
                    leases: vec![10, 20]
                },
                Pass {
                    ids: vec![1],
                    leases: vec![11]
                }
            ]
        );
        assert!(passes(Vec::new(), Vec::new()).is_empty());
    }
}
