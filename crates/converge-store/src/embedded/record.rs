//! What the embedded engine writes to its log, and the conversions to and from domain types.
//!
//! These types are the on-disk format. They are kept apart from the domain types on purpose:
//! a change to `converge_core` must not silently change what old data directories mean. Every
//! change here needs a new variant or a format version bump.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use converge_core::retry::RetrySchedule;
use converge_core::{
    DeadLetterPolicy, Error, NewMessage, Result, Snapshot, SnapshotName, StoredMessage,
    Subscription, SubscriptionName, Topic, TopicName,
};
use serde::{Deserialize, Serialize};

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A topic was created or its settings replaced.
    TopicPut(TopicRecord),
    /// A topic was deleted. Its messages stay while subscriptions still read them.
    TopicDeleted {
        /// Engine id of the topic.
        topic_id: u64,
    },
    /// A subscription was created or its settings replaced.
    SubscriptionPut(SubscriptionRecord),
    /// A subscription was deleted.
    SubscriptionDeleted {
        /// Engine id of the subscription.
        subscription_id: u64,
    },
    /// A subscription was detached from its topic: its backlog is gone.
    SubscriptionDetached {
        /// Engine id of the subscription.
        subscription_id: u64,
        /// The last message id of the topic when it was detached.
        upto: u64,
    },
    /// A published message.
    Message(MessageRecord),
    /// Messages a subscription is done with (acknowledged, dead-lettered or given up).
    Done {
        /// Engine id of the subscription.
        subscription_id: u64,
        /// Message ids.
        ids: Vec<u64>,
    },
    /// Written by readiness probes to prove the log accepts a durable write.
    Probe,
    /// An API document (IAM policy, schema revision) was stored or replaced.
    DocumentPut {
        /// Kind of document.
        kind: String,
        /// Key within the kind.
        key: String,
        /// The document.
        value: Vec<u8>,
    },
    /// An API document was deleted.
    DocumentDeleted {
        /// Kind of document.
        kind: String,
        /// Key within the kind.
        key: String,
    },
    /// A Pub/Sub snapshot was created, or its labels or expire time replaced.
    PubSubSnapshotPut(PubSubSnapshotRecord),
    /// A Pub/Sub snapshot was deleted (by a client or because it expired).
    PubSubSnapshotDeleted {
        /// Full name of the snapshot.
        name: String,
    },
    /// A Seek moved a subscription's acknowledgement state: afterwards exactly the messages
    /// with ids up to `floor`, and those in `done`, count as acknowledged.
    ///
    /// The resulting state is written rather than the seek's target, so that replaying the
    /// record never depends on the clock or on what retention had dropped at the time.
    Seek {
        /// Engine id of the subscription.
        subscription_id: u64,
        /// Every message with an id up to here is acknowledged.
        floor: u64,
        /// Acknowledged messages above the floor.
        done: Vec<u64>,
    },
}

impl Record {
    /// Encodes for the log.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("log records always serialize")
    }

    /// Decodes a record read from the log.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        postcard::from_bytes(bytes)
            .map_err(|e| Error::Internal(format!("undecodable log record: {e}")))
    }
}

/// A topic's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// Engine id, stable for the life of the topic.
    pub topic_id: u64,
    /// Full name.
    pub name: String,
    /// Labels.
    pub labels: Vec<(String, String)>,
    /// Retention of acknowledged messages, in milliseconds.
    pub retention_ms: Option<u64>,
    /// Deduplication window, in milliseconds.
    pub dedup_window_ms: u64,
    /// The API layer's encoding of the resource.
    pub resource: Vec<u8>,
}

/// A subscription's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    /// Engine id, stable for the life of the subscription.
    pub subscription_id: u64,
    /// Full name.
    pub name: String,
    /// Engine id of the topic whose messages it reads (kept after the topic is deleted).
    pub topic_id: u64,
    /// Whether the topic has been deleted.
    pub topic_deleted: bool,
    /// The subscription receives messages with ids above this.
    pub start_after: u64,
    /// Ack deadline, milliseconds.
    pub ack_deadline_ms: u64,
    /// Keep acknowledged messages.
    pub retain_acked_messages: bool,
    /// Retention of unacknowledged messages, milliseconds.
    pub retention_ms: u64,
    /// Ordered delivery per ordering key.
    pub enable_message_ordering: bool,
    /// Exactly-once delivery.
    pub exactly_once: bool,
    /// Filter text.
    pub filter: String,
    /// Dead-letter topic and attempts.
    pub dead_letter: Option<(String, u32)>,
    /// Retry schedule.
    pub retry: Option<RetryRecord>,
    /// Expiration TTL, milliseconds.
    pub expiration_ttl_ms: Option<u64>,
    /// Detached.
    pub detached: bool,
    /// Labels.
    pub labels: Vec<(String, String)>,
    /// Creation time, nanoseconds since the epoch.
    pub created_ns: u64,
    /// The API layer's encoding of the resource.
    pub resource: Vec<u8>,
}

