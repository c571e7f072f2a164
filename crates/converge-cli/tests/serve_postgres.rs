//! `converge serve --store postgres://...`: the broker as a process on the PostgreSQL store.
//!
//! Every test runs real `converge serve` processes against the local PostgreSQL
//! (`127.0.0.1:5432`, database `test`, user `postgres`), each test in a schema of its own
//! (`t_<random>`) that is dropped when the test ends, failed or not. What is checked:
//!
//! - state lives in PostgreSQL, not in the process: after `kill -9`, a new process on the same
//!   schema has the topic and the subscription, redelivers what was not acknowledged (a pending
//!   message at once, a leased one once its lease expires) and never what was;
//! - two processes on one schema at once are one broker: what one publishes the other delivers,
//!   and an acknowledgement on one is seen by the other;
//! - push delivery is shared by two processes on one schema without double dispatch: both push
//!   for the same subscription, every message reaches the endpoint once, and when one process is
//!   killed the other carries on alone;
//! - a database that cannot be reached at start keeps `/readyz` at 503 (API calls answer
//!   `UNAVAILABLE`) and is retried until it can be, and a shutdown meanwhile is clean;
//! - a URL that is not PostgreSQL, a flag that makes no sense with it, or a schema name that
//!   cannot be used stop the process with a message instead of serving or retrying;
//! - the password of the URL appears in no log line.
//!
//! The harness here is its own (not `common::Broker`, which always passes `--memory` or
//! `--data-dir`); the gRPC helpers are `common`'s.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{Grpc, ack_ids, data_of, new_subscription_name, new_topic_name, pubsub, subscription};
use converge::outbox::sqlx::{self, Connection as _, Executor as _};
use serde_json::Value;
use wait_timeout::ChildExt as _;

/// The test database. Trust authentication ignores the password, which is there so that the
/// tests can check it never reaches a log line.
const DATABASE: &str = "postgres://postgres:pw-never-logged-7f3a@127.0.0.1:5432/test";

/// The password inside [`DATABASE`].
const PASSWORD: &str = "pw-never-logged-7f3a";

/// How long a node may take to log a line the test waits for (bind, ready, a retry): generous,
/// since the first start migrates a schema while other tests build and run.
const LOG_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a process may take to exit (after SIGTERM, or on a fatal error at start).
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The ack deadline of subscriptions created with default settings.
const DEFAULT_ACK_DEADLINE: Duration = Duration::from_secs(10);

/// A schema of its own for one test, dropped when the guard is dropped (declare it before the
/// nodes, so that they are killed first).
struct Schema {
    name: String,
}

impl Schema {
    fn new() -> Self {
        Self {
            name: format!("t_{:032x}", rand::random::<u128>()),
        }
    }

    /// The `--store` URL of this schema.
    fn url(&self) -> String {
        format!("{DATABASE}?schema={}", self.name)
    }
}

impl Drop for Schema {
    /// Drops the schema on a thread of its own with its own runtime: `Drop` cannot await, and
    /// the test's runtime may be the current thread's.
    fn drop(&mut self) {
        let sql = format!(
            "SET lock_timeout = '20s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.name
        );
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(DATABASE)
                    .await
                    .map_err(|e| e.to_string())?;
                conn.execute(sql.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                conn.close().await.map_err(|e| e.to_string())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cannot drop schema {}: {e}", self.name),
            Err(_) => eprintln!("dropping schema {} panicked", self.name),
        }
    }
}

/// Lines a process printed, shared with the threads reading its pipes.
#[derive(Default)]
struct Output {
    state: Mutex<(Vec<String>, usize)>,
    changed: Condvar,
}

impl Output {
    fn push(&self, line: String) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .push(line);
        self.changed.notify_all();
    }

    fn closed(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1 += 1;
        self.changed.notify_all();
    }

    fn lines(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// The first JSON log event matching `matches`, waiting for it until `timeout` or until
    /// both pipes closed (the process exited).
    fn wait_for(&self, timeout: Duration, matches: impl Fn(&Value) -> bool) -> Option<Value> {
        let guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut found = None;
        let (_guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |(lines, closed)| {
                found = lines
                    .iter()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|event| matches(event));
                found.is_none() && *closed < 2
            })
            .unwrap_or_else(PoisonError::into_inner);
        found
    }
}

