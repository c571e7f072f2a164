//! Seek on PostgreSQL (design §4): to a snapshot or to a time.
//!
//! The embedded engine replaces a subscription's acknowledgement state (floor and done set) and
//! lets delivery find the unacknowledged messages again. Here the state is the cursor and the
//! `deliveries` rows (a message at or below the cursor is done unless it has a row), so a Seek
//! computes the messages at or below the resulting cursor that are unacknowledged afterwards and
//! writes them as fresh waiting rows; messages above the cursor are materialised lazily, as
//! after any publish. Everything happens in one transaction holding the cursor row, so no
//! materialisation interleaves, and like the embedded Seek it drops leases, retry timers,
//! attempt counts and ordering holds.

use std::collections::HashMap;
use std::time::SystemTime;

use converge_core::filter::Filter;
use converge_core::{Error, Result, SeekTarget, SubscriptionName};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Transaction};

use super::resources::{col, decode, detached_error, finish_tx};
use super::{PostgresStore, db_error, to_micros, ts_param};
use crate::embedded::delivery::parse_filter;
use crate::embedded::record::{PubSubSnapshotRecord, SubscriptionRecord};
use crate::embedded::state::not_found;

/// Rows written (or ids sent) per statement when a Seek materialises a large range.
const CHUNK: usize = 10_000;

/// What a Seek needs to know about the subscription, read under its cursor lock.
struct Seeker {
    sub_id: i64,
    topic_id: i64,
    start_after: i64,
    cursor: i64,
    record: SubscriptionRecord,
}

/// The microsecond bound above which a publish time counts as retained for `retention_ms`:
/// a message is retained while its age is below the retention (`publish_time > now - r`).
fn retained_after(now_us: i64, retention_ms: u64) -> i64 {
    now_us.saturating_sub((retention_ms as i64).saturating_mul(1000))
}

