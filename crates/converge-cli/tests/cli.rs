//! The `converge` command line, run as a subprocess against a real broker.
//!
//! Each test starts a broker with the harness (see `common`) and runs the real binary against it,
//! asserting what users and scripts see: stdout (tables, or one JSON document with `--json`),
//! stderr (one `error: …` line) and the exit code (0 success, 1 failure, 2 usage). What the CLI
//! claims to have done is cross-checked over gRPC, so a command that printed the right thing
//! without doing it fails too. `converge serve` itself is covered by a SIGTERM and a restart on
//! the same data directory.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use common::pubsub;
use common::{
    Broker, PROJECT, data_of, message, new_subscription_name, new_topic_name, subscription,
    subscription_name, topic_name, unique_id,
};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

/// How long one CLI run may take before the test fails: far above a normal run, below the
/// harness's own timeouts, so a hung command is reported as such.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variables that choose the broker or project; every run starts without them, so a
/// developer's environment cannot change what the tests see.
const CLEARED_ENV: &[&str] = &[
    "CONVERGE_ENDPOINT",
    "PUBSUB_EMULATOR_HOST",
    "CONVERGE_PROJECT",
    "RUST_LOG",
];

/// What one run of the command printed and how it exited.
#[derive(Debug)]
struct Run {
    /// The exit code; `None` when a signal ended the process.
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts exit 0 with nothing on stderr; returns stdout.
    #[track_caller]
    fn success(&self) -> &str {
        assert_eq!(self.code, Some(0), "expected success: {self:#?}");
        assert_eq!(self.stderr, "", "nothing on stderr on success: {self:#?}");
        &self.stdout
    }

    /// Asserts exit 0 and parses stdout as one JSON document.
    #[track_caller]
    fn json(&self) -> Value {
        let stdout = self.success();
        serde_json::from_str(stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:#?}"))
    }

    /// Asserts a failure with `code`: nothing on stdout and exactly one `error: …` line on
    /// stderr, containing every fragment; returns that line.
    #[track_caller]
    fn failure(&self, code: i32, fragments: &[&str]) -> &str {
        assert_eq!(self.code, Some(code), "expected exit {code}: {self:#?}");
        assert_eq!(self.stdout, "", "nothing on stdout on failure: {self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:#?}");
        let line = lines[0];
        assert!(line.starts_with("error: "), "{line:?}");
        for fragment in fragments {
            assert!(
                line.contains(fragment),
                "{line:?} does not mention {fragment:?}"
            );
        }
        line
    }
}

/// A command line of the real binary, with a clean environment.
#[derive(Debug)]
struct Converge {
    command: tokio::process::Command,
    stdin: Option<String>,
}

impl Converge {
    /// `converge ARGS...` with no endpoint given.
    fn bare(args: &[&str]) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_converge"));
        command.args(args);
        for var in CLEARED_ENV {
            command.env_remove(var);
        }
        command.kill_on_drop(true);
        Self {
            command,
            stdin: None,
        }
    }

    /// `converge --endpoint BROKER --project itest ARGS...`.
    fn at(broker: &Broker, args: &[&str]) -> Self {
        let mut cli = Self::bare(&["--endpoint", &broker.endpoint(), "--project", PROJECT]);
        cli.command.args(args);
        cli
    }

    /// Sets an environment variable of the run.
    fn env(mut self, key: &str, value: &str) -> Self {
        self.command.env(key, value);
        self
    }

    /// Feeds `text` to stdin (otherwise stdin is empty, never a terminal).
    fn stdin(mut self, text: &str) -> Self {
        self.stdin = Some(text.to_owned());
        self
    }

    /// Starts the command; see [`Running::finish`].
    fn spawn(mut self) -> Running {
        self.command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self
            .command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.command));
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = self.stdin.unwrap_or_default();
        let feeder = tokio::spawn(async move {
            // A command that exits without reading stdin closes the pipe: not the test's concern.
            let _ = pipe.write_all(input.as_bytes()).await;
        });
        Running { child, feeder }
    }

    /// Runs the command to its end.
    async fn run(self) -> Run {
        self.spawn().finish().await
    }
}

