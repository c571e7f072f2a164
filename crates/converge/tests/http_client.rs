//! The retrying HTTP client against a real, scripted, flaky HTTP server on a local socket.
//!
//! Each test scripts the server ("503 twice, then 200") and reads back what arrived and when.
//! The only time assertions are correctness bounds: a retry waited *at least* what the server
//! asked for with `Retry-After`, and observed backoff waits stay under their schedule's cap
//! plus a generous allowance for scheduling noise. The exact schedule (immediate first retry,
//! growing full-jitter caps) is unit-tested with a seeded RNG in `src/http_client/backoff.rs`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, ensure};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use converge::http_client::{
    Attempts, Backoff, CallOptions, Decision, HttpClientError, Outcome, RetryBudget, RetryClient,
    RetryProfile, SHOULD_RETRY_HEADER,
};
use converge::idempotency::IdempotencyKey;
use converge_core::retry::RetrySchedule;
use http::Extensions;
use parking_lot::Mutex;
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

/// How long a test waits at most for a call that should return.
const WAIT: Duration = Duration::from_secs(60);

/// One scripted answer.
#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    /// Wait this long before answering (a hung server).
    stall: Option<Duration>,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        stall: None,
    }
}

impl Reply {
    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    fn stall(mut self, duration: Duration) -> Self {
        self.stall = Some(duration);
        self
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Arrival {
    at: Instant,
    method: Method,
    headers: HeaderMap,
}

#[derive(Default)]
struct Shared {
    script: Vec<Reply>,
    arrivals: Mutex<Vec<Arrival>>,
}

/// A local HTTP server answering the n-th request with the n-th reply of its script (the last
/// one repeats), recording when each request arrived.
struct Flaky {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Flaky {
    async fn start(script: Vec<Reply>) -> anyhow::Result<Self> {
        assert!(!script.is_empty());
        let shared = Arc::new(Shared {
            script,
            arrivals: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = support::serve_on(listener, app);
        Ok(Self { addr, shared, task })
    }

    fn url(&self) -> String {
        format!("http://{}/work", self.addr)
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.shared.arrivals.lock().clone()
    }

    /// Gaps between consecutive arrivals.
    fn gaps(&self) -> Vec<Duration> {
        self.arrivals()
            .windows(2)
            .map(|w| w[1].at.duration_since(w[0].at))
            .collect()
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(shared): State<Arc<Shared>>, method: Method, headers: HeaderMap) -> Response {
    let n = {
        let mut arrivals = shared.arrivals.lock();
        arrivals.push(Arrival {
            at: Instant::now(),
            method,
            headers,
        });
        arrivals.len() - 1
    };
    let reply = shared.script[n.min(shared.script.len() - 1)].clone();
    if let Some(stall) = reply.stall {
        tokio::time::sleep(stall).await;
    }
    let mut response = StatusCode::from_u16(reply.status)
        .expect("scripted status")
        .into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    response
}

/// A short schedule for tests: first retry immediate, then 20 ms doubling to 100 ms.
fn quick() -> Backoff {
    Backoff::exponential(Duration::from_millis(20), Duration::from_millis(100))
}

/// A schedule whose second retry waits an hour exactly (no jitter in the fixed phase).
fn then_an_hour(immediate: u32) -> Backoff {
    Backoff::from_schedule(RetrySchedule {
        immediate_retries: immediate,
        fixed_retries: 10,
        fixed_interval: Duration::from_secs(3600),
        minimum_backoff: Duration::from_secs(3600),
        maximum_backoff: Duration::from_secs(3600),
        max_retry_duration: None,
    })
}

async fn within<T>(future: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(WAIT, future)
        .await
        .context("the call did not return in time (did it sleep past its deadline?)")
}

fn attempts(response: &reqwest::Response) -> u32 {
    response
        .extensions()
        .get::<Attempts>()
        .expect("the retry layer records attempts")
        .count
}

#[tokio::test]
async fn retries_transient_failures_until_success() -> anyhow::Result<()> {
    let server = Flaky::start(vec![reply(503), reply(502), reply(429), reply(200)]).await?;
    let client = RetryClient::builder().backoff(quick()).build();
    let response = within(client.get(server.url()).send()).await??;
    ensure!(response.status() == 200, "{}", response.status());
    ensure!(attempts(&response) == 4);
    ensure!(server.arrivals().len() == 4);
    Ok(())
}

/// The first retry is immediate: with a schedule whose second retry waits an hour (past the
/// deadline), exactly two attempts are made and the call returns at once with the last answer.
/// Without the immediate retry, only one.
#[tokio::test]
async fn first_retry_is_immediate_and_no_wait_crosses_the_deadline() -> anyhow::Result<()> {
    for (immediate, expected_attempts) in [(1, 2), (0, 1)] {
        let server = Flaky::start(vec![reply(503), reply(503), reply(200)]).await?;
        let client = RetryClient::builder()
            .backoff(then_an_hour(immediate))
            .deadline(Duration::from_secs(20))
            .max_attempts(10)
            .build();
        let response = within(client.get(server.url()).send()).await??;
        ensure!(response.status() == 503, "{}", response.status());
        ensure!(
            attempts(&response) == expected_attempts,
            "immediate {immediate}: {} attempts",
            attempts(&response)
        );
        ensure!(server.arrivals().len() == expected_attempts as usize);
    }
    Ok(())
}

/// Observed waits stay within their full-jitter caps (0, 200 ms, 400 ms, 800 ms), with one
/// second of allowance for a loaded machine; the pubsub preset's 10 s would exceed it.
#[tokio::test]
async fn observed_backoff_stays_within_the_growing_caps() -> anyhow::Result<()> {
    let server = Flaky::start(
        vec![reply(503); 5]
            .into_iter()
            .chain([reply(200)])
            .collect(),
    )
    .await?;
    let backoff = Backoff::exponential(Duration::from_millis(200), Duration::from_secs(2));
    let client = RetryClient::builder()
        .backoff(backoff.clone())
        .max_attempts(6)
        .budget(RetryBudget::unlimited())
        .build();
    let response = within(client.get(server.url()).send()).await??;
    ensure!(response.status() == 200);
    let gaps = server.gaps();
    ensure!(gaps.len() == 5, "{gaps:?}");
    for (i, gap) in gaps.iter().enumerate() {
        let retry = i as u32 + 1;
        let cap = backoff.nominal_delay(retry);
        ensure!(
            *gap <= cap + Duration::from_secs(1),
            "retry {retry} waited {gap:?}, cap {cap:?}"
        );
    }
    ensure!(backoff.nominal_delay(1).is_zero());
    ensure!(backoff.nominal_delay(5) == Duration::from_millis(1600));
    Ok(())
}

#[tokio::test]
async fn retry_after_seconds_is_waited_for() -> anyhow::Result<()> {
    // The schedule's first retry is immediate; Retry-After asks for a second.
    let server = Flaky::start(vec![reply(503).header("retry-after", "1"), reply(200)]).await?;
    let client = RetryClient::builder().backoff(quick()).build();
    let response = within(client.get(server.url()).send()).await??;
    ensure!(response.status() == 200);
    let gaps = server.gaps();
    ensure!(gaps.len() == 1);
    ensure!(
        gaps[0] >= Duration::from_secs(1),
        "waited only {:?}",
        gaps[0]
    );
    Ok(())
}

#[tokio::test]
async fn retry_after_http_date_is_waited_for() -> anyhow::Result<()> {
    // HTTP-dates have whole seconds: two seconds from now is at least one second away.
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
    let server = Flaky::start(vec![reply(429).header("retry-after", date), reply(200)]).await?;
    let client = RetryClient::builder().backoff(quick()).build();
    let response = within(client.get(server.url()).send()).await??;
    ensure!(response.status() == 200);
    let gaps = server.gaps();
    ensure!(gaps.len() == 1);
    ensure!(
        gaps[0] >= Duration::from_secs(1),
        "waited only {:?}",
        gaps[0]
    );
    Ok(())
}

#[tokio::test]
async fn retry_after_beyond_the_deadline_returns_at_once() -> anyhow::Result<()> {
    let server = Flaky::start(vec![reply(503).header("retry-after", "3600"), reply(200)]).await?;
    let client = RetryClient::builder()
        .backoff(quick())
        .deadline(Duration::from_secs(10))
        .build();
    let response = within(client.get(server.url()).send()).await??;
    ensure!(response.status() == 503);
    ensure!(server.arrivals().len() == 1);
    Ok(())
}

#[tokio::test]
async fn should_retry_false_is_respected_by_every_profile() -> anyhow::Result<()> {
    let profiles = [
        RetryProfile::PubSub,
        RetryProfile::Sns,
        RetryProfile::TransientOnly,
        RetryProfile::custom(|_| Decision::Retry),
    ];
    for profile in profiles {
        let server = Flaky::start(vec![
            reply(503).header(SHOULD_RETRY_HEADER, "false"),
            reply(200),
        ])
        .await?;
        let client = RetryClient::builder()
            .profile(profile.clone())
            .backoff(quick())
            .build();
        let response = within(client.get(server.url()).send()).await??;
        ensure!(response.status() == 503, "{profile:?}");
        ensure!(server.arrivals().len() == 1, "{profile:?} retried");
    }
    Ok(())
}

#[tokio::test]
async fn should_retry_true_retries_what_the_profile_would_not() -> anyhow::Result<()> {
    let server = Flaky::start(vec![
        reply(400).header(SHOULD_RETRY_HEADER, "true"),
        reply(200),
    ])
    .await?;
    let client = RetryClient::builder().backoff(quick()).build();
    let response = within(client.get(server.url()).send()).await??;
    ensure!(response.status() == 200);
    ensure!(server.arrivals().len() == 2);
    Ok(())
}

/// The profiles over the wire: a 500 is retried by `Sns` and `PubSub`, not by
/// `TransientOnly`; a 404 only by `PubSub`.
#[tokio::test]
async fn profiles_decide_over_the_wire() -> anyhow::Result<()> {
    let cases = [
        (RetryProfile::TransientOnly, 500, 1),
        (RetryProfile::Sns, 500, 2),
        (RetryProfile::PubSub, 500, 2),
        (RetryProfile::TransientOnly, 404, 1),
        (RetryProfile::Sns, 404, 1),
        (RetryProfile::PubSub, 404, 2),
        (
            RetryProfile::custom(|o: &Outcome<'_>| match o {
                Outcome::Response { status, .. } if status.as_u16() == 409 => Decision::Retry,
                _ => Decision::Stop,
            }),
            409,
            2,
        ),
    ];
    for (profile, status, expected) in cases {
        let server = Flaky::start(vec![reply(status), reply(200)]).await?;
        let client = RetryClient::builder()
            .profile(profile.clone())
            .backoff(quick())
            .build();
        let response = within(client.get(server.url()).send()).await??;
        let arrivals = server.arrivals().len();
        ensure!(
            arrivals == expected,
            "{profile:?} {status}: {arrivals} attempts"
        );
        let final_status = if expected == 2 { 200 } else { status };
        ensure!(response.status() == final_status, "{profile:?} {status}");
    }
    Ok(())
}

#[tokio::test]
async fn max_attempts_bounds_the_retries() -> anyhow::Result<()> {
    let server = Flaky::start(vec![reply(503)]).await?;
    let client = RetryClient::builder()
        .backoff(quick())
        .max_attempts(3)
        .build();
    let response = within(client.get(server.url()).send()).await??;
    ensure!(response.status() == 503);
    ensure!(attempts(&response) == 3);
    ensure!(server.arrivals().len() == 3);
    // Per call, fewer.
    let response = within(
        client
            .get(server.url())
            .with_extension(CallOptions::new().max_attempts(1))
            .send(),
    )
    .await??;
    ensure!(attempts(&response) == 1);
    ensure!(server.arrivals().len() == 4);
    Ok(())
}

/// A hung server: the attempt is cut at the call's deadline and the timeout returned.
#[tokio::test]
async fn deadline_cuts_a_hung_attempt() -> anyhow::Result<()> {
    let server = Flaky::start(vec![reply(200).stall(Duration::from_secs(3600))]).await?;
    let client = RetryClient::builder().backoff(quick()).build();
    let error = within(
        client
            .get(server.url())
            .with_extension(CallOptions::new().deadline(Duration::from_millis(500)))
            .send(),
    )
    .await?
    .expect_err("a hung server cannot answer");
    ensure!(error.is_timeout(), "{error:?}");
    Ok(())
}

/// Retries are bounded by the deadline: with failures answered at once and waits of at most
/// 100 ms, a 1 s deadline allows many attempts but not 1000 (which would take about 50 s),
/// and no attempt starts after the deadline (arrivals are checked with 1 s of allowance for
/// the way from the client to the server on a loaded machine).
#[tokio::test]
async fn deadline_stops_retries() -> anyhow::Result<()> {
    let server = Flaky::start(vec![reply(503)]).await?;
    let client = RetryClient::builder()
        .backoff(quick())
        .max_attempts(1000)
        .budget(RetryBudget::unlimited())
        .deadline(Duration::from_secs(1))
        .build();
    let start = Instant::now();
    let response = within(client.get(server.url()).send()).await??;
    ensure!(response.status() == 503);
    let arrivals = server.arrivals();
    ensure!(
        arrivals.len() > 1 && arrivals.len() < 1000,
        "{}",
        arrivals.len()
    );
    let last = arrivals.last().unwrap().at.duration_since(start);
    ensure!(
        last < Duration::from_secs(2),
        "an attempt started after the deadline: {last:?}"
    );
    let zero = within(
        client
            .get(server.url())
            .with_extension(CallOptions::new().deadline(Duration::ZERO))
            .send(),
    )
    .await?
    .expect_err("no time, no call");
    ensure!(
        matches!(
            HttpClientError::find(&zero),
            Some(HttpClientError::DeadlineExceeded { .. })
        ),
        "{zero:?}"
    );
    Ok(())
}

#[tokio::test]
async fn budget_stops_retries() -> anyhow::Result<()> {
    let server = Flaky::start(vec![reply(503)]).await?;
    // Two retries in all, no refill.
    let client = RetryClient::builder()
        .backoff(quick())
        .max_attempts(10)
        .budget(RetryBudget::new(0.0, 0.0, 2.0))
        .build();
    let first = within(client.get(server.url()).send()).await??;
    ensure!(attempts(&first) == 3, "{}", attempts(&first));
    let second = within(client.get(server.url()).send()).await??;
    ensure!(attempts(&second) == 1);
    ensure!(server.arrivals().len() == 4);
    // Clones share the budget.
    let clone = client.clone();
    let third = within(clone.get(server.url()).send()).await??;
    ensure!(attempts(&third) == 1);
    Ok(())
}

#[tokio::test]
async fn sends_the_current_handlers_key_on_every_attempt() -> anyhow::Result<()> {
    let server = Flaky::start(vec![reply(503), reply(503), reply(201)]).await?;
    let client = RetryClient::builder().backoff(quick()).build();
    let key = IdempotencyKey::new();
    // A POST: retried because it carries a key.
    let response = within(
        key.clone()
            .scope(client.post(server.url()).body("x").send()),
    )
    .await??;
    ensure!(response.status() == 201);
    let arrivals = server.arrivals();
    ensure!(arrivals.len() == 3);
    for arrival in &arrivals {
        ensure!(arrival.method == Method::POST);
        let sent = arrival
            .headers
            .get("idempotency-key")
            .context("no key sent")?;
        ensure!(sent == key.as_str(), "{sent:?} != {key}");
    }
    Ok(())
}

#[tokio::test]
async fn explicit_keys_win_over_the_current_one() -> anyhow::Result<()> {
    let server = Flaky::start(vec![reply(200)]).await?;
    let client = RetryClient::new();
    let current = IdempotencyKey::new();
    let explicit: IdempotencyKey = "order-42".parse()?;
    current
        .clone()
        .scope(async {
            client
                .post(server.url())
                .with_extension(CallOptions::new().idempotency_key(explicit.clone()))
                .send()
                .await?;
            client
                .post(server.url())
                .header("Idempotency-Key", "set-by-hand")
                .with_extension(CallOptions::new().idempotency_key(explicit.clone()))
                .send()
                .await?;
            anyhow::Ok(())
        })
        .await?;
    client.get(server.url()).send().await?;
    let keys: Vec<_> = server
        .arrivals()
        .iter()
        .map(|a| {
            a.headers
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap().to_string())
        })
        .collect();
    ensure!(
        keys == [Some("order-42".into()), Some("set-by-hand".into()), None],
        "{keys:?}"
    );
    Ok(())
}

/// A POST without a key may have been acted upon: a 503 is not retried (unless the client is
/// told to), but a refused connection is, since nothing was sent.
#[tokio::test]
async fn non_idempotent_requests_without_a_key() -> anyhow::Result<()> {
    let server = Flaky::start(vec![reply(503), reply(503), reply(200)]).await?;
    let client = RetryClient::builder().backoff(quick()).build();
    let response = within(client.post(server.url()).send()).await??;
    ensure!(response.status() == 503);
    ensure!(server.arrivals().len() == 1);

    let permissive = RetryClient::builder()
        .backoff(quick())
        .retry_non_idempotent(true)
        .build();
    let response = within(permissive.post(server.url()).send()).await??;
    ensure!(response.status() == 200);
    ensure!(server.arrivals().len() == 3);

    let counter = Counter::default();
    let client = RetryClient::builder()
        .backoff(quick())
        .max_attempts(3)
        .with_per_attempt(counter.clone())
        .build();
    let closed = closed_port().await?;
    let error = within(client.post(format!("http://{closed}/")).send())
        .await?
        .expect_err("nothing listens");
    ensure!(error.is_connect(), "{error:?}");
    ensure!(counter.get() == 3, "{} attempts", counter.get());
    Ok(())
}

/// Per-call middlewares run once, per-attempt ones on every attempt (the hook for an outbound
/// request log).
#[tokio::test]
async fn middlewares_run_per_call_and_per_attempt() -> anyhow::Result<()> {
    let server = Flaky::start(vec![reply(503), reply(503), reply(200)]).await?;
    let per_call = Counter::default();
    let per_attempt = Counter::default();
    let client = RetryClient::builder()
        .backoff(quick())
        .with_per_call(per_call.clone())
        .with_per_attempt(per_attempt.clone())
        .build();
    let response = within(client.get(server.url()).send()).await??;
    ensure!(response.status() == 200);
    ensure!(per_call.get() == 1 && per_attempt.get() == 3);
    Ok(())
}

/// A port nothing listens on.
async fn closed_port() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(addr)
}

/// Counts the requests passing through.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU32>);

impl Counter {
    fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Middleware for Counter {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.0.fetch_add(1, Ordering::SeqCst);
        next.run(request, extensions).await
    }
}
