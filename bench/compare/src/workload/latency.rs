//! (3) End-to-end latency at a fixed rate, open loop.
//!
//! Message `i` is due at `start + i / rate`, whatever happened before: the schedule is set by
//! the clock, not by the answers. Messages are grouped into batches by tick (the messages due
//! within one tick go in one Publish, sent when the last of them is due), and the batches are
//! dealt round-robin to the publishers. Each message is stamped with its own due time, so a
//! publish that is late (a publisher still waiting on a slow answer) adds its lateness to the
//! latency of every message it carries: no coordinated omission. Latency = receipt − due time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{
    Dedup, Settings, check_own, finish, histogram, less, more, ms, nanos, payload, spawn, spec,
    stamp,
};
use crate::report::Figure;
use crate::target::Target;

/// Shortest batching tick.
const MIN_TICK: Duration = Duration::from_millis(1);
/// Longest batching tick: what the official client libraries wait by default to fill a batch.
const MAX_TICK: Duration = Duration::from_millis(10);
/// Messages a tick aims to hold: the official clients' default batch size, and the batch size
/// the end-to-end maximum was measured with. Between the two ticks the tick holds that many; at
/// low rates a batch waits at most [`MAX_TICK`], as a batching client library's would.
const MESSAGES_PER_TICK: f64 = 100.0;
/// How long after the last send the consumers may take to receive everything.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a consumer waits for messages before it checks whether it is done.
const RECEIVE_WAIT: Duration = Duration::from_millis(50);

/// Runs at `rate` messages per second of `size` bytes: p50/p99/p99.9/max latency.
pub async fn run(
    target: &dyn Target,
    s: &Settings,
    size: usize,
    rate: f64,
) -> anyhow::Result<Vec<Figure>> {
    let queue = target.queue(&spec("latency", 1, size)).await?;
    let r = async {
        let mut pubs = Vec::new();
        for _ in 0..s.latency_publishers {
            pubs.push(queue.publisher().await.context("connecting a publisher")?);
        }
        let mut cons = Vec::new();
        for _ in 0..s.consumers {
            cons.push(queue.consumer(0).await.context("connecting a consumer")?);
        }
        let tick = Duration::from_secs_f64(MESSAGES_PER_TICK / rate).clamp(MIN_TICK, MAX_TICK);
        let run_for = s.warmup + s.duration;
        let ticks = (run_for.as_secs_f64() / tick.as_secs_f64()).ceil() as u64;
        // Message count due by the end of tick `k` (exclusive upper bound of its indexes).
        let due_by = move |k: u64| (rate * tick.as_secs_f64() * k as f64).floor() as u64;
        let total = due_by(ticks);
        let start = Instant::now() + Duration::from_millis(50);
        let run_start = nanos(start);
        let measured_from = nanos(start + s.warmup);
        let n_pubs = pubs.len() as u64;
        let mut pub_tasks = Vec::new();
        for (p_index, mut p) in pubs.into_iter().enumerate() {
            pub_tasks.push(spawn(async move {
                let mut k = p_index as u64;
                while k < ticks {
                    let (first, end) = (due_by(k), due_by(k + 1));
                    k += n_pubs;
                    if first == end {
                        continue;
                    }
                    let due = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due(end - 1).into()).await;
                    let messages = (first..end).map(|i| payload(size, nanos(due(i)))).collect();
                    p.publish(messages).await?;
                }
                anyhow::Ok(())
            }));
        }
        let received = Arc::new(AtomicU64::new(0));
        let deadline = start + run_for + DRAIN_TIMEOUT;
        let mut con_tasks = Vec::new();
        let dedup = Dedup::default();
        let duplicates = Arc::new(AtomicU64::new(0));
        for mut c in cons {
            let received = received.clone();
            let dedup = dedup.clone();
            let duplicates = duplicates.clone();
            con_tasks.push(spawn(async move {
                let mut hist = histogram();
                while received.load(Ordering::Relaxed) < total && Instant::now() < deadline {
                    let got = c.receive(1000, RECEIVE_WAIT).await?;
                    check_own(&got, run_start)?;
                    let (got, dups) = dedup.fresh(got);
                    duplicates.fetch_add(dups, Ordering::Relaxed);
                    let now_ns = nanos(Instant::now());
                    received.fetch_add(got.len() as u64, Ordering::Relaxed);
                    for m in &got {
                        if let Some(due) = stamp(m).filter(|&d| d >= measured_from) {
                            hist.saturating_record((now_ns.saturating_sub(due) / 1000).max(1));
                        }
                    }
                }
                anyhow::Ok(hist)
            }));
        }
        for t in pub_tasks {
            t.await?.context("a publisher failed")?;
        }
        let mut hist = histogram();
        for t in con_tasks {
            hist.add(t.await?.context("a consumer failed")?).ok();
        }
        let got = received.load(Ordering::Relaxed);
        if got < total {
            anyhow::bail!(
                "only {got} of {total} messages arrived within {DRAIN_TIMEOUT:?} of the last send"
            );
        }
        if hist.is_empty() {
            anyhow::bail!("no message due within the measuring window arrived");
        }
        Ok(vec![
            less("p50 ms", ms(hist.value_at_quantile(0.5))),
            less("p99 ms", ms(hist.value_at_quantile(0.99))),
            less("p99.9 ms", ms(hist.value_at_quantile(0.999))),
            less("max ms", ms(hist.max())),
            more("rate msg/s", rate),
            less("duplicates", duplicates.load(Ordering::Relaxed) as f64),
        ])
    }
    .await;
    finish(queue.as_ref(), r).await
}
