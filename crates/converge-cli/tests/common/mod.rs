//! The harness shared by the integration tests: it runs the real `converge serve` binary.
//!
//! Integration tests exercise the broker the way users run it, as a separate process on a real
//! socket, so that flag parsing, logging, shutdown and the on-disk store are covered along with
//! the API. Every test starts its own [`Broker`] on a free port (`--listen 127.0.0.1:0`) and
//! learns the address from the broker's JSON ready line, so tests run in parallel without port
//! clashes. Brokers run with `--test-clock`, so a test reaches ack deadlines, retry backoffs,
//! retention and expiration with [`Broker::advance_clock`] instead of sleeping.
//!
//! ```ignore
//! mod common;
//! use common::{Broker, message, new_subscription_name, new_topic_name, subscription};
//!
//! #[tokio::test]
//! async fn round_trip() {
//!     let broker = Broker::start();
//!     let grpc = broker.grpc().await;
//!     let topic = new_topic_name("orders");
//!     let sub = new_subscription_name("work");
//!     grpc.create_topic(&topic).await;
//!     grpc.create_subscription(subscription(&sub, &topic)).await;
//!     grpc.publish_data(&topic, &["hello"]).await;
//!     assert_eq!(grpc.pull(&sub, 10).await.len(), 1);
//! }
//! ```
//!
//! The broker's output (JSON log lines, stderr and stdout alike) is drained on background
//! threads, so the child never blocks on a full pipe, and kept for assertions
//! ([`Broker::logs`], [`Broker::wait_for_log`]). When a test panics, the broker's output is
//! printed as the broker is dropped, which is usually what explains the failure.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use googleapis_tonic_google_pubsub_v1::google::pubsub::v1 as pubsub;
use pubsub::publisher_client::PublisherClient;
use pubsub::subscriber_client::SubscriberClient;
use serde_json::Value;
use tonic::transport::Channel;
use wait_timeout::ChildExt as _;

/// The project of every resource the tests create. Each test has its own broker, so a fixed
/// project is enough; resource ids are still unique ([`unique_id`]) so that a failure names one
/// resource unambiguously in the broker's logs.
pub const PROJECT: &str = "itest";

/// How long a broker may take to print its ready line before the test fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a broker may take to exit after SIGTERM before the test fails: above the broker's
/// default shutdown grace of 10 s, so an overrun is the broker's verdict, not the harness's.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Largest gRPC message the test clients send or accept: above the 10 MB publish limit, so the
/// broker, not the client, decides what is too large (as the broker's own limit does).
pub const MAX_GRPC_MESSAGE_BYTES: usize = 20 * 1024 * 1024;

/// The `message` of the log line the broker prints once it serves, with its address in `listen`
/// (see `converge_server::run`).
const READY_MESSAGE: &str = "converge is ready";

/// How many lines of broker output a failing test prints: enough for the story of one test,
/// bounded so a crash test's output does not drown the assertion message.
const LOG_TAIL_ON_PANIC: usize = 300;

/// How a broker is started: where it keeps its data and which extra flags it gets.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `None` runs with `--memory`; otherwise `--data-dir DIR`.
    pub data_dir: Option<PathBuf>,
    /// Runs with `--test-clock` (the default), which [`Broker::advance_clock`] needs.
    pub test_clock: bool,
    /// Flags appended after the harness's own, e.g. `--durability os-buffer`.
    pub extra_args: Vec<String>,
    /// With `CONVERGE_TEST_STORE=postgres`, a broker that would run in memory runs on the
    /// PostgreSQL store instead, in this schema of the test database (created by the broker,
    /// dropped when the [`Broker`] is dropped). That is how the API suites run on both stores:
    /// `scripts/test.sh` runs them a second time with the variable set.
    pub postgres_schema: Option<String>,
}

/// The test database of `CONVERGE_TEST_STORE=postgres`.
pub const TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

impl BrokerConfig {
    /// In memory, with the test clock: what most tests need. On the PostgreSQL store instead
    /// when `CONVERGE_TEST_STORE=postgres` (a fresh schema).
    pub fn memory() -> Self {
        let on_postgres = std::env::var("CONVERGE_TEST_STORE").is_ok_and(|v| v == "postgres");
        Self {
            data_dir: None,
            test_clock: true,
            extra_args: Vec::new(),
            postgres_schema: on_postgres.then(|| format!("t_{:016x}", rand::random::<u64>())),
        }
    }