/// A command still running.
#[derive(Debug)]
struct Running {
    child: tokio::process::Child,
    feeder: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits for the exit (at most [`RUN_TIMEOUT`]) and collects the output.
    async fn finish(self) -> Run {
        let output = tokio::time::timeout(RUN_TIMEOUT, self.child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("the command did not finish within {RUN_TIMEOUT:?}"))
            .expect("cannot wait for the command");
        self.feeder.await.expect("the stdin feeder");
        Run {
            code: output.status.code(),
            stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
            stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
        }
    }
}

/// The id (last segment) of a full resource name.
fn id_of(name: &str) -> &str {
    name.rsplit('/').next().expect("a name has segments")
}

/// A local address nobody listens on: a port bound and released at once.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("an address").port();
    drop(listener);
    format!("127.0.0.1:{port}")
}

/// The message ids a table-mode publish printed, one per line.
fn printed_ids(stdout: &str) -> Vec<String> {
    stdout.lines().map(str::to_owned).collect()
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Topics

#[tokio::test]
async fn topics_are_created_listed_shown_and_deleted() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let id = unique_id("orders");
    let name = topic_name(&id);

    let out = Converge::at(&broker, &["topics", "create", &id, "--label", "team=core"])
        .run()
        .await;
    let stdout = out.success();
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("name:") && l.ends_with(&name)),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("labels:") && l.ends_with("team=core")),
        "{stdout}"
    );
    let stored = grpc
        .publisher
        .clone()
        .get_topic(pubsub::GetTopicRequest {
            topic: name.clone(),
        })
        .await
        .expect("the topic exists")
        .into_inner();
    assert_eq!(stored.labels, labels(&[("team", "core")]));

    let other = new_topic_name("other");
    grpc.create_topic(&other).await;
    let out = Converge::at(&broker, &["topics", "list"]).run().await;
    let lines: Vec<&str> = out.success().lines().collect();
    assert_eq!(lines.len(), 3, "a header and two rows: {lines:?}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["NAME", "RETENTION", "LABELS"]);
    let mut rows: Vec<Vec<&str>> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    rows.sort();
    let mut expected = vec![vec![name.as_str(), "team=core"], vec![other.as_str()]];
    expected.sort();
    assert_eq!(rows, expected);

    let listed = Converge::at(&broker, &["--json", "topics", "list"])
        .run()
        .await
        .json();
    let mut expected = vec![
        json!({ "name": name, "labels": { "team": "core" } }),
        json!({ "name": other, "labels": {} }),
    ];
    expected.sort_by_key(|t| t["name"].as_str().unwrap().to_owned());
    assert_eq!(listed, Value::Array(expected));

    let shown = Converge::at(&broker, &["topics", "get", &name, "--json"])
        .run()
        .await
        .json();
    assert_eq!(
        shown,
        json!({ "name": name, "labels": { "team": "core" } }),
        "a full name works as well as a short one"
    );

    let out = Converge::at(&broker, &["topics", "delete", &id])
        .run()
        .await;
    assert_eq!(out.success(), format!("Deleted topic [{name}].\n"));
    let out = Converge::at(&broker, &["--json", "topics", "delete", id_of(&other)])
        .run()
        .await;
    assert_eq!(out.json(), json!({ "deleted": other }));
    let out = Converge::at(&broker, &["topics", "get", &id]).run().await;
    out.failure(1, &["NOT_FOUND", &id]);
    let out = Converge::at(&broker, &["--json", "topics", "list"])
        .run()
        .await;
    assert_eq!(out.json(), json!([]));
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

#[tokio::test]
async fn subscription_flags_reach_the_broker() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("orders");
    let dlq = new_topic_name("dlq");
    grpc.create_topic(&topic).await;
    grpc.create_topic(&dlq).await;
    let id = unique_id("work");
    let name = subscription_name(&id);
    let filter = r#"attributes.kind = "order""#;

    let out = Converge::at(
        &broker,
        &[
            "subscriptions",
            "create",
            &id,
            "--topic",
            id_of(&topic),
            "--ack-deadline",
            "30s",
            "--filter",
            filter,
            "--dead-letter-topic",
            id_of(&dlq),
            "--max-delivery-attempts",
            "7",
            "--retry-preset",
            "sns",
            "--ordering",
            "--retention",
            "1d",
            "--min-backoff",
            "5s",
            "--label",
            "team=core",
        ],
    )
    .run()
    .await;
    let stdout = out.success();
    assert!(stdout.contains(&name), "{stdout}");

    let shown = Converge::at(&broker, &["subscriptions", "get", &id, "--json"])
        .run()
        .await
        .json();
    assert_eq!(
        shown,
        json!({
            "name": name,
            "topic": topic,
            "ackDeadlineSeconds": 30,
            "filter": filter,
            "deadLetterPolicy": { "deadLetterTopic": dlq, "maxDeliveryAttempts": 7 },
            "retryPolicy": { "minimumBackoff": "5s", "maximumBackoff": "600s" },
            "enableMessageOrdering": true,
            "messageRetentionDuration": "86400s",
            "retainAckedMessages": false,
            "expirationPolicy": { "ttl": "2678400s" },
            "detached": false,
            "labels": { "team": "core", "converge-retry-preset": "sns" },
        })
    );

    // What the broker stored, not just what the CLI echoed.
    let stored = grpc.get_subscription(&name).await.expect("created");
    assert_eq!(stored.ack_deadline_seconds, 30);
    assert_eq!(stored.filter, filter);
    assert!(stored.enable_message_ordering);
    assert_eq!(
        stored.dead_letter_policy,
        Some(pubsub::DeadLetterPolicy {
            dead_letter_topic: dlq.clone(),
            max_delivery_attempts: 7,
        })
    );
    assert_eq!(
        stored.message_retention_duration.map(|d| d.seconds),
        Some(86_400)
    );
    assert_eq!(
        stored.labels,
        labels(&[("team", "core"), ("converge-retry-preset", "sns")])
    );

    let out = Converge::at(&broker, &["subscriptions", "list"])
        .run()
        .await;
    let lines: Vec<&str> = out.success().lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row,
        [name.as_str(), topic.as_str(), "30s", dlq.as_str(), "false"]
    );

    let out = Converge::at(&broker, &["subscriptions", "delete", &id])
        .run()
        .await;
    assert_eq!(out.success(), format!("Deleted subscription [{name}].\n"));
    let out = Converge::at(&broker, &["subscriptions", "get", &id])
        .run()
        .await;
    out.failure(1, &["NOT_FOUND", &id]);
}

