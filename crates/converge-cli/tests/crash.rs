//! Nothing acknowledged is lost by `kill -9`.
//!
//! The broker answers a publish only once its messages are durable; everything else (leases,
//! indexes) may be rebuilt after a crash, so redelivery is allowed and loss is not. This test
//! checks that promise the hard way, many times: concurrent publishers load a broker on a data
//! directory, the broker is killed with SIGKILL at a random moment mid-load, restarted on the
//! same directory, and every payload whose publish was answered OK must then be delivered, with
//! the message id the publish returned.
//!
//! Cycles: 20 by default, `CONVERGE_CRASH_CYCLES=N` for more. Run with `--nocapture` (or
//! `cargo nextest run --no-capture`) to see the summary.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pubsub::{self, PubsubMessage};
use common::{Broker, Grpc, ack_ids, new_subscription_name, new_topic_name, subscription};
use rand::Rng as _;

/// Cycles when `CONVERGE_CRASH_CYCLES` is not set: enough to hit many points of the write path,
/// few enough for CI on 2 cores.
const DEFAULT_CYCLES: usize = 20;

/// Concurrent publishers, each on its own connection.
const PUBLISHERS: usize = 4;

/// Publishes carry 1 to this many messages, so that batches of several records are cut too.
const MAX_BATCH: usize = 5;

/// How long the load runs before the kill, in milliseconds: drawn at random in this range.
const LOAD_MILLIS: std::ops::RangeInclusive<u64> = 30..=300;

/// How long the publishers may take to notice the kill before the test calls them stuck.
const PUBLISHER_EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest pull while verifying.
const PULL_BATCH: i32 = 1000;

/// What the publishers of one cycle did.
#[derive(Debug, Default)]
struct Load {
    /// Payloads of every publish attempted, answered or not.
    attempted: HashSet<String>,
    /// Payload -> message id of every message whose publish was answered OK.
    acknowledged: HashMap<String, String>,
    /// Publish requests answered OK.
    requests: usize,
}

/// What the test saw over all cycles.
#[derive(Debug, Default)]
struct Totals {
    requests: usize,
    acknowledged: usize,
    /// Distinct payloads delivered after a restart.
    verified: usize,
    /// Deliveries of a payload already delivered (and acknowledged) before: allowed.
    duplicates: usize,
    /// Payloads whose publish was cut by the kill but which were durable anyway: allowed.
    unacknowledged_survivors: usize,
    restarts: Vec<Duration>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_loses_no_acknowledged_message() {
    let cycles = cycles();
    let mut broker = Broker::start_on_disk();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("crash");
    let sub = new_subscription_name("crash");
    grpc.create_topic(&topic).await;
    // A long lease, so that a slow verification never sees its own pulls expire and redeliver.
    grpc.create_subscription(pubsub::Subscription {
        ack_deadline_seconds: 600,
        ..subscription(&sub, &topic)
    })
    .await;
    drop(grpc);

    let mut attempted_ever: HashSet<String> = HashSet::new();
    let mut delivered: HashMap<String, String> = HashMap::new();
    let mut totals = Totals::default();
    for cycle in 0..cycles {
        let load = load_until_killed(&mut broker, &topic, cycle).await;
        totals.restarts.push(broker.restart().await);
        let grpc = broker.grpc().await;

        attempted_ever.extend(load.attempted.iter().cloned());
        totals.requests += load.requests;
        totals.acknowledged += load.acknowledged.len();
        for (payload, id) in drain(&grpc, &sub).await {
            assert!(
                attempted_ever.contains(&payload),
                "cycle {cycle}: delivered payload {payload:?} (id {id}) was never published"
            );
            if let Some(first_id) = delivered.get(&payload) {
                assert_eq!(
                    &id, first_id,
                    "cycle {cycle}: {payload:?} came back with another id"
                );
                totals.duplicates += 1;
                continue;
            }
            match load.acknowledged.get(&payload) {
                Some(acked_id) => assert_eq!(
                    &id, acked_id,
                    "cycle {cycle}: {payload:?} was acknowledged with another id"
                ),
                None => totals.unacknowledged_survivors += 1,
            }
            delivered.insert(payload, id);
        }
        let mut lost: Vec<&String> = load
            .acknowledged
            .keys()
            .filter(|p| !delivered.contains_key(*p))
            .collect();
        lost.sort();
        assert!(
            lost.is_empty(),
            "cycle {cycle}: {} of {} acknowledged messages were lost after kill -9, e.g. {:?}",
            lost.len(),
            load.acknowledged.len(),
            &lost[..lost.len().min(10)]
        );
    }
    totals.verified = delivered.len();
    assert!(
        totals.acknowledged > 0,
        "no publish was ever acknowledged: the test checked nothing"
    );
    print_summary(cycles, &totals);
}

/// Number of cycles: `CONVERGE_CRASH_CYCLES`, else [`DEFAULT_CYCLES`].
fn cycles() -> usize {
    match std::env::var("CONVERGE_CRASH_CYCLES") {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|e| panic!("CONVERGE_CRASH_CYCLES={value:?}: {e}")),
        Err(_) => DEFAULT_CYCLES,
    }
}

