//! The engine's whole in-memory state, and how each log record changes it.
//!
//! Live operations and recovery share [`State::apply`]: an operation builds records, appends
//! them to the journal and applies them; opening the store applies the same records in log
//! order. So the state after a restart is, by construction, the state before it, minus what is
//! deliberately not persisted (leases and attempt counts).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use converge_core::message::IDEMPOTENCY_KEY_ATTRIBUTE;
use converge_core::{Error, Result, SnapshotName, SubscriptionName, Topic, TopicName};

use super::delivery::SubscriptionState;
use super::record::{
    MessageRecord, PubSubSnapshotRecord, Record, SubscriptionRecord, TopicRecord, from_ns,
};
use super::topic_log::{Entry, TopicLog};
use super::wal::RecordPos;

/// A live topic.
#[derive(Debug)]
pub struct TopicMeta {
    /// Engine id.
    pub id: u64,
    /// Settings.
    pub topic: Topic,
}

/// A topic's messages and who reads them. Outlives the topic while subscriptions read it.
#[derive(Debug, Default)]
pub struct TopicData {
    /// The messages.
    pub log: TopicLog,
    /// Subscriptions that receive new messages (attached ones).
    pub attached: BTreeSet<u64>,
    /// Every subscription that reads this log (attached or detached): they hold messages back.
    pub readers: BTreeSet<u64>,
    /// Idempotency key -> (message id, publish time).
    pub dedup: HashMap<String, (u64, SystemTime)>,
    /// Keys by publish time, to expire them.
    pub dedup_order: VecDeque<(SystemTime, String)>,
    /// Settings that apply to the log (copied from the topic, kept after it is deleted).
    pub retention: Option<Duration>,
    /// Deduplication window.
    pub dedup_window: Duration,
    /// The topic has been deleted.
    pub deleted: bool,
}

/// A live Pub/Sub snapshot (not the engine checkpoint of `snapshot.rs`): which messages of a
/// topic log were acknowledged when it was taken. Messages above `floor` stay in the log while
/// it lives, so that a Seek to it can deliver them again.
#[derive(Debug, Clone)]
pub struct PubSubSnapshot {
    /// What the log holds about it (also what the checkpoint saves).
    pub record: PubSubSnapshotRecord,
    /// The snapshot as the `Store` trait shows it.
    pub snapshot: converge_core::Snapshot,
}

/// Everything the engine knows.
#[derive(Debug, Default)]
pub struct State {
    /// Live topics by name.
    pub topics: BTreeMap<TopicName, TopicMeta>,
    /// Topic logs by engine id.
    pub logs: HashMap<u64, TopicData>,
    /// Subscriptions by name.
    pub subscriptions: BTreeMap<SubscriptionName, SubscriptionState>,
    /// Subscription names by engine id.
    pub subscription_names: HashMap<u64, SubscriptionName>,
    /// Next message id.
    pub next_message_id: u64,
    /// Next engine id for topics and subscriptions.
    pub next_resource_id: u64,
    /// Live messages per journal segment, to know when a segment can go.
    pub live_per_segment: BTreeMap<u64, u64>,
    /// API documents by (kind, key).
    pub documents: BTreeMap<(String, String), Vec<u8>>,
    /// Pub/Sub snapshots by name.
    pub pubsub_snapshots: BTreeMap<SnapshotName, PubSubSnapshot>,
}

impl State {
    /// A fresh engine id.
    pub fn allocate_id(&mut self) -> u64 {
        self.next_resource_id += 1;
        self.next_resource_id
    }

