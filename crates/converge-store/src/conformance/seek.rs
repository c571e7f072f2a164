//! Pub/Sub snapshots and Seek.

use std::time::Duration;

use converge_core::{Clock as _, Error, Subscription, Topic};

use super::Harness;
use super::support::{
    data, msg, project, pubsub_snapshot, pull_and_ack, pull_now, snapshot_name, sub_name,
    subscription, topic, topic_name,
};

/// A snapshot records what was unacknowledged and expires 7 days after its oldest such message;
/// a seek to it brings those back (after maintenance) with everything published since, and drops
/// outstanding leases.
pub async fn seek_to_a_snapshot_brings_back_what_it_marked_unacknowledged(h: &mut Harness) {
    let s = &*h.store;
    s.create_topic(topic("top1")).await.unwrap();
    s.create_subscription(subscription("sub1", "top1"))
        .await
        .unwrap();
    s.publish(&topic_name("top1"), vec![msg("a"), msg("b"), msg("c")])
        .await
        .unwrap();
    let published_at = h.clock.now();
    assert_eq!(pull_and_ack(s, "sub1", &["a"]).await, ["a", "b", "c"]);
    h.clock.advance(Duration::from_secs(60));
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

/// A seek to a time marks later messages unacknowledged, acknowledged ones only where they were
/// retained (`retain_acked_messages`); a time in the future clears the backlog.
pub async fn seek_to_a_time_replays_acknowledged_messages_only_when_retained(h: &mut Harness) {
    let s = &*h.store;
    s.create_topic(topic("top1")).await.unwrap();
    let keep = Subscription {
        retain_acked_messages: true,
        ..subscription("keep", "top1")
    };
    s.create_subscription(keep).await.unwrap();
    s.create_subscription(subscription("plain", "top1"))
        .await
        .unwrap();
    let before = h.clock.now();
    h.clock.advance(Duration::from_secs(1));
    s.publish(&topic_name("top1"), vec![msg("a")])
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(10));
    let b_time = h.clock.now();
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
        converge_core::SeekTarget::Time(h.clock.now() + Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    h.clock.advance(Duration::from_secs(60));
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

/// With topic retention, a seek to a time can bring back messages published before the
/// subscription existed.
pub async fn topic_retention_lets_a_seek_reach_before_the_subscription(h: &mut Harness) {
    let s = &*h.store;
    let retained = Topic {
        message_retention: Some(Duration::from_secs(24 * 3600)),
        ..topic("top1")
    };
    s.create_topic(retained).await.unwrap();
    let before = h.clock.now();
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

/// Snapshot and seek errors: duplicates, missing subscriptions, snapshots of another topic,
/// missing snapshots and topics, and a backlog too old for a snapshot to live an hour.
pub async fn snapshot_and_seek_errors(h: &mut Harness) {
    let s = &*h.store;
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
    h.clock
        .advance(converge_core::snapshot::MAX_SNAPSHOT_LIFETIME - Duration::from_secs(60));
    let err = s
        .create_snapshot(pubsub_snapshot("late"), &sub_name("sub1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
}

/// Snapshots are listed by project (paged, in name order) and by topic, updated, deleted, and
/// removed by maintenance once expired.
pub async fn snapshots_are_listed_updated_deleted_and_expire(h: &mut Harness) {
    let s = &*h.store;
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
    changed.expire_time = h.clock.now() + Duration::from_secs(3600);
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

    h.clock.advance(Duration::from_secs(3600));
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
