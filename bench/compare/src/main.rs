//! `converge-bench`: converge side by side with NATS JetStream, RabbitMQ, a PostgreSQL queue
//! and the official Pub/Sub emulator, on the same machine, in the same run, with the same
//! workloads and the same client-side measurement (issue 8).
//!
//! Targets run one after the other (never two servers under load at once): each is started or
//! connected, runs every selected workload, and is shut down. The results go to stdout as
//! tables, and to `--out` as `results.md`, `results.json` and `chart.png`.
//!
//! `converge-bench --short` runs everything in tiny windows in well under a minute (CI runs it
//! so the tool never rots); the full run is by hand, see BENCHMARKS.md.

mod chart;
mod process;
mod report;
mod target;
mod targets;
mod workload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use crate::report::{Results, Row, TargetInfo};
use crate::targets::TargetOptions;
use crate::workload::{Context, Settings, Workload};

/// converge side by side with its peers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Tiny windows, one message size, a 5,000-message backlog: a check that every target
    /// works, not a measurement
    #[arg(long)]
    short: bool,
    /// Targets to run, comma-separated [default: all]: converge-fsync, converge-os-buffer,
    /// converge-postgres, emulator, nats, rabbitmq, pgqueue
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Workloads to run, comma-separated [default: all]
    #[arg(long, value_delimiter = ',', value_enum)]
    workloads: Vec<Workload>,
    /// Peers the tool starts privately, comma-separated: nats, rabbitmq, postgres (fresh data,
    /// free ports, stock settings) instead of using the machine's servers. Only those have a
    /// start-up time.
    #[arg(long, value_delimiter = ',', value_enum)]
    spawn: Vec<targets::Peer>,
    /// How many times every step runs (targets interleaved round by round); figures are the
    /// medians, with the spread
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
    /// How many of the rounds include the backlog and start-up workloads (minutes per target
    /// each)
    #[arg(long, default_value_t = 1)]
    backlog_rounds: u16,
    /// Gives up on a step that runs longer than this, and on the rest of that target's steps
    /// in the round (its server may be wedged) [default: 300s, 60s with --short]
    #[arg(long, value_parser = parse_secs)]
    step_timeout: Option<Duration>,
    /// The common rate of the like-for-like latency case, in messages per second, on top of
    /// each target's own 50% of maximum [default: 5000, 1000 with --short]
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Runs nothing: folds these results.json files of earlier runs into one report (a later
    /// file's rows replace an earlier one's of the same workload and target, e.g. a rerun of
    /// the backlog workloads) and writes it to --out
    #[arg(long, num_args = 1..)]
    merge: Vec<PathBuf>,
    /// Where results.json, results.md and chart.png go
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// The `converge` binary to spawn [default: target/release/converge, else target/debug/converge]
    #[arg(long)]
    converge_bin: Option<PathBuf>,
    /// The Pub/Sub emulator's start script
    #[arg(
        long,
        default_value = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
    )]
    emulator_bin: PathBuf,
    /// PostgreSQL (converge-postgres and pgqueue use schemas of their own in it)
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pg_url: String,
    /// NATS with JetStream
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// RabbitMQ
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Directory on a real disk (not tmpfs) for the data and logs of the servers the tool
    /// starts [default: <target dir>/converge-bench]
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Measuring window of the throughput and latency workloads [default: 10s, 1s with --short]
    #[arg(long, value_parser = parse_secs)]
    duration: Option<Duration>,
    /// Messages of the backlog workload [default: 1,000,000, 5,000 with --short]
    #[arg(long)]
    backlog: Option<u64>,
    /// Exit with status 1 if a step of a converge target failed (CI runs `--short --strict`, so
    /// the tool and converge's side of it never rot). Peers' failures are only reported: they
    /// are the machine's services, not our code.
    #[arg(long)]
    strict: bool,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let s = s.strip_suffix('s').unwrap_or(s);
    s.parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| "a number of seconds, e.g. 10 or 2.5s".to_owned())
}

/// The workspace's target directory, as seen from this executable (`target/<profile>/`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")))
}

/// `target/release/converge` if built (figures from a debug build would mean nothing), else
/// `target/debug/converge`.
fn default_converge_bin() -> anyhow::Result<PathBuf> {
    let dir = target_dir();
    ["release", "debug"]
        .iter()
        .map(|profile| dir.join(profile).join("converge"))
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "no converge binary under {}: build it with `cargo build --release -p converge-cli` \
                 or pass --converge-bin",
                dir.display()
            )
        })
}

