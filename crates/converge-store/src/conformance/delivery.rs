//! Delivery: publish, pull, leases, acks and nacks, retries, dead-lettering, ordering, filters,
//! idempotency keys, exactly-once and long polls.

use std::time::Duration;

use converge_core::DeadLetterPolicy;
use converge_core::retry::RetrySchedule;

use super::Harness;
use super::support::{data, msg, msg_with, pull_now, sub_name, subscription, topic, topic_name};

/// A subscription sees what was published after it, every subscription gets its own copy,
/// a lease hides a message until it expires, and an acknowledged message never comes back.
pub async fn publish_pull_ack_and_fan_out(h: &mut Harness) {
    let s = &*h.store;
    s.create_topic(topic("orders")).await.unwrap();
    s.publish(&topic_name("orders"), vec![msg("before")])
        .await
        .unwrap();
    s.create_subscription(subscription("sub-a", "orders"))
        .await
        .unwrap();
    s.create_subscription(subscription("sub-b", "orders"))
        .await
        .unwrap();
    let ids = s
        .publish(&topic_name("orders"), vec![msg("one"), msg("two")])
        .await
        .unwrap();
    assert!(ids[0] < ids[1]);

    let a = pull_now(s, "sub-a").await;
    assert_eq!(
        data(&a),
        ["one", "two"],
        "a subscription sees only what was published after it"
    );
    assert_eq!(a[0].message.id, ids[0]);
    assert_eq!(
        a[0].delivery_attempt, 0,
        "no dead-letter policy: attempt is 0"
    );
    assert_eq!(data(&pull_now(s, "sub-b").await), ["one", "two"], "fan-out");
    assert!(
        pull_now(s, "sub-a").await.is_empty(),
        "leased messages are not delivered twice"
    );

    s.acknowledge(
        &sub_name("sub-a"),
        &[a[0].ack_id.clone(), a[1].ack_id.clone()],
    )
    .await
    .unwrap();
    h.clock.advance(Duration::from_secs(11));
    assert!(
        pull_now(s, "sub-a").await.is_empty(),
        "acknowledged messages never come back"
    );
    assert_eq!(
        data(&pull_now(s, "sub-b").await),
        ["one", "two"],
        "expired leases are delivered again"
    );
}

/// A nack redelivers at once without a retry policy and after the backoff with one; an expired
/// lease waits for the backoff too, and an ack id of an earlier delivery acknowledges nothing.
pub async fn nack_and_retry_backoff(h: &mut Harness) {
    let s = &*h.store;
    s.create_topic(topic("top1")).await.unwrap();
    s.create_subscription(subscription("now", "top1"))
        .await
        .unwrap();
    let mut backoff = subscription("later", "top1");
    backoff.retry = Some(
        RetrySchedule::from_policy(
            Some(Duration::from_secs(10)),
            Some(Duration::from_secs(600)),
        )
        .unwrap(),
    );
    s.create_subscription(backoff).await.unwrap();
    s.publish(&topic_name("top1"), vec![msg("m")])
        .await
        .unwrap();

    let got = pull_now(s, "now").await;
    s.modify_ack_deadline(&sub_name("now"), &[got[0].ack_id.clone()], Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        data(&pull_now(s, "now").await),
        ["m"],
        "no retry policy: a nack redelivers at once"
    );

    let got = pull_now(s, "later").await;
    s.modify_ack_deadline(&sub_name("later"), &[got[0].ack_id.clone()], Duration::ZERO)
        .await
        .unwrap();
    assert!(
        pull_now(s, "later").await.is_empty(),
        "with a retry policy the message waits"
    );
    h.clock.advance(Duration::from_secs(10));
    assert_eq!(
        data(&pull_now(s, "later").await),
        ["m"],
        "and comes back after the backoff"
    );
    // A stale ack id (from the first delivery) has no effect.
    s.acknowledge(&sub_name("later"), &[got[0].ack_id.clone()])
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(11));
    assert!(
        pull_now(s, "later").await.is_empty(),
        "an expired lease also waits for the backoff"
    );
    h.clock.advance(Duration::from_secs(600));
    assert_eq!(
        data(&pull_now(s, "later").await),
        ["m"],
        "a stale ack did not acknowledge"
    );
}

