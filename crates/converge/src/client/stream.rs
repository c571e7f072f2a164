//! The StreamingPull connection of a subscriber: opens the stream, keeps it alive with
//! heartbeats, and reopens it with backoff when it breaks for a transient reason.
//!
//! It runs as its own task and hands each batch of received messages to the receive loop over
//! a small channel, so a receive loop busy with its handlers slows the reading down (and the
//! broker's flow control takes over) instead of messages piling up in memory. A non-transient
//! failure (NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT, …) ends the task with that status:
//! retrying cannot help.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::subscriber_client::SubscriberClient;
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{
    ReceivedMessage, StreamingPullRequest,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::retry::{Backoff, RetrySettings, is_transient};
use super::subscriber::Counters;

/// A stream that lived this long counts as healthy: the backoff before the next one starts
/// over.
const HEALTHY_STREAM: Duration = Duration::from_secs(10);

/// What the stream task reports to the receive loop.
#[derive(Debug)]
pub enum StreamEvent {
    /// One response's messages, and whether the subscription orders messages by key.
    Messages {
        /// The messages, in the order the broker sent them.
        messages: Vec<ReceivedMessage>,
        /// From the response's subscription properties; `true` when the broker does not say,
        /// which keeps messages of one key in order at worst needlessly.
        ordering: bool,
    },
    /// Receiving cannot go on.
    Fatal(tonic::Status),
}

/// The parameters of a stream, fixed for the life of a subscriber's `receive`.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The first request of every stream (subscription, deadline, client id, flow control).
    pub first: StreamingPullRequest,
    /// How often to send an empty request so that idle connections are not dropped.
    pub heartbeat: Duration,
    /// Backoff between reconnects (its total timeout is not used: reconnecting goes on as
    /// long as failures are transient).
    pub reconnect: RetrySettings,
}

/// Runs streams one after another until `stop`, or until a non-transient failure.
pub async fn run(
    stub: SubscriberClient<Channel>,
    config: StreamConfig,
    events: mpsc::Sender<StreamEvent>,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    let subscription = config.first.subscription.clone();
    let mut backoff = Backoff::new(&config.reconnect);
    loop {
        let started = Instant::now();
        let (ended, delivered) = one_stream(&stub, &config, &events, &stop, &counters).await;
        let status = match ended {
            StreamEnd::Stopped => return,
            StreamEnd::Closed => None,
            StreamEnd::Failed(status) => Some(status),
        };
        if let Some(status) = &status
            && !is_transient(status.code())
        {
            tracing::warn!(subscription = %subscription, code = ?status.code(), error = %status.message(), "streaming pull failed");
            let _ = events.send(StreamEvent::Fatal(status.clone())).await;
            return;
        }
        if delivered || started.elapsed() >= HEALTHY_STREAM {
            backoff = Backoff::new(&config.reconnect);
        }
        let pause = backoff.next_pause();
        match &status {
            Some(status) => {
                tracing::info!(subscription = %subscription, code = ?status.code(), error = %status.message(), pause_ms = pause.as_millis() as u64, "stream broke, reconnecting");
            }
            None => {
                tracing::debug!(subscription = %subscription, pause_ms = pause.as_millis() as u64, "stream closed by the broker, reconnecting");
            }
        }
        counters.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

enum StreamEnd {
    /// `stop` was cancelled.
    Stopped,
    /// The broker ended the stream cleanly (superseded, or shutting down gracefully).
    Closed,
    /// The call failed or the stream broke.
    Failed(tonic::Status),
}

/// One stream from opening to end; also reports whether it delivered anything.
async fn one_stream(
    stub: &SubscriberClient<Channel>,
    config: &StreamConfig,
    events: &mpsc::Sender<StreamEvent>,
    stop: &CancellationToken,
    counters: &Counters,
) -> (StreamEnd, bool) {
    let (requests, outgoing) = mpsc::channel(4);
    // A fresh channel has room: the first request is queued before the call starts, as the
    // broker reads it before answering.
    let _ = requests.try_send(config.first.clone());
    let mut stub = stub.clone();
    let opened = tokio::select! {
        biased;
        () = stop.cancelled() => return (StreamEnd::Stopped, false),
        opened = stub.streaming_pull(ReceiverStream::new(outgoing)) => opened,
    };
    let mut stream = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => return (StreamEnd::Failed(status), false),
    };
    tracing::debug!(subscription = %config.first.subscription, "stream opened");
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + config.heartbeat, config.heartbeat);
    let mut delivered = false;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return (StreamEnd::Stopped, delivered),
            _ = heartbeat.tick() => {
                // Full means requests are already on their way: no heartbeat needed.
                let _ = requests.try_send(StreamingPullRequest::default());
            }
            next = stream.message() => match next {
                Ok(Some(response)) => {
                    if response.received_messages.is_empty() {
                        continue;
                    }
                    delivered = true;
                    counters
                        .received
                        .fetch_add(response.received_messages.len() as u64, Ordering::Relaxed);
                    let ordering = response
                        .subscription_properties
                        .is_none_or(|p| p.message_ordering_enabled);
                    let event = StreamEvent::Messages {
                        messages: response.received_messages,
                        ordering,
                    };
                    // Not raced against `stop`: once received, the messages go to the
                    // receive loop, which nacks what it will not run.
                    if events.send(event).await.is_err() {
                        return (StreamEnd::Stopped, delivered);
                    }
                }
                Ok(None) => return (StreamEnd::Closed, delivered),
                Err(status) => return (StreamEnd::Failed(status), delivered),
            },
        }
    }
}
