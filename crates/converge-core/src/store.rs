//! The contract between the API layer and the storage engines.
//!
//! A [`Store`] is the whole data plane: resources, the message log and the delivery state of
//! every subscription. Each engine (embedded, PostgreSQL) implements all of it, applying the
//! rules of this crate (retry schedules, dead-lettering, filters, ordering), because where a
//! lease lives decides how it can be taken atomically: in the embedded engine in memory, in
//! PostgreSQL in a row lock shared by every node.
//!
//! Invariants every engine keeps:
//! - `publish` returns only once its messages are durable; a crash after that loses none.
//! - A message is leased to one consumer at a time until its deadline.
//! - Leases may be forgotten by a crash (the message is then delivered again); data may not.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::message::{AckId, MessageId, NewMessage, ReceivedMessage};
use crate::name::{ProjectId, SnapshotName, SubscriptionName, TopicName};
use crate::snapshot::Snapshot;
use crate::subscription::Subscription;
use crate::topic::Topic;

/// A page request for list calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Items at most; 0 means the engine's default.
    pub page_size: usize,
    /// The token of the previous page's answer; empty for the first page.
    pub page_token: String,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, sorted by name.
    pub items: Vec<T>,
    /// Token for the next page; empty when this is the last one.
    pub next_page_token: String,
}

/// How a pull leases what it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOptions {
    /// Messages at most (at least 1).
    pub max_messages: usize,
    /// Stop adding messages once their sizes ([`crate::StoredMessage::size`]) reach this; the
    /// first message is always taken, whatever its size. `None` for no limit.
    pub max_bytes: Option<usize>,
    /// When nothing is deliverable, wait up to this long for something (long poll).
    pub wait: Duration,
    /// Lease deadline of the messages taken; `None` for the subscription's ack deadline.
    /// StreamingPull leases with the stream's deadline.
    pub ack_deadline: Option<Duration>,
}

impl PullOptions {
    /// Up to `max_messages`, waiting up to `wait`, with the subscription's ack deadline.
    pub fn new(max_messages: usize, wait: Duration) -> Self {
        Self {
            max_messages,
            max_bytes: None,
            wait,
            ack_deadline: None,
        }
    }
}

/// What became of one ack id in an acknowledge or ack-deadline change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The lease was current: the ack or deadline change took effect.
    Applied,
    /// The ack id is unknown, malformed, stale (a later delivery replaced it) or its lease has
    /// expired, or the message was already acknowledged. Without exactly-once delivery this is
    /// harmless and not reported; with it, clients see `PERMANENT_FAILURE_INVALID_ACK_ID`.
    Invalid,
}

/// Where a Seek moves a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeekTarget {
    /// Messages published before the time count as acknowledged, those after as not.
    Time(SystemTime),
    /// The acknowledgement state captured in the snapshot.
    Snapshot(SnapshotName),
}

/// What an operator watches on a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// The subscription.
    pub name: SubscriptionName,
    /// Messages not yet acknowledged (leased or waiting).
    pub backlog: u64,
    /// Age of the oldest unacknowledged message; zero when the backlog is empty.
    pub oldest_unacked_age: Duration,
}

