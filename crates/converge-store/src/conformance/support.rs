//! Builders and shortcuts the scenarios share: resources as the API layer would create them,
//! messages, and pulls that do not wait.
//!
//! Everything lives in project `p`, so names in assertions stay short.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use converge_core::{
    NewMessage, PageRequest, ProjectId, ReceivedMessage, Snapshot, SnapshotName, Store,
    Subscription, SubscriptionName, Topic, TopicName,
};

/// The project every scenario works in.
pub fn project() -> ProjectId {
    ProjectId::new("p").unwrap()
}

/// `projects/p/topics/{id}`.
pub fn topic_name(id: &str) -> TopicName {
    TopicName::new(project(), id).unwrap()
}

/// `projects/p/subscriptions/{id}`.
pub fn sub_name(id: &str) -> SubscriptionName {
    SubscriptionName::new(project(), id).unwrap()
}

/// `projects/p/snapshots/{id}`.
pub fn snapshot_name(id: &str) -> SnapshotName {
    SnapshotName::new(project(), id).unwrap()
}

/// A topic with Pub/Sub's defaults: no retention of its own, a one-hour deduplication window.
pub fn topic(id: &str) -> Topic {
    Topic {
        name: topic_name(id),
        labels: HashMap::new(),
        message_retention: None,
        dedup_window: Duration::from_secs(3600),
        resource: Bytes::new(),
    }
}

/// A pull subscription with Pub/Sub's defaults: 10 s ack deadline, 7 days of retention, no
/// ordering, filter, dead-letter policy or retry policy.
pub fn subscription(id: &str, topic: &str) -> Subscription {
    Subscription {
        name: sub_name(id),
        topic: Some(topic_name(topic)),
        ack_deadline: Duration::from_secs(10),
        retain_acked_messages: false,
        message_retention: Duration::from_secs(7 * 24 * 3600),
        enable_message_ordering: false,
        exactly_once: false,
        filter: String::new(),
        dead_letter_policy: None,
        retry: None,
        expiration_ttl: None,
        detached: false,
        labels: HashMap::new(),
        created: SystemTime::UNIX_EPOCH,
        resource: Bytes::new(),
    }
}

/// A snapshot request as the API layer makes it; the store sets the topic and expire time.
pub fn pubsub_snapshot(id: &str) -> Snapshot {
    Snapshot {
        name: snapshot_name(id),
        topic: topic_name("placeholder"),
        expire_time: SystemTime::UNIX_EPOCH,
        labels: HashMap::new(),
        resource: Bytes::new(),
    }
}

/// A page request: `size` items at most (0 for the engine's default), after `token`.
pub fn page(size: usize, token: &str) -> PageRequest {
    PageRequest {
        page_size: size,
        page_token: token.to_string(),
    }
}

/// A message with `data` and nothing else.
pub fn msg(data: &str) -> NewMessage {
    NewMessage {
        data: Bytes::from(data.to_string()),
        ..Default::default()
    }
}

/// A message with attributes and an ordering key (`""` for none).
pub fn msg_with(data: &str, attrs: &[(&str, &str)], key: &str) -> NewMessage {
    NewMessage {
        data: Bytes::from(data.to_string()),
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ordering_key: key.to_string(),
    }
}

/// The payloads of `received`, in order, as text: what most assertions compare.
pub fn data(received: &[ReceivedMessage]) -> Vec<String> {
    received
        .iter()
        .map(|r| String::from_utf8(r.message.data.to_vec()).unwrap())
        .collect()
}

/// Leases up to 100 messages deliverable now, without waiting: "what would a subscriber get at
/// this instant".
pub async fn pull_now(store: &dyn Store, sub: &str) -> Vec<ReceivedMessage> {
    store
        .pull(&sub_name(sub), 100, Duration::ZERO)
        .await
        .unwrap()
}

/// Pulls everything deliverable now and acknowledges the messages whose data is in `ack`;
/// returns the data of everything pulled.
pub async fn pull_and_ack(store: &dyn Store, sub: &str, ack: &[&str]) -> Vec<String> {
    let got = pull_now(store, sub).await;
    let ids: Vec<_> = got
        .iter()
        .filter(|r| ack.iter().any(|a| r.message.data == a.as_bytes()))
        .map(|r| r.ack_id.clone())
        .collect();
    store.acknowledge(&sub_name(sub), &ids).await.unwrap();
    data(&got)
}
