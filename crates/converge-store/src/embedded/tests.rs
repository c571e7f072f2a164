//! Tests of the embedded engine.
//!
//! What any engine owes the broker is in [`crate::conformance`]; it runs here for the engine in
//! memory and on disk. What stays below is the embedded engine's own promise: its log, segments,
//! checkpoints, and recovery after a restart with or without a clean close.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use converge_core::{Clock as _, DeadLetterPolicy, ManualClock, Store};

use super::{Durability, EmbeddedOptions, EmbeddedStore};
use crate::conformance::support::{
    data, msg, msg_with, pubsub_snapshot, pull_and_ack, pull_now, snapshot_name, sub_name,
    subscription, topic, topic_name,
};
use crate::conformance::{Backend, start_time};

/// The engine with its journal in memory (`--memory`): every open starts empty.
struct Memory;

#[async_trait]
impl Backend for Memory {
    async fn open(&self, clock: &ManualClock) -> converge_core::Result<Arc<dyn Store>> {
        let store = EmbeddedStore::open(EmbeddedOptions::default(), Arc::new(clock.clone()))?;
        Ok(Arc::new(store))
    }

    fn durable(&self) -> bool {
        false
    }
}

/// The engine on disk in a temporary directory, with fsync: every open after the first
/// recovers what the previous store left.
struct Disk {
    dir: tempfile::TempDir,
}

impl Disk {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

#[async_trait]
impl Backend for Disk {
    async fn open(&self, clock: &ManualClock) -> converge_core::Result<Arc<dyn Store>> {
        Ok(Arc::new(open_disk(self.dir.path(), clock)))
    }

    fn durable(&self) -> bool {
        true
    }
}

crate::conformance_tests!(memory => Memory);
crate::conformance_tests!(disk => Disk::new(), durable);

fn open_disk(dir: &std::path::Path, clock: &ManualClock) -> EmbeddedStore {
    let options = EmbeddedOptions {
        dir: Some(dir.to_path_buf()),
        durability: Durability::Fsync,
    };
    EmbeddedStore::open(options, Arc::new(clock.clone())).unwrap()
}

#[tokio::test]
async fn a_restart_keeps_data_and_redelivers_unacknowledged_messages() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(start_time());
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
    let clock = ManualClock::new(start_time());
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
    let clock = ManualClock::new(start_time());
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
async fn snapshots_and_seeks_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(start_time());
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
