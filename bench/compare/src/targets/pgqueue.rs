//! A plain PostgreSQL queue, the kind a team builds when it already runs PostgreSQL and does not
//! want a broker: one table per subscription, `FOR UPDATE SKIP LOCKED` to share a table between
//! consumers, a delete as the acknowledgement.
//!
//! - **Publish**: one statement per batch. `INSERT ... SELECT unnest($1::bytea[])` writes the
//!   whole batch as one multi-row insert; with several subscriptions every table gets its insert
//!   in a data-modifying CTE of that same statement, so a fan-out publish is one transaction and
//!   one round trip. The statement runs with `synchronous_commit = on` (set on the connection, not
//!   trusted from the server's default), so PostgreSQL answers once the commit record is flushed
//!   with `fdatasync`: [`Durability::AfterFsync`] — unless the server runs with `fsync = off`,
//!   which [`connect`] checks and then reports as [`Durability::Memory`] rather than claim a
//!   durability the server does not give.
//! - **Receive**: `DELETE ... WHERE id IN (SELECT id ... ORDER BY id LIMIT $max FOR UPDATE SKIP
//!   LOCKED) RETURNING payload`: taking a message and acknowledging it is one statement (at most
//!   once in the strict sense, the way such queues are usually run for throughput). When the
//!   table is empty the consumer polls every [`POLL_INTERVAL`] until `wait` runs out; LISTEN/NOTIFY
//!   would serialise every publishing commit on PostgreSQL's global notify lock, which would cost
//!   the publish side more than polling costs the receive side.
//! - On the machine's server (`--pg-url`) or, with `--spawn postgres`, on a private cluster with
//!   stock settings (see `postgres_server`), which the start-up workload restarts and times.
//! - Every run gets a schema `bench_<uuid>` of its own, dropped by [`Queue::delete`]; every
//!   publisher and consumer has a connection of its own.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions as _, Connection as _, Executor as _, Row as _};
use tokio::time::Instant;

use super::postgres_server::PgServer;
use super::{Peer, TargetOptions};
use crate::process::{restart_if_managed, shutdown_if_managed};
use crate::target::{Consumer, Durability, Publisher, Queue, QueueSpec, Target};

/// How often an idle consumer looks for new rows.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The PostgreSQL queue target.
pub struct PgQueueTarget {
    options: PgConnectOptions,
    durability: Durability,
    /// The private cluster of `--spawn postgres`, which the start-up workload restarts.
    managed: Option<PgServer>,
}

/// Connects to the PostgreSQL server of `opts.pg_url`, or to a private cluster it starts with
/// `--spawn postgres`; see [`connect_url`].
pub async fn connect(opts: &TargetOptions) -> anyhow::Result<Box<dyn Target>> {
    if !opts.spawns(Peer::Postgres) {
        return connect_url(&opts.pg_url).await;
    }
    let server = PgServer::start(opts).await?;
    let mut target = PgQueueTarget::open(&server.url).await?;
    target.managed = Some(server);
    Ok(Box::new(target))
}

/// Connects to the PostgreSQL server at `url` (`postgres://user@host:port/db`) and checks what
/// its commits promise.
pub async fn connect_url(url: &str) -> anyhow::Result<Box<dyn Target>> {
    Ok(Box::new(PgQueueTarget::open(url).await?))
}

impl PgQueueTarget {
    async fn open(url: &str) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .with_context(|| format!("parsing the PostgreSQL URL {url}"))?
            // Statement logging would put a line per publish into the benchmark's output.
            .disable_statement_logging();
        let mut conn = options
            .connect()
            .await
            .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
        let fsync: String = sqlx::query_scalar("SHOW fsync")
            .fetch_one(&mut conn)
            .await?;
        conn.close().await.ok();
        let durability = if fsync == "on" {
            Durability::AfterFsync
        } else {
            Durability::Memory
        };
        Ok(Self {
            options,
            durability,
            managed: None,
        })
    }
}

/// A connection of its own that commits with `synchronous_commit = on`.
async fn conn(options: &PgConnectOptions) -> anyhow::Result<PgConnection> {
    let mut conn = options
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    // The durability this target reports depends on it; never inherit a server default.
    sqlx::query("SET synchronous_commit = on")
        .execute(&mut conn)
        .await?;
    Ok(conn)
}

#[async_trait]
impl Target for PgQueueTarget {
    fn name(&self) -> String {
        "pgqueue".to_owned()
    }

    fn durability(&self) -> Durability {
        self.durability
    }

    async fn queue(&self, spec: &QueueSpec) -> anyhow::Result<Box<dyn Queue>> {
        Ok(Box::new(self.create(spec).await?))
    }

    /// The private cluster's postmaster and backends; `None` for the machine's server.
    fn server_memory(&self) -> Option<u64> {
        self.managed.as_ref()?.server.memory()
    }

    async fn restart(&self) -> anyhow::Result<Option<Duration>> {
        restart_if_managed(self.managed.as_ref().map(|m| &m.server)).await
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        shutdown_if_managed(self.managed.as_ref().map(|m| &m.server)).await
    }
}