    /// Applies one record at its journal position. `now` is used only for in-memory timers.
    pub fn apply(&mut self, record: Record, pos: RecordPos, now: SystemTime) -> Result<()> {
        match record {
            Record::TopicPut(t) => self.apply_topic_put(t),
            Record::TopicDeleted { topic_id } => {
                self.topics.retain(|_, meta| meta.id != topic_id);
                if let Some(data) = self.logs.get_mut(&topic_id) {
                    data.deleted = true;
                    data.attached.clear();
                }
                for sub in self
                    .subscriptions
                    .values_mut()
                    .filter(|s| s.log_id == topic_id)
                {
                    sub.settings.topic = None;
                }
                self.drop_log_if_unused(topic_id);
                Ok(())
            }
            Record::SubscriptionPut(s) => self.apply_subscription_put(s, now),
            Record::SubscriptionDeleted { subscription_id } => {
                let Some(name) = self.subscription_names.remove(&subscription_id) else {
                    return Ok(());
                };
                if let Some(sub) = self.subscriptions.remove(&name) {
                    sub.notify.notify_waiters();
                    if let Some(data) = self.logs.get_mut(&sub.log_id) {
                        data.attached.remove(&subscription_id);
                        data.readers.remove(&subscription_id);
                    }
                    self.drop_log_if_unused(sub.log_id);
                }
                Ok(())
            }
            Record::SubscriptionDetached {
                subscription_id,
                upto,
            } => {
                let Some(name) = self.subscription_names.get(&subscription_id) else {
                    return Ok(());
                };
                if let Some(sub) = self.subscriptions.get_mut(name) {
                    sub.settings.detached = true;
                    sub.clear(upto);
                    sub.notify.notify_waiters();
                    // A detached subscription reads nothing more: it must not hold the log back.
                    if let Some(data) = self.logs.get_mut(&sub.log_id) {
                        data.attached.remove(&subscription_id);
                        data.readers.remove(&subscription_id);
                    }
                }
                Ok(())
            }
            Record::Message(m) => self.apply_message(m, pos),
            Record::Done {
                subscription_id,
                ids,
            } => {
                if let Some((sub, data)) = self.subscription_by_id_mut(subscription_id) {
                    for id in ids {
                        sub.complete(&data.log, id, now);
                    }
                }
                Ok(())
            }
            Record::Probe => Ok(()),
            Record::DocumentPut { kind, key, value } => {
                self.documents.insert((kind, key), value);
                Ok(())
            }
            Record::DocumentDeleted { kind, key } => {
                self.documents.remove(&(kind, key));
                Ok(())
            }
            Record::PubSubSnapshotPut(record) => self.apply_pubsub_snapshot_put(record),
            Record::PubSubSnapshotDeleted { name } => {
                self.pubsub_snapshots.remove(&SnapshotName::parse(&name)?);
                Ok(())
            }
            Record::Seek {
                subscription_id,
                floor,
                done,
            } => {
                if let Some((sub, data)) = self.subscription_by_id_mut(subscription_id) {
                    sub.seek_to(&data.log, floor, done.into_iter().collect());
                    sub.notify.notify_waiters();
                }
                Ok(())
            }
        }
    }

    /// Stores (or replaces) a Pub/Sub snapshot.
    pub fn apply_pubsub_snapshot_put(&mut self, record: PubSubSnapshotRecord) -> Result<()> {
        let snapshot = record.to_snapshot()?;
        self.pubsub_snapshots
            .insert(snapshot.name.clone(), PubSubSnapshot { record, snapshot });
        Ok(())
    }

    fn apply_topic_put(&mut self, t: TopicRecord) -> Result<()> {
        let topic = t.to_topic()?;
        let data = self.logs.entry(t.topic_id).or_default();
        data.retention = topic.message_retention;
        data.dedup_window = topic.dedup_window;
        self.next_resource_id = self.next_resource_id.max(t.topic_id);
        self.topics.insert(
            topic.name.clone(),
            TopicMeta {
                id: t.topic_id,
                topic,
            },
        );
        Ok(())
    }

    fn apply_subscription_put(&mut self, s: SubscriptionRecord, now: SystemTime) -> Result<()> {
        let topic_name = self
            .topics
            .values()
            .find(|m| m.id == s.topic_id)
            .map(|m| m.topic.name.clone());
        let settings = s.to_subscription(topic_name)?;
        self.next_resource_id = self.next_resource_id.max(s.subscription_id);
        let name = settings.name.clone();
        match self.subscriptions.get_mut(&name) {
            Some(existing) if existing.id == s.subscription_id => existing.update(settings),
            _ => {
                let state = SubscriptionState::new(
                    s.subscription_id,
                    settings,
                    s.topic_id,
                    s.start_after,
                    now,
                )?;
                self.subscription_names
                    .insert(s.subscription_id, name.clone());
                self.subscriptions.insert(name, state);
            }
        }
        let data = self.logs.entry(s.topic_id).or_default();
        if !s.detached {
            data.readers.insert(s.subscription_id);
            if !s.topic_deleted {
                data.attached.insert(s.subscription_id);
            }
        }
        Ok(())
    }

