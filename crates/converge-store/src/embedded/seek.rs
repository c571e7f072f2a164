//! Pub/Sub snapshots and Seek: capturing a subscription's acknowledgement state, and moving a
//! subscription to a captured state or to a point in time.
//!
//! A subscription's acknowledgement state is its floor and the done set above it
//! (`delivery.rs`). A Pub/Sub snapshot is a copy of that pair, taken over the topic log: the
//! messages it marks unacknowledged, and every message published after it, stay in the log until
//! it expires or is deleted (`maintenance::truncate_logs`). A Seek writes the resulting pair as a
//! `Record::Seek`, so recovery rebuilds it without the clock or retention being involved.
//!
//! "Snapshot" here always means the Pub/Sub resource; the engine's own checkpoint lives in
//! `snapshot.rs`.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use converge_core::snapshot::MAX_SNAPSHOT_LIFETIME;
use converge_core::{
    Error, Page, PageRequest, ProjectId, Result, SeekTarget, Snapshot, SnapshotName,
    SubscriptionName, TopicName,
};

use super::Inner;
use super::delivery::SubscriptionState;
use super::record::{PubSubSnapshotRecord, Record};
use super::state::{State, TopicData, already_exists, not_found};

/// A snapshot that would expire sooner than this after its creation is refused, as the real
/// service refuses it (`FAILED_PRECONDITION`): its backlog is too old to be worth keeping.
pub const MIN_SNAPSHOT_LIFETIME: Duration = Duration::from_secs(3600);

/// An acknowledgement state: everything up to the floor is done, and the ids of the set.
type AckState = (u64, BTreeSet<u64>);

/// When a snapshot taken now of a subscription whose oldest unacknowledged message was published
/// at `oldest_unacked` expires: 7 days after that message (the real service's rule), or 7 days
/// from now when nothing is unacknowledged.
pub fn snapshot_expire_time(now: SystemTime, oldest_unacked: Option<SystemTime>) -> SystemTime {
    let from = oldest_unacked.map_or(now, |t| t.min(now));
    from + MAX_SNAPSHOT_LIFETIME
}

/// The acknowledgement state after a Seek to `time`: messages published before it are
/// acknowledged; those published at or after it are unacknowledged if they were, or if an
/// acknowledged copy is still retained for this subscription (`retain_acked_messages` within
/// its retention, or the topic's own retention). Messages published after the Seek are not
/// affected: they arrive unacknowledged as usual.
fn state_at_time(
    sub: &SubscriptionState,
    data: &TopicData,
    time: SystemTime,
    now: SystemTime,
) -> AckState {
    let age = |t: SystemTime| now.duration_since(t).unwrap_or(Duration::ZERO);
    let retained = |id: u64, published: SystemTime| {
        let by_topic = data.retention.is_some_and(|r| age(published) < r);
        let by_subscription = sub.settings.retain_acked_messages
            && id > sub.start_after
            && age(published) < sub.settings.message_retention;
        by_topic || by_subscription
    };
    let acked = data.log.iter().map(|e| {
        let acked = e.publish_time < time || (sub.is_done(e.id) && !retained(e.id, e.publish_time));
        (e.id, acked)
    });
    collapse(acked, sub.floor().max(data.log.last_id().unwrap_or(0)))
}

/// Turns a per-message verdict (id, acknowledged), ascending, into a floor and a done set. The
/// floor lies just below the first unacknowledged message, or at `all_done_floor` when every
/// message is acknowledged.
fn collapse(verdicts: impl Iterator<Item = (u64, bool)>, all_done_floor: u64) -> AckState {
    let mut first_unacked = None;
    let mut done = BTreeSet::new();
    for (id, acked) in verdicts {
        match (acked, first_unacked) {
            (false, None) => first_unacked = Some(id),
            (true, Some(_)) => {
                done.insert(id);
            }
            _ => {}
        }
    }
    match first_unacked {
        Some(id) => (id - 1, done),
        None => (all_done_floor, BTreeSet::new()),
    }
}

/// The real service's words for a subscription without a topic.
fn detached_error(name: &SubscriptionName) -> Error {
    Error::FailedPrecondition(format!(
        "Subscription {name} is detached from its topic or its topic was deleted"
    ))
}

impl Inner {
    /// CreateSnapshot: captures the subscription's acknowledgement state. The snapshot's topic is
    /// the subscription's and its expire time is set here (see [`snapshot_expire_time`]).
    pub(super) async fn create_snapshot(
        &self,
        snapshot: Snapshot,
        subscription: &SubscriptionName,
    ) -> Result<Snapshot> {
        self.write(|state, now| {
            if state.pubsub_snapshots.contains_key(&snapshot.name) {
                return Err(already_exists(&snapshot.name.to_string()));
            }
            let sub = state.subscription(subscription)?;
            let topic = match (&sub.settings.topic, sub.settings.detached) {
                (Some(topic), false) => topic.clone(),
                _ => return Err(detached_error(subscription)),
            };
            let data = state.logs.get(&sub.log_id).ok_or_else(|| {
                Error::Internal(format!("subscription {subscription} reads a missing log"))
            })?;
            let (_, oldest_unacked) = sub.backlog(&data.log);
            let expire_time = snapshot_expire_time(now, oldest_unacked);
            if expire_time < now + MIN_SNAPSHOT_LIFETIME {
                return Err(Error::FailedPrecondition(format!(
                    "The backlog of subscription {subscription} is too old: a snapshot of it \
                     would expire in less than 1 hour"
                )));
            }
            let (floor, done) = sub.durable_progress();
            let created = Snapshot {
                topic,
                expire_time,
                ..snapshot
            };
            let record = PubSubSnapshotRecord::from_snapshot(sub.log_id, floor, done, &created);
            tracing::debug!(snapshot = %created.name, subscription = %subscription, floor, "snapshot created");
            Ok((vec![Record::PubSubSnapshotPut(record)], created))
        })
        .await
    }