/// `modify_ack_deadline` extends a lease past the subscription's ack deadline, and every
/// delivery has its own ack id.
pub async fn extends_and_shortens_leases(h: &mut Harness) {
    let s = &*h.store;
    s.create_topic(topic("top1")).await.unwrap();
    s.create_subscription(subscription("sub1", "top1"))
        .await
        .unwrap();
    s.publish(&topic_name("top1"), vec![msg("m")])
        .await
        .unwrap();
    let got = pull_now(s, "sub1").await;
    s.modify_ack_deadline(
        &sub_name("sub1"),
        &[got[0].ack_id.clone()],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    h.clock.advance(Duration::from_secs(30));
    assert!(
        pull_now(s, "sub1").await.is_empty(),
        "an extended lease holds past the ack deadline"
    );
    h.clock.advance(Duration::from_secs(31));
    let again = pull_now(s, "sub1").await;
    assert_eq!(data(&again), ["m"]);
    assert_ne!(
        again[0].ack_id, got[0].ack_id,
        "each delivery has its own ack id"
    );
}

/// After `max_delivery_attempts` nacks a message moves to the dead-letter topic, attempts counted
/// from 1, with its attributes and Pub/Sub's source attributes added.
pub async fn dead_letters_after_max_attempts(h: &mut Harness) {
    let s = &*h.store;
    s.create_topic(topic("work")).await.unwrap();
    s.create_topic(topic("dead")).await.unwrap();
    s.create_subscription(subscription("dead-sub", "dead"))
        .await
        .unwrap();
    let mut sub = subscription("worker", "work");
    sub.dead_letter_policy = Some(DeadLetterPolicy::new(topic_name("dead"), 5).unwrap());
    s.create_subscription(sub).await.unwrap();
    s.publish(
        &topic_name("work"),
        vec![msg_with("poison", &[("k", "v")], "")],
    )
    .await
    .unwrap();

    for attempt in 1..=5 {
        let got = pull_now(s, "worker").await;
        assert_eq!(got.len(), 1, "attempt {attempt}");
        assert_eq!(got[0].delivery_attempt, attempt);
        s.modify_ack_deadline(
            &sub_name("worker"),
            &[got[0].ack_id.clone()],
            Duration::ZERO,
        )
        .await
        .unwrap();
    }
    assert!(
        pull_now(s, "worker").await.is_empty(),
        "after 5 attempts the message left the subscription"
    );
    let dead = s
        .pull(&sub_name("dead-sub"), 10, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(data(&dead), ["poison"]);
    let attrs = &dead[0].message.attributes;
    assert_eq!(attrs["k"], "v");
    assert_eq!(attrs["CloudPubSubDeadLetterSourceSubscription"], "worker");
    assert_eq!(attrs["CloudPubSubDeadLetterSourceDeliveryCount"], "5");
}

/// Messages a filter rejects are never backlog, not even before the first pull; what it accepts
/// is backlog until acknowledged.
pub async fn filters_acknowledge_what_they_reject(h: &mut Harness) {
    let s = &*h.store;
    s.create_topic(topic("top1")).await.unwrap();
    let mut sub = subscription("sub-eu", "top1");
    sub.filter = r#"attributes.region = "eu""#.into();
    s.create_subscription(sub).await.unwrap();
    s.publish(
        &topic_name("top1"),
        vec![
            msg_with("us", &[("region", "us")], ""),
            msg_with("eu", &[("region", "eu")], ""),
            msg("none"),
        ],
    )
    .await
    .unwrap();
    let stats = s.subscription_stats().await.unwrap();
    assert_eq!(
        stats[0].backlog, 1,
        "rejected messages are not backlog, even before a pull"
    );
    assert_eq!(data(&pull_now(s, "sub-eu").await), ["eu"]);
    let stats = s.subscription_stats().await.unwrap();
    assert_eq!(
        stats[0].backlog, 1,
        "the delivered message is backlog until acknowledged"
    );
}

/// With ordering, one message per key is out at a time, in publish order, and a nack redelivers
/// the head of its key rather than what follows it.
pub async fn ordering_keys_deliver_one_at_a_time_in_order(h: &mut Harness) {
    let s = &*h.store;
    s.create_topic(topic("top1")).await.unwrap();
    let mut sub = subscription("ordered", "top1");
    sub.enable_message_ordering = true;
    s.create_subscription(sub).await.unwrap();
    s.publish(
        &topic_name("top1"),
        vec![msg_with("a1", &[], "a"), msg_with("a2", &[], "a")],
    )
    .await
    .unwrap();
    s.publish(
        &topic_name("top1"),
        vec![msg_with("b1", &[], "b"), msg_with("a3", &[], "a")],
    )
    .await
    .unwrap();
    s.publish(&topic_name("top1"), vec![msg("free")])
        .await
        .unwrap();

    let first = pull_now(s, "ordered").await;
    assert_eq!(
        data(&first),
        ["a1", "b1", "free"],
        "one message per key in flight"
    );
    let a1 = first[0].ack_id.clone();
    s.modify_ack_deadline(&sub_name("ordered"), &[a1], Duration::ZERO)
        .await
        .unwrap();
    let again = pull_now(s, "ordered").await;
    assert_eq!(
        data(&again),
        ["a1"],
        "a nack redelivers the head of the key, not what follows"
    );
    s.acknowledge(&sub_name("ordered"), &[again[0].ack_id.clone()])
        .await
        .unwrap();
    let next = pull_now(s, "ordered").await;
    assert_eq!(data(&next), ["a2"]);
    s.acknowledge(&sub_name("ordered"), &[next[0].ack_id.clone()])
        .await
        .unwrap();
    assert_eq!(data(&pull_now(s, "ordered").await), ["a3"]);
}

/// A repeated `converge-idempotency-key` within the topic's window returns the original id and
/// stores nothing; after the window (and maintenance) the key is new again.
pub async fn idempotency_keys_store_a_message_once(h: &mut Harness) {
    let s = &*h.store;
    s.create_topic(topic("top1")).await.unwrap();
    s.create_subscription(subscription("sub1", "top1"))
        .await
        .unwrap();
    let keyed = |d: &str| msg_with(d, &[("converge-idempotency-key", "order-42")], "");
    let first = s
        .publish(&topic_name("top1"), vec![keyed("x")])
        .await
        .unwrap();
    let again = s
        .publish(&topic_name("top1"), vec![keyed("x"), keyed("x")])
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![first[0], first[0]],
        "a repeated key returns the original id"
    );
    assert_eq!(
        pull_now(s, "sub1").await.len(),
        1,
        "and delivers nothing new"
    );
    h.clock.advance(Duration::from_secs(3601));
    s.maintain().await.unwrap();
    let later = s
        .publish(&topic_name("top1"), vec![keyed("x")])
        .await
        .unwrap();
    assert_ne!(
        later[0], first[0],
        "outside the window the key is new again"
    );
}

/// `PullOptions`: `max_bytes` bounds a pull (the first message always goes), and `ack_deadline`
/// sets the lease instead of the subscription's.
pub async fn pull_options_bound_bytes_and_set_the_lease(h: &mut Harness) {
    use converge_core::PullOptions;
    let s = &*h.store;
    s.create_topic(topic("top1")).await.unwrap();
    s.create_subscription(subscription("sub1", "top1"))
        .await
        .unwrap();
    let big = "x".repeat(600);
    s.publish(&topic_name("top1"), vec![msg(&big), msg(&big), msg(&big)])
        .await
        .unwrap();
    let options = PullOptions {
        max_messages: 10,
        max_bytes: Some(1000),
        wait: Duration::ZERO,
        ack_deadline: Some(Duration::from_secs(60)),
    };
    let first = s
        .pull_with(&sub_name("sub1"), options.clone())
        .await
        .unwrap();
    assert_eq!(
        first.len(),
        1,
        "a second 600-byte message would pass 1000 bytes"
    );
    let tiny = PullOptions {
        max_bytes: Some(10),
        ..options.clone()
    };
    assert_eq!(
        s.pull_with(&sub_name("sub1"), tiny).await.unwrap().len(),
        1,
        "the first message always goes"
    );
    h.clock.advance(Duration::from_secs(30));
    let rest = s
        .pull_with(
            &sub_name("sub1"),
            PullOptions {
                max_bytes: None,
                ..options
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rest.len(),
        1,
        "leases of 60 s still hold after 30 s; one message was left"
    );
}

/// One call may name a message twice, with the ack id of an expired lease and the one of its
/// redelivery, in either order: only the current one applies, and the message is gone.
pub async fn an_ack_call_naming_a_message_twice_applies_the_current_lease(h: &mut Harness) {
    use converge_core::AckOutcome;
    let s = &*h.store;
    s.create_topic(topic("top1")).await.unwrap();
    let mut sub = subscription("sub1", "top1");
    sub.exactly_once = true;
    s.create_subscription(sub).await.unwrap();
    s.publish(&topic_name("top1"), vec![msg("a"), msg("b")])
        .await
        .unwrap();
    let first = pull_now(s, "sub1").await;
    h.clock.advance(Duration::from_secs(11));
    let again = pull_now(s, "sub1").await;
    assert_eq!(data(&first), ["a", "b"]);
    assert_eq!(
        data(&again),
        ["a", "b"],
        "redelivered after the lease expired"
    );
    let ids = [
        first[0].ack_id.clone(),
        again[0].ack_id.clone(),
        again[1].ack_id.clone(),
        first[1].ack_id.clone(),
    ];
    let outcomes = s.acknowledge(&sub_name("sub1"), &ids).await.unwrap();
    assert_eq!(
        outcomes,
        [
            AckOutcome::Invalid,
            AckOutcome::Applied,
            AckOutcome::Applied,
            AckOutcome::Invalid
        ]
    );
    h.clock.advance(Duration::from_secs(11));
    assert!(pull_now(s, "sub1").await.is_empty(), "both acks held");
}

/// With exactly-once delivery, acks and deadline changes of expired, repeated or garbage ack ids
/// are reported `Invalid`; without it, a late ack still lands when nobody took the message since.
pub async fn exactly_once_reports_expired_and_stale_ack_ids(h: &mut Harness) {
    use converge_core::{AckId, AckOutcome};
    let s = &*h.store;
    s.create_topic(topic("top1")).await.unwrap();
    let mut sub = subscription("sub1", "top1");
    sub.exactly_once = true;
    s.create_subscription(sub).await.unwrap();
    s.create_subscription(subscription("lenient", "top1"))
        .await
        .unwrap();
    s.publish(&topic_name("top1"), vec![msg("a"), msg("b")])
        .await
        .unwrap();

    let got = pull_now(s, "sub1").await;
    let outcomes = s
        .acknowledge(
            &sub_name("sub1"),
            &[got[0].ack_id.clone(), AckId("garbage".into())],
        )
        .await
        .unwrap();
    assert_eq!(outcomes, [AckOutcome::Applied, AckOutcome::Invalid]);
    let again = s
        .acknowledge(&sub_name("sub1"), &[got[0].ack_id.clone()])
        .await
        .unwrap();
    assert_eq!(
        again,
        [AckOutcome::Invalid],
        "a second ack of the same delivery is reported"
    );

    h.clock.advance(Duration::from_secs(11));
    let late = s
        .modify_ack_deadline(
            &sub_name("sub1"),
            &[got[1].ack_id.clone()],
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(
        late,
        [AckOutcome::Invalid],
        "an expired lease cannot be extended"
    );
    let late = s
        .acknowledge(&sub_name("sub1"), &[got[1].ack_id.clone()])
        .await
        .unwrap();
    assert_eq!(late, [AckOutcome::Invalid], "nor acknowledged");
    assert_eq!(
        data(&pull_now(s, "sub1").await),
        ["b"],
        "and the message comes back"
    );

    // Without exactly-once a late ack still lands when nobody took the message meanwhile.
    let lenient = pull_now(s, "lenient").await;
    h.clock.advance(Duration::from_secs(11));
    let outcomes = s
        .acknowledge(&sub_name("lenient"), &[lenient[0].ack_id.clone()])
        .await
        .unwrap();
    assert_eq!(outcomes, [AckOutcome::Applied]);
}

/// A pull waiting for messages is answered by a publish, not by its timeout.
pub async fn long_poll_wakes_on_publish(h: &mut Harness) {
    let s = h.store.clone();
    s.create_topic(topic("top1")).await.unwrap();
    s.create_subscription(subscription("sub1", "top1"))
        .await
        .unwrap();
    let waiter = tokio::spawn({
        let s = s.clone();
        async move { s.pull(&sub_name("sub1"), 10, Duration::from_secs(30)).await }
    });
    tokio::task::yield_now().await;
    s.publish(&topic_name("top1"), vec![msg("wake")])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken")
        .unwrap()
        .unwrap();
    assert_eq!(data(&got), ["wake"]);
}

/// A pull waiting behind an ordering key is answered when the key's head is acknowledged, well
/// before the head's lease would expire.
pub async fn an_ack_wakes_a_long_poll_waiting_for_the_next_message_of_its_key(h: &mut Harness) {
    let s = h.store.clone();
    s.create_topic(topic("top1")).await.unwrap();
    let mut sub = subscription("ordered", "top1");
    sub.enable_message_ordering = true;
    // A long lease, so only the ack (not the lease's expiry) can wake the waiter in time.
    sub.ack_deadline = Duration::from_secs(600);
    s.create_subscription(sub).await.unwrap();
    s.publish(
        &topic_name("top1"),
        vec![msg_with("k1", &[], "k"), msg_with("k2", &[], "k")],
    )
    .await
    .unwrap();
    let first = pull_now(&*s, "ordered").await;
    assert_eq!(data(&first), ["k1"]);
    let waiter = tokio::spawn({
        let s = s.clone();
        async move {
            s.pull(&sub_name("ordered"), 10, Duration::from_secs(30))
                .await
        }
    });
    tokio::task::yield_now().await;
    s.acknowledge(&sub_name("ordered"), &[first[0].ack_id.clone()])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken by the ack")
        .unwrap()
        .unwrap();
    assert_eq!(data(&got), ["k2"]);
}
