//! Receiving with StreamingPull: flow control, lease extension while handlers run, ack on
//! [`Disposition::Ack`], nack on [`Disposition::Nack`], reconnects, graceful shutdown.
//!
//! Three tasks cooperate. The stream task ([`super::stream`]) reads the StreamingPull stream
//! and reconnects it. The receive loop (here) owns what the subscriber holds
//! ([`super::dispatch`]): it starts handlers as flow control allows, extends the leases of
//! everything held on a timer, and settles each message when its handler returns. The acker
//! ([`super::acker`]) sends the settlements in batches as unary calls.
//!
//! Leases: every stream asks for `lease_deadline` (the stream ack deadline), and every
//! `lease_renewal` the leases of all held messages are extended by `lease_deadline` again, so a
//! message stays leased to this client while its handler runs, up to
//! [`ReceiveOptions::max_lease_extension`] after it was received.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::subscriber_client::SubscriberClient;
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{
    ReceivedMessage, StreamingPullRequest,
};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::acker::{Acker, Settle};
use super::dispatch::{Held, Holdings, MAX_DEADLINE_SECS, Running};
use super::retry::RetrySettings;
use super::stream::{self, StreamConfig, StreamEvent};
use crate::transport::{
    Disposition, IncomingMessage, MessageHandler, ReceiveOptions, TransportError,
};

/// The shortest stream ack deadline the API accepts.
const MIN_STREAM_DEADLINE: Duration = Duration::from_secs(10);

/// How a [`Subscriber`] manages leases, acks and its stream. The defaults suit production;
/// tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubscriberSettings {
    /// How long each lease is made to last, at delivery (the stream ack deadline, 10 to 600 s)
    /// and at each extension. Longer means fewer extension calls but slower redelivery of the
    /// messages of a client that died.
    pub lease_deadline: Duration,
    /// How often the leases of held messages are extended; must be well below
    /// `lease_deadline` (it is capped at half of it), so that an extension delayed by a
    /// retry still arrives in time.
    pub lease_renewal: Duration,
    /// How long acks, nacks and extensions are gathered before they are sent. Short, because
    /// on an ordering subscription the next message of a key comes only after the ack of the
    /// previous one: this delay bounds each key's throughput.
    pub ack_delay: Duration,
    /// Retries of the ack and extension calls.
    pub ack_retry: RetrySettings,
    /// Backoff between stream reconnects (reconnecting goes on as long as failures are
    /// transient; the total timeout is not used).
    pub reconnect: RetrySettings,
    /// How often an empty request is sent on an idle stream, as the official clients do.
    pub heartbeat: Duration,
}

impl Default for SubscriberSettings {
    /// Leases of 60 s renewed every 20 s, acks gathered for 10 ms, reconnects backing off from
    /// 100 ms to 10 s, a heartbeat every 30 s.
    fn default() -> Self {
        Self {
            lease_deadline: Duration::from_secs(60),
            lease_renewal: Duration::from_secs(20),
            ack_delay: Duration::from_millis(10),
            ack_retry: RetrySettings::default(),
            reconnect: RetrySettings {
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(10),
                multiplier: 2.0,
                total_timeout: Duration::MAX,
            },
            heartbeat: Duration::from_secs(30),
        }
    }
}

/// Counts of what a subscriber did, for metrics and for tests that need to know that
/// something happened rather than guess from elapsed time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Messages received from the broker (redeliveries count again).
    pub received: u64,
    /// Acks the broker accepted.
    pub acked: u64,
    /// Nacks the broker accepted.
    pub nacked: u64,
    /// Lease extensions the broker accepted, one per message per extension.
    pub lease_extensions: u64,
    /// Streams reopened after they broke or were closed.
    pub reconnects: u64,
}

/// The live counters behind [`SubscriberStats`], shared by the subscriber's tasks.
#[derive(Debug, Default)]
pub struct Counters {
    pub(super) received: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) nacked: AtomicU64,
    pub(super) lease_extensions: AtomicU64,
    pub(super) reconnects: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> SubscriberStats {
        SubscriberStats {
            received: self.received.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            nacked: self.nacked.load(Ordering::Relaxed),
            lease_extensions: self.lease_extensions.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
        }
    }
}

/// Receives from one subscription with StreamingPull. Cheap to clone; clones share their
/// [`SubscriberStats`].
///
/// ```no_run
/// use std::sync::Arc;
/// use converge::client::Client;
/// use converge::transport::{Disposition, MessageHandler, ReceiveOptions};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Client::from_env().await?;
/// let subscriber = client.subscriber("projects/p/subscriptions/work", ReceiveOptions::default());
/// let handler: MessageHandler = Arc::new(|message| {
///     Box::pin(async move {
///         println!("got {:?}", message.data);
///         Disposition::Ack
///     })
/// });
/// let shutdown = CancellationToken::new();
/// subscriber.receive(handler, shutdown.clone()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Subscriber {
    stub: SubscriberClient<Channel>,
    subscription: String,
    options: ReceiveOptions,
    settings: SubscriberSettings,
    counters: Arc<Counters>,
}