/// One `converge serve --store ...` process, killed when dropped.
struct Node {
    child: Option<Child>,
    output: Arc<Output>,
    readers: Vec<JoinHandle<()>>,
    /// Learnt from the "listening" line, before the store is open.
    addr: SocketAddr,
}

impl Node {
    /// Starts `converge serve --listen 127.0.0.1:0 --log-format json ARGS` and waits for the
    /// line saying where it listens (logged before the store is opened).
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = serve_command(args, env);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let output = Arc::new(Output::default());
        let readers = vec![
            drain(child.stdout.take().expect("piped"), output.clone()),
            drain(child.stderr.take().expect("piped"), output.clone()),
        ];
        let mut node = Self {
            child: Some(child),
            output,
            readers,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let listening = node.wait_for_log(|e| e["message"] == "listening; opening the store");
        node.addr = listening["listen"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {listening}"));
        node
    }

    /// Starts a node on `url` and waits until it is ready.
    fn start(url: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--store", url];
        args.extend_from_slice(extra);
        let node = Self::spawn(&args, &[]);
        node.wait_ready();
        node
    }

    /// Waits for the ready line and checks what it says about the store.
    fn wait_ready(&self) -> Value {
        let ready = self.wait_for_log(|e| e["message"] == "converge is ready");
        assert_eq!(ready["store"], "postgres", "{ready}");
        ready
    }

    fn wait_for_log(&self, matches: impl Fn(&Value) -> bool) -> Value {
        self.output
            .wait_for(LOG_TIMEOUT, matches)
            .unwrap_or_else(|| {
                panic!(
                    "no matching log line within {LOG_TIMEOUT:?}\n{}",
                    self.tail()
                )
            })
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn grpc(&self) -> Grpc {
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint())
            .expect("valid URI")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.addr));
        Grpc::new(channel)
    }

    /// `GET /readyz`: its status code and body.
    async fn readyz(&self) -> (u16, String) {
        let response = reqwest::get(format!("{}/readyz", self.endpoint()))
            .await
            .unwrap_or_else(|e| panic!("GET /readyz: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Moves the node's test clock forward (the node runs `--test-clock`).
    async fn advance_clock(&self, by: Duration) {
        let response = reqwest::Client::new()
            .post(format!("{}/converge/test/clock:advance", self.endpoint()))
            .json(&serde_json::json!({ "seconds": by.as_secs_f64() }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("cannot advance the clock: {e}"));
        assert!(
            response.status().is_success(),
            "clock:advance: {}",
            response.status()
        );
    }

    /// SIGKILL, as a crash.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait().expect("cannot reap the killed node");
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// SIGTERM, then the exit status (panics if the process outlives [`EXIT_TIMEOUT`]).
    async fn stop(&mut self) -> ExitStatus {
        let child = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        self.wait_exit(child).await
    }

    /// Waits for the process to exit on its own.
    async fn exited(&mut self) -> ExitStatus {
        let child = self.child.take().expect("running");
        self.wait_exit(child).await
    }

    async fn wait_exit(&mut self, mut child: Child) -> ExitStatus {
        let (mut child, status) = tokio::task::spawn_blocking(move || {
            let status = child.wait_timeout(EXIT_TIMEOUT);
            (child, status)
        })
        .await
        .expect("the waiting thread panicked");
        match status.expect("cannot wait for the node") {
            Some(status) => {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                status
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the node did not exit within {EXIT_TIMEOUT:?}\n{}",
                    self.tail()
                );
            }
        }
    }

    fn lines(&self) -> Vec<String> {
        self.output.lines()
    }

    fn tail(&self) -> String {
        let lines = self.lines();
        let skip = lines.len().saturating_sub(200);
        format!(
            "--- node output ---\n{}\n--- end ---",
            lines[skip..].join("\n")
        )
    }

    /// No line this node printed shows the URL's password.
    fn assert_password_never_logged(&self) {
        for line in self.lines() {
            assert!(!line.contains(PASSWORD), "the password was logged: {line}");
        }
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

/// `converge serve` on any free port with JSON logs, `args` appended, and none of a developer's
/// settings from the environment.
fn serve_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_converge"));
    command.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"]);
    command.args(args);
    for var in [
        "RUST_LOG",
        "CONVERGE_LISTEN",
        "CONVERGE_DATA_DIR",
        "CONVERGE_ENDPOINT",
        "CONVERGE_STORE_URL",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Reads `stream` line by line into `output` on a thread of its own.
fn drain(stream: impl Read + Send + 'static, output: Arc<Output>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => output.push(
                    String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned(),
                ),
            }
        }
        output.closed();
    })
}

