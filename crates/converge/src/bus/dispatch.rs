//! From a received message to a handler's verdict: decode, route by type, run the handler
//! with its key in scope, turn errors and panics into nacks.

use std::any::Any;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt as _;
use tracing::Instrument as _;

use crate::bus::context::{HandlerContext, HandlerResult};
use crate::bus::publisher::Publisher;
use crate::bus::{MalformedEventPolicy, UnknownEventPolicy};
use crate::cloudevents::{self, CloudEvent, CloudEventError};
use crate::event::Event;
use crate::transport::{BoxFuture, Disposition, IncomingMessage};

/// A handler with its event type erased: decodes the payload (synchronously, so that a
/// malformed payload is told apart from a failing handler) and returns the handler's future.
pub(crate) type ErasedHandler = Arc<
    dyn Fn(&CloudEvent, &Bytes, HandlerContext) -> Result<BoxFuture<HandlerResult>, CloudEventError>
        + Send
        + Sync,
>;

/// Wraps a typed handler.
pub(crate) fn erase<E, F, Fut>(handler: F) -> ErasedHandler
where
    E: Event,
    F: Fn(E, HandlerContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |event, data, context| {
        let event: E = cloudevents::decode_data(event, data)?;
        let handler = handler.clone();
        // The user's function is called inside the future, so that a panic in its synchronous
        // part is caught along with one in its asynchronous part.
        Ok(Box::pin(async move { handler(event, context).await }))
    })
}

/// Everything the receive loop needs, shared by all messages.
pub(crate) struct Dispatcher {
    pub(crate) subscription: String,
    pub(crate) handlers: HashMap<&'static str, ErasedHandler>,
    pub(crate) unknown: UnknownEventPolicy,
    pub(crate) malformed: MalformedEventPolicy,
    pub(crate) publisher: Publisher,
}

impl Dispatcher {
    /// Handles one message and says what to do with it. Never panics: user code runs under
    /// `catch_unwind`.
    pub(crate) async fn dispatch(self: Arc<Self>, message: IncomingMessage) -> Disposition {
        let span = tracing::info_span!(
            "event",
            subscription = %self.subscription,
            message_id = %message.message_id,
            event_type = tracing::field::Empty,
            idempotency_key = tracing::field::Empty,
            attempt = message.delivery_attempt,
        );
        self.dispatch_in_span(message).instrument(span).await
    }

