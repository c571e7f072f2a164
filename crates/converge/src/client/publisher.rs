//! Publishing with batching, ordering keys and retries, the way the official clients do it.
//!
//! Messages are gathered into batches per ordering key and a batch is sent when it holds
//! `max_messages`, would exceed `max_bytes`, or has waited `max_delay`, whichever comes first.
//! Batches without an ordering key go out concurrently. Batches with a key go out one at a
//! time per key, in order, so the broker stores them in publish order; when one fails (after
//! its retries), the key is paused: its queued messages and every later publish on it fail with
//! [`PublishError::OrderingKeyPaused`] until [`Publisher::resume_publish`], because sending
//! them would store them out of order relative to the failed ones.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::publisher_client::PublisherClient;
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{PublishRequest, PubsubMessage};
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::{Notify, oneshot};
use tonic::transport::Channel;

use super::retry::{RetrySettings, retry, with_timeout};
use crate::transport::{Code, OutgoingMessage, TransportError};

/// Most messages in one Publish request, the API's limit.
pub const MAX_BATCH_MESSAGES: usize = 1_000;

/// Most bytes of messages in one batch: under the API's 10,000,000-byte request limit, with
/// room for the request's own framing.
pub const MAX_BATCH_BYTES: usize = 9_500_000;

/// How a [`Publisher`] batches and retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublisherSettings {
    /// Send a batch once it holds this many messages (1 to 1,000).
    pub max_messages: usize,
    /// Send a batch before it would exceed this many bytes of messages (at most 9.5 MB). A
    /// single larger message goes alone, so that the broker, not the client, judges its size.
    pub max_bytes: usize,
    /// Send a batch at the latest this long after its first message: the latency paid for
    /// fewer, larger requests.
    pub max_delay: Duration,
    /// Retries of transient failures.
    pub retry: RetrySettings,
}

impl Default for PublisherSettings {
    /// The official clients' defaults: 100 messages, 1 MB, 10 ms; 60 s of retries.
    fn default() -> Self {
        Self {
            max_messages: 100,
            max_bytes: 1_000_000,
            max_delay: Duration::from_millis(10),
            retry: RetrySettings::default(),
        }
    }
}

/// Why a message was not published.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The broker refused the batch, or it could not be reached within the retry budget. With
    /// a transient code the message may have been stored after all.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// An earlier batch with this ordering key failed; nothing more is sent on the key until
    /// [`Publisher::resume_publish`].
    #[error(
        "ordering key \"{key}\" is paused after a failed publish; call resume_publish to publish on it again"
    )]
    OrderingKeyPaused {
        /// The ordering key.
        key: String,
    },
    /// [`Publisher::shutdown`] was called before this message was published.
    #[error("the publisher is shut down")]
    ShutDown,
}

impl PublishError {
    /// The gRPC code callers classify the failure by: the broker's code, or
    /// `FAILED_PRECONDITION` for a paused key or a shut-down publisher (retrying the same call
    /// cannot help).
    pub fn code(&self) -> Code {
        match self {
            Self::Transport(e) => e.code(),
            Self::OrderingKeyPaused { .. } | Self::ShutDown => Code::FailedPrecondition,
        }
    }
}

impl From<PublishError> for TransportError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Transport(e) => e,
            other => Self::Status {
                code: other.code(),
                message: other.to_string(),
            },
        }
    }
}

/// The outcome of one [`Publisher::publish`]: resolves to the message id once the broker has
/// stored the message. Dropping it does not cancel the publish.
#[derive(Debug)]
#[must_use = "the handle reports whether the message was stored"]
pub struct PublishHandle {
    state: HandleState,
}

#[derive(Debug)]
enum HandleState {
    Done(Option<Result<String, PublishError>>),
    Waiting(oneshot::Receiver<Result<String, PublishError>>),
}

impl PublishHandle {
    fn done(result: Result<String, PublishError>) -> Self {
        Self {
            state: HandleState::Done(Some(result)),
        }
    }
}