/// The data plane of the broker. See the module documentation for the invariants.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a topic. `ALREADY_EXISTS` if the name is taken.
    async fn create_topic(&self, topic: Topic) -> Result<Topic>;
    /// Reads a topic.
    async fn get_topic(&self, name: &TopicName) -> Result<Topic>;
    /// Replaces a topic's settings (the caller has applied the field mask).
    async fn update_topic(&self, topic: Topic) -> Result<Topic>;
    /// Lists a project's topics by name.
    async fn list_topics(&self, project: &ProjectId, page: PageRequest) -> Result<Page<Topic>>;
    /// Deletes a topic; its subscriptions remain, attached to no topic.
    async fn delete_topic(&self, name: &TopicName) -> Result<()>;
    /// Lists the names of a topic's subscriptions.
    async fn list_topic_subscriptions(
        &self,
        topic: &TopicName,
        page: PageRequest,
    ) -> Result<Page<SubscriptionName>>;

    /// Creates a subscription, which receives the messages published from now on.
    async fn create_subscription(&self, subscription: Subscription) -> Result<Subscription>;
    /// Reads a subscription.
    async fn get_subscription(&self, name: &SubscriptionName) -> Result<Subscription>;
    /// Replaces a subscription's settings (the caller has applied the field mask and checked
    /// that immutable fields did not change).
    async fn update_subscription(&self, subscription: Subscription) -> Result<Subscription>;
    /// Lists a project's subscriptions by name.
    async fn list_subscriptions(
        &self,
        project: &ProjectId,
        page: PageRequest,
    ) -> Result<Page<Subscription>>;
    /// Deletes a subscription and its backlog.
    async fn delete_subscription(&self, name: &SubscriptionName) -> Result<()>;
    /// Detaches a subscription from its topic: its backlog is dropped and pulls fail with
    /// `FAILED_PRECONDITION`.
    async fn detach_subscription(&self, name: &SubscriptionName) -> Result<()>;

    /// Appends messages to a topic and returns their ids once they are durable. Messages whose
    /// idempotency key was seen within the topic's window are not stored again: their original
    /// id is returned.
    async fn publish(&self, topic: &TopicName, messages: Vec<NewMessage>)
    -> Result<Vec<MessageId>>;
    /// Leases deliverable messages as `options` say. When none is deliverable, waits up to
    /// `options.wait` for one (long poll) before answering with none.
    async fn pull_with(
        &self,
        subscription: &SubscriptionName,
        options: PullOptions,
    ) -> Result<Vec<ReceivedMessage>>;
    /// Leases up to `max_messages` deliverable messages with the subscription's ack deadline,
    /// waiting up to `wait` when none is deliverable.
    async fn pull(
        &self,
        subscription: &SubscriptionName,
        max_messages: usize,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        self.pull_with(subscription, PullOptions::new(max_messages, wait))
            .await
    }
    /// Acknowledges deliveries; one outcome per ack id, in order. Invalid ack ids change
    /// nothing.
    async fn acknowledge(
        &self,
        subscription: &SubscriptionName,
        ack_ids: &[AckId],
    ) -> Result<Vec<AckOutcome>>;
    /// Sets the deadline of leases to `deadline` from now; zero is a nack (the message becomes
    /// deliverable again, after the retry backoff). One outcome per ack id, in order.
    async fn modify_ack_deadline(
        &self,
        subscription: &SubscriptionName,
        ack_ids: &[AckId],
        deadline: Duration,
    ) -> Result<Vec<AckOutcome>>;

    /// Captures a subscription's acknowledgement state as a snapshot. `ALREADY_EXISTS` if the
    /// name is taken.
    async fn create_snapshot(
        &self,
        snapshot: Snapshot,
        subscription: &SubscriptionName,
    ) -> Result<Snapshot>;
    /// Reads a snapshot.
    async fn get_snapshot(&self, name: &SnapshotName) -> Result<Snapshot>;
    /// Replaces a snapshot's labels and expire time (the caller applied the field mask).
    async fn update_snapshot(&self, snapshot: Snapshot) -> Result<Snapshot>;
    /// Lists a project's snapshots by name.
    async fn list_snapshots(
        &self,
        project: &ProjectId,
        page: PageRequest,
    ) -> Result<Page<Snapshot>>;
    /// Lists the names of a topic's snapshots.
    async fn list_topic_snapshots(
        &self,
        topic: &TopicName,
        page: PageRequest,
    ) -> Result<Page<SnapshotName>>;
    /// Deletes a snapshot.
    async fn delete_snapshot(&self, name: &SnapshotName) -> Result<()>;
    /// Moves a subscription to a time or a snapshot: which messages count as acknowledged.
    async fn seek(&self, subscription: &SubscriptionName, target: SeekTarget) -> Result<()>;

    /// Stores an opaque document of the API layer (an IAM policy, a schema revision) under
    /// `kind` and `key`, replacing any previous one. Documents have no delivery semantics; the
    /// store only keeps them as durably as everything else.
    async fn put_document(&self, kind: &str, key: &str, value: Bytes) -> Result<()>;
    /// Reads a document.
    async fn get_document(&self, kind: &str, key: &str) -> Result<Option<Bytes>>;
    /// Deletes a document; `false` if there was none.
    async fn delete_document(&self, kind: &str, key: &str) -> Result<bool>;
    /// Lists the documents of `kind` whose key starts with `prefix`, by key. Page tokens are keys.
    async fn list_documents(
        &self,
        kind: &str,
        prefix: &str,
        page: PageRequest,
    ) -> Result<Page<(String, Bytes)>>;

    /// Backlog figures of every subscription, for metrics.
    async fn subscription_stats(&self) -> Result<Vec<SubscriptionStats>>;
    /// Periodic work: expire leases, apply retention and expiration policies, reclaim space.
    /// Called about once a second by the server; cheap when there is nothing to do.
    async fn maintain(&self) -> Result<()>;
    /// Succeeds when the store is open and accepts a durable write (for `/readyz`).
    async fn check_ready(&self) -> Result<()>;
    /// Flushes everything and refuses further writes. Called once on shutdown.
    async fn close(&self) -> Result<()>;
}
