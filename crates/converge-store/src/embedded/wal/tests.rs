//! Tests of the write-ahead log against real files in temporary directories.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;

use super::frame::{self, frame_len};
use super::segment;
use super::*;

fn options(segment_bytes: u64, sync: SyncMode) -> WalOptions {
    WalOptions {
        segment_bytes,
        sync,
    }
}

fn replay_all(wal: &Wal) -> Vec<(RecordPos, Vec<u8>)> {
    let mut out = Vec::new();
    wal.replay(RecordPos::default(), |pos, payload| {
        out.push((pos, payload.to_vec()));
        Ok(())
    })
    .unwrap();
    out
}

fn payloads(wal: &Wal) -> Vec<Vec<u8>> {
    replay_all(wal).into_iter().map(|(_, p)| p).collect()
}

fn record(tag: &str, i: usize, len: usize) -> Vec<u8> {
    let mut bytes = format!("{tag}-{i}:").into_bytes();
    bytes.resize(len.max(bytes.len()), b'x');
    bytes
}

/// Submits a batch and waits until it is durable, outside async code.
fn append(wal: &Wal, records: Vec<Vec<u8>>) -> Vec<RecordPos> {
    let (positions, ticket) = wal.submit(records).unwrap();
    ticket.wait().unwrap();
    positions
}

fn segment_file(dir: &Path, id: u64) -> std::path::PathBuf {
    segment::path(dir, id)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

#[tokio::test]
async fn round_trip_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(wal.durable_end(), RecordPos::default());
    let batches = [
        vec![b"one".to_vec()],
        vec![b"two".to_vec(), Vec::new(), b"four".to_vec()],
    ];
    let mut written = Vec::new();
    for batch in &batches {
        let (positions, ticket) = wal.submit(batch.clone()).unwrap();
        ticket.await.unwrap();
        assert!(wal.durable_end() > *positions.last().unwrap());
        written.extend(positions.into_iter().zip(batch.iter().cloned()));
    }
    for (pos, payload) in &written {
        assert_eq!(&wal.read(*pos).unwrap(), payload);
    }
    assert_eq!(replay_all(&wal), written);
    let end = wal.durable_end();
    assert_eq!(wal.disk_bytes(), end.offset);
    wal.close().await.unwrap();
    drop(wal);

    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(wal.durable_end(), end);
    assert_eq!(replay_all(&wal), written);
}

#[test]
fn reads_past_the_durable_end_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let positions = append(&wal, vec![b"a".to_vec()]);
    let end = wal.durable_end();
    assert!(matches!(wal.read(end), Err(WalError::NotFound { .. })));
    assert!(matches!(
        wal.read(RecordPos::new(7, 0)),
        Err(WalError::NotFound { .. })
    ));
    assert_eq!(wal.read(positions[0]).unwrap(), b"a");
}

#[tokio::test]
async fn an_empty_batch_is_a_barrier() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let (first, ticket_a) = wal.submit(vec![b"a".to_vec()]).unwrap();
    let (none, barrier) = wal.submit(Vec::new()).unwrap();
    assert!(none.is_empty());
    barrier.await.unwrap();
    assert!(wal.durable_end() > first[0]);
    ticket_a.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submitters_are_durable_and_replay_in_submit_order() {
    const TASKS: usize = 16;
    const PER_TASK: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), options(16 * 1024, SyncMode::Fsync)).unwrap());
    // Stands in for the engine's state lock: the order of calls to `submit`.
    let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let wal = Arc::clone(&wal);
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let batch: Vec<Vec<u8>> = (0..1 + (task + i) % 3)
                    .map(|j| record(&format!("t{task}"), i * 10 + j, 100 + 7 * j))
                    .collect();
                let (last, ticket) = {
                    let mut log = log.lock();
                    let (positions, ticket) = wal.submit(batch.clone()).unwrap();
                    let last = *positions.last().unwrap();
                    log.extend(positions.into_iter().zip(batch));
                    (last, ticket)
                };
                ticket.await.unwrap();
                assert!(wal.durable_end() > last, "acknowledged means durable");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let log = log.lock().clone();
    let positions: Vec<RecordPos> = log.iter().map(|(pos, _)| *pos).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions follow call order"
    );
    assert!(wal.durable_end() > *positions.last().unwrap());
    assert_eq!(replay_all(&wal), log);
    assert!(wal.segments().len() > 1, "the test should cross segments");
    let stats = wal.stats();
    assert_eq!(stats.records, log.len() as u64);
    assert_eq!(stats.batches, (TASKS * PER_TASK) as u64);
    assert!(stats.commits >= 1 && stats.commits <= stats.batches);
    wal.close().await.unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(replay_all(&wal), log);
}

