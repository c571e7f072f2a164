//! `converge bench publish`: durable publish throughput and latency of a broker over gRPC.
//!
//! It publishes the way a real publisher does: each of N publishers has its own HTTP/2
//! connection, sends a Publish call and waits for its answer (the message ids, given only once
//! the broker made the messages durable) before sending the next. So the figures are what an
//! application sees, not what a pipelining load generator could squeeze out. A subscription is
//! attached to the topic so that the broker does the whole publish path (fan-out included).
//!
//! With `--spawn` the command starts its own broker on a fresh data directory and stops it
//! afterwards, which makes one command line a reproducible measurement.
//!
//! Modules: [`load`] drives the publishers, [`summary`] turns their counts into rates and
//! percentiles, [`spawn`] runs the broker of `--spawn`.

mod load;
mod spawn;
mod summary;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use converge_core::{ProjectId, SubscriptionName, TopicName};
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{
    DeleteSubscriptionRequest, DeleteTopicRequest, Subscription, Topic,
};
use rand::Rng;
use serde_json::json;

use super::{Context, UsageError};
use crate::cli::Global;
use crate::client::{self, ClientError};
use crate::output::{Output, details, human_duration};
use crate::parse::{self, Endpoint, NameArg};
use load::Plan;
use summary::Summary;

/// Most bytes of message data in one Publish call (the API's request limit).
const MAX_REQUEST_BYTES: u64 = 10_000_000;

/// `converge bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Measure publish throughput and latency: N publishers, each on its own connection,
    /// each waiting for every Publish to be acknowledged before sending the next
    Publish(PublishBenchArgs),
}

/// Which broker `--spawn` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpawnMode {
    /// On disk, answering a publish after fdatasync
    Fsync,
    /// On disk, answering a publish after write() to the OS
    OsBuffer,
    /// In memory
    Memory,
}

impl SpawnMode {
    /// The name on the command line, as reports show it.
    fn name(self) -> &'static str {
        match self {
            Self::Fsync => "fsync",
            Self::OsBuffer => "os-buffer",
            Self::Memory => "memory",
        }
    }
}

/// `converge bench publish`.
#[derive(Debug, Args)]
pub struct PublishBenchArgs {
    /// Topic to publish to, created if missing [default: a new, uniquely named topic]
    #[arg(long, value_parser = parse::topic_name)]
    pub topic: Option<NameArg<TopicName>>,
    /// Concurrent publishers, each on its own HTTP/2 connection
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000), value_name = "N")]
    pub publishers: u32,
    /// Bytes of random data per message
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=10_000_000), value_name = "BYTES")]
    pub size: u32,
    /// Messages per Publish call
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000), value_name = "M")]
    pub batch: u32,
    /// How long to measure, after the warm-up
    #[arg(long, default_value = "10s", value_parser = positive_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// How long to publish before measuring (connections, caches and files warm up)
    #[arg(long, default_value = "2s", value_parser = parse::duration, value_name = "DURATION")]
    pub warmup: Duration,
    /// Start a broker of its own (`converge serve` on 127.0.0.1, port chosen by the system, a
    /// fresh data directory) instead of using --endpoint, and stop it afterwards
    #[arg(long, value_enum, value_name = "MODE")]
    pub spawn: Option<SpawnMode>,
    /// Directory in which --spawn makes its temporary data directory (the disk measured)
    /// [default: the system's temporary directory]
    #[arg(long, requires = "spawn", value_name = "DIR")]
    pub spawn_dir: Option<PathBuf>,
    /// Log filter of the spawned broker; its request log is part of the real publish path
    #[arg(
        long,
        requires = "spawn",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub spawn_log_level: String,
}

/// Parses a duration that must be longer than zero (a window to measure in).
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse::duration(s)?;
    if d.is_zero() {
        return Err(format!("\"{s}\": must be longer than zero"));
    }
    Ok(d)
}

/// Rejects combinations clap cannot express: a Publish call larger than the API accepts, and
/// `--spawn` together with `--endpoint`.
fn validate(args: &PublishBenchArgs, endpoint: Option<&Endpoint>) -> Result<(), UsageError> {
    let request = u64::from(args.size) * u64::from(args.batch);
    if request > MAX_REQUEST_BYTES {
        return Err(UsageError(format!(
            "--size {} × --batch {} = {request} bytes per Publish call, above the API's limit of \
             {MAX_REQUEST_BYTES}",
            args.size, args.batch
        )));
    }
    if let (Some(mode), Some(endpoint)) = (args.spawn, endpoint) {
        return Err(UsageError(format!(
            "--spawn {} starts its own broker; drop --endpoint {endpoint}",
            mode.name()
        )));
    }
    Ok(())
}

