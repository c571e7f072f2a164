//! Liveness and readiness endpoints whose readiness runs real checks.
//!
//! An orchestrator asks two different questions. *Is the process alive?* (`GET /healthz`):
//! answered without touching anything, so a slow database never gets a healthy process
//! restarted. *Can it serve now?* (`GET /readyz`): answered by actually querying what the
//! service needs (its database, the broker, an HTTP dependency), so traffic goes only where it
//! can succeed. A readiness that only reports "the process is up" would send requests to an
//! instance whose database is gone.
//!
//! Every check runs concurrently with its own timeout (a hung dependency is a failed check, not
//! a hung probe). `/readyz` answers `200` when all pass and `503` otherwise, with a JSON body
//! naming each check, its status and latency:
//!
//! ```json
//! {"status":"unavailable","checks":[
//!   {"name":"postgres","status":"ok","latencyMs":1.2},
//!   {"name":"broker","status":"failed","latencyMs":0.4,"error":"Unavailable: ..."}]}
//! ```
//!
//! ```no_run
//! use converge::health::{BrokerCheck, Health, PostgresCheck};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/app").await?;
//! let client = converge::client::Client::from_env().await?;
//! let app: axum::Router = Health::new()
//!     .check("postgres", PostgresCheck(pool))
//!     .check("broker", BrokerCheck::project(client, "shop"))
//!     .router();
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{GetTopicRequest, ListTopicsRequest};
use serde::Serialize;

use crate::client::Client;

/// How long a check may take by default before it counts as failed: well under the usual
/// probe timeout (Kubernetes' default is 1 s), so the probe gets an answer naming the slow
/// check instead of timing out itself.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(800);

/// One readiness check: does a dependency answer right now?
///
/// `Err` carries a short reason for the probe's body and the log. Implement it for anything the
/// service needs; the ready-made ones cover databases ([`PostgresCheck`], [`SqliteCheck`]), the
/// broker ([`BrokerCheck`]) and HTTP dependencies ([`HttpCheck`]). A check should be cheap: it
/// runs on every probe.
#[async_trait::async_trait]
pub trait Check: Send + Sync + 'static {
    /// Runs the check once.
    async fn check(&self) -> Result<(), String>;
}

/// A closure as a [`Check`], for one-off checks: `FnCheck(|| async { Ok(()) })`.
pub struct FnCheck<F>(pub F);

#[async_trait::async_trait]
impl<F, Fut> Check for FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    async fn check(&self) -> Result<(), String> {
        (self.0)().await
    }
}

/// PostgreSQL answers a query (`SELECT 1` through the pool, so an exhausted pool fails too: the
/// service could not run its own queries either).
#[derive(Debug, Clone)]
pub struct PostgresCheck(pub sqlx::PgPool);

