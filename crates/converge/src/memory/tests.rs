//! What is particular to the memory backend (the behaviour shared with the broker is tested in
//! `tests/behaviour.rs` on both): the manual clock, `pull_now`, lease extension on the manual
//! clock, flow control, and handler panics.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::MemoryTransport;
use crate::transport::{
    Code, Disposition, IncomingMessage, MessageHandler, OutgoingMessage, ReceiveOptions,
    SubscriptionConfig, TopicConfig, Transport, TransportError,
};

const TOPIC: &str = "projects/test/topics/orders";
const SUB: &str = "projects/test/subscriptions/orders-worker";
const WAIT: Duration = Duration::from_secs(20);

async fn setup(configure: impl FnOnce(&mut SubscriptionConfig)) -> MemoryTransport {
    let t = MemoryTransport::new();
    t.ensure_topic(&TopicConfig {
        name: TOPIC.into(),
        ..TopicConfig::default()
    })
    .await
    .unwrap();
    let mut config = SubscriptionConfig::new(SUB, TOPIC);
    configure(&mut config);
    t.ensure_subscription(&config).await.unwrap();
    t
}

fn message(data: &str) -> OutgoingMessage {
    OutgoingMessage {
        data: data.to_owned().into(),
        ..OutgoingMessage::default()
    }
}

/// Polls `condition` until it holds or [`WAIT`] passes.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let give_up = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_clock_moves_only_when_advanced() {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let t = MemoryTransport::starting_at(start);
    assert_eq!(t.now(), start);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(t.now(), start);
    t.clone().advance(Duration::from_secs(90)).await.unwrap();
    assert_eq!(t.now(), start + Duration::from_secs(90));
}

#[tokio::test]
async fn publish_time_is_the_manual_clock() {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let t = MemoryTransport::starting_at(start);
    t.ensure_topic(&TopicConfig {
        name: TOPIC.into(),
        ..TopicConfig::default()
    })
    .await
    .unwrap();
    t.ensure_subscription(&SubscriptionConfig::new(SUB, TOPIC))
        .await
        .unwrap();
    t.advance(Duration::from_secs(5)).await.unwrap();
    t.publish(TOPIC, vec![message("a")]).await.unwrap();
    let got = t.pull_now(SUB, 10).await.unwrap();
    assert_eq!(got[0].publish_time, start + Duration::from_secs(5));
}