/// Runs one bench command. It takes the global options rather than a connected [`Context`]
/// because with `--spawn` the broker to connect to does not exist yet.
pub async fn run(global: Global, command: BenchCommand) -> anyhow::Result<()> {
    let BenchCommand::Publish(args) = command;
    crate::logging::init_client();
    validate(&args, global.endpoint.as_ref())?;
    let output = Output::new(global.json);
    let Some(mode) = args.spawn else {
        let endpoint = match global.endpoint {
            Some(endpoint) => endpoint,
            None => super::endpoint_from_env(|key| std::env::var(key).ok())?,
        };
        let report = publish(&endpoint, global.project, output, &args, None).await?;
        return report.finish();
    };
    let broker = spawn::Broker::start(&spawn::Options {
        mode,
        parent_dir: args.spawn_dir.clone(),
        log_filter: args.spawn_log_level.clone(),
    })
    .await?;
    let endpoint = parse::endpoint(&broker.address().to_string()).map_err(anyhow::Error::msg)?;
    let report = publish(&endpoint, global.project, output, &args, Some(mode)).await;
    // Stop the broker whatever happened. A broker that stops badly is worth a warning, but it
    // does not void figures measured while it ran.
    if let Err(e) = broker.stop().await {
        tracing::warn!(error = %e, "the spawned broker did not stop cleanly");
    }
    report?.finish()
}

/// What a run leaves to report once everything is cleaned up.
#[derive(Debug)]
struct Report {
    /// The figures (already printed).
    summary: Summary,
    /// The first failed Publish call's error.
    first_error: Option<String>,
}

impl Report {
    /// Success only if every Publish call succeeded.
    fn finish(self) -> anyhow::Result<()> {
        if self.summary.failures == 0 {
            return Ok(());
        }
        anyhow::bail!(
            "{} Publish call(s) failed; the first: {}",
            self.summary.failures,
            self.first_error.as_deref().unwrap_or("(unknown)")
        )
    }
}

/// Sets up the topic and subscription, runs the publishers, cleans up and prints the summary.
async fn publish(
    endpoint: &Endpoint,
    project: ProjectId,
    output: Output,
    args: &PublishBenchArgs,
    spawned: Option<SpawnMode>,
) -> anyhow::Result<Report> {
    let ctx = Context {
        clients: client::connect(endpoint).await?,
        project,
        output,
    };
    let names = Names::choose(&ctx.project, args.topic.as_ref())?;
    let created_topic = create_topic(&ctx, &names.topic).await?;
    let outcome = subscribe_and_load(&ctx, endpoint, &names, args).await;
    if created_topic {
        delete_topic(&ctx, &names.topic).await;
    }
    let totals = outcome?;
    let summary = Summary::new(&totals, args.size);
    print(&ctx.output, endpoint, spawned, &names.topic, args, &summary)?;
    Ok(Report {
        summary,
        first_error: totals.first_error,
    })
}

/// Attaches the subscription, publishes, and detaches it again.
async fn subscribe_and_load(
    ctx: &Context,
    endpoint: &Endpoint,
    names: &Names,
    args: &PublishBenchArgs,
) -> anyhow::Result<load::Totals> {
    let subscription = Subscription {
        name: names.subscription.to_string(),
        topic: names.topic.to_string(),
        ..Subscription::default()
    };
    tracing::debug!(subscription = %subscription.name, topic = %subscription.topic, "create subscription");
    ctx.clients
        .subscriber
        .clone()
        .create_subscription(subscription)
        .await
        .map_err(ClientError::from)?;
    let plan = Arc::new(Plan {
        topic: names.topic.to_string(),
        size: usize::try_from(args.size)?,
        batch: usize::try_from(args.batch)?,
        warmup: args.warmup,
        duration: args.duration,
    });
    let totals = load::run(endpoint, args.publishers, plan)
        .await
        .map_err(anyhow::Error::from);
    let deleted = ctx
        .clients
        .subscriber
        .clone()
        .delete_subscription(DeleteSubscriptionRequest {
            subscription: names.subscription.to_string(),
        })
        .await;
    if let Err(status) = deleted {
        tracing::warn!(subscription = %names.subscription, error = %ClientError::from(status), "cannot delete the bench subscription");
    }
    totals
}

/// Creates the topic; returns whether it is new (an existing one, named by `--topic`, is used
/// as it is and left in place afterwards).
async fn create_topic(ctx: &Context, topic: &TopicName) -> anyhow::Result<bool> {
    tracing::debug!(topic = %topic, "create topic");
    let created = ctx
        .clients
        .publisher
        .clone()
        .create_topic(Topic {
            name: topic.to_string(),
            ..Topic::default()
        })
        .await;
    match created {
        Ok(_) => Ok(true),
        Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(false),
        Err(status) => Err(ClientError::from(status).into()),
    }
}

