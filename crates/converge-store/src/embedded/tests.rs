//! Behaviour of the embedded engine, driven through the `Store` trait with a manual clock.
//! The same scenarios run in memory and on disk; restart scenarios run on disk only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use converge_core::retry::RetrySchedule;
use converge_core::{
    DeadLetterPolicy, Error, ManualClock, NewMessage, ProjectId, ReceivedMessage, Store,
    Subscription, SubscriptionName, Topic, TopicName,
};

use super::{Durability, EmbeddedOptions, EmbeddedStore};

fn project() -> ProjectId {
    ProjectId::new("p").unwrap()
}

fn topic_name(id: &str) -> TopicName {
    TopicName::new(project(), id).unwrap()
}

fn sub_name(id: &str) -> SubscriptionName {
    SubscriptionName::new(project(), id).unwrap()
}

fn topic(id: &str) -> Topic {
    Topic {
        name: topic_name(id),
        labels: HashMap::new(),
        message_retention: None,
        dedup_window: Duration::from_secs(3600),
        resource: Bytes::new(),
    }
}

fn subscription(id: &str, topic: &str) -> Subscription {
    Subscription {
        name: sub_name(id),
        topic: Some(topic_name(topic)),
        ack_deadline: Duration::from_secs(10),
        retain_acked_messages: false,
        message_retention: Duration::from_secs(7 * 24 * 3600),
        enable_message_ordering: false,
        exactly_once: false,
        filter: String::new(),
        dead_letter_policy: None,
        retry: None,
        expiration_ttl: None,
        detached: false,
        labels: HashMap::new(),
        created: SystemTime::UNIX_EPOCH,
        resource: Bytes::new(),
    }
}

fn msg(data: &str) -> NewMessage {
    NewMessage {
        data: Bytes::from(data.to_string()),
        ..Default::default()
    }
}

fn msg_with(data: &str, attrs: &[(&str, &str)], key: &str) -> NewMessage {
    NewMessage {
        data: Bytes::from(data.to_string()),
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ordering_key: key.to_string(),
    }
}

struct Fixture {
    store: EmbeddedStore,
    clock: ManualClock,
    _dir: Option<tempfile::TempDir>,
}

fn open_memory() -> Fixture {
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let store = EmbeddedStore::open(EmbeddedOptions::default(), Arc::new(clock.clone())).unwrap();
    Fixture {
        store,
        clock,
        _dir: None,
    }
}

fn open_disk(dir: &std::path::Path, clock: &ManualClock) -> EmbeddedStore {
    let options = EmbeddedOptions {
        dir: Some(dir.to_path_buf()),
        durability: Durability::Fsync,
    };
    EmbeddedStore::open(options, Arc::new(clock.clone())).unwrap()
}

fn fixtures() -> Vec<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let disk = Fixture {
        store: open_disk(dir.path(), &clock),
        clock,
        _dir: Some(dir),
    };
    vec![open_memory(), disk]
}

fn data(received: &[ReceivedMessage]) -> Vec<String> {
    received
        .iter()
        .map(|r| String::from_utf8(r.message.data.to_vec()).unwrap())
        .collect()
}

async fn pull_now(store: &EmbeddedStore, sub: &str) -> Vec<ReceivedMessage> {
    store
        .pull(&sub_name(sub), 100, Duration::ZERO)
        .await
        .unwrap()
}

