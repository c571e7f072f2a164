//! The seam between the patterns (event bus, outbox relay) and the wire.
//!
//! A [`Transport`] publishes messages to a topic and runs a handler on every message of a
//! subscription, acknowledging or nacking each by the handler's [`Disposition`]. Two
//! implementations exist: [`crate::client::Client`] over the Pub/Sub gRPC API (converge or any
//! compatible endpoint) and [`crate::memory::MemoryTransport`], the broker's own engine in
//! process with a controllable clock, for unit tests. Everything above this trait is written once
//! and behaves the same on both.
//!
//! Names are full resource names (`projects/{project}/topics/{topic}`,
//! `projects/{project}/subscriptions/{subscription}`).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

/// Message attributes: string keys to string values, as in Pub/Sub.
pub type Attributes = HashMap<String, String>;

/// A message to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The payload.
    pub data: Bytes,
    /// Attributes (CloudEvents context attributes travel here, `ce-` prefixed).
    pub attributes: Attributes,
    /// Messages with the same non-empty key are delivered in publish order (on a subscription
    /// with message ordering enabled). Empty: no ordering.
    pub ordering_key: String,
}

/// A message received from a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The id the broker gave the message when it was published.
    pub message_id: String,
    /// The payload.
    pub data: Bytes,
    /// Attributes as published.
    pub attributes: Attributes,
    /// The ordering key it was published with (empty: none).
    pub ordering_key: String,
    /// When the broker accepted it.
    pub publish_time: SystemTime,
    /// Which delivery this is, 1 for the first. Pub/Sub counts attempts only on subscriptions
    /// with a dead-letter policy; elsewhere this is `None`.
    pub delivery_attempt: Option<u32>,
}

/// What to do with a message once its handler is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Processed: remove it from the subscription.
    Ack,
    /// Not processed: redeliver it after the subscription's retry backoff (or dead-letter it
    /// once it has been tried `max_delivery_attempts` times).
    Nack,
}

/// A boxed, sendable future, as handlers return.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The function a [`Transport`] runs on every received message. It is called concurrently (up
/// to the flow-control limits of [`ReceiveOptions`]) and must not panic: callers that run user
/// code wrap it (the event bus turns a panic into [`Disposition::Nack`]).
pub type MessageHandler = Arc<dyn Fn(IncomingMessage) -> BoxFuture<Disposition> + Send + Sync>;

/// A topic to create if missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicConfig {
    /// Full name, `projects/{project}/topics/{topic}`.
    pub name: String,
    /// Labels (converge reads `converge-dedup-window` and the `converge-retry-*` family here).
    pub labels: HashMap<String, String>,
}

/// Exponential redelivery backoff of a subscription (Pub/Sub `RetryPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackoff {
    /// Delay before the first redelivery (Pub/Sub allows 0 s to 600 s).
    pub minimum: Duration,
    /// Longest delay between redeliveries (Pub/Sub allows 0 s to 600 s).
    pub maximum: Duration,
}

/// Where messages go after too many failed deliveries (Pub/Sub `DeadLetterPolicy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Full name of the dead-letter topic.
    pub topic: String,
    /// Deliveries before a message is dead-lettered (Pub/Sub allows 5 to 100).
    pub max_delivery_attempts: u32,
}

/// A subscription to create if missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionConfig {
    /// Full name, `projects/{project}/subscriptions/{subscription}`.
    pub name: String,
    /// Full name of the topic it receives from.
    pub topic: String,
    /// How long a delivered message stays leased before it is redelivered (10 s to 600 s).
    pub ack_deadline: Duration,
    /// Redelivery backoff after a nack or an expired lease; `None` redelivers at once.
    pub retry: Option<RetryBackoff>,
    /// Dead-lettering; `None` retries forever (within retention).
    pub dead_letter: Option<DeadLetter>,
    /// Deliver messages with the same ordering key one at a time, in publish order.
    pub message_ordering: bool,
    /// A Pub/Sub filter expression (empty: every message).
    pub filter: String,
    /// Labels.
    pub labels: HashMap<String, String>,
}

impl SubscriptionConfig {
    /// A subscription on `topic` with Pub/Sub's defaults: 10 s ack deadline, immediate
    /// redelivery, no dead-lettering, no ordering, no filter.
    pub fn new(name: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            topic: topic.into(),
            ack_deadline: Duration::from_secs(10),
            retry: None,
            dead_letter: None,
            message_ordering: false,
            filter: String::new(),
            labels: HashMap::new(),
        }
    }
}

/// Flow control of [`Transport::receive`]: how much may be in the handler's hands at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveOptions {
    /// Messages handed to the handler and not yet acked or nacked.
    pub max_outstanding_messages: usize,
    /// Bytes of payload handed out and not yet acked or nacked.
    pub max_outstanding_bytes: usize,
    /// Leases are extended while a handler runs, but not beyond this much time after
    /// delivery; past it the message may be redelivered to another consumer.
    pub max_lease_extension: Duration,
}

impl Default for ReceiveOptions {
    /// The official clients' defaults: 1,000 messages, 100 MiB, 60 minutes.
    fn default() -> Self {
        Self {
            max_outstanding_messages: 1_000,
            max_outstanding_bytes: 100 * 1024 * 1024,
            max_lease_extension: Duration::from_secs(60 * 60),
        }
    }
}

/// The gRPC status code of a failure, also used by the in-memory transport so that callers
/// classify failures the same way on both.
pub use tonic::Code;

/// Why a [`Transport`] call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The broker could not be reached.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The address tried.
        endpoint: String,
        /// The innermost cause, e.g. `Connection refused (os error 111)`.
        reason: String,
    },
    /// The broker (or the in-memory engine) refused the call.
    #[error("{code:?}: {message}")]
    Status {
        /// The gRPC status code.
        code: Code,
        /// The broker's explanation.
        message: String,
    },
}

impl TransportError {
    /// The gRPC code of the failure (`Unavailable` for a connection failure).
    pub fn code(&self) -> Code {
        match self {
            Self::Connect { .. } => Code::Unavailable,
            Self::Status { code, .. } => *code,
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Internal
                | Code::Unknown
                | Code::Cancelled
        )
    }
}

impl From<tonic::Status> for TransportError {
    fn from(status: tonic::Status) -> Self {
        Self::Status {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// Publishing and receiving, over whichever wire.
///
/// Object safe: the patterns hold an `Arc<dyn Transport>`.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Creates the topic unless it exists (an existing topic is left as it is).
    async fn ensure_topic(&self, topic: &TopicConfig) -> Result<(), TransportError>;

    /// Creates the subscription unless it exists (an existing one is left as it is).
    async fn ensure_subscription(
        &self,
        subscription: &SubscriptionConfig,
    ) -> Result<(), TransportError>;

    /// Publishes `messages` to `topic` and returns their ids, in order, once the broker has
    /// stored them. Transient failures are retried inside; an error means the messages may or
    /// may not have been stored (publishing again with the same idempotency key is safe).
    async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<String>, TransportError>;

    /// Receives from `subscription` until `shutdown` is cancelled, calling `handler` on every
    /// message (concurrently, within `options`), extending each lease while its handler runs
    /// and acking or nacking by the returned [`Disposition`]. On shutdown it stops taking new
    /// messages, waits for the handlers in flight and settles them, then returns `Ok`.
    /// Transient stream failures are retried inside; an error means receiving cannot go on
    /// (the subscription does not exist, permission denied, …).
    async fn receive(
        &self,
        subscription: &str,
        options: ReceiveOptions,
        handler: MessageHandler,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError>;
}
