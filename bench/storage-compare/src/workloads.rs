//! The four workloads, written once against [`QueueStore`] and run for every engine.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::{JoinSet, block_in_place};
use tokio::time::timeout_at;

use crate::engines::{EngineKind, EngineOptions};
use crate::harness::{PayloadGen, QueueStore, payload_seq};
use crate::probe::disk_bytes;

/// A store shared by the tasks of a workload; boxed inside so it can be taken back and closed.
type SharedStore = Arc<Box<dyn QueueStore>>;

/// Sizes and durations of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// How long each timed window lasts.
    pub window: Duration,
    /// Message size in bytes.
    pub message_bytes: usize,
    /// Producers of the queue steady-state workload.
    pub queue_producers: usize,
    /// Backlog the steady-state workload keeps.
    pub backlog: u64,
    /// Messages appended before the head-of-queue and recovery measurements.
    pub load: u64,
    /// Of those, how many are deleted from the head.
    pub delete: u64,
    /// Messages per batch when loading and deleting in bulk.
    pub bulk_batch: usize,
}

/// Workload 1: durable append throughput.
#[derive(Debug, Clone, Copy)]
pub struct AppendResult {
    /// Durable appends per second.
    pub per_sec: f64,
    /// Messages per group commit.
    pub avg_group: f64,
    /// Median time from submit to durable, in microseconds.
    pub p50_us: f64,
    /// 99th percentile of the same.
    pub p99_us: f64,
}

/// Workload 2: the queue in steady state.
#[derive(Debug, Clone, Copy)]
pub struct QueueResult {
    /// Messages consumed (read and deleted durably) per second.
    pub consumed_per_sec: f64,
    /// Messages appended durably per second.
    pub produced_per_sec: f64,
    /// Disk bytes at the end of the window.
    pub disk_bytes: u64,
}

/// Workloads 3 and 4: the head-of-queue trap and recovery.
#[derive(Debug, Clone, Copy)]
pub struct HeadResult {
    /// Time to open the store holding `load` live messages after a clean shutdown.
    pub open_full: Duration,
    /// Time to open a copy of the same files taken while the store was running: what a
    /// restart after a crash or power loss (after the last fsync) costs.
    pub open_crashed: Duration,
    /// Median time to find and read the first live message after the head deletes.
    pub first_live: Duration,
    /// Disk bytes after the head deletes.
    pub disk_after_delete: u64,
    /// Time to open the store once the head is deleted.
    pub open_after_delete: Duration,
}

/// Opens `kind` in `dir` for a workload.
fn open(kind: EngineKind, dir: &Path, options: &EngineOptions) -> anyhow::Result<SharedStore> {
    let store = block_in_place(|| kind.open(dir, options))
        .with_context(|| format!("opening {kind} in {}", dir.display()))?;
    Ok(Arc::new(store))
}

/// Closes a store once every task using it has finished.
fn close(store: SharedStore) -> anyhow::Result<()> {
    let store = Arc::into_inner(store).context("store still in use at close")?;
    block_in_place(|| store.close())
}

/// Appends `count` messages numbered from `first_seq` in batches of `batch`, each awaited.
async fn bulk_append(
    store: &dyn QueueStore,
    first_seq: u64,
    count: u64,
    batch: usize,
    message_bytes: usize,
) -> anyhow::Result<()> {
    let mut payloads = PayloadGen::new(first_seq + 7, message_bytes);
    let mut seq = first_seq;
    let end = first_seq + count;
    while seq < end {
        let upto = end.min(seq + batch as u64);
        let batch: Vec<Vec<u8>> = (seq..upto).map(|s| payloads.payload(s)).collect();
        store.append(batch)?.await?;
        seq = upto;
    }
    Ok(())
}