#[test]
fn segments_roll_and_records_read_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(256, SyncMode::Fsync);
    let wal = Wal::open(dir.path(), opts.clone()).unwrap();
    let small = |i| record("s", i, 100); // frame: 108 bytes, two per segment
    let mut written = Vec::new();
    for i in 0..5 {
        let pos = append(&wal, vec![small(i)]);
        written.push((pos[0], small(i)));
    }
    let segments: Vec<u64> = written.iter().map(|(p, _)| p.segment).collect();
    assert_eq!(segments, vec![0, 0, 1, 1, 2]);
    assert_eq!(written[1].0.offset, frame_len(100));
    // A batch larger than a segment gets a segment of its own, unsplit.
    let big: Vec<Vec<u8>> = (0..3).map(|i| record("big", i, 100)).collect();
    let big_pos = append(&wal, big.clone());
    assert!(big_pos.iter().all(|p| p.segment == 3));
    assert_eq!(big_pos[0].offset, 0);
    written.extend(big_pos.iter().copied().zip(big));
    let after = append(&wal, vec![small(9)]);
    assert_eq!(after[0], RecordPos::new(4, 0));
    written.push((after[0], small(9)));

    assert_eq!(wal.segments(), vec![0, 1, 2, 3, 4]);
    for (pos, payload) in &written {
        assert_eq!(&wal.read(*pos).unwrap(), payload);
    }
    assert_eq!(replay_all(&wal), written);
    let mut tail = Vec::new();
    wal.replay(written[3].0, |pos, p| {
        tail.push((pos, p.to_vec()));
        Ok(())
    })
    .unwrap();
    assert_eq!(tail, written[3..]);
    let mut beyond = 0;
    for from in [wal.durable_end(), RecordPos::new(99, 0)] {
        wal.replay(from, |_, _| {
            beyond += 1;
            Ok(())
        })
        .unwrap();
    }
    assert_eq!(beyond, 0, "nothing lies at or past the durable end");
    let on_disk: u64 = (0..5)
        .map(|id| file_len(&segment_file(dir.path(), id)))
        .sum();
    assert_eq!(wal.disk_bytes(), on_disk);
    drop(wal);

    let wal = Wal::open(dir.path(), opts).unwrap();
    assert_eq!(wal.segments(), vec![0, 1, 2, 3, 4]);
    assert_eq!(replay_all(&wal), written);
}

/// Writes batches A (2 records), B (1), C (3) and closes; returns the dir and the batches.
fn three_batches() -> (tempfile::TempDir, Vec<Vec<Vec<u8>>>) {
    let dir = tempfile::tempdir().unwrap();
    let batches = vec![
        vec![record("a", 0, 40), record("a", 1, 40)],
        vec![record("b", 0, 40)],
        vec![record("c", 0, 40), record("c", 1, 40), record("c", 2, 40)],
    ];
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    for batch in &batches {
        append(&wal, batch.clone());
    }
    drop(wal);
    (dir, batches)
}

