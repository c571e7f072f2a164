//! `cluster-throughput`: publish and end-to-end throughput of one or more converge brokers,
//! measured through the SDK's gRPC client the way an application would use it.
//!
//! It creates a fresh topic and one subscription (through the first endpoint), then runs, at
//! once, N publishers and M StreamingPull subscribers spread round-robin over the endpoints,
//! each on its own connection. A publisher is the SDK's batching [`Publisher`] kept busy: it
//! publishes as soon as fewer than `--max-outstanding` of its messages are unanswered, so its
//! rate is set by how fast the broker acknowledges (durably) what it was sent. Subscribers ack
//! every message.
//!
//! After `--warmup`, it counts over a window of `--duration`: messages whose publish the broker
//! acknowledged within the window, messages delivered within the window, and the end-to-end
//! latency of those deliveries (delivery time minus the moment `publish` was called, carried in
//! an attribute as nanoseconds since one [`Instant`] shared by the whole process: publishers
//! and subscribers live in this process, so no clocks are compared across machines). Every
//! message also carries a key unique to it (publisher and sequence number), so a message
//! delivered twice, whether redelivered or stored twice, counts as a duplicate.
//!
//! Output: one JSON line (the machine-readable result, first on stdout) and one human line.
//! `scripts/bench-postgres.sh` runs it against the embedded store and the PostgreSQL store with
//! one and three nodes.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use converge::client::{Client, Endpoint, Publisher, PublisherSettings, RetrySettings};
use converge::transport::TopicConfig;
use converge::transport::{Disposition, MessageHandler, ReceiveOptions, SubscriptionConfig};
use converge::{Attributes, IncomingMessage, OutgoingMessage, Transport as _};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{
    DeleteSubscriptionRequest, DeleteTopicRequest,
};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Attribute carrying the publish start time, nanoseconds since the process's epoch.
const SENT_AT: &str = "ct-sent-ns";
/// Attribute carrying the message's unique key, `publisher * 2^40 + sequence`.
const KEY: &str = "ct-key";
/// How long the end of a run may take (flushing publishers, stopping subscribers, deleting
/// the topic) before it is abandoned.
const WIND_DOWN: Duration = Duration::from_secs(10);

/// Publish and end-to-end throughput of converge brokers over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Broker addresses (host:port), comma-separated; publishers and subscribers are spread
    /// over them round-robin, the topic and subscription are created through the first
    #[arg(long, value_delimiter = ',', required = true, value_parser = parse_endpoint)]
    endpoints: Vec<Endpoint>,
    /// Concurrent publishers, each with its own connection and batching Publisher
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    publishers: u64,
    /// Concurrent StreamingPull subscribers on the one subscription, each on its own connection
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=1000))]
    subscribers: u64,
    /// Bytes of data per message
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    size: u64,
    /// How long to measure, after the warm-up
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long to run before measuring
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Total publish rate in messages per second, shared evenly by the publishers [default:
    /// as fast as the broker answers]. Below saturation the end-to-end latency is the
    /// broker's; at saturation it is mostly the time messages wait in the backlog.
    #[arg(long)]
    rate: Option<f64>,
    /// Messages a publisher may have unanswered at once
    #[arg(long, default_value_t = 1000)]
    max_outstanding: usize,
    /// Messages per Publish call (the Publisher's batch size)
    #[arg(long, default_value_t = 100)]
    batch_messages: usize,
    /// How long a Publisher waits to fill a batch
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    batch_delay: Duration,
    /// Flow control of each subscriber: messages delivered and not yet acked
    #[arg(long, default_value_t = 1000)]
    flow_messages: usize,
    /// Project of the topic and subscription
    #[arg(long, default_value = "bench")]
    project: String,
    /// A name for this run, repeated in the output (e.g. `embedded`, `postgres-3`)
    #[arg(long, default_value = "run")]
    label: String,
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    Endpoint::parse(s).map_err(|e| e.to_string())
}