#[tokio::test]
async fn an_update_changes_only_the_setting_given() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("orders");
    grpc.create_topic(&topic).await;
    let id = unique_id("work");
    Converge::at(
        &broker,
        &[
            "subscriptions",
            "create",
            &id,
            "--topic",
            &topic,
            "--ack-deadline",
            "20s",
            "--retention",
            "2d",
            "--label",
            "team=core",
            "--min-backoff",
            "15s",
        ],
    )
    .run()
    .await
    .success();
    let before = Converge::at(&broker, &["--json", "subscriptions", "get", &id])
        .run()
        .await
        .json();

    let updated = Converge::at(
        &broker,
        &[
            "--json",
            "subscriptions",
            "update",
            &id,
            "--ack-deadline",
            "45s",
        ],
    )
    .run()
    .await
    .json();
    let mut expected = before.clone();
    expected["ackDeadlineSeconds"] = json!(45);
    assert_eq!(updated, expected, "only the ack deadline changed");
    let after = Converge::at(&broker, &["--json", "subscriptions", "get", &id])
        .run()
        .await
        .json();
    assert_eq!(after, expected, "and the change is stored");

    let updated = Converge::at(
        &broker,
        &[
            "--json",
            "subscriptions",
            "update",
            &id,
            "--label",
            "env=dev",
        ],
    )
    .run()
    .await
    .json();
    expected["labels"] = json!({ "team": "core", "env": "dev" });
    assert_eq!(updated, expected, "a label is added to the others");

    let out = Converge::at(&broker, &["subscriptions", "update", &id])
        .run()
        .await;
    out.failure(2, &["nothing to update"]);
}

// ---------------------------------------------------------------------------------------------
// Publish and pull

