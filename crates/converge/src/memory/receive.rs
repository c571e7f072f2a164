//! The receive loop of the in-memory transport: long-polls the engine within the flow-control
//! limits, runs the handler on each message in its own task and settles each message by the
//! handler's answer.
//!
//! Lease extension follows the manual clock. A real client extends a lease every few seconds
//! while the handler runs, up to `max_lease_extension` after delivery; in memory time moves only
//! when the test says so, so the same effect is had by leasing each message for
//! `max(ack deadline, max_lease_extension)` at once. A handler that hangs thus keeps its message
//! until the clock is advanced past that, and never loses it to real time passing.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use converge_core::limits::MAX_PULL_MESSAGES;
use converge_core::{AckId, AckOutcome, PullOptions, ReceivedMessage, Store, SubscriptionName};
use converge_store::embedded::EmbeddedStore;
use futures::FutureExt as _;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::convert::{incoming, resource_error};
use crate::transport::{Disposition, MessageHandler, ReceiveOptions, TransportError};

/// How long one pull waits for a message before the loop pulls again. Any value works: the
/// engine wakes the pull on publish, on a nack or ack that frees something, and when an
/// advance of the clock makes a retry due; the loop drops the pull on shutdown.
const PULL_WAIT: Duration = Duration::from_secs(30);

/// Messages in handlers' hands or being settled, across every receive loop of one transport.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    count: AtomicUsize,
    settled: Notify,
}

impl InFlight {
    /// How many messages are in flight now.
    pub(super) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once no message is in flight.
    pub(super) async fn idle(&self) {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            settled.await;
        }
    }

    fn start(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    fn done(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.settled.notify_waiters();
    }
}

/// Receives from `name` until `shutdown`, as [`crate::transport::Transport::receive`] documents.
pub(super) async fn run(
    store: EmbeddedStore,
    in_flight: Arc<InFlight>,
    name: SubscriptionName,
    options: ReceiveOptions,
    handler: MessageHandler,
    shutdown: CancellationToken,
) -> Result<(), TransportError> {
    let settings = store
        .get_subscription(&name)
        .await
        .map_err(resource_error(name.id()))?;
    let lease = settings.ack_deadline.max(options.max_lease_extension);
    let max_messages = options.max_outstanding_messages.max(1);
    let max_bytes = options.max_outstanding_bytes.max(1);
    tracing::debug!(subscription = %name, lease_secs = lease.as_secs(), max_messages, max_bytes, "receiving");

    let mut handlers: JoinSet<()> = JoinSet::new();
    let mut sizes: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut outstanding = Outstanding::default();
    let result = loop {
        let room = outstanding.messages < max_messages && outstanding.bytes < max_bytes;
        debug_assert!(
            room || !handlers.is_empty(),
            "flow control is full but no handler runs"
        );
        let pull = PullOptions {
            max_messages: (max_messages - outstanding.messages).clamp(1, MAX_PULL_MESSAGES),
            max_bytes: Some(max_bytes.saturating_sub(outstanding.bytes)),
            wait: PULL_WAIT,
            ack_deadline: Some(lease),
        };
        // Dropping a pending pull is safe: the engine takes messages and answers in one step,
        // so a pull dropped while it waits has taken nothing.
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            Some(joined) = handlers.join_next_with_id(), if !handlers.is_empty() => {
                outstanding.finish(&mut sizes, joined, &name);
            }
            pulled = store.pull_with(&name, pull), if room => match pulled {
                Ok(received) => {
                    for message in received {
                        let size = message.message.size();
                        in_flight.start();
                        let task = handle(store.clone(), name.clone(), handler.clone(), message, in_flight.clone());
                        let id = handlers.spawn(task).id();
                        sizes.insert(id, size);
                        outstanding.messages += 1;
                        outstanding.bytes += size;
                    }
                }
                Err(e) => {
                    tracing::warn!(subscription = %name, error = %e, "receiving stopped: pull failed");
                    break Err(resource_error(name.id())(e));
                }
            },
        }
    };
    tracing::debug!(subscription = %name, in_flight = outstanding.messages, "receiving stops; waiting for handlers in flight");
    while let Some(joined) = handlers.join_next_with_id().await {
        outstanding.finish(&mut sizes, joined, &name);
    }
    tracing::debug!(subscription = %name, "receiving stopped");
    result
}

/// What the handlers hold: flow control counts it against [`ReceiveOptions`].
#[derive(Debug, Default)]
struct Outstanding {
    messages: usize,
    bytes: usize,
}

impl Outstanding {
    /// A handler task ended: its message is settled and its room is free again.
    fn finish(
        &mut self,
        sizes: &mut HashMap<tokio::task::Id, usize>,
        joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
        name: &SubscriptionName,
    ) {
        let id = match joined {
            Ok((id, ())) => id,
            Err(e) => {
                // Panics are caught inside the task; this is a cancelled runtime.
                tracing::warn!(subscription = %name, error = %e, "handler task ended abnormally");
                e.id()
            }
        };
        let size = sizes.remove(&id).unwrap_or_default();
        self.messages = self.messages.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(size);
    }
}

/// Runs the handler on one message and settles it: ack, or nack (also when the handler
/// panics, so a panic costs a retry, not the message).
async fn handle(
    store: EmbeddedStore,
    name: SubscriptionName,
    handler: MessageHandler,
    received: ReceivedMessage,
    in_flight: Arc<InFlight>,
) {
    let message = incoming(&received);
    let message_id = message.message_id.clone();
    let run = AssertUnwindSafe(async move { handler(message).await });
    let disposition = match run.catch_unwind().await {
        Ok(disposition) => disposition,
        Err(_) => {
            tracing::warn!(subscription = %name, message_id = %message_id, "handler panicked; message nacked");
            Disposition::Nack
        }
    };
    settle(&store, &name, &received.ack_id, disposition, &message_id).await;
    in_flight.done();
}

/// Acks or nacks one delivery. A failure or a stale lease only costs a redelivery, which
/// at-least-once delivery allows, so it is logged rather than returned.
async fn settle(
    store: &EmbeddedStore,
    name: &SubscriptionName,
    ack_id: &AckId,
    disposition: Disposition,
    message_id: &str,
) {
    let ack_ids = std::slice::from_ref(ack_id);
    let outcome = match disposition {
        Disposition::Ack => store.acknowledge(name, ack_ids).await,
        Disposition::Nack => {
            store
                .modify_ack_deadline(name, ack_ids, Duration::ZERO)
                .await
        }
    };
    match outcome {
        Ok(outcomes) if outcomes.first() == Some(&AckOutcome::Applied) => {
            tracing::debug!(subscription = %name, message_id = %message_id, ?disposition, "message settled");
        }
        Ok(_) => {
            tracing::debug!(subscription = %name, message_id = %message_id, ?disposition, "lease had expired; the message may be delivered again");
        }
        Err(e) => {
            tracing::warn!(subscription = %name, message_id = %message_id, ?disposition, error = %e, "cannot settle message; it will be delivered again");
        }
    }
}