/// A retry schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryRecord {
    /// Immediate retries.
    pub immediate_retries: u32,
    /// Fixed-interval retries.
    pub fixed_retries: u32,
    /// Fixed interval, milliseconds.
    pub fixed_interval_ms: u64,
    /// Minimum backoff, milliseconds.
    pub minimum_backoff_ms: u64,
    /// Maximum backoff, milliseconds.
    pub maximum_backoff_ms: u64,
    /// Maximum retry duration, milliseconds.
    pub max_retry_duration_ms: Option<u64>,
}

/// A Pub/Sub snapshot: the acknowledgement state of a subscription at its creation.
///
/// Named "Pub/Sub snapshot" to keep it apart from the engine's own checkpoint (`snapshot.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PubSubSnapshotRecord {
    /// Full name.
    pub name: String,
    /// Engine id of the topic log whose messages it marks.
    pub topic_id: u64,
    /// Full name of that topic.
    pub topic: String,
    /// Every message with an id up to here was acknowledged.
    pub floor: u64,
    /// Acknowledged messages above the floor, ascending.
    pub done: Vec<u64>,
    /// When it expires, nanoseconds since the epoch.
    pub expire_time_ns: u64,
    /// Labels.
    pub labels: Vec<(String, String)>,
    /// The API layer's encoding of the resource.
    pub resource: Vec<u8>,
}

impl PubSubSnapshotRecord {
    /// The record of a snapshot over topic log `topic_id` with the captured state.
    pub fn from_snapshot(topic_id: u64, floor: u64, done: Vec<u64>, s: &Snapshot) -> Self {
        debug_assert!(
            done.iter().all(|&id| id > floor),
            "done ids lie above the floor"
        );
        Self {
            name: s.name.to_string(),
            topic_id,
            topic: s.topic.to_string(),
            floor,
            done,
            expire_time_ns: to_ns(s.expire_time),
            labels: labels_vec(&s.labels),
            resource: s.resource.to_vec(),
        }
    }

    /// The snapshot as the `Store` trait shows it.
    pub fn to_snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            name: SnapshotName::parse(&self.name)?,
            topic: TopicName::parse(&self.topic)?,
            expire_time: from_ns(self.expire_time_ns),
            labels: self.labels.iter().cloned().collect(),
            resource: Bytes::from(self.resource.clone()),
        })
    }
}

/// A published message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Engine id of the topic.
    pub topic_id: u64,
    /// Message id.
    pub id: u64,
    /// Publish time, nanoseconds since the epoch.
    pub publish_time_ns: u64,
    /// Ordering key.
    pub ordering_key: String,
    /// Attributes.
    pub attributes: Vec<(String, String)>,
    /// Payload.
    pub data: Vec<u8>,
}

impl MessageRecord {
    /// Builds the record of a new message.
    pub fn new(topic_id: u64, id: u64, publish_time: SystemTime, message: &NewMessage) -> Self {
        let mut attributes: Vec<_> = message
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        attributes.sort();
        Self {
            topic_id,
            id,
            publish_time_ns: to_ns(publish_time),
            ordering_key: message.ordering_key.clone(),
            attributes,
            data: message.data.to_vec(),
        }
    }

    /// The message as subscribers see it.
    pub fn into_stored(self) -> StoredMessage {
        StoredMessage {
            id: converge_core::MessageId(self.id),
            publish_time: from_ns(self.publish_time_ns),
            data: Bytes::from(self.data),
            attributes: self.attributes.into_iter().collect(),
            ordering_key: self.ordering_key,
        }
    }
}

