//! Publishing typed events as CloudEvents onto a topic.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::bus::BusError;
use crate::cloudevents;
use crate::event::Event;
use crate::idempotency::IdempotencyKey;
use crate::transport::Transport;

/// What the broker answered to a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event's idempotency key (also its CloudEvents `id`).
    pub key: IdempotencyKey,
    /// The broker's message id. When the key had already been published to the topic within
    /// its deduplication window, this is the id of that first message: nothing new was stored.
    pub message_id: String,
}

/// A cheap, cloneable handle that publishes typed events onto a bus's topic: for request
/// handlers, jobs and anything else outside an event handler that starts a cascade.
///
/// Obtained from [`EventBus::publisher`](crate::bus::EventBus::publisher); every event it
/// publishes carries the bus's `source`.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Arc<dyn Transport>,
    topic: String,
    source: String,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.inner.topic)
            .field("source", &self.inner.source)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub(crate) fn new(transport: Arc<dyn Transport>, topic: String, source: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                transport,
                topic,
                source,
            }),
        }
    }

    /// The full name of the topic events are published to.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The CloudEvents `source` every published event carries.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Publishes `event` under a fresh random key, which it returns: the start of a new
    /// cascade.
    ///
    /// If this fails, the event may or may not have been stored, and calling it again would
    /// use another key and could publish it twice. When that matters (it usually does), pick
    /// the key from the intent itself and use [`Publisher::publish_with_key`], which is safe
    /// to retry.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<IdempotencyKey, BusError> {
        let published = self.publish_with_key(event, IdempotencyKey::new()).await?;
        Ok(published.key)
    }

    /// Publishes `event` under `key`, chosen by the caller from the intent it records (an
    /// incoming request's `Idempotency-Key`, an outbox row's id): publishing again with the same
    /// key, after a failure or from a retried caller, stores nothing new within the topic's
    /// deduplication window.
    pub async fn publish_with_key<E: Event>(
        &self,
        event: &E,
        key: IdempotencyKey,
    ) -> Result<Published, BusError> {
        self.publish_to(&self.inner.topic, event, key).await
    }

    /// Publishes `event` under `key` onto another topic (full name), with this bus's source.
    pub async fn publish_to<E: Event>(
        &self,
        topic: &str,
        event: &E,
        key: IdempotencyKey,
    ) -> Result<Published, BusError> {
        let message = cloudevents::encode(event, &self.inner.source, &key, SystemTime::now())
            .map_err(|source| BusError::Encode {
                event_type: E::TYPE,
                source,
            })?;
        let ids = self
            .inner
            .transport
            .publish(topic, vec![message])
            .await
            .map_err(|source| BusError::Publish {
                topic: topic.to_owned(),
                event_type: E::TYPE,
                source,
            })?;
        let message_id = ids.into_iter().next().unwrap_or_default();
        tracing::debug!(
            topic = %topic,
            event_type = E::TYPE,
            idempotency_key = %key,
            message_id = %message_id,
            "event published"
        );
        Ok(Published { key, message_id })
    }
}