/// Workload 1: `producers` tasks each append one message and wait for it to be durable before
/// the next, for one window.
pub async fn append_throughput(
    kind: EngineKind,
    dir: &Path,
    options: &EngineOptions,
    producers: usize,
    plan: &Plan,
) -> anyhow::Result<AppendResult> {
    let store = open(kind, dir, options)?;
    let before = store.group_stats();
    let start = Instant::now();
    let deadline = start + plan.window;
    let mut tasks = JoinSet::new();
    for producer in 0..producers {
        let store = Arc::clone(&store);
        let message_bytes = plan.message_bytes;
        tasks.spawn(async move {
            let mut payloads = PayloadGen::new(producer as u64 + 1, message_bytes);
            let mut latency = Histogram::<u64>::new(3)?;
            let mut seq = 0;
            while Instant::now() < deadline {
                let payload = payloads.payload(seq);
                seq += 1;
                let sent = Instant::now();
                store.append(vec![payload])?.await?;
                latency.saturating_record(sent.elapsed().as_micros() as u64);
            }
            anyhow::Ok(latency)
        });
    }
    let mut latency = Histogram::<u64>::new(3)?;
    while let Some(done) = tasks.join_next().await {
        latency.add(done??)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let avg_group = store.group_stats().average_group_since(before);
    close(store)?;
    Ok(AppendResult {
        per_sec: latency.len() as f64 / elapsed,
        avg_group,
        p50_us: latency.value_at_quantile(0.5) as f64,
        p99_us: latency.value_at_quantile(0.99) as f64,
    })
}

/// Waits for the next change on `rx`, or for the deadline; `false` once the deadline passed.
async fn wait_change(rx: &mut watch::Receiver<()>, deadline: Instant) -> bool {
    matches!(timeout_at(deadline.into(), rx.changed()).await, Ok(Ok(())))
}

/// Workload 2: a backlog of about `plan.backlog` messages; producers append while one consumer
/// reads the oldest messages and deletes (acknowledges) them, for one window.
pub async fn queue_steady(
    kind: EngineKind,
    dir: &Path,
    options: &EngineOptions,
    plan: &Plan,
) -> anyhow::Result<QueueResult> {
    let store = open(kind, dir, options)?;
    bulk_append(
        store.as_ref().as_ref(),
        0,
        plan.backlog,
        plan.bulk_batch,
        plan.message_bytes,
    )
    .await?;
    let target = i64::try_from(plan.backlog)?;
    // Producers pause above this, so the consumer is never starved nor swamped.
    let ceiling = target + target / 5;
    let live = Arc::new(AtomicI64::new(target));
    let (appended, _) = watch::channel(());
    let (consumed, _) = watch::channel(());
    let appended = Arc::new(appended);
    let consumed = Arc::new(consumed);
    let start = Instant::now();
    let deadline = start + plan.window;

    let mut producers = JoinSet::new();
    for producer in 0..plan.queue_producers {
        let (store, live) = (Arc::clone(&store), Arc::clone(&live));
        let (appended, mut consumed) = (Arc::clone(&appended), consumed.subscribe());
        let message_bytes = plan.message_bytes;
        producers.spawn(async move {
            let mut payloads = PayloadGen::new(1000 + producer as u64, message_bytes);
            let mut count = 0_u64;
            while Instant::now() < deadline {
                consumed.borrow_and_update();
                if live.load(Ordering::Acquire) >= ceiling {
                    if !wait_change(&mut consumed, deadline).await {
                        break;
                    }
                    continue;
                }
                store.append(vec![payloads.payload(count)])?.await?;
                count += 1;
                live.fetch_add(1, Ordering::AcqRel);
                appended.send_replace(());
            }
            anyhow::Ok(count)
        });
    }

    let consumer = {
        let (store, live) = (Arc::clone(&store), Arc::clone(&live));
        let (consumed, mut appended) = (Arc::clone(&consumed), appended.subscribe());
        tokio::spawn(async move {
            let mut count = 0_u64;
            while Instant::now() < deadline {
                appended.borrow_and_update();
                let excess = live.load(Ordering::Acquire) - target;
                let (taken, ticket) = if excess > 0 {
                    let max = usize::try_from(excess)?.min(256);
                    block_in_place(|| store.consume_oldest(max))?
                } else {
                    (0, crate::harness::ready_ticket())
                };
                if taken == 0 {
                    if !wait_change(&mut appended, deadline).await {
                        break;
                    }
                    continue;
                }
                ticket.await?;
                block_in_place(|| store.reclaim())?;
                count += taken as u64;
                live.fetch_sub(i64::try_from(taken)?, Ordering::AcqRel);
                consumed.send_replace(());
            }
            anyhow::Ok(count)
        })
    };

    let mut produced = 0;
    while let Some(done) = producers.join_next().await {
        produced += done??;
    }
    let consumed_count = consumer.await??;
    let elapsed = start.elapsed().as_secs_f64();
    let disk = disk_bytes(dir)?;
    close(store)?;
    Ok(QueueResult {
        consumed_per_sec: consumed_count as f64 / elapsed,
        produced_per_sec: produced as f64 / elapsed,
        disk_bytes: disk,
    })
}

/// Times `f`.
fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Duration)> {
    let start = Instant::now();
    let value = f()?;
    Ok((value, start.elapsed()))
}

