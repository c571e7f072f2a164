//! `google.pubsub.v1.Subscriber/StreamingPull` over gRPC: the transport around a
//! [`StreamSession`].
//!
//! Each stream runs as two tasks. The controller reads the client's requests (acks, modacks,
//! deadline changes, heartbeats) and decides when the stream ends; the delivery task pulls while
//! flow control leaves room and sends each batch. A stream ends:
//! - when the client half-closes or goes away: pulling stops; the messages pulled for it that
//!   were never handed to the transport are released at once (nacked); those already sent
//!   are the client's until their lease expires, as in Pub/Sub;
//! - on a request that breaks the protocol, or when the subscription disappears: with that
//!   error;
//! - at server shutdown and after [`STREAM_MAX_AGE`]: with `UNAVAILABLE`, which every official
//!   client answers by reconnecting (so a draining server is not held up and nothing hangs);
//! - when a reconnect with the same `client_id` takes its place: cleanly.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::proto as v1;
use crate::service::ApiError;
use crate::service::streaming::StreamSession;
use crate::state::AppState;

/// How long a stream lives before the server closes it with `UNAVAILABLE` and the client
/// reconnects: bounds what a forgotten connection holds (the official clients give the call a
/// 900 s deadline of their own and reconnect either way).
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(30 * 60);

/// How long one delivery round waits for room and messages before looking again; short enough
/// that a stream notices its end promptly even while nothing is published.
pub const DELIVERY_LONG_POLL: Duration = Duration::from_secs(5);

/// Responses queued for the transport: small, so that a slow client stops the pulling instead
/// of leases piling up in memory.
const RESPONSE_QUEUE: usize = 2;

/// The message stream StreamingPull answers with.
type ResponseStream = Pin<Box<dyn Stream<Item = Result<v1::StreamingPullResponse, Status>> + Send>>;

/// Opens a stream: reads and validates the first request (errors answer the call itself),
/// then spawns the stream's tasks and answers with its responses.
pub async fn streaming_pull(
    state: &AppState,
    request: Request<Streaming<v1::StreamingPullRequest>>,
) -> Result<Response<ResponseStream>, Status> {
    let service = state.service()?.clone();
    let mut requests = request.into_inner();
    let Some(first) = requests.message().await? else {
        return Err(Status::invalid_argument(
            "Invalid StreamingPull: the stream ended before its first request",
        ));
    };
    let session = Arc::new(service.open_stream(&first).await?);
    // The first request may already carry acks and modacks.
    let confirmation = session.apply(first, true).await?;
    let (responses, queued) = mpsc::channel(RESPONSE_QUEUE);
    let (end_tx, end_rx) = oneshot::channel();
    if let Some(confirmation) = confirmation {
        // The queue is fresh and has room: this cannot wait.
        let _ = responses.try_send(confirmation);
    }
    let queued = Queued {
        rx: queued,
        session: session.clone(),
    };
    tokio::spawn(control(state.clone(), session, requests, responses, end_tx));
    Ok(Response::new(response_stream(queued, end_rx)))
}

/// The responses waiting for the transport. When the response stream is dropped (the client
/// went away, or the stream ended), whatever is still queued never reached the client: its
/// messages are released rather than left leased to nobody until their deadline.
struct Queued {
    rx: mpsc::Receiver<v1::StreamingPullResponse>,
    session: Arc<StreamSession>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.rx.close();
        let mut undelivered = Vec::new();
        while let Ok(response) = self.rx.try_recv() {
            undelivered.push(response);
        }
        if undelivered.is_empty() {
            return;
        }
        let session = self.session.clone();
        // Drop cannot wait: the release runs on its own (the runtime is there, since the
        // stream is dropped by the server's tasks).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for response in undelivered {
                    session.release(response).await;
                }
            });
        }
    }
}