/// The timeline of a run, shared by every task.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    /// What [`SENT_AT`] counts from.
    epoch: Instant,
    window_start: Instant,
    window_end: Instant,
}

impl Timeline {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn in_window(&self, at: Instant) -> bool {
        at >= self.window_start && at < self.window_end
    }
}

/// Latencies in microseconds, up to an hour, three significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// What one publisher did.
struct PublisherReport {
    /// Publishes acknowledged within the window.
    acked_in_window: u64,
    /// Publishes acknowledged at any time.
    acked_total: u64,
    /// Publishes that failed at any time.
    errors: u64,
    first_error: Option<String>,
    /// Publish latency (publish call to the broker's answer) of the window's acks.
    latency: Histogram<u64>,
}

/// Keeps one Publisher busy until the window ends: never more than `max_outstanding`
/// messages unanswered, a new one as soon as one is answered, or, with a `rate` (messages per
/// second for this publisher), as soon as its turn on the schedule from the epoch comes.
async fn publish_loop(
    id: u64,
    publisher: Publisher,
    payload: Bytes,
    max_outstanding: usize,
    rate: Option<f64>,
    timeline: Timeline,
) -> PublisherReport {
    let mut report = PublisherReport {
        acked_in_window: 0,
        acked_total: 0,
        errors: 0,
        first_error: None,
        latency: histogram(),
    };
    let mut in_flight = FuturesUnordered::new();
    let mut seq: u64 = 0;
    let end = tokio::time::Instant::from_std(timeline.window_end);
    loop {
        // Messages the schedule allows by now (all of them without a rate).
        let allowed = rate.map_or(u64::MAX, |r| {
            (timeline.epoch.elapsed().as_secs_f64() * r) as u64 + 1
        });
        while in_flight.len() < max_outstanding.max(1) && seq < allowed {
            let started = Instant::now();
            let mut attributes = Attributes::new();
            attributes.insert(SENT_AT.to_owned(), timeline.nanos(started).to_string());
            attributes.insert(KEY.to_owned(), ((id << 40) | seq).to_string());
            seq += 1;
            let handle = publisher.publish(OutgoingMessage {
                data: payload.clone(),
                attributes,
                ordering_key: String::new(),
            });
            in_flight.push(async move { (started, handle.await) });
        }
        let paced = seq >= allowed;
        let next_turn = tokio::time::Instant::from_std(
            timeline.epoch + Duration::from_secs_f64(seq as f64 / rate.unwrap_or(f64::MAX)),
        );
        tokio::select! {
            () = tokio::time::sleep_until(next_turn), if paced => {}
            Some((started, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let answered = Instant::now();
                match result {
                    Ok(_) => {
                        report.acked_total += 1;
                        if timeline.in_window(answered) {
                            report.acked_in_window += 1;
                            report.latency.saturating_record(micros(answered - started));
                        }
                    }
                    Err(e) => {
                        report.errors += 1;
                        report.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            () = tokio::time::sleep_until(end) => break,
        }
    }
    // Outside the window nothing more is counted; let what was sent be answered so that the
    // broker is not left with half-sent batches, but do not wait forever.
    let _ = tokio::time::timeout(WIND_DOWN, async {
        publisher.shutdown().await;
        while let Some((_, result)) = in_flight.next().await {
            match result {
                Ok(_) => report.acked_total += 1,
                Err(_) => report.errors += 1,
            }
        }
    })
    .await;
    report
}

/// What the subscribers saw, shared by their handlers.
struct Deliveries {
    timeline: Timeline,
    /// Keys of every message delivered so far.
    seen: Mutex<HashSet<u64>>,
    /// Deliveries within the window (duplicates included).
    in_window: AtomicU64,
    /// Deliveries of a key seen before, at any time.
    duplicates: AtomicU64,
    /// Deliveries without readable attributes (another producer on the topic?).
    foreign: AtomicU64,
    /// End-to-end latency of the window's deliveries.
    latency: Mutex<Histogram<u64>>,
}

impl Deliveries {
    fn record(&self, message: &IncomingMessage) {
        let now = Instant::now();
        let parse = |name: &str| message.attributes.get(name)?.parse::<u64>().ok();
        let (Some(sent_at), Some(key)) = (parse(SENT_AT), parse(KEY)) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !self.seen.lock().insert(key) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        if self.timeline.in_window(now) {
            self.in_window.fetch_add(1, Ordering::Relaxed);
            let latency = self.timeline.nanos(now).saturating_sub(sent_at) / 1_000;
            self.latency.lock().saturating_record(latency.max(1));
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of messages per second");
    }
    if args.warmup + args.duration > Duration::from_secs(3600) {
        bail!("--warmup plus --duration must stay under an hour");
    }
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("projects/{}/topics/ct-{run}", args.project);
    let subscription = format!("projects/{}/subscriptions/ct-{run}", args.project);

    let admin = connect(&args.endpoints[0]).await?;
    admin
        .ensure_topic(&TopicConfig {
            name: topic.clone(),
            ..Default::default()
        })
        .await
        .context("creating the topic")?;
    let mut config = SubscriptionConfig::new(&subscription, &topic);
    // Long enough that no message is redelivered because a lease ran out under load.
    config.ack_deadline = Duration::from_secs(60);
    admin
        .ensure_subscription(&config)
        .await
        .context("creating the subscription")?;

    // Connect everything before the clock starts.
    let endpoints = &args.endpoints;
    let mut publishers = Vec::new();
    for i in 0..args.publishers {
        let client = connect(&endpoints[i as usize % endpoints.len()]).await?;
        publishers.push(client.publisher(
            &topic,
            PublisherSettings {
                max_messages: args.batch_messages,
                max_bytes: 1_000_000,
                max_delay: args.batch_delay,
                retry: RetrySettings::default(),
            },
        ));
    }
    let mut subscribers = Vec::new();
    for i in 0..args.subscribers {
        let client = connect(&endpoints[i as usize % endpoints.len()]).await?;
        subscribers.push(client.subscriber(
            &subscription,
            ReceiveOptions {
                max_outstanding_messages: args.flow_messages,
                ..ReceiveOptions::default()
            },
        ));
    }

    let epoch = Instant::now();
    let timeline = Timeline {
        epoch,
        window_start: epoch + args.warmup,
        window_end: epoch + args.warmup + args.duration,
    };
    let deliveries = Arc::new(Deliveries {
        timeline,
        seen: Mutex::new(HashSet::new()),
        in_window: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        foreign: AtomicU64::new(0),
        latency: Mutex::new(histogram()),
    });

    let stop = CancellationToken::new();
    let mut subscriber_tasks = Vec::new();
    for subscriber in &subscribers {
        let deliveries = deliveries.clone();
        let handler: MessageHandler = Arc::new(move |message| {
            deliveries.record(&message);
            Box::pin(async { Disposition::Ack })
        });
        let subscriber = subscriber.clone();
        let stop = stop.clone();
        subscriber_tasks.push(tokio::spawn(async move {
            subscriber.receive(handler, stop).await
        }));
    }
    let payload = Bytes::from(vec![b'x'; args.size as usize]);
    let publisher_tasks: Vec<_> = publishers
        .iter()
        .enumerate()
        .map(|(i, publisher)| {
            tokio::spawn(publish_loop(
                i as u64,
                publisher.clone(),
                payload.clone(),
                args.max_outstanding,
                args.rate.map(|r| r / args.publishers as f64),
                timeline,
            ))
        })
        .collect();

    let mut reports = Vec::new();
    for task in publisher_tasks {
        reports.push(task.await.context("a publisher panicked")?);
    }
    // Publishers stop at the end of the window; subscribers are counted up to it as well, so
    // they can stop now.
    tokio::time::sleep_until(tokio::time::Instant::from_std(timeline.window_end)).await;
    stop.cancel();
    let mut subscriber_errors = Vec::new();
    for task in subscriber_tasks {
        match tokio::time::timeout(WIND_DOWN, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => subscriber_errors.push(e.to_string()),
            Ok(Err(e)) => subscriber_errors.push(format!("subscriber task: {e}")),
            Err(_) => subscriber_errors.push("subscriber did not stop in time".to_owned()),
        }
    }

    // Best effort: the broker may be shared, so leave nothing behind.
    let _ = tokio::time::timeout(WIND_DOWN, async {
        let _ = admin
            .subscriber_stub()
            .delete_subscription(DeleteSubscriptionRequest {
                subscription: subscription.clone(),
            })
            .await;
        let _ = admin
            .publisher_stub()
            .delete_topic(DeleteTopicRequest {
                topic: topic.clone(),
            })
            .await;
    })
    .await;

    let window = args.duration.as_secs_f64();
    let published: u64 = reports.iter().map(|r| r.acked_in_window).sum();
    let published_total: u64 = reports.iter().map(|r| r.acked_total).sum();
    let publish_errors: u64 = reports.iter().map(|r| r.errors).sum();
    let first_error = reports.iter().find_map(|r| r.first_error.clone());
    let mut publish_latency = histogram();
    for report in &reports {
        publish_latency.add(&report.latency).expect("same bounds");
    }
    let received = deliveries.in_window.load(Ordering::Relaxed);
    let unique_received = deliveries.seen.lock().len() as u64;
    let duplicates = deliveries.duplicates.load(Ordering::Relaxed);
    let foreign = deliveries.foreign.load(Ordering::Relaxed);
    let e2e = deliveries.latency.lock().clone();
    let ms = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            None
        } else {
            Some(h.value_at_quantile(q) as f64 / 1000.0)
        }
    };
    let result = json!({
        "label": args.label,
        "endpoints": endpoints.iter().map(|e| e.authority().to_owned()).collect::<Vec<_>>(),
        "publishers": args.publishers,
        "subscribers": args.subscribers,
        "size": args.size,
        "warmup_s": args.warmup.as_secs_f64(),
        "duration_s": window,
        "max_outstanding": args.max_outstanding,
        "batch_messages": args.batch_messages,
        "rate": args.rate,
        "published": published,
        "publish_msgs_per_s": published as f64 / window,
        "received": received,
        "receive_msgs_per_s": received as f64 / window,
        "e2e_p50_ms": ms(&e2e, 0.5),
        "e2e_p99_ms": ms(&e2e, 0.99),
        "e2e_max_ms": ms(&e2e, 1.0),
        "publish_p50_ms": ms(&publish_latency, 0.5),
        "publish_p99_ms": ms(&publish_latency, 0.99),
        "duplicates": duplicates,
        "published_total": published_total,
        "received_unique_total": unique_received,
        "backlog_at_end": published_total.saturating_sub(unique_received),
        "publish_errors": publish_errors,
        "first_publish_error": first_error,
        "subscriber_errors": subscriber_errors,
        "foreign_messages": foreign,
    });
    println!("{result}");
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
    println!(
        "{}: publish {:.0} msg/s, receive {:.0} msg/s, end-to-end p50 {} p99 {}, publish p50 {} \
         p99 {}, duplicates {duplicates}, backlog at end {}, publish errors {publish_errors}",
        args.label,
        published as f64 / window,
        received as f64 / window,
        show(ms(&e2e, 0.5)),
        show(ms(&e2e, 0.99)),
        show(ms(&publish_latency, 0.5)),
        show(ms(&publish_latency, 0.99)),
        published_total.saturating_sub(unique_received),
    );
    if let Some(error) = first_error {
        eprintln!("first publish error: {error}");
    }
    for error in &subscriber_errors {
        eprintln!("subscriber error: {error}");
    }
    if published == 0 {
        bail!("nothing was published in the window");
    }
    Ok(())
}

async fn connect(endpoint: &Endpoint) -> anyhow::Result<Client> {
    Client::connect(endpoint.clone())
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}
