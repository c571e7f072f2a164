//! The transactional outbox against the real PostgreSQL (127.0.0.1:5432, database `test`) and
//! SQLite, relaying to a real converge broker started in process and reached over gRPC.
//!
//! Each PostgreSQL test works in a schema of its own (`support::PgSchema`, set as the pool's
//! `search_path`), dropped at the end, so tests run in parallel without seeing each other's
//! rows. They do share the cluster's transaction ids, so a test's rows can be held back by
//! another test's open transaction for a moment: tests wait for outcomes with a generous
//! deadline instead of expecting them after one round.

mod support;

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use converge::client::Client;
use converge::cloudevents;
use converge::event::Event;
use converge::idempotency::IDEMPOTENCY_KEY_ATTRIBUTE;
use converge::memory::MemoryTransport;
use converge::outbox::{Outbox, OutboxError, OutboxRelay, RelayConfig};
use converge::transport::{
    BoxFuture, Disposition, IncomingMessage, MessageHandler, ReceiveOptions, SubscriptionConfig,
    TopicConfig, Transport, TransportError,
};
use converge::{OutgoingMessage, transport::Code};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use sqlx::sqlite::SqlitePoolOptions;
use support::{Intercept, Intercepted, PgSchema, QUIET, SqliteDb, WAIT};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "projects/test/topics/outbox";
const SUBSCRIPTION: &str = "projects/test/subscriptions/outbox";

// ---------------------------------------------------------------------------------------------
// The broker and a subscriber
// ---------------------------------------------------------------------------------------------

/// A converge broker in this process, with the outbox topic and a subscription on it.
struct Broker {
    server: support::Broker,
    client: Arc<Client>,
}

impl Broker {
    async fn start() -> anyhow::Result<Self> {
        let server = support::Broker::start().await?;
        let client = server.client().await?;
        client
            .ensure_topic(&TopicConfig {
                name: TOPIC.to_owned(),
                labels: HashMap::new(),
            })
            .await?;
        client
            .ensure_subscription(&SubscriptionConfig::new(SUBSCRIPTION, TOPIC))
            .await?;
        Ok(Self {
            server,
            client: Arc::new(client),
        })
    }

    fn transport(&self) -> Arc<dyn Transport> {
        self.client.clone()
    }

    /// Receives from the outbox subscription, acknowledging everything.
    fn subscribe(&self) -> Received {
        subscribe(self.transport(), self.server.child_token())
    }
}

/// Receives from the outbox subscription of `transport` until `stop`, acknowledging everything.
fn subscribe(transport: Arc<dyn Transport>, stop: CancellationToken) -> Received {
    let (sender, messages) = mpsc::unbounded_channel();
    let handler: MessageHandler = Arc::new(move |message: IncomingMessage| {
        let sender = sender.clone();
        Box::pin(async move {
            let _ = sender.send(message);
            Disposition::Ack
        }) as BoxFuture<Disposition>
    });
    let token = stop.clone();
    tokio::spawn(async move {
        transport
            .receive(SUBSCRIPTION, ReceiveOptions::default(), handler, token)
            .await
    });
    Received { messages, stop }
}

/// Messages delivered by the broker.
struct Received {
    messages: mpsc::UnboundedReceiver<IncomingMessage>,
    stop: CancellationToken,
}

impl Drop for Received {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Received {
    /// Everything delivered until the message whose data is `last` has arrived, and then for
    /// [`QUIET`] more, so that a message that should not be there (a duplicate, a rolled-back
    /// row) is caught if it was published before `last` or with it. The subscriber runs
    /// handlers concurrently, so arrival order means nothing: callers compare sorted data.
    async fn until(&mut self, last: &str) -> anyhow::Result<Vec<IncomingMessage>> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !seen
            .iter()
            .any(|m: &IncomingMessage| m.data == last.as_bytes())
        {
            let message = tokio::time::timeout_at(deadline, self.messages.recv())
                .await
                .with_context(|| {
                    format!(
                        "{last:?} not delivered within {WAIT:?}; got {:?}",
                        data_of(&seen)
                    )
                })?
                .context("the subscriber stopped")?;
            seen.push(message);
        }
        while let Ok(Some(message)) = tokio::time::timeout(QUIET, self.messages.recv()).await {
            seen.push(message);
        }
        Ok(seen)
    }
}