#[tokio::test]
async fn publish_sends_data_attributes_and_ordering_key() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("orders");
    let sub = new_subscription_name("work");
    grpc.create_topic(&topic).await;
    grpc.create_subscription(pubsub::Subscription {
        enable_message_ordering: true,
        ..subscription(&sub, &topic)
    })
    .await;

    let out = Converge::at(
        &broker,
        &[
            "publish",
            id_of(&topic),
            "hello world",
            "--attribute",
            "kind=greeting",
            "-a",
            "n=1",
            "--ordering-key",
            "customer-7",
        ],
    )
    .run()
    .await;
    let ids = printed_ids(out.success());
    assert_eq!(ids.len(), 1, "one message id: {out:#?}");

    let received = grpc.pull(&sub, 10).await;
    assert_eq!(data_of(&received), ["hello world"]);
    let message = received[0].message.as_ref().expect("a message");
    assert_eq!(message.message_id, ids[0]);
    assert_eq!(
        message.attributes,
        labels(&[("kind", "greeting"), ("n", "1")])
    );
    assert_eq!(message.ordering_key, "customer-7");
}

#[tokio::test]
async fn publish_reads_one_message_per_line_of_stdin() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("orders");
    let sub = new_subscription_name("work");
    grpc.create_topic(&topic).await;
    grpc.create_subscription(subscription(&sub, &topic)).await;

    let out = Converge::at(&broker, &["publish", &topic, "-a", "source=stdin"])
        .stdin("one\ntwo\n\nthree\r\nfour")
        .run()
        .await;
    let ids = printed_ids(out.success());
    assert_eq!(ids.len(), 4, "empty lines are skipped: {out:#?}");

    let out = Converge::at(&broker, &["--json", "publish", &topic, "-"])
        .stdin("five\nsix\n")
        .run()
        .await;
    let json_ids: Vec<String> = out.json()["messageIds"]
        .as_array()
        .expect("messageIds")
        .iter()
        .map(|v| v.as_str().expect("a string id").to_owned())
        .collect();
    assert_eq!(json_ids.len(), 2);

    let received = grpc.pull(&sub, 100).await;
    assert_eq!(
        data_of(&received),
        ["one", "two", "three", "four", "five", "six"]
    );
    let got_ids: Vec<String> = received
        .iter()
        .map(|r| r.message.as_ref().unwrap().message_id.clone())
        .collect();
    assert_eq!(got_ids, [ids, json_ids].concat(), "the ids printed");
    let first = received[0].message.as_ref().unwrap();
    assert_eq!(first.attributes, labels(&[("source", "stdin")]));

    let out = Converge::at(&broker, &["publish", &topic])
        .stdin("\n\n")
        .run()
        .await;
    out.failure(2, &["nothing to publish"]);
}

#[tokio::test]
async fn pull_max_and_ack_consume_the_messages() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("orders");
    let sub = new_subscription_name("work");
    grpc.create_topic(&topic).await;
    grpc.create_subscription(subscription(&sub, &topic)).await;
    let ids = grpc.publish_data(&topic, &["m1", "m2", "m3"]).await;

    let pulled = Converge::at(&broker, &["--json", "pull", &sub, "--max", "2", "--ack"])
        .run()
        .await
        .json();
    let pulled = pulled.as_array().expect("an array of messages");
    assert_eq!(pulled.len(), 2, "--max 2: {pulled:?}");
    for (got, (data, id)) in pulled.iter().zip([("m1", &ids[0]), ("m2", &ids[1])]) {
        assert_eq!(got["data"], data);
        assert_eq!(got["dataEncoding"], "utf-8");
        assert_eq!(got["messageId"], id.as_str());
        assert_eq!(got["acked"], true);
    }

    let out = Converge::at(&broker, &["pull", &sub, "--max", "10", "--ack"])
        .run()
        .await;
    let lines: Vec<&str> = out.success().lines().collect();
    assert_eq!(lines.len(), 2, "a header and the last message: {lines:?}");
    assert!(lines[0].starts_with("MESSAGE ID"), "{lines:?}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[0], ids[2]);
    assert!(row.contains(&"m3"), "{row:?}");

    let out = Converge::at(&broker, &["pull", &sub, "--max", "10"])
        .run()
        .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "", "{out:#?}");
    assert_eq!(out.stderr, "Listed 0 items.\n");
    // The acks were real: past every lease, nothing comes back.
    broker.advance_clock(Duration::from_secs(11)).await;
    assert!(grpc.pull(&sub, 10).await.is_empty());
}