/// Nanoseconds since the epoch (0 for times before it).
pub fn to_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The inverse of [`to_ns`].
pub fn from_ns(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn labels_vec(labels: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut v: Vec<_> = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort();
    v
}

impl TopicRecord {
    /// The record of a topic.
    pub fn from_topic(topic_id: u64, t: &Topic) -> Self {
        Self {
            topic_id,
            name: t.name.to_string(),
            labels: labels_vec(&t.labels),
            retention_ms: t.message_retention.map(ms),
            dedup_window_ms: ms(t.dedup_window),
            resource: t.resource.to_vec(),
        }
    }

    /// The topic of a record.
    pub fn to_topic(&self) -> Result<Topic> {
        Ok(Topic {
            name: TopicName::parse(&self.name)?,
            labels: self.labels.iter().cloned().collect(),
            message_retention: self.retention_ms.map(Duration::from_millis),
            dedup_window: Duration::from_millis(self.dedup_window_ms),
            resource: Bytes::from(self.resource.clone()),
        })
    }
}

impl SubscriptionRecord {
    /// The record of a subscription.
    pub fn from_subscription(
        subscription_id: u64,
        topic_id: u64,
        start_after: u64,
        s: &Subscription,
    ) -> Self {
        Self {
            subscription_id,
            name: s.name.to_string(),
            topic_id,
            topic_deleted: s.topic.is_none(),
            start_after,
            ack_deadline_ms: ms(s.ack_deadline),
            retain_acked_messages: s.retain_acked_messages,
            retention_ms: ms(s.message_retention),
            enable_message_ordering: s.enable_message_ordering,
            exactly_once: s.exactly_once,
            filter: s.filter.clone(),
            dead_letter: s
                .dead_letter_policy
                .as_ref()
                .map(|p| (p.topic.to_string(), p.max_delivery_attempts)),
            retry: s.retry.as_ref().map(|r| RetryRecord {
                immediate_retries: r.immediate_retries,
                fixed_retries: r.fixed_retries,
                fixed_interval_ms: ms(r.fixed_interval),
                minimum_backoff_ms: ms(r.minimum_backoff),
                maximum_backoff_ms: ms(r.maximum_backoff),
                max_retry_duration_ms: r.max_retry_duration.map(ms),
            }),
            expiration_ttl_ms: s.expiration_ttl.map(ms),
            detached: s.detached,
            labels: labels_vec(&s.labels),
            created_ns: to_ns(s.created),
            resource: s.resource.to_vec(),
        }
    }

    /// The subscription of a record, given the name of its topic (`None` once deleted).
    pub fn to_subscription(&self, topic: Option<TopicName>) -> Result<Subscription> {
        Ok(Subscription {
            name: SubscriptionName::parse(&self.name)?,
            topic: if self.topic_deleted { None } else { topic },
            ack_deadline: Duration::from_millis(self.ack_deadline_ms),
            retain_acked_messages: self.retain_acked_messages,
            message_retention: Duration::from_millis(self.retention_ms),
            enable_message_ordering: self.enable_message_ordering,
            exactly_once: self.exactly_once,
            filter: self.filter.clone(),
            dead_letter_policy: match &self.dead_letter {
                Some((topic, attempts)) => Some(DeadLetterPolicy {
                    topic: TopicName::parse(topic)?,
                    max_delivery_attempts: *attempts,
                }),
                None => None,
            },
            retry: self.retry.as_ref().map(|r| RetrySchedule {
                immediate_retries: r.immediate_retries,
                fixed_retries: r.fixed_retries,
                fixed_interval: Duration::from_millis(r.fixed_interval_ms),
                minimum_backoff: Duration::from_millis(r.minimum_backoff_ms),
                maximum_backoff: Duration::from_millis(r.maximum_backoff_ms),
                max_retry_duration: r.max_retry_duration_ms.map(Duration::from_millis),
            }),
            expiration_ttl: self.expiration_ttl_ms.map(Duration::from_millis),
            detached: self.detached,
            labels: self.labels.iter().cloned().collect(),
            created: from_ns(self.created_ns),
            resource: Bytes::from(self.resource.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_log_encoding() {
        let message = NewMessage {
            data: Bytes::from_static(b"hello"),
            attributes: [("a".to_string(), "1".to_string())].into_iter().collect(),
            ordering_key: "k".into(),
        };
        let r = Record::Message(MessageRecord::new(
            3,
            42,
            UNIX_EPOCH + Duration::from_secs(9),
            &message,
        ));
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        let Record::Message(m) = r else {
            unreachable!()
        };
        let stored = m.into_stored();
        assert_eq!(stored.data, message.data);
        assert_eq!(stored.attributes, message.attributes);
        assert_eq!(stored.publish_time, UNIX_EPOCH + Duration::from_secs(9));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Record::decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
