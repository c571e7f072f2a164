//! (5) A backlog published then drained, and (6) the server's start-up time with it on disk.
//!
//! `s.backlog_publishers` publishers publish `s.backlog` messages in batches as fast as the
//! target confirms them (no consumer yet); then the server's memory (PSS) is read; then, for
//! (6), the server is restarted on the same data and timed until it serves again; then
//! `s.consumers` consumers drain the subscription, and every message must arrive.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;

use super::{Dedup, Settings, check_own, finish, less, more, nanos, payload, spawn, spec};
use crate::report::Figure;
use crate::target::Target;

/// Mebibytes.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Returns the backlog figures and, when `restart`, the start-up figures.
pub async fn run(
    target: &dyn Target,
    s: &Settings,
    restart: bool,
) -> (
    anyhow::Result<Vec<Figure>>,
    Option<anyhow::Result<Vec<Figure>>>,
) {
    let queue = match target.queue(&spec("backlog", 1, s.backlog_size)).await {
        Ok(q) => q,
        Err(e) => {
            let startup = restart.then(|| Err(anyhow::anyhow!("no backlog: {e:#}")));
            return (Err(e), startup);
        }
    };
    let mut startup = None;
    let r = async {
        // Publish.
        let mut pubs = Vec::new();
        for _ in 0..s.backlog_publishers {
            pubs.push(queue.publisher().await.context("connecting a publisher")?);
        }
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let run_start = nanos(started);
        let mut tasks = Vec::new();
        for mut p in pubs {
            let next = next.clone();
            let (total, batch, size) = (s.backlog, s.batch as u64, s.backlog_size);
            tasks.push(spawn(async move {
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= total {
                        break;
                    }
                    let n = batch.min(total - first);
                    let now = nanos(Instant::now());
                    p.publish((0..n).map(|_| payload(size, now)).collect())
                        .await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await?.context("a publisher failed")?;
        }
        let publish_secs = started.elapsed().as_secs_f64();
        let memory = target.server_memory();

        // Start-up with the backlog on disk: the time until the server is ready (its own
        // signal), completed below by the time until the first message of the backlog is
        // back in a consumer's hands (the same measure for every target).
        let (mut ready, mut memory_after_start) = (None, None);
        // When the new process was spawned: the clock of both start-up figures, which leave
        // out the clean stop before it (seconds for some servers, and not start-up).
        let mut spawned_at = Instant::now();
        if restart {
            match target.restart().await {
                Ok(Some(took)) => {
                    spawned_at = Instant::now() - took;
                    ready = Some(took);
                    memory_after_start = target.server_memory();
                }
                Ok(None) => {
                    startup = Some(Err(anyhow::anyhow!(
                        "n/a: the tool does not restart this server (not started by it, or in \
                         memory)"
                    )));
                }
                Err(e) => startup = Some(Err(e.context("restarting"))),
            }
        }

        // Drain.
        let mut cons = Vec::new();
        for _ in 0..s.consumers {
            cons.push(queue.consumer(0).await.context("connecting a consumer")?);
        }
        let received = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        let dedup = Dedup::default();
        let first_ns = Arc::new(AtomicU64::new(u64::MAX));
        let duplicates = Arc::new(AtomicU64::new(0));
        for mut c in cons {
            let received = received.clone();
            let dedup = dedup.clone();
            let duplicates = duplicates.clone();
            let first_ns = first_ns.clone();
            let (total, idle) = (s.backlog, s.idle_timeout);
            tasks.push(spawn(async move {
                let mut last = Instant::now();
                while received.load(Ordering::Relaxed) < total {
                    let got = c
                        .receive(1000, std::time::Duration::from_millis(100))
                        .await?;
                    check_own(&got, run_start)?;
                    let (got, dups) = dedup.fresh(got);
                    duplicates.fetch_add(dups, Ordering::Relaxed);
                    if got.is_empty() {
                        if last.elapsed() > idle {
                            break;
                        }
                    } else {
                        last = Instant::now();
                        first_ns.fetch_min(nanos(last), Ordering::Relaxed);
                        received.fetch_add(got.len() as u64, Ordering::Relaxed);
                    }
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await?.context("a consumer failed")?;
        }
        let drain_secs = started.elapsed().as_secs_f64();
        if let Some(ready) = ready {
            let first = first_ns.load(Ordering::Relaxed);
            let mut f = vec![less("startup s", ready.as_secs_f64())];
            if first != u64::MAX {
                let since = first.saturating_sub(nanos(spawned_at));
                f.push(less("first message s", since as f64 / 1e9));
            }
            if let Some(memory) = memory_after_start {
                f.push(less("memory after start MiB", mib(memory)));
            }
            startup = Some(Ok(f));
        }
        let got = received.load(Ordering::Relaxed);
        if got < s.backlog {
            anyhow::bail!(
                "drained only {got} of {} messages (nothing arrived for {:?})",
                s.backlog,
                s.idle_timeout
            );
        }
        let mut f = vec![
            less("publish s", publish_secs),
            more("publish msg/s", s.backlog as f64 / publish_secs),
            less("drain s", drain_secs),
            more("drain msg/s", s.backlog as f64 / drain_secs),
        ];
        if let Some(memory) = memory {
            f.push(less("memory MiB", mib(memory)));
        }
        f.push(less(
            "duplicates",
            duplicates.load(Ordering::Relaxed) as f64,
        ));
        Ok(f)
    }
    .await;
    let backlog = finish(queue.as_ref(), r).await;
    if restart && startup.is_none() {
        startup = Some(Err(anyhow::anyhow!(
            "the backlog failed before its start-up was measured"
        )));
    }
    (backlog, startup)
}