/// Pulls from `subscription` (long polls) until `want` messages came or `timeout` passed.
async fn pull_until(
    grpc: &Grpc,
    subscription: &str,
    want: usize,
    timeout: Duration,
) -> Vec<pubsub::ReceivedMessage> {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while received.len() < want && tokio::time::Instant::now() < deadline {
        received.extend(grpc.pull_wait(subscription, 100).await);
    }
    received
}

/// A topic, its subscription, one message acknowledged, one leased and one never pulled; then
/// `kill -9` and a new process on the same schema. Only PostgreSQL carries the state across, so
/// the second process seeing the resources proves they were committed there, and what it
/// delivers proves the delivery state was too: the pending message at once, the leased one only
/// once its lease has expired (the lease is a committed row, not process memory), the
/// acknowledged one never.
#[tokio::test]
async fn state_survives_kill_9_of_the_process() {
    let schema = Schema::new();
    let url = schema.url();
    let mut first = Node::start(&url, &["--test-clock"]);
    let ready = first.wait_ready();
    assert_eq!(ready["schema"], schema.name.as_str(), "{ready}");
    assert_eq!(first.readyz().await, (200, "ok".to_owned()));
    let grpc = first.grpc().await;
    let topic = new_topic_name("orders");
    let sub = new_subscription_name("work");
    grpc.create_topic(&topic).await;
    grpc.create_subscription(subscription(&sub, &topic)).await;

    grpc.publish_data(&topic, &["acked"]).await;
    let got = pull_until(&grpc, &sub, 1, LOG_TIMEOUT).await;
    assert_eq!(data_of(&got), ["acked"]);
    grpc.ack(&sub, ack_ids(&got)).await;
    grpc.publish_data(&topic, &["leased"]).await;
    let got = pull_until(&grpc, &sub, 1, LOG_TIMEOUT).await;
    assert_eq!(data_of(&got), ["leased"]);
    grpc.publish_data(&topic, &["pending"]).await;
    first.kill9();
    first.assert_password_never_logged();

    // The second process gets the URL from the environment, as a deployment would.
    let second = Node::spawn(&["--test-clock"], &[("CONVERGE_STORE_URL", url.as_str())]);
    second.wait_ready();
    let grpc = second.grpc().await;
    let topic_now = grpc
        .publisher
        .clone()
        .get_topic(pubsub::GetTopicRequest {
            topic: topic.clone(),
        })
        .await
        .expect("the topic survived")
        .into_inner();
    assert_eq!(topic_now.name, topic);
    let sub_now = grpc
        .get_subscription(&sub)
        .await
        .expect("the subscription survived");
    assert_eq!(sub_now.topic, topic);

    // The lease taken by the dead process still holds: only the pending message comes.
    let got = pull_until(&grpc, &sub, 1, LOG_TIMEOUT).await;
    assert_eq!(data_of(&got), ["pending"]);
    grpc.ack(&sub, ack_ids(&got)).await;
    assert_eq!(data_of(&grpc.pull(&sub, 100).await), Vec::<String>::new());

    // Past the dead process's lease, its message is redelivered; the acknowledged one never.
    second
        .advance_clock(DEFAULT_ACK_DEADLINE + Duration::from_secs(1))
        .await;
    let got = pull_until(&grpc, &sub, 1, LOG_TIMEOUT).await;
    assert_eq!(data_of(&got), ["leased"]);
    grpc.ack(&sub, ack_ids(&got)).await;
    second
        .advance_clock(DEFAULT_ACK_DEADLINE + Duration::from_secs(1))
        .await;
    assert_eq!(data_of(&grpc.pull(&sub, 100).await), Vec::<String>::new());
    second.assert_password_never_logged();
}

