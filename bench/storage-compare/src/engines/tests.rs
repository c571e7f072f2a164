//! Every engine must behave as the same queue, or the comparison compares different things.

use super::{EngineKind, EngineOptions};
use crate::harness::{PayloadGen, payload_seq};
use crate::probe::disk_bytes;

/// Small WAL segments, so that consuming crosses segment boundaries.
fn options() -> EngineOptions {
    EngineOptions {
        wal_segment_bytes: 16 * 1024,
    }
}

/// The sequence number of the first live message, found from the start.
fn first_seq(store: &dyn crate::harness::QueueStore) -> Option<u64> {
    store
        .first_live_from_start()
        .unwrap()
        .as_deref()
        .and_then(payload_seq)
}

/// Appends 100 messages in uneven batches, consumes 60, reopens, and checks that exactly the
/// last 40 survive, in order, with their payloads intact.
async fn behaves_as_a_queue(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store = kind.open(dir.path(), &options()).unwrap();
    let mut payloads = PayloadGen::new(3, 1024);
    let mut seq = 0;
    for size in [1, 10, 89] {
        let batch = (seq..seq + size).map(|s| payloads.payload(s)).collect();
        store.append(batch).unwrap().await.unwrap();
        seq += size;
    }
    assert_eq!(store.backlog(), 100);
    assert_eq!(first_seq(store.as_ref()), Some(0));
    let stats = store.group_stats();
    assert!(
        stats.commits >= 1 && stats.records == 100,
        "{kind}: {stats:?}"
    );

    let mut consumed = 0;
    while consumed < 60 {
        let (taken, ticket) = store.consume_oldest(60 - consumed).unwrap();
        assert!(taken > 0, "{kind} stalled after {consumed}");
        ticket.await.unwrap();
        store.reclaim().unwrap();
        consumed += taken;
    }
    assert_eq!(consumed, 60);
    assert_eq!(store.backlog(), 40);
    assert_eq!(first_seq(store.as_ref()), Some(60), "{kind}");
    store.close().unwrap();

    let store = kind.open(dir.path(), &options()).unwrap();
    assert_eq!(store.backlog(), 40, "{kind} after reopen");
    assert_eq!(first_seq(store.as_ref()), Some(60), "{kind} after reopen");
    let (taken, ticket) = store.consume_oldest(1000).unwrap();
    ticket.await.unwrap();
    assert_eq!(taken, 40);
    assert_eq!(first_seq(store.as_ref()), None);
    let (taken, _) = store.consume_oldest(10).unwrap();
    assert_eq!(taken, 0, "{kind} handed out a message twice");
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_behaves_as_a_queue() {
    behaves_as_a_queue(EngineKind::Wal).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redb_behaves_as_a_queue() {
    behaves_as_a_queue(EngineKind::Redb).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fjall_behaves_as_a_queue() {
    behaves_as_a_queue(EngineKind::Fjall).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_behaves_as_a_queue() {
    behaves_as_a_queue(EngineKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_reclaims_whole_segments_once_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let store = EngineKind::Wal.open(dir.path(), &options()).unwrap();
    let mut payloads = PayloadGen::new(5, 1024);
    for seq in 0..200 {
        store
            .append(vec![payloads.payload(seq)])
            .unwrap()
            .await
            .unwrap();
    }
    let full = disk_bytes(dir.path()).unwrap();
    let (taken, ticket) = store.consume_oldest(190).unwrap();
    assert_eq!(taken, 190);
    ticket.await.unwrap();
    store.reclaim().unwrap();
    let after = disk_bytes(dir.path()).unwrap();
    assert!(
        after * 4 < full,
        "{after} bytes left of {full}: consumed segments were kept"
    );
    assert_eq!(first_seq(store.as_ref()), Some(190));
    store.close().unwrap();
}
