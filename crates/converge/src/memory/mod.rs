//! The broker's semantics in process, on a clock that moves only when told to: unit tests of
//! handlers without a broker.
//!
//! [`MemoryTransport`] is the broker's own storage engine (`converge-store`'s embedded engine,
//! persistence off) behind the [`Transport`] trait, so retries with exponential backoff,
//! dead-lettering, ordering keys, deduplication by idempotency key and attribute filters behave
//! exactly as on converge, by construction rather than by imitation. Requests are validated
//! with the broker's own rules (`converge_core::limits`), so a configuration or a publish the
//! broker refuses fails here too, with the same [`Code`](crate::transport::Code).
//!
//! Time is a manual clock: nothing expires and no retry comes due until
//! [`MemoryTransport::advance`] moves it. A test therefore reaches a 10-minute backoff
//! instantly, and a slow test machine never makes a lease expire behind its back.
//!
//! Leases: a real client extends a message's lease while its handler runs, up to
//! [`ReceiveOptions::max_lease_extension`](crate::transport::ReceiveOptions) after delivery.
//! Here the lease of a message handed to a handler lasts that long (or the ack deadline, if
//! longer) from delivery; advancing the clock past it while the handler still runs makes the
//! message deliverable again, as a real client that stopped extending would.

mod convert;
mod receive;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use converge_core::{Clock, ManualClock, PullOptions, Store, SubscriptionName, TopicName};
use converge_store::embedded::{EmbeddedOptions, EmbeddedStore};
use tokio_util::sync::CancellationToken;

use self::convert::{resource_error, status};
use crate::transport::{
    IncomingMessage, MessageHandler, OutgoingMessage, ReceiveOptions, SubscriptionConfig,
    TopicConfig, Transport, TransportError,
};

/// An in-process [`Transport`] with the broker's semantics and a manual clock.
///
/// Clones share one engine and one clock: hand a clone to the code under test and keep one to
/// drive time and inspect what was published.
///
/// # Example
///
/// Asserting what a piece of code published, without a broker:
///
/// ```
/// use std::collections::HashMap;
///
/// use converge::memory::MemoryTransport;
/// use converge::transport::{OutgoingMessage, SubscriptionConfig, TopicConfig, Transport};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), converge::TransportError> {
/// let transport = MemoryTransport::new();
/// let topic = "projects/test/topics/orders";
/// transport
///     .ensure_topic(&TopicConfig { name: topic.into(), labels: HashMap::new() })
///     .await?;
/// // A subscription sees what is published after it exists: create it first.
/// let capture = "projects/test/subscriptions/orders-capture";
/// transport
///     .ensure_subscription(&SubscriptionConfig::new(capture, topic))
///     .await?;
///
/// // The code under test publishes...
/// let message = OutgoingMessage { data: "order 42 placed".into(), ..Default::default() };
/// transport.publish(topic, vec![message]).await?;
///
/// // ...and the test asserts on exactly what went out.
/// let published = transport.pull_now(capture, 10).await?;
/// assert_eq!(published.len(), 1);
/// assert_eq!(published[0].data, "order 42 placed");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: EmbeddedStore,
    clock: ManualClock,
    /// Serialises advances, so that two concurrent ones each run maintenance on their own time.
    advancing: tokio::sync::Mutex<()>,
    /// What the receive loops have handed to handlers and not yet settled.
    in_flight: Arc<receive::InFlight>,
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTransport {
    /// An empty broker whose clock starts at the current real time (so publish times look
    /// like real ones) and then moves only through [`Self::advance`].
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// An empty broker whose clock starts at `start`: for tests that assert on publish times.
    pub fn starting_at(start: SystemTime) -> Self {
        let clock = ManualClock::new(start);
        let options = EmbeddedOptions {
            dir: None,
            ..EmbeddedOptions::default()
        };
        // Without a directory the engine opens no file and reads no snapshot: nothing can fail.
        let store = EmbeddedStore::open(options, Arc::new(clock.clone()))
            .expect("the embedded engine without a directory opens without I/O");
        Self {
            inner: Arc::new(Inner {
                store,
                clock,
                advancing: tokio::sync::Mutex::new(()),
                in_flight: Arc::default(),
            }),
        }
    }

    /// The broker's current time.
    pub fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// Moves the clock forward by `by` and runs the engine's periodic work at once, so that
    /// everything due by the new time happens before this returns: expired leases are
    /// redelivered or dead-lettered, retries whose backoff has passed become deliverable and
    /// the receive loops waiting for them are woken, retention and subscription expiration
    /// apply.
    ///
    /// Handlers then run on their own tasks: wait for the effect you expect (a handler call, a
    /// message on a dead-letter subscription) rather than assuming it happened on return.
    pub async fn advance(&self, by: Duration) -> Result<(), TransportError> {
        let _one_at_a_time = self.inner.advancing.lock().await;
        self.inner.clock.advance(by);
        tracing::debug!(advanced_ms = by.as_millis() as u64, "memory clock advanced");
        self.inner.store.maintain().await.map_err(status)
    }

    /// Messages that receive loops have handed to a handler and not yet settled (acked or
    /// nacked), across every subscription.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.count()
    }

    /// Resolves once every message handed to a handler has been settled: the point from which
    /// a nack's backoff runs. Wait for it before [`Self::advance`] when a test expects a
    /// handler's nack (or ack) to have taken effect:
    ///
    /// ```no_run
    /// # async fn example(transport: converge::memory::MemoryTransport) -> Result<(), converge::TransportError> {
    /// # use std::time::Duration;
    /// // ... a handler has been given a message and nacks it ...
    /// transport.idle().await;
    /// transport.advance(Duration::from_secs(10)).await?; // the minimum backoff: redelivered
    /// # Ok(()) }
    /// ```
    ///
    /// A handler that never returns keeps this pending: bound it with a timeout in tests that
    /// have one.
    pub async fn idle(&self) {
        self.inner.in_flight.idle().await;
    }

    /// Takes up to `max` messages that are deliverable on `subscription` now and acknowledges
    /// them, without a handler; empty when none is.
    ///
    /// Made for assertions: subscribe a capture subscription to the topic your code publishes
    /// to (before it publishes), run the code, then check that exactly the expected messages
    /// came out. Do not use it on a subscription that a [`Transport::receive`] loop is
    /// consuming: the two would share its messages.
    pub async fn pull_now(
        &self,
        subscription: &str,
        max: usize,
    ) -> Result<Vec<IncomingMessage>, TransportError> {
        let name = SubscriptionName::parse(subscription).map_err(status)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let store = &self.inner.store;
        let options = PullOptions::new(max, Duration::ZERO);
        let received = store
            .pull_with(&name, options)
            .await
            .map_err(resource_error(name.id()))?;
        if received.is_empty() {
            return Ok(Vec::new());
        }
        let ack_ids: Vec<_> = received.iter().map(|r| r.ack_id.clone()).collect();
        store
            .acknowledge(&name, &ack_ids)
            .await
            .map_err(resource_error(name.id()))?;
        Ok(received.iter().map(convert::incoming).collect())
    }
}