/// Deletes the topic the bench created; a failure is worth a warning, not a failed run.
async fn delete_topic(ctx: &Context, topic: &TopicName) {
    let deleted = ctx
        .clients
        .publisher
        .clone()
        .delete_topic(DeleteTopicRequest {
            topic: topic.to_string(),
        })
        .await;
    if let Err(status) = deleted {
        tracing::warn!(topic = %topic, error = %ClientError::from(status), "cannot delete the bench topic");
    }
}

/// The resources of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Names {
    topic: TopicName,
    subscription: SubscriptionName,
}

impl Names {
    /// The given topic or a new unique one, and a unique subscription in the project. The
    /// random suffix lets runs share a broker without tripping over each other's leftovers.
    fn choose(project: &ProjectId, topic: Option<&NameArg<TopicName>>) -> anyhow::Result<Self> {
        let suffix = format!("{:08x}", rand::rng().random::<u32>());
        let topic = match topic {
            Some(name) => name.expand(project)?,
            None => TopicName::new(project.clone(), format!("converge-bench-{suffix}"))?,
        };
        let subscription =
            SubscriptionName::new(project.clone(), format!("converge-bench-{suffix}"))?;
        Ok(Self {
            topic,
            subscription,
        })
    }
}

/// Prints the summary as a two-column table, or one JSON object with `--json`.
fn print(
    output: &Output,
    endpoint: &Endpoint,
    spawned: Option<SpawnMode>,
    topic: &TopicName,
    args: &PublishBenchArgs,
    summary: &Summary,
) -> std::io::Result<()> {
    let broker = spawned.map_or_else(
        || endpoint.to_string(),
        |mode| format!("{endpoint} (spawned, {})", mode.name()),
    );
    let mut json = summary.to_json();
    if let Some(object) = json.as_object_mut() {
        object.insert("endpoint".into(), json!(endpoint.to_string()));
        object.insert("spawn".into(), json!(spawned.map(SpawnMode::name)));
        object.insert("topic".into(), json!(topic.to_string()));
        object.insert("publishers".into(), json!(args.publishers));
        object.insert("messageBytes".into(), json!(args.size));
        object.insert("batch".into(), json!(args.batch));
        object.insert("warmupSeconds".into(), json!(args.warmup.as_secs_f64()));
    }
    output.emit(&json, || {
        let mut fields = vec![
            ("broker", broker),
            ("topic", topic.to_string()),
            (
                "load",
                format!(
                    "{} publisher(s), {} message(s) of {} B per call",
                    args.publishers, args.batch, args.size
                ),
            ),
            (
                "measured",
                format!(
                    "{:.2}s after {} of warm-up",
                    summary.window.as_secs_f64(),
                    human_duration(args.warmup)
                ),
            ),
        ];
        fields.extend(summary.rows());
        details(fields)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<(Global, PublishBenchArgs), clap::Error> {
        let argv = ["converge", "bench", "publish"]
            .into_iter()
            .chain(args.iter().copied());
        let cli = Cli::try_parse_from(argv)?;
        match cli.command {
            Command::Bench(BenchCommand::Publish(args)) => Ok((cli.global, args)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_are_one_publisher_of_single_kib_messages_for_ten_seconds() {
        let (global, args) = parse(&[]).unwrap();
        assert_eq!(
            (args.publishers, args.size, args.batch),
            (1, 1024, 1),
            "{args:?}"
        );
        assert_eq!(args.duration, Duration::from_secs(10));
        assert_eq!(args.warmup, Duration::from_secs(2));
        assert_eq!((args.topic, args.spawn, global.json), (None, None, false));
        assert_eq!(args.spawn_log_level, "info");
    }

    #[test]
    fn every_option_is_parsed() {
        let (global, args) = parse(&[
            "--topic",
            "orders",
            "--publishers",
            "16",
            "--size",
            "100",
            "--batch",
            "50",
            "--duration",
            "1m",
            "--warmup",
            "0s",
            "--spawn",
            "os-buffer",
            "--spawn-dir",
            "/mnt/disk",
            "--json",
        ])
        .unwrap();
        assert!(global.json);
        assert_eq!(args.topic, Some(NameArg::Short("orders".into())));
        assert_eq!((args.publishers, args.size, args.batch), (16, 100, 50));
        assert_eq!(args.duration, Duration::from_secs(60));
        assert_eq!(args.warmup, Duration::ZERO);
        assert_eq!(args.spawn, Some(SpawnMode::OsBuffer));
        assert_eq!(args.spawn_dir, Some(PathBuf::from("/mnt/disk")));
        validate(&args, global.endpoint.as_ref()).unwrap();
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for bad in [
            &["--publishers", "0"][..],
            &["--size", "0"],
            &["--batch", "1001"],
            &["--duration", "0s"],
            &["--duration", "ten"],
            &["--spawn", "disk"],
            &["--spawn-dir", "/tmp"],
            &["--topic", "ab"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn a_call_above_the_request_limit_is_rejected() {
        let (global, args) = parse(&["--size", "10001", "--batch", "1000"]).unwrap();
        let err = validate(&args, global.endpoint.as_ref()).unwrap_err();
        assert!(err.0.contains("10001000 bytes"), "{err}");
        let (global, args) = parse(&["--size", "10000", "--batch", "1000"]).unwrap();
        validate(&args, global.endpoint.as_ref()).unwrap();
    }

    #[test]
    fn spawn_and_endpoint_exclude_each_other() {
        let (global, args) = parse(&["--spawn", "memory", "--endpoint", "h:1"]).unwrap();
        let err = validate(&args, global.endpoint.as_ref()).unwrap_err();
        assert!(err.0.contains("--spawn memory"), "{err}");
    }

    #[test]
    fn names_are_unique_unless_the_topic_is_given() {
        let project = parse::project("p1").unwrap();
        let a = Names::choose(&project, None).unwrap();
        let b = Names::choose(&project, None).unwrap();
        assert_ne!(a.topic, b.topic);
        assert_ne!(a.subscription, b.subscription);
        assert!(
            a.topic
                .to_string()
                .starts_with("projects/p1/topics/converge-bench-"),
            "{}",
            a.topic
        );
        let given = parse::topic_name("orders").unwrap();
        let c = Names::choose(&project, Some(&given)).unwrap();
        assert_eq!(c.topic.to_string(), "projects/p1/topics/orders");
        assert!(
            c.subscription
                .to_string()
                .starts_with("projects/p1/subscriptions/converge-bench-")
        );
    }

    #[test]
    fn a_run_with_failures_fails() {
        let window = Duration::from_secs(1);
        let ok = Report {
            summary: Summary::new(&load::Totals::new(window), 1),
            first_error: None,
        };
        assert!(ok.finish().is_ok());
        let mut totals = load::Totals::new(window);
        for _ in 0..3 {
            totals.failure("UNAVAILABLE: gone".into());
        }
        let failed = Report {
            summary: Summary::new(&totals, 1),
            first_error: totals.first_error,
        };
        let err = failed.finish().unwrap_err().to_string();
        assert!(err.starts_with("3 Publish call(s) failed"), "{err}");
        assert!(err.ends_with("UNAVAILABLE: gone"), "{err}");
    }

    /// Waits (bounded) until the broker's store is open, as `/readyz` reports.
    async fn wait_ready(addr: std::net::SocketAddr) {
        for _ in 0..200 {
            let ready = reqwest::get(format!("http://{addr}/readyz")).await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the broker at {addr} never became ready");
    }

    #[tokio::test]
    async fn a_short_run_publishes_counts_and_cleans_up() {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = converge_server::ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..converge_server::ServerConfig::default()
        };
        let (addr, server) = converge_server::start(config, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        wait_ready(addr).await;
        let endpoint = parse::endpoint(&addr.to_string()).unwrap();
        let (global, args) = parse(&[
            "--publishers",
            "2",
            "--batch",
            "3",
            "--size",
            "10",
            "--duration",
            "300ms",
            "--warmup",
            "50ms",
        ])
        .unwrap();
        let report = publish(&endpoint, global.project, Output::new(true), &args, None)
            .await
            .unwrap();
        let summary = &report.summary;
        assert_eq!(summary.failures, 0, "{:?}", report.first_error);
        assert!(summary.calls > 0, "{summary:?}");
        assert_eq!(summary.messages, summary.calls * 3);
        assert_eq!(summary.bytes, summary.messages * 10);
        assert_eq!(summary.window, Duration::from_millis(300));
        assert!(summary.latency.is_some());

        let clients = client::connect(&endpoint).await.unwrap();
        let topics = clients
            .publisher
            .clone()
            .list_topics(
                googleapis_tonic_google_pubsub_v1::google::pubsub::v1::ListTopicsRequest {
                    project: "projects/converge".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .into_inner();
        assert!(topics.topics.is_empty(), "left behind: {:?}", topics.topics);
        let subscriptions = clients
            .subscriber
            .clone()
            .list_subscriptions(
                googleapis_tonic_google_pubsub_v1::google::pubsub::v1::ListSubscriptionsRequest {
                    project: "projects/converge".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .into_inner();
        assert!(
            subscriptions.subscriptions.is_empty(),
            "left behind: {:?}",
            subscriptions.subscriptions
        );
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