/// The data of `messages` as strings, sorted.
fn data_of(messages: &[IncomingMessage]) -> Vec<String> {
    let mut data: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect();
    data.sort();
    data
}

/// The message whose data is `data`.
fn find<'a>(messages: &'a [IncomingMessage], data: &str) -> anyhow::Result<&'a IncomingMessage> {
    messages
        .iter()
        .find(|m| m.data == data.as_bytes())
        .with_context(|| format!("{data:?} not among {:?}", data_of(messages)))
}

// ---------------------------------------------------------------------------------------------
// A transport wrapper that records publishes and can lose answers
// ---------------------------------------------------------------------------------------------

/// Forwards to the real client, remembering every message it published (by idempotency key,
/// with the id the broker answered). `lose_answers` makes the next calls fail *after* the broker
/// stored the messages, which is what a relay sees when it crashes (or its connection drops)
/// between publishing and marking.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn Transport>,
    published: Mutex<Vec<(String, String)>>,
    lose_answers: AtomicUsize,
}

impl Recording {
    fn new(inner: Arc<dyn Transport>) -> Arc<Intercepted<Self>> {
        Arc::new(Intercepted(Self {
            inner,
            published: Mutex::new(Vec::new()),
            lose_answers: AtomicUsize::new(0),
        }))
    }

    fn published(&self) -> Vec<(String, String)> {
        self.published.lock().clone()
    }
}

#[async_trait::async_trait]
impl Intercept for Recording {
    fn inner(&self) -> &Arc<dyn Transport> {
        &self.inner
    }

