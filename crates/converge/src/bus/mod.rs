//! The event bus: one topic and one subscription for all of a service's events, with a typed
//! handler per event type.
//!
//! Keeping every step of a service's workflows on one bus puts the wiring in code rather than
//! in infrastructure: a new event is a new Rust type and a new `.on::<E, _, _>(…)`, not a new
//! topic and subscription to provision. It also gives one place to get the hard parts right
//! once, for every handler:
//!
//! - **Dispatch** by CloudEvents `type` ([`Event::TYPE`]) to the handler registered for it.
//! - **Retries**: a handler that returns an error, or panics, has its message nacked; the
//!   broker redelivers it after the subscription's backoff (and dead-letters it after
//!   `max_delivery_attempts`, if configured). The bus creates its subscription with an
//!   exponential backoff ([`DEFAULT_RETRY`]) rather than Pub/Sub's immediate redelivery, so a
//!   failing handler does not spin.
//! - **Cascades without duplicates**: every event carries an [`IdempotencyKey`]. A handler
//!   emits follow-up events through its [`HandlerContext`], which derives their keys from the
//!   incoming key and their position, so a handler retried after emitting emits the same keys
//!   again and the broker drops the copies (within the topic's deduplication window: the bus
//!   sets no `converge-dedup-window` label, so the broker's default applies — 24 hours on
//!   converge; set one with [`EventBusBuilder::topic_config`]). Deduplication on the key is
//!   converge's: Google Cloud Pub/Sub and its emulator store every publish, so there the key
//!   is what lets handlers recognise the repeats themselves (a unique column, an upsert).
//! - **Events it cannot handle**: an event of a type with no handler follows the
//!   [`UnknownEventPolicy`] (nack by default, so that nothing is lost during a rolling
//!   deploy); a message that is not a valid CloudEvent, or whose payload does not decode,
//!   follows the [`MalformedEventPolicy`] (ack and log by default: it will never decode, and
//!   retrying it forever would only hide it; choose `Nack` with a dead-letter policy to keep
//!   it).
//!
//! Exposing the bus's events to other services directly couples them to internal steps;
//! forward the ones that form a contract to a dedicated topic with
//! [`HandlerContext::emit_to`].
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//!
//! use converge::bus::{EventBus, HandlerContext, HandlerResult};
//! use converge::event::Event;
//! use converge::memory::MemoryTransport;
//! use serde::{Deserialize, Serialize};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Serialize, Deserialize)]
//! struct SignedUp { email: String }
//! impl Event for SignedUp { const TYPE: &'static str = "com.example.signup.completed"; }
//!
//! #[derive(Serialize, Deserialize)]
//! struct WelcomeMailRequested { email: String }
//! impl Event for WelcomeMailRequested { const TYPE: &'static str = "com.example.mail.welcome"; }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let done = CancellationToken::new();
//! let stop = done.clone();
//! let bus = EventBus::builder(
//!     Arc::new(MemoryTransport::new()), // or a `converge::client::Client`
//!     "projects/demo/topics/signup-events",
//!     "projects/demo/subscriptions/signup-events",
//! )
//! .source("/signup")
//! // Step one: a signup asks for a welcome mail, as its own event.
//! .on(|event: SignedUp, ctx: HandlerContext| async move {
//!     ctx.emit(&WelcomeMailRequested { email: event.email }).await?;
//!     Ok(())
//! })
//! // Step two: send it, with the event's key so the mail service can drop repeats.
//! .on(move |event: WelcomeMailRequested, ctx: HandlerContext| {
//!     let stop = stop.clone();
//!     async move {
//!         println!("mail to {} (key {})", event.email, ctx.idempotency_key());
//!         stop.cancel();
//!         HandlerResult::Ok(())
//!     }
//! })
//! .build()
//! .await?;
//!
//! bus.publish(&SignedUp { email: "ada@example.com".into() }).await?;
//! bus.run(done).await?; // returns once the mail handler has run
//! # Ok(())
//! # }
//! ```