impl PostgresStore {
    /// Moves a subscription to a time or a snapshot.
    ///
    /// To a snapshot of its topic: exactly the messages the snapshot marked unacknowledged (and
    /// those published after it) are unacknowledged. To a time `T`: messages published before
    /// `T` are acknowledged; later ones are unacknowledged if they were, or if an acknowledged
    /// copy is retained (`retain_acked_messages` within the subscription's retention, or the
    /// topic's retention), as the embedded `state_at_time` decides.
    pub(super) async fn seek_subscription(
        &self,
        subscription: &SubscriptionName,
        target: SeekTarget,
    ) -> Result<()> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let result = self.seek_in(&mut tx, subscription, &target, now).await;
        let sub_id = finish_tx(tx, result).await?;
        self.wake_subscription(sub_id).await
    }

    async fn seek_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        subscription: &SubscriptionName,
        target: &SeekTarget,
        now: SystemTime,
    ) -> Result<i64> {
        let row = sqlx::query(
            "SELECT s.id, s.topic_id, s.detached, s.start_after, s.settings, c.cursor
               FROM subscriptions s JOIN sub_cursors c ON c.sub_id = s.id
              WHERE s.name = $1 FOR UPDATE OF c",
        )
        .bind(subscription.to_string())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?
        .ok_or_else(|| not_found(&subscription.to_string()))?;
        let topic_id = match (
            col::<Option<i64>>(&row, "topic_id")?,
            col(&row, "detached")?,
        ) {
            (Some(topic_id), false) => topic_id,
            _ => return Err(detached_error(subscription)),
        };
        let seeker = Seeker {
            sub_id: col(&row, "id")?,
            topic_id,
            start_after: col(&row, "start_after")?,
            cursor: col(&row, "cursor")?,
            record: decode(&col::<Vec<u8>>(&row, "settings")?, "subscription")?,
        };
        let (cursor, unacked) = match target {
            SeekTarget::Snapshot(name) => self.snapshot_state(tx, &seeker, name, now).await?,
            SeekTarget::Time(time) => self.time_state(tx, &seeker, *time, now).await?,
        };
        let filter = parse_filter(&seeker.record.filter)?;
        let unacked = match &filter {
            None => unacked.into_iter().map(|(id, _)| id).collect(),
            Some(filter) => passing(filter, unacked)?,
        };
        sqlx::query("DELETE FROM deliveries WHERE sub_id = $1")
            .bind(seeker.sub_id)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
        for ids in unacked.chunks(CHUNK) {
            sqlx::query(concat!(
                "INSERT INTO deliveries (sub_id, msg_id, ordering_key, publish_time, state, due_at)
                 SELECT $1, m.id, CASE WHEN $5 THEN m.ordering_key ELSE '' END,
                        m.publish_time, 0, ",
                ts_param!("$3"),
                " FROM messages m WHERE m.topic_id = $2 AND m.id = ANY ($4)"
            ))
            .bind(seeker.sub_id)
            .bind(seeker.topic_id)
            .bind(to_micros(now))
            .bind(ids)
            // As materialisation does: without ordering, keys hold nothing back.
            .bind(seeker.record.enable_message_ordering)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
        }
        sqlx::query("UPDATE sub_cursors SET cursor = $2 WHERE sub_id = $1")
            .bind(seeker.sub_id)
            .bind(cursor)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
        tracing::debug!(
            subscription = %subscription, ?target, cursor, unacked = unacked.len(), "seek"
        );
        Ok(seeker.sub_id)
    }

    /// The cursor and the unacknowledged messages at or below it after a Seek to snapshot
    /// `name`: the snapshot's cursor and its `undone` ids still in the log. The snapshot must
    /// be live and of the subscription's topic; it is read `FOR SHARE`, so it cannot be
    /// deleted (and the log below its floor truncated) before this Seek commits.
    async fn snapshot_state(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        seeker: &Seeker,
        name: &converge_core::SnapshotName,
        now: SystemTime,
    ) -> Result<(i64, Vec<(i64, Option<Attributes>)>)> {
        let snapshot = sqlx::query(concat!(
            "SELECT topic_id, cursor, undone, settings FROM snapshots
              WHERE name = $1 AND expire_time > ",
            ts_param!("$2"),
            " FOR SHARE"
        ))
        .bind(name.to_string())
        .bind(to_micros(now))
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?
        .ok_or_else(|| not_found(&name.to_string()))?;
        if col::<i64>(&snapshot, "topic_id")? != seeker.topic_id {
            let record: PubSubSnapshotRecord =
                decode(&col::<Vec<u8>>(&snapshot, "settings")?, "snapshot")?;
            return Err(Error::FailedPrecondition(format!(
                "The snapshot's topic must be the same as that of the subscription: snapshot \
                 {name} is of topic {}",
                record.topic
            )));
        }
        let cursor: i64 = col(&snapshot, "cursor")?;
        let undone: Vec<i64> = col(&snapshot, "undone")?;
        let rows = sqlx::query(
            "SELECT id, attributes FROM messages WHERE topic_id = $1 AND id = ANY ($2)
              ORDER BY id",
        )
        .bind(seeker.topic_id)
        .bind(&undone)
        .fetch_all(&mut **tx)
        .await
        .map_err(db_error)?;
        Ok((cursor, candidates(&rows, seeker)?))
    }

    /// The cursor and the unacknowledged messages at or below it after a Seek to `time`.
    ///
    /// With `c'` the last message published before `time`, everything up to `c'` is done (the
    /// cursor moves up to `c'` if it is behind, so that messages not yet looked at but published
    /// before `time` are acknowledged too). Of the messages in `(c', cursor]`, those with a row
    /// stay unacknowledged, and done ones come back only while retained.
    async fn time_state(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        seeker: &Seeker,
        time: SystemTime,
        now: SystemTime,
    ) -> Result<(i64, Vec<(i64, Option<Attributes>)>)> {
        let before = sqlx::query(concat!(
            "SELECT id FROM messages WHERE topic_id = $1 AND publish_time < ",
            ts_param!("$2"),
            " ORDER BY id DESC LIMIT 1"
        ))
        .bind(seeker.topic_id)
        .bind(to_micros(time))
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?;
        let acked_upto = match before {
            Some(row) => col::<i64>(&row, "id")?,
            None => 0,
        };
        let now_us = to_micros(now);
        let topic_retention: Option<i64> =
            sqlx::query_scalar("SELECT retention_ms FROM topics WHERE id = $1")
                .bind(seeker.topic_id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db_error)?
                .flatten();
        let by_topic = topic_retention.map(|r| retained_after(now_us, r.max(0) as u64));
        let by_subscription = seeker
            .record
            .retain_acked_messages
            .then(|| retained_after(now_us, seeker.record.retention_ms));
        let rows = sqlx::query(concat!(
            "SELECT m.id, m.attributes FROM messages m
              WHERE m.topic_id = $1 AND m.id > $2 AND m.id <= $3
                AND (EXISTS (SELECT 1 FROM deliveries d WHERE d.sub_id = $4 AND d.msg_id = m.id)
                     OR m.publish_time > ",
            ts_param!("$5"),
            " OR (m.id > $7 AND m.publish_time > ",
            ts_param!("$6"),
            ")) ORDER BY m.id"
        ))
        .bind(seeker.topic_id)
        .bind(acked_upto)
        .bind(seeker.cursor)
        .bind(seeker.sub_id)
        .bind(by_topic)
        .bind(by_subscription)
        .bind(seeker.start_after)
        .fetch_all(&mut **tx)
        .await
        .map_err(db_error)?;
        Ok((seeker.cursor.max(acked_upto), candidates(&rows, seeker)?))
    }
}