    async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<String>, TransportError> {
        let keys: Vec<String> = messages
            .iter()
            .map(|m| m.attributes[IDEMPOTENCY_KEY_ATTRIBUTE].clone())
            .collect();
        let ids = self.inner.publish(topic, messages).await?;
        self.published
            .lock()
            .extend(keys.into_iter().zip(ids.iter().cloned()));
        let lose = self
            .lose_answers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lose {
            return Err(TransportError::Status {
                code: Code::Unavailable,
                message: "the answer was lost (simulated)".to_owned(),
            });
        }
        Ok(ids)
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: a schema per test
// ---------------------------------------------------------------------------------------------

/// A schema of its own ([`PgSchema`]: dropped when the test ends, even by a panic), with the
/// outbox helpers of these tests.
struct Schema(PgSchema);

impl Deref for Schema {
    type Target = PgSchema;

    fn deref(&self) -> &PgSchema {
        &self.0
    }
}

impl Schema {
    async fn create() -> anyhow::Result<Self> {
        Ok(Self(PgSchema::new().await?))
    }

    /// A migrated outbox in this schema.
    async fn outbox(&self) -> anyhow::Result<Outbox> {
        let outbox = Outbox::new();
        outbox.migrate(&self.pool).await?;
        Ok(outbox)
    }

    /// Enqueues one message per item of `data` in one committed transaction; the idempotency
    /// key of each is `key-{data}`.
    async fn enqueue(&self, outbox: &Outbox, data: &[&str]) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        for data in data {
            outbox
                .enqueue_message(&mut tx, TOPIC, message(data), &format!("key-{data}"))
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// `(published, message id)` of the row with key `key-{data}`.
    async fn row(&self, data: &str) -> anyhow::Result<(bool, Option<String>)> {
        let row = sqlx::query(
            "SELECT published_at IS NOT NULL AS published, message_id \
             FROM converge_outbox WHERE idempotency_key = $1",
        )
        .bind(format!("key-{data}"))
        .fetch_one(&self.pool)
        .await
        .with_context(|| format!("no outbox row for {data:?}"))?;
        Ok((row.try_get("published")?, row.try_get("message_id")?))
    }

    async fn count(&self, condition: &str) -> anyhow::Result<i64> {
        let sql = format!("SELECT count(*) FROM converge_outbox WHERE {condition}");
        Ok(sqlx::query_scalar(&sql).fetch_one(&self.pool).await?)
    }

    /// Waits until no row is left unpublished.
    async fn until_all_published(&self) -> anyhow::Result<()> {
        wait_for("every row published", || async {
            Ok(self.count("published_at IS NULL").await? == 0)
        })
        .await
    }
}

fn message(data: &str) -> OutgoingMessage {
    OutgoingMessage {
        data: data.to_owned().into(),
        ..Default::default()
    }
}

/// Polls `condition` until it holds, failing after [`WAIT`].
async fn wait_for<F, Fut>(what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if condition().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A relay running in the background until the returned token is cancelled.
fn spawn_relay(relay: OutboxRelay) -> (CancellationToken, JoinHandle<Result<(), OutboxError>>) {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    (
        shutdown,
        tokio::spawn(async move { relay.run(token).await }),
    )
}

fn message_id(id: &str) -> anyhow::Result<u64> {
    id.parse()
        .with_context(|| format!("message id {id:?} is not a number"))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn committed_rows_are_published_and_rolled_back_rows_never() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let db = Schema::create().await?;
    let outbox = db.outbox().await?;
    let mut received = broker.subscribe();
    let (shutdown, relay) = spawn_relay(OutboxRelay::new(
        outbox.clone(),
        db.pool.clone(),
        broker.transport(),
    ));

    // A business write and its message commit together...
    sqlx::query("CREATE TABLE orders (id bigint PRIMARY KEY, state text NOT NULL)")
        .execute(&db.pool)
        .await?;
    let mut tx = db.pool.begin().await?;
    sqlx::query("INSERT INTO orders VALUES (1, 'paid')")
        .execute(&mut *tx)
        .await?;
    let mut paid = message("order 1 paid");
    paid.attributes.insert("kind".to_owned(), "paid".to_owned());
    paid.ordering_key = "order-1".to_owned();
    assert!(
        outbox
            .enqueue_message(&mut tx, TOPIC, paid, "key-order 1 paid")
            .await?
    );
    tx.commit().await?;
    // ... or roll back together.
    let mut tx = db.pool.begin().await?;
    sqlx::query("INSERT INTO orders VALUES (2, 'paid')")
        .execute(&mut *tx)
        .await?;
    outbox
        .enqueue_message(&mut tx, TOPIC, message("order 2 paid"), "key-order 2 paid")
        .await?;
    tx.rollback().await?;
    // A key already in the outbox adds nothing.
    let mut tx = db.pool.begin().await?;
    assert!(
        !outbox
            .enqueue_message(&mut tx, TOPIC, message("again"), "key-order 1 paid")
            .await?
    );
    tx.commit().await?;
    db.enqueue(&outbox, &["last"]).await?;

    let delivered = received.until("last").await?;
    assert_eq!(data_of(&delivered), ["last", "order 1 paid"]);
    let first = find(&delivered, "order 1 paid")?;
    assert_eq!(first.attributes["kind"], "paid");
    assert_eq!(
        first.attributes[IDEMPOTENCY_KEY_ATTRIBUTE],
        "key-order 1 paid"
    );
    assert_eq!(first.ordering_key, "order-1");

    db.until_all_published().await?;
    let (published, id) = db.row("order 1 paid").await?;
    assert!(published);
    assert_eq!(id.as_deref(), Some(first.message_id.as_str()));
    assert_eq!(
        db.count("true").await?,
        2,
        "the rolled-back row never existed"
    );

    shutdown.cancel();
    relay.await??;
    Ok(())
}

#[tokio::test]
async fn a_row_committed_before_an_older_transaction_waits_for_it() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let db = Schema::create().await?;
    let outbox = db.outbox().await?;
    let relay = OutboxRelay::new(outbox.clone(), db.pool.clone(), broker.transport());

    // tx1 writes first (lower id, lower transaction id) but commits last.
    let mut tx1 = db.pool.begin().await?;
    outbox
        .enqueue_message(&mut tx1, TOPIC, message("first"), "key-first")
        .await?;
    db.enqueue(&outbox, &["second"]).await?;
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM converge_outbox ORDER BY idempotency_key")
            .fetch_all(&db.pool)
            .await?;
    assert_eq!(ids.len(), 1, "tx1's row is not visible yet");

    // A serial cursor would publish "second" now and later skip "first" (its id is lower).
    // The horizon holds "second" back while tx1 is open.
    let report = relay.publish_batch().await?;
    assert_eq!(report.published, 0, "{report:?}");
    assert!(report.waiting_for_horizon, "{report:?}");
    assert_eq!(db.row("second").await?, (false, None));

    tx1.commit().await?;
    let first_id: i64 =
        sqlx::query_scalar("SELECT id FROM converge_outbox WHERE idempotency_key = 'key-first'")
            .fetch_one(&db.pool)
            .await?;
    assert!(first_id < ids[0], "tx1's row has the lower id");

    wait_for("both rows published", || async {
        relay.publish_batch().await?;
        Ok(db.count("published_at IS NULL").await? == 0)
    })
    .await?;
    // Published in transaction order: tx1's row first (message ids grow with publish order).
    let (_, first) = db.row("first").await?;
    let (_, second) = db.row("second").await?;
    let (first, second) = (first.context("first")?, second.context("second")?);
    assert!(
        message_id(&first)? < message_id(&second)?,
        "first published as {first}, second as {second}"
    );
    let delivered = broker.subscribe().until("second").await?;
    assert_eq!(data_of(&delivered), ["first", "second"]);
    Ok(())
}

#[tokio::test]
async fn a_relay_that_dies_between_publish_and_mark_causes_no_duplicate() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let db = Schema::create().await?;
    let outbox = db.outbox().await?;
    let recording = Recording::new(broker.transport());
    let relay = OutboxRelay::new(outbox.clone(), db.pool.clone(), recording.clone());
    db.enqueue(&outbox, &["once"]).await?;

    // The broker stores the message, but the relay never learns it: the row stays unmarked.
    recording.lose_answers.store(1, Ordering::SeqCst);
    wait_for("a publish whose answer is lost", || async {
        let report = relay.publish_batch().await?;
        assert_eq!(report.published, 0, "{report:?}");
        Ok(report.failed == 1)
    })
    .await?;
    assert_eq!(db.row("once").await?, (false, None));
    let first = recording.published();
    assert_eq!(first.len(), 1);

    // A new relay (same table) publishes the row again and marks it.
    let successor = OutboxRelay::new(outbox.clone(), db.pool.clone(), recording.clone());
    let report = successor.publish_batch().await?;
    assert_eq!((report.published, report.failed), (1, 0), "{report:?}");
    let all = recording.published();
    assert_eq!(all.len(), 2, "published twice");
    assert_eq!(
        all[0], all[1],
        "same key, and the broker answered the same id"
    );
    assert_eq!(db.row("once").await?, (true, Some(first[0].1.clone())));

    // Subscribers get it once.
    db.enqueue(&outbox, &["after"]).await?;
    wait_for("the next row published", || async {
        successor.publish_batch().await?;
        Ok(db.row("after").await?.0)
    })
    .await?;
    let delivered = broker.subscribe().until("after").await?;
    assert_eq!(data_of(&delivered), ["after", "once"]);
    Ok(())
}

#[tokio::test]
async fn a_notification_wakes_the_relay() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let db = Schema::create().await?;
    let outbox = db.outbox().await?;
    let mut received = broker.subscribe();
    // Polling (and cleanup, which also starts a round) only once an hour: anything published
    // within the test was found through a notification.
    let config = RelayConfig {
        poll_interval: Duration::from_secs(3600),
        cleanup_interval: Duration::from_secs(3600),
        ..RelayConfig::default()
    };
    db.enqueue(&outbox, &["before start"]).await?;
    let relay =
        OutboxRelay::new(outbox.clone(), db.pool.clone(), broker.transport()).with_config(config);
    let (shutdown, task) = spawn_relay(relay);
    // The first round (at start) publishes the row written before; then the relay sleeps.
    received.until("before start").await?;
    db.until_all_published().await?;

    db.enqueue(&outbox, &["woken"]).await?;
    received.until("woken").await?;
    db.enqueue(&outbox, &["woken again"]).await?;
    received.until("woken again").await?;

    shutdown.cancel();
    task.await??;
    Ok(())
}

#[tokio::test]
async fn of_two_relays_one_publishes_and_the_other_takes_over() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let db = Schema::create().await?;
    let outbox = db.outbox().await?;
    let config = RelayConfig {
        poll_interval: Duration::from_millis(50),
        batch_size: 7,
        ..RelayConfig::default()
    };
    let recorders = [
        Recording::new(broker.transport()),
        Recording::new(broker.transport()),
    ];
    let mut relays: Vec<_> = recorders
        .iter()
        .map(|recording| {
            let transport: Arc<dyn Transport> = recording.clone();
            spawn_relay(
                OutboxRelay::new(outbox.clone(), db.pool.clone(), transport)
                    .with_config(config.clone()),
            )
        })
        .collect();