impl Future for PublishHandle {
    type Output = Result<String, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            HandleState::Done(result) => {
                Poll::Ready(result.take().unwrap_or(Err(PublishError::ShutDown)))
            }
            // The sender is only dropped unanswered if the runtime went away mid-send.
            HandleState::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(PublishError::ShutDown))),
        }
    }
}

/// Publishes to one topic, batching and retrying. Cheap to clone; clones share batches.
///
/// ```no_run
/// use converge::client::{Client, Endpoint, PublisherSettings};
/// use converge::OutgoingMessage;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Client::connect("127.0.0.1:8085".parse::<Endpoint>()?).await?;
/// let publisher = client.publisher("projects/p/topics/orders", PublisherSettings::default());
/// let handles: Vec<_> = (0..10)
///     .map(|i| {
///         publisher.publish(OutgoingMessage {
///             data: format!("order {i}").into(),
///             ordering_key: "customer-7".into(),
///             ..Default::default()
///         })
///     })
///     .collect();
/// for handle in handles {
///     println!("stored as {}", handle.await?);
/// }
/// publisher.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.inner.topic)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

struct Inner {
    topic: String,
    stub: PublisherClient<Channel>,
    settings: PublisherSettings,
    runtime: tokio::runtime::Handle,
    state: Mutex<State>,
    /// Signalled whenever messages are settled, for [`Publisher::flush`].
    settled: Notify,
}

#[derive(Default)]
struct State {
    closed: bool,
    next_seq: u64,
    next_batch: u64,
    /// Sequence numbers of the messages accepted and not yet answered.
    unsettled: BTreeSet<u64>,
    /// Per ordering key (`""` for none).
    keys: HashMap<String, KeyState>,
}

#[derive(Default)]
struct KeyState {
    /// The batch being filled.
    open: Option<Batch>,
    /// Ordered keys only: full batches waiting for the one in flight.
    queued: VecDeque<Batch>,
    /// Ordered keys only: a batch is being sent.
    in_flight: bool,
    /// Ordered keys only: a batch failed and the key awaits `resume_publish`.
    paused: bool,
}

impl KeyState {
    fn is_idle(&self) -> bool {
        self.open.is_none() && self.queued.is_empty() && !self.in_flight && !self.paused
    }
}

struct Batch {
    id: u64,
    messages: Vec<PubsubMessage>,
    waiters: Vec<Waiter>,
    bytes: usize,
}

struct Waiter {
    seq: u64,
    tx: oneshot::Sender<Result<String, PublishError>>,
}

/// A batch to send now, for the key it belongs to.
type Ready = (String, Batch);

impl Publisher {
    pub(super) fn new(
        stub: PublisherClient<Channel>,
        topic: String,
        mut settings: PublisherSettings,
    ) -> Self {
        settings.max_messages = settings.max_messages.clamp(1, MAX_BATCH_MESSAGES);
        settings.max_bytes = settings.max_bytes.clamp(1, MAX_BATCH_BYTES);
        Self {
            inner: Arc::new(Inner {
                topic,
                stub,
                settings,
                runtime: tokio::runtime::Handle::current(),
                state: Mutex::default(),
                settled: Notify::new(),
            }),
        }
    }