#[async_trait::async_trait]
impl Transport for MemoryTransport {
    async fn ensure_topic(&self, topic: &TopicConfig) -> Result<(), TransportError> {
        let topic = convert::topic(topic)?;
        let name = topic.name.clone();
        match self.inner.store.create_topic(topic).await {
            Ok(_) => {
                tracing::debug!(topic = %name, "topic created");
                Ok(())
            }
            Err(converge_core::Error::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(resource_error(name.id())(e)),
        }
    }

    async fn ensure_subscription(
        &self,
        subscription: &SubscriptionConfig,
    ) -> Result<(), TransportError> {
        let store = &self.inner.store;
        let sub = convert::subscription(subscription, self.now())?;
        let name = sub.name.clone();
        // As the broker does: the topic and the dead-letter topic must exist.
        if let Some(topic) = &sub.topic {
            store
                .get_topic(topic)
                .await
                .map_err(resource_error(topic.id()))?;
        }
        if let Some(policy) = &sub.dead_letter_policy {
            store
                .get_topic(&policy.topic)
                .await
                .map_err(resource_error(policy.topic.id()))?;
        }
        match store.create_subscription(sub).await {
            Ok(_) => {
                tracing::debug!(subscription = %name, topic = %subscription.topic, "subscription created");
                Ok(())
            }
            Err(converge_core::Error::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(resource_error(name.id())(e)),
        }
    }

    async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<String>, TransportError> {
        let name = TopicName::parse(topic).map_err(status)?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let requests =
            convert::publish_requests(messages.into_iter().map(convert::new_message).collect());
        // Validate everything first, so that a refused message publishes nothing.
        for request in &requests {
            converge_core::limits::validate_publish(request).map_err(status)?;
        }
        let mut ids = Vec::new();
        for request in requests {
            let published = self
                .inner
                .store
                .publish(&name, request)
                .await
                .map_err(resource_error(name.id()))?;
            ids.extend(published.iter().map(ToString::to_string));
        }
        tracing::debug!(topic = %name, count = ids.len(), "published");
        Ok(ids)
    }

    async fn receive(
        &self,
        subscription: &str,
        options: ReceiveOptions,
        handler: MessageHandler,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError> {
        let name = SubscriptionName::parse(subscription).map_err(status)?;
        let in_flight = self.inner.in_flight.clone();
        receive::run(
            self.inner.store.clone(),
            in_flight,
            name,
            options,
            handler,
            shutdown,
        )
        .await
    }
}