#[tokio::test]
async fn publish_pull_ack_and_fan_out() {
    for f in fixtures() {
        let s = &f.store;
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
        f.clock.advance(Duration::from_secs(11));
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
}

#[tokio::test]
async fn nack_and_retry_backoff() {
    for f in fixtures() {
        let s = &f.store;
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
        f.clock.advance(Duration::from_secs(10));
        assert_eq!(
            data(&pull_now(s, "later").await),
            ["m"],
            "and comes back after the backoff"
        );
        // A stale ack id (from the first delivery) has no effect.
        s.acknowledge(&sub_name("later"), &[got[0].ack_id.clone()])
            .await
            .unwrap();
        f.clock.advance(Duration::from_secs(11));
        assert!(
            pull_now(s, "later").await.is_empty(),
            "an expired lease also waits for the backoff"
        );
        f.clock.advance(Duration::from_secs(600));
        assert_eq!(
            data(&pull_now(s, "later").await),
            ["m"],
            "a stale ack did not acknowledge"
        );
    }
}

#[tokio::test]
async fn extends_and_shortens_leases() {
    for f in fixtures() {
        let s = &f.store;
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
        f.clock.advance(Duration::from_secs(30));
        assert!(
            pull_now(s, "sub1").await.is_empty(),
            "an extended lease holds past the ack deadline"
        );
        f.clock.advance(Duration::from_secs(31));
        let again = pull_now(s, "sub1").await;
        assert_eq!(data(&again), ["m"]);
        assert_ne!(
            again[0].ack_id, got[0].ack_id,
            "each delivery has its own ack id"
        );
    }
}

#[tokio::test]
async fn dead_letters_after_max_attempts() {
    for f in fixtures() {
        let s = &f.store;
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
}

#[tokio::test]
async fn filters_acknowledge_what_they_reject() {
    for f in fixtures() {
        let s = &f.store;
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
}

#[tokio::test]
async fn ordering_keys_deliver_one_at_a_time_in_order() {
    for f in fixtures() {
        let s = &f.store;
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
}

#[tokio::test]
async fn idempotency_keys_store_a_message_once() {
    for f in fixtures() {
        let s = &f.store;
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
        f.clock.advance(Duration::from_secs(3601));
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
}

#[tokio::test]
async fn retention_expiration_and_detach() {
    for f in fixtures() {
        let s = &f.store;
        s.create_topic(topic("top1")).await.unwrap();
        let mut short = subscription("short", "top1");
        short.message_retention = Duration::from_secs(600);
        s.create_subscription(short).await.unwrap();
        let mut expiring = subscription("expiring", "top1");
        expiring.expiration_ttl = Some(Duration::from_secs(86_400));
        s.create_subscription(expiring).await.unwrap();
        s.create_subscription(subscription("detached", "top1"))
            .await
            .unwrap();
        s.publish(&topic_name("top1"), vec![msg("old")])
            .await
            .unwrap();

        f.clock.advance(Duration::from_secs(601));
        s.maintain().await.unwrap();
        assert!(
            pull_now(s, "short").await.is_empty(),
            "messages older than the retention are gone"
        );

        f.clock.advance(Duration::from_secs(86_400));
        s.maintain().await.unwrap();
        assert!(matches!(
            s.get_subscription(&sub_name("expiring")).await,
            Err(Error::NotFound(_))
        ));

        s.detach_subscription(&sub_name("detached")).await.unwrap();
        s.publish(&topic_name("top1"), vec![msg("after-detach")])
            .await
            .unwrap();
        let stats = s.subscription_stats().await.unwrap();
        let detached = stats
            .iter()
            .find(|st| st.name == sub_name("detached"))
            .unwrap();
        assert_eq!(
            detached.backlog, 0,
            "a detached subscription has no backlog, even after new publishes"
        );
        let err = s
            .pull(&sub_name("detached"), 1, Duration::ZERO)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        assert!(
            s.get_subscription(&sub_name("detached"))
                .await
                .unwrap()
                .detached
        );
        let page = s
            .list_topic_subscriptions(&topic_name("top1"), Default::default())
            .await
            .unwrap();
        assert_eq!(page.items, vec![sub_name("short")]);
    }
}

#[tokio::test]
async fn deleting_a_topic_leaves_its_subscriptions_readable() {
    for f in fixtures() {
        let s = &f.store;
        s.create_topic(topic("top1")).await.unwrap();
        s.create_subscription(subscription("sub1", "top1"))
            .await
            .unwrap();
        s.publish(&topic_name("top1"), vec![msg("kept")])
            .await
            .unwrap();
        s.delete_topic(&topic_name("top1")).await.unwrap();
        assert_eq!(
            s.get_subscription(&sub_name("sub1")).await.unwrap().topic,
            None
        );
        assert!(matches!(
            s.publish(&topic_name("top1"), vec![msg("x")]).await,
            Err(Error::NotFound(_))
        ));
        assert_eq!(data(&pull_now(s, "sub1").await), ["kept"]);
        // A new topic with the same name does not feed the old subscription.
        s.create_topic(topic("top1")).await.unwrap();
        s.publish(&topic_name("top1"), vec![msg("new")])
            .await
            .unwrap();
        f.clock.advance(Duration::from_secs(11));
        assert_eq!(data(&pull_now(s, "sub1").await), ["kept"]);
    }
}

#[tokio::test]
async fn errors_name_the_resource() {
    let f = open_memory();
    let s = &f.store;
    let err = s.get_topic(&topic_name("nope")).await.unwrap_err();
    assert_eq!(
        err,
        Error::NotFound("Resource not found (resource=projects/p/topics/nope).".into())
    );
    s.create_topic(topic("top1")).await.unwrap();
    assert!(matches!(
        s.create_topic(topic("top1")).await,
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        s.create_subscription(subscription("sub1", "nope")).await,
        Err(Error::NotFound(_))
    ));
    let mut bad = subscription("sub1", "top1");
    bad.filter = "attributes.x = ".into();
    assert!(matches!(
        s.create_subscription(bad).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn lists_page_through_names() {
    let f = open_memory();
    let s = &f.store;
    for i in 0..5 {
        s.create_topic(topic(&format!("topic-{i}"))).await.unwrap();
    }
    let other = Topic {
        name: TopicName::new(ProjectId::new("other").unwrap(), "topic-x").unwrap(),
        ..topic("xxx")
    };
    s.create_topic(other).await.unwrap();
    let first = s
        .list_topics(
            &project(),
            converge_core::PageRequest {
                page_size: 2,
                page_token: String::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let mut all: Vec<String> = first
        .items
        .iter()
        .map(|t| t.name.id().to_string())
        .collect();
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let next = s
            .list_topics(
                &project(),
                converge_core::PageRequest {
                    page_size: 2,
                    page_token: token,
                },
            )
            .await
            .unwrap();
        all.extend(next.items.iter().map(|t| t.name.id().to_string()));
        token = next.next_page_token;
    }
    assert_eq!(all, ["topic-0", "topic-1", "topic-2", "topic-3", "topic-4"]);
}

#[tokio::test]
async fn long_poll_wakes_on_publish() {
    let f = open_memory();
    let s = f.store.clone();
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

#[tokio::test]
async fn a_restart_keeps_data_and_redelivers_unacknowledged_messages() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    {
        let s = open_disk(dir.path(), &clock);
        s.create_topic(topic("top1")).await.unwrap();
        s.create_subscription(subscription("sub1", "top1"))
            .await
            .unwrap();
        s.publish(&topic_name("top1"), vec![msg("acked"), msg("pending")])
            .await
            .unwrap();
        let got = pull_now(&s, "sub1").await;
        s.acknowledge(&sub_name("sub1"), &[got[0].ack_id.clone()])
            .await
            .unwrap();
        s.close().await.unwrap();
    }
    let s = open_disk(dir.path(), &clock);
    assert!(s.get_topic(&topic_name("top1")).await.is_ok());
    assert_eq!(
        data(&pull_now(&s, "sub1").await),
        ["pending"],
        "leases are forgotten, acks are not"
    );
    let next = s
        .publish(&topic_name("top1"), vec![msg("after")])
        .await
        .unwrap();
    assert_eq!(data(&pull_now(&s, "sub1").await), ["after"]);
    assert!(next[0].0 > 2, "message ids keep increasing across restarts");
}

#[tokio::test]
async fn snapshots_reclaim_space_and_keep_what_is_unacknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let open = || {
        let options = EmbeddedOptions {
            dir: Some(dir.path().to_path_buf()),
            durability: Durability::Fsync,
        };
        EmbeddedStore::open_with_segment_bytes(options, Arc::new(clock.clone()), 64 * 1024).unwrap()
    };
    let payload = "x".repeat(1024);
    {
        let s = open();
        s.create_topic(topic("top1")).await.unwrap();
        s.create_subscription(subscription("sub1", "top1"))
            .await
            .unwrap();
        for _ in 0..40 {
            let batch = (0..10).map(|_| msg(&payload)).collect();
            s.publish(&topic_name("top1"), batch).await.unwrap();
            let got = s
                .pull(&sub_name("sub1"), 100, Duration::ZERO)
                .await
                .unwrap();
            let ids = got.iter().map(|r| r.ack_id.clone()).collect::<Vec<_>>();
            s.acknowledge(&sub_name("sub1"), &ids).await.unwrap();
        }
        s.publish(
            &topic_name("top1"),
            vec![msg("unacked-1"), msg("unacked-2")],
        )
        .await
        .unwrap();
        let before = s.disk_bytes();
        assert!(before > 400 * 1024, "400 KiB were written: {before}");
        s.maintain().await.unwrap();
        let after = s.disk_bytes();
        assert!(
            after < 128 * 1024,
            "acknowledged segments were deleted: {before} -> {after}"
        );
        s.close().await.unwrap();
    }
    let s = open();
    let got = pull_now(&s, "sub1").await;
    assert_eq!(
        data(&got),
        ["unacked-1", "unacked-2"],
        "the snapshot kept what was not acknowledged, and only that"
    );
    s.publish(&topic_name("top1"), vec![msg("after")])
        .await
        .unwrap();
    assert_eq!(data(&pull_now(&s, "sub1").await), ["after"]);
}

#[tokio::test]
async fn a_restart_from_a_snapshot_keeps_settings_progress_and_idempotency_keys() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let keyed = |d: &str| msg_with(d, &[("converge-idempotency-key", "k-1")], "");
    let first = {
        let s = open_disk(dir.path(), &clock);
        s.create_topic(topic("top1")).await.unwrap();
        let mut sub = subscription("sub1", "top1");
        sub.filter = "attributes:converge-idempotency-key".into();
        sub.dead_letter_policy = Some(DeadLetterPolicy::new(topic_name("top1"), 7).unwrap());
        s.create_subscription(sub).await.unwrap();
        let ids = s
            .publish(
                &topic_name("top1"),
                vec![
                    keyed("a"),
                    msg("filtered"),
                    msg_with("b", &[("converge-idempotency-key", "k-2")], ""),
                ],
            )
            .await
            .unwrap();
        let got = pull_now(&s, "sub1").await;
        assert_eq!(data(&got), ["a", "b"]);
        s.acknowledge(&sub_name("sub1"), &[got[0].ack_id.clone()])
            .await
            .unwrap();
        s.close().await.unwrap(); // writes a snapshot
        ids[0]
    };
    assert!(
        dir.path().join(super::snapshot::FILE_NAME).exists(),
        "a clean shutdown leaves a snapshot"
    );
    let s = open_disk(dir.path(), &clock);
    let sub = s.get_subscription(&sub_name("sub1")).await.unwrap();
    assert_eq!(sub.filter, "attributes:converge-idempotency-key");
    assert_eq!(sub.dead_letter_policy.unwrap().max_delivery_attempts, 7);
    assert_eq!(
        data(&pull_now(&s, "sub1").await),
        ["b"],
        "only the unacknowledged message comes back"
    );
    let again = s
        .publish(&topic_name("top1"), vec![keyed("a")])
        .await
        .unwrap();
    assert_eq!(again[0], first, "idempotency keys survive the snapshot");
}

#[tokio::test]
async fn topic_retention_keeps_messages_longer_then_lets_them_go() {
    for f in fixtures() {
        let s = &f.store;
        let mut t = topic("top1");
        t.message_retention = Some(Duration::from_secs(3600));
        s.create_topic(t).await.unwrap();
        let mut sub = subscription("sub1", "top1");
        sub.message_retention = Duration::from_secs(600);
        s.create_subscription(sub).await.unwrap();
        s.publish(&topic_name("top1"), vec![msg("kept")])
            .await
            .unwrap();

        f.clock.advance(Duration::from_secs(601));
        s.maintain().await.unwrap();
        assert_eq!(
            data(&pull_now(s, "sub1").await),
            ["kept"],
            "a longer topic retention keeps the subscription's backlog"
        );
        f.clock.advance(Duration::from_secs(3000));
        s.maintain().await.unwrap();
        assert!(
            pull_now(s, "sub1").await.is_empty(),
            "past the topic's retention the message is gone"
        );
        let stats = s.subscription_stats().await.unwrap();
        assert_eq!(stats[0].backlog, 0);
    }
}

#[test]
fn log_distance_counts_bytes_across_segments() {
    use super::log_distance;
    use super::wal::RecordPos;
    let at = |segment, offset| RecordPos { segment, offset };
    assert_eq!(log_distance(at(3, 100), at(3, 400), 1000), 300);
    assert_eq!(log_distance(at(3, 900), at(4, 50), 1000), 150);
    assert_eq!(log_distance(at(3, 900), at(6, 50), 1000), 2150);
    assert_eq!(
        log_distance(at(3, 400), at(3, 100), 1000),
        0,
        "never negative"
    );
}

#[tokio::test]
async fn pull_options_bound_bytes_and_set_the_lease() {
    use converge_core::PullOptions;
    for f in fixtures() {
        let s = &f.store;
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
        f.clock.advance(Duration::from_secs(30));
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
}

#[tokio::test]
async fn exactly_once_reports_expired_and_stale_ack_ids() {
    use converge_core::{AckId, AckOutcome};
    for f in fixtures() {
        let s = &f.store;
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

        f.clock.advance(Duration::from_secs(11));
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
        f.clock.advance(Duration::from_secs(11));
        let outcomes = s
            .acknowledge(&sub_name("lenient"), &[lenient[0].ack_id.clone()])
            .await
            .unwrap();
        assert_eq!(outcomes, [AckOutcome::Applied]);
    }
}

#[tokio::test]
async fn documents_are_stored_listed_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    {
        let s = open_disk(dir.path(), &clock);
        s.put_document(
            "iam",
            "projects/p/topics/a",
            Bytes::from_static(b"policy-a"),
        )
        .await
        .unwrap();
        s.put_document(
            "iam",
            "projects/p/topics/b",
            Bytes::from_static(b"policy-b"),
        )
        .await
        .unwrap();
        s.put_document("schema", "projects/p/schemas/s", Bytes::from_static(b"v1"))
            .await
            .unwrap();
        s.put_document(
            "iam",
            "projects/p/topics/a",
            Bytes::from_static(b"policy-a2"),
        )
        .await
        .unwrap();
        assert!(
            s.delete_document("iam", "projects/p/topics/b")
                .await
                .unwrap()
        );
        assert!(
            !s.delete_document("iam", "projects/p/topics/b")
                .await
                .unwrap()
        );
        s.close().await.unwrap();
    }
    let s = open_disk(dir.path(), &clock);
    assert_eq!(
        s.get_document("iam", "projects/p/topics/a")
            .await
            .unwrap()
            .unwrap(),
        "policy-a2"
    );
    assert_eq!(
        s.get_document("iam", "projects/p/topics/b").await.unwrap(),
        None
    );
    let listed = s
        .list_documents("iam", "projects/p/", Default::default())
        .await
        .unwrap();
    assert_eq!(
        listed
            .items
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["projects/p/topics/a"]
    );
}

// --- Pub/Sub snapshots and Seek -------------------------------------------------------------

use converge_core::Clock as _;

fn snapshot_name(id: &str) -> converge_core::SnapshotName {
    converge_core::SnapshotName::new(project(), id).unwrap()
}

/// A snapshot request as the API layer makes it; the store sets the topic and expire time.
fn pubsub_snapshot(id: &str) -> converge_core::Snapshot {
    converge_core::Snapshot {
        name: snapshot_name(id),
        topic: topic_name("placeholder"),
        expire_time: SystemTime::UNIX_EPOCH,
        labels: HashMap::new(),
        resource: Bytes::new(),
    }
}

/// Pulls everything deliverable now and acknowledges the messages whose data is in `ack`.
async fn pull_and_ack(store: &EmbeddedStore, sub: &str, ack: &[&str]) -> Vec<String> {
    let got = pull_now(store, sub).await;
    let ids: Vec<_> = got
        .iter()
        .filter(|r| ack.iter().any(|a| r.message.data == a.as_bytes()))
        .map(|r| r.ack_id.clone())
        .collect();
    store.acknowledge(&sub_name(sub), &ids).await.unwrap();
    data(&got)
}

#[tokio::test]
async fn seek_to_a_snapshot_brings_back_what_it_marked_unacknowledged() {
    for f in fixtures() {
        let s = &f.store;
        s.create_topic(topic("top1")).await.unwrap();
        s.create_subscription(subscription("sub1", "top1"))
            .await
            .unwrap();
        s.publish(&topic_name("top1"), vec![msg("a"), msg("b"), msg("c")])
            .await
            .unwrap();
        let published_at = f.clock.now();
        assert_eq!(pull_and_ack(s, "sub1", &["a"]).await, ["a", "b", "c"]);
        f.clock.advance(Duration::from_secs(60));
        let snap = s
            .create_snapshot(pubsub_snapshot("snap1"), &sub_name("sub1"))
            .await
            .unwrap();
        assert_eq!(snap.topic, topic_name("top1"));
        assert_eq!(
            snap.expire_time,
            published_at + converge_core::snapshot::MAX_SNAPSHOT_LIFETIME,
            "a snapshot lives 7 days from its oldest unacknowledged message"
        );
        assert_eq!(s.get_snapshot(&snapshot_name("snap1")).await.unwrap(), snap);

        // Everything is acknowledged (b and c once their leases expired), and the log is
        // truncated as far as it may be.
        let again = pull_now(s, "sub1").await;
        assert_eq!(data(&again), ["b", "c"]);
        s.acknowledge(
            &sub_name("sub1"),
            &again.iter().map(|r| r.ack_id.clone()).collect::<Vec<_>>(),
        )
        .await
        .unwrap();
        s.publish(&topic_name("top1"), vec![msg("d")])
            .await
            .unwrap();
        let leased_d = pull_now(s, "sub1").await;
        assert_eq!(data(&leased_d), ["d"]);
        s.maintain().await.unwrap();
        assert!(pull_now(s, "sub1").await.is_empty());

        s.seek(
            &sub_name("sub1"),
            converge_core::SeekTarget::Snapshot(snapshot_name("snap1")),
        )
        .await
        .unwrap();
        assert_eq!(
            data(&pull_now(s, "sub1").await),
            ["b", "c", "d"],
            "the snapshot's unacknowledged messages and everything published after it"
        );
        let outcomes = s
            .acknowledge(&sub_name("sub1"), &[leased_d[0].ack_id.clone()])
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            [converge_core::AckOutcome::Invalid],
            "a seek drops outstanding leases"
        );
    }
}

#[tokio::test]
async fn seek_to_a_time_replays_acknowledged_messages_only_when_retained() {
    for f in fixtures() {
        let s = &f.store;
        s.create_topic(topic("top1")).await.unwrap();
        let keep = Subscription {
            retain_acked_messages: true,
            ..subscription("keep", "top1")
        };
        s.create_subscription(keep).await.unwrap();
        s.create_subscription(subscription("plain", "top1"))
            .await
            .unwrap();
        let before = f.clock.now();
        f.clock.advance(Duration::from_secs(1));
        s.publish(&topic_name("top1"), vec![msg("a")])
            .await
            .unwrap();
        f.clock.advance(Duration::from_secs(10));
        let b_time = f.clock.now();
        s.publish(&topic_name("top1"), vec![msg("b")])
            .await
            .unwrap();
        assert_eq!(pull_and_ack(s, "keep", &["a", "b"]).await, ["a", "b"]);
        assert_eq!(pull_and_ack(s, "plain", &["a"]).await, ["a", "b"]);
        s.maintain().await.unwrap();

        for sub in ["keep", "plain"] {
            s.seek(&sub_name(sub), converge_core::SeekTarget::Time(before))
                .await
                .unwrap();
        }
        assert_eq!(
            data(&pull_now(s, "keep").await),
            ["a", "b"],
            "retained acknowledged messages come back"
        );
        assert_eq!(
            data(&pull_now(s, "plain").await),
            ["b"],
            "without retention only the unacknowledged message (its lease dropped) comes back"
        );

        s.seek(&sub_name("keep"), converge_core::SeekTarget::Time(b_time))
            .await
            .unwrap();
        assert_eq!(data(&pull_now(s, "keep").await), ["b"]);

        // A time in the future acknowledges everything published so far.
        s.seek(
            &sub_name("plain"),
            converge_core::SeekTarget::Time(f.clock.now() + Duration::from_secs(3600)),
        )
        .await
        .unwrap();
        f.clock.advance(Duration::from_secs(60));
        assert!(pull_now(s, "plain").await.is_empty(), "backlog cleared");
        let stats = s.subscription_stats().await.unwrap();
        let plain = stats
            .iter()
            .find(|st| st.name == sub_name("plain"))
            .unwrap();
        assert_eq!(plain.backlog, 0);
        s.publish(&topic_name("top1"), vec![msg("c")])
            .await
            .unwrap();
        assert_eq!(data(&pull_now(s, "plain").await), ["c"]);
    }
}

#[tokio::test]
async fn topic_retention_lets_a_seek_reach_before_the_subscription() {
    let f = open_memory();
    let s = &f.store;
    let retained = Topic {
        message_retention: Some(Duration::from_secs(24 * 3600)),
        ..topic("top1")
    };
    s.create_topic(retained).await.unwrap();
    let before = f.clock.now();
    s.publish(&topic_name("top1"), vec![msg("old")])
        .await
        .unwrap();
    s.create_subscription(subscription("late", "top1"))
        .await
        .unwrap();
    assert!(pull_now(s, "late").await.is_empty());
    s.seek(&sub_name("late"), converge_core::SeekTarget::Time(before))
        .await
        .unwrap();
    assert_eq!(data(&pull_now(s, "late").await), ["old"]);
}

#[tokio::test]
async fn snapshot_and_seek_errors() {
    let f = open_memory();
    let s = &f.store;
    s.create_topic(topic("top1")).await.unwrap();
    s.create_topic(topic("top2")).await.unwrap();
    s.create_subscription(subscription("sub1", "top1"))
        .await
        .unwrap();
    s.create_subscription(subscription("sub2", "top2"))
        .await
        .unwrap();
    s.create_snapshot(pubsub_snapshot("snap1"), &sub_name("sub1"))
        .await
        .unwrap();
    let err = s
        .create_snapshot(pubsub_snapshot("snap1"), &sub_name("sub1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err:?}");
    let err = s
        .create_snapshot(pubsub_snapshot("snap2"), &sub_name("nope"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let err = s
        .seek(
            &sub_name("sub2"),
            converge_core::SeekTarget::Snapshot(snapshot_name("snap1")),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    let err = s
        .seek(
            &sub_name("sub1"),
            converge_core::SeekTarget::Snapshot(snapshot_name("missing")),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let err = s
        .delete_snapshot(&snapshot_name("missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let err = s
        .list_topic_snapshots(&topic_name("missing"), Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");

    // A backlog so old that the snapshot would expire within the hour is refused.
    s.publish(&topic_name("top1"), vec![msg("old")])
        .await
        .unwrap();
    f.clock
        .advance(converge_core::snapshot::MAX_SNAPSHOT_LIFETIME - Duration::from_secs(60));
    let err = s
        .create_snapshot(pubsub_snapshot("late"), &sub_name("sub1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
}

#[tokio::test]
async fn snapshots_are_listed_updated_deleted_and_expire() {
    for f in fixtures() {
        let s = &f.store;
        s.create_topic(topic("top1")).await.unwrap();
        s.create_topic(topic("top2")).await.unwrap();
        s.create_subscription(subscription("sub1", "top1"))
            .await
            .unwrap();
        s.create_subscription(subscription("sub2", "top2"))
            .await
            .unwrap();
        for (snap, sub) in [("snap-b", "sub1"), ("snap-a", "sub1"), ("snap-c", "sub2")] {
            s.create_snapshot(pubsub_snapshot(snap), &sub_name(sub))
                .await
                .unwrap();
        }
        let first = s
            .list_snapshots(
                &project(),
                converge_core::PageRequest {
                    page_size: 2,
                    page_token: String::new(),
                },
            )
            .await
            .unwrap();
        let names: Vec<_> = first
            .items
            .iter()
            .map(|s| s.name.id().to_string())
            .collect();
        assert_eq!(names, ["snap-a", "snap-b"]);
        let second = s
            .list_snapshots(
                &project(),
                converge_core::PageRequest {
                    page_size: 2,
                    page_token: first.next_page_token,
                },
            )
            .await
            .unwrap();
        assert_eq!(second.items.len(), 1);
        assert_eq!(second.items[0].topic, topic_name("top2"));
        assert!(second.next_page_token.is_empty());
        let on_top1 = s
            .list_topic_snapshots(&topic_name("top1"), Default::default())
            .await
            .unwrap();
        assert_eq!(
            on_top1.items,
            [snapshot_name("snap-a"), snapshot_name("snap-b")]
        );

        let mut changed = s.get_snapshot(&snapshot_name("snap-a")).await.unwrap();
        changed.labels.insert("team".into(), "billing".into());
        changed.expire_time = f.clock.now() + Duration::from_secs(3600);
        let updated = s.update_snapshot(changed.clone()).await.unwrap();
        assert_eq!(updated, changed);
        assert_eq!(
            s.get_snapshot(&snapshot_name("snap-a")).await.unwrap(),
            changed
        );

        s.delete_snapshot(&snapshot_name("snap-b")).await.unwrap();
        assert!(matches!(
            s.get_snapshot(&snapshot_name("snap-b")).await,
            Err(Error::NotFound(_))
        ));

        f.clock.advance(Duration::from_secs(3600));
        s.maintain().await.unwrap();
        assert!(
            matches!(
                s.get_snapshot(&snapshot_name("snap-a")).await,
                Err(Error::NotFound(_))
            ),
            "an expired snapshot disappears"
        );
        assert!(s.get_snapshot(&snapshot_name("snap-c")).await.is_ok());
    }
}

#[tokio::test]
async fn snapshots_and_seeks_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let created = {
        let s = open_disk(dir.path(), &clock);
        s.create_topic(topic("top1")).await.unwrap();
        s.create_subscription(subscription("sub1", "top1"))
            .await
            .unwrap();
        s.publish(&topic_name("top1"), vec![msg("a"), msg("b"), msg("c")])
            .await
            .unwrap();
        pull_and_ack(&s, "sub1", &["a"]).await;
        let created = s
            .create_snapshot(pubsub_snapshot("snap1"), &sub_name("sub1"))
            .await
            .unwrap();
        s.seek(
            &sub_name("sub1"),
            converge_core::SeekTarget::Time(clock.now() + Duration::from_secs(1)),
        )
        .await
        .unwrap();
        // No close: recovery replays the log.
        drop(s);
        created
    };
    {
        let s = open_disk(dir.path(), &clock);
        assert!(
            pull_now(&s, "sub1").await.is_empty(),
            "the seek that cleared the backlog is durable"
        );
        assert_eq!(
            s.get_snapshot(&snapshot_name("snap1")).await.unwrap(),
            created
        );
        s.close().await.unwrap();
    }
    // After a clean close the state comes from the engine checkpoint.
    let s = open_disk(dir.path(), &clock);
    assert_eq!(
        s.get_snapshot(&snapshot_name("snap1")).await.unwrap(),
        created
    );
    s.maintain().await.unwrap();
    s.seek(
        &sub_name("sub1"),
        converge_core::SeekTarget::Snapshot(snapshot_name("snap1")),
    )
    .await
    .unwrap();
    assert_eq!(data(&pull_now(&s, "sub1").await), ["b", "c"]);
    s.close().await.unwrap();
    let s = open_disk(dir.path(), &clock);
    assert!(
        pull_now(&s, "sub1").await.len() == 2,
        "the seek to the snapshot survives a checkpointed restart"
    );
}

#[tokio::test]
async fn an_ack_wakes_a_long_poll_waiting_for_the_next_message_of_its_key() {
    let f = open_memory();
    let s = f.store.clone();
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
    let first = pull_now(&s, "ordered").await;
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