    // 20 transactions of 10 rows each, committed concurrently while both relays run.
    let writers: Vec<_> = (0..20)
        .map(|t| {
            let pool = db.pool.clone();
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut tx = pool.begin().await?;
                for i in 0..10 {
                    let data = format!("{t}-{i}");
                    outbox
                        .enqueue_message(&mut tx, TOPIC, message(&data), &format!("key-{data}"))
                        .await?;
                }
                tx.commit().await?;
                anyhow::Ok(())
            })
        })
        .collect();
    for writer in writers {
        writer.await??;
    }
    db.until_all_published().await?;

    let counts: Vec<usize> = recorders.iter().map(|r| r.published().len()).collect();
    assert_eq!(
        counts.iter().sum::<usize>(),
        200,
        "each row published once: {counts:?}"
    );
    let leader = counts
        .iter()
        .position(|&n| n == 200)
        .context("no single leader")?;

    // The leader stops; the other takes over.
    let (shutdown, task) = relays.remove(leader);
    shutdown.cancel();
    task.await??;
    db.enqueue(&outbox, &["after takeover"]).await?;
    db.until_all_published().await?;
    let standby = &recorders[1 - leader];
    assert_eq!(standby.published().len(), 1);
    assert_eq!(recorders[leader].published().len(), 200);

    let (shutdown, task) = relays.remove(0);
    shutdown.cancel();
    task.await??;
    Ok(())
}

