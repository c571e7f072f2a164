//! The whole example, end to end, under injected failures.
//!
//! Starts (or connects to) a broker, gives PostgreSQL a schema of its own, starts the flaky mail
//! provider, the signup service, the outbox relay and the worker, signs up `users` users over
//! HTTP, and meanwhile crashes the worker and the relay (their tasks are aborted mid-work and
//! started again) and restarts the broker. Then it waits until every user has a recorded mail
//! status and checks the outcome against the provider's own count: every user received exactly
//! one mail, every user has exactly one status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use converge::Transport;
use converge::client::{Client, Endpoint, SubscriberSettings};
use converge::outbox::{Outbox, OutboxRelay, RelayConfig};
use converge::transport::RetryBackoff;
use futures::StreamExt as _;
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::LocalBroker;
use crate::mail_service::{FaultRates, MailService, MailStats};
use crate::signup::{SignupRequest, SignupResponse};
use crate::worker::{self, WorkerConfig, WorkerCounters, WorkerStats};

/// How to run the demo.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// How many users sign up.
    pub users: usize,
    /// How many signups are in flight at once.
    pub concurrency: usize,
    /// How the mail provider fails.
    pub rates: FaultRates,
    /// Seed of the provider's failures.
    pub seed: u64,
    /// The broker to use; `None` starts converge in this process (and restarts it mid-run).
    pub endpoint: Option<Endpoint>,
    /// The PostgreSQL database; the demo works in a schema of its own and drops it at the end.
    pub database_url: String,
    /// Crash the worker and the relay (and restart an in-process broker) during the run.
    pub chaos: bool,
    /// How long a provider call may take.
    pub call_timeout: Duration,
    /// Give up if the system has not converged after this long.
    pub deadline: Duration,
    /// Send the idempotency key to the provider (turn off only to see the duplicates it
    /// prevents).
    pub send_idempotency_key: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            users: 200,
            concurrency: 16,
            rates: FaultRates {
                fail_before: 0.2,
                slow: 0.1,
                fail_after: 0.2,
                slow_delay: Duration::from_millis(700),
            },
            seed: 7,
            endpoint: None,
            database_url: "postgres://postgres@127.0.0.1:5432/test".into(),
            chaos: true,
            call_timeout: Duration::from_millis(300),
            deadline: Duration::from_secs(180),
            send_idempotency_key: true,
        }
    }
}

/// What happened, counted on every side.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Users created by the signup service.
    pub users: i64,
    /// Users with a recorded mail status.
    pub statuses: i64,
    /// Users the provider sent exactly one mail to.
    pub users_with_one_mail: usize,
    /// Users the provider sent more than one mail to (must be 0).
    pub users_with_duplicate_mail: usize,
    /// Users the provider sent no mail to (must be 0).
    pub users_without_mail: usize,
    /// The provider's counters.
    pub provider: MailStats,
    /// The worker's counters.
    pub worker: WorkerStats,
    /// Crashes and restarts injected (worker, relay, broker).
    pub crashes: u32,
    /// From the first signup until every status was recorded.
    #[serde(with = "humantime_serde_secs")]
    pub converged_after: Duration,
}