/// Message attributes as stored (`jsonb` object of strings).
type Attributes = HashMap<String, String>;

/// The ids of `rows` (`id`, `attributes`), with their attributes when the subscription has a
/// filter to judge them by (otherwise the attributes are not decoded).
fn candidates(rows: &[PgRow], seeker: &Seeker) -> Result<Vec<(i64, Option<Attributes>)>> {
    let filtered = !seeker.record.filter.is_empty();
    rows.iter()
        .map(|row| {
            let id: i64 = col(row, "id")?;
            let attributes = if filtered {
                let sqlx::types::Json(a) = col::<sqlx::types::Json<Attributes>>(row, "attributes")?;
                Some(a)
            } else {
                None
            };
            Ok((id, attributes))
        })
        .collect()
}

/// The ids the filter lets through: a Seek makes messages unacknowledged, and the filter judges
/// them again, as in the embedded engine (a rejected message is done at once).
fn passing(filter: &Filter, candidates: Vec<(i64, Option<Attributes>)>) -> Result<Vec<i64>> {
    candidates
        .into_iter()
        .filter_map(|(id, attributes)| match attributes {
            Some(a) => filter.matches(&a).then_some(Ok(id)),
            None => Some(Err(Error::Internal(format!(
                "message {id}: attributes not read for a filtered subscription"
            )))),
        })
        .collect()
}