/// Two processes on one schema at the same time (started together, so they also migrate it
/// concurrently) behave as one broker: resources created on one are used on the other, each
/// message published on either is delivered once across both, and an acknowledgement on one
/// node ends the message for the other.
#[tokio::test]
async fn two_processes_on_one_schema_are_one_broker() {
    let schema = Schema::new();
    let url = schema.url();
    let a = Node::spawn(&["--store", &url], &[]);
    let b = Node::spawn(&["--store", &url, "--store-pool", "4"], &[]);
    a.wait_ready();
    b.wait_ready();
    let (grpc_a, grpc_b) = (a.grpc().await, b.grpc().await);
    let topic = new_topic_name("orders");
    let sub = new_subscription_name("work");
    grpc_a.create_topic(&topic).await;
    grpc_b.create_subscription(subscription(&sub, &topic)).await;

    // Published on A, pulled and acknowledged on B: A has nothing left to deliver.
    let ids = grpc_a.publish_data(&topic, &["from-a"]).await;
    let got = pull_until(&grpc_b, &sub, 1, LOG_TIMEOUT).await;
    assert_eq!(data_of(&got), ["from-a"]);
    assert_eq!(got[0].message.as_ref().unwrap().message_id, ids[0]);
    grpc_b.ack(&sub, ack_ids(&got)).await;
    assert_eq!(data_of(&grpc_a.pull(&sub, 100).await), Vec::<String>::new());

    // Published on B, pulled on A.
    grpc_b.publish_data(&topic, &["from-b"]).await;
    let got = pull_until(&grpc_a, &sub, 1, LOG_TIMEOUT).await;
    assert_eq!(data_of(&got), ["from-b"]);
    grpc_a.ack(&sub, ack_ids(&got)).await;

    // A batch published on both and pulled from both at once: every message exactly once
    // (within the ack deadline no message may be leased twice).
    let mut published: Vec<String> = Vec::new();
    for i in 0..20 {
        let data = format!("m{i}");
        let grpc = if i % 2 == 0 { &grpc_a } else { &grpc_b };
        grpc.publish_data(&topic, &[data.as_str()]).await;
        published.push(data);
    }
    let mut received: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + LOG_TIMEOUT;
    while received.len() < published.len() && tokio::time::Instant::now() < deadline {
        let (from_a, from_b) = tokio::join!(grpc_a.pull(&sub, 3), grpc_b.pull(&sub, 3));
        for (grpc, got) in [(&grpc_a, from_a), (&grpc_b, from_b)] {
            if !got.is_empty() {
                grpc.ack(&sub, ack_ids(&got)).await;
                received.extend(data_of(&got));
            }
        }
    }
    let mut sorted = received.clone();
    sorted.sort();
    let mut expected = published.clone();
    expected.sort();
    assert_eq!(sorted, expected, "received {received:?}");
    a.assert_password_never_logged();
    b.assert_password_never_logged();
}

