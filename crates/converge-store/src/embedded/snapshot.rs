//! Snapshots of the engine's state, so that old log segments can be deleted and recovery does
//! not replay the whole history.
//!
//! A snapshot holds everything the log would rebuild *except message payloads*: resources,
//! every kept message's index entry (id, position, publish time, ordering key), each
//! subscription's floor and done set, the idempotency keys, and the Pub/Sub snapshots (the
//! API resource, unrelated to this checkpoint but for the name). Recovery loads the newest
//! snapshot and replays the log from the position recorded in it.
//!
//! A segment can be deleted once (1) no message kept in the snapshot lives in it and (2) it lies
//! entirely before the snapshot's resume position. Both are decided from the state captured
//! with the snapshot, never from later state, so a snapshot never refers to a deleted segment.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use converge_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::delivery::SubscriptionState;
use super::record::{PubSubSnapshotRecord, SubscriptionRecord, TopicRecord, from_ns, to_ns};
use super::state::{State, TopicData, TopicMeta};
use super::topic_log::Entry;
use super::wal::RecordPos;

/// File name of the snapshot in the data directory.
pub const FILE_NAME: &str = "snapshot";
/// Bumped when the format changes incompatibly (3: Pub/Sub snapshots).
const FORMAT_VERSION: u32 = 3;

