//! Measures the write-ahead log's group commit: appends of 1 KiB records from 1 and 16
//! concurrent submitters, each awaiting its ticket before the next append (like a publisher
//! awaiting its ack), in `Fsync` and `OsBuffer` modes.
//!
//! ```text
//! cargo run --release -p converge-store --example wal_bench
//! WAL_BENCH_DIR=/mnt/disk WAL_BENCH_SECS=5 cargo run --release -p converge-store --example wal_bench
//! ```
//!
//! Point `WAL_BENCH_DIR` at the disk you care about: on tmpfs an fsync costs nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use converge_store::embedded::wal::{SyncMode, Wal, WalError, WalOptions};

/// Payload size of every record.
const RECORD_BYTES: usize = 1024;

/// What one scenario measured.
struct Outcome {
    records: u64,
    elapsed: Duration,
    commits: u64,
}

/// Runs `submitters` publishers against a fresh log in `dir` for `duration`.
async fn run(
    dir: &Path,
    sync: SyncMode,
    submitters: usize,
    duration: Duration,
) -> Result<Outcome, WalError> {
    let options = WalOptions {
        sync,
        ..WalOptions::default()
    };
    let wal = Arc::new(Wal::open(dir, options)?);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(submitters);
    for submitter in 0..submitters {
        let wal = Arc::clone(&wal);
        tasks.push(tokio::spawn(async move {
            let payload = vec![submitter as u8; RECORD_BYTES];
            let mut appended = 0u64;
            while Instant::now() < deadline {
                let (_, ticket) = wal.submit(vec![payload.clone()])?;
                ticket.await?;
                appended += 1;
            }
            Ok::<u64, WalError>(appended)
        }));
    }
    let mut records = 0;
    for task in tasks {
        records += task.await.expect("submitter task panicked")?;
    }
    let elapsed = start.elapsed();
    wal.close().await?;
    let stats = wal.stats();
    debug_assert_eq!(stats.records, records);
    Ok(Outcome {
        records,
        elapsed,
        commits: stats.commits,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs: f64 = std::env::var("WAL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let base = match std::env::var_os("WAL_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    println!(
        "write-ahead log, {RECORD_BYTES} B records, {secs} s per run, in {}",
        base.path().display()
    );
    println!(
        "{:<9} {:>10} {:>12} {:>9} {:>14} {:>13}",
        "mode", "submitters", "records/s", "MiB/s", "records/commit", "mean ack (µs)"
    );
    for (sync, label) in [
        (SyncMode::Fsync, "fsync"),
        (SyncMode::OsBuffer, "os-buffer"),
    ] {
        for submitters in [1, 16] {
            let dir = base.path().join(format!("{label}-{submitters}"));
            let out = run(&dir, sync, submitters, Duration::from_secs_f64(secs)).await?;
            let seconds = out.elapsed.as_secs_f64();
            let rate = out.records as f64 / seconds;
            let mib = rate * RECORD_BYTES as f64 / (1024.0 * 1024.0);
            let per_commit = out.records as f64 / out.commits.max(1) as f64;
            let mean_ack_us = seconds * 1e6 * submitters as f64 / out.records.max(1) as f64;
            println!(
                "{label:<9} {submitters:>10} {rate:>12.0} {mib:>9.1} {per_commit:>14.2} {mean_ack_us:>13.1}"
            );
        }
    }
    Ok(())
}