#[tokio::test]
async fn pull_without_ack_leaves_the_message_to_come_back() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("orders");
    let sub = new_subscription_name("work");
    grpc.create_topic(&topic).await;
    grpc.create_subscription(subscription(&sub, &topic)).await;
    grpc.publish_data(&topic, &["again"]).await;

    let pulled = Converge::at(&broker, &["--json", "pull", &sub])
        .run()
        .await
        .json();
    assert_eq!(pulled[0]["acked"], false);
    broker.advance_clock(Duration::from_secs(11)).await;
    assert_eq!(data_of(&grpc.pull(&sub, 10).await), ["again"]);
}

#[tokio::test]
async fn pull_wait_returns_a_message_published_meanwhile() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("orders");
    let sub = new_subscription_name("work");
    grpc.create_topic(&topic).await;
    grpc.create_subscription(subscription(&sub, &topic)).await;

    let waiting = Converge::at(&broker, &["--json", "pull", &sub, "--wait", "--ack"]).spawn();
    // Gives the pull time to reach the broker before the publish; if it arrives later it finds
    // the message at once, so the assertion below holds either way and cannot flake.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = grpc.publish_data(&topic, &["wake"]).await;
    // The broker's long poll lasts 10 s; an answer only at its end would hold no message.
    let out = tokio::time::timeout(Duration::from_secs(8), waiting.finish())
        .await
        .expect("the waiting pull answered as the message arrived");
    let pulled = out.json();
    assert_eq!(pulled.as_array().map(Vec::len), Some(1), "{pulled}");
    assert_eq!(pulled[0]["data"], "wake");
    assert_eq!(pulled[0]["messageId"], ids[0].as_str());
}

// ---------------------------------------------------------------------------------------------
// Errors and the endpoint

#[tokio::test]
async fn errors_are_one_line_with_the_right_exit_code() {
    let broker = Broker::start();
    let missing = unique_id("missing");

    let out = Converge::at(&broker, &["publish", &missing, "hello"])
        .run()
        .await;
    out.failure(1, &["NOT_FOUND", &missing]);
    let out = Converge::at(&broker, &["pull", &missing]).run().await;
    out.failure(1, &["NOT_FOUND", &missing]);
    let topic = new_topic_name("dup");
    Converge::at(&broker, &["topics", "create", &topic])
        .run()
        .await
        .success();
    let out = Converge::at(&broker, &["topics", "create", &topic])
        .run()
        .await;
    out.failure(1, &["ALREADY_EXISTS", id_of(&topic)]);
    let sub = unique_id("bad-filter");
    let out = Converge::at(
        &broker,
        &[
            "subscriptions",
            "create",
            &sub,
            "--topic",
            &topic,
            "--filter",
            "attributes.x =",
        ],
    )
    .run()
    .await;
    out.failure(1, &["INVALID_ARGUMENT", "filter"]);

    // Usage errors, found by clap or by the command: exit 2, nothing sent.
    let out = Converge::at(&broker, &["topics"]).run().await;
    assert_eq!(out.code, Some(2), "a missing subcommand: {out:#?}");
    assert_eq!(out.stdout, "", "{out:#?}");
    assert!(
        out.stderr.contains("Usage: converge topics"),
        "the group's help: {out:#?}"
    );
    for args in [
        &["topics", "create", "ab"][..],
        &["pull", "work", "--max", "0"],
        &["publish", "orders", "x", "--attribute", "novalue"],
        &[
            "subscriptions",
            "create",
            "work",
            "--topic",
            "orders",
            "--ack-deadline",
            "soon",
        ],
        &["no-such-command"],
    ] {
        let out = Converge::at(&broker, args).run().await;
        assert_eq!(out.code, Some(2), "{args:?}: {out:#?}");
        assert_eq!(out.stdout, "", "{args:?}: {out:#?}");
        assert!(out.stderr.starts_with("error: "), "{args:?}: {out:#?}");
    }
    let out = Converge::at(
        &broker,
        &[
            "subscriptions",
            "create",
            "work",
            "--topic",
            &topic,
            "--max-delivery-attempts",
            "5",
        ],
    )
    .run()
    .await;
    out.failure(2, &["--dead-letter-topic"]);
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error() {
    let dead = dead_endpoint();
    let out = Converge::bare(&["--endpoint", &dead, "topics", "list"])
        .run()
        .await;
    out.failure(
        1,
        &[
            &format!("cannot connect to http://{dead}"),
            "converge serve",
        ],
    );
    let out = Converge::bare(&["topics", "list"])
        .env("CONVERGE_ENDPOINT", "not an address")
        .run()
        .await;
    out.failure(2, &["CONVERGE_ENDPOINT"]);
}

#[tokio::test]
async fn the_endpoint_comes_from_flag_then_environment() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("found");
    grpc.create_topic(&topic).await;
    let dead = dead_endpoint();
    let get = [
        "--project",
        PROJECT,
        "--json",
        "topics",
        "get",
        id_of(&topic),
    ];
    let found = json!({ "name": topic, "labels": {} });
    let addr = broker.addr().to_string();

    let out = Converge::bare(&get)
        .env("PUBSUB_EMULATOR_HOST", &addr)
        .run()
        .await;
    assert_eq!(out.json(), found, "PUBSUB_EMULATOR_HOST alone is used");

    let out = Converge::bare(&get)
        .env("CONVERGE_ENDPOINT", &broker.endpoint())
        .env("PUBSUB_EMULATOR_HOST", &dead)
        .run()
        .await;
    assert_eq!(
        out.json(),
        found,
        "CONVERGE_ENDPOINT wins over PUBSUB_EMULATOR_HOST"
    );

    let out = Converge::bare(&get)
        .env("CONVERGE_ENDPOINT", &addr)
        .env("PUBSUB_EMULATOR_HOST", &addr)
        .run()
        .await;
    assert_eq!(out.json(), found);

    let mut args = vec!["--endpoint", addr.as_str()];
    args.extend(get);
    let out = Converge::bare(&args)
        .env("CONVERGE_ENDPOINT", &dead)
        .env("PUBSUB_EMULATOR_HOST", &dead)
        .run()
        .await;
    assert_eq!(out.json(), found, "--endpoint wins over the environment");

    let out = Converge::bare(&get)
        .env("CONVERGE_ENDPOINT", &dead)
        .env("PUBSUB_EMULATOR_HOST", &addr)
        .run()
        .await;
    out.failure(1, &[&format!("cannot connect to http://{dead}")]);
}