/// Seek details the conformance scenarios do not reach: the filter judges what a Seek brings
/// back, keys hold nothing back without ordering, and a Seek to a time acknowledges messages
/// the subscription never looked at.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use converge_core::{Clock as _, Error, SeekTarget, Store as _, Subscription};

    use super::super::retention::tests::Scratch;
    use crate::conformance::support::{
        data, msg, msg_with, pubsub_snapshot, pull_and_ack, pull_now, snapshot_name, sub_name,
        subscription, topic, topic_name,
    };

    /// A filtered subscription that retains acknowledged messages gets back, after a Seek, only
    /// what its filter accepts: the messages it rejected are retained in the log too, but the
    /// filter judges them again, as in the embedded engine. The same holds for a snapshot
    /// taken from an unfiltered subscription of the topic.
    #[tokio::test]
    async fn the_filter_judges_again_what_a_seek_brings_back() {
        let x = Scratch::new().await;
        let s = &x.store;
        s.create_topic(topic("top")).await.unwrap();
        let eu = Subscription {
            retain_acked_messages: true,
            filter: r#"attributes.region = "eu""#.into(),
            ..subscription("sub-eu", "top")
        };
        s.create_subscription(eu).await.unwrap();
        s.create_subscription(subscription("all", "top"))
            .await
            .unwrap();
        let before = x.clock.now();
        x.clock.advance(Duration::from_secs(1));
        s.publish(
            &topic_name("top"),
            vec![
                msg_with("us", &[("region", "us")], ""),
                msg_with("eu", &[("region", "eu")], ""),
            ],
        )
        .await
        .unwrap();
        assert_eq!(pull_and_ack(s, "sub-eu", &["eu"]).await, ["eu"]);
        s.seek(&sub_name("sub-eu"), SeekTarget::Time(before))
            .await
            .unwrap();
        assert_eq!(data(&pull_now(s, "sub-eu").await), ["eu"]);

        // A snapshot of the unfiltered subscription, which leased both, marks both
        // unacknowledged (as rows, which the Seek writes back).
        assert_eq!(data(&pull_now(s, "all").await), ["us", "eu"]);
        s.create_snapshot(pubsub_snapshot("both"), &sub_name("all"))
            .await
            .unwrap();
        s.seek(
            &sub_name("sub-eu"),
            SeekTarget::Snapshot(snapshot_name("both")),
        )
        .await
        .unwrap();
        assert_eq!(data(&pull_now(s, "sub-eu").await), ["eu"]);
        x.finish().await;
    }

    /// Without message ordering, messages of one ordering key that a Seek brings back are all
    /// deliverable at once (an ordering key only holds messages back when ordering is on).
    #[tokio::test]
    async fn without_ordering_a_seek_holds_nothing_back_behind_a_key() {
        let x = Scratch::new().await;
        let s = &x.store;
        s.create_topic(topic("top")).await.unwrap();
        let keep = Subscription {
            retain_acked_messages: true,
            ..subscription("keep", "top")
        };
        s.create_subscription(keep).await.unwrap();
        let before = x.clock.now();
        x.clock.advance(Duration::from_secs(1));
        s.publish(
            &topic_name("top"),
            vec![msg_with("k1", &[], "k"), msg_with("k2", &[], "k")],
        )
        .await
        .unwrap();
        assert_eq!(pull_and_ack(s, "keep", &["k1", "k2"]).await, ["k1", "k2"]);
        s.seek(&sub_name("keep"), SeekTarget::Time(before))
            .await
            .unwrap();
        assert_eq!(data(&pull_now(s, "keep").await), ["k1", "k2"]);
        x.finish().await;
    }

    /// A Seek to a time acknowledges what was published before it even where the subscription
    /// never looked (its cursor moves), and leaves later unread messages unacknowledged.
    #[tokio::test]
    async fn a_seek_to_a_time_acknowledges_unread_messages_published_before_it() {
        let x = Scratch::new().await;
        let s = &x.store;
        s.create_topic(topic("top")).await.unwrap();
        s.create_subscription(subscription("sub", "top"))
            .await
            .unwrap();
        s.publish(&topic_name("top"), vec![msg("a"), msg("b")])
            .await
            .unwrap();
        x.clock.advance(Duration::from_secs(5));
        let middle = x.clock.now();
        s.publish(&topic_name("top"), vec![msg("c")]).await.unwrap();
        s.seek(&sub_name("sub"), SeekTarget::Time(middle))
            .await
            .unwrap();
        assert_eq!(x.stats_of("sub").await, (1, Duration::ZERO));
        assert_eq!(data(&pull_now(s, "sub").await), ["c"]);
        x.finish().await;
    }
    /// A snapshot past its expire time cannot be sought to, even before maintenance deletes
    /// it (`NOT_FOUND`, as the embedded engine says), and a detached subscription cannot seek
    /// at all (`FAILED_PRECONDITION`).
    #[tokio::test]
    async fn expired_snapshots_and_detached_subscriptions_are_refused() {
        let x = Scratch::new().await;
        let s = &x.store;
        s.create_topic(topic("top")).await.unwrap();
        s.create_subscription(subscription("sub", "top"))
            .await
            .unwrap();
        let snap = s
            .create_snapshot(pubsub_snapshot("snap"), &sub_name("sub"))
            .await
            .unwrap();
        s.seek(
            &sub_name("sub"),
            SeekTarget::Snapshot(snapshot_name("snap")),
        )
        .await
        .unwrap();
        let left = snap.expire_time.duration_since(x.clock.now()).unwrap();
        x.clock.advance(left);
        let err = s
            .seek(
                &sub_name("sub"),
                SeekTarget::Snapshot(snapshot_name("snap")),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        assert!(
            s.get_snapshot(&snapshot_name("snap")).await.is_ok(),
            "not yet swept"
        );

        s.detach_subscription(&sub_name("sub")).await.unwrap();
        let err = s
            .seek(&sub_name("sub"), SeekTarget::Time(x.clock.now()))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        x.finish().await;
    }
}