#[tokio::test]
async fn pull_now_takes_what_is_ready_and_acks_it() {
    let t = setup(|_| {}).await;
    assert!(t.pull_now(SUB, 10).await.unwrap().is_empty());
    let ids = t
        .publish(TOPIC, vec![message("a"), message("b"), message("c")])
        .await
        .unwrap();
    let first = t.pull_now(SUB, 2).await.unwrap();
    let rest = t.pull_now(SUB, 10).await.unwrap();
    let got: Vec<_> = first
        .iter()
        .chain(&rest)
        .map(|m| m.message_id.clone())
        .collect();
    assert_eq!(got, ids);
    // Acknowledged: nothing comes back after the ack deadline.
    t.advance(Duration::from_secs(60)).await.unwrap();
    assert!(t.pull_now(SUB, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn ensure_is_idempotent_and_validates() {
    let t = setup(|_| {}).await;
    // Again: fine, and the existing resources are kept.
    t.ensure_topic(&TopicConfig {
        name: TOPIC.into(),
        ..TopicConfig::default()
    })
    .await
    .unwrap();
    t.ensure_subscription(&SubscriptionConfig::new(SUB, TOPIC))
        .await
        .unwrap();

    let bad_deadline = SubscriptionConfig {
        ack_deadline: Duration::from_secs(5),
        ..SubscriptionConfig::new("projects/test/subscriptions/other", TOPIC)
    };
    let e = t.ensure_subscription(&bad_deadline).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    let missing_topic = SubscriptionConfig::new(
        "projects/test/subscriptions/other",
        "projects/test/topics/nope",
    );
    let e = t.ensure_subscription(&missing_topic).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");

    let bad_filter = SubscriptionConfig {
        filter: "attributes.kind ==".into(),
        ..SubscriptionConfig::new("projects/test/subscriptions/other", TOPIC)
    };
    let e = t.ensure_subscription(&bad_filter).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    let e = t
        .ensure_topic(&TopicConfig {
            name: "topics/no-project".into(),
            ..TopicConfig::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
}

#[tokio::test]
async fn publish_with_several_ordering_keys_keeps_the_callers_order() {
    let t = setup(|c| c.message_ordering = true).await;
    let batch = ["a", "b", "a", ""].map(|key| OutgoingMessage {
        ordering_key: key.into(),
        ..message(&format!("m-{key}"))
    });
    let ids = t.publish(TOPIC, batch.to_vec()).await.unwrap();
    let numbers: Vec<u64> = ids.iter().map(|id| id.parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

/// A handler that records what it is given and answers from `decide`.
fn recording(
    seen: &Arc<Mutex<Vec<IncomingMessage>>>,
    decide: impl Fn(usize) -> Disposition + Send + Sync + 'static,
) -> MessageHandler {
    let seen = seen.clone();
    let decide = Arc::new(decide);
    Arc::new(move |m: IncomingMessage| {
        let n = {
            let mut seen = seen.lock();
            seen.push(m);
            seen.len()
        };
        let answer = decide(n);
        Box::pin(async move { answer })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_handler_keeps_its_lease_until_the_lease_extension_ends() {
    // A real client extends the lease while the handler runs; on the manual clock that means
    // the message is not redelivered past the ack deadline, only past max_lease_extension.
    let t = setup(|_| {}).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let release = CancellationToken::new();
    let handler: MessageHandler = {
        let calls = calls.clone();
        let release = release.clone();
        Arc::new(move |_| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let release = release.clone();
            Box::pin(async move {
                if n == 1 {
                    release.cancelled().await;
                }
                Disposition::Ack
            })
        })
    };
    let shutdown = CancellationToken::new();
    let options = ReceiveOptions {
        max_lease_extension: Duration::from_secs(120),
        ..ReceiveOptions::default()
    };
    let receiver = {
        let t = t.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { t.receive(SUB, options, handler, shutdown).await })
    };
    t.publish(TOPIC, vec![message("slow")]).await.unwrap();
    eventually("the first delivery", || calls.load(Ordering::SeqCst) == 1).await;

    // Three ack deadlines later the handler still holds it.
    t.advance(Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Past the lease extension: delivered again.
    t.advance(Duration::from_secs(91)).await.unwrap();
    eventually("the redelivery", || calls.load(Ordering::SeqCst) == 2).await;

    release.cancel();
    shutdown.cancel();
    receiver.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_nacks() {
    let t = setup(|_| {}).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let handler: MessageHandler = {
        let calls = calls.clone();
        Arc::new(move |_| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move {
                assert!(n > 1, "first delivery panics on purpose");
                Disposition::Ack
            })
        })
    };
    let shutdown = CancellationToken::new();
    let receiver = {
        let t = t.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            t.receive(SUB, ReceiveOptions::default(), handler, shutdown)
                .await
        })
    };
    t.publish(TOPIC, vec![message("boom")]).await.unwrap();
    // No retry policy: the nack redelivers at once, without moving the clock.
    eventually("the redelivery after the panic", || {
        calls.load(Ordering::SeqCst) == 2
    })
    .await;
    shutdown.cancel();
    receiver.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_bounds_the_messages_in_the_handlers_hands() {
    let t = setup(|_| {}).await;
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let handler: MessageHandler = {
        let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
        Arc::new(move |_| {
            let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
            Box::pin(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                Disposition::Ack
            })
        })
    };
    let batch: Vec<_> = (0..20).map(|i| message(&format!("m{i}"))).collect();
    t.publish(TOPIC, batch).await.unwrap();
    let shutdown = CancellationToken::new();
    let options = ReceiveOptions {
        max_outstanding_messages: 3,
        ..ReceiveOptions::default()
    };
    let receiver = {
        let t = t.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { t.receive(SUB, options, handler, shutdown).await })
    };
    eventually("all 20 handled", || done.load(Ordering::SeqCst) == 20).await;
    shutdown.cancel();
    receiver.await.unwrap().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "{peak} messages were handled at once");
    assert!(peak > 1, "handlers never ran concurrently");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_messages_wait_for_their_backoff_on_the_manual_clock() {
    use crate::transport::RetryBackoff;
    let t = setup(|c| {
        c.retry = Some(RetryBackoff {
            minimum: Duration::from_secs(10),
            maximum: Duration::from_secs(600),
        });
    })
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = recording(&seen, |n| {
        if n == 1 {
            Disposition::Nack
        } else {
            Disposition::Ack
        }
    });
    let shutdown = CancellationToken::new();
    let receiver = {
        let t = t.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            t.receive(SUB, ReceiveOptions::default(), handler, shutdown)
                .await
        })
    };
    t.publish(TOPIC, vec![message("x")]).await.unwrap();
    eventually("the first delivery", || seen.lock().len() == 1).await;
    // Real time passing changes nothing on the manual clock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.lock().len(), 1);
    tokio::time::timeout(WAIT, t.idle()).await.unwrap();
    assert_eq!(t.in_flight(), 0);
    t.advance(Duration::from_secs(9)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        seen.lock().len(),
        1,
        "redelivered before the minimum backoff"
    );
    t.advance(Duration::from_secs(1)).await.unwrap();
    eventually("the retry", || seen.lock().len() == 2).await;
    shutdown.cancel();
    receiver.await.unwrap().unwrap();
}

#[tokio::test]
async fn receive_on_a_bad_name_is_invalid() {
    let t = MemoryTransport::new();
    let handler: MessageHandler = Arc::new(|_| Box::pin(async { Disposition::Ack }));
    let e: TransportError = t
        .receive(
            "subscriptions/x",
            ReceiveOptions::default(),
            handler,
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}