/// The response stream: queued responses, then the end status. An end (shutdown, error) is
/// sent before responses still queued, so it is never held up by a client that stopped reading.
fn response_stream(queued: Queued, end: oneshot::Receiver<Option<Status>>) -> ResponseStream {
    let state = Some((queued, end));
    futures::stream::unfold(state, |state| async move {
        let (mut queued, mut end) = state?;
        tokio::select! {
            biased;
            ending = &mut end => ending.ok().flatten().map(|status| (Err(status), None)),
            next = queued.rx.recv() => match next {
                Some(response) => Some((Ok(response), Some((queued, end)))),
                None => end.await.ok().flatten().map(|status| (Err(status), None)),
            },
        }
    })
    .boxed()
}

/// Runs one stream until it ends (see the module documentation), then reports how it ended to
/// the response stream: `None` for a clean end.
async fn control(
    state: AppState,
    session: Arc<StreamSession>,
    mut requests: Streaming<v1::StreamingPullRequest>,
    responses: mpsc::Sender<v1::StreamingPullResponse>,
    end_tx: oneshot::Sender<Option<Status>>,
) {
    let stop = CancellationToken::new();
    let mut delivery = tokio::spawn(deliver(session.clone(), responses.clone(), stop.clone()));
    let max_age = tokio::time::sleep(STREAM_MAX_AGE);
    tokio::pin!(max_age);
    let subscription = session.subscription().clone();
    let mut delivery_done = false;
    let end: Option<Status> = loop {
        tokio::select! {
            biased;
            () = state.shutdown().cancelled() => {
                break Some(Status::unavailable("The server is shutting down; reconnect."));
            }
            () = session.superseded().cancelled() => {
                tracing::debug!(subscription = %subscription, "stream superseded by a reconnect");
                break None;
            }
            () = &mut max_age => {
                break Some(Status::unavailable("The stream reached its maximum age; reconnect."));
            }
            ended = &mut delivery => {
                delivery_done = true;
                break delivery_end(ended);
            }
            () = responses.closed() => break None,
            request = requests.message() => match request {
                Ok(Some(request)) => match session.apply(request, false).await {
                    Ok(None) => {}
                    Ok(Some(confirmation)) => tokio::select! {
                        biased;
                        () = state.shutdown().cancelled() => {
                            break Some(Status::unavailable("The server is shutting down; reconnect."));
                        }
                        sent = responses.send(confirmation) => {
                            if sent.is_err() {
                                break None;
                            }
                        }
                    },
                    Err(e) => break Some(e.to_status()),
                },
                Ok(None) => {
                    tracing::debug!(subscription = %subscription, "client half-closed the stream");
                    break None;
                }
                Err(status) => {
                    tracing::debug!(subscription = %subscription, error = %status, "client stream failed");
                    break None;
                }
            },
        }
    };
    stop.cancel();
    tracing::debug!(subscription = %subscription, status = ?end.as_ref().map(Status::code), "stream ended");
    // The receiver is gone when the client went away: nothing to tell.
    let _ = end_tx.send(end);
    if !delivery_done {
        let _ = delivery.await;
    }
}

/// How the stream ends after its delivery task stopped by itself: with the task's error (the
/// subscription was deleted or detached), or `INTERNAL` if it panicked.
fn delivery_end(ended: Result<Option<ApiError>, tokio::task::JoinError>) -> Option<Status> {
    let error = ended.unwrap_or_else(|e| {
        Some(ApiError::new(
            tonic::Code::Internal,
            format!("message delivery failed: {e}"),
        ))
    });
    error.map(|e| e.to_status())
}

/// The delivery loop: pulls whenever flow control leaves room and queues each batch, until
/// `stop`; ends with the error that made it stop, if any.
async fn deliver(
    session: Arc<StreamSession>,
    responses: mpsc::Sender<v1::StreamingPullResponse>,
    stop: CancellationToken,
) -> Option<ApiError> {
    loop {
        let batch = tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            batch = session.next_batch(DELIVERY_LONG_POLL) => batch,
        };
        let response = match batch {
            Ok(Some(response)) => response,
            Ok(None) => continue,
            Err(e) => return Some(e),
        };
        // A batch that cannot be queued (the stream is ending) goes back at once.
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                session.release(response).await;
                return None;
            }
            permit = responses.reserve() => match permit {
                Ok(permit) => permit.send(response),
                Err(_) => {
                    session.release(response).await;
                    return None;
                }
            },
        }
    }
}
