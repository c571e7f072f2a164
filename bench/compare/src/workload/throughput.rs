//! Closed-loop throughput: (1) publish only, (2) publish → receive → ack, (4) the same with
//! several subscriptions (fan-out).
//!
//! Each publisher is its own task with its own connection, publishing batches back to back.
//! Only what completes inside the measuring window counts (a warm-up precedes it), so
//! connection set-up and the tail of the run are left out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::Semaphore;

use super::{
    Dedup, Settings, check_own, finish, histogram, less, more, ms, nanos, payload, spawn, spec,
    stamp,
};
use crate::report::Figure;
use crate::target::Target;

/// Deliveries that may be published and not yet received in the end-to-end workloads: enough
/// to keep every consumer busy, small enough that the rate measured is the sustainable one
/// rather than the speed of filling a backlog.
const MAX_IN_FLIGHT: usize = 20_000;
/// How long a consumer waits for messages before it checks whether the run is over.
const RECEIVE_WAIT: Duration = Duration::from_millis(100);
/// Most messages a consumer takes at once.
const RECEIVE_MAX: usize = 1000;

/// (1) `publishers` publishers, each publishing batches of `s.batch` messages of `size` bytes
/// back to back: messages confirmed per second, and the publish call's latency.
pub async fn publish(
    target: &dyn Target,
    s: &Settings,
    publishers: usize,
    size: usize,
) -> anyhow::Result<Vec<Figure>> {
    let queue = target.queue(&spec("publish", 1, size)).await?;
    let r = async {
        let mut pubs = Vec::with_capacity(publishers);
        for _ in 0..publishers {
            pubs.push(queue.publisher().await.context("connecting a publisher")?);
        }
        let start = Instant::now();
        let window_start = start + s.warmup;
        let window_end = window_start + s.duration;
        let mut tasks = Vec::new();
        for mut p in pubs {
            let batch = s.batch;
            tasks.push(spawn(async move {
                let mut counted = 0u64;
                let mut hist = histogram();
                loop {
                    let t0 = Instant::now();
                    if t0 >= window_end {
                        break;
                    }
                    let messages = (0..batch).map(|_| payload(size, nanos(t0))).collect();
                    p.publish(messages).await?;
                    let t1 = Instant::now();
                    if t0 >= window_start && t1 <= window_end {
                        counted += batch as u64;
                        hist.saturating_record(super::micros(t1 - t0));
                    }
                }
                anyhow::Ok((counted, hist))
            }));
        }
        let mut total = 0u64;
        let mut hist = histogram();
        for t in tasks {
            let (n, h) = t.await??;
            total += n;
            hist.add(h).ok();
        }
        let secs = s.duration.as_secs_f64();
        let rate = total as f64 / secs;
        Ok(vec![
            more("msg/s", rate),
            more("MB/s", rate * size as f64 / 1e6),
            less("batch p50 ms", ms(hist.value_at_quantile(0.5))),
            less("batch p99 ms", ms(hist.value_at_quantile(0.99))),
        ])
    }
    .await;
    finish(queue.as_ref(), r).await
}