/// How long the push test waits for the endpoint to have seen every message.
const PUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Two processes on one schema both run the push dispatcher for one push subscription (ack
/// deadline 10 s) and share its deliveries through the leased `deliveries` rows. The endpoint
/// answers 204 at once, so no lease expires while a push is in flight: any message id the
/// endpoint sees twice was dispatched twice under live leases, which must not happen. Which node
/// sent each push is read from the nodes' `REQUEST_OUTBOUND` log lines (one per push); these
/// must account for every request the endpoint saw, each message by exactly one node. The split
/// between the nodes is only printed: it depends on timing. Then node A is killed with SIGKILL
/// and 100 more messages published on B must all arrive, pushed by B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_is_shared_by_two_nodes_without_double_dispatch() {
    let schema = Schema::new();
    let url = schema.url();
    let endpoint = PushEndpoint::start().await;
    let mut a = Node::spawn(&["--store", &url], &[]);
    let b = Node::spawn(&["--store", &url], &[]);
    a.wait_ready();
    b.wait_ready();
    let (grpc_a, grpc_b) = (a.grpc().await, b.grpc().await);
    let topic = new_topic_name("pushed");
    let sub = new_subscription_name("pushed");
    grpc_a.create_topic(&topic).await;
    grpc_a
        .create_subscription(pubsub::Subscription {
            push_config: Some(pubsub::PushConfig {
                push_endpoint: endpoint.url(),
                ..Default::default()
            }),
            ack_deadline_seconds: 10,
            ..subscription(&sub, &topic)
        })
        .await;
    // Both dispatchers must have a worker for the subscription before anything is published,
    // or one node could push everything before the other noticed the subscription.
    for node in [&a, &b] {
        node.wait_for_log(|e| {
            e["message"] == "push worker started" && e["subscription"] == sub.as_str()
        });
    }

    // 300 messages, published on both nodes at once.
    let (on_a, on_b) = tokio::join!(
        publish_batches(&grpc_a, &topic, "a", 15, 10),
        publish_batches(&grpc_b, &topic, "b", 15, 10),
    );
    let published: HashSet<String> = on_a.into_iter().chain(on_b).collect();
    assert_eq!(published.len(), 300, "message ids are unique");
    endpoint.wait_for_all(&published, PUSH_TIMEOUT).await;
    // A window for late duplicates: a second dispatch of a message still leased would come now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = endpoint.seen();
    assert_once_each(&seen, &published);

    // Each push the endpoint saw is one `REQUEST_OUTBOUND` line on the node that sent it; the
    // line is written once the answer is back, so wait for all of them.
    let nodes = [("A", &a), ("B", &b)];
    let senders = wait_for_push_logs(&nodes, &sub, "every push seen", |senders| {
        senders.values().map(Vec::len).sum::<usize>() >= seen.len()
    });
    for id in &published {
        let by = senders.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(by.len(), 1, "message {id} logged as pushed by {by:?}");
    }
    let by_a = senders.values().filter(|by| by[..] == ["A"]).count();
    println!(
        "pushes per node: A {by_a}, B {} (of {} messages)",
        senders.len() - by_a,
        published.len()
    );

    // Node A crashes; B alone pushes what is published next.
    a.kill9();
    let later: HashSet<String> = publish_batches(&grpc_b, &topic, "late", 10, 10)
        .await
        .into_iter()
        .collect();
    assert_eq!(later.len(), 100, "message ids are unique");
    endpoint.wait_for_all(&later, PUSH_TIMEOUT).await;
    let seen_later: Vec<String> = endpoint
        .seen()
        .into_iter()
        .filter(|id| later.contains(id))
        .collect();
    assert_once_each(&seen_later, &later);
    let senders = wait_for_push_logs(
        &[("B", &b)],
        &sub,
        "B's push of each later message",
        |senders| later.iter().all(|id| senders.contains_key(id)),
    );
    for id in &later {
        assert_eq!(
            senders.get(id).map(Vec::as_slice).unwrap_or_default(),
            ["B"],
            "message {id} after A was killed"
        );
    }
    a.assert_password_never_logged();
    b.assert_password_never_logged();
}