impl PgQueueTarget {
    /// Creates the schema and tables of one run.
    async fn create(&self, spec: &QueueSpec) -> anyhow::Result<PgQueue> {
        anyhow::ensure!(spec.subscriptions > 0, "a queue needs a subscription");
        let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = conn(&self.options).await?;
        let mut ddl = format!("CREATE SCHEMA {schema};");
        for sub in 0..spec.subscriptions {
            ddl.push_str(&format!(
                "CREATE TABLE {schema}.q{sub} (id bigserial PRIMARY KEY, payload bytea NOT NULL);"
            ));
        }
        // Several statements: the simple query protocol runs them as one transaction.
        conn.execute(ddl.as_str())
            .await
            .with_context(|| format!("creating schema {schema}"))?;
        conn.close().await.ok();
        Ok(PgQueue {
            options: self.options.clone(),
            publish_sql: publish_sql(&schema, spec.subscriptions),
            schema,
            subscriptions: spec.subscriptions,
        })
    }
}

/// The one statement that publishes a batch to every subscription's table.
fn publish_sql(schema: &str, subscriptions: usize) -> String {
    let insert =
        |sub: usize| format!("INSERT INTO {schema}.q{sub} (payload) SELECT unnest($1::bytea[])");
    let last = subscriptions - 1;
    let ctes: Vec<String> = (0..last)
        .map(|sub| format!("i{sub} AS ({})", insert(sub)))
        .collect();
    if ctes.is_empty() {
        insert(last)
    } else {
        format!("WITH {} {}", ctes.join(", "), insert(last))
    }
}

/// One run's schema with a table per subscription.
struct PgQueue {
    options: PgConnectOptions,
    schema: String,
    subscriptions: usize,
    publish_sql: String,
}

#[async_trait]
impl Queue for PgQueue {
    async fn publisher(&self) -> anyhow::Result<Box<dyn Publisher>> {
        Ok(Box::new(PgPublisher {
            conn: conn(&self.options).await?,
            sql: self.publish_sql.clone(),
        }))
    }

    async fn consumer(&self, subscription: usize) -> anyhow::Result<Box<dyn Consumer>> {
        anyhow::ensure!(
            subscription < self.subscriptions,
            "subscription {subscription} out of range (the queue has {})",
            self.subscriptions
        );
        let table = format!("{}.q{subscription}", self.schema);
        Ok(Box::new(PgConsumer {
            conn: conn(&self.options).await?,
            sql: format!(
                "WITH taken AS (DELETE FROM {table} WHERE id IN \
                   (SELECT id FROM {table} ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, payload) \
                 SELECT payload FROM taken ORDER BY id"
            ),
        }))
    }

    async fn delete(&self) -> anyhow::Result<()> {
        let mut conn = conn(&self.options).await?;
        let drop = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        conn.execute(drop.as_str())
            .await
            .with_context(|| format!("dropping schema {}", self.schema))?;
        conn.close().await.ok();
        Ok(())
    }
}

struct PgPublisher {
    conn: PgConnection,
    sql: String,
}

#[async_trait]
impl Publisher for PgPublisher {
    async fn publish(&mut self, messages: Vec<Bytes>) -> anyhow::Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let payloads: Vec<&[u8]> = messages.iter().map(|m| m.as_ref()).collect();
        sqlx::query(&self.sql)
            .bind(payloads)
            .execute(&mut self.conn)
            .await
            .context("publishing a batch to PostgreSQL")?;
        Ok(())
    }
}

struct PgConsumer {
    conn: PgConnection,
    sql: String,
}