/// Reopens after damage and checks that exactly `keep` whole batches survive and that the
/// log keeps working after the repair.
fn assert_recovers_to(dir: &Path, batches: &[Vec<Vec<u8>>], keep: usize) {
    let wal = Wal::open(dir, WalOptions::default()).unwrap();
    let expected: Vec<Vec<u8>> = batches[..keep].iter().flatten().cloned().collect();
    assert_eq!(payloads(&wal), expected);
    let kept_bytes: u64 = expected.iter().map(|r| frame_len(r.len())).sum();
    assert_eq!(wal.durable_end(), RecordPos::new(0, kept_bytes));
    assert_eq!(file_len(&segment_file(dir, 0)), kept_bytes);
    let pos = append(&wal, vec![b"after repair".to_vec()]);
    assert_eq!(pos[0], RecordPos::new(0, kept_bytes));
    drop(wal);
    let wal = Wal::open(dir, WalOptions::default()).unwrap();
    let mut with_new = expected;
    with_new.push(b"after repair".to_vec());
    assert_eq!(payloads(&wal), with_new);
}

#[test]
fn a_tail_truncated_mid_record_loses_only_the_last_batch() {
    let (dir, batches) = three_batches();
    let path = segment_file(dir.path(), 0);
    let len = file_len(&path);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 30).unwrap();
    assert_recovers_to(dir.path(), &batches, 2);
}

#[test]
fn garbage_after_the_last_batch_is_cut_off() {
    let (dir, batches) = three_batches();
    let mut file = OpenOptions::new()
        .append(true)
        .open(segment_file(dir.path(), 0))
        .unwrap();
    file.write_all(&[0xAB; 37]).unwrap();
    assert_recovers_to(dir.path(), &batches, 3);
}

#[test]
fn a_flipped_byte_in_the_last_record_drops_its_whole_batch() {
    let (dir, batches) = three_batches();
    let path = segment_file(dir.path(), 0);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    assert_recovers_to(dir.path(), &batches, 2);
}

#[test]
fn a_partially_written_batch_is_discarded_whole() {
    let (dir, batches) = three_batches();
    // Two valid frames of a three-record batch: the closing frame never made it.
    let mut partial = Vec::new();
    frame::encode(&mut partial, b"d-0", false);
    frame::encode(&mut partial, b"d-1", false);
    let mut file = OpenOptions::new()
        .append(true)
        .open(segment_file(dir.path(), 0))
        .unwrap();
    file.write_all(&partial).unwrap();
    assert_recovers_to(dir.path(), &batches, 3);
}

/// Three segments of two one-record batches each.
fn three_segments(dir: &Path) -> WalOptions {
    let opts = options(256, SyncMode::Fsync);
    let wal = Wal::open(dir, opts.clone()).unwrap();
    for i in 0..6 {
        append(&wal, vec![record("r", i, 100)]);
    }
    assert_eq!(wal.segments(), vec![0, 1, 2]);
    opts
}

#[test]
fn corruption_in_a_sealed_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = three_segments(dir.path());
    let path = segment_file(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    bytes[20] ^= 0x40;
    fs::write(&path, bytes).unwrap();
    match Wal::open(dir.path(), opts) {
        Err(WalError::Corrupt {
            segment, offset, ..
        }) => assert_eq!((segment, offset), (1, 0)),
        other => panic!("expected corruption of segment 1, got {other:?}"),
    }
    assert_eq!(file_len(&path), 2 * frame_len(100), "nothing was truncated");
}

#[test]
fn a_truncated_sealed_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = three_segments(dir.path());
    let path = segment_file(dir.path(), 0);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(frame_len(100) + 10)
        .unwrap();
    assert!(matches!(
        Wal::open(dir.path(), opts),
        Err(WalError::Corrupt { segment: 0, .. })
    ));
}

#[test]
fn removed_segments_are_gone_and_the_active_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let opts = three_segments(dir.path());
    let wal = Wal::open(dir.path(), opts.clone()).unwrap();
    let before = wal.disk_bytes();
    let first = replay_all(&wal)[0].0;
    wal.remove_segments(&[0, 2, 42]).unwrap();
    assert_eq!(wal.segments(), vec![1, 2]);
    assert!(!segment_file(dir.path(), 0).exists());
    assert!(segment_file(dir.path(), 2).exists());
    assert_eq!(wal.disk_bytes(), before - 2 * frame_len(100));
    assert!(matches!(wal.read(first), Err(WalError::NotFound { .. })));
    let names: Vec<Vec<u8>> = payloads(&wal);
    assert_eq!(
        names,
        (2..6).map(|i| record("r", i, 100)).collect::<Vec<_>>()
    );
    wal.remove_segments(&[0]).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), opts).unwrap();
    assert_eq!(wal.segments(), vec![1, 2]);
    assert_eq!(payloads(&wal).len(), 4);
}

