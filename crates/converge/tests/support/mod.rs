//! What the SDK's integration tests share: a [`Harness`] that gives a test a [`Transport`] on
//! either backend (the in-memory engine, or a real converge broker started in process and
//! reached over gRPC), a way to move the backend's clock, fresh resource names, a [`Recorder`]
//! handler that remembers what it was given, and [`both_backends!`] to run each behavioural test
//! once per backend with the same assertions.
//!
//! Time: the memory backend's clock moves only through [`Harness::advance`]; the broker runs on
//! a test clock that follows real time plus whatever the test adds. Tests therefore use
//! deadlines and backoffs of tens of seconds and advance past them, so that the few seconds of
//! real time a test takes never decide its outcome.
//!
//! Settling: a handler's verdict reaches the backend after the handler returns (the gRPC client
//! sends acks and nacks in batches, a few milliseconds later), and a nack's backoff runs from
//! the moment it arrives. A test that advances the clock past a backoff must first know the
//! nack has landed: [`Harness::wait_settled`] waits for exactly that, on both backends, by
//! counting what the receive loops handed to handlers and what the backend has accepted, where
//! waiting a fixed [`QUIET`] period ([`Recorder::assert_quiet`]) would only make it likely.
//!
//! Inspecting what was stored: [`Harness::pull_all`] takes everything deliverable on a
//! subscription at once (the memory engine's `pull_now`, or a unary `Pull` with
//! `return_immediately` on the broker). Give a topic a second plain subscription before the
//! code under test publishes, and it shows exactly the messages the backend stored, duplicates
//! included. What handlers answered (ack or nack) is kept too ([`Harness::verdicts`]).
//!
//! Do not inspect a subscription right after stopping a receive loop on it and moving the clock:
//! on the broker, the StreamingPull stream the client just closed may still be open on the
//! server's side for a moment, and a message falling due then is leased to it (it comes back
//! only when that lease runs out). Read the verdicts instead, or watch redeliveries while the
//! loop still runs.
//!
//! Set-ups other than the harness, one piece of code each: [`Broker`] (converge-server in this
//! process on a test clock), [`PgSchema`] (a PostgreSQL schema per test), [`SqliteDb`] (SQLite
//! in a temporary file) and [`Intercept`] (test doubles around a real transport).

#![allow(dead_code)]

pub mod broker;
pub mod intercept;
pub mod postgres;
pub mod sqlite;

// Each test binary uses only some of these.
#[allow(unused_imports)]
pub use broker::Broker;
#[allow(unused_imports)]
pub use intercept::{Intercept, Intercepted};
#[allow(unused_imports)]
pub use postgres::{DATABASE_URL, PgSchema};
#[allow(unused_imports)]
pub use sqlite::SqliteDb;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use converge::client::{Client, Subscriber};
use converge::memory::MemoryTransport;
use converge::transport::{
    BoxFuture, Disposition, IncomingMessage, MessageHandler, ReceiveOptions, SubscriptionConfig,
    TopicConfig, Transport, TransportError,
};
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{
    AcknowledgeRequest, PullRequest, ReceivedMessage,
};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The project every test resource lives in.
pub const PROJECT: &str = "test";

/// How long a test waits for something that should happen (generous: CI machines are slow).
pub const WAIT: Duration = Duration::from_secs(30);

/// How long a test watches for something that should *not* happen. Deliveries that are due
/// arrive within milliseconds on both backends, so a wrong delivery shows up well within this.
pub const QUIET: Duration = Duration::from_millis(750);

/// Which implementation of [`Transport`] a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// [`MemoryTransport`]: the broker's engine in process, manual clock.
    Memory,
    /// `converge::client::Client` against converge-server started in this process with a
    /// test clock, over real sockets.
    Broker,
    /// The same, with the broker on the PostgreSQL store (a schema of its own).
    PostgresBroker,
}

/// One test's backend: a transport, its clock, and unique names.
pub struct Harness {
    backend: Backend,
    transport: Arc<Intercepted<Tracked>>,
    memory: Option<MemoryTransport>,
    client: Option<Client>,
    broker: Option<Broker>,
    /// The PostgreSQL broker's schema; declared after `broker` so it is dropped after it.
    _schema: Option<PgSchema>,
    prefix: String,
    counter: AtomicU64,
}