#[async_trait]
impl Consumer for PgConsumer {
    async fn receive(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<Bytes>> {
        let deadline = Instant::now() + wait;
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        loop {
            let rows = sqlx::query(&self.sql)
                .bind(limit)
                .fetch_all(&mut self.conn)
                .await
                .context("receiving from PostgreSQL")?;
            if !rows.is_empty() {
                return rows
                    .iter()
                    .map(|row| Ok(Bytes::from(row.try_get::<Vec<u8>, _>(0)?)))
                    .collect();
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            tokio::time::sleep_until(deadline.min(now + POLL_INTERVAL)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against the real PostgreSQL on 127.0.0.1:5432 (database `test`). Every test creates its
    //! own `bench_<uuid>` schema through the target and drops it, so tests run in parallel.

    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;

    const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

    fn spec(subscriptions: usize) -> QueueSpec {
        QueueSpec {
            name: "pgqueue-test".to_owned(),
            subscriptions,
            message_size: 64,
        }
    }

    /// Distinct payloads of different lengths, so a mix-up or truncation shows.
    fn messages(range: std::ops::Range<u32>) -> Vec<Bytes> {
        range
            .map(|i| Bytes::from(format!("message-{i}-{}", "x".repeat(i as usize % 7))))
            .collect()
    }

    async fn schema_exists(schema: &str) -> bool {
        let mut conn = PgConnection::connect(URL).await.unwrap();
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM information_schema.schemata WHERE schema_name = $1)",
        )
        .bind(schema)
        .fetch_one(&mut conn)
        .await
        .unwrap()
    }

    /// Runs `body` on a fresh queue, then drops the queue's schema and checks it is gone, also
    /// when `body` panics (a failed assertion), so a failing run leaves nothing behind.
    async fn with_queue<F, Fut>(subscriptions: usize, body: F)
    where
        F: FnOnce(Arc<PgQueue>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let target = PgQueueTarget::open(URL).await.unwrap();
        let queue = Arc::new(target.create(&spec(subscriptions)).await.unwrap());
        assert!(schema_exists(&queue.schema).await);
        let outcome = tokio::spawn(body(queue.clone())).await;
        queue.delete().await.unwrap();
        assert!(
            !schema_exists(&queue.schema).await,
            "delete left the schema"
        );
        if let Err(error) = outcome {
            std::panic::resume_unwind(error.into_panic());
        }
    }

    /// The server on this machine runs with `fsync = on`, and the target says so.
    #[tokio::test]
    async fn reports_fsync_durability() {
        let target = PgQueueTarget::open(URL).await.unwrap();
        assert_eq!(target.durability(), Durability::AfterFsync);
    }

    /// Messages come back byte for byte, in publish order, each once: the receive deletes what
    /// it returns, so the next receive finds nothing and returns empty after waiting.
    #[tokio::test]
    async fn publishes_and_receives_in_order_once() {
        with_queue(1, |queue| async move {
            let mut publisher = queue.publisher().await.unwrap();
            let mut consumer = queue.consumer(0).await.unwrap();

            let sent = messages(0..250);
            publisher.publish(sent[..100].to_vec()).await.unwrap();
            publisher.publish(sent[100..].to_vec()).await.unwrap();

            let mut received = Vec::new();
            while received.len() < sent.len() {
                let batch = consumer.receive(64, Duration::from_secs(5)).await.unwrap();
                assert!(!batch.is_empty(), "published messages must be there");
                assert!(batch.len() <= 64, "receive returned more than max");
                received.extend(batch);
            }
            assert_eq!(received, sent);

            let wait = Duration::from_millis(50);
            let started = Instant::now();
            let nothing = consumer.receive(64, wait).await.unwrap();
            assert!(nothing.is_empty(), "acknowledged messages came back");
            assert!(started.elapsed() >= wait, "returned empty before `wait`");
        })
        .await;
    }

    /// A consumer that is already waiting gets a message published during its wait, well before
    /// the wait runs out.
    #[tokio::test]
    async fn waiting_consumer_gets_a_later_publish() {
        with_queue(1, |queue| async move {
            let mut publisher = queue.publisher().await.unwrap();
            let mut consumer = queue.consumer(0).await.unwrap();

            let waiting = tokio::spawn(async move {
                let got = consumer.receive(10, Duration::from_secs(30)).await.unwrap();
                (got, Instant::now())
            });
            // Lets the consumer find the table empty and start polling first; if it has not by
            // then, the test still checks delivery, only not the wake-up from a wait.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let sent = messages(0..1);
            publisher.publish(sent.clone()).await.unwrap();
            let published = Instant::now();
            let (got, at) = waiting.await.unwrap();
            assert_eq!(got, sent);
            assert!(
                at.duration_since(published) < Duration::from_secs(10),
                "the consumer slept through the publish"
            );
        })
        .await;
    }

    /// Fan-out: every subscription gets every message. Within one subscription, consumers
    /// receiving concurrently split the messages between them: none twice, none lost.
    #[tokio::test]
    async fn fans_out_and_shares_a_subscription_between_consumers() {
        const COUNT: usize = 2_000;
        with_queue(3, |queue| async move {
            let mut publisher = queue.publisher().await.unwrap();
            let sent = messages(0..COUNT as u32);
            for chunk in sent.chunks(500) {
                publisher.publish(chunk.to_vec()).await.unwrap();
            }
            assert!(
                queue.consumer(3).await.is_err(),
                "subscription 3 does not exist"
            );

            for sub in 0..3 {
                let mut workers = Vec::new();
                for _ in 0..4 {
                    let mut consumer = queue.consumer(sub).await.unwrap();
                    workers.push(tokio::spawn(async move {
                        let mut got = Vec::new();
                        loop {
                            let batch = consumer.receive(50, Duration::from_millis(200)).await;
                            let batch = batch.unwrap();
                            // Empty: drained. More than was published: redeliveries; stop
                            // rather than spin, the count below fails.
                            if batch.is_empty() || got.len() > COUNT {
                                return got;
                            }
                            got.extend(batch);
                        }
                    }));
                }
                let mut all = Vec::new();
                for worker in workers {
                    all.extend(worker.await.unwrap());
                }
                assert_eq!(all.len(), COUNT, "subscription {sub}: duplicates or losses");
                let all: BTreeSet<Bytes> = all.into_iter().collect();
                let expected: BTreeSet<Bytes> = sent.iter().cloned().collect();
                assert_eq!(all, expected, "subscription {sub}");
            }
        })
        .await;
    }
}
