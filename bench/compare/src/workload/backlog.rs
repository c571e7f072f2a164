//! (5) A backlog published then drained, and (6) the server's start-up time with it on disk.
//!
//! `s.backlog_publishers` publishers publish `s.backlog` messages in batches as fast as the
//! target confirms them (no consumer yet); then the server's resident memory is read; then, for
//! (6), the server is restarted on the same data and timed until it serves again; then
//! `s.consumers` consumers drain the subscription, and every message must arrive.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context as _;

use super::{Dedup, Settings, check_own, finish, less, more, nanos, payload, spec};
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
            tasks.push(tokio::spawn(async move {
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
        let rss = target.server_rss();

        // Start-up with the backlog on disk.
        if restart {
            startup = Some(match target.restart().await {
                Ok(Some(took)) => {
                    let mut f = vec![less("startup s", took.as_secs_f64())];
                    if let Some(rss) = target.server_rss() {
                        f.push(less("RSS after start MiB", mib(rss)));
                    }
                    Ok(f)
                }
                Ok(None) => Err(anyhow::anyhow!(
                    "n/a: the tool does not restart this server (not started by it, or in memory)"
                )),
                Err(e) => Err(e.context("restarting")),
            });
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
        let duplicates = Arc::new(AtomicU64::new(0));
        for mut c in cons {
            let received = received.clone();
            let dedup = dedup.clone();
            let duplicates = duplicates.clone();
            let (total, idle) = (s.backlog, s.idle_timeout);
            tasks.push(tokio::spawn(async move {
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
        if let Some(rss) = rss {
            f.push(less("RSS MiB", mib(rss)));
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
            "the backlog failed before the restart"
        )));
    }
    (backlog, startup)
}