impl Subscriber {
    pub(super) fn new(
        stub: SubscriberClient<Channel>,
        subscription: String,
        options: ReceiveOptions,
    ) -> Self {
        Self {
            stub,
            subscription,
            options,
            settings: SubscriberSettings::default(),
            counters: Arc::default(),
        }
    }

    /// The same subscriber with other lease, ack and reconnect settings.
    pub fn with_settings(mut self, settings: SubscriberSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The subscription received from.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// What this subscriber (and its clones) did so far.
    pub fn stats(&self) -> SubscriberStats {
        self.counters.snapshot()
    }

    /// Receives until `shutdown` is cancelled, running `handler` on every message within the
    /// flow-control limits, extending leases while handlers run, and acking or nacking by
    /// the returned [`Disposition`]. Broken streams are reopened as long as the failure is
    /// transient.
    ///
    /// On shutdown it stops reading, nacks the messages it holds but has not handed out (so
    /// they go to another consumer at once), waits for the running handlers, sends their acks
    /// and nacks, and returns `Ok`. A non-transient failure (NOT_FOUND: no such subscription;
    /// PERMISSION_DENIED, …) ends it the same way, returning that error.
    pub async fn receive(
        &self,
        handler: MessageHandler,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError> {
        let settings = self.settings;
        let lease_deadline = settings.lease_deadline.clamp(
            Duration::from_secs(1),
            Duration::from_secs(MAX_DEADLINE_SECS),
        );
        // The stream deadline is the lease every delivery starts with: no longer than the
        // maximum extension allows (but the API's minimum is 10 s).
        let stream_deadline = lease_deadline
            .min(self.options.max_lease_extension)
            .max(MIN_STREAM_DEADLINE);
        let renewal = settings
            .lease_renewal
            .clamp(Duration::from_millis(10), lease_deadline / 2);
        let first = StreamingPullRequest {
            subscription: self.subscription.clone(),
            // Within 10..=600 by the clamps above.
            stream_ack_deadline_seconds: stream_deadline.as_secs() as i32,
            client_id: uuid::Uuid::new_v4().to_string(),
            max_outstanding_messages: i64::try_from(self.options.max_outstanding_messages)
                .unwrap_or(i64::MAX),
            max_outstanding_bytes: i64::try_from(self.options.max_outstanding_bytes)
                .unwrap_or(i64::MAX),
            ..Default::default()
        };
        tracing::debug!(subscription = %self.subscription, client_id = %first.client_id, stream_deadline_secs = stream_deadline.as_secs(), "receiving");

        let (acker, acker_task) = Acker::spawn(
            self.stub.clone(),
            self.subscription.clone(),
            settings.ack_delay,
            settings.ack_retry,
            self.counters.clone(),
        );
        let (events_tx, events) = mpsc::channel(2);
        let stop_stream = CancellationToken::new();
        // If this future is dropped rather than shut down, the stream task stops with it.
        let _stop_on_drop = stop_stream.clone().drop_guard();
        let stream_task = tokio::spawn(stream::run(
            self.stub.clone(),
            StreamConfig {
                first,
                heartbeat: settings.heartbeat.max(Duration::from_secs(1)),
                reconnect: settings.reconnect,
            },
            events_tx,
            stop_stream.clone(),
            self.counters.clone(),
        ));
        let mut run = ReceiveLoop {
            subscription: &self.subscription,
            handler,
            holdings: Holdings::new(&self.options),
            handlers: JoinSet::new(),
            running: HashMap::new(),
            acker,
            events,
            lease_deadline,
            max_extension: self.options.max_lease_extension,
        };
        let mut ticker = tokio::time::interval_at(Instant::now() + renewal, renewal);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

        let fatal = run.receive(&shutdown, &mut ticker).await;

        // Stop reading; whatever the stream task still delivers is nacked.
        stop_stream.cancel();
        while let Some(event) = run.events.recv().await {
            if let StreamEvent::Messages { messages, .. } = event {
                run.acker.nack_all(messages.into_iter().map(|m| m.ack_id));
            }
        }
        let released = run.holdings.release_waiting();
        if !released.is_empty() {
            tracing::debug!(subscription = %self.subscription, count = released.len(), "nacking messages not handed out");
        }
        run.acker.nack_all(released);
        run.drain(&mut ticker).await;
        if let Err(e) = stream_task.await {
            tracing::error!(subscription = %self.subscription, error = %e, "stream task failed");
        }
        drop(run);
        if let Err(e) = acker_task.await {
            tracing::error!(subscription = %self.subscription, error = %e, "ack task failed");
        }
        tracing::debug!(subscription = %self.subscription, "stopped receiving");
        match fatal {
            None => Ok(()),
            Some(status) => Err(status.into()),
        }
    }
}

/// The state of one `receive` call.
struct ReceiveLoop<'a> {
    subscription: &'a str,
    handler: MessageHandler,
    holdings: Holdings,
    handlers: JoinSet<Disposition>,
    running: HashMap<tokio::task::Id, Running>,
    acker: Acker,
    events: mpsc::Receiver<StreamEvent>,
    lease_deadline: Duration,
    max_extension: Duration,
}

impl ReceiveLoop<'_> {
    /// Runs until shutdown or a fatal stream error (returned).
    async fn receive(
        &mut self,
        shutdown: &CancellationToken,
        ticker: &mut tokio::time::Interval,
    ) -> Option<tonic::Status> {
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                // Before the busy branches, so that a steady stream of messages cannot hold
                // lease extensions back.
                _ = ticker.tick() => self.extend_leases(),
                Some(done) = self.handlers.join_next_with_id() => {
                    self.settle(done);
                    self.start_handlers();
                }
                event = self.events.recv() => match event {
                    Some(StreamEvent::Messages { messages, ordering }) => {
                        self.take(messages, ordering);
                        self.start_handlers();
                    }
                    Some(StreamEvent::Fatal(status)) => return Some(status),
                    None => {
                        return Some(tonic::Status::internal("the stream task ended unexpectedly"));
                    }
                },
            }
        }
    }

    /// After receiving stopped: waits for the running handlers, still extending their leases.
    async fn drain(&mut self, ticker: &mut tokio::time::Interval) {
        if !self.handlers.is_empty() {
            tracing::debug!(subscription = %self.subscription, running = self.handlers.len(), "waiting for running handlers");
        }
        while !self.handlers.is_empty() {
            tokio::select! {
                Some(done) = self.handlers.join_next_with_id() => {
                    self.settle(done);
                    // Nothing new starts now: what a settled ordered message let through goes
                    // back to the broker.
                    let released = self.holdings.release_waiting();
                    self.acker.nack_all(released);
                }
                _ = ticker.tick() => self.extend_leases(),
            }
        }
    }

    /// Takes one response's messages into the holdings.
    fn take(&mut self, messages: Vec<ReceivedMessage>, ordering: bool) {
        let now = Instant::now();
        for received in messages {
            let Some(message) = received.message else {
                tracing::warn!(subscription = %self.subscription, "received a message without content; nacking it");
                self.acker.nack_all([received.ack_id]);
                continue;
            };
            let size = message.encoded_len();
            let ordered = ordering && !message.ordering_key.is_empty();
            let incoming = IncomingMessage {
                message_id: message.message_id,
                data: Bytes::from(message.data),
                attributes: message.attributes,
                ordering_key: message.ordering_key,
                publish_time: message
                    .publish_time
                    .and_then(|t| SystemTime::try_from(t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                delivery_attempt: u32::try_from(received.delivery_attempt)
                    .ok()
                    .filter(|&n| n > 0),
            };
            self.holdings.receive(
                Held {
                    ack_id: received.ack_id,
                    message: incoming,
                    size,
                    ordered,
                },
                now,
            );
        }
    }

    /// Hands messages to handlers while flow control allows.
    fn start_handlers(&mut self) {
        while let Some((held, running)) = self.holdings.next_to_run() {
            let handler = self.handler.clone();
            let message = held.message;
            // The handler is called inside the task, so that a panic while building its
            // future is caught like one while running it.
            let task = self.handlers.spawn(async move { handler(message).await });
            self.running.insert(task.id(), running);
        }
    }

    /// Settles a message whose handler returned (a panic counts as a nack).
    fn settle(&mut self, done: Result<(tokio::task::Id, Disposition), tokio::task::JoinError>) {
        let (id, disposition) = match done {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(subscription = %self.subscription, error = %e, "message handler panicked; nacking");
                (e.id(), Disposition::Nack)
            }
        };
        let Some(running) = self.running.remove(&id) else {
            return;
        };
        let also_nack = self.holdings.finished(&running, disposition);
        match disposition {
            Disposition::Ack => self.acker.send(Settle::Ack(running.ack_id)),
            Disposition::Nack => self.acker.nack_all([running.ack_id]),
        }
        self.acker.nack_all(also_nack);
    }

    /// Extends the leases of everything held.
    fn extend_leases(&mut self) {
        let due = self
            .holdings
            .extensions(Instant::now(), self.lease_deadline, self.max_extension);
        for (seconds, ids) in due {
            for ack_id in ids {
                self.acker.send(Settle::Modify { ack_id, seconds });
            }
        }
    }
}
