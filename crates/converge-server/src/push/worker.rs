//! One push subscription's delivery loop.
//!
//! The worker leases at most a window's worth of messages from the store, sends each as its own
//! HTTP request and settles it by the answer: a success status acknowledges, anything else
//! (another status, a timeout at the ack deadline, a refused or reset connection) nacks, so the
//! engine's retry schedule and dead-letter policy decide what happens next, exactly as for pull.
//! `429` and `503` with `Retry-After` pause the whole subscription and hold that message back for
//! that long. Ordering keys need nothing here: the engine leases one message per key at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use converge_core::{Error, PullOptions, ReceivedMessage, Store, Subscription, SubscriptionName};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::auth::PushAuth;
use super::envelope;
use super::window::Window;
use crate::proto as v1;

/// Gauge of each push subscription's window.
pub const WINDOW_GAUGE: &str = "converge_push_window";
/// Counter of push requests by subscription and outcome (`success`, `error_status`, `timeout`,
/// `connect`).
pub const REQUESTS_TOTAL: &str = "converge_push_requests_total";
/// Histogram of push request latency in seconds, by subscription.
pub const REQUEST_DURATION: &str = "converge_push_request_duration_seconds";

/// How long an idle worker's pull waits for a message before looking at its settings again.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long the worker waits after the store failed to answer a pull.
const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause a `Retry-After` can impose (the longest ack deadline of Pub/Sub).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// What a worker delivers with; replaced through the dispatcher's watch channel when the
/// subscription changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The subscription as the store keeps it (ack deadline, dead-letter policy, ...).
    pub subscription: Subscription,
    /// Its push config; the endpoint is not empty.
    pub push_config: v1::PushConfig,
}

/// The status codes that acknowledge a message.
pub fn is_success(status: u16) -> bool {
    matches!(status, 102 | 200 | 201 | 202 | 204)
}

/// How one push request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A success status: acknowledge.
    Success(u16),
    /// Another status; with `Retry-After` on a 429 or 503, how long to hold off.
    Status(u16, Option<Duration>),
    /// No answer within the ack deadline.
    Timeout,
    /// No connection (refused, reset, DNS, TLS).
    Connect,
    /// The authentication headers could not be built; nothing was sent.
    Auth,
}

impl Outcome {
    /// The label of `converge_push_requests_total`.
    fn label(self) -> &'static str {
        match self {
            Outcome::Success(_) => "success",
            Outcome::Status(..) => "error_status",
            Outcome::Timeout => "timeout",
            Outcome::Connect => "connect",
            Outcome::Auth => "auth",
        }
    }

    /// The status for the log; 0 when there was none.
    fn status(self) -> u16 {
        match self {
            Outcome::Success(s) | Outcome::Status(s, _) => s,
            Outcome::Timeout | Outcome::Connect | Outcome::Auth => 0,
        }
    }
}

/// A delivery's result, back from its request task.
struct Settled {
    received: ReceivedMessage,
    outcome: Outcome,
    /// The window's epoch when the request was sent (see [`Window::epoch`]).
    epoch: u64,
}

/// How long a 429 or 503 asks us to wait: `Retry-After` in seconds or as an HTTP date.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let status = response.status().as_u16();
    if status != 429 && status != 503 {
        return None;
    }
    let value = response
        .headers()
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    parse_retry_after(value, std::time::SystemTime::now())
}

/// `Retry-After`'s two forms (RFC 9110): delay seconds, or an HTTP date (a date in the past
/// means no wait); capped at [`MAX_RETRY_AFTER`].
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Starts the worker of one subscription; it runs until `cancel` fires or the subscription is
/// gone.
pub fn spawn(
    store: Arc<dyn Store>,
    sender: Sender,
    target: watch::Receiver<Target>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run(store, sender, target, cancel))
}

/// What sends push requests, shared by every worker: the HTTP client (one connection pool) and
/// the authentication.
#[derive(Debug, Clone)]
pub struct Sender {
    /// The HTTP client.
    pub client: reqwest::Client,
    /// Builds the `Authorization` / webhook signature headers.
    pub auth: PushAuth,
}

/// The delivery loop: keep one pull outstanding while the window has room, settle what
/// finishes, and honour pauses.
async fn run(
    store: Arc<dyn Store>,
    sender: Sender,
    target: watch::Receiver<Target>,
    cancel: CancellationToken,
) {
    let name = target.borrow().subscription.name.clone();
    let label = name.to_string();
    let mut window = Window::new();
    let mut in_flight: JoinSet<Settled> = JoinSet::new();
    let mut pulling: Option<JoinHandle<converge_core::Result<Vec<ReceivedMessage>>>> = None;
    let mut paused_until: Option<tokio::time::Instant> = None;
    tracing::info!(subscription = %name, "push worker started");
    metrics::gauge!(WINDOW_GAUGE, "subscription" => label.clone()).set(window.size());

    loop {
        let paused = paused_until.is_some_and(|t| t > tokio::time::Instant::now());
        let room = (window.size() as usize).saturating_sub(in_flight.len());
        if pulling.is_none() && !paused && room > 0 {
            let wait = if in_flight.is_empty() {
                IDLE_POLL
            } else {
                Duration::from_millis(100)
            };
            let store = store.clone();
            let name = name.clone();
            pulling = Some(tokio::spawn(async move {
                store.pull_with(&name, PullOptions::new(room, wait)).await
            }));
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                // Settle everything that has finished in one store call per kind: each call is
                // a durable write, and one per message would cap delivery at the disk's sync
                // rate.
                let mut batch: Vec<Settled> = done.into_iter().collect();
                while let Some(done) = in_flight.try_join_next() {
                    batch.extend(done);
                }
                settle(store.as_ref(), &name, batch, &mut window, &mut paused_until).await;
                metrics::gauge!(WINDOW_GAUGE, "subscription" => label.clone()).set(window.size());
            }
            pulled = async { pulling.as_mut().expect("guarded").await }, if pulling.is_some() => {
                pulling = None;
                match pulled {
                    Ok(Ok(received)) => {
                        let current = target.borrow().clone();
                        for r in received {
                            in_flight.spawn(send(sender.clone(), current.clone(), r, window.epoch()));
                        }
                    }
                    Ok(Err(e @ (Error::NotFound(_) | Error::FailedPrecondition(_)))) => {
                        tracing::info!(subscription = %name, error = %e, "push worker stops: subscription gone or detached");
                        break;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(subscription = %name, error = %e, "push worker cannot pull; retrying");
                        paused_until = Some(tokio::time::Instant::now() + STORE_ERROR_PAUSE);
                    }
                    Err(e) => tracing::error!(subscription = %name, error = %e, "push pull task failed"),
                }
            }
            () = sleep_until(paused_until), if paused && pulling.is_none() && in_flight.is_empty() => {}
        }
    }
    if let Some(task) = pulling {
        task.abort();
    }
    in_flight.abort_all();
    tracing::info!(subscription = %name, "push worker stopped");
}