#[tokio::test]
async fn submit_after_close_fails_and_close_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let (_, ticket) = wal.submit(vec![b"queued".to_vec()]).unwrap();
    wal.close().await.unwrap();
    ticket.await.unwrap();
    assert!(matches!(
        wal.submit(vec![b"late".to_vec()]),
        Err(WalError::Closed)
    ));
    wal.close().await.unwrap();
    assert_eq!(payloads(&wal), vec![b"queued".to_vec()]);
}

#[test]
fn dropping_without_close_drains_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let tickets: Vec<AppendTicket> = (0..10)
        .map(|i| wal.submit(vec![record("d", i, 10)]).unwrap().1)
        .collect();
    drop(wal);
    for ticket in tickets {
        ticket.wait().unwrap();
    }
    let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(payloads(&wal).len(), 10);
}

#[tokio::test]
async fn a_failed_write_fails_its_tickets_and_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(256, SyncMode::Fsync);
    let wal = Wal::open(dir.path(), opts.clone()).unwrap();
    // The writer cannot create segment 1: a directory squats its name.
    fs::create_dir(segment_file(dir.path(), 1)).unwrap();
    let (_, ok) = wal.submit(vec![record("ok", 0, 100)]).unwrap();
    ok.await.unwrap();
    let (_, rolls) = wal.submit(vec![record("fails", 0, 200)]).unwrap();
    // Depending on timing, a batch submitted right behind it is refused at once or queued
    // and then failed; it is never acknowledged.
    let behind = match wal.submit(vec![record("fails", 1, 10)]) {
        Ok((_, ticket)) => ticket.await,
        Err(refused) => Err(refused),
    };
    assert!(matches!(rolls.await, Err(WalError::Poisoned(_))));
    assert!(matches!(behind, Err(WalError::Poisoned(_))));
    assert!(matches!(
        wal.submit(vec![b"later".to_vec()]),
        Err(WalError::Poisoned(_))
    ));
    assert!(matches!(wal.close().await, Err(WalError::Poisoned(_))));
    drop(wal);
    fs::remove_dir(segment_file(dir.path(), 1)).unwrap();
    let wal = Wal::open(dir.path(), opts).unwrap();
    assert_eq!(payloads(&wal), vec![record("ok", 0, 100)]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever batches were written and wherever the last segment is cut, recovery keeps
    /// exactly the longest prefix of whole batches that the cut left intact.
    #[test]
    fn recovery_after_a_random_cut_keeps_a_prefix_of_whole_batches(
        batches in prop::collection::vec(
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 1..4),
            1..16,
        ),
        segment_bytes in 64u64..400,
        cut in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(segment_bytes, SyncMode::OsBuffer);
        let wal = Wal::open(dir.path(), opts.clone()).unwrap();
        let mut ends = Vec::new();
        for batch in &batches {
            let positions = append(&wal, batch.clone());
            let last = *positions.last().unwrap();
            let end = last.offset + frame_len(batch.last().unwrap().len());
            ends.push(RecordPos::new(last.segment, end));
        }
        let last_segment = *wal.segments().last().unwrap();
        drop(wal);

        let path = segment_file(dir.path(), last_segment);
        let cut_at = cut.index(file_len(&path) as usize + 1) as u64;
        OpenOptions::new().write(true).open(&path).unwrap().set_len(cut_at).unwrap();

        let keep = ends
            .iter()
            .take_while(|end| end.segment < last_segment || end.offset <= cut_at)
            .count();
        let expected: Vec<Vec<u8>> = batches[..keep].iter().flatten().cloned().collect();
        let wal = Wal::open(dir.path(), opts).unwrap();
        prop_assert_eq!(payloads(&wal), expected);
    }
}
