//! The `Idempotency-Key` middleware on a real axum server on 127.0.0.1, driven with reqwest,
//! with the store in memory and in the real PostgreSQL (a schema of its own per test), both on
//! a manual clock so that leases expire without sleeping.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use converge::http::idempotency::IdempotencyLayer;
use converge::idempotency::IdempotencyKey;
use converge::idempotency::store::{IdempotencyStore, MemoryIdempotencyStore, SqlIdempotencyStore};
use converge_core::ManualClock;
use support::{PgSchema, WAIT};
use tokio::sync::watch;

const LEASE: Duration = Duration::from_secs(30);
/// What the handler does on its `n`-th run (counting from 1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Behaviour {
    /// Answers 201 at once.
    Succeed,
    /// Waits until the gate opens, then answers 201.
    WaitForGate,
    /// Never answers on the first run (the worker "crashes"), then answers 201.
    HangFirst,
    /// Answers 503 on the first run, then 201.
    FailFirst,
}

#[derive(Clone)]
struct App {
    runs: Arc<AtomicUsize>,
    gate: watch::Receiver<bool>,
    behaviour: Behaviour,
}

async fn create_order(
    State(app): State<App>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    let run = app.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let key = IdempotencyKey::current()
        .map(String::from)
        .unwrap_or_default();
    match app.behaviour {
        Behaviour::Succeed => {}
        Behaviour::WaitForGate => {
            let mut gate = app.gate.clone();
            let _ = gate.wait_for(|open| *open).await;
        }
        Behaviour::HangFirst if run == 1 => std::future::pending::<()>().await,
        Behaviour::FailFirst if run == 1 => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                HeaderMap::new(),
                "down".to_owned(),
            );
        }
        Behaviour::HangFirst | Behaviour::FailFirst => {}
    }
    let tenant = headers
        .get("x-tenant")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let mut out = HeaderMap::new();
    out.insert("location", format!("/orders/{run}").parse().unwrap());
    out.insert("x-run", run.to_string().parse().unwrap());
    out.append("set-cookie", "a=1".parse().unwrap());
    out.append("set-cookie", "b=2".parse().unwrap());
    let body =
        format!("{{\"run\":{run},\"key\":\"{key}\",\"tenant\":\"{tenant}\",\"body\":{body:?}}}");
    (StatusCode::CREATED, out, body)
}

/// A server with the middleware, its handler's run count, its gate and its clock.
struct Server {
    base: String,
    runs: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
    clock: ManualClock,
    http: reqwest::Client,
    _schema: Option<PgSchema>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy)]
enum Backend {
    Memory,
    Postgres,
}

impl Server {
    async fn start(backend: Backend, behaviour: Behaviour) -> anyhow::Result<Self> {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let (store, schema): (Arc<dyn IdempotencyStore>, _) = match backend {
            Backend::Memory => (
                Arc::new(MemoryIdempotencyStore::new().with_clock(Arc::new(clock.clone()))),
                None,
            ),
            Backend::Postgres => {
                let table = format!("idem_http_{}", uuid::Uuid::new_v4().simple());
                let schema = PgSchema::new().await?;
                let store = SqlIdempotencyStore::new(schema.pool.clone())
                    .with_table(&table)?
                    .with_clock(Arc::new(clock.clone()));
                store.migrate().await?;
                (Arc::new(store) as Arc<dyn IdempotencyStore>, Some(schema))
            }
        };
        let runs = Arc::new(AtomicUsize::new(0));
        let (gate, gate_rx) = watch::channel(false);
        let app = App {
            runs: runs.clone(),
            gate: gate_rx,
            behaviour,
        };
        let router = Router::new()
            .route("/orders", post(create_order).get(|| async { "listing" }))
            .with_state(app)
            .layer(
                IdempotencyLayer::new(store)
                    .required(true)
                    .lease(LEASE)
                    .retention(Duration::from_secs(7200))
                    .scope(|parts| {
                        parts
                            .headers
                            .get("x-tenant")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self {
            base: format!("http://{addr}"),
            runs,
            gate,
            clock,
            http: reqwest::Client::new(),
            _schema: schema,
            task,
        })
    }

    fn post(&self, key: Option<&str>, body: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .post(format!("{}/orders", self.base))
            .body(body.to_owned());
        match key {
            Some(key) => request.header("idempotency-key", key),
            None => request,
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

/// A response reduced to what a replay must reproduce.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

async fn answer(response: reqwest::Response) -> anyhow::Result<Answer> {
    let status = response.status().as_u16();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "date" | "idempotent-replayed"))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    headers.sort();
    Ok(Answer {
        status,
        headers,
        body: response.text().await?,
    })
}

fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Checks that `answer` is an RFC 9457 problem with `status` and `title`.
fn ensure_problem(answer: &Answer, status: u16, title: &str) -> anyhow::Result<()> {
    ensure!(answer.status == status, "expected {status}, got {answer:?}");
    ensure!(
        header(answer, "content-type") == Some("application/problem+json"),
        "{answer:?}"
    );
    let problem: serde_json::Value = serde_json::from_str(&answer.body)?;
    ensure!(
        problem["status"] == status && problem["title"] == title,
        "{problem}"
    );
    ensure!(
        problem["type"].is_string() && problem["detail"].is_string(),
        "{problem}"
    );
    ensure!(
        header(answer, "idempotency-retention") == Some("7200"),
        "{answer:?}"
    );
    Ok(())
}

macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn memory() -> anyhow::Result<()> {
                super::$test(super::Backend::Memory).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() -> anyhow::Result<()> {
                super::$test(super::Backend::Postgres).await
            }
        }
    )*};
}