/// Prints the tables and writes `results.md`, `results.json` and `chart.png` into `out`.
fn publish(results: &Results, out: &Path) -> anyhow::Result<()> {
    println!("{}", report::markdown(results));
    report::write(results, out).with_context(|| format!("writing results to {}", out.display()))?;
    let chart = out.join("chart.png");
    match chart::render(results, &chart) {
        Ok(()) => eprintln!(
            "wrote {}, {} and {}",
            out.join("results.md").display(),
            out.join("results.json").display(),
            chart.display()
        ),
        Err(e) => eprintln!("no chart: {e:#}"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.merge.is_empty() {
        let mut runs = Vec::new();
        for path in &args.merge {
            runs.push(report::read(path).with_context(|| format!("reading {}", path.display()))?);
        }
        return publish(&report::merge(runs), &args.out);
    }
    let names: Vec<String> = if args.targets.is_empty() {
        targets::ALL.iter().map(|s| (*s).to_owned()).collect()
    } else {
        args.targets.clone()
    };
    for n in &names {
        anyhow::ensure!(
            targets::ALL.contains(&n.as_str()),
            "unknown target {n:?}; known: {}",
            targets::ALL.join(", ")
        );
    }
    let workloads: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| args.workloads.is_empty() || args.workloads.contains(w))
        .collect();
    let needs_converge = names.iter().any(|n| n.starts_with("converge"));
    let converge_bin = match (&args.converge_bin, needs_converge) {
        (Some(p), _) => p.clone(),
        (None, true) => default_converge_bin()?,
        (None, false) => PathBuf::new(),
    };
    if needs_converge {
        eprintln!("converge binary: {}", converge_bin.display());
    }
    let opts = TargetOptions {
        pg_url: args.pg_url.clone(),
        nats_url: args.nats_url.clone(),
        amqp_url: args.amqp_url.clone(),
        converge_bin,
        emulator_bin: args.emulator_bin.clone(),
        work_dir: args
            .work_dir
            .clone()
            .unwrap_or_else(|| target_dir().join("converge-bench")),
        short: args.short,
        spawn: args.spawn.clone(),
    };
    let mut settings = Settings::new(args.short);
    if let Some(d) = args.duration {
        settings.duration = d;
    }
    if let Some(n) = args.backlog {
        settings.backlog = n;
    }
    if let Some(rate) = args.latency_rate {
        anyhow::ensure!(rate > 0.0, "--latency-rate must be above 0");
        settings.latency_rate = rate;
    }
    let step_timeout = args.step_timeout.unwrap_or(if args.short {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(300)
    });
    // Touch the epoch now, so that every stamp counts from before the first message.
    let _ = workload::epoch();

    let rounds = usize::from(args.rounds);
    let backlog_rounds = usize::from(args.backlog_rounds);
    let heavy = |w: &Workload| matches!(w, Workload::Backlog | Workload::Startup);
    let steps_per_round = |round: usize| {
        workloads
            .iter()
            .filter(|w| round <= backlog_rounds || !heavy(w))
            .count()
    };
    let steps: usize = (1..=rounds).map(|r| names.len() * steps_per_round(r)).sum();
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut targets_seen: Vec<TargetInfo> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let with_startup = workloads.contains(&Workload::Startup);
    for round in 1..=rounds {
        let round_workloads: Vec<Workload> = workloads
            .iter()
            .copied()
            .filter(|w| round <= backlog_rounds || !heavy(w))
            .collect();
        let label = |name: &str| {
            if rounds > 1 {
                format!("round {round}/{rounds} {name}")
            } else {
                name.to_owned()
            }
        };
        for name in &names {
            bar.set_message(format!("{}: starting", label(name)));
            let target = match targets::build(name, &opts).await {
                Ok(t) => t,
                Err(e) => {
                    bar.println(format!("{}: cannot start: {e:#}", label(name)));
                    let why = format!("cannot start: {e:#}");
                    for &w in &round_workloads {
                        let durability = crate::target::Durability::Memory;
                        rows.extend(workload::failed_rows(w, &settings, name, durability, &why));
                    }
                    bar.inc(round_workloads.len() as u64);
                    continue;
                }
            };
            if !targets_seen.iter().any(|t| t.name == target.name()) {
                targets_seen.push(TargetInfo {
                    name: target.name(),
                    durability: target.durability(),
                });
            }
            let mut ctx = Context::new(settings.clone(), with_startup);
            let mut gave_up: Option<String> = None;
            for &w in &round_workloads {
                bar.set_message(format!("{}: {}", label(name), w.id()));
                if let Some(why) = &gave_up {
                    let (name, durability) = (target.name(), target.durability());
                    rows.extend(workload::failed_rows(w, &settings, &name, durability, why));
                    bar.inc(1);
                    continue;
                }
                let step_rows =
                    match workload::run_with_timeout(w, target.as_ref(), &mut ctx, step_timeout)
                        .await
                    {
                        Ok(step_rows) => step_rows,
                        Err(step_rows) => {
                            gave_up = Some(format!("skipped: {} timed out before it", w.id()));
                            step_rows
                        }
                    };
                for r in &step_rows {
                    if let Some(e) = &r.error {
                        bar.println(format!("{} {} ({}): {e}", label(name), r.workload, r.case));
                    }
                }
                rows.extend(step_rows);
                bar.inc(1);
            }
            bar.set_message(format!("{}: stopping", label(name)));
            if let Err(e) = target.shutdown().await {
                bar.println(format!("{}: shutdown: {e:#}", label(name)));
            }
        }
    }
    bar.finish_and_clear();
    let results = Results {
        short: args.short,
        rounds,
        targets: targets_seen,
        rows: report::aggregate(rows),
    };

    publish(&results, &args.out)?;
    let failed: Vec<String> = results
        .rows
        .iter()
        .filter(|r| {
            r.target.starts_with("converge") && (r.error.is_some() || !r.failed_rounds.is_empty())
        })
        .map(|r| format!("{} {} ({})", r.target, r.workload, r.case))
        .collect();
    if args.strict && !failed.is_empty() {
        anyhow::bail!("converge steps failed: {}", failed.join(", "));
    }
    Ok(())
}