    /// The topic published to.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// Queues `message` for the next batch of its ordering key and returns at once; the
    /// handle resolves to the message id once the broker has stored it.
    ///
    /// A message with neither data nor attributes is refused here (`INVALID_ARGUMENT`), as the
    /// broker would, so that it cannot fail the other messages of its batch.
    pub fn publish(&self, message: OutgoingMessage) -> PublishHandle {
        if message.data.is_empty() && message.attributes.is_empty() {
            return PublishHandle::done(Err(TransportError::Status {
                code: Code::InvalidArgument,
                message: "a message needs non-empty data or at least one attribute".into(),
            }
            .into()));
        }
        let message = PubsubMessage {
            data: message.data.to_vec(),
            attributes: message.attributes,
            ordering_key: message.ordering_key,
            ..Default::default()
        };
        let size = message.encoded_len();
        let (tx, rx) = oneshot::channel();
        let settings = &self.inner.settings;
        let mut ready = Vec::new();
        let mut new_batch = None;
        let delayed = {
            let mut guard = self.inner.state.lock();
            let State {
                closed,
                next_seq,
                next_batch,
                unsettled,
                keys,
            } = &mut *guard;
            if *closed {
                return PublishHandle::done(Err(PublishError::ShutDown));
            }
            let key = message.ordering_key.clone();
            let state = keys.entry(key.clone()).or_default();
            if state.paused {
                return PublishHandle::done(Err(PublishError::OrderingKeyPaused { key }));
            }
            if state
                .open
                .as_ref()
                .is_some_and(|b| b.bytes + size > settings.max_bytes)
            {
                close_open(state, &key, &mut ready);
            }
            let batch = state.open.get_or_insert_with(|| {
                let id = *next_batch;
                *next_batch += 1;
                new_batch = Some(id);
                Batch {
                    id,
                    messages: Vec::new(),
                    waiters: Vec::new(),
                    bytes: 0,
                }
            });
            let seq = *next_seq;
            *next_seq += 1;
            unsettled.insert(seq);
            batch.messages.push(message);
            batch.waiters.push(Waiter { seq, tx });
            batch.bytes += size;
            if batch.messages.len() >= settings.max_messages || batch.bytes >= settings.max_bytes {
                close_open(state, &key, &mut ready);
                new_batch = None;
            }
            new_batch.map(|id| (key, id))
        };
        if let Some((key, id)) = delayed {
            self.schedule_delayed_flush(key, id);
        }
        self.send_all(ready);
        PublishHandle {
            state: HandleState::Waiting(rx),
        }
    }

    /// Sends every partly filled batch now and waits until every message published before
    /// this call is answered (stored or failed; each handle tells which).
    pub async fn flush(&self) {
        let (target, ready) = {
            let mut state = self.inner.state.lock();
            let mut ready = Vec::new();
            for (key, key_state) in &mut state.keys {
                close_open(key_state, key, &mut ready);
            }
            (state.next_seq, ready)
        };
        self.send_all(ready);
        loop {
            let notified = self.inner.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let done = self
                .inner
                .state
                .lock()
                .unsettled
                .first()
                .is_none_or(|&seq| seq >= target);
            if done {
                return;
            }
            notified.await;
        }
    }

    /// Refuses further publishes ([`PublishError::ShutDown`]), then flushes what was
    /// accepted: the way to stop without losing queued messages.
    pub async fn shutdown(&self) {
        self.inner.state.lock().closed = true;
        self.flush().await;
        tracing::debug!(topic = %self.inner.topic, "publisher shut down");
    }

    /// Lets publishing on `ordering_key` continue after a failed batch paused it. The caller
    /// decides what to do about the messages that failed (typically publish them again first).
    pub fn resume_publish(&self, ordering_key: &str) {
        let mut state = self.inner.state.lock();
        if let Some(key_state) = state.keys.get_mut(ordering_key) {
            key_state.paused = false;
            if key_state.is_idle() {
                state.keys.remove(ordering_key);
            }
        }
    }