/// Sleeps until `until` (forever for `None`).
async fn sleep_until(until: Option<tokio::time::Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Sends one delivery and logs it.
async fn send(sender: Sender, target: Target, received: ReceivedMessage, epoch: u64) -> Settled {
    let sub = &target.subscription;
    let full_name = sub.name.to_string();
    let request = envelope::build(
        &full_name,
        &target.push_config,
        &received,
        sub.dead_letter_policy.is_some(),
    );
    let endpoint = &target.push_config.push_endpoint;
    let started = Instant::now();
    let auth = sender
        .auth
        .headers(
            &full_name,
            &target.push_config,
            &received.message.id.to_string(),
            &request.body,
        )
        .await;
    let outcome = match auth {
        Ok(auth) => {
            let mut builder = sender
                .client
                .post(endpoint)
                .timeout(sub.ack_deadline)
                .body(request.body);
            for (name, value) in request.headers.into_iter().chain(auth) {
                builder = builder.header(name, value);
            }
            match builder.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if is_success(status) {
                        Outcome::Success(status)
                    } else {
                        Outcome::Status(status, retry_after(&response))
                    }
                }
                Err(e) if e.is_timeout() => Outcome::Timeout,
                Err(_) => Outcome::Connect,
            }
        }
        Err(e) => {
            // Never send a push unauthenticated that should be authenticated: count it as a
            // failed attempt, so the retry schedule applies.
            tracing::warn!(subscription = %full_name, error = %e, "cannot authenticate a push request");
            Outcome::Auth
        }
    };
    let duration = started.elapsed();
    let host = reqwest::Url::parse(endpoint)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    tracing::info!(
        logType = "REQUEST_OUTBOUND",
        subscription = %full_name,
        endpointHost = %host,
        status = outcome.status(),
        outcome = outcome.label(),
        attempt = received.attempts,
        duration = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        messageId = %received.message.id,
        "push request"
    );
    metrics::counter!(REQUESTS_TOTAL, "subscription" => full_name.clone(), "outcome" => outcome.label())
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "subscription" => full_name)
        .record(duration.as_secs_f64());
    Settled {
        received,
        outcome,
        epoch,
    }
}

/// Acknowledges or nacks finished deliveries and feeds the window.
async fn settle(
    store: &dyn Store,
    name: &SubscriptionName,
    batch: Vec<Settled>,
    window: &mut Window,
    paused_until: &mut Option<tokio::time::Instant>,
) {
    let mut acks = Vec::new();
    let mut nacks = Vec::new();
    let mut held = Vec::new();
    for settled in batch {
        match settled.outcome {
            Outcome::Success(_) => {
                window.on_success();
                acks.push(settled.received.ack_id);
            }
            Outcome::Status(_, Some(delay)) => {
                window.on_failure(settled.epoch);
                let until = tokio::time::Instant::now() + delay;
                *paused_until = Some(paused_until.map_or(until, |p| p.max(until)));
                held.push((settled.received.ack_id, delay));
            }
            Outcome::Status(..) | Outcome::Timeout | Outcome::Connect | Outcome::Auth => {
                window.on_failure(settled.epoch);
                nacks.push(settled.received.ack_id);
            }
        }
    }
    if !acks.is_empty()
        && let Err(e) = store.acknowledge(name, &acks).await
    {
        tracing::warn!(subscription = %name, error = %e, "cannot acknowledge push deliveries");
    }
    if !nacks.is_empty()
        && let Err(e) = store
            .modify_ack_deadline(name, &nacks, Duration::ZERO)
            .await
    {
        tracing::warn!(subscription = %name, error = %e, "cannot nack push deliveries");
    }
    for (ack_id, delay) in held {
        // Holding the lease that long keeps the message back exactly as asked; when it
        // expires the engine counts the attempt and redelivers.
        let deadline = delay.max(Duration::from_secs(1));
        if let Err(e) = store.modify_ack_deadline(name, &[ack_id], deadline).await {
            tracing::warn!(subscription = %name, error = %e, "cannot hold back a push delivery");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        use std::time::UNIX_EPOCH;
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn only_the_documented_codes_acknowledge() {
        for ok in [102, 200, 201, 202, 204] {
            assert!(is_success(ok), "{ok}");
        }
        for not in [100, 203, 206, 301, 400, 404, 429, 500, 503] {
            assert!(!is_success(not), "{not}");
        }
    }
}