// ---------------------------------------------------------------------------------------------
// converge serve

#[tokio::test]
async fn serve_exits_0_on_sigterm_and_a_restart_keeps_published_messages() {
    let mut broker = Broker::start_on_disk();
    let topic = new_topic_name("durable");
    let sub = new_subscription_name("durable");
    Converge::at(&broker, &["topics", "create", &topic])
        .run()
        .await
        .success();
    Converge::at(
        &broker,
        &["subscriptions", "create", &sub, "--topic", &topic],
    )
    .run()
    .await
    .success();
    let out = Converge::at(&broker, &["publish", &topic, "kept", "-a", "k=v"])
        .run()
        .await;
    let ids = printed_ids(out.success());

    let status = broker.stop().await;
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean shutdown");
    broker.wait_for_log(Duration::from_secs(1), |e| {
        e["message"] == "shutting down" && e["signal"] == "SIGTERM"
    });

    broker.restart().await;
    let pulled = Converge::at(&broker, &["--json", "pull", &sub, "--ack"])
        .run()
        .await
        .json();
    assert_eq!(pulled.as_array().map(Vec::len), Some(1), "{pulled}");
    assert_eq!(pulled[0]["data"], "kept");
    assert_eq!(pulled[0]["attributes"], json!({ "k": "v" }));
    assert_eq!(pulled[0]["messageId"], ids[0].as_str());

    let grpc = broker.grpc().await;
    let later = grpc
        .publish(&topic, vec![message("later")])
        .await
        .expect("publish");
    assert!(
        later[0].parse::<u64>().unwrap() > ids[0].parse::<u64>().unwrap(),
        "message ids keep increasing across restarts"
    );
}

#[tokio::test]
async fn serve_rejects_conflicting_flags_as_usage() {
    let out = Converge::bare(&["serve", "--memory", "--data-dir", "/nonexistent/converge"])
        .run()
        .await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("--memory"), "{out:#?}");
}
