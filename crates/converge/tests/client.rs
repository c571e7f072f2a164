//! The gRPC client against a real converge broker started in this process, over real sockets.
//!
//! The broker runs on a test clock: leases and backoffs are reached by advancing it
//! (`POST /converge/test/clock:advance`), never by sleeping. Waits are for conditions, with a
//! generous timeout; no test asserts how long something took.

mod support;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use converge::client::{
    Client, Endpoint, PublishError, Publisher, PublisherSettings, RetrySettings, Subscriber,
    SubscriberSettings,
};
use converge::transport::{
    Code, DeadLetter, Disposition, IncomingMessage, MessageHandler, OutgoingMessage,
    ReceiveOptions, RetryBackoff, SubscriptionConfig, TopicConfig, Transport, TransportError,
};
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{GetSubscriptionRequest, PullRequest};
use parking_lot::Mutex;
use support::{Broker, WAIT};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Polls `condition` until it holds, failing after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        if tokio::time::Instant::now() >= give_up {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

static NAMES: AtomicUsize = AtomicUsize::new(0);

fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        NAMES.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a topic and a subscription on it (configured by `configure`); their names.
async fn topic_and_subscription(
    client: &Client,
    configure: impl FnOnce(&mut SubscriptionConfig),
) -> anyhow::Result<(String, String)> {
    let topic = format!("projects/test/topics/{}", unique("t"));
    client
        .ensure_topic(&TopicConfig {
            name: topic.clone(),
            ..Default::default()
        })
        .await?;
    let mut config = SubscriptionConfig::new(
        format!("projects/test/subscriptions/{}", unique("s")),
        &topic,
    );
    configure(&mut config);
    client.ensure_subscription(&config).await?;
    Ok((topic, config.name))
}

fn message(data: impl Into<String>) -> OutgoingMessage {
    OutgoingMessage {
        data: data.into().into(),
        ..Default::default()
    }
}

fn text(message: &IncomingMessage) -> String {
    String::from_utf8_lossy(&message.data).into_owned()
}

/// A handler from an async closure.
fn handler<F, Fut>(f: F) -> MessageHandler
where
    F: Fn(IncomingMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Disposition> + Send + 'static,
{
    Arc::new(move |m| Box::pin(f(m)))
}

/// Every delivery a handler saw, in the order the handlers started.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<IncomingMessage>>>);

impl Seen {
    fn record(&self, message: &IncomingMessage) -> usize {
        let mut seen = self.0.lock();
        seen.push(message.clone());
        seen.iter()
            .filter(|m| m.message_id == message.message_id)
            .count()
    }

    fn all(&self) -> Vec<IncomingMessage> {
        self.0.lock().clone()
    }

    fn len(&self) -> usize {
        self.0.lock().len()
    }

    fn count_of(&self, data: &str) -> usize {
        self.0.lock().iter().filter(|m| text(m) == data).count()
    }

    /// A handler that records and acks.
    fn acking(&self) -> MessageHandler {
        let seen = self.clone();
        handler(move |m| {
            seen.record(&m);
            async { Disposition::Ack }
        })
    }

    async fn wait_for(&self, n: usize) -> anyhow::Result<()> {
        eventually(&format!("{n} deliveries were seen"), || async {
            self.len() >= n
        })
        .await
    }
}

/// `receive` running in a task.
struct Receiving {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), TransportError>>,
}

impl Receiving {
    fn start(subscriber: &Subscriber, handler: MessageHandler) -> Self {
        let shutdown = CancellationToken::new();
        let subscriber = subscriber.clone();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { subscriber.receive(handler, token).await });
        Self { shutdown, task }
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .context("receive did not return after shutdown")??
            .context("receive failed")
    }
}

/// Pulls what the subscription would deliver now (unary Pull, returning at once).
async fn pull_now(client: &Client, subscription: &str) -> anyhow::Result<usize> {
    #[allow(deprecated)] // return_immediately is deprecated in the API but honoured.
    let request = PullRequest {
        subscription: subscription.to_owned(),
        return_immediately: true,
        max_messages: 1000,
    };
    Ok(client
        .subscriber_stub()
        .pull(request)
        .await?
        .into_inner()
        .received_messages
        .len())
}