mod context;
mod dispatch;
mod publisher;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use self::context::{HandlerContext, HandlerError, HandlerResult};
use self::dispatch::{Dispatcher, ErasedHandler};
pub use self::publisher::{Published, Publisher};
use crate::cloudevents::CloudEventError;
use crate::event::{Event, check_type_name};
use crate::idempotency::IdempotencyKey;
use crate::transport::{
    MessageHandler, ReceiveOptions, RetryBackoff, SubscriptionConfig, TopicConfig, Transport,
    TransportError,
};

/// The redelivery backoff the bus gives the subscription it creates: Pub/Sub's own defaults
/// for a retry policy (10 seconds, doubling up to 10 minutes). Without a retry policy Pub/Sub
/// redelivers a nacked message at once, and a handler failing on a down dependency would
/// spin on it.
pub const DEFAULT_RETRY: RetryBackoff = RetryBackoff {
    minimum: Duration::from_secs(10),
    maximum: Duration::from_secs(600),
};

/// What the bus does with an event whose type has no handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownEventPolicy {
    /// Acknowledge it (it is gone) and log a warning. For buses whose topic also carries
    /// events this service does not care about (a subscription filter on
    /// `attributes.ce-type` is cheaper still).
    AckAndLog,
    /// Nack it, so it is redelivered after the backoff, possibly to another instance: during a
    /// rolling deploy, an event emitted by the new version waits for an instance that knows
    /// it instead of being dropped by an old one. With a dead-letter policy, an event nobody
    /// handles ends up there. The default.
    #[default]
    Nack,
}

/// What the bus does with a message it cannot decode: not a CloudEvent (missing `ce-type`,
/// another spec version), an invalid idempotency key, or a payload that does not deserialize
/// into the handler's event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MalformedEventPolicy {
    /// Acknowledge it and log an error. The default: a message that cannot be decoded now will
    /// not decode on the next delivery either, and nacking it would redeliver it forever.
    #[default]
    AckAndLog,
    /// Nack it. Use with a dead-letter policy, to keep malformed messages for inspection
    /// (or when payload changes may be rolled out before the handlers that read them).
    Nack,
}

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Two handlers were registered for one event type.
    #[error("two handlers registered for event type {event_type}")]
    DuplicateHandler {
        /// The event type.
        event_type: &'static str,
    },
    /// An event type name is unusable (empty, or too long for an attribute).
    #[error("invalid event type {event_type:?}: {reason}")]
    InvalidEventType {
        /// The event type.
        event_type: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The configured CloudEvents source is empty.
    #[error("the event source is empty; CloudEvents requires one")]
    EmptySource,
    /// Creating the topic or the subscription failed.
    #[error("cannot create {resource}: {source}")]
    Setup {
        /// The full name of the topic or subscription.
        resource: String,
        /// The transport's error.
        source: TransportError,
    },
    /// The event could not be encoded as a CloudEvent.
    #[error("cannot encode event {event_type}: {source}")]
    Encode {
        /// The event type.
        event_type: &'static str,
        /// Why.
        source: CloudEventError,
    },
    /// The broker did not confirm a publish; the event may or may not have been stored, and
    /// publishing it again with the same key is safe.
    #[error("cannot publish {event_type} to {topic}: {source}")]
    Publish {
        /// The full topic name.
        topic: String,
        /// The event type.
        event_type: &'static str,
        /// The transport's error.
        source: TransportError,
    },
    /// Receiving from the subscription stopped with an error.
    #[error("receiving from {subscription} failed: {source}")]
    Receive {
        /// The full subscription name.
        subscription: String,
        /// The transport's error.
        source: TransportError,
    },
}

/// Configures an [`EventBus`]; see [`EventBus::builder`].
#[must_use = "call .build().await to create the bus"]
pub struct EventBusBuilder {
    transport: Arc<dyn Transport>,
    topic: TopicConfig,
    subscription: SubscriptionConfig,
    source: Option<String>,
    handlers: HashMap<&'static str, ErasedHandler>,
    error: Option<BusError>,
    unknown: UnknownEventPolicy,
    malformed: MalformedEventPolicy,
    receive_options: ReceiveOptions,
}

