//! Three `converge serve` nodes on one PostgreSQL schema, under a node crash and a database
//! restart: issue 7's proof (design: `docs/postgres-store.md` §7, "Three-node test").
//!
//! Three real processes share one schema `t_<random>` on the local PostgreSQL and run on the
//! system clock. One publisher per node publishes ~3,000 messages in batches over ~25 s; every
//! message carries a unique `converge-idempotency-key`, an ordering key (one publisher owns each
//! key) and a sequence number within its key. A failed publish is retried, on another node
//! first, with the same keys, until a Publish answers OK: only then does the message count as
//! published. Three subscribers, one per node, long-poll with unary Pull and Acknowledge (a few
//! messages are nacked once on purpose), and log each receive as (message id, ack id, node,
//! received at, lease deadline). A client whose node fails moves to the next node.
//!
//! Mid-run node 2 is killed with SIGKILL and started again 3 s later on the same port and
//! schema; later PostgreSQL itself is restarted (`pg_ctlcluster <version> <cluster> restart`).
//! Once every message answered OK has been received, the receive log is checked:
//!
//! - every message answered OK was received, with the id its Publish returned, and no
//!   idempotency key was stored twice (a retried publish is deduplicated across nodes);
//! - no two receives of one message overlap within a lease: a second receive comes only after
//!   the first lease's deadline or after a nack of it, and never after an ack that was answered
//!   OK before the deadline;
//! - per ordering key, every receive of message `n` comes before any receive of `n + 1` (so the
//!   first receives are in sequence order);
//! - every node served publishes and receives again after the PostgreSQL restart.
//!
//! Duplicates (receives beyond the first) are counted by cause and printed with the summary
//! (`--no-capture` shows it). Because it restarts PostgreSQL, this test must not run at the same
//! time as other PostgreSQL tests: `.config/nextest.toml` puts it in a test group of its own.
//! `CONVERGE_CLUSTER_SKIP_PG_RESTART=1` skips the database restart (printed, never silent) for
//! runs on a shared database.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::pubsub::{self, PubsubMessage};
use common::{Grpc, new_subscription_name, new_topic_name};
use tokio::sync::watch;
use tonic::transport::Endpoint;

/// The database every node shares; each run works in a schema of its own.
const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

const NODES: usize = 3;
/// The node killed mid-run (node 2, counting from 1).
const KILLED_NODE: usize = 1;

/// Messages each publisher publishes: 3 × 1,000 in all.
const MESSAGES_PER_PUBLISHER: usize = 1000;
/// Messages per Publish request.
const BATCH: usize = 10;
/// One batch per publisher every this long: 100 batches take 25 s.
const BATCH_PERIOD: Duration = Duration::from_millis(250);
/// Ordering keys per publisher (24 in all). A Publish carries one ordering key (converge, like
/// Pub/Sub's clients, batches per key), so batch `b` of a publisher goes to its key `b % 8`.
const KEYS_PER_PUBLISHER: usize = 8;
/// Every message whose number is `7 mod 25` is nacked on its first receive (4%), so that the
/// nack path is part of the run and of the overlap check.
const NACK_EVERY: usize = 25;
/// The first receive of every message whose number is `42 mod 150`, among the first
/// [`FORGET_BELOW`] of each publisher, is neither acked nor nacked, as by a consumer that crashed
/// while working on it: its lease must run out (and hold its ordering key meanwhile) before the
/// message comes back, through the expiry on whichever node. 12 messages, all in the first 13 s.
const FORGET_EVERY: usize = 150;
const FORGET_BELOW: usize = 500;
/// How long a subscriber works on what a Pull gave it before it answers: long enough that the
/// kill of a node catches some work in progress, whose acks then go to another node.
const WORK: Duration = Duration::from_millis(30);

/// The subscription's ack deadline: the lease every receive gets.
const ACK_DEADLINE: Duration = Duration::from_secs(10);
/// Largest Pull.
const PULL_MAX: i32 = 50;
/// The deadline of a Pull: the broker answers (empty) shortly before it.
const PULL_TIMEOUT: Duration = Duration::from_secs(5);
/// The deadline of a Publish, Acknowledge or ModifyAckDeadline attempt.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before a client retries a failed call.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// A batch still unpublished after this long fails the test.
const PUBLISH_GIVE_UP: Duration = Duration::from_secs(40);
/// Measured against the clients' monotonic clock while the nodes lease on the system clock;
/// the two do not drift by more than this over a run.
const CLOCK_TOLERANCE: Duration = Duration::from_millis(50);

/// When the node is killed, how long it stays down, and when PostgreSQL restarts, from the
/// start of the load.
const KILL_AT: Duration = Duration::from_secs(7);
const DOWN_FOR: Duration = Duration::from_secs(3);
const PG_RESTART_AT: Duration = Duration::from_secs(16);