    /// GetSnapshot.
    pub(super) fn get_snapshot(&self, name: &SnapshotName) -> Result<Snapshot> {
        let state = self.state.lock();
        state
            .pubsub_snapshots
            .get(name)
            .map(|s| s.snapshot.clone())
            .ok_or_else(|| not_found(&name.to_string()))
    }

    /// UpdateSnapshot: replaces labels, expire time and resource; the captured state and the
    /// topic stay.
    pub(super) async fn update_snapshot(&self, snapshot: Snapshot) -> Result<Snapshot> {
        self.write(|state, _| {
            let existing = state
                .pubsub_snapshots
                .get(&snapshot.name)
                .ok_or_else(|| not_found(&snapshot.name.to_string()))?;
            let updated = Snapshot {
                topic: existing.snapshot.topic.clone(),
                ..snapshot
            };
            let record = PubSubSnapshotRecord::from_snapshot(
                existing.record.topic_id,
                existing.record.floor,
                existing.record.done.clone(),
                &updated,
            );
            Ok((vec![Record::PubSubSnapshotPut(record)], updated))
        })
        .await
    }

    /// ListSnapshots: a project's snapshots by name.
    pub(super) fn list_snapshots(
        &self,
        project: &ProjectId,
        page_request: PageRequest,
    ) -> Result<Page<Snapshot>> {
        let state = self.state.lock();
        let items = state
            .pubsub_snapshots
            .iter()
            .filter(|(name, _)| name.project() == project)
            .map(|(name, s)| (name.clone(), s.snapshot.clone()));
        Ok(super::store_impl::page(items, &page_request))
    }

    /// ListTopicSnapshots: the names of the snapshots of a live topic.
    pub(super) fn list_topic_snapshots(
        &self,
        topic: &TopicName,
        page_request: PageRequest,
    ) -> Result<Page<SnapshotName>> {
        let state = self.state.lock();
        let topic_id = state.topic_id(topic)?;
        let items = state
            .pubsub_snapshots
            .iter()
            .filter(|(_, s)| s.record.topic_id == topic_id)
            .map(|(name, _)| (name.clone(), name.clone()));
        Ok(super::store_impl::page(items, &page_request))
    }

    /// DeleteSnapshot: the messages it held may go.
    pub(super) async fn delete_snapshot(&self, name: &SnapshotName) -> Result<()> {
        self.write(|state, _| {
            if !state.pubsub_snapshots.contains_key(name) {
                return Err(not_found(&name.to_string()));
            }
            let record = Record::PubSubSnapshotDeleted {
                name: name.to_string(),
            };
            Ok((vec![record], ()))
        })
        .await
    }

    /// Seek: moves the subscription's acknowledgement state to a time or a snapshot of the same
    /// topic; outstanding leases are dropped.
    pub(super) async fn seek(
        &self,
        subscription: &SubscriptionName,
        target: SeekTarget,
    ) -> Result<()> {
        self.write(|state, now| {
            let (subscription_id, (floor, done)) = seek_state(state, subscription, &target, now)?;
            tracing::debug!(subscription = %subscription, ?target, floor, done = done.len(), "seek");
            let record = Record::Seek {
                subscription_id,
                floor,
                done: done.into_iter().collect(),
            };
            Ok((vec![record], ()))
        })
        .await
    }
}

/// The subscription's engine id and the acknowledgement state a Seek to `target` gives it.
fn seek_state(
    state: &State,
    subscription: &SubscriptionName,
    target: &SeekTarget,
    now: SystemTime,
) -> Result<(u64, AckState)> {
    let sub = state.subscription(subscription)?;
    if sub.settings.detached {
        return Err(detached_error(subscription));
    }
    let data = state.logs.get(&sub.log_id).ok_or_else(|| {
        Error::Internal(format!("subscription {subscription} reads a missing log"))
    })?;
    let ack_state = match target {
        SeekTarget::Time(time) => state_at_time(sub, data, *time, now),
        SeekTarget::Snapshot(name) => {
            let snapshot = state
                .pubsub_snapshots
                .get(name)
                .filter(|s| s.snapshot.expire_time > now)
                .ok_or_else(|| not_found(&name.to_string()))?;
            if snapshot.record.topic_id != sub.log_id {
                return Err(Error::FailedPrecondition(format!(
                    "The snapshot's topic must be the same as that of the subscription: snapshot \
                     {name} is of topic {}",
                    snapshot.record.topic
                )));
            }
            let floor = snapshot.record.floor;
            let done = snapshot.record.done.iter().copied().collect();
            (floor, done)
        }
    };
    Ok((sub.id, ack_state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_puts_the_floor_below_the_first_unacknowledged_message() {
        let verdicts = [(3, true), (5, true), (8, false), (9, true), (12, false)];
        assert_eq!(collapse(verdicts.into_iter(), 99), (7, BTreeSet::from([9])));
        assert_eq!(
            collapse([(3, true), (5, true)].into_iter(), 40),
            (40, BTreeSet::new())
        );
        assert_eq!(collapse(std::iter::empty(), 6), (6, BTreeSet::new()));
    }

    #[test]
    fn expire_time_follows_the_oldest_unacknowledged_message() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(30 * 24 * 3600);
        assert_eq!(snapshot_expire_time(now, None), now + MAX_SNAPSHOT_LIFETIME);
        let old = now - Duration::from_secs(24 * 3600);
        assert_eq!(
            snapshot_expire_time(now, Some(old)),
            old + MAX_SNAPSHOT_LIFETIME
        );
    }
}