    async fn dispatch_in_span(&self, message: IncomingMessage) -> Disposition {
        let span = tracing::Span::current();
        let (event, data) = match cloudevents::decode(&message) {
            Ok(decoded) => decoded,
            Err(error) => return self.malformed(&error),
        };
        span.record("event_type", event.event_type.as_str());
        let key = match cloudevents::idempotency_key(&message.attributes, &event) {
            Ok(key) => key,
            Err(error) => return self.malformed(&error),
        };
        span.record("idempotency_key", key.as_str());

        let Some(handler) = self.handlers.get(event.event_type.as_str()) else {
            return match self.unknown {
                UnknownEventPolicy::AckAndLog => {
                    tracing::warn!("no handler for this event type; acked and dropped");
                    Disposition::Ack
                }
                UnknownEventPolicy::Nack => {
                    tracing::warn!("no handler for this event type; nacked for another consumer");
                    Disposition::Nack
                }
            };
        };
        let context = HandlerContext::new(
            self.publisher.clone(),
            event.clone(),
            key.clone(),
            message.message_id.clone(),
            message.delivery_attempt,
        );
        let future = match handler(&event, &data, context) {
            Ok(future) => future,
            Err(error) => return self.malformed(&error),
        };
        tracing::debug!("handling event");
        let run = AssertUnwindSafe(key.scope(future)).catch_unwind().await;
        match run {
            Ok(Ok(())) => {
                tracing::debug!("event handled");
                Disposition::Ack
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "handler failed; nacked for redelivery");
                Disposition::Nack
            }
            Err(panic) => {
                tracing::error!(
                    panic = panic_message(panic.as_ref()),
                    "handler panicked; nacked for redelivery"
                );
                Disposition::Nack
            }
        }
    }

    fn malformed(&self, error: &CloudEventError) -> Disposition {
        match self.malformed {
            MalformedEventPolicy::AckAndLog => {
                tracing::error!(error = %error, "malformed event; acked and dropped");
                Disposition::Ack
            }
            MalformedEventPolicy::Nack => {
                tracing::error!(error = %error, "malformed event; nacked");
                Disposition::Nack
            }
        }
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "non-string panic payload"
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::bus::HandlerError;
    use crate::idempotency::IdempotencyKey;
    use crate::memory::MemoryTransport;

    #[derive(Serialize, Deserialize)]
    struct Ping {
        fail: Option<String>,
    }

    impl Event for Ping {
        const TYPE: &'static str = "com.example.ping";
    }

    #[derive(Serialize, Deserialize)]
    struct Pong;

    impl Event for Pong {
        const TYPE: &'static str = "com.example.pong";
    }

    /// The verdicts come from the bus itself, not from the transport around it: the gRPC
    /// transport relies on the bus to turn a panic into a nack.
    fn dispatcher(unknown: UnknownEventPolicy, malformed: MalformedEventPolicy) -> Arc<Dispatcher> {
        let handler = erase(|ping: Ping, ctx: HandlerContext| async move {
            assert_eq!(
                IdempotencyKey::current().as_ref(),
                Some(ctx.idempotency_key())
            );
            match ping.fail.as_deref() {
                None => Ok(()),
                Some("panic") => panic!("asked to panic"),
                Some(reason) => Err(HandlerError::msg(reason)),
            }
        });
        let transport = Arc::new(MemoryTransport::new());
        Arc::new(Dispatcher {
            subscription: "projects/p/subscriptions/s".into(),
            handlers: HashMap::from([(Ping::TYPE, handler)]),
            unknown,
            malformed,
            publisher: Publisher::new(transport, "projects/p/topics/t".into(), "/t".into()),
        })
    }

    fn message<E: Event>(event: &E) -> IncomingMessage {
        let out =
            cloudevents::encode(event, "/t", &IdempotencyKey::new(), SystemTime::now()).unwrap();
        IncomingMessage {
            message_id: "1".into(),
            data: out.data,
            attributes: out.attributes,
            ordering_key: out.ordering_key,
            publish_time: SystemTime::now(),
            delivery_attempt: None,
        }
    }

    #[tokio::test]
    async fn verdicts() {
        let ack_log = dispatcher(
            UnknownEventPolicy::AckAndLog,
            MalformedEventPolicy::AckAndLog,
        );
        let nack = dispatcher(UnknownEventPolicy::Nack, MalformedEventPolicy::Nack);
        let ping = |fail: Option<&str>| {
            message(&Ping {
                fail: fail.map(str::to_owned),
            })
        };
        let mut bad_json = ping(None);
        bad_json.data = "[1, 2".into();
        let mut no_type = ping(None);
        no_type.attributes.remove("ce-type");
        let mut bad_key = ping(None);
        bad_key.attributes.insert(
            crate::idempotency::IDEMPOTENCY_KEY_ATTRIBUTE.into(),
            "a b".into(),
        );

        for (name, message, with_ack_log, with_nack) in [
            ("ok", ping(None), Disposition::Ack, Disposition::Ack),
            (
                "error",
                ping(Some("down")),
                Disposition::Nack,
                Disposition::Nack,
            ),
            (
                "panic",
                ping(Some("panic")),
                Disposition::Nack,
                Disposition::Nack,
            ),
            (
                "unknown",
                message(&Pong),
                Disposition::Ack,
                Disposition::Nack,
            ),
            ("bad json", bad_json, Disposition::Ack, Disposition::Nack),
            ("no type", no_type, Disposition::Ack, Disposition::Nack),
            ("bad key", bad_key, Disposition::Ack, Disposition::Nack),
        ] {
            assert_eq!(
                ack_log.clone().dispatch(message.clone()).await,
                with_ack_log,
                "{name} with ack-and-log policies"
            );
            assert_eq!(
                nack.clone().dispatch(message).await,
                with_nack,
                "{name} with nack policies"
            );
        }
    }
}