/// How long a node may take to answer `/readyz` with 200 after its start or after the database
/// came back.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the subscribers may take, after the last publish, to receive every message: a lost
/// lease holds its ordering key for one ack deadline, so this is several deadlines.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(40);
/// Lines of output kept per node, printed when the test fails.
const LOG_TAIL: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_a_node_kill_and_a_database_restart() {
    let schema = Schema::create();
    let store_url = format!("{DATABASE_URL}?schema={}", schema.name);
    let mut nodes: Vec<Node> = (0..NODES).map(|i| Node::new(i, &store_url)).collect();
    for node in &mut nodes {
        node.spawn();
    }
    for node in &nodes {
        node.wait_ready(READY_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();

    let topic = new_topic_name("cluster");
    let sub = new_subscription_name("work");
    let admin = grpc_clients(&ports);
    admin[0].create_topic(&topic).await;
    admin[0]
        .create_subscription(pubsub::Subscription {
            ack_deadline_seconds: ACK_DEADLINE.as_secs() as i32,
            enable_message_ordering: true,
            ..common::subscription(&sub, &topic)
        })
        .await;

    let run = Arc::new(Run::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let publishers: Vec<_> = (0..NODES)
        .map(|p| {
            let (run, topic, clients) = (run.clone(), topic.clone(), grpc_clients(&ports));
            tokio::spawn(async move { publish(&run, &clients, p, &topic).await })
        })
        .collect();
    let subscribers: Vec<_> = (0..NODES)
        .map(|s| {
            let (run, sub, clients) = (run.clone(), sub.clone(), grpc_clients(&ports));
            let stop = stop_rx.clone();
            tokio::spawn(async move { subscribe(&run, &clients, s, &sub, stop).await })
        })
        .collect();

    // The faults, on a schedule from the start of the load.
    tokio::time::sleep_until((run.t0 + KILL_AT).into()).await;
    nodes[KILLED_NODE].kill9();
    run.event(format!("node {} killed with SIGKILL", KILLED_NODE + 1));
    tokio::time::sleep(DOWN_FOR).await;
    nodes[KILLED_NODE].spawn();
    let took = nodes[KILLED_NODE]
        .wait_ready(READY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    run.event(format!(
        "node {} restarted on port {}, ready after {took:?}",
        KILLED_NODE + 1,
        nodes[KILLED_NODE].port
    ));

    tokio::time::sleep_until((run.t0 + PG_RESTART_AT).into()).await;
    let pg_restart = match restart_postgres().await {
        Ok(took) => {
            let back = Instant::now();
            run.mark_pg_restarted(back);
            run.event(format!("PostgreSQL restarted in {took:?}"));
            for node in &mut nodes {
                let ready = node
                    .wait_ready(READY_TIMEOUT)
                    .await
                    .unwrap_or_else(|e| panic!("after the PostgreSQL restart: {e}"));
                run.event(format!(
                    "node {} ready again {ready:?} after PostgreSQL came back",
                    node.index + 1
                ));
            }
            Some(took)
        }
        Err(reason) => {
            println!("cluster test: PostgreSQL restart SKIPPED: {reason}");
            run.event(format!("PostgreSQL restart skipped: {reason}"));
            None
        }
    };

    for publisher in publishers {
        publisher.await.expect("a publisher panicked");
    }
    let published_at = Instant::now();
    run.event("every publisher is done".to_owned());

    // Drain: wait until every message answered OK has been received at least once.
    let drained = loop {
        let missing = run.missing();
        if missing.is_empty() {
            break true;
        }
        if published_at.elapsed() > DRAIN_TIMEOUT {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop_tx
        .send(true)
        .expect("the subscribers hold the receiver");
    for subscriber in subscribers {
        subscriber.await.expect("a subscriber panicked");
    }
    let duration = run.t0.elapsed();
    for node in &mut nodes {
        assert!(
            node.is_running(),
            "node {} exited during the run",
            node.index + 1
        );
        node.kill9();
    }

    let report = Report::analyse(&run, drained, pg_restart.is_some());
    report.print(&run, duration, pg_restart);
    report.assert_ok(&run, &schema.name);
}

// ---------------------------------------------------------------------------------------------
// What the clients record.

/// A message whose Publish was answered OK.
#[derive(Debug, Clone)]
struct Published {
    /// The message id the Publish answered.
    id: String,
    ordering_key: String,
    seq: usize,
    /// The message's number within its publisher, for the nack rule.
    number: usize,
}

/// One message handed to a subscriber: one lease.
#[derive(Debug, Clone)]
struct Receive {
    message_id: String,
    ack_id: String,
    idempotency_key: String,
    ordering_key: String,
    seq: usize,
    /// The node (index) that answered the Pull.
    node: usize,
    /// The subscriber (index).
    subscriber: usize,
    /// When the Pull was sent: the lease starts no earlier, so it ends no earlier than this
    /// plus the ack deadline.
    pull_sent: Instant,
    /// When the answer arrived.
    received: Instant,
    /// `received + ACK_DEADLINE`, as logged.
    lease_deadline: Instant,
    nack_sent: Option<Instant>,
    ack_sent: Option<Instant>,
    /// When an Acknowledge of this ack id was answered OK, if one was.
    ack_ok: Option<Instant>,
    /// Left unanswered on purpose ([`FORGET_EVERY`]).
    forgotten: bool,
}

/// Everything the run's clients share.
struct Run {
    t0: Instant,
    /// Idempotency key -> the message, once its Publish answered OK.
    published: Mutex<HashMap<String, Published>>,
    receives: Mutex<Vec<Receive>>,
    /// Message ids received so far (any subscriber).
    seen: Mutex<HashSet<String>>,
    counters: Mutex<Counters>,
    events: Mutex<Vec<(Duration, String)>>,
    pg_restarted: Mutex<Option<Instant>>,
}

#[derive(Debug, Default)]
struct Counters {
    publish_requests_ok: usize,
    /// Failed publish attempts by gRPC code.
    publish_errors: BTreeMap<String, usize>,
    /// Batches that needed more than one attempt.
    publish_retried_batches: usize,
    pull_errors: BTreeMap<String, usize>,
    ack_errors: BTreeMap<String, usize>,
    /// Failed calls of any kind per second of the run: when the faults hit.
    errors_per_second: BTreeMap<u64, usize>,
    /// Acknowledge calls that never got an OK before the lease ended.
    acks_given_up: usize,
    nacks: usize,
    /// Receives left unanswered on purpose.
    forgotten: usize,
    /// Publishes and receives answered per node after PostgreSQL came back.
    publishes_after_pg: [usize; NODES],
    receives_after_pg: [usize; NODES],
    receives_per_node: [usize; NODES],
}

impl Run {
    fn new() -> Self {
        Self {
            t0: Instant::now(),
            published: Mutex::default(),
            receives: Mutex::default(),
            seen: Mutex::default(),
            counters: Mutex::default(),
            events: Mutex::default(),
            pg_restarted: Mutex::default(),
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a failed call by kind and code, and when it happened.
    fn error(&self, kind: Kind, status: &tonic::Status) {
        let second = self.t0.elapsed().as_secs();
        let mut counters = self.counters();
        let map = match kind {
            Kind::Publish => &mut counters.publish_errors,
            Kind::Pull => &mut counters.pull_errors,
            Kind::Ack => &mut counters.ack_errors,
        };
        *map.entry(code_name(status)).or_default() += 1;
        *counters.errors_per_second.entry(second).or_default() += 1;
    }

    fn event(&self, what: String) {
        let at = self.t0.elapsed();
        println!("cluster test: {:>6.2}s {what}", at.as_secs_f64());
        self.events.lock().unwrap().push((at, what));
    }

    fn mark_pg_restarted(&self, at: Instant) {
        *self.pg_restarted.lock().unwrap() = Some(at);
    }

    fn after_pg_restart(&self, at: Instant) -> bool {
        self.pg_restarted.lock().unwrap().is_some_and(|t| at >= t)
    }

    /// Idempotency keys published OK but not received yet, and of messages left to expire on
    /// purpose that have not come back yet.
    fn missing(&self) -> Vec<String> {
        let published = self.published.lock().unwrap();
        let receives = self.receives.lock().unwrap();
        let received: HashSet<&str> = receives
            .iter()
            .map(|r| r.idempotency_key.as_str())
            .collect();
        let mut forgotten: HashSet<&str> = HashSet::new();
        for r in receives.iter() {
            if r.forgotten {
                forgotten.insert(&r.idempotency_key);
            } else {
                forgotten.remove(r.idempotency_key.as_str());
            }
        }
        published
            .keys()
            .filter(|k| !received.contains(k.as_str()))
            .map(String::as_str)
            .chain(forgotten)
            .map(str::to_owned)
            .collect()
    }
}

/// What kind of call failed.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Publish,
    Pull,
    /// Acknowledge or ModifyAckDeadline.
    Ack,
}

fn code_name(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

// ---------------------------------------------------------------------------------------------
// Publishers and subscribers.

/// One gRPC client per node, over lazily connected channels: a node that is down fails calls
/// until it is back, and the channel reconnects by itself.
fn grpc_clients(ports: &[u16]) -> Vec<Grpc> {
    ports
        .iter()
        .map(|port| {
            let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .expect("a valid URI")
                .connect_timeout(Duration::from_secs(2))
                .connect_lazy();
            Grpc::new(channel)
        })
        .collect()
}

/// The idempotency key of message `number` of publisher `p`.
fn idempotency_key(p: usize, number: usize) -> String {
    format!("cluster-p{p}-m{number}")
}

/// Publisher `p`: batches of [`BATCH`] messages every [`BATCH_PERIOD`] through its own node;
/// a failed batch is sent again, unchanged (same idempotency keys), to the next node, then the
/// one after, until one answers OK.
async fn publish(run: &Run, clients: &[Grpc], p: usize, topic: &str) {
    let batches = MESSAGES_PER_PUBLISHER / BATCH;
    for b in 0..batches {
        tokio::time::sleep_until((run.t0 + BATCH_PERIOD * b as u32).into()).await;
        let numbers: Vec<usize> = (b * BATCH..(b + 1) * BATCH).collect();
        let key = format!("p{p}-k{}", b % KEYS_PER_PUBLISHER);
        let messages: Vec<PubsubMessage> = numbers
            .iter()
            .map(|&n| {
                let seq = sequence(n);
                PubsubMessage {
                    data: format!("p{p} m{n}").into_bytes(),
                    attributes: [
                        (
                            converge_core::message::IDEMPOTENCY_KEY_ATTRIBUTE.to_owned(),
                            idempotency_key(p, n),
                        ),
                        ("seq".to_owned(), seq.to_string()),
                        ("number".to_owned(), n.to_string()),
                    ]
                    .into(),
                    ordering_key: key.clone(),
                    ..Default::default()
                }
            })
            .collect();
        let first_try = Instant::now();
        let mut attempt = 0;
        let ids = loop {
            let node = (p + attempt) % NODES;
            let mut request = tonic::Request::new(pubsub::PublishRequest {
                topic: topic.to_owned(),
                messages: messages.clone(),
            });
            request.set_timeout(CALL_TIMEOUT);
            match clients[node].publisher.clone().publish(request).await {
                Ok(response) => {
                    let mut counters = run.counters();
                    counters.publish_requests_ok += 1;
                    if attempt > 0 {
                        counters.publish_retried_batches += 1;
                    }
                    if run.after_pg_restart(first_try) {
                        counters.publishes_after_pg[node] += 1;
                    }
                    break response.into_inner().message_ids;
                }
                Err(status) => {
                    run.error(Kind::Publish, &status);
                    assert!(
                        retryable(&status),
                        "publisher {p}: batch {b} refused: {status:?}"
                    );
                    assert!(
                        first_try.elapsed() < PUBLISH_GIVE_UP,
                        "publisher {p}: batch {b} still failing after {PUBLISH_GIVE_UP:?}: \
                         {status:?}"
                    );
                    attempt += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        };
        assert_eq!(ids.len(), BATCH, "one message id per message");
        let mut published = run.published.lock().unwrap();
        for ((n, message), id) in numbers.iter().zip(&messages).zip(ids) {
            published.insert(
                idempotency_key(p, *n),
                Published {
                    id,
                    ordering_key: message.ordering_key.clone(),
                    seq: sequence(*n),
                    number: *n,
                },
            );
        }
    }
}

/// The sequence number of message `n` of a publisher within its ordering key: batch `b` goes to
/// key `b % KEYS_PER_PUBLISHER`, so the key's batches are `b / KEYS_PER_PUBLISHER` = 0, 1, ...
fn sequence(n: usize) -> usize {
    let batch = n / BATCH;
    (batch / KEYS_PER_PUBLISHER) * BATCH + n % BATCH
}

/// Whether a failed call may succeed if sent again: the node or the database is away, or the
/// call ran out of time. Anything else (a refused request) fails the test at once.
fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Internal
    )
}

/// Subscriber `s`: long-polls its own node; on an error it moves to the next node, and after a
/// successful Pull elsewhere it tries its own node again. Each message is acknowledged at once,
/// except the first receive of every [`NACK_EVERY`]th message, which is nacked.
async fn subscribe(
    run: &Run,
    clients: &[Grpc],
    s: usize,
    sub: &str,
    mut stop: watch::Receiver<bool>,
) {
    let mut node = s;
    loop {
        #[allow(deprecated)] // `return_immediately` is deprecated upstream but still honoured.
        let mut request = tonic::Request::new(pubsub::PullRequest {
            subscription: sub.to_owned(),
            return_immediately: false,
            max_messages: PULL_MAX,
        });
        request.set_timeout(PULL_TIMEOUT);
        let pull_sent = Instant::now();
        let mut client = clients[node].subscriber.clone();
        let answer = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            answer = client.pull(request) => answer,
        };
        let received_messages = match answer {
            Ok(response) => response.into_inner().received_messages,
            Err(status) => {
                run.error(Kind::Pull, &status);
                assert!(
                    retryable(&status),
                    "subscriber {s}: Pull refused by node {}: {status:?}",
                    node + 1
                );
                node = (node + 1) % NODES;
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let received = Instant::now();
        let pulled_from = node;
        node = s;
        if received_messages.is_empty() {
            continue;
        }

        // Log every receive, and decide what to nack.
        let mut to_ack = Vec::new();
        let mut to_nack = Vec::new();
        let mut forgotten = Vec::new();
        let (first_index, end_index);
        {
            let mut receives = run.receives.lock().unwrap();
            let mut seen = run.seen.lock().unwrap();
            first_index = receives.len();
            for r in received_messages {
                let message = r.message.expect("a received message has a message");
                let attr =
                    |name: &str| {
                        message.attributes.get(name).cloned().unwrap_or_else(|| {
                            panic!("message {} has no {name}", message.message_id)
                        })
                    };
                let number: usize = attr("number").parse().expect("a number");
                let first = seen.insert(message.message_id.clone());
                if first && number % NACK_EVERY == 7 {
                    to_nack.push(r.ack_id.clone());
                } else if first && number % FORGET_EVERY == 42 && number < FORGET_BELOW {
                    forgotten.push(r.ack_id.clone());
                } else {
                    to_ack.push(r.ack_id.clone());
                }
                receives.push(Receive {
                    idempotency_key: attr(converge_core::message::IDEMPOTENCY_KEY_ATTRIBUTE),
                    seq: attr("seq").parse().expect("a sequence number"),
                    ordering_key: message.ordering_key.clone(),
                    message_id: message.message_id,
                    ack_id: r.ack_id,
                    node: pulled_from,
                    subscriber: s,
                    pull_sent,
                    received,
                    lease_deadline: received + ACK_DEADLINE,
                    nack_sent: None,
                    ack_sent: None,
                    ack_ok: None,
                    forgotten: false,
                });
            }
            end_index = receives.len();
            let mut counters = run.counters();
            counters.receives_per_node[pulled_from] += receives.len() - first_index;
            if run.after_pg_restart(pull_sent) {
                counters.receives_after_pg[pulled_from] += receives.len() - first_index;
            }
        }

        tokio::time::sleep(WORK).await;
        // A lease is worth answering only until it ends.
        let lease_end = pull_sent + ACK_DEADLINE;
        let nack = settle(run, clients, pulled_from, sub, &to_nack, 0, lease_end).await;
        let ack = settle(run, clients, pulled_from, sub, &to_ack, -1, lease_end).await;
        let mut receives = run.receives.lock().unwrap();
        // Other subscribers may have logged receives after ours meanwhile.
        for r in &mut receives[first_index..end_index] {
            if to_nack.contains(&r.ack_id) {
                r.nack_sent = nack.0;
            } else if forgotten.contains(&r.ack_id) {
                r.forgotten = true;
            } else {
                r.ack_sent = ack.0;
                r.ack_ok = ack.1;
            }
        }
        let mut counters = run.counters();
        counters.nacks += to_nack.len();
        counters.forgotten += forgotten.len();
        if !to_ack.is_empty() && ack.1.is_none() {
            counters.acks_given_up += 1;
        }
    }
}

/// Acknowledges `ack_ids` (`deadline < 0`) or sets their ack deadline to `deadline` seconds
/// (0 nacks), on `node` first and then on the others, until one answers OK or `until` passes.
/// Returns when the first attempt was sent and when an attempt was answered OK.
async fn settle(
    run: &Run,
    clients: &[Grpc],
    node: usize,
    sub: &str,
    ack_ids: &[String],
    deadline: i32,
    until: Instant,
) -> (Option<Instant>, Option<Instant>) {
    if ack_ids.is_empty() {
        return (None, None);
    }
    let sent = Instant::now();
    let mut attempt = 0;
    while Instant::now() < until {
        let target = (node + attempt) % NODES;
        let timeout = CALL_TIMEOUT.min(until.saturating_duration_since(Instant::now()));
        let mut client = clients[target].subscriber.clone();
        let answer = if deadline < 0 {
            let mut request = tonic::Request::new(pubsub::AcknowledgeRequest {
                subscription: sub.to_owned(),
                ack_ids: ack_ids.to_vec(),
            });
            request.set_timeout(timeout);
            client.acknowledge(request).await.map(|_| ())
        } else {
            let mut request = tonic::Request::new(pubsub::ModifyAckDeadlineRequest {
                subscription: sub.to_owned(),
                ack_ids: ack_ids.to_vec(),
                ack_deadline_seconds: deadline,
            });
            request.set_timeout(timeout);
            client.modify_ack_deadline(request).await.map(|_| ())
        };
        match answer {
            Ok(()) => return (Some(sent), Some(Instant::now())),
            Err(status) => {
                run.error(Kind::Ack, &status);
                assert!(
                    retryable(&status),
                    "Acknowledge/ModifyAckDeadline refused by node {}: {status:?}",
                    target + 1
                );
                attempt += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    (Some(sent), None)
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// Why a message was received again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cause {
    /// The previous receive was nacked.
    Nack,
    /// The previous lease ended without an ack answered OK (its node died, the database
    /// restarted, or the Acknowledge never got through).
    LeaseExpiredUnacked,
    /// The previous receive was left unanswered on purpose and its lease ended.
    LeaseExpiredForgotten,
    /// The previous lease ended before its ack was answered OK (a late ack is not applied).
    LeaseExpiredLateAck,
}

#[derive(Debug, Default)]
struct Report {
    drained: bool,
    published: usize,
    distinct_received: usize,
    receives: usize,
    duplicates: BTreeMap<Cause, usize>,
    max_redeliveries: usize,
    /// Messages answered OK and never received.
    lost: Vec<String>,
    /// Received messages whose id is not the one their Publish answered, or that no Publish
    /// answered at all.
    wrong_ids: Vec<String>,
    /// Idempotency keys received under two message ids: a retried publish stored twice.
    stored_twice: Vec<String>,
    overlaps: Vec<String>,
    /// Messages whose lease was left to expire and that never came back.
    never_redelivered: Vec<String>,
    redelivered_after_ack: Vec<String>,
    order_violations: Vec<String>,
    /// Nodes that served no publish or no receive after PostgreSQL came back.
    idle_after_pg: Vec<String>,
}

impl Report {
    fn analyse(run: &Run, drained: bool, pg_restarted: bool) -> Self {
        let published = run.published.lock().unwrap();
        let receives = run.receives.lock().unwrap();
        let t = |at: Instant| at.duration_since(run.t0).as_secs_f64();
        let mut report = Report {
            drained,
            published: published.len(),
            receives: receives.len(),
            ..Report::default()
        };

        // Each message's receives, in the order they arrived.
        let mut by_message: HashMap<&str, Vec<&Receive>> = HashMap::new();
        let mut ids_by_key: HashMap<&str, HashSet<&str>> = HashMap::new();
        for r in receives.iter() {
            by_message.entry(&r.message_id).or_default().push(r);
            ids_by_key
                .entry(&r.idempotency_key)
                .or_default()
                .insert(&r.message_id);
        }
        report.distinct_received = by_message.len();
        for (key, ids) in &ids_by_key {
            if ids.len() > 1 {
                report
                    .stored_twice
                    .push(format!("{key} received as ids {ids:?}"));
            }
            match published.get(*key) {
                Some(p) if ids.contains(p.id.as_str()) && ids.len() == 1 => {}
                Some(p) => report
                    .wrong_ids
                    .push(format!("{key}: published as {}, received as {ids:?}", p.id)),
                None => report
                    .wrong_ids
                    .push(format!("{key}: received as {ids:?}, never answered OK")),
            }
        }
        for (key, p) in published.iter() {
            if !ids_by_key.contains_key(key.as_str()) {
                report.lost.push(format!("{key} (id {})", p.id));
            }
        }

        // Leases: a receive after the first must follow the previous lease's end or its nack.
        for list in by_message.values_mut() {
            list.sort_by_key(|r| r.received);
            if let Some(r) = list.last().filter(|r| r.forgotten) {
                report.never_redelivered.push(format!(
                    "message {} ({}) left unanswered at {:.3}s, never delivered again",
                    r.message_id,
                    r.idempotency_key,
                    t(r.received)
                ));
            }
            report.max_redeliveries = report.max_redeliveries.max(list.len() - 1);
            for pair in list.windows(2) {
                let (prev, next) = (pair[0], pair[1]);
                let prev_lease_end = prev.pull_sent + ACK_DEADLINE;
                let describe = || {
                    format!(
                        "message {} ({}): received at {:.3}s from node {} (pull sent {:.3}s, \
                         ack id {}, nack {:?}, ack sent {:?}, ack OK {:?}), again at {:.3}s from \
                         node {} by subscriber {} (ack id {})",
                        prev.message_id,
                        prev.idempotency_key,
                        t(prev.received),
                        prev.node + 1,
                        t(prev.pull_sent),
                        prev.ack_id,
                        prev.nack_sent.map(t),
                        prev.ack_sent.map(t),
                        prev.ack_ok.map(t),
                        t(next.received),
                        next.node + 1,
                        next.subscriber + 1,
                        next.ack_id,
                    )
                };
                let cause = if prev.nack_sent.is_some_and(|n| next.received >= n) {
                    Cause::Nack
                } else if next.received + CLOCK_TOLERANCE >= prev_lease_end {
                    match prev.ack_ok {
                        None if prev.forgotten => Cause::LeaseExpiredForgotten,
                        None => Cause::LeaseExpiredUnacked,
                        // The ack was answered, so applied, before the lease ended: the
                        // message was done and must not come back.
                        Some(ok) if ok + CLOCK_TOLERANCE < prev_lease_end => {
                            report.redelivered_after_ack.push(describe());
                            continue;
                        }
                        Some(_) => Cause::LeaseExpiredLateAck,
                    }
                } else {
                    report.overlaps.push(describe());
                    continue;
                };
                *report.duplicates.entry(cause).or_default() += 1;
            }
        }

        // Ordering: per key, every receive of seq n before any receive of seq n + 1.
        let mut by_key: HashMap<&str, BTreeMap<usize, Vec<&Receive>>> = HashMap::new();
        for r in receives.iter() {
            by_key
                .entry(&r.ordering_key)
                .or_default()
                .entry(r.seq)
                .or_default()
                .push(r);
        }
        for (key, seqs) in &by_key {
            let mut last: Option<(usize, Instant)> = None;
            for (seq, list) in seqs {
                let first = list.iter().map(|r| r.received).min().expect("not empty");
                let latest = list.iter().map(|r| r.received).max().expect("not empty");
                // A gap (a lost message) is reported as lost; order is judged around it.
                if let Some((prev_seq, prev_latest)) = last
                    && first <= prev_latest
                {
                    report.order_violations.push(format!(
                        "key {key}: seq {seq} first received at {:.3}s, but seq {prev_seq} \
                         was received at {:.3}s",
                        t(first),
                        t(prev_latest)
                    ));
                }
                last = Some((*seq, latest));
            }
        }
        // The ids a publisher got for one key grow with the sequence (publish order).
        let mut ids: HashMap<&str, Vec<(usize, u128)>> = HashMap::new();
        for p in published.values() {
            if let Ok(id) = p.id.parse::<u128>() {
                ids.entry(&p.ordering_key).or_default().push((p.seq, id));
            }
        }
        for (key, list) in &mut ids {
            list.sort();
            if list.windows(2).any(|w| w[0].1 >= w[1].1) {
                report.order_violations.push(format!(
                    "key {key}: message ids do not grow with the sequence: {list:?}"
                ));
            }
        }

        if pg_restarted {
            let counters = run.counters();
            for node in 0..NODES {
                if counters.publishes_after_pg[node] == 0 {
                    report.idle_after_pg.push(format!(
                        "node {} answered no publish after PostgreSQL came back",
                        node + 1
                    ));
                }
                if counters.receives_after_pg[node] == 0 {
                    report.idle_after_pg.push(format!(
                        "node {} delivered nothing after PostgreSQL came back",
                        node + 1
                    ));
                }
            }
        }
        // Only the published numbers decide the nack rule; keep it visible.
        debug_assert!(
            published
                .values()
                .all(|p| p.number < MESSAGES_PER_PUBLISHER)
        );
        report
    }

    fn print(&self, run: &Run, duration: Duration, pg_restart: Option<Duration>) {
        let counters = run.counters();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cluster test summary ({NODES} nodes, one PostgreSQL schema)"
        );
        let _ = writeln!(
            out,
            "  published (answered OK): {} messages in {} requests; {} batches retried; \
             failed attempts {:?}",
            self.published,
            counters.publish_requests_ok,
            counters.publish_retried_batches,
            counters.publish_errors
        );
        let _ = writeln!(
            out,
            "  received: {} distinct, {} receives; per node {:?}; nacked {}, left to expire {}",
            self.distinct_received,
            self.receives,
            counters.receives_per_node,
            counters.nacks,
            counters.forgotten
        );
        let total: usize = self.duplicates.values().sum();
        let _ = writeln!(
            out,
            "  duplicates (receives beyond the first): {total}, by cause {:?}; max redeliveries \
             of one message {}",
            self.duplicates, self.max_redeliveries
        );
        let _ = writeln!(
            out,
            "  errors seen by clients: pull {:?}, ack/nack {:?}; ack calls given up {}",
            counters.pull_errors, counters.ack_errors, counters.acks_given_up
        );
        let per_second: Vec<String> = counters
            .errors_per_second
            .iter()
            .map(|(second, n)| format!("{second}s:{n}"))
            .collect();
        let _ = writeln!(
            out,
            "  failed calls per second of the run: {}",
            per_second.join(" ")
        );
        let _ = writeln!(
            out,
            "  after PostgreSQL came back: publishes per node {:?}, receives per node {:?}",
            counters.publishes_after_pg, counters.receives_after_pg
        );
        let _ = writeln!(
            out,
            "  PostgreSQL restart: {}",
            pg_restart.map_or("skipped".to_owned(), |d| format!("{d:?}"))
        );
        let _ = writeln!(out, "  duration: {duration:?}");
        for (at, what) in run.events.lock().unwrap().iter() {
            let _ = writeln!(out, "    {:>6.2}s {what}", at.as_secs_f64());
        }
        println!("{out}");
    }

    fn assert_ok(&self, run: &Run, schema: &str) {
        let mut failures = String::new();
        let mut section = |name: &str, items: &[String]| {
            if !items.is_empty() {
                let _ = writeln!(failures, "{name}: {} (first 10)", items.len());
                for item in items.iter().take(10) {
                    let _ = writeln!(failures, "  {item}");
                }
            }
        };
        section("messages answered OK but never received", &self.lost);
        section("messages received with another id", &self.wrong_ids);
        section("idempotency keys stored twice", &self.stored_twice);
        section("receives overlapping an earlier lease", &self.overlaps);
        section(
            "messages left to expire and never redelivered",
            &self.never_redelivered,
        );
        section(
            "messages redelivered after an ack answered OK within the lease",
            &self.redelivered_after_ack,
        );
        section("ordering violations", &self.order_violations);
        section(
            "nodes idle after the PostgreSQL restart",
            &self.idle_after_pg,
        );
        if !self.drained {
            let _ = writeln!(
                failures,
                "the subscribers did not receive every message within {DRAIN_TIMEOUT:?} of the \
                 last publish"
            );
        }
        if self.published != NODES * MESSAGES_PER_PUBLISHER {
            let _ = writeln!(
                failures,
                "{} messages answered OK, expected {}",
                self.published,
                NODES * MESSAGES_PER_PUBLISHER
            );
        }
        if failures.is_empty() {
            return;
        }
        let log = std::env::temp_dir().join(format!("converge-cluster-{schema}.log"));
        let mut text = String::new();
        for r in run.receives.lock().unwrap().iter() {
            let t = |at: Instant| at.duration_since(run.t0).as_secs_f64();
            let _ = writeln!(
                text,
                "{} {} key={} ok={} seq={} node={} sub={} pull_sent={:.3} received={:.3} \
                 lease_deadline={:.3} nack={:?} ack_sent={:?} ack_ok={:?} forgotten={}",
                r.message_id,
                r.ack_id,
                r.idempotency_key,
                r.ordering_key,
                r.seq,
                r.node + 1,
                r.subscriber + 1,
                t(r.pull_sent),
                t(r.received),
                t(r.lease_deadline),
                r.nack_sent.map(t),
                r.ack_sent.map(t),
                r.ack_ok.map(t),
                r.forgotten,
            );
        }
        let saved = std::fs::write(&log, text).map_or_else(
            |e| format!("(could not write the receive log: {e})"),
            |()| format!("receive log: {}", log.display()),
        );
        panic!("the three-node run broke a promise:\n{failures}{saved}");
    }
}

// ---------------------------------------------------------------------------------------------
// Processes: the nodes, PostgreSQL, the schema.

/// A `converge serve --store postgres://...` process on a fixed port, so that it comes back on
/// the same address after a kill. Killed when dropped; its output is printed if the test fails.
struct Node {
    index: usize,
    port: u16,
    store_url: String,
    child: Option<Child>,
    output: Arc<Mutex<VecDeque<String>>>,
    readers: Vec<JoinHandle<()>>,
    http: reqwest::Client,
}

impl Node {
    fn new(index: usize, store_url: &str) -> Self {
        // A free port now; the node binds it with SO_REUSEADDR, so it can bind it again after
        // a kill.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("no free port")
            .port();
        Self {
            index,
            port,
            store_url: store_url.to_owned(),
            child: None,
            output: Arc::default(),
            readers: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("an HTTP client"),
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} already runs", self.index + 1);
        let mut command = Command::new(env!("CARGO_BIN_EXE_converge"));
        command
            .args(["serve", "--log-format", "json", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--store")
            .arg(&self.store_url)
            .current_dir(std::env::temp_dir());
        for var in [
            "RUST_LOG",
            "CONVERGE_LISTEN",
            "CONVERGE_DATA_DIR",
            "CONVERGE_STORE_URL",
            "CONVERGE_ENDPOINT",
        ] {
            command.env_remove(var);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let prefix = format!("[node {}]", self.index + 1);
        for stream in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let (output, prefix) = (self.output.clone(), prefix.clone());
            self.readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut output = output.lock().unwrap_or_else(PoisonError::into_inner);
                    if output.len() == LOG_TAIL {
                        output.pop_front();
                    }
                    output.push_back(format!("{prefix} {line}"));
                }
            }));
        }
        self.child = Some(child);
    }

    /// Waits until `/readyz` answers 200; returns how long that took.
    async fn wait_ready(&self, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let mut last = String::from("no answer yet");
        while started.elapsed() < timeout {
            match self.http.get(&url).send().await {
                Ok(response) if response.status().is_success() => return Ok(started.elapsed()),
                Ok(response) => {
                    last = format!(
                        "{}: {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    );
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "node {} on port {} was not ready within {timeout:?} (last: {last})\n{}",
            self.index + 1,
            self.port,
            self.tail()
        ))
    }

    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error means it already exited, which is as good as killed.
            let _ = child.kill();
            let _ = child.wait();
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    fn tail(&self) -> String {
        let output = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        let mut text = format!(
            "--- node {} output (last {LOG_TAIL} lines) ---\n",
            self.index + 1
        );
        for line in output.iter() {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", self.tail());
        }
    }
}

/// The run's schema `t_<random>`: the nodes create it (their migrations) and it is dropped when
/// this guard is, after the nodes (declared first, dropped last), on success and on failure.
struct Schema {
    name: String,
}

impl Schema {
    fn create() -> Self {
        Self {
            name: format!("t_{:032x}", rand::random::<u128>()),
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!(
            "SET lock_timeout = '20s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.name
        );
        match psql(&sql) {
            Ok(_) => {}
            Err(e) => eprintln!("cluster test: could not drop schema {}: {e}", self.name),
        }
    }
}

/// Runs `sql` with `psql` against the test database.
fn psql(sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-v",
            "ON_ERROR_STOP=1",
            "-qAt",
            "-c",
            sql,
        ])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "psql failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Restarts the local PostgreSQL cluster that serves port 5432 (`pg_ctlcluster VERSION NAME
/// restart`, found with `pg_lsclusters`); returns how long the restart took, or why it could
/// not be done.
async fn restart_postgres() -> Result<Duration, String> {
    if std::env::var_os("CONVERGE_CLUSTER_SKIP_PG_RESTART").is_some_and(|v| v != "0") {
        return Err("CONVERGE_CLUSTER_SKIP_PG_RESTART is set".to_owned());
    }
    tokio::task::spawn_blocking(|| {
        let list = Command::new("pg_lsclusters")
            .arg("--no-header")
            .output()
            .map_err(|e| format!("pg_lsclusters is not available: {e}"))?;
        let list = String::from_utf8_lossy(&list.stdout);
        let (version, cluster) = list
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.len() >= 4 && cols[2] == "5432" && cols[3] == "online")
            .map(|cols| (cols[0].to_owned(), cols[1].to_owned()))
            .ok_or_else(|| format!("no online cluster on port 5432 in pg_lsclusters: {list:?}"))?;
        let started = Instant::now();
        let output = Command::new("pg_ctlcluster")
            .args([version.as_str(), cluster.as_str(), "restart"])
            .output()
            .map_err(|e| format!("cannot run pg_ctlcluster: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "pg_ctlcluster {version} {cluster} restart failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(started.elapsed())
    })
    .await
    .expect("the restart thread panicked")
}