    /// Sends the batch `id` of `key` after `max_delay` unless it went out before. The task
    /// holds the publisher, so a dropped publisher still sends what it accepted.
    fn schedule_delayed_flush(&self, key: String, id: u64) {
        let publisher = self.clone();
        let delay = self.inner.settings.max_delay;
        self.inner.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            let mut ready = Vec::new();
            {
                let mut state = publisher.inner.state.lock();
                if let Some(key_state) = state.keys.get_mut(&key)
                    && key_state.open.as_ref().is_some_and(|b| b.id == id)
                {
                    close_open(key_state, &key, &mut ready);
                }
            }
            publisher.send_all(ready);
        });
    }

    fn send_all(&self, ready: Vec<Ready>) {
        for (key, batch) in ready {
            let publisher = self.clone();
            self.inner
                .runtime
                .spawn(async move { publisher.send(key, batch).await });
        }
    }

    /// Sends `batch` and, for an ordering key, the batches queued behind it, one at a time.
    async fn send(&self, key: String, mut batch: Batch) {
        loop {
            let result = self.publish_rpc(&batch.messages).await;
            let failed = result.is_err();
            let seqs: Vec<u64> = batch.waiters.iter().map(|w| w.seq).collect();
            match result {
                Ok(ids) => {
                    for (waiter, id) in batch.waiters.drain(..).zip(ids) {
                        let _ = waiter.tx.send(Ok(id));
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %self.inner.topic, ordering_key = %key, count = seqs.len(), error = %e, "publish failed");
                    for waiter in batch.waiters.drain(..) {
                        let _ = waiter.tx.send(Err(PublishError::Transport(e.clone())));
                    }
                }
            }
            let (next, paused) = self.settle(&key, &seqs, failed);
            for waiter in paused {
                let _ = waiter
                    .tx
                    .send(Err(PublishError::OrderingKeyPaused { key: key.clone() }));
            }
            self.inner.settled.notify_waiters();
            match next {
                Some(next) => batch = next,
                None => return,
            }
        }
    }

    /// Records a batch as answered; for an ordering key, returns the next batch to send, or
    /// (after a failure) pauses the key and returns the waiters of everything queued on it,
    /// already counted as settled, to be failed.
    fn settle(&self, key: &str, seqs: &[u64], failed: bool) -> (Option<Batch>, Vec<Waiter>) {
        let mut guard = self.inner.state.lock();
        let state = &mut *guard;
        let mut next = None;
        let mut paused = Vec::new();
        if !key.is_empty()
            && let Some(key_state) = state.keys.get_mut(key)
        {
            if failed {
                key_state.paused = true;
                key_state.in_flight = false;
                for batch in key_state.queued.drain(..).chain(key_state.open.take()) {
                    paused.extend(batch.waiters);
                }
            } else {
                next = key_state.queued.pop_front();
                key_state.in_flight = next.is_some();
            }
            if key_state.is_idle() {
                state.keys.remove(key);
            }
        }
        for seq in seqs.iter().chain(paused.iter().map(|w| &w.seq)) {
            state.unsettled.remove(seq);
        }
        (next, paused)
    }

    /// One Publish call with retries; the ids in message order.
    async fn publish_rpc(&self, messages: &[PubsubMessage]) -> Result<Vec<String>, TransportError> {
        let inner = &self.inner;
        let ids = retry(&inner.settings.retry, "publish", |left| {
            let mut stub = inner.stub.clone();
            let request = with_timeout(
                PublishRequest {
                    topic: inner.topic.clone(),
                    messages: messages.to_vec(),
                },
                left,
            );
            async move { Ok(stub.publish(request).await?.into_inner().message_ids) }
        })
        .await?;
        if ids.len() != messages.len() {
            return Err(TransportError::Status {
                code: Code::Internal,
                message: format!(
                    "the broker answered {} message ids for {} messages",
                    ids.len(),
                    messages.len()
                ),
            });
        }
        tracing::debug!(topic = %inner.topic, count = ids.len(), "batch published");
        Ok(ids)
    }
}

/// Closes the batch being filled for `key`: an unordered batch is ready to send at once; an
/// ordered one queues behind its key's batch in flight, or goes now if there is none.
fn close_open(state: &mut KeyState, key: &str, ready: &mut Vec<Ready>) {
    let Some(batch) = state.open.take() else {
        return;
    };
    if key.is_empty() {
        ready.push((String::new(), batch));
        return;
    }
    state.queued.push_back(batch);
    if !state.in_flight
        && let Some(next) = state.queued.pop_front()
    {
        state.in_flight = true;
        ready.push((key.to_owned(), next));
    }
}