/// Publishes `batches` batches of `per_batch` messages (data `TAG-BATCH-I`) to `topic`, one
/// batch after the other; the message ids.
async fn publish_batches(
    grpc: &Grpc,
    topic: &str,
    tag: &str,
    batches: usize,
    per_batch: usize,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(batches * per_batch);
    for batch in 0..batches {
        let data: Vec<String> = (0..per_batch)
            .map(|i| format!("{tag}-{batch}-{i}"))
            .collect();
        let data: Vec<&str> = data.iter().map(String::as_str).collect();
        ids.extend(grpc.publish_data(topic, &data).await);
    }
    ids
}

/// Every id of `expected` appears exactly once in `seen`, and nothing else does.
fn assert_once_each(seen: &[String], expected: &HashSet<String>) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in seen {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let mut twice: Vec<(&str, usize)> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (*id, *n))
        .collect();
    twice.sort_unstable();
    assert!(
        twice.is_empty(),
        "{} of {} messages pushed more than once: {twice:?}",
        twice.len(),
        counts.len()
    );
    let unknown: Vec<&&str> = counts
        .keys()
        .filter(|id| !expected.contains(**id))
        .collect();
    assert!(
        unknown.is_empty(),
        "pushed but never published: {unknown:?}"
    );
    assert_eq!(counts.len(), expected.len(), "not every message was pushed");
}