mod humantime_serde_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Report {
    /// Whether the system converged to the one right outcome.
    pub fn converged(&self) -> bool {
        let users = usize::try_from(self.users).unwrap_or(usize::MAX);
        self.users > 0
            && self.statuses == self.users
            && self.users_with_one_mail == users
            && self.users_with_duplicate_mail == 0
            && self.users_without_mail == 0
            && self.provider.sent == self.provider.per_recipient.values().sum::<u64>()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.provider;
        let w = &self.worker;
        writeln!(f, "users signed up               {}", self.users)?;
        writeln!(f, "mail statuses recorded        {}", self.statuses)?;
        writeln!(f, "mails sent by the provider    {}", p.sent)?;
        writeln!(
            f,
            "  users with exactly one      {}",
            self.users_with_one_mail
        )?;
        writeln!(
            f,
            "  users with duplicates       {}",
            self.users_with_duplicate_mail
        )?;
        writeln!(
            f,
            "  users without a mail        {}",
            self.users_without_mail
        )?;
        writeln!(f, "provider requests             {}", p.requests)?;
        writeln!(f, "  failed before sending       {}", p.failed_before)?;
        writeln!(f, "  sent, answered too late     {}", p.slow)?;
        writeln!(f, "  sent, answered with error   {}", p.failed_after)?;
        writeln!(
            f,
            "duplicates suppressed by key  {}",
            p.replayed + p.conflicts
        )?;
        writeln!(f, "  replayed (already sent)     {}", p.replayed)?;
        writeln!(f, "  refused (still in flight)   {}", p.conflicts)?;
        writeln!(f, "handler retries (failures)    {}", w.provider_failures)?;
        writeln!(f, "MailSent events handled       {}", w.mail_sent_handled)?;
        writeln!(
            f,
            "  status already recorded     {}",
            w.status_already_recorded
        )?;
        writeln!(f, "crashes and restarts injected {}", self.crashes)?;
        write!(
            f,
            "converged after               {:.1} s",
            self.converged_after.as_secs_f64()
        )
    }
}

/// Runs the demo and reports; an error if it could not run or did not converge in time.
pub async fn run(config: DemoConfig) -> anyhow::Result<Report> {
    let mut broker = match &config.endpoint {
        Some(_) => None,
        None => Some(LocalBroker::start().await?),
    };
    let endpoint = match (&config.endpoint, &broker) {
        (Some(endpoint), _) => endpoint.clone(),
        (None, Some(broker)) => Endpoint::parse(&broker.addr().to_string())?,
        (None, None) => unreachable!("a broker was started above"),
    };
    let schema = format!("mail_demo_{}", uuid::Uuid::new_v4().simple());
    let pool = connect_schema(&config.database_url, &schema).await?;
    let outcome = run_in(&config, &endpoint, &pool, broker.as_mut()).await;
    pool.close().await;
    drop_schema(&config.database_url, &schema).await?;
    if let Some(broker) = broker {
        broker.stop().await?;
    }
    outcome
}