on_every_backend!(
    concurrent_duplicates_run_once,
    missing_and_invalid_keys,
    fingerprint_mismatch,
    crashed_request_is_taken_over_after_the_lease,
    keys_are_scoped,
    server_errors_are_not_recorded,
);

async fn concurrent_duplicates_run_once(backend: Backend) -> anyhow::Result<()> {
    let server = Server::start(backend, Behaviour::WaitForGate).await?;
    let key = "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"";
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let request = server.post(Some(key), "{\"item\":1}");
            tokio::spawn(async move { answer(request.send().await?).await })
        })
        .collect();
    // The first request is in the handler, held at the gate: every other one is answered 409.
    let deadline = tokio::time::Instant::now() + WAIT;
    while requests.iter().filter(|r| r.is_finished()).count() < 49 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the duplicates were not answered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (finished, mut pending): (Vec<_>, Vec<_>) =
        requests.into_iter().partition(|r| r.is_finished());
    ensure!(
        pending.len() == 1,
        "{} requests still running",
        pending.len()
    );
    for request in finished {
        let conflict = request.await??;
        ensure_problem(
            &conflict,
            409,
            "A request is outstanding for this Idempotency-Key",
        )?;
        ensure!(header(&conflict, "retry-after").is_some(), "{conflict:?}");
    }
    ensure!(server.runs() == 1);
    server.gate.send(true)?;
    let first = pending.pop().unwrap().await??;
    ensure!(first.status == 201, "{first:?}");
    ensure!(header(&first, "idempotency-retention") == Some("7200"));
    ensure!(
        first
            .body
            .contains("\"key\":\"8e03978e-40d5-43e8-bc93-6894a57f9324\""),
        "{first:?}"
    );
    // Retries after completion, concurrent again, get the first answer, headers included,
    // whether the key is quoted or bare.
    let retries: Vec<_> = (0..50)
        .map(|i| {
            let key = if i % 2 == 0 {
                key
            } else {
                "8e03978e-40d5-43e8-bc93-6894a57f9324"
            };
            let request = server.post(Some(key), "{\"item\":1}");
            tokio::spawn(async move {
                let response = request.send().await?;
                ensure!(
                    response
                        .headers()
                        .get("idempotent-replayed")
                        .is_some_and(|v| v == "true")
                );
                answer(response).await
            })
        })
        .collect();
    for retry in retries {
        let replay = retry.await??;
        ensure!(replay == first, "replay {replay:?}\nfirst {first:?}");
    }
    ensure!(
        server.runs() == 1,
        "the handler ran {} times",
        server.runs()
    );
    Ok(())
}