/// Who pushed what, from the nodes' `REQUEST_OUTBOUND` lines for `sub` that succeeded: message
/// id to the names of the nodes that logged it. Waits (up to [`LOG_TIMEOUT`]) until `done`
/// holds on them, and panics naming `what` if it never does.
fn wait_for_push_logs(
    nodes: &[(&'static str, &Node)],
    sub: &str,
    what: &str,
    done: impl Fn(&HashMap<String, Vec<&'static str>>) -> bool,
) -> HashMap<String, Vec<&'static str>> {
    let start = std::time::Instant::now();
    loop {
        let mut senders: HashMap<String, Vec<&'static str>> = HashMap::new();
        for (name, node) in nodes {
            for line in node.lines() {
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if event["logType"] == "REQUEST_OUTBOUND"
                    && event["subscription"] == sub
                    && event["outcome"] == "success"
                {
                    let id = event["messageId"].as_str().unwrap_or_default().to_owned();
                    senders.entry(id).or_default().push(name);
                }
            }
        }
        if done(&senders) {
            return senders;
        }
        let logged: usize = senders.values().map(Vec::len).sum();
        assert!(
            start.elapsed() < LOG_TIMEOUT,
            "the push log lines never showed {what} ({logged} pushes logged)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A push endpoint on `127.0.0.1:0`: a minimal keep-alive HTTP/1.1 server that answers every
/// request with 204 at once and records the message id of each wrapped push body, in order.
struct PushEndpoint {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PushEndpoint {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port for the push endpoint");
        let addr = listener.local_addr().expect("a bound address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_pushes(stream, log.clone()));
            }
        });
        Self { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}/push", self.addr)
    }

    /// The message ids of every request so far, in arrival order.
    fn seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until every id of `ids` has been pushed at least once; panics after `timeout`.
    async fn wait_for_all(&self, ids: &HashSet<String>, timeout: Duration) {
        let start = tokio::time::Instant::now();
        loop {
            let seen: HashSet<String> = self.seen().into_iter().collect();
            let missing = ids.iter().filter(|id| !seen.contains(*id)).count();
            if missing == 0 {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "{missing} of {} messages not pushed within {timeout:?}",
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PushEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one connection of [`PushEndpoint`]: reads requests (headers, then `content-length`
/// bytes of body), records the body's `message.messageId` and answers 204.
async fn serve_pushes(stream: tokio::net::TcpStream, log: Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.trim().eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let id = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["message"]["messageId"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("<no message id in {}>", String::from_utf8_lossy(&body)));
        log.lock().unwrap_or_else(PoisonError::into_inner).push(id);
        if write
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// With PostgreSQL out of reach at start, the node serves its probes and keeps `/readyz` at
/// 503 (and the API at `UNAVAILABLE`) while it retries, logging each failure; once the database
/// can be reached (a TCP forwarder to the real one appears on the port of the URL) it opens the
/// store and becomes ready without a restart.
// Multi-threaded: the forwarder's tasks must run while the test thread blocks waiting for logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_retried_until_it_answers() {
    let schema = Schema::new();
    // A free port with nothing listening on it yet: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{port}/test?schema={}",
        schema.name
    );
    let node = Node::spawn(&["--store", &url], &[]);
    let failure = node.wait_for_log(|e| e["message"] == "cannot reach PostgreSQL; retrying");
    assert_eq!(failure["attempt"], 1, "{failure}");
    let (status, body) = node.readyz().await;
    assert_eq!(status, 503, "{body}");
    let grpc = node.grpc().await;
    let refused = grpc
        .try_create_topic(pubsub::Topic {
            name: new_topic_name("early"),
            ..Default::default()
        })
        .await
        .expect_err("no store yet");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // It keeps trying (with backoff) rather than giving up.
    node.wait_for_log(|e| e["message"] == "cannot reach PostgreSQL; retrying" && e["attempt"] == 2);

    let forwarder = forward(port, 5432).await;
    node.wait_ready();
    assert_eq!(node.readyz().await, (200, "ok".to_owned()));
    let topic = new_topic_name("late");
    grpc.create_topic(&topic).await;
    node.assert_password_never_logged();
    drop(node);
    forwarder.abort();
}

/// A shutdown while the node waits for PostgreSQL ends the retries and exits 0 at once, rather
/// than waiting for a database that may never come.
#[tokio::test]
async fn shutdown_while_waiting_for_the_database_is_clean() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let mut node = Node::spawn(&["--store", &url, "--shutdown-grace", "30s"], &[]);
    node.wait_for_log(|e| e["message"] == "cannot reach PostgreSQL; retrying");
    let started = std::time::Instant::now();
    let status = node.stop().await;
    assert!(status.success(), "{status}\n{}", node.tail());
    // Well inside the 30 s grace: the retry loop was cancelled, not waited out.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let output = node.lines().join("\n");
    assert!(
        output.contains("the store was never opened; shutdown complete"),
        "{output}"
    );
}

/// Usage errors are reported as such (exit 2, clap's convention) before anything starts: a URL
/// that is not PostgreSQL's, and embedded-store flags next to `--store`.
#[tokio::test]
async fn a_store_that_is_not_postgresql_is_a_usage_error() {
    for args in [
        &["--store", "mysql://x"][..],
        &["--store", "postgres://postgres@127.0.0.1/test", "--memory"],
        &[
            "--store",
            "postgres://postgres@127.0.0.1/test",
            "--data-dir",
            "/tmp/x",
        ],
    ] {
        let output = serve_command(args, &[])
            .output()
            .expect("cannot run converge");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        if args[1] == "mysql://x" {
            assert!(stderr.contains("PostgreSQL URL"), "{stderr}");
        } else {
            assert!(stderr.contains("cannot be used with"), "{stderr}");
        }
    }
}

/// Errors that retrying cannot fix stop the process with the reason: here a schema name the
/// store refuses (it would need quoting). The process must exit on its own, non-zero, rather
/// than retry for ever.
#[tokio::test]
async fn a_bad_schema_name_stops_the_process() {
    let url = format!("{DATABASE}?schema=Not-Valid");
    let mut node = Node::spawn(&["--store", &url], &[]);
    let status = node.exited().await;
    assert!(!status.success(), "{status}");
    let output = node.lines().join("\n");
    assert!(output.contains("invalid schema name"), "{output}");
    assert!(!output.contains("converge is ready"), "{output}");
    node.assert_password_never_logged();
}

/// A TCP forwarder from `127.0.0.1:from` to `127.0.0.1:to`, standing in for a database that
/// comes up late.
async fn forward(from: u16, to: u16) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", from))
        .await
        .unwrap_or_else(|e| panic!("cannot listen on port {from}: {e}"));
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}