impl Harness {
    /// A fresh backend: an empty memory engine, or a new broker on a free port.
    pub async fn start(backend: Backend) -> anyhow::Result<Self> {
        let mut schema = None;
        let (transport, memory, client, broker) = match backend {
            Backend::Memory => {
                let memory = MemoryTransport::new();
                let transport = Tracked::new(Arc::new(memory.clone()), None);
                (transport, Some(memory), None, None)
            }
            Backend::Broker | Backend::PostgresBroker => {
                let broker = if backend == Backend::Broker {
                    Broker::start().await?
                } else {
                    let created = PgSchema::new().await?;
                    let broker = Broker::start_postgres(&created.name).await?;
                    schema = Some(created);
                    broker
                };
                let client = broker.client().await?;
                let transport = Tracked::new(Arc::new(client.clone()), Some(client.clone()));
                (transport, None, Some(client), Some(broker))
            }
        };
        static HARNESSES: AtomicU64 = AtomicU64::new(0);
        let prefix = format!(
            "t{}-{}",
            std::process::id(),
            HARNESSES.fetch_add(1, Ordering::Relaxed)
        );
        Ok(Self {
            backend,
            transport: Arc::new(transport),
            memory,
            client,
            broker,
            _schema: schema,
            prefix,
            counter: AtomicU64::new(0),
        })
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The transport under test (the backend's own, with its receive loops counted for
    /// [`Self::wait_settled`]).
    pub fn transport(&self) -> Arc<dyn Transport> {
        self.transport.clone()
    }

    /// The memory transport itself, on the memory backend (for its test helpers).
    pub fn memory(&self) -> Option<&MemoryTransport> {
        self.memory.as_ref()
    }

    /// The broker's address, on the broker backend.
    pub fn broker_addr(&self) -> Option<SocketAddr> {
        self.broker.as_ref().map(Broker::addr)
    }

    /// Moves the backend's clock forward by `by` and runs its maintenance (expired leases,
    /// due retries, dead-lettering) before returning.
    pub async fn advance(&self, by: Duration) -> anyhow::Result<()> {
        match (&self.memory, &self.broker) {
            (Some(memory), _) => memory
                .advance(by)
                .await
                .context("advancing the memory clock"),
            (None, Some(broker)) => broker.advance(by).await,
            (None, None) => unreachable!("a harness has one backend"),
        }
    }

    /// A full topic name, unique to this test: `projects/test/topics/{name}-{unique}`.
    pub fn topic(&self, name: &str) -> String {
        format!("projects/{PROJECT}/topics/{}", self.unique(name))
    }

    /// A full subscription name, unique to this test.
    pub fn subscription(&self, name: &str) -> String {
        format!("projects/{PROJECT}/subscriptions/{}", self.unique(name))
    }

    /// Waits (up to [`WAIT`]) until the receive loops on `subscription` have handed at least
    /// `n` deliveries to their handlers, every handler started has returned, and the backend
    /// has taken every verdict into account: the point from which a nack's backoff runs, and
    /// so the point after which advancing the clock past it must redeliver.
    ///
    /// On the memory backend the verdicts are applied once nothing is in flight
    /// ([`MemoryTransport::idle`]); on the broker once the client's `Acknowledge` and
    /// `ModifyAckDeadline` calls for them have been answered (the subscriber's counters). A
    /// receive loop that stops nacks the messages it held without handing them out, which the
    /// broker count includes: call this before stopping, not after.
    pub async fn wait_settled(&self, subscription: &str, n: usize) -> anyhow::Result<()> {
        let give_up = tokio::time::Instant::now() + WAIT;
        loop {
            let (started, finished) = self.transport.handled(subscription);
            if finished >= n && started == finished {
                let settled = match &self.memory {
                    Some(memory) => tokio::time::timeout_at(give_up, memory.idle())
                        .await
                        .is_ok(),
                    None => self.transport.accepted(subscription) >= finished,
                };
                if settled {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= give_up {
                bail!(
                    "expected {n} deliveries on {subscription} handled and settled within \
                     {WAIT:?}: {started} handed out, {finished} handled, {} verdicts accepted",
                    self.transport.accepted(subscription)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Takes (and acknowledges) every message deliverable on `subscription` now, without a
    /// handler. For inspection: use it on a subscription that no receive loop consumes, e.g.
    /// a second subscription on a topic, created before anything was published, that shows
    /// every message the backend stored there.
    pub async fn pull_all(&self, subscription: &str) -> anyhow::Result<Vec<IncomingMessage>> {
        let mut all = Vec::new();
        loop {
            let batch = match (&self.memory, &self.client) {
                (Some(memory), _) => memory
                    .pull_now(subscription, 1000)
                    .await
                    .with_context(|| format!("pulling {subscription}"))?,
                (None, Some(client)) => pull_now(client, subscription).await?,
                (None, None) => unreachable!("a harness has one backend"),
            };
            if batch.is_empty() {
                return Ok(all);
            }
            all.extend(batch);
        }
    }

    /// What the handlers of `subscription` answered, one entry per delivery they returned
    /// from, in the order they returned (receive loop by receive loop): the verdicts the
    /// transport then carried out. Tells what code under test decided (an event bus nacking an
    /// unknown event) without inspecting the backend after the fact.
    pub fn verdicts(&self, subscription: &str) -> Vec<(IncomingMessage, Disposition)> {
        self.transport.verdicts(subscription)
    }

    fn unique(&self, name: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{name}-{}-{n}", self.prefix)
    }

    /// Creates a topic with a unique name and returns that name.
    pub async fn new_topic(&self, name: &str) -> anyhow::Result<String> {
        let topic = self.topic(name);
        self.transport
            .ensure_topic(&TopicConfig {
                name: topic.clone(),
                ..TopicConfig::default()
            })
            .await
            .with_context(|| format!("creating {topic}"))?;
        Ok(topic)
    }

    /// Creates a subscription with a unique name on `topic`, configured by `configure`, and
    /// returns its name.
    pub async fn new_subscription(
        &self,
        name: &str,
        topic: &str,
        configure: impl FnOnce(&mut SubscriptionConfig),
    ) -> anyhow::Result<String> {
        let mut config = SubscriptionConfig::new(self.subscription(name), topic);
        configure(&mut config);
        self.transport
            .ensure_subscription(&config)
            .await
            .with_context(|| format!("creating {}", config.name))?;
        Ok(config.name)
    }

    /// Starts receiving from `subscription` with the default flow control.
    pub fn receive(&self, subscription: &str, handler: MessageHandler) -> Receiving {
        self.receive_with(subscription, ReceiveOptions::default(), handler)
    }

    /// Starts receiving from `subscription` in a task; stop it with [`Receiving::stop`].
    pub fn receive_with(
        &self,
        subscription: &str,
        options: ReceiveOptions,
        handler: MessageHandler,
    ) -> Receiving {
        let shutdown = CancellationToken::new();
        let transport = self.transport.clone();
        let subscription = subscription.to_owned();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            transport
                .receive(&subscription, options, handler, token)
                .await
        });
        Receiving {
            shutdown,
            task: Some(task),
        }
    }
}

/// One unary `Pull` with `return_immediately` (what is deliverable now, without waiting),
/// acknowledged at once.
#[allow(deprecated)] // `return_immediately`: deprecated by Google, honoured by converge
async fn pull_now(client: &Client, subscription: &str) -> anyhow::Result<Vec<IncomingMessage>> {
    let mut stub = client.subscriber_stub();
    let received = stub
        .pull(PullRequest {
            subscription: subscription.to_owned(),
            return_immediately: true,
            max_messages: 1000,
        })
        .await
        .with_context(|| format!("pulling {subscription}"))?
        .into_inner()
        .received_messages;
    if received.is_empty() {
        return Ok(Vec::new());
    }
    let ack_ids = received.iter().map(|r| r.ack_id.clone()).collect();
    stub.acknowledge(AcknowledgeRequest {
        subscription: subscription.to_owned(),
        ack_ids,
    })
    .await
    .with_context(|| format!("acknowledging what was pulled from {subscription}"))?;
    received.into_iter().map(incoming).collect()
}

/// A pulled message as the transports hand messages to handlers.
fn incoming(received: ReceivedMessage) -> anyhow::Result<IncomingMessage> {
    let message = received
        .message
        .context("a pulled message without content")?;
    Ok(IncomingMessage {
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
    })
}

/// The backend's transport, passed through, with every receive loop counted: how many
/// deliveries it handed to its handler, how many of those returned and with which verdict, and
/// (on the broker) the gRPC subscriber whose counters say how many verdicts the broker
/// accepted. That is what [`Harness::wait_settled`] and [`Harness::verdicts`] read.
///
/// On the broker, `receive` runs through [`Client::subscriber`] rather than through the
/// client's `Transport::receive`, which does exactly that, to keep the subscriber's counters.
#[derive(Debug)]
struct Tracked {
    inner: Arc<dyn Transport>,
    client: Option<Client>,
    receives: Mutex<Vec<Arc<ReceiveCount>>>,
}

/// The counts of one `receive` call.
#[derive(Debug)]
struct ReceiveCount {
    subscription: String,
    started: AtomicUsize,
    finished: AtomicUsize,
    verdicts: Mutex<Vec<(IncomingMessage, Disposition)>>,
    subscriber: Option<Subscriber>,
}

impl Tracked {
    fn new(inner: Arc<dyn Transport>, client: Option<Client>) -> Intercepted<Self> {
        Intercepted(Self {
            inner,
            client,
            receives: Mutex::default(),
        })
    }

    /// Deliveries of `subscription` handed to handlers, and how many of them returned.
    /// `finished` is read first, so a handler returning in between never shows as more
    /// finished than started.
    fn handled(&self, subscription: &str) -> (usize, usize) {
        let receives = self.receives.lock();
        let of = || receives.iter().filter(|r| r.subscription == subscription);
        let finished = of().map(|r| r.finished.load(Ordering::SeqCst)).sum();
        let started = of().map(|r| r.started.load(Ordering::SeqCst)).sum();
        (started, finished)
    }

    /// The verdicts of every receive loop on `subscription`.
    fn verdicts(&self, subscription: &str) -> Vec<(IncomingMessage, Disposition)> {
        self.receives
            .lock()
            .iter()
            .filter(|r| r.subscription == subscription)
            .flat_map(|r| r.verdicts.lock().clone())
            .collect()
    }

    /// Acks and nacks of `subscription` the broker answered OK (0 on the memory backend).
    fn accepted(&self, subscription: &str) -> usize {
        self.receives
            .lock()
            .iter()
            .filter(|r| r.subscription == subscription)
            .filter_map(|r| r.subscriber.as_ref())
            .map(|s| {
                let stats = s.stats();
                usize::try_from(stats.acked + stats.nacked).unwrap_or(usize::MAX)
            })
            .sum()
    }
}

#[async_trait::async_trait]
impl Intercept for Tracked {
    fn inner(&self) -> &Arc<dyn Transport> {
        &self.inner
    }

    async fn receive(
        &self,
        subscription: &str,
        options: ReceiveOptions,
        handler: MessageHandler,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError> {
        let subscriber = self
            .client
            .as_ref()
            .map(|client| client.subscriber(subscription, options));
        let count = Arc::new(ReceiveCount {
            subscription: subscription.to_owned(),
            started: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            verdicts: Mutex::default(),
            subscriber: subscriber.clone(),
        });
        self.receives.lock().push(count.clone());
        let counted: MessageHandler = Arc::new(move |message: IncomingMessage| {
            count.started.fetch_add(1, Ordering::SeqCst);
            let run = handler(message.clone());
            let count = count.clone();
            Box::pin(async move {
                let disposition = run.await;
                count.verdicts.lock().push((message, disposition));
                count.finished.fetch_add(1, Ordering::SeqCst);
                disposition
            })
        });
        match subscriber {
            Some(subscriber) => subscriber.receive(counted, shutdown).await,
            None => {
                self.inner
                    .receive(subscription, options, counted, shutdown)
                    .await
            }
        }
    }
}

/// A receive loop running in a task. Dropping it signals shutdown without waiting.
pub struct Receiving {
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), TransportError>>>,
}

impl Receiving {
    /// Signals shutdown and waits (up to [`WAIT`]) for `receive` to return; its result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.join().await
    }

    /// Waits (up to [`WAIT`]) for `receive` to return by itself, e.g. with an error.
    pub async fn join(&mut self) -> anyhow::Result<()> {
        let task = self.task.take().context("already joined")?;
        let result = tokio::time::timeout(WAIT, task)
            .await
            .context("receive did not return in time")?
            .context("the receive task panicked")?;
        result.context("receive failed")
    }

    /// Whether `receive` has returned (or was joined).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A handler that records every message it is given, in order, and answers by a rule.
#[derive(Clone, Default)]
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

#[derive(Default)]
struct RecorderInner {
    seen: Mutex<Vec<IncomingMessage>>,
    changed: Notify,
}

impl Recorder {
    /// A recorder with nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handler that records the message and answers `decide(message, delivery)`, where
    /// `delivery` counts this recorder's deliveries of that message id, from 1.
    pub fn handler(
        &self,
        decide: impl Fn(&IncomingMessage, usize) -> Disposition + Send + Sync + 'static,
    ) -> MessageHandler {
        let decide = Arc::new(decide);
        self.handler_async(move |message, delivery| {
            let answer = decide(&message, delivery);
            Box::pin(async move { answer })
        })
    }

    /// A handler that records the message, then awaits `run(message, delivery)`: for handlers
    /// that hang or wait for the test.
    pub fn handler_async(
        &self,
        run: impl Fn(IncomingMessage, usize) -> BoxFuture<Disposition> + Send + Sync + 'static,
    ) -> MessageHandler {
        let inner = self.inner.clone();
        Arc::new(move |message: IncomingMessage| {
            let delivery = {
                let mut seen = inner.seen.lock();
                seen.push(message.clone());
                seen.iter()
                    .filter(|m| m.message_id == message.message_id)
                    .count()
            };
            inner.changed.notify_waiters();
            run(message, delivery)
        })
    }

    /// A handler that acks everything.
    pub fn acking(&self) -> MessageHandler {
        self.handler(|_, _| Disposition::Ack)
    }

    /// Everything seen so far, in delivery order.
    pub fn seen(&self) -> Vec<IncomingMessage> {
        self.inner.seen.lock().clone()
    }

    /// The payloads seen so far, as text, in delivery order.
    pub fn seen_data(&self) -> Vec<String> {
        self.seen().iter().map(text).collect()
    }

    /// Waits (up to [`WAIT`]) until at least `n` deliveries were seen; returns them all.
    pub async fn wait_for(&self, n: usize) -> anyhow::Result<Vec<IncomingMessage>> {
        let give_up = tokio::time::Instant::now() + WAIT;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let seen = self.seen();
            if seen.len() >= n {
                return Ok(seen);
            }
            if tokio::time::timeout_at(give_up, changed).await.is_err() {
                bail!(
                    "expected {n} deliveries within {WAIT:?}, saw {}: {:?}",
                    seen.len(),
                    seen.iter().map(text).collect::<Vec<_>>()
                );
            }
        }
    }

    /// Watches for [`QUIET`] and fails if the number of deliveries is then not exactly `n`.
    pub async fn assert_quiet(&self, n: usize) -> anyhow::Result<()> {
        tokio::time::sleep(QUIET).await;
        let seen = self.seen();
        if seen.len() != n {
            bail!(
                "expected exactly {n} deliveries, saw {}: {:?}",
                seen.len(),
                seen.iter().map(text).collect::<Vec<_>>()
            );
        }
        Ok(())
    }
}

/// Waits (up to [`WAIT`], polling) until `condition` holds; `what` names it in the error.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) -> anyhow::Result<()> {
    let give_up = tokio::time::Instant::now() + WAIT;
    while !condition() {
        if tokio::time::Instant::now() >= give_up {
            bail!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Serves `app` on a free loopback port until the test ends, with peer addresses
/// (`ConnectInfo<SocketAddr>`) for handlers that log them; returns the address. For the local
/// HTTP services the tests put around the SDK (receivers, dependencies, scripted servers).
pub async fn serve(app: axum::Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    serve_on(listener, app);
    Ok(addr)
}

/// Serves `app` on an already bound `listener` (for a test that must know the address before
/// it can build the app); abort the returned task to stop serving early.
pub fn serve_on(listener: tokio::net::TcpListener, app: axum::Router) -> JoinHandle<()> {
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("a local test server failed");
    })
}

/// A message's payload as text (lossy).
pub fn text(message: &IncomingMessage) -> String {
    String::from_utf8_lossy(&message.data).into_owned()
}

/// Generates each listed test three times, `memory::NAME`, `broker::NAME` and
/// `postgres_broker::NAME` (the broker on the PostgreSQL store), each calling `NAME(harness)`
/// (an `async fn(Harness) -> anyhow::Result<()>` of the calling file) with a fresh harness on its
/// backend, so every backend runs identical assertions.
#[allow(unused_macros)] // not every test binary runs on both backends
macro_rules! both_backends {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() -> anyhow::Result<()> {
                    let harness =
                        crate::support::Harness::start(crate::support::Backend::Memory).await?;
                    super::$test(harness).await
                }
            )*
        }
        mod broker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() -> anyhow::Result<()> {
                    let harness =
                        crate::support::Harness::start(crate::support::Backend::Broker).await?;
                    super::$test(harness).await
                }
            )*
        }
        mod postgres_broker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() -> anyhow::Result<()> {
                    let harness = crate::support::Harness::start(
                        crate::support::Backend::PostgresBroker,
                    )
                    .await?;
                    super::$test(harness).await
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both_backends;