/// (2) and (4): `s.e2e_publishers` publishers and `consumers_per_sub` consumers on each of
/// `subscriptions` subscriptions, with at most [`MAX_IN_FLIGHT`] deliveries outstanding:
/// deliveries received (and acked) per second within the window, the publish rate, and the
/// (closed-loop, so indicative) delivery latency.
pub async fn end_to_end(
    target: &dyn Target,
    s: &Settings,
    size: usize,
    subscriptions: usize,
    consumers_per_sub: usize,
) -> anyhow::Result<Vec<Figure>> {
    let workload = if subscriptions > 1 { "fanout" } else { "e2e" };
    let queue = target.queue(&spec(workload, subscriptions, size)).await?;
    let r = async {
        let mut pubs = Vec::new();
        for _ in 0..s.e2e_publishers {
            pubs.push(queue.publisher().await.context("connecting a publisher")?);
        }
        let mut cons = Vec::new();
        for sub in 0..subscriptions {
            let dedup = Dedup::default();
            for _ in 0..consumers_per_sub {
                let c = queue.consumer(sub).await.context("connecting a consumer")?;
                cons.push((c, dedup.clone()));
            }
        }
        // One permit per delivery: a publish of a batch takes `batch * subscriptions`, each
        // message received gives one back.
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT.max(s.batch * subscriptions)));
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let run_start = nanos(start);
        let window_start = start + s.warmup;
        let window_end = window_start + s.duration;
        let mut pub_tasks = Vec::new();
        for mut p in pubs {
            let permits = permits.clone();
            let published = published.clone();
            let batch = s.batch;
            pub_tasks.push(spawn(async move {
                loop {
                    let need = u32::try_from(batch * subscriptions).unwrap_or(u32::MAX);
                    let Ok(permit) = permits.acquire_many(need).await else {
                        break; // closed: the window is over
                    };
                    permit.forget();
                    let t0 = Instant::now();
                    if t0 >= window_end {
                        break;
                    }
                    let messages = (0..batch).map(|_| payload(size, nanos(t0))).collect();
                    p.publish(messages).await?;
                    if t0 >= window_start && Instant::now() <= window_end {
                        published.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                }
                anyhow::Ok(())
            }));
        }
        let mut con_tasks = Vec::new();
        for (mut c, dedup) in cons {
            let permits = permits.clone();
            let stop = stop.clone();
            con_tasks.push(spawn(async move {
                let mut counted = 0u64;
                let mut dups = 0u64;
                let mut hist = histogram();
                while !stop.load(Ordering::Relaxed) {
                    let got = c.receive(RECEIVE_MAX, RECEIVE_WAIT).await?;
                    check_own(&got, run_start)?;
                    let now = Instant::now();
                    let (got, d) = dedup.fresh(got);
                    dups += d;
                    permits.add_permits(got.len());
                    if now >= window_start && now <= window_end {
                        counted += got.len() as u64;
                        let now_ns = nanos(now);
                        for m in &got {
                            if let Some(sent) = stamp(m) {
                                hist.saturating_record((now_ns.saturating_sub(sent) / 1000).max(1));
                            }
                        }
                    }
                }
                anyhow::Ok((counted, dups, hist))
            }));
        }
        tokio::time::sleep_until(window_end.into()).await;
        permits.close();
        let mut first_error = None;
        for t in pub_tasks {
            if let Err(e) = t.await.map_err(anyhow::Error::from).and_then(|r| r) {
                first_error.get_or_insert(e.context("a publisher failed"));
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut received = 0u64;
        let mut duplicates = 0u64;
        let mut hist = histogram();
        for t in con_tasks {
            match t.await.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok((n, d, h)) => {
                    received += n;
                    duplicates += d;
                    hist.add(h).ok();
                }
                Err(e) => {
                    first_error.get_or_insert(e.context("a consumer failed"));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if received == 0 {
            anyhow::bail!("nothing was received within the window");
        }
        let secs = s.duration.as_secs_f64();
        let rate = received as f64 / secs;
        let mut figures = vec![more(
            if subscriptions > 1 {
                "deliveries/s"
            } else {
                "msg/s"
            },
            rate,
        )];
        if subscriptions > 1 {
            figures.push(more(
                "published msg/s",
                published.load(Ordering::Relaxed) as f64 / secs,
            ));
        } else {
            figures.push(more("MB/s", rate * size as f64 / 1e6));
        }
        figures.push(less("p50 ms", ms(hist.value_at_quantile(0.5))));
        figures.push(less("p99 ms", ms(hist.value_at_quantile(0.99))));
        figures.push(less("duplicates", duplicates as f64));
        Ok(figures)
    }
    .await;
    finish(queue.as_ref(), r).await
}