/// Runs [`PUBLISHERS`] publishers against the broker, kills it with SIGKILL after a random
/// moment, waits for every publisher to notice, and returns what they recorded.
async fn load_until_killed(broker: &mut Broker, topic: &str, cycle: usize) -> Load {
    let load = Arc::new(Mutex::new(Load::default()));
    let killed = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::with_capacity(PUBLISHERS);
    for publisher in 0..PUBLISHERS {
        let grpc = broker.grpc().await;
        let (topic, load, killed) = (topic.to_owned(), load.clone(), killed.clone());
        publishers.push(tokio::spawn(async move {
            publish_until_broken(
                &grpc,
                &topic,
                &format!("c{cycle}-p{publisher}"),
                &load,
                &killed,
            )
            .await;
        }));
    }
    let millis = rand::rng().random_range(LOAD_MILLIS);
    tokio::time::sleep(Duration::from_millis(millis)).await;
    killed.store(true, Ordering::SeqCst);
    broker.kill9();
    for publisher in publishers {
        tokio::time::timeout(PUBLISHER_EXIT_TIMEOUT, publisher)
            .await
            .expect("a publisher did not notice the kill")
            .expect("a publisher panicked");
    }
    std::mem::take(&mut *load.lock().expect("a publisher panicked holding the load"))
}

/// Publishes batches of unique payloads (`{prefix}-b{batch}-m{index}`) until a publish fails,
/// recording every attempt and every acknowledged message. A failure before the kill is a bug.
async fn publish_until_broken(
    grpc: &Grpc,
    topic: &str,
    prefix: &str,
    load: &Mutex<Load>,
    killed: &AtomicBool,
) {
    for batch in 0usize.. {
        let size = 1 + batch % MAX_BATCH;
        let payloads: Vec<String> = (0..size)
            .map(|i| format!("{prefix}-b{batch}-m{i}"))
            .collect();
        load.lock()
            .unwrap()
            .attempted
            .extend(payloads.iter().cloned());
        let messages: Vec<PubsubMessage> = payloads.iter().map(|p| common::message(p)).collect();
        match grpc.publish(topic, messages).await {
            Ok(ids) => {
                assert_eq!(ids.len(), payloads.len(), "one id per message");
                let mut load = load.lock().unwrap();
                load.requests += 1;
                load.acknowledged.extend(payloads.into_iter().zip(ids));
            }
            Err(status) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "a publish failed while the broker was alive: {status:?}"
                );
                return;
            }
        }
    }
}

/// Pulls and acknowledges everything the subscription holds; returns (payload, message id) of
/// each delivery, duplicates included.
async fn drain(grpc: &Grpc, sub: &str) -> Vec<(String, String)> {
    let mut deliveries = Vec::new();
    loop {
        let received = grpc.pull(sub, PULL_BATCH).await;
        if received.is_empty() {
            return deliveries;
        }
        grpc.ack(sub, ack_ids(&received)).await;
        for r in received {
            let message = r.message.expect("a received message has a message");
            let payload = String::from_utf8(message.data).expect("payloads are UTF-8");
            deliveries.push((payload, message.message_id));
        }
    }
}

/// Prints what the test did, for `--nocapture` runs and CI logs.
fn print_summary(cycles: usize, totals: &Totals) {
    let restarts = &totals.restarts;
    let slowest = restarts.iter().max().copied().unwrap_or_default();
    let mean =
        restarts.iter().sum::<Duration>() / u32::try_from(restarts.len().max(1)).unwrap_or(1);
    println!("crash test: {cycles} kill -9 cycles");
    println!(
        "  publishes acknowledged: {} requests, {} messages",
        totals.requests, totals.acknowledged
    );
    println!("  messages verified after restarts: {}", totals.verified);
    println!(
        "  duplicates (redelivered after a crash, allowed): {}",
        totals.duplicates
    );
    println!(
        "  unacknowledged publishes that survived (allowed): {}",
        totals.unacknowledged_survivors
    );
    println!("  restart to ready: mean {mean:?}, slowest {slowest:?}");
    let each: Vec<String> = restarts
        .iter()
        .map(|d| format!("{}ms", d.as_millis()))
        .collect();
    println!("  restart to ready, per cycle: {}", each.join(" "));
}