impl fmt::Debug for EventBusBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<_> = self.handlers.keys().collect();
        types.sort();
        f.debug_struct("EventBusBuilder")
            .field("topic", &self.topic)
            .field("subscription", &self.subscription)
            .field("source", &self.source)
            .field("handlers", &types)
            .field("unknown", &self.unknown)
            .field("malformed", &self.malformed)
            .field("receive_options", &self.receive_options)
            .finish_non_exhaustive()
    }
}

impl EventBusBuilder {
    /// The CloudEvents `source` of the events this bus publishes: a URI-reference naming the
    /// service or context they come from, e.g. `/signup` or `https://example.com/billing`.
    /// Defaults to `/` followed by the topic's full name.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Registers `handler` for events of type `E`. It is called with the decoded event and
    /// its [`HandlerContext`]; returning `Ok` acks the message, returning an error (or
    /// panicking) nacks it for redelivery. Handlers run concurrently, up to the receive
    /// options' flow-control limits.
    ///
    /// Registering two handlers for one type is an error reported by [`Self::build`].
    pub fn on<E, F, Fut>(mut self, handler: F) -> Self
    where
        E: Event,
        F: Fn(E, HandlerContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        if let Err(reason) = check_type_name(E::TYPE) {
            self.error.get_or_insert(BusError::InvalidEventType {
                event_type: E::TYPE,
                reason,
            });
        } else if self
            .handlers
            .insert(E::TYPE, dispatch::erase(handler))
            .is_some()
        {
            self.error.get_or_insert(BusError::DuplicateHandler {
                event_type: E::TYPE,
            });
        }
        self
    }

    /// What to do with events of a type that has no handler (default: nack).
    pub fn unknown_events(mut self, policy: UnknownEventPolicy) -> Self {
        self.unknown = policy;
        self
    }

    /// What to do with messages that cannot be decoded (default: ack and log).
    pub fn malformed_events(mut self, policy: MalformedEventPolicy) -> Self {
        self.malformed = policy;
        self
    }

    /// Adjusts the subscription the bus creates if it does not exist: retry backoff
    /// ([`DEFAULT_RETRY`] unless changed), dead-lettering, message ordering, ack deadline,
    /// filter, labels. An existing subscription is left as it is.
    pub fn subscription_config(mut self, configure: impl FnOnce(&mut SubscriptionConfig)) -> Self {
        configure(&mut self.subscription);
        self
    }

    /// Adjusts the topic the bus creates if it does not exist, e.g. its labels
    /// (`converge-dedup-window` sets how long the broker remembers idempotency keys). An
    /// existing topic is left as it is.
    pub fn topic_config(mut self, configure: impl FnOnce(&mut TopicConfig)) -> Self {
        configure(&mut self.topic);
        self
    }

    /// Flow control of [`EventBus::run`] (how many events are handled at once).
    pub fn receive_options(mut self, options: ReceiveOptions) -> Self {
        self.receive_options = options;
        self
    }

    /// Checks the configuration and makes sure the topic, the dead-letter topic (if any) and
    /// the subscription exist.
    pub async fn build(self) -> Result<EventBus, BusError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let source = self
            .source
            .unwrap_or_else(|| format!("/{}", self.topic.name));
        if source.is_empty() {
            return Err(BusError::EmptySource);
        }
        let setup = |resource: &str| {
            let resource = resource.to_owned();
            move |source| BusError::Setup { resource, source }
        };
        self.transport
            .ensure_topic(&self.topic)
            .await
            .map_err(setup(&self.topic.name))?;
        if let Some(dead_letter) = &self.subscription.dead_letter {
            let topic = TopicConfig {
                name: dead_letter.topic.clone(),
                ..TopicConfig::default()
            };
            self.transport
                .ensure_topic(&topic)
                .await
                .map_err(setup(&topic.name))?;
        }
        self.transport
            .ensure_subscription(&self.subscription)
            .await
            .map_err(setup(&self.subscription.name))?;