    fn apply_message(&mut self, m: MessageRecord, pos: RecordPos) -> Result<()> {
        self.next_message_id = self.next_message_id.max(m.id + 1);
        let Some(data) = self.logs.get_mut(&m.topic_id) else {
            return Err(Error::Internal(format!(
                "message {} for unknown topic {}",
                m.id, m.topic_id
            )));
        };
        let publish_time = from_ns(m.publish_time_ns);
        if let Some((_, key)) = m
            .attributes
            .iter()
            .find(|(k, v)| k == IDEMPOTENCY_KEY_ATTRIBUTE && !v.is_empty())
        {
            data.dedup.insert(key.clone(), (m.id, publish_time));
            data.dedup_order.push_back((publish_time, key.clone()));
        }
        data.log.push(Entry {
            id: m.id,
            pos,
            publish_time,
            ordering_key: Arc::from(m.ordering_key.as_str()),
        });
        *self.live_per_segment.entry(pos.segment).or_default() += 1;
        Ok(())
    }

    /// Forgets a deleted topic's log once no subscription reads it.
    fn drop_log_if_unused(&mut self, topic_id: u64) {
        let unused = self
            .logs
            .get(&topic_id)
            .is_some_and(|d| d.deleted && d.readers.is_empty());
        if !unused {
            return;
        }
        if let Some(data) = self.logs.remove(&topic_id) {
            for entry in data.log.iter() {
                release_segment(&mut self.live_per_segment, entry.pos.segment);
            }
        }
    }

    /// A subscription by engine id, with the log it reads (split borrows for delivery work);
    /// `None` when either is gone (a record may outlive what it names).
    fn subscription_by_id_mut(&mut self, id: u64) -> Option<(&mut SubscriptionState, &TopicData)> {
        let name = self.subscription_names.get(&id)?;
        let sub = self.subscriptions.get_mut(name)?;
        let data = self.logs.get(&sub.log_id)?;
        Some((sub, data))
    }

    /// The engine id of a live topic.
    pub fn topic_id(&self, name: &TopicName) -> Result<u64> {
        self.topics
            .get(name)
            .map(|m| m.id)
            .ok_or_else(|| not_found(&name.to_string()))
    }

    /// A subscription's state.
    pub fn subscription(&self, name: &SubscriptionName) -> Result<&SubscriptionState> {
        self.subscriptions
            .get(name)
            .ok_or_else(|| not_found(&name.to_string()))
    }

    /// The log id and state of a subscription, split borrows for delivery work.
    pub fn subscription_mut(
        &mut self,
        name: &SubscriptionName,
    ) -> Result<(&mut SubscriptionState, &TopicData)> {
        let sub = self
            .subscriptions
            .get_mut(name)
            .ok_or_else(|| not_found(&name.to_string()))?;
        let data = self
            .logs
            .get(&sub.log_id)
            .ok_or_else(|| Error::Internal(format!("subscription {name} reads a missing log")))?;
        Ok((sub, data))
    }
}

/// Counts one message fewer in a segment.
pub fn release_segment(live: &mut BTreeMap<u64, u64>, segment: u64) {
    if let Some(n) = live.get_mut(&segment) {
        *n -= 1;
        if *n == 0 {
            live.remove(&segment);
        }
    }
}

/// The real service's wording for a missing resource.
pub fn not_found(name: &str) -> Error {
    Error::NotFound(format!("Resource not found (resource={name})."))
}

/// The real service's wording for a name that is taken.
pub fn already_exists(name: &str) -> Error {
    Error::AlreadyExists(format!(
        "Resource already exists in the project (resource={name})."
    ))
}