#[tokio::test]
async fn cleanup_deletes_published_rows_past_retention() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let db = Schema::create().await?;
    let outbox = db.outbox().await?;
    let relay = OutboxRelay::new(outbox.clone(), db.pool.clone(), broker.transport()).with_config(
        RelayConfig {
            retention: Some(Duration::from_secs(3600)),
            ..RelayConfig::default()
        },
    );
    // 2,500 rows published two hours ago (more than one cleanup batch), one published now,
    // one not published yet.
    sqlx::query(
        "INSERT INTO converge_outbox (topic, data, idempotency_key, published_at, message_id)
         SELECT $1, '\\x00', 'old-' || n, now() - interval '2 hours', n::text
         FROM generate_series(1, 2500) AS n",
    )
    .bind(TOPIC)
    .execute(&db.pool)
    .await?;
    db.enqueue(&outbox, &["recent"]).await?;
    wait_for("the recent row published", || async {
        relay.publish_batch().await?;
        Ok(db.row("recent").await?.0)
    })
    .await?;
    let mut tx = db.pool.begin().await?;
    outbox
        .enqueue_message(&mut tx, TOPIC, message("pending"), "key-pending")
        .await?;
    tx.commit().await?;
    sqlx::query(
        "UPDATE converge_outbox SET created_at = now() - interval '3 hours' \
         WHERE idempotency_key = 'key-pending'",
    )
    .execute(&db.pool)
    .await?;

    assert_eq!(relay.cleanup().await?, 2500);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT idempotency_key FROM converge_outbox ORDER BY id")
            .fetch_all(&db.pool)
            .await?;
    assert_eq!(left, ["key-recent", "key-pending"]);
    assert_eq!(relay.cleanup().await?, 0);

    // No retention: nothing is ever deleted.
    sqlx::query("UPDATE converge_outbox SET published_at = now() - interval '400 days'")
        .execute(&db.pool)
        .await?;
    let keep = relay.clone().with_config(RelayConfig {
        retention: None,
        ..RelayConfig::default()
    });
    assert_eq!(keep.cleanup().await?, 0);
    assert_eq!(db.count("true").await?, 2);
    Ok(())
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct OrderPaid {
    order: u64,
    amount_cents: u64,
}