#[async_trait::async_trait]
impl Check for PostgresCheck {
    async fn check(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(&self.0)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// SQLite answers a query (`SELECT 1` through the pool).
#[derive(Debug, Clone)]
pub struct SqliteCheck(pub sqlx::SqlitePool);

#[async_trait::async_trait]
impl Check for SqliteCheck {
    async fn check(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(&self.0)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// The broker answers a cheap RPC on this client's connection.
///
/// Any answer from the broker means it is reachable, including `NOT_FOUND` for a topic that
/// does not exist (yet): readiness is about the connection, not about resources, which the
/// service may well create itself once started.
#[derive(Debug, Clone)]
pub struct BrokerCheck {
    client: Client,
    probe: BrokerProbe,
}

/// Which RPC a [`BrokerCheck`] makes.
#[derive(Debug, Clone)]
enum BrokerProbe {
    /// `ListTopics` with `page_size` 1 on `projects/{project}`.
    Project(String),
    /// `GetTopic` of a full topic name.
    Topic(String),
}

impl BrokerCheck {
    /// Lists one topic of `project` (its id, as in `projects/{project}`).
    pub fn project(client: Client, project: impl Into<String>) -> Self {
        let project = project.into();
        let project = match project.strip_prefix("projects/") {
            Some(id) => id.to_owned(),
            None => project,
        };
        Self {
            client,
            probe: BrokerProbe::Project(project),
        }
    }

    /// Gets `topic` (full name, `projects/{project}/topics/{topic}`); `NOT_FOUND` passes.
    pub fn topic(client: Client, topic: impl Into<String>) -> Self {
        Self {
            client,
            probe: BrokerProbe::Topic(topic.into()),
        }
    }
}

#[async_trait::async_trait]
impl Check for BrokerCheck {
    async fn check(&self) -> Result<(), String> {
        let mut stub = self.client.publisher_stub();
        let answer = match &self.probe {
            BrokerProbe::Project(project) => stub
                .list_topics(ListTopicsRequest {
                    project: format!("projects/{project}"),
                    page_size: 1,
                    page_token: String::new(),
                })
                .await
                .map(drop),
            BrokerProbe::Topic(topic) => stub
                .get_topic(GetTopicRequest {
                    topic: topic.clone(),
                })
                .await
                .map(drop),
        };
        match answer {
            Ok(()) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

/// An HTTP dependency answers `GET url` with a 2xx status.
#[derive(Debug, Clone)]
pub struct HttpCheck {
    client: reqwest::Client,
    url: String,
}

impl HttpCheck {
    /// Checks `url` with a default client.
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_client(reqwest::Client::new(), url)
    }

    /// Checks `url` with `client` (its TLS, proxy and header settings).
    pub fn with_client(client: reqwest::Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }
}

#[async_trait::async_trait]
impl Check for HttpCheck {
    async fn check(&self) -> Result<(), String> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| format!("GET {}: {e}", self.url))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("GET {} answered {status}", self.url))
        }
    }
}

/// A named check with its timeout.
struct Named {
    name: String,
    check: Arc<dyn Check>,
    timeout: Duration,
}

/// The health endpoints of a service: a set of named readiness checks.
///
/// Cheap to clone (the checks are shared).
#[derive(Clone)]
pub struct Health {
    checks: Arc<Vec<Named>>,
    timeout: Duration,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field(
                "checks",
                &self.checks.iter().map(|c| &c.name).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// No checks yet; each check added gets [`DEFAULT_TIMEOUT`] unless
    /// [`Health::timeout`] changes it first.
    pub fn new() -> Self {
        Self {
            checks: Arc::new(Vec::new()),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The timeout of the checks added after this call.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Adds a readiness check under `name` (shown in the `/readyz` body).
    #[must_use]
    pub fn check(self, name: impl Into<String>, check: impl Check) -> Self {
        let timeout = self.timeout;
        self.check_with_timeout(name, check, timeout)
    }

    /// Adds a readiness check with its own timeout.
    #[must_use]
    pub fn check_with_timeout(
        mut self,
        name: impl Into<String>,
        check: impl Check,
        timeout: Duration,
    ) -> Self {
        let named = Named {
            name: name.into(),
            check: Arc::new(check),
            timeout,
        };
        match Arc::get_mut(&mut self.checks) {
            Some(checks) => checks.push(named),
            None => {
                // A clone was taken before this check was added: copy the list so the clone
                // keeps what it had.
                let mut checks: Vec<Named> = self
                    .checks
                    .iter()
                    .map(|c| Named {
                        name: c.name.clone(),
                        check: c.check.clone(),
                        timeout: c.timeout,
                    })
                    .collect();
                checks.push(named);
                self.checks = Arc::new(checks);
            }
        }
        self
    }

    /// Runs every check concurrently, each within its timeout.
    pub async fn readiness(&self) -> Readiness {
        let runs = self.checks.iter().map(|named| async move {
            let started = Instant::now();
            let outcome = tokio::time::timeout(named.timeout, named.check.check()).await;
            let latency = started.elapsed();
            let error = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(reason)) => Some(reason),
                Err(_) => Some(format!("timed out after {:?}", named.timeout)),
            };
            if let Some(error) = &error {
                tracing::warn!(check = %named.name, error = %error, "readiness check failed");
            }
            CheckResult {
                name: named.name.clone(),
                status: if error.is_none() {
                    CheckStatus::Ok
                } else {
                    CheckStatus::Failed
                },
                latency_ms: latency.as_secs_f64() * 1000.0,
                error,
            }
        });
        let checks = futures::future::join_all(runs).await;
        let ready = checks.iter().all(|c| c.status == CheckStatus::Ok);
        Readiness {
            status: if ready {
                CheckStatus::Ok
            } else {
                CheckStatus::Unavailable
            },
            checks,
        }
    }

    /// The routes: `GET /healthz` (liveness, always `200`, runs nothing) and `GET /readyz`
    /// (readiness: `200` when every check passes, `503` otherwise, with a JSON [`Readiness`]).
    /// Merge it into the service's router, or serve it on its own port.
    pub fn router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/healthz", get(liveness))
            .route("/readyz", get(readyz))
            .with_state(self)
    }
}

/// `GET /healthz`: the process answers.
async fn liveness() -> Response {
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: runs the checks.
async fn readyz(State(health): State<Health>) -> Response {
    let readiness = health.readiness().await;
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness)).into_response()
}

/// The outcome of one readiness probe: the `/readyz` body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Readiness {
    /// `ok` when every check passed, `unavailable` otherwise.
    pub status: CheckStatus,
    /// Each check, in the order they were added.
    pub checks: Vec<CheckResult>,
}

impl Readiness {
    /// Whether every check passed.
    pub fn is_ready(&self) -> bool {
        self.status == CheckStatus::Ok
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// The name it was added under.
    pub name: String,
    /// `ok` or `failed`.
    pub status: CheckStatus,
    /// How long it took (up to its timeout), in milliseconds.
    pub latency_ms: f64,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A status word in the readiness body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Passed (a check) or ready (the whole probe).
    Ok,
    /// A check did not pass.
    Failed,
    /// The whole probe: at least one check failed.
    Unavailable,
}