async fn missing_and_invalid_keys(backend: Backend) -> anyhow::Result<()> {
    let server = Server::start(backend, Behaviour::Succeed).await?;
    let missing = answer(server.post(None, "x").send().await?).await?;
    ensure_problem(&missing, 400, "Idempotency-Key is missing")?;
    ensure!(header(&missing, "link").is_some_and(|l| l.contains("rel=\"describedby\"")));
    let invalid = answer(server.post(Some("\"unterminated"), "x").send().await?).await?;
    ensure_problem(&invalid, 400, "Idempotency-Key is invalid")?;
    let repeated = server
        .post(Some("a"), "x")
        .header("idempotency-key", "b")
        .send()
        .await?;
    ensure_problem(&answer(repeated).await?, 400, "Idempotency-Key is invalid")?;
    ensure!(server.runs() == 0);
    // Idempotent methods pass through without a key.
    let listing = server
        .http
        .get(format!("{}/orders", server.base))
        .send()
        .await?;
    ensure!(listing.status() == 200 && listing.text().await? == "listing");
    Ok(())
}

async fn fingerprint_mismatch(backend: Backend) -> anyhow::Result<()> {
    let server = Server::start(backend, Behaviour::Succeed).await?;
    let first = answer(server.post(Some("k-1"), "{\"amount\":10}").send().await?).await?;
    ensure!(first.status == 201);
    let other = answer(server.post(Some("k-1"), "{\"amount\":99}").send().await?).await?;
    ensure_problem(&other, 422, "Idempotency-Key is already used")?;
    // The same key on another path is another request too.
    let elsewhere = server
        .http
        .post(format!("{}/orders?dry-run=1", server.base))
        .header("idempotency-key", "k-1")
        .body("{\"amount\":10}")
        .send()
        .await?;
    ensure_problem(
        &answer(elsewhere).await?,
        422,
        "Idempotency-Key is already used",
    )?;
    let replay = answer(server.post(Some("k-1"), "{\"amount\":10}").send().await?).await?;
    ensure!(replay == first);
    ensure!(server.runs() == 1);
    Ok(())
}

async fn crashed_request_is_taken_over_after_the_lease(backend: Backend) -> anyhow::Result<()> {
    let server = Server::start(backend, Behaviour::HangFirst).await?;
    // The first request's handler never finishes; the client gives up.
    let gave_up = server
        .post(Some("k-crash"), "x")
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    ensure!(gave_up.is_err_and(|e| e.is_timeout()));
    ensure!(server.runs() == 1);
    // Within the lease, the key is still held by the dead request.
    let held = answer(server.post(Some("k-crash"), "x").send().await?).await?;
    ensure_problem(
        &held,
        409,
        "A request is outstanding for this Idempotency-Key",
    )?;
    server.clock.advance(LEASE);
    let taken_over = answer(server.post(Some("k-crash"), "x").send().await?).await?;
    ensure!(taken_over.status == 201, "{taken_over:?}");
    ensure!(header(&taken_over, "x-run") == Some("2"));
    let replay = answer(server.post(Some("k-crash"), "x").send().await?).await?;
    ensure!(replay == taken_over);
    ensure!(server.runs() == 2);
    Ok(())
}

async fn keys_are_scoped(backend: Backend) -> anyhow::Result<()> {
    let server = Server::start(backend, Behaviour::Succeed).await?;
    let send = |tenant: &str| {
        server
            .post(Some("shared-key"), "x")
            .header("x-tenant", tenant)
            .send()
    };
    let a = answer(send("a").await?).await?;
    let b = answer(send("b").await?).await?;
    ensure!(a.status == 201 && b.status == 201);
    ensure!(a.body.contains("\"tenant\":\"a\"") && b.body.contains("\"tenant\":\"b\""));
    ensure!(server.runs() == 2);
    ensure!(answer(send("a").await?).await? == a);
    ensure!(answer(send("b").await?).await? == b);
    ensure!(server.runs() == 2);
    Ok(())
}

async fn server_errors_are_not_recorded(backend: Backend) -> anyhow::Result<()> {
    let server = Server::start(backend, Behaviour::FailFirst).await?;
    let failed = server.post(Some("k-5xx"), "x").send().await?;
    ensure!(failed.status() == 503);
    // The key was released: the retry runs the handler at once, and that answer is kept.
    let retried = answer(server.post(Some("k-5xx"), "x").send().await?).await?;
    ensure!(retried.status == 201, "{retried:?}");
    let replay = answer(server.post(Some("k-5xx"), "x").send().await?).await?;
    ensure!(replay == retried);
    if server.runs() != 2 {
        bail!("the handler ran {} times", server.runs());
    }
    Ok(())
}