/// The serialized state.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    version: u32,
    /// Replay the log from here: (segment, offset).
    resume_from: (u64, u64),
    next_message_id: u64,
    next_resource_id: u64,
    topics: Vec<TopicRecord>,
    subscriptions: Vec<SubscriptionSnapshot>,
    logs: Vec<LogSnapshot>,
    /// API documents: (kind, key, value).
    documents: Vec<(String, String, Vec<u8>)>,
    /// Pub/Sub snapshots, by name.
    pubsub_snapshots: Vec<PubSubSnapshotRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SubscriptionSnapshot {
    record: SubscriptionRecord,
    floor: u64,
    done: Vec<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LogSnapshot {
    topic_id: u64,
    deleted: bool,
    retention_ms: Option<u64>,
    dedup_window_ms: u64,
    /// (id, segment, offset, publish time ns, ordering key)
    entries: Vec<(u64, u64, u64, u64, String)>,
    /// (key, message id, publish time ns), oldest first
    dedup: Vec<(String, u64, u64)>,
}

impl Snapshot {
    /// Captures the state; `resume_from` is the journal position of the first record not
    /// reflected in it.
    pub fn capture(state: &State, resume_from: RecordPos) -> Self {
        let topics = state
            .topics
            .values()
            .map(|m| TopicRecord::from_topic(m.id, &m.topic))
            .collect();
        let subscriptions = state
            .subscriptions
            .values()
            .map(|s| {
                let (floor, done) = s.durable_progress();
                SubscriptionSnapshot {
                    record: SubscriptionRecord::from_subscription(
                        s.id,
                        s.log_id,
                        s.start_after,
                        &s.settings,
                    ),
                    floor,
                    done,
                }
            })
            .collect();
        let logs = state
            .logs
            .iter()
            .map(|(&topic_id, data)| LogSnapshot {
                topic_id,
                deleted: data.deleted,
                retention_ms: data.retention.map(|d| d.as_millis() as u64),
                dedup_window_ms: data.dedup_window.as_millis() as u64,
                entries: data
                    .log
                    .iter()
                    .map(|e| {
                        (
                            e.id,
                            e.pos.segment,
                            e.pos.offset,
                            to_ns(e.publish_time),
                            e.ordering_key.to_string(),
                        )
                    })
                    .collect(),
                dedup: data
                    .dedup_order
                    .iter()
                    .filter_map(|(at, key)| {
                        let (id, seen) = data.dedup.get(key)?;
                        (seen == at).then(|| (key.clone(), *id, to_ns(*at)))
                    })
                    .collect(),
            })
            .collect();
        let documents = state
            .documents
            .iter()
            .map(|((kind, key), value)| (kind.clone(), key.clone(), value.clone()))
            .collect();
        let pubsub_snapshots = state
            .pubsub_snapshots
            .values()
            .map(|s| s.record.clone())
            .collect();
        Self {
            documents,
            pubsub_snapshots,
            version: FORMAT_VERSION,
            resume_from: (resume_from.segment, resume_from.offset),
            next_message_id: state.next_message_id,
            next_resource_id: state.next_resource_id,
            topics,
            subscriptions,
            logs,
        }
    }

    /// The journal position of the first record not reflected in the snapshot.
    pub fn resume_from(&self) -> RecordPos {
        RecordPos {
            segment: self.resume_from.0,
            offset: self.resume_from.1,
        }
    }

    /// Encodes for the snapshot file.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("snapshots always serialize")
    }

    /// Decodes a snapshot file.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let snapshot: Self = postcard::from_bytes(bytes)
            .map_err(|e| Error::Internal(format!("undecodable snapshot: {e}")))?;
        if snapshot.version != FORMAT_VERSION {
            return Err(Error::Internal(format!(
                "snapshot format {} is not supported by this version (expects {FORMAT_VERSION})",
                snapshot.version
            )));
        }
        Ok(snapshot)
    }

    /// Rebuilds the state. Leases and attempt counts start empty, as after any restart.
    pub fn restore(self, now: std::time::SystemTime) -> Result<State> {
        let mut state = State {
            documents: self
                .documents
                .into_iter()
                .map(|(kind, key, value)| ((kind, key), value))
                .collect(),
            next_message_id: self.next_message_id,
            next_resource_id: self.next_resource_id,
            ..State::default()
        };
        for log in self.logs {
            let mut data = TopicData {
                retention: log.retention_ms.map(Duration::from_millis),
                dedup_window: Duration::from_millis(log.dedup_window_ms),
                deleted: log.deleted,
                ..TopicData::default()
            };
            let mut keys: HashMap<String, Arc<str>> = HashMap::new();
            for (id, segment, offset, publish_ns, key) in log.entries {
                let ordering_key = keys
                    .entry(key)
                    .or_insert_with_key(|k| Arc::from(k.as_str()))
                    .clone();
                let pos = RecordPos { segment, offset };
                data.log.push(Entry {
                    id,
                    pos,
                    publish_time: from_ns(publish_ns),
                    ordering_key,
                });
                *state.live_per_segment.entry(segment).or_default() += 1;
            }
            for (key, id, at_ns) in log.dedup {
                data.dedup.insert(key.clone(), (id, from_ns(at_ns)));
                data.dedup_order.push_back((from_ns(at_ns), key));
            }
            state.logs.insert(log.topic_id, data);
        }
        for record in self.topics {
            let topic = record.to_topic()?;
            state.topics.insert(
                topic.name.clone(),
                TopicMeta {
                    id: record.topic_id,
                    topic,
                },
            );
        }
        for sub in self.subscriptions {
            let r = sub.record;
            let topic_name = state
                .topics
                .values()
                .find(|m| m.id == r.topic_id)
                .map(|m| m.topic.name.clone());
            let settings = r.to_subscription(topic_name)?;
            let mut s = SubscriptionState::new(
                r.subscription_id,
                settings,
                r.topic_id,
                r.start_after,
                now,
            )?;
            s.restore_progress(sub.floor, sub.done.into_iter().collect::<BTreeSet<_>>());
            let data = state.logs.entry(r.topic_id).or_default();
            if !r.detached {
                data.readers.insert(r.subscription_id);
                if !r.topic_deleted {
                    data.attached.insert(r.subscription_id);
                }
            }
            state
                .subscription_names
                .insert(r.subscription_id, s.settings.name.clone());
            state.subscriptions.insert(s.settings.name.clone(), s);
        }
        for record in self.pubsub_snapshots {
            state.apply_pubsub_snapshot_put(record)?;
        }
        Ok(state)
    }
}