async fn await_all(
    handles: Vec<converge::client::PublishHandle>,
) -> Result<Vec<String>, PublishError> {
    let mut ids = Vec::with_capacity(handles.len());
    for result in futures::future::join_all(handles).await {
        ids.push(result?);
    }
    Ok(ids)
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(WAIT, future)
        .await
        .with_context(|| format!("timed out waiting until {what}"))
}

// ---------------------------------------------------------------------------------------------
// Publishing and receiving

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_publishes_are_all_received_exactly_once() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let client = broker.client().await?;
    let (topic, subscription) = topic_and_subscription(&client, |_| {}).await?;
    let publisher = client.publisher(&topic, PublisherSettings::default());

    let handles: Vec<_> = (0..1000)
        .map(|i| publisher.publish(message(format!("m{i}"))))
        .collect();
    let ids = within("1000 publishes are stored", await_all(handles)).await??;
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 1000, "every message has its own id");

    let seen = Seen::default();
    let subscriber = client.subscriber(&subscription, ReceiveOptions::default());
    let receiving = Receiving::start(&subscriber, seen.acking());
    seen.wait_for(1000).await?;
    receiving.stop().await?;

    let mut by_id: HashMap<String, usize> = HashMap::new();
    for m in seen.all() {
        *by_id.entry(m.message_id).or_default() += 1;
    }
    assert!(by_id.values().all(|&n| n == 1), "each message exactly once");
    let received: HashSet<&String> = by_id.keys().collect();
    assert_eq!(received, distinct, "the ids received are the ids published");
    assert_eq!(subscriber.stats().acked, 1000, "every message was acked");

    // Acks reached the broker: past every lease deadline, nothing is left to deliver.
    broker.advance(Duration::from_secs(700)).await?;
    assert_eq!(pull_now(&client, &subscription).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_sent_when_full_by_count_or_bytes_or_after_the_delay() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let client = broker.client().await?;
    let (topic, subscription) = topic_and_subscription(&client, |_| {}).await?;
    let never = Duration::from_secs(3600);

    // Count: ten messages fill a batch of ten; nothing else would send them for an hour.
    let by_count = client.publisher(
        &topic,
        PublisherSettings {
            max_messages: 10,
            max_delay: never,
            ..Default::default()
        },
    );
    let handles: Vec<_> = (0..10)
        .map(|i| by_count.publish(message(format!("count {i}"))))
        .collect();
    within("a full batch is sent", await_all(handles)).await??;

    // Bytes: the second message does not fit beside the first, so the first goes alone.
    let by_bytes = client.publisher(
        &topic,
        PublisherSettings {
            max_messages: 1000,
            max_bytes: 1000,
            max_delay: never,
            ..Default::default()
        },
    );
    let first = by_bytes.publish(message("a".repeat(600)));
    let second = by_bytes.publish(message("b".repeat(600)));
    within("a batch that would overflow is sent", first).await??;
    // The second waits in its batch until flushed.
    by_bytes.flush().await;
    within("a flushed batch is answered", second).await??;

    // Delay: one message, no size limit reached, goes after max_delay.
    let by_delay = client.publisher(
        &topic,
        PublisherSettings {
            max_messages: 1000,
            max_delay: Duration::from_millis(10),
            ..Default::default()
        },
    );
    within(
        "a batch is sent after its delay",
        by_delay.publish(message("delayed")),
    )
    .await??;

    // Shutdown flushes what was accepted and refuses the rest.
    let lingering = client.publisher(
        &topic,
        PublisherSettings {
            max_delay: never,
            ..Default::default()
        },
    );
    let pending = lingering.publish(message("pending at shutdown"));
    within("shutdown", lingering.shutdown()).await?;
    within("the pending message is stored", pending).await??;
    let refused = lingering.publish(message("too late")).await;
    assert!(
        matches!(refused, Err(PublishError::ShutDown)),
        "{refused:?}"
    );

    // Everything stored is delivered: 10 + 2 + 1 + 1.
    let seen = Seen::default();
    let receiving = Receiving::start(
        &client.subscriber(&subscription, ReceiveOptions::default()),
        seen.acking(),
    );
    seen.wait_for(14).await?;
    receiving.stop().await?;
    assert_eq!(seen.count_of("too late"), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_batches_and_default_batches_both_deliver_everything() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let client = broker.client().await?;
    let (topic, subscription) = topic_and_subscription(&client, |_| {}).await?;
    let single = client.publisher(
        &topic,
        PublisherSettings {
            max_messages: 1,
            ..Default::default()
        },
    );
    let batched = client.publisher(&topic, PublisherSettings::default());
    let mut handles = Vec::new();
    for i in 0..200 {
        handles.push(single.publish(message(format!("single {i}"))));
        handles.push(batched.publish(message(format!("batched {i}"))));
    }
    let ids = within("all publishes", await_all(handles)).await??;
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 400);

    let seen = Seen::default();
    let receiving = Receiving::start(
        &client.subscriber(&subscription, ReceiveOptions::default()),
        seen.acking(),
    );
    seen.wait_for(400).await?;
    receiving.stop().await?;
    let data: HashSet<String> = seen.all().iter().map(text).collect();
    for i in 0..200 {
        assert!(data.contains(&format!("single {i}")), "single {i}");
        assert!(data.contains(&format!("batched {i}")), "batched {i}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_with_an_ordering_key_are_handled_in_publish_order() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let client = broker.client().await?;
    let (topic, subscription) =
        topic_and_subscription(&client, |s| s.message_ordering = true).await?;
    // Small batches: many batches per key, so the one-in-flight-per-key rule is exercised.
    let publisher = client.publisher(
        &topic,
        PublisherSettings {
            max_messages: 3,
            ..Default::default()
        },
    );
    let keys = ["alpha", "beta", "gamma"];
    let per_key = 40;
    let mut handles = Vec::new();
    for i in 0..per_key {
        for key in keys {
            handles.push(publisher.publish(OutgoingMessage {
                data: format!("{key} {i}").into(),
                ordering_key: key.into(),
                ..Default::default()
            }));
        }
    }
    within("all publishes", await_all(handles)).await??;

    let seen = Seen::default();
    let recorder = seen.clone();
    let in_handler: Arc<Mutex<HashSet<String>>> = Arc::default();
    let overlap = Arc::new(AtomicUsize::new(0));
    let (busy, overlapped) = (in_handler.clone(), overlap.clone());
    let receiving = Receiving::start(
        &client.subscriber(&subscription, ReceiveOptions::default()),
        handler(move |m| {
            recorder.record(&m);
            let (busy, overlapped) = (busy.clone(), overlapped.clone());
            async move {
                if !busy.lock().insert(m.ordering_key.clone()) {
                    overlapped.fetch_add(1, Ordering::SeqCst);
                }
                // Give other handlers the chance to run meanwhile.
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                busy.lock().remove(&m.ordering_key);
                Disposition::Ack
            }
        }),
    );
    seen.wait_for(keys.len() * per_key).await?;
    receiving.stop().await?;

    assert_eq!(
        overlap.load(Ordering::SeqCst),
        0,
        "two handlers of one key ran at once"
    );
    for key in keys {
        let order: Vec<String> = seen
            .all()
            .iter()
            .filter(|m| m.ordering_key == key)
            .map(text)
            .collect();
        let expected: Vec<String> = (0..per_key).map(|i| format!("{key} {i}")).collect();
        assert_eq!(order, expected, "order of key {key}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_message_is_delivered_again() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let client = broker.client().await?;
    let (topic, subscription) = topic_and_subscription(&client, |_| {}).await?;
    let seen = Seen::default();
    let recorder = seen.clone();
    let subscriber = client.subscriber(&subscription, ReceiveOptions::default());
    let receiving = Receiving::start(
        &subscriber,
        handler(move |m| {
            let delivery = recorder.record(&m);
            async move {
                if delivery == 1 {
                    Disposition::Nack
                } else {
                    Disposition::Ack
                }
            }
        }),
    );
    client
        .publish(&topic, vec![message("try me twice")])
        .await?;
    seen.wait_for(2).await?;
    eventually("the second delivery is acked", || async {
        subscriber.stats().acked >= 1
    })
    .await?;
    receiving.stop().await?;
    let all = seen.all();
    assert_eq!(
        all[0].message_id, all[1].message_id,
        "the same message again"
    );
    assert_eq!(
        all[0].delivery_attempt, None,
        "no dead-letter policy, no count"
    );
    assert!(subscriber.stats().nacked >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_attempts_are_counted_with_a_dead_letter_policy() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let client = broker.client().await?;
    let dead_letters = format!("projects/test/topics/{}", unique("dlq"));
    client
        .ensure_topic(&TopicConfig {
            name: dead_letters.clone(),
            ..Default::default()
        })
        .await?;
    let (topic, subscription) = topic_and_subscription(&client, |s| {
        s.dead_letter = Some(DeadLetter {
            topic: dead_letters.clone(),
            max_delivery_attempts: 5,
        });
    })
    .await?;
    let seen = Seen::default();
    let recorder = seen.clone();
    let receiving = Receiving::start(
        &client.subscriber(&subscription, ReceiveOptions::default()),
        handler(move |m| {
            let delivery = recorder.record(&m);
            async move {
                if delivery < 3 {
                    Disposition::Nack
                } else {
                    Disposition::Ack
                }
            }
        }),
    );
    client.publish(&topic, vec![message("counted")]).await?;
    seen.wait_for(3).await?;
    receiving.stop().await?;
    let attempts: Vec<Option<u32>> = seen.all().iter().map(|m| m.delivery_attempt).collect();
    assert_eq!(attempts, [Some(1), Some(2), Some(3)]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_bounds_the_handlers_running_at_once() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let client = broker.client().await?;
    let (topic, subscription) = topic_and_subscription(&client, |_| {}).await?;
    let messages: Vec<_> = (0..12).map(|i| message(format!("fc {i}"))).collect();
    client.publish(&topic, messages).await?;

    let seen = Seen::default();
    let recorder = seen.clone();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now, peak) = (running.clone(), most.clone());
    let options = ReceiveOptions {
        max_outstanding_messages: 2,
        ..Default::default()
    };
    let subscriber = client.subscriber(&subscription, options);
    let receiving = Receiving::start(
        &subscriber,
        handler(move |m| {
            recorder.record(&m);
            let (now, peak) = (now.clone(), peak.clone());
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                // Long enough for others to start if flow control let them.
                tokio::time::sleep(Duration::from_millis(30)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Disposition::Ack
            }
        }),
    );
    seen.wait_for(12).await?;
    receiving.stop().await?;
    let peak = most.load(Ordering::SeqCst);
    assert!(peak <= 2, "{peak} handlers ran at once");
    assert_eq!(subscriber.stats().acked, 12);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Leases

/// A handler that holds the message `hold` until `release` is cancelled, and acks the rest.
fn holding_handler(seen: &Seen, hold: &'static str, release: CancellationToken) -> MessageHandler {
    let seen = seen.clone();
    handler(move |m| {
        seen.record(&m);
        let release = release.clone();
        async move {
            if text(&m) == hold {
                release.cancelled().await;
            }
            Disposition::Ack
        }
    })
}

/// Leases of 20 s, extended every 100 ms of real time.
fn fast_leases() -> SubscriberSettings {
    SubscriberSettings {
        lease_deadline: Duration::from_secs(20),
        lease_renewal: Duration::from_millis(100),
        ack_delay: Duration::from_millis(20),
        ..Default::default()
    }
}

/// Waits until the broker has confirmed two more lease extensions than now: the second was
/// sent after the first was answered, so after this call began (extensions go one call at a
/// time).
async fn two_fresh_extensions(subscriber: &Subscriber) -> anyhow::Result<()> {
    let start = subscriber.stats().lease_extensions;
    eventually("two more lease extensions", || async {
        subscriber.stats().lease_extensions >= start + 2
    })
    .await
}

/// A handler runs across 30 s of broker time, more than its 10 s ack deadline and more than
/// the 20 s lease each extension grants: the message is not redelivered, because the lease is
/// extended while the handler runs. The control test below shows that the same setup without
/// extension does redeliver, so this test can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_extended_while_a_handler_runs() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let client = broker.client().await?;
    let (topic, subscription) =
        topic_and_subscription(&client, |s| s.ack_deadline = Duration::from_secs(10)).await?;
    let subscriber = client
        .subscriber(&subscription, ReceiveOptions::default())
        .with_settings(fast_leases());
    let seen = Seen::default();
    let release = CancellationToken::new();
    let receiving = Receiving::start(&subscriber, holding_handler(&seen, "slow", release.clone()));

    client.publish(&topic, vec![message("slow")]).await?;
    seen.wait_for(1).await?;
    // Each step moves the broker 15 s on, only after an extension made since the last step:
    // after two steps the message has been out 30 s, past the 20 s of any single lease.
    for _ in 0..2 {
        two_fresh_extensions(&subscriber).await?;
        broker.advance(Duration::from_secs(15)).await?;
    }
    // A redelivery of an expired lease comes before newer messages: once the marker is
    // received, anything redelivered would have been received too.
    client.publish(&topic, vec![message("marker")]).await?;
    eventually("the marker is handled", || async {
        seen.count_of("marker") == 1
    })
    .await?;
    assert_eq!(
        subscriber.stats().received,
        2,
        "only the two messages were received"
    );
    assert_eq!(
        seen.count_of("slow"),
        1,
        "the held message was not redelivered"
    );

    release.cancel();
    eventually("both are acked", || async { subscriber.stats().acked >= 2 }).await?;
    receiving.stop().await?;
    broker.advance(Duration::from_secs(700)).await?;
    assert_eq!(pull_now(&client, &subscription).await?, 0, "nothing left");
    Ok(())
}

/// The control for the test above: with no lease extension allowed, the same step of broker
/// time does redeliver the held message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_lease_extension_a_long_handler_loses_its_message() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let client = broker.client().await?;
    let (topic, subscription) =
        topic_and_subscription(&client, |s| s.ack_deadline = Duration::from_secs(10)).await?;
    let options = ReceiveOptions {
        max_lease_extension: Duration::ZERO,
        ..Default::default()
    };
    let subscriber = client
        .subscriber(&subscription, options)
        .with_settings(fast_leases());
    let seen = Seen::default();
    let release = CancellationToken::new();
    let receiving = Receiving::start(&subscriber, holding_handler(&seen, "slow", release.clone()));

    client.publish(&topic, vec![message("slow")]).await?;
    seen.wait_for(1).await?;
    broker.advance(Duration::from_secs(15)).await?;
    eventually("the message is redelivered", || async {
        seen.count_of("slow") == 2
    })
    .await?;
    assert_eq!(subscriber.stats().lease_extensions, 0);
    release.cancel();
    receiving.stop().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_running_handlers_and_sends_their_acks() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let client = broker.client().await?;
    let (topic, subscription) = topic_and_subscription(&client, |_| {}).await?;
    let subscriber = client.subscriber(&subscription, ReceiveOptions::default());
    let shutdown = CancellationToken::new();
    let started = CancellationToken::new();
    let finished = Arc::new(AtomicUsize::new(0));
    let (token, on_start, done) = (shutdown.clone(), started.clone(), finished.clone());
    let handler = handler(move |_| {
        let (token, on_start, done) = (token.clone(), on_start.clone(), done.clone());
        async move {
            on_start.cancel();
            // Still running when shutdown begins, and a little after.
            token.cancelled().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            done.fetch_add(1, Ordering::SeqCst);
            Disposition::Ack
        }
    });
    let task = {
        let (subscriber, shutdown) = (subscriber.clone(), shutdown.clone());
        tokio::spawn(async move { subscriber.receive(handler, shutdown).await })
    };
    client.publish(&topic, vec![message("in flight")]).await?;
    within("the handler starts", started.cancelled()).await?;
    shutdown.cancel();
    within("receive returns", task).await???;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        1,
        "receive returned before its handler finished"
    );
    assert_eq!(
        subscriber.stats().acked,
        1,
        "the ack was sent before returning"
    );
    broker.advance(Duration::from_secs(700)).await?;
    assert_eq!(pull_now(&client, &subscription).await?, 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiving_from_an_unknown_subscription_fails_with_not_found() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let client = broker.client().await?;
    let subscriber = client.subscriber(
        "projects/test/subscriptions/does-not-exist",
        ReceiveOptions::default(),
    );
    let seen = Seen::default();
    let result = within(
        "receive gives up",
        subscriber.receive(seen.acking(), CancellationToken::new()),
    )
    .await?;
    let err = result.expect_err("receive must fail");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(!err.is_transient());
    assert_eq!(seen.len(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_missing_topic_fails_with_not_found() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let client = broker.client().await?;
    let topic = "projects/test/topics/does-not-exist";

    let err = client
        .publish(topic, vec![message("lost")])
        .await
        .expect_err("no such topic");
    assert_eq!(err.code(), Code::NotFound, "{err}");

    // With an ordering key, the failure pauses the key until resumed.
    let publisher = client.publisher(topic, PublisherSettings::default());
    let keyed = |data: &str| OutgoingMessage {
        data: data.to_owned().into(),
        ordering_key: "k".into(),
        ..Default::default()
    };
    let first = publisher.publish(keyed("one")).await.expect_err("no topic");
    assert_eq!(first.code(), Code::NotFound, "{first}");
    let paused = publisher.publish(keyed("two")).await.expect_err("paused");
    assert!(
        matches!(&paused, PublishError::OrderingKeyPaused { key } if key == "k"),
        "{paused}"
    );
    // Other keys are not affected.
    let other = publisher
        .publish(message("no key"))
        .await
        .expect_err("no topic");
    assert_eq!(other.code(), Code::NotFound);
    publisher.resume_publish("k");
    let again = publisher
        .publish(keyed("three"))
        .await
        .expect_err("no topic");
    assert_eq!(again.code(), Code::NotFound, "resumed: {again}");

    // A message with nothing in it is refused before it can spoil its batch.
    let empty = publisher
        .publish(OutgoingMessage::default())
        .await
        .expect_err("empty");
    assert_eq!(empty.code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_reported_with_its_address() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let endpoint = Endpoint::parse(&format!("127.0.0.1:{port}"))?;
    let err = Client::connect(endpoint.clone())
        .await
        .expect_err("nobody listens there");
    assert_eq!(err.endpoint, endpoint);
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot connect to http://127.0.0.1:{port}: ")),
        "{text}"
    );
    assert!(
        !text.contains("transport error"),
        "innermost cause only: {text}"
    );

    // Lazily connected, publishing retries UNAVAILABLE until its budget is spent.
    let client = Client::connect_lazy(endpoint)?;
    let publisher: Publisher = client.publisher(
        "projects/test/topics/any",
        PublisherSettings {
            retry: RetrySettings {
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(50),
                multiplier: 2.0,
                total_timeout: Duration::from_millis(500),
            },
            ..Default::default()
        },
    );
    let err = within("the retry budget is spent", publisher.publish(message("x")))
        .await?
        .expect_err("nobody listens");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reconnecting

/// The broker restarts on the same address (with its data): the running `receive` reconnects
/// and goes on, and a publish made while the broker was down is retried until it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_and_publish_carry_on_across_a_broker_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = Broker::start_on("127.0.0.1:0".parse()?, Some(dir.path().to_owned())).await?;
    let addr = broker.addr();
    let client = broker.client().await?;
    let (topic, subscription) = topic_and_subscription(&client, |_| {}).await?;
    let publisher = client.publisher(&topic, PublisherSettings::default());
    let subscriber = client.subscriber(&subscription, ReceiveOptions::default());
    let seen = Seen::default();
    let receiving = Receiving::start(&subscriber, seen.acking());

    within("publish before", publisher.publish(message("before"))).await??;
    eventually("the first message is handled", || async {
        seen.count_of("before") >= 1
    })
    .await?;

    broker.stop().await?;
    // Published while nobody listens (a batch of one goes at once): retried until the broker
    // is back.
    let unbatched = client.publisher(
        &topic,
        PublisherSettings {
            max_messages: 1,
            ..Default::default()
        },
    );
    let during = unbatched.publish(message("during"));
    // The stream broke and one reconnect failed: the broker has been gone a while, long
    // enough for the publish above to have failed once too.
    eventually("the subscriber failed to reconnect once", || async {
        subscriber.stats().reconnects >= 2
    })
    .await?;
    let broker = Broker::start_on(addr, Some(dir.path().to_owned())).await?;
    within("the retried publish is stored", during).await??;
    within("publish after", publisher.publish(message("after"))).await??;
    eventually("both later messages are handled", || async {
        seen.count_of("during") >= 1 && seen.count_of("after") >= 1
    })
    .await?;
    assert!(!receiving.task.is_finished(), "receive kept running");
    receiving.stop().await?;

    // And once more, through the helper that restarts in one step.
    let mut broker = broker.restart().await?;
    let receiving = Receiving::start(&subscriber, seen.acking());
    within("publish after restart", publisher.publish(message("again"))).await??;
    eventually("the last message is handled", || async {
        seen.count_of("again") >= 1
    })
    .await?;
    receiving.stop().await?;
    broker.stop().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Transport

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transport_creates_idempotently_and_maps_the_subscription() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let client = broker.client().await?;
    let transport: Arc<dyn Transport> = Arc::new(client.clone());
    let topic = TopicConfig {
        name: format!("projects/test/topics/{}", unique("t")),
        ..Default::default()
    };
    let dlq = TopicConfig {
        name: format!("projects/test/topics/{}", unique("dlq")),
        ..Default::default()
    };
    transport.ensure_topic(&topic).await?;
    transport.ensure_topic(&topic).await?;
    transport.ensure_topic(&dlq).await?;
    let mut config = SubscriptionConfig::new(
        format!("projects/test/subscriptions/{}", unique("s")),
        &topic.name,
    );
    config.ack_deadline = Duration::from_secs(30);
    config.retry = Some(RetryBackoff {
        minimum: Duration::from_secs(5),
        maximum: Duration::from_secs(50),
    });
    config.dead_letter = Some(DeadLetter {
        topic: dlq.name.clone(),
        max_delivery_attempts: 6,
    });
    config.message_ordering = true;
    config.filter = "attributes.kind = \"order\"".into();
    config.labels.insert("team".into(), "billing".into());
    transport.ensure_subscription(&config).await?;
    transport.ensure_subscription(&config).await?;

    let sub = client
        .subscriber_stub()
        .get_subscription(GetSubscriptionRequest {
            subscription: config.name.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(sub.topic, topic.name);
    assert_eq!(sub.ack_deadline_seconds, 30);
    let retry = sub.retry_policy.context("retry policy")?;
    assert_eq!(retry.minimum_backoff.map(|d| d.seconds), Some(5));
    assert_eq!(retry.maximum_backoff.map(|d| d.seconds), Some(50));
    let dead_letter = sub.dead_letter_policy.context("dead letter policy")?;
    assert_eq!(dead_letter.dead_letter_topic, dlq.name);
    assert_eq!(dead_letter.max_delivery_attempts, 6);
    assert!(sub.enable_message_ordering);
    assert_eq!(sub.filter, config.filter);
    assert_eq!(sub.labels.get("team").map(String::as_str), Some("billing"));

    // Publish answers the ids in message order.
    let messages: Vec<_> = (0..5)
        .map(|i| OutgoingMessage {
            data: format!("p{i}").into(),
            attributes: [("kind".to_owned(), "order".to_owned())].into(),
            ..Default::default()
        })
        .collect();
    let ids = transport.publish(&topic.name, messages).await?;
    assert_eq!(ids.len(), 5);
    let seen = Seen::default();
    let shutdown = CancellationToken::new();
    let receive = {
        let (transport, name, handler, token) = (
            transport.clone(),
            config.name.clone(),
            seen.acking(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            transport
                .receive(&name, ReceiveOptions::default(), handler, token)
                .await
        })
    };
    seen.wait_for(5).await?;
    shutdown.cancel();
    within("receive returns", receive).await???;
    let by_data: HashMap<String, String> = seen
        .all()
        .iter()
        .map(|m| (text(m), m.message_id.clone()))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(by_data.get(&format!("p{i}")), Some(id), "id of p{i}");
    }
    Ok(())
}