        let publisher = Publisher::new(self.transport.clone(), self.topic.name.clone(), source);
        let mut types: Vec<_> = self.handlers.keys().copied().collect();
        types.sort_unstable();
        tracing::info!(
            topic = %self.topic.name,
            subscription = %self.subscription.name,
            source = %publisher.source(),
            event_types = ?types,
            "event bus ready"
        );
        Ok(EventBus {
            transport: self.transport,
            publisher: publisher.clone(),
            receive_options: self.receive_options,
            dispatcher: Arc::new(Dispatcher {
                subscription: self.subscription.name,
                handlers: self.handlers,
                unknown: self.unknown,
                malformed: self.malformed,
                publisher,
            }),
        })
    }
}

/// A service's event bus: publishes typed events onto its topic and runs their handlers from
/// its subscription. See the [module documentation](self) for what it guarantees.
pub struct EventBus {
    transport: Arc<dyn Transport>,
    publisher: Publisher,
    receive_options: ReceiveOptions,
    dispatcher: Arc<Dispatcher>,
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<_> = self.dispatcher.handlers.keys().collect();
        types.sort();
        f.debug_struct("EventBus")
            .field("topic", &self.publisher.topic())
            .field("subscription", &self.dispatcher.subscription)
            .field("source", &self.publisher.source())
            .field("handlers", &types)
            .finish_non_exhaustive()
    }
}

impl EventBus {
    /// Starts configuring a bus on `topic` and `subscription` (full names,
    /// `projects/{project}/topics/{topic}` and `projects/{project}/subscriptions/{name}`),
    /// over `transport` (the gRPC client, or the in-memory transport in tests).
    pub fn builder(
        transport: Arc<dyn Transport>,
        topic: impl Into<String>,
        subscription: impl Into<String>,
    ) -> EventBusBuilder {
        let topic = topic.into();
        let mut subscription = SubscriptionConfig::new(subscription, topic.clone());
        subscription.retry = Some(DEFAULT_RETRY);
        EventBusBuilder {
            transport,
            topic: TopicConfig {
                name: topic,
                ..TopicConfig::default()
            },
            subscription,
            source: None,
            handlers: HashMap::new(),
            error: None,
            unknown: UnknownEventPolicy::default(),
            malformed: MalformedEventPolicy::default(),
            receive_options: ReceiveOptions::default(),
        }
    }

    /// A cloneable handle for publishing onto this bus from elsewhere (request handlers,
    /// jobs), without holding the bus.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// The full name of the bus's topic.
    pub fn topic(&self) -> &str {
        self.publisher.topic()
    }

    /// The full name of the bus's subscription.
    pub fn subscription(&self) -> &str {
        &self.dispatcher.subscription
    }

    /// Publishes `event` under a fresh random key; see [`Publisher::publish`].
    pub async fn publish<E: Event>(&self, event: &E) -> Result<IdempotencyKey, BusError> {
        self.publisher.publish(event).await
    }

    /// Publishes `event` under a caller-chosen key; see [`Publisher::publish_with_key`].
    pub async fn publish_with_key<E: Event>(
        &self,
        event: &E,
        key: IdempotencyKey,
    ) -> Result<Published, BusError> {
        self.publisher.publish_with_key(event, key).await
    }

    /// Receives and dispatches events until `shutdown` is cancelled; then stops taking new
    /// ones, lets the handlers in flight finish, settles them and returns `Ok`. Several
    /// instances of a service may run the same bus: the subscription shares the events
    /// between them.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), BusError> {
        let dispatcher = self.dispatcher.clone();
        let handler: MessageHandler =
            Arc::new(move |message| Box::pin(dispatcher.clone().dispatch(message)));
        let subscription = &self.dispatcher.subscription;
        tracing::info!(subscription = %subscription, "event bus running");
        let result = self
            .transport
            .receive(subscription, self.receive_options, handler, shutdown)
            .await;
        tracing::info!(subscription = %subscription, "event bus stopped");
        result.map_err(|source| BusError::Receive {
            subscription: subscription.clone(),
            source,
        })
    }
}
