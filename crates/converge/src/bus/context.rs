//! What a handler gets besides its event, and what it returns on failure.

use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::bus::BusError;
use crate::bus::publisher::{Published, Publisher};
use crate::cloudevents::CloudEvent;
use crate::event::Event;
use crate::idempotency::IdempotencyKey;

/// The context of one handler invocation: the incoming event's metadata and key, and the way
/// to emit further events (a cascade) whose keys are derived from it.
///
/// # Why emitted keys are derived
///
/// A handler that emits an event and then fails is run again, and emits again. The `n`-th
/// event emitted in an invocation (counting from 0, over [`HandlerContext::emit`] and
/// [`HandlerContext::emit_to`] together) carries the key `incoming.derive(n)`
/// ([`IdempotencyKey::derive`]), the same on every run, so the broker recognises the repeat
/// and stores nothing new. This holds as long as the handler emits the same events in the
/// same order on every run, which ordinary sequential code does; emitting from spawned tasks
/// racing each other would not (which is also why the context is not `Clone`).
pub struct HandlerContext {
    publisher: Publisher,
    event: CloudEvent,
    key: IdempotencyKey,
    message_id: String,
    delivery_attempt: Option<u32>,
    emitted: AtomicU32,
}

impl fmt::Debug for HandlerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerContext")
            .field("event_type", &self.event.event_type)
            .field("idempotency_key", &self.key)
            .field("message_id", &self.message_id)
            .field("delivery_attempt", &self.delivery_attempt)
            .field("emitted", &self.emitted.load(Ordering::Relaxed))
            .finish()
    }
}

impl HandlerContext {
    pub(crate) fn new(
        publisher: Publisher,
        event: CloudEvent,
        key: IdempotencyKey,
        message_id: String,
        delivery_attempt: Option<u32>,
    ) -> Self {
        Self {
            publisher,
            event,
            key,
            message_id,
            delivery_attempt,
            emitted: AtomicU32::new(0),
        }
    }

    /// The incoming event's idempotency key: pass it to the other services this handler calls
    /// (an `Idempotency-Key` header, a unique column), so that a retry of the handler is a
    /// repeat for them too. Also available without plumbing as
    /// [`IdempotencyKey::current`] while the handler runs.
    pub fn idempotency_key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// The incoming event's CloudEvents context (type, source, time, subject, extensions).
    pub fn event(&self) -> &CloudEvent {
        &self.event
    }

    /// The broker's id of the message being handled (differs between two publishes of one
    /// intent that the broker did not deduplicate; use the key to recognise repeats).
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// Which delivery this is, 1 for the first. Pub/Sub counts deliveries only on
    /// subscriptions with a dead-letter policy; elsewhere this is `None`.
    pub fn delivery_attempt(&self) -> Option<u32> {
        self.delivery_attempt
    }

    /// How many events this invocation has emitted so far (the position the next one gets).
    pub fn emitted(&self) -> u32 {
        self.emitted.load(Ordering::SeqCst)
    }

    /// Publishes `event` onto the bus's own topic, at once, with the key derived from the
    /// incoming key and the event's position in this invocation. A retried handler emits the
    /// same keys, which the broker drops as duplicates; the returned [`Published::message_id`]
    /// then names the message stored the first time.
    pub async fn emit<E: Event>(&self, event: &E) -> Result<Published, BusError> {
        let key = self.next_key();
        self.publisher.publish_with_key(event, key).await
    }

    /// Like [`HandlerContext::emit`], onto another topic (full name): forwarding to a topic
    /// other services subscribe to, whose contract the bus's internal events need not be.
    /// Positions are shared with `emit`.
    pub async fn emit_to<E: Event>(&self, topic: &str, event: &E) -> Result<Published, BusError> {
        let key = self.next_key();
        self.publisher.publish_to(topic, event, key).await
    }

    /// Takes the next position and derives its key. Synchronous, so the position is fixed by
    /// the order in which `emit` calls are made, not by the order in which they complete.
    fn next_key(&self) -> IdempotencyKey {
        let position = self.emitted.fetch_add(1, Ordering::SeqCst);
        self.key.derive(position)
    }
}

/// Why a handler failed: any error, boxed. The message is nacked and the broker's retry
/// policy takes over.
///
/// Converts from every error type (and from `&str` / `String`), so `?` works in handlers on
/// whatever the called code returns, `anyhow::Error` included. It deliberately does not
/// implement [`std::error::Error`] itself (that would make the blanket conversion overlap
/// with `From<T> for T`); reach the underlying error with [`HandlerError::as_error`] or
/// [`HandlerError::into_inner`].
pub struct HandlerError(Box<dyn StdError + Send + Sync + 'static>);

impl HandlerError {
    /// An error carrying just `message`.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self(message.to_string().into())
    }

    /// The underlying error, e.g. to `downcast_ref` it.
    pub fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.0
    }

    /// The underlying error, boxed.
    pub fn into_inner(self) -> Box<dyn StdError + Send + Sync + 'static> {
        self.0
    }
}

impl<E> From<E> for HandlerError
where
    E: Into<Box<dyn StdError + Send + Sync + 'static>>,
{
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The error and its chain of causes, `outer: inner: innermost`, so one log line tells the
/// whole story.
impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    fn fails_with_io() -> HandlerResult {
        Err(std::io::Error::other("disk on fire"))?;
        Ok(())
    }

    #[test]
    fn handler_errors_convert_and_show_their_chain() {
        let e = fails_with_io().unwrap_err();
        assert_eq!(e.to_string(), "disk on fire");
        assert!(e.as_error().downcast_ref::<std::io::Error>().is_some());

        let e = HandlerError::from(Outer(std::io::Error::other("inner")));
        assert_eq!(e.to_string(), "outer: inner");

        let e: HandlerError = "plain".into();
        assert_eq!(e.to_string(), "plain");
        assert_eq!(HandlerError::msg(42).to_string(), "42");
    }
}