impl Event for OrderPaid {
    const TYPE: &'static str = "com.example.order.paid";

    fn ordering_key(&self) -> Option<String> {
        Some(format!("order-{}", self.order))
    }
}

#[tokio::test]
async fn typed_events_arrive_as_cloudevents_keyed_by_their_row() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let db = Schema::create().await?;
    let outbox = db.outbox().await?.with_source("/orders")?;
    let relay = OutboxRelay::new(outbox.clone(), db.pool.clone(), broker.transport());
    let event = OrderPaid {
        order: 7,
        amount_cents: 1250,
    };
    let mut tx = db.pool.begin().await?;
    let key = outbox.enqueue(&mut tx, TOPIC, &event).await?;
    tx.commit().await?;
    db.enqueue(&outbox, &["end"]).await?;
    wait_for("the event published", || async {
        relay.publish_batch().await?;
        Ok(db.count("published_at IS NULL").await? == 0)
    })
    .await?;

    let mut delivered = broker.subscribe().until("end").await?;
    assert_eq!(delivered.len(), 2);
    delivered.retain(|m| m.data != "end".as_bytes());
    let (context, data) = cloudevents::decode(&delivered[0])?;
    assert_eq!(context.event_type, OrderPaid::TYPE);
    assert_eq!(context.source, "/orders");
    assert_eq!(context.id, key.as_str());
    assert_eq!(
        delivered[0].attributes[IDEMPOTENCY_KEY_ATTRIBUTE],
        key.as_str()
    );
    assert_eq!(delivered[0].ordering_key, "order-7");
    assert_eq!(
        cloudevents::decode_data::<OrderPaid>(&context, &data)?,
        event
    );
    Ok(())
}

#[tokio::test]
async fn migrate_is_idempotent_and_safe_to_run_concurrently() -> anyhow::Result<()> {
    let db = Schema::create().await?;
    let outbox = Outbox::with_table(&format!("{}.events", db.name))?;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let pool = db.pool.clone();
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.migrate(&pool).await })
        })
        .collect();
    for run in runs {
        run.await??;
    }
    outbox.migrate(&db.pool).await?;
    let indexes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND tablename = 'events'",
    )
    .bind(&db.name)
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(indexes, 4, "primary key, unique key, pending, published");
    Ok(())
}

#[tokio::test]
async fn a_relay_without_its_table_stops_with_a_clear_error() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let db = Schema::create().await?;
    let relay = OutboxRelay::new(Outbox::new(), db.pool.clone(), broker.transport());
    let error = relay
        .run(CancellationToken::new())
        .await
        .expect_err("no table");
    assert!(matches!(error, OutboxError::MissingTable(_)), "{error}");
    let error = relay.publish_batch().await.expect_err("no table");
    assert!(matches!(error, OutboxError::MissingTable(_)), "{error}");
    Ok(())
}

