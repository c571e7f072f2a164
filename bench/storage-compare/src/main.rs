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
use crate::probe::ProbeWrite;
use crate::report::Row;
use crate::workloads::Plan;

/// Side-by-side measurement of candidate storage engines for converge's embedded store.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Short run (about 20 s): one-second windows and a 50k-message head-of-queue load.
    #[arg(long)]
    quick: bool,
    /// Directory under which the data directories are created (and removed afterwards).
    /// Defaults to the system temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Engines to measure, comma-separated; the first is the baseline of the ratios.
    #[arg(long, value_enum, value_delimiter = ',')]
    engines: Vec<EngineKind>,
    /// Length of each timed window in seconds (default 3, or 1 with --quick).
    #[arg(long)]
    window_secs: Option<f64>,
    /// Rounds of the append and queue workloads; each figure is the median over the rounds,
    /// and the engine order rotates every round (default 3, or 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Segment size of converge's WAL in MiB (converge's default is 64).
    #[arg(long, default_value_t = 64)]
    wal_segment_mib: u64,
}

impl Args {
    /// The sizes and durations this invocation asks for.
    fn plan(&self) -> Plan {
        let (window, load, delete) = if self.quick {
            (1.0, 50_000, 47_500)
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

/// Runs `measure` for every engine, `rounds` times, starting each round one engine further
/// along so that no engine always runs first (the machine is shared and noisy). Returns the
/// results per engine, in `engines` order.
async fn in_rounds<T>(
    engines: &[EngineKind],
    rounds: usize,
    mut measure: impl AsyncFnMut(EngineKind, usize) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<Vec<T>>> {
    let mut results: Vec<Vec<T>> = engines.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..engines.len() {
            let i = (k + round) % engines.len();
            results[i].push(measure(engines[i], round + 1).await?);
        }
    }
    Ok(results)
}

/// The median of `values` (the upper one of an even count); 0 when there are none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// A table row holding, per engine, the median of `figure` over its rounds.
fn row<T>(label: String, decimals: usize, results: &[Vec<T>], figure: impl Fn(&T) -> f64) -> Row {
    let mut row = Row::new(label, decimals);
    row.values = results
        .iter()
        .map(|rounds| median(rounds.iter().map(&figure).collect()))
        .collect();
    row
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
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 });
    let options = EngineOptions {
        wal_segment_bytes: args.wal_segment_mib * 1024 * 1024,
    };
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    let root = tempfile::Builder::new()
        .prefix("storage-compare-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a data directory under {}", parent.display()))?;

    println!("data directory: {}", root.path().display());
    let iterations = if args.quick { 100 } else { 300 };
    for (mode, what) in [
        (ProbeWrite::Append, "append 1 KiB"),
        (ProbeWrite::Overwrite, "overwrite 1 KiB in place"),
    ] {
        let cost = probe::fsync_cost(root.path(), iterations, mode)?;
        println!(
            "fsync probe: {} x ({what} + fdatasync): p50 {:.0} µs, mean {:.0} µs",
            cost.iterations, cost.p50_us, cost.mean_us
        );
    }
    println!(
        "plan: {rounds} round(s) (median), window {:.1} s, {} B messages, WAL segments {} MiB, queue: {} producers / backlog {}, head trap: {} appended, {} deleted",
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
        let results = in_rounds(&engines, rounds, async |engine, round| {
            eprintln!("append, {producers} producer(s), round {round}: {engine}");
            let dir = fresh_dir(root.path(), &format!("append-{producers}-{engine:?}"))?;
            let result =
                workloads::append_throughput(engine, &dir, &options, producers, &plan).await?;
            std::fs::remove_dir_all(&dir)?;
            Ok(result)
        })
        .await?;
        let label = |what: &str| format!("Append, {producers} producer(s): {what}");
        rows.extend([
            row(label("durable msgs/s ↑"), 0, &results, |r| r.per_sec),
            row(label("avg group (msgs per fsync)"), 1, &results, |r| {
                r.avg_group
            }),
            row(label("p50 ack latency µs ↓"), 0, &results, |r| r.p50_us),
            row(label("p99 ack latency µs ↓"), 0, &results, |r| r.p99_us),
        ]);
    }

    let results = in_rounds(&engines, rounds, async |engine, round| {
        eprintln!("queue steady state, round {round}: {engine}");
        let dir = fresh_dir(root.path(), &format!("queue-{engine:?}"))?;
        let result = workloads::queue_steady(engine, &dir, &options, &plan).await?;
        std::fs::remove_dir_all(&dir)?;
        Ok(result)
    })
    .await?;
    let label = |what: &str| {
        format!(
            "Queue steady state ({} producers, backlog ~{}): {what}",
            plan.queue_producers, plan.backlog
        )
    };
    rows.extend([
        row(
            label("consumed (read + deleted) msgs/s ↑"),
            0,
            &results,
            |r| r.consumed_per_sec,
        ),
        row(label("produced msgs/s ↑"), 0, &results, |r| {
            r.produced_per_sec
        }),
        row(label("disk MiB at end ↓"), 1, &results, |r| {
            mib(r.disk_bytes)
        }),
    ]);

    let (load, delete) = (plan.load, plan.delete);
    let mut first_live = Row::new(
        format!("Head trap ({load} appended, first {delete} deleted): first live message µs ↓"),
        0,
    );
    let mut head_disk = Row::new("Head trap: disk MiB after the deletes ↓", 1);
    let mut open_full = Row::new(
        format!("Recovery: open with {load} live, clean shutdown, ms ↓"),
        1,
    );
    let mut open_crashed = Row::new(
        format!("Recovery: open with {load} live after a crash, ms ↓"),
        1,
    );
    let mut open_after = Row::new(format!("Recovery: open after the {delete} deletes ms ↓"), 1);
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
        open_crashed
            .values
            .push(result.open_crashed.as_secs_f64() * 1e3);
        open_after
            .values
            .push(result.open_after_delete.as_secs_f64() * 1e3);
    }
    rows.extend([first_live, head_disk, open_full, open_crashed, open_after]);

    let names: Vec<String> = engines.iter().map(ToString::to_string).collect();
    println!();
    print!("{}", report::markdown(&names, &rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_picks_the_middle_whatever_the_order() {
        assert_eq!(median(vec![9.0, 1.0, 5.0]), 5.0);
        assert_eq!(median(vec![4.0, 2.0]), 4.0);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[tokio::test]
    async fn rounds_rotate_the_engine_order_and_keep_results_per_engine() {
        let engines = [EngineKind::Wal, EngineKind::Redb, EngineKind::Sqlite];
        let mut order = Vec::new();
        let results = in_rounds(&engines, 2, async |engine, round| {
            order.push(engine);
            Ok((engine, round))
        })
        .await
        .unwrap();
        use EngineKind::*;
        assert_eq!(order, [Wal, Redb, Sqlite, Redb, Sqlite, Wal]);
        assert_eq!(results[0], [(Wal, 1), (Wal, 2)]);
        assert_eq!(results[2], [(Sqlite, 1), (Sqlite, 2)]);
    }
}