    /// On disk in `dir`, with the test clock.
    pub fn data_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: Some(dir.into()),
            postgres_schema: None,
            ..Self::memory()
        }
    }

    /// Adds one flag (or flag value) to the command line.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Runs on the system clock, without the test hooks, as in production.
    pub fn without_test_clock(mut self) -> Self {
        self.test_clock = false;
        self
    }
}

/// A running `converge serve` process, killed when dropped.
///
/// The address changes on [`Broker::restart`] (each start takes a free port), so connect again
/// (with [`Broker::grpc`] or [`Broker::http`]) after a restart.
pub struct Broker {
    config: BrokerConfig,
    /// Keeps the temporary data directory of [`Broker::start_on_disk`] alive across restarts.
    _temp_dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    addr: SocketAddr,
    output: Arc<Output>,
    readers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("addr", &self.addr)
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Starts a broker in memory with the test clock.
    pub fn start() -> Self {
        Self::start_with(BrokerConfig::memory())
    }

    /// Starts a broker on a fresh temporary data directory (removed when the broker is dropped),
    /// for tests of persistence and restarts.
    pub fn start_on_disk() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("converge-itest-")
            .tempdir()
            .expect("cannot create a temporary data directory");
        let mut broker = Self::unstarted(BrokerConfig::data_dir(dir.path()));
        broker._temp_dir = Some(dir);
        broker.spawn();
        broker
    }

    /// Starts a broker as `config` says. Panics, with the broker's output, if it does not print
    /// its ready line within [`READY_TIMEOUT`] or exits before.
    pub fn start_with(config: BrokerConfig) -> Self {
        let mut broker = Self::unstarted(config);
        broker.spawn();
        broker
    }

    fn unstarted(config: BrokerConfig) -> Self {
        Self {
            config,
            _temp_dir: None,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            output: Arc::default(),
            readers: Vec::new(),
        }
    }

    /// The address the broker listens on (gRPC, REST, health and metrics share it).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL of the broker, `http://127.0.0.1:PORT`, for gRPC channels and HTTP clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The data directory, or `None` for a broker in memory.
    pub fn data_dir(&self) -> Option<&Path> {
        self.config.data_dir.as_deref()
    }

    /// The process id of the running broker, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Connected gRPC clients of both services over one channel.
    pub async fn grpc(&self) -> Grpc {
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint())
            .expect("the endpoint is a valid URI")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the broker at {}: {e}", self.addr));
        Grpc::new(channel)
    }

    /// An HTTP client and the base URL, for the REST API, probes, metrics and the test hooks.
    pub fn http(&self) -> Http {
        Http {
            base: self.endpoint(),
            client: reqwest::Client::new(),
        }
    }

    /// Moves the broker's clock forward by `by` (`POST /converge/test/clock:advance`), which also
    /// runs the store's maintenance (lease expiry, retention, expiration) at once.
    pub async fn advance_clock(&self, by: Duration) {
        assert!(
            self.config.test_clock,
            "advance_clock needs a broker started with the test clock"
        );
        let http = self.http();
        let response = http
            .client
            .post(http.url("/converge/test/clock:advance"))
            .json(&serde_json::json!({ "seconds": by.as_secs_f64() }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("cannot advance the clock: {e}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "advancing the clock by {by:?} answered {status}: {body}"
        );
    }

    /// The broker's backlog gauge of `subscription` (full name) from `/metrics`: unacknowledged
    /// messages it still holds; `None` when the subscription has no sample.
    pub async fn backlog(&self, subscription: &str) -> Option<u64> {
        let http = self.http();
        let text = http
            .client
            .get(http.url("/metrics"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("cannot scrape /metrics: {e}"))
            .text()
            .await
            .expect("the metrics body is text");
        let sample =
            format!("converge_subscription_backlog_messages{{subscription=\"{subscription}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&sample))
            .map(|value| {
                value
                    .trim()
                    .parse::<f64>()
                    .unwrap_or_else(|e| panic!("bad backlog sample {value:?}: {e}"))
                    as u64
            })
    }

    /// Kills the broker with SIGKILL, as a crash would, and waits for it to be gone.
    pub fn kill9(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // An error means the process already exited, which is as good as killed here.
        let _ = child.kill();
        child.wait().expect("cannot reap the killed broker");
        self.join_readers();
    }

    /// Stops the broker with SIGTERM and returns its exit status; panics if it is still running
    /// after [`STOP_TIMEOUT`]. A clean shutdown exits with 0.
    ///
    /// Async because the broker's graceful shutdown is a conversation: it sends open HTTP/2
    /// connections a GOAWAY and a PING and waits for the answer. Waiting on the runtime's own
    /// thread would starve the test's gRPC connection tasks (on a current-thread runtime) and
    /// hold the shutdown for its whole grace period, so the wait runs on a blocking thread.
    pub async fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("stop: the broker is not running");
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .unwrap_or_else(|e| panic!("cannot send SIGTERM to the broker ({pid:?}): {e}"));
        let (mut child, status) = tokio::task::spawn_blocking(move || {
            let status = child.wait_timeout(STOP_TIMEOUT);
            (child, status)
        })
        .await
        .expect("the waiting thread panicked");
        let status = status.expect("cannot wait for the broker");
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            self.join_readers();
            panic!(
                "the broker did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}",
                self.output_tail()
            );
        };
        self.join_readers();
        status
    }

    /// Starts the broker again on the same data directory and returns how long it took to become
    /// ready (recovery included). A running broker is first stopped cleanly ([`Broker::stop`]),
    /// which must succeed; call [`Broker::kill9`] first to restart after a crash instead.
    pub async fn restart(&mut self) -> Duration {
        if self.child.is_some() {
            let status = self.stop().await;
            assert!(
                status.success(),
                "the broker did not stop cleanly: {status}\n{}",
                self.output_tail()
            );
        }
        self.spawn()
    }

    /// Every line the broker has printed so far, in order, across restarts.
    pub fn logs(&self) -> Vec<String> {
        self.output.lock().lines.clone()
    }

    /// The broker's output lines that are JSON objects (its log events), parsed.
    pub fn log_json(&self) -> Vec<Value> {
        self.output
            .lock()
            .lines
            .iter()
            .filter_map(|line| parse_json_object(line))
            .collect()
    }

    /// Waits until the broker has logged an event matching `matches` and returns it; panics
    /// with the output after `timeout`. Log events may be written a moment after the response
    /// they describe reaches the client (the request log is written as the response ends), so
    /// tests wait for them rather than read the logs once.
    ///
    /// Blocks the calling thread; the broker is another process, so it keeps running meanwhile.
    pub fn wait_for_log(&self, timeout: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        let found = self.output.wait_until(timeout, |state| {
            state
                .lines
                .iter()
                .filter_map(|line| parse_json_object(line))
                .find(|event| matches(event))
        });
        found.unwrap_or_else(|| {
            panic!(
                "no matching log event within {timeout:?}\n{}",
                self.output_tail()
            )
        })
    }

    /// Starts the child and waits for its ready line; returns how long that took.
    fn spawn(&mut self) -> Duration {
        debug_assert!(self.child.is_none(), "spawn with a broker still running");
        let started = Instant::now();
        let mut command = self.command();
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let first_line = self.output.begin_generation(2);
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        self.readers.push(drain(stdout, self.output.clone()));
        self.readers.push(drain(stderr, self.output.clone()));
        self.child = Some(child);

        let ready = self.output.wait_until(READY_TIMEOUT, |state| {
            if let Some(addr) = state.lines[first_line..]
                .iter()
                .find_map(|line| ready_address(line))
            {
                return Some(Ok(addr));
            }
            (state.open_streams == 0).then_some(Err(()))
        });
        match ready {
            Some(Ok(addr)) => {
                self.addr = addr;
                started.elapsed()
            }
            Some(Err(())) => {
                let status = self.child.take().map(|mut c| c.wait());
                self.join_readers();
                panic!(
                    "the broker exited before it was ready ({status:?})\n{}",
                    self.output_tail()
                );
            }
            None => {
                self.kill9();
                panic!(
                    "the broker was not ready within {READY_TIMEOUT:?}\n{}",
                    self.output_tail()
                );
            }
        }
    }

    /// The command line of `converge serve` for this broker.
    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_converge"));
        command.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"]);
        match (&self.config.data_dir, &self.config.postgres_schema) {
            (Some(dir), _) => command.arg("--data-dir").arg(dir),
            // Connections named after the schema, so that dropping it can end them.
            (None, Some(schema)) => command.arg("--store").arg(format!(
                "{TEST_DATABASE_URL}?schema={schema}&application_name={schema}"
            )),
            (None, None) => command.arg("--memory"),
        };
        if self.config.test_clock {
            command.arg("--test-clock");
        }
        command.args(&self.config.extra_args);
        // The settings a developer's environment may hold would change what the tests see.
        for var in [
            "RUST_LOG",
            "CONVERGE_LISTEN",
            "CONVERGE_DATA_DIR",
            "CONVERGE_ENDPOINT",
            "CONVERGE_STORE_URL",
        ] {
            command.env_remove(var);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Waits for the output readers of the exited child (its pipes are closed).
    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// The last lines of output, for panic messages.
    fn output_tail(&self) -> String {
        let state = self.output.lock();
        let skip = state.lines.len().saturating_sub(LOG_TAIL_ON_PANIC);
        let mut text = format!(
            "--- broker output ({} lines, last {}) ---\n",
            state.lines.len(),
            LOG_TAIL_ON_PANIC
        );
        for line in &state.lines[skip..] {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("--- end of broker output ---");
        text
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", self.output_tail());
        }
        if let Some(schema) = &self.config.postgres_schema {
            drop_schema(schema);
        }
    }
}

/// Drops a test schema with psql (a plain process: this runs in `Drop`, inside the test's
/// runtime, where blocking on async work is not allowed). Best effort: a leftover schema costs
/// disk, not correctness, so a failure is printed, not raised.
fn drop_schema(schema: &str) {
    let sql = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{schema}'; \
         DROP SCHEMA IF EXISTS {schema} CASCADE"
    );
    let dropped = Command::new("psql")
        .args(["-q", "-X", TEST_DATABASE_URL, "-c", &sql])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match dropped {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "could not drop schema {schema}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("could not run psql to drop schema {schema}: {e}"),
    }
}

/// The broker's output lines, shared with the threads that read its pipes.
#[derive(Debug, Default)]
struct Output {
    state: Mutex<OutputState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct OutputState {
    lines: Vec<String>,
    /// Pipes of the current child not yet at end of file; 0 once the child has exited.
    open_streams: usize,
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, OutputState> {
        // A reader thread that panicked leaves consistent lines behind: keep using them.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that a new child with `streams` pipes starts; returns the index of its first line.
    fn begin_generation(&self, streams: usize) -> usize {
        let mut state = self.lock();
        debug_assert_eq!(
            state.open_streams, 0,
            "the previous child's pipes are still open"
        );
        state.open_streams = streams;
        state.lines.len()
    }

    fn push(&self, line: String) {
        self.lock().lines.push(line);
        self.changed.notify_all();
    }

    fn stream_closed(&self) {
        let mut state = self.lock();
        state.open_streams = state.open_streams.saturating_sub(1);
        drop(state);
        self.changed.notify_all();
    }

    /// Waits until `check` answers `Some` (re-checked whenever output arrives) or `timeout`
    /// passes (`None`).
    fn wait_until<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&OutputState) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if let Some(found) = check(&state) {
                return Some(found);
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())?;
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Reads `stream` line by line into `output` until end of file, on its own thread.
fn drain(stream: impl Read + Send + 'static, output: Arc<Output>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    output.push(line.trim_end_matches(['\n', '\r']).to_owned());
                }
            }
        }
        output.stream_closed();
    })
}