#[tokio::test]
async fn sqlite_round_trip() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let db = SqliteDb::new("app.db").await?;
    let pool = db.pool.clone();
    let outbox = Outbox::new();
    outbox.migrate(&pool).await?;
    outbox.migrate(&pool).await?;

    let mut tx = pool.begin().await?;
    for data in ["a", "b"] {
        assert!(
            outbox
                .enqueue_message(&mut tx, TOPIC, message(data), &format!("key-{data}"))
                .await?
        );
    }
    tx.commit().await?;
    let mut tx = pool.begin().await?;
    outbox
        .enqueue_message(&mut tx, TOPIC, message("rolled back"), "key-rolled back")
        .await?;
    tx.rollback().await?;
    let mut tx = pool.begin().await?;
    assert!(
        !outbox
            .enqueue_message(&mut tx, TOPIC, message("dup"), "key-a")
            .await?
    );
    let key = outbox
        .enqueue(
            &mut tx,
            TOPIC,
            &OrderPaid {
                order: 1,
                amount_cents: 5,
            },
        )
        .await?;
    outbox
        .enqueue_message(&mut tx, TOPIC, message("c"), "key-c")
        .await?;
    tx.commit().await?;

    let mut received = broker.subscribe();
    let (shutdown, task) = spawn_relay(
        OutboxRelay::new(outbox.clone(), pool.clone(), broker.transport()).with_config(
            RelayConfig {
                poll_interval: Duration::from_millis(50),
                ..RelayConfig::default()
            },
        ),
    );
    let delivered = received.until("c").await?;
    assert_eq!(delivered.len(), 4, "{:?}", data_of(&delivered));
    let event = delivered
        .iter()
        .find(|m| m.attributes[IDEMPOTENCY_KEY_ATTRIBUTE] == key.as_str())
        .context("the typed event")?;
    let (context, data) = cloudevents::decode(event)?;
    assert_eq!(
        cloudevents::decode_data::<OrderPaid>(&context, &data)?,
        OrderPaid {
            order: 1,
            amount_cents: 5
        }
    );
    for data in ["a", "b", "c"] {
        find(&delivered, data)?;
    }

    wait_for("every row marked", || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM converge_outbox WHERE published_at IS NULL")
                .fetch_one(&pool)
                .await?;
        Ok(pending == 0)
    })
    .await?;
    // Rows of one ordering key (here none) are published in id (= commit) order: message ids
    // grow with publish order. (Rows of different keys are published concurrently.)
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT message_id FROM converge_outbox WHERE ordering_key = '' ORDER BY id",
    )
    .fetch_all(&pool)
    .await?;
    let ids: Vec<u64> = ids
        .iter()
        .map(|id| message_id(id))
        .collect::<Result<_, _>>()?;
    ensure!(ids.windows(2).all(|w| w[0] < w[1]), "ids {ids:?}");
    shutdown.cancel();
    task.await??;

    // Cleanup: rows published more than the retention ago go.
    sqlx::query("UPDATE converge_outbox SET published_at = published_at - 7200000 WHERE id <= 2")
        .execute(&pool)
        .await?;
    let relay =
        OutboxRelay::new(outbox, pool.clone(), broker.transport()).with_config(RelayConfig {
            retention: Some(Duration::from_secs(3600)),
            ..RelayConfig::default()
        });
    assert_eq!(relay.cleanup().await?, 2);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM converge_outbox")
        .fetch_one(&pool)
        .await?;
    assert_eq!(left, 2);
    Ok(())
}

/// The relay only needs a [`Transport`]: on the in-memory backend (for unit tests of
/// applications) it behaves as on the broker, deduplication included.
#[tokio::test]
async fn the_relay_runs_on_the_in_memory_backend() -> anyhow::Result<()> {
    let memory: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    memory
        .ensure_topic(&TopicConfig {
            name: TOPIC.to_owned(),
            labels: HashMap::new(),
        })
        .await?;
    memory
        .ensure_subscription(&SubscriptionConfig::new(SUBSCRIPTION, TOPIC))
        .await?;
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await?;
    let outbox = Outbox::new();
    outbox.migrate(&pool).await?;
    let mut tx = pool.begin().await?;
    for data in ["x", "y"] {
        outbox
            .enqueue_message(&mut tx, TOPIC, message(data), &format!("key-{data}"))
            .await?;
    }
    tx.commit().await?;

    let recording = Recording::new(memory.clone());
    recording.lose_answers.store(1, Ordering::SeqCst);
    let relay = OutboxRelay::new(outbox, pool, recording.clone());
    let lost = relay.publish_batch().await?;
    assert_eq!((lost.published, lost.failed), (0, 2), "{lost:?}");
    let report = relay.publish_batch().await?;
    assert_eq!((report.read, report.published), (2, 2), "{report:?}");
    assert_eq!(relay.publish_batch().await?.read, 0);
    let published = recording.published();
    assert_eq!(published[..2], published[2..], "same keys, same ids");

    let stop = CancellationToken::new();
    let delivered = subscribe(memory, stop.clone()).until("y").await?;
    assert_eq!(data_of(&delivered), ["x", "y"]);
    stop.cancel();
    Ok(())
}