async fn run_in(
    config: &DemoConfig,
    endpoint: &Endpoint,
    pool: &PgPool,
    mut broker: Option<&mut LocalBroker>,
) -> anyhow::Result<Report> {
    crate::db::migrate(pool).await?;
    let outbox = Outbox::new().with_source("/signup")?;
    outbox.migrate(pool).await?;
    // Short leases, renewed often: the messages a crashed worker held go back to the broker
    // after 10 s instead of the default 60 s.
    let client = Client::connect(endpoint.clone())
        .await?
        .with_subscriber_settings(SubscriberSettings {
            lease_deadline: Duration::from_secs(10),
            lease_renewal: Duration::from_secs(3),
            ..SubscriberSettings::default()
        });
    let transport: Arc<dyn Transport> = Arc::new(client);
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("projects/mail-demo/topics/mail-events-{run_id}");
    let mail = MailService::start(config.rates, config.seed).await?;
    let worker_config = WorkerConfig {
        topic: topic.clone(),
        subscription: format!("projects/mail-demo/subscriptions/mail-worker-{run_id}"),
        mail_url: mail.url(),
        call_timeout: config.call_timeout,
        retry: RetryBackoff {
            minimum: Duration::from_millis(100),
            maximum: Duration::from_secs(2),
        },
        send_idempotency_key: config.send_idempotency_key,
    };
    let counters = Arc::new(WorkerCounters::default());
    let stop = CancellationToken::new();

    // The worker first, so its subscription exists before the first event is published.
    let spawn_worker = || {
        let (transport, pool, config, counters, stop) = (
            transport.clone(),
            pool.clone(),
            worker_config.clone(),
            counters.clone(),
            stop.clone(),
        );
        async move {
            let bus = worker::build(transport, pool, &config, counters).await?;
            Ok::<JoinHandle<()>, anyhow::Error>(tokio::spawn(async move {
                if let Err(error) = bus.run(stop).await {
                    tracing::error!(%error, "worker stopped");
                }
            }))
        }
    };
    let spawn_relay = || {
        let relay = OutboxRelay::new(outbox.clone(), pool.clone(), transport.clone()).with_config(
            RelayConfig {
                poll_interval: Duration::from_millis(500),
                ..RelayConfig::default()
            },
        );
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(error) = relay.run(stop).await {
                tracing::error!(%error, "relay stopped");
            }
        })
    };
    let mut worker_task = spawn_worker().await?;
    let mut relay_task = spawn_relay();
    let signup_addr =
        crate::signup::start(pool.clone(), outbox.clone(), topic.clone(), stop.clone()).await?;

    let started = Instant::now();
    let http = reqwest::Client::new();
    let signup_url = format!("http://{signup_addr}/signup");
    let signups = futures::stream::iter(0..config.users)
        .map(|n| {
            let (http, url) = (http.clone(), signup_url.clone());
            async move { sign_up(&http, &url, &format!("user-{n}@example.com")).await }
        })
        .buffer_unordered(config.concurrency.max(1));
    tokio::pin!(signups);
    let mut done = 0usize;
    let mut crashes = 0u32;
    while let Some(result) = signups.next().await {
        result?;
        done += 1;
        if config.chaos && done == config.users / 3 {
            tracing::info!("chaos: crashing the worker and the relay");
            worker_task.abort();
            relay_task.abort();
            crashes += 2;
            tokio::time::sleep(Duration::from_millis(200)).await;
            worker_task = spawn_worker().await?;
            relay_task = spawn_relay();
        }
        if config.chaos
            && done == 2 * config.users / 3
            && let Some(broker) = broker.as_deref_mut()
        {
            tracing::info!("chaos: restarting the broker");
            broker.restart().await?;
            crashes += 1;
        }
    }

    let expected = i64::try_from(config.users)?;
    loop {
        let (_, statuses) = crate::db::counts(pool).await?;
        if statuses >= expected {
            break;
        }
        if started.elapsed() > config.deadline {
            bail!(
                "not converged after {:?}: {statuses} of {expected} statuses recorded; provider {:?}",
                config.deadline,
                mail.stats()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let converged_after = started.elapsed();
    // Let anything still in flight (a late redelivery, a duplicate) land before counting, so
    // that a duplicate would be seen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), worker_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(15), relay_task).await;

    let (users, statuses) = crate::db::counts(pool).await?;
    let provider = mail.stats();
    let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM users")
        .fetch_all(pool)
        .await?;
    let (one, more, none) = tally(&emails, &provider.per_recipient);
    Ok(Report {
        users,
        statuses,
        users_with_one_mail: one,
        users_with_duplicate_mail: more,
        users_without_mail: none,
        provider,
        worker: counters.snapshot(),
        crashes,
        converged_after,
    })
}

/// Users with exactly one mail, with more, with none.
fn tally(emails: &[String], per_recipient: &HashMap<String, u64>) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    for email in emails {
        match per_recipient.get(email).copied().unwrap_or(0) {
            0 => counts.2 += 1,
            1 => counts.0 += 1,
            _ => counts.1 += 1,
        }
    }
    counts
}

/// Signs one user up, retrying transport failures (the signup call is a network call too; a
/// retry after a lost answer would hit the unique email and is reported as a conflict).
async fn sign_up(http: &reqwest::Client, url: &str, email: &str) -> anyhow::Result<i64> {
    let request = SignupRequest {
        email: email.to_owned(),
    };
    let response = http
        .post(url)
        .json(&request)
        .send()
        .await
        .with_context(|| format!("signup of {email}"))?
        .error_for_status()
        .with_context(|| format!("signup of {email}"))?;
    let created: SignupResponse = response.json().await?;
    Ok(created.user_id)
}

/// A pool whose connections all work in `schema`, created first.
async fn connect_schema(url: &str, schema: &str) -> anyhow::Result<PgPool> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    let search_path = format!("SET search_path TO {schema}");
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .after_connect(move |conn, _meta| {
            let search_path = search_path.clone();
            Box::pin(async move {
                sqlx::Executor::execute(conn, search_path.as_str()).await?;
                Ok(())
            })
        })
        .connect(url)
        .await?;
    Ok(pool)
}

async fn drop_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    let admin = PgPoolOptions::new().max_connections(1).connect(url).await?;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(())
}