/// A line parsed as a JSON object, or `None` for any other line.
fn parse_json_object(line: &str) -> Option<Value> {
    serde_json::from_str::<Value>(line)
        .ok()
        .filter(Value::is_object)
}

/// The bound address announced by a ready line, or `None` for any other line.
fn ready_address(line: &str) -> Option<SocketAddr> {
    let event = parse_json_object(line)?;
    if event["message"] != READY_MESSAGE {
        return None;
    }
    event["listen"].as_str()?.parse().ok()
}

/// An HTTP client of the broker with its base URL.
#[derive(Debug, Clone)]
pub struct Http {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base: String,
    /// A client with default settings (HTTP/1.1; build another for h2c).
    pub client: reqwest::Client,
}

impl Http {
    /// The absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        debug_assert!(path.starts_with('/'), "path {path:?} must start with /");
        format!("{}{path}", self.base)
    }
}

/// gRPC clients of both services over one channel, with helpers for the common calls.
///
/// The helpers panic with the gRPC status on failure, which keeps the happy paths of tests short;
/// call the clients directly (`grpc.publisher.clone().publish(...)`) to assert on an error.
#[derive(Debug, Clone)]
pub struct Grpc {
    /// `google.pubsub.v1.Publisher`.
    pub publisher: PublisherClient<Channel>,
    /// `google.pubsub.v1.Subscriber`.
    pub subscriber: SubscriberClient<Channel>,
}

