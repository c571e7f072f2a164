//! `storage-compare`: measures converge's write-ahead log against redb, fjall and SQLite on the
//! same machine, in the same run, with the same durability (fsync before acknowledging) and the
//! same group-commit harness, and prints a Markdown table with each figure's ratio to the WAL.
//!
//! The write-up of a full run, and the decision it supports, is `docs/storage.md`.

mod engines;
mod harness;
mod kv;
mod probe;
mod report;
mod workloads;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use crate::engines::{EngineKind, EngineOptions};
use crate::report::Row;
use crate::workloads::Plan;

/// Side-by-side measurement of candidate storage engines for converge's embedded store.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Short run (about 20 s): half-second windows and a 50k-message head-of-queue load.
    #[arg(long)]
    quick: bool,
    /// Directory under which the data directories are created (and removed afterwards).
    /// Defaults to the system temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Engines to measure, comma-separated; the first is the baseline of the ratios.
    #[arg(long, value_enum, value_delimiter = ',')]
    engines: Vec<EngineKind>,
    /// Length of each timed window in seconds (default 3, or 0.5 with --quick).
    #[arg(long)]
    window_secs: Option<f64>,
    /// Segment size of converge's WAL in MiB (converge's default is 64).
    #[arg(long, default_value_t = 64)]
    wal_segment_mib: u64,
}

impl Args {
    /// The sizes and durations this invocation asks for.
    fn plan(&self) -> Plan {
        let (window, load, delete) = if self.quick {
            (0.5, 50_000, 47_500)
        } else {
            (3.0, 200_000, 190_000)
        };
        Plan {
            window: Duration::from_secs_f64(self.window_secs.unwrap_or(window)),
            message_bytes: 1024,
            queue_producers: 16,
            backlog: 10_000,
            load,
            delete,
            bulk_batch: 1000,
        }
    }
}

/// A fresh, empty data directory for one measurement.
fn fresh_dir(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = root.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Bytes to MiB for the table.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let engines = if args.engines.is_empty() {
        EngineKind::ALL.to_vec()
    } else {
        args.engines.clone()
    };
    let plan = args.plan();
    let options = EngineOptions {
        wal_segment_bytes: args.wal_segment_mib * 1024 * 1024,
    };
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    let root = tempfile::Builder::new()
        .prefix("storage-compare-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a data directory under {}", parent.display()))?;

    let fsync = probe::fsync_cost(root.path(), if args.quick { 100 } else { 300 })?;
    println!("data directory: {}", root.path().display());
    println!(
        "fsync probe: {} x (append 1 KiB + fdatasync): p50 {:.0} µs, mean {:.0} µs",
        fsync.iterations, fsync.p50_us, fsync.mean_us
    );
    println!(
        "plan: window {:.1} s, {} B messages, WAL segments {} MiB, queue: {} producers / backlog {}, head trap: {} appended, {} deleted",
        plan.window.as_secs_f64(),
        plan.message_bytes,
        args.wal_segment_mib,
        plan.queue_producers,
        plan.backlog,
        plan.load,
        plan.delete
    );

    let mut rows = Vec::new();
    for producers in [1, 16] {
        let mut per_sec = Row::new(
            format!("Append, {producers} producer(s): durable msgs/s ↑"),
            0,
        );
        let mut group = Row::new(
            format!("Append, {producers} producer(s): avg group (msgs per fsync)"),
            1,
        );
        let mut p50 = Row::new(
            format!("Append, {producers} producer(s): p50 ack latency µs ↓"),
            0,
        );
        let mut p99 = Row::new(
            format!("Append, {producers} producer(s): p99 ack latency µs ↓"),
            0,
        );
        for &engine in &engines {
            eprintln!("append, {producers} producer(s): {engine}");
            let dir = fresh_dir(root.path(), &format!("append-{producers}-{engine:?}"))?;
            let result =
                workloads::append_throughput(engine, &dir, &options, producers, &plan).await?;
            std::fs::remove_dir_all(&dir)?;
            per_sec.values.push(result.per_sec);
            group.values.push(result.avg_group);
            p50.values.push(result.p50_us);
            p99.values.push(result.p99_us);
        }
        rows.extend([per_sec, group, p50, p99]);
    }

    let mut consumed = Row::new("Queue steady state: consumed (read + deleted) msgs/s ↑", 0);
    let mut produced = Row::new("Queue steady state: produced msgs/s ↑", 0);
    let mut queue_disk = Row::new("Queue steady state: disk MiB at end ↓", 1);
    for &engine in &engines {
        eprintln!("queue steady state: {engine}");
        let dir = fresh_dir(root.path(), &format!("queue-{engine:?}"))?;
        let result = workloads::queue_steady(engine, &dir, &options, &plan).await?;
        std::fs::remove_dir_all(&dir)?;
        consumed.values.push(result.consumed_per_sec);
        produced.values.push(result.produced_per_sec);
        queue_disk.values.push(mib(result.disk_bytes));
    }
    rows.extend([consumed, produced, queue_disk]);

    let (load, delete) = (plan.load / 1000, plan.delete / 1000);
    let mut first_live = Row::new(
        format!("Head trap ({load}k appended, first {delete}k deleted): first live message µs ↓"),
        0,
    );
    let mut head_disk = Row::new("Head trap: disk MiB after the deletes ↓", 1);
    let mut open_full = Row::new(format!("Recovery: open with {load}k live ms ↓"), 1);
    let mut open_after = Row::new(
        format!("Recovery: open after the {delete}k deletes ms ↓"),
        1,
    );
    for &engine in &engines {
        eprintln!("head of queue and recovery: {engine}");
        let dir = fresh_dir(root.path(), &format!("head-{engine:?}"))?;
        let result = workloads::head_and_recovery(engine, &dir, &options, &plan).await?;
        std::fs::remove_dir_all(&dir)?;
        first_live
            .values
            .push(result.first_live.as_secs_f64() * 1e6);
        head_disk.values.push(mib(result.disk_after_delete));
        open_full.values.push(result.open_full.as_secs_f64() * 1e3);
        open_after
            .values
            .push(result.open_after_delete.as_secs_f64() * 1e3);
    }
    rows.extend([first_live, head_disk, open_full, open_after]);

    let names: Vec<String> = engines.iter().map(ToString::to_string).collect();
    println!();
    print!("{}", report::markdown(&names, &rows));
    Ok(())
}