/// Copies the live directory `from` to `to`. An engine's background work (fjall compacting)
/// may delete a file between listing and copying it; the copy is then retaken, since the
/// point is a state the engine could have left at a crash. The recovered message count is
/// checked afterwards, so a torn copy cannot go unnoticed.
fn snapshot_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    const ATTEMPTS: usize = 10;
    for _ in 1..ATTEMPTS {
        match copy_dir(from, to) {
            Err(e) if is_not_found(&e) => std::fs::remove_dir_all(to)?,
            other => return other,
        }
    }
    copy_dir(from, to)
}

/// Whether `error` is a file that vanished.
fn is_not_found(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// Copies the files under `from` to `to`, recursively (lock files included: a copy holds no
/// lock).
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Workloads 3 and 4: load `plan.load` messages, reopen (recovery), delete the first
/// `plan.delete`, time finding the first live message, then reopen again.
pub async fn head_and_recovery(
    kind: EngineKind,
    dir: &Path,
    options: &EngineOptions,
    plan: &Plan,
) -> anyhow::Result<HeadResult> {
    ensure!(
        plan.delete < plan.load,
        "the head trap needs live messages left"
    );
    let store = open(kind, dir, options)?;
    bulk_append(
        store.as_ref().as_ref(),
        0,
        plan.load,
        plan.bulk_batch,
        plan.message_bytes,
    )
    .await?;
    // Everything is acknowledged and the writer is idle: the files are what a power cut would
    // leave, minus whatever the engine would only do at a clean shutdown.
    let crashed = dir.with_extension("crashed");
    block_in_place(|| snapshot_dir(dir, &crashed))?;
    close(store)?;

    let (store, open_crashed) = timed(|| open(kind, &crashed, options))?;
    ensure!(
        store.backlog() == plan.load,
        "{kind} recovered {} messages after a crash, expected {}",
        store.backlog(),
        plan.load
    );
    close(store)?;
    std::fs::remove_dir_all(&crashed)?;

    let (store, open_full) = timed(|| open(kind, dir, options))?;
    ensure!(
        store.backlog() == plan.load,
        "{kind} recovered {} messages, expected {}",
        store.backlog(),
        plan.load
    );
    let mut deleted = 0_u64;
    while deleted < plan.delete {
        let max = usize::try_from(plan.delete - deleted)?.min(plan.bulk_batch);
        let (taken, ticket) = block_in_place(|| store.consume_oldest(max))?;
        ensure!(
            taken > 0,
            "{kind} had nothing to consume after {deleted} deletes"
        );
        ticket.await?;
        block_in_place(|| store.reclaim())?;
        deleted += taken as u64;
    }

    let mut samples = Vec::new();
    for _ in 0..5 {
        let (first, took) = timed(|| block_in_place(|| store.first_live_from_start()))?;
        let seq = first.as_deref().and_then(payload_seq);
        ensure!(
            seq == Some(plan.delete),
            "{kind}: first live message is {seq:?}, expected {}",
            plan.delete
        );
        samples.push(took);
    }
    samples.sort();
    let first_live = samples[samples.len() / 2];
    let disk_after_delete = disk_bytes(dir)?;
    close(store)?;

    let (store, open_after_delete) = timed(|| open(kind, dir, options))?;
    ensure!(
        store.backlog() == plan.load - plan.delete,
        "{kind} recovered {} live messages after deletes, expected {}",
        store.backlog(),
        plan.load - plan.delete
    );
    close(store)?;
    Ok(HeadResult {
        open_full,
        open_crashed,
        first_live,
        disk_after_delete,
        open_after_delete,
    })
}