impl Grpc {
    /// Clients over `channel` with [`MAX_GRPC_MESSAGE_BYTES`] limits both ways.
    pub fn new(channel: Channel) -> Self {
        Self {
            publisher: PublisherClient::new(channel.clone())
                .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
            subscriber: SubscriberClient::new(channel)
                .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES),
        }
    }

    /// Creates the topic `name` (full name) with default settings.
    pub async fn create_topic(&self, name: &str) -> pubsub::Topic {
        let request = pubsub::Topic {
            name: name.to_owned(),
            ..Default::default()
        };
        self.publisher
            .clone()
            .create_topic(request)
            .await
            .unwrap_or_else(|s| panic!("CreateTopic {name}: {s:?}"))
            .into_inner()
    }

    /// Creates a subscription as given (see [`subscription`] for a default resource).
    pub async fn create_subscription(
        &self,
        resource: pubsub::Subscription,
    ) -> pubsub::Subscription {
        let name = resource.name.clone();
        self.subscriber
            .clone()
            .create_subscription(resource)
            .await
            .unwrap_or_else(|s| panic!("CreateSubscription {name}: {s:?}"))
            .into_inner()
    }

    /// CreateSubscription with the error status kept, for tests of its errors.
    pub async fn try_create_subscription(
        &self,
        resource: pubsub::Subscription,
    ) -> Result<pubsub::Subscription, tonic::Status> {
        self.subscriber
            .clone()
            .create_subscription(resource)
            .await
            .map(tonic::Response::into_inner)
    }

    /// CreateTopic with the error status kept, for tests of its errors.
    pub async fn try_create_topic(
        &self,
        resource: pubsub::Topic,
    ) -> Result<pubsub::Topic, tonic::Status> {
        self.publisher
            .clone()
            .create_topic(resource)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Gets a subscription.
    pub async fn get_subscription(
        &self,
        name: &str,
    ) -> Result<pubsub::Subscription, tonic::Status> {
        let request = pubsub::GetSubscriptionRequest {
            subscription: name.to_owned(),
        };
        self.subscriber
            .clone()
            .get_subscription(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Publishes `messages` to `topic`; the message ids, or the error status.
    pub async fn publish(
        &self,
        topic: &str,
        messages: Vec<pubsub::PubsubMessage>,
    ) -> Result<Vec<String>, tonic::Status> {
        let request = pubsub::PublishRequest {
            topic: topic.to_owned(),
            messages,
        };
        let response = self.publisher.clone().publish(request).await?;
        Ok(response.into_inner().message_ids)
    }

    /// Publishes one message per element of `data`, without attributes; the message ids.
    pub async fn publish_data(&self, topic: &str, data: &[&str]) -> Vec<String> {
        let messages = data.iter().map(|d| message(d)).collect();
        self.publish(topic, messages)
            .await
            .unwrap_or_else(|s| panic!("Publish to {topic}: {s:?}"))
    }

    /// Pulls up to `max` messages without waiting (`return_immediately`).
    pub async fn pull(&self, subscription: &str, max: i32) -> Vec<pubsub::ReceivedMessage> {
        self.try_pull(subscription, max, true)
            .await
            .unwrap_or_else(|s| panic!("Pull {subscription}: {s:?}"))
    }

    /// Pulls up to `max` messages, waiting for a first one up to the broker's long-poll limit.
    pub async fn pull_wait(&self, subscription: &str, max: i32) -> Vec<pubsub::ReceivedMessage> {
        self.try_pull(subscription, max, false)
            .await
            .unwrap_or_else(|s| panic!("Pull {subscription}: {s:?}"))
    }

    /// Pull with the error status kept, for tests of pull errors.
    pub async fn try_pull(
        &self,
        subscription: &str,
        max: i32,
        return_immediately: bool,
    ) -> Result<Vec<pubsub::ReceivedMessage>, tonic::Status> {
        #[allow(deprecated)] // `return_immediately` is deprecated upstream but still honoured.
        let request = pubsub::PullRequest {
            subscription: subscription.to_owned(),
            return_immediately,
            max_messages: max,
        };
        let response = self.subscriber.clone().pull(request).await?;
        Ok(response.into_inner().received_messages)
    }

    /// Acknowledges `ack_ids`.
    pub async fn ack(&self, subscription: &str, ack_ids: Vec<String>) {
        let request = pubsub::AcknowledgeRequest {
            subscription: subscription.to_owned(),
            ack_ids,
        };
        self.subscriber
            .clone()
            .acknowledge(request)
            .await
            .unwrap_or_else(|s| panic!("Acknowledge on {subscription}: {s:?}"));
    }

    /// Sets the ack deadline of `ack_ids` to `seconds` from now.
    pub async fn modify_ack_deadline(
        &self,
        subscription: &str,
        ack_ids: Vec<String>,
        seconds: i32,
    ) -> Result<(), tonic::Status> {
        let request = pubsub::ModifyAckDeadlineRequest {
            subscription: subscription.to_owned(),
            ack_ids,
            ack_deadline_seconds: seconds,
        };
        self.subscriber
            .clone()
            .modify_ack_deadline(request)
            .await
            .map(|_| ())
    }

    /// Nacks `ack_ids` (ModifyAckDeadline 0), as the official clients do.
    pub async fn nack(&self, subscription: &str, ack_ids: Vec<String>) {
        self.modify_ack_deadline(subscription, ack_ids, 0)
            .await
            .unwrap_or_else(|s| panic!("nack on {subscription}: {s:?}"));
    }
}

/// A new id, unique within the test binary, starting with `prefix` (which must start with a
/// letter, as resource ids do).
pub fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    debug_assert!(
        prefix.starts_with(|c: char| c.is_ascii_alphabetic()),
        "bad id prefix {prefix:?}"
    );
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The full name of topic `id` in [`PROJECT`].
pub fn topic_name(id: &str) -> String {
    format!("projects/{PROJECT}/topics/{id}")
}

/// The full name of subscription `id` in [`PROJECT`].
pub fn subscription_name(id: &str) -> String {
    format!("projects/{PROJECT}/subscriptions/{id}")
}

/// A new, unique topic name.
pub fn new_topic_name(prefix: &str) -> String {
    topic_name(&unique_id(prefix))
}

/// A new, unique subscription name.
pub fn new_subscription_name(prefix: &str) -> String {
    subscription_name(&unique_id(prefix))
}

/// A pull subscription resource with every setting left to the broker's defaults.
pub fn subscription(name: &str, topic: &str) -> pubsub::Subscription {
    pubsub::Subscription {
        name: name.to_owned(),
        topic: topic.to_owned(),
        ..Default::default()
    }
}

/// A message with `data` and no attributes.
pub fn message(data: &str) -> pubsub::PubsubMessage {
    pubsub::PubsubMessage {
        data: data.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A message with `data` and `attributes`.
pub fn message_with(data: &str, attributes: &[(&str, &str)]) -> pubsub::PubsubMessage {
    pubsub::PubsubMessage {
        data: data.as_bytes().to_vec(),
        attributes: attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

/// The data of received messages as strings, in delivery order.
pub fn data_of(received: &[pubsub::ReceivedMessage]) -> Vec<String> {
    received
        .iter()
        .map(|r| {
            String::from_utf8_lossy(
                &r.message
                    .as_ref()
                    .expect("a received message has a message")
                    .data,
            )
            .into_owned()
        })
        .collect()
}

/// The ack ids of received messages.
pub fn ack_ids(received: &[pubsub::ReceivedMessage]) -> Vec<String> {
    received.iter().map(|r| r.ack_id.clone()).collect()
}
