//! The workloads, the same for every target and measured on the client side with one clock.
//!
//! Every message carries, in its first 8 bytes (little-endian), the instant it was meant to be
//! sent as nanoseconds since [`epoch`], a process-wide `Instant`; consumers hand payloads back
//! as-is, so a delivery's latency is `now - that instant`, with publishers and consumers in this
//! one process (no clocks compared across machines).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut as _, Bytes, BytesMut};
use hdrhistogram::Histogram;

use crate::report::{self, Figure, Row};
use crate::target::{Durability, Queue, QueueSpec, Target};

mod backlog;
mod latency;
mod throughput;

/// The workloads, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Workload {
    /// (1) Durable publish throughput, 1 and 16 publishers, batches of 100.
    Publish,
    /// (2) End-to-end publish → receive → ack throughput.
    EndToEnd,
    /// (3) End-to-end latency, open loop, at 50% of (2)'s maximum and at a rate common to
    /// every target.
    Latency,
    /// (4) Fan-out to 8 subscriptions.
    FanOut,
    /// (5) A backlog published, then drained, with the server's memory.
    Backlog,
    /// (6) Server start-up time with that backlog on disk.
    Startup,
}

impl Workload {
    /// All of them, in running order.
    pub const ALL: [Self; 6] = [
        Self::Publish,
        Self::EndToEnd,
        Self::Latency,
        Self::FanOut,
        Self::Backlog,
        Self::Startup,
    ];

    /// The id tables and JSON use.
    pub fn id(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::EndToEnd => "end-to-end",
            Self::Latency => "latency",
            Self::FanOut => "fan-out",
            Self::Backlog => "backlog",
            Self::Startup => "startup",
        }
    }
}

/// Sizes and durations of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Message sizes in bytes (at least 8).
    pub sizes: Vec<usize>,
    /// Publisher counts of the publish workload.
    pub publisher_counts: Vec<usize>,
    /// Messages per publish call.
    pub batch: usize,
    /// Time before a measuring window, not counted.
    pub warmup: Duration,
    /// The measuring window.
    pub duration: Duration,
    /// Publishers of the end-to-end, latency and fan-out workloads.
    pub e2e_publishers: usize,
    /// Publishers of the latency workload: each has one publish in flight, so enough of them
    /// that a slow answer delays few batches (late batches count against latency all the same).
    pub latency_publishers: usize,
    /// The common rate of the latency workload's like-for-like case (messages per second).
    pub latency_rate: f64,
    /// Consumers of one subscription in the end-to-end, latency and backlog workloads.
    pub consumers: usize,
    /// Subscriptions of the fan-out workload.
    pub fanout: usize,
    /// Messages of the backlog workload.
    pub backlog: u64,
    /// Message size of the backlog workload.
    pub backlog_size: usize,
    /// Publishers of the backlog workload.
    pub backlog_publishers: usize,
    /// How long a drain may go without receiving anything before it fails.
    pub idle_timeout: Duration,
}

impl Settings {
    /// The full run (by hand) or the short one (CI, under a minute for every target).
    pub fn new(short: bool) -> Self {
        if short {
            Self {
                sizes: vec![1024],
                publisher_counts: vec![1, 16],
                batch: 100,
                warmup: Duration::from_millis(200),
                duration: Duration::from_secs(1),
                e2e_publishers: 4,
                latency_publishers: 8,
                latency_rate: 1_000.0,
                consumers: 4,
                fanout: 8,
                backlog: 5_000,
                backlog_size: 1024,
                backlog_publishers: 16,
                idle_timeout: Duration::from_secs(20),
            }
        } else {
            Self {
                sizes: vec![128, 1024],
                publisher_counts: vec![1, 16],
                batch: 100,
                warmup: Duration::from_secs(2),
                duration: Duration::from_secs(10),
                e2e_publishers: 4,
                latency_publishers: 8,
                latency_rate: 5_000.0,
                consumers: 4,
                fanout: 8,
                backlog: 1_000_000,
                backlog_size: 1024,
                backlog_publishers: 16,
                idle_timeout: Duration::from_secs(60),
            }
        }
    }
}

/// What one target's workloads share: settings, and (2)'s maxima that (3) runs at half of.
pub struct Context {
    pub settings: Settings,
    /// Whether the start-up workload runs (the backlog workload restarts the server then).
    pub with_startup: bool,
    /// Whether the backlog workload ran and already produced the start-up row.
    backlog_done: bool,
    /// End-to-end maximum (messages per second) by message size.
    e2e_max: HashMap<usize, f64>,
}

impl Context {
    /// A fresh context for one target.
    pub fn new(settings: Settings, with_startup: bool) -> Self {
        Self {
            settings,
            with_startup,
            backlog_done: false,
            e2e_max: HashMap::new(),
        }
    }
}

/// One case of a workload: what its row is named after.
#[derive(Debug, Clone, Copy)]
enum Case {
    Publish { publishers: usize, size: usize },
    EndToEnd { size: usize },
    LatencyHalfMax { size: usize },
    LatencyCommon { size: usize },
    FanOut { size: usize },
    Backlog,
    Startup,
}

impl Case {
    /// The cases of workload `w` under settings `s`, in the order [`run`] runs them.
    fn all(w: Workload, s: &Settings) -> Vec<Self> {
        match w {
            Workload::Publish => s
                .sizes
                .iter()
                .flat_map(|&size| {
                    s.publisher_counts
                        .iter()
                        .map(move |&publishers| Self::Publish { publishers, size })
                })
                .collect(),
            Workload::EndToEnd => s
                .sizes
                .iter()
                .map(|&size| Self::EndToEnd { size })
                .collect(),
            Workload::Latency => s
                .sizes
                .iter()
                .flat_map(|&size| [Self::LatencyHalfMax { size }, Self::LatencyCommon { size }])
                .collect(),
            Workload::FanOut => vec![Self::FanOut {
                size: fan_out_size(s),
            }],
            Workload::Backlog => vec![Self::Backlog],
            Workload::Startup => vec![Self::Startup],
        }
    }

    /// The case column of its row.
    fn name(self, s: &Settings) -> String {
        match self {
            Self::Publish { publishers, size } => format!("{publishers} pub, {size} B"),
            Self::EndToEnd { size } => {
                format!("{} pub, {} sub, {size} B", s.e2e_publishers, s.consumers)
            }
            Self::LatencyHalfMax { size } => format!("50% of max, {size} B"),
            Self::LatencyCommon { size } => {
                format!("{} msg/s, {size} B", report::fmt(s.latency_rate))
            }
            Self::FanOut { size } => {
                format!("{} pub, {} subs, {size} B", s.e2e_publishers, s.fanout)
            }
            Self::Backlog => format!(
                "{} msgs, {} B",
                report::fmt(s.backlog as f64),
                s.backlog_size
            ),
            Self::Startup => format!("{} msgs on disk", report::fmt(s.backlog as f64)),
        }
    }
}

/// The message size of the fan-out workload: the largest of the run.
fn fan_out_size(s: &Settings) -> usize {
    *s.sizes.iter().max().unwrap_or(&1024)
}

/// Runs workload `w` on `target`: one row per case.
pub async fn run(w: Workload, target: &dyn Target, ctx: &mut Context) -> Vec<Row> {
    let s = ctx.settings.clone();
    let mut rows = Vec::new();
    match w {
        Workload::Publish => {
            for &size in &s.sizes {
                for &publishers in &s.publisher_counts {
                    let case = Case::Publish { publishers, size }.name(&s);
                    let r = throughput::publish(target, &s, publishers, size).await;
                    rows.push(row(w, case, target, r));
                }
            }
        }
        Workload::EndToEnd => {
            for &size in &s.sizes {
                let case = Case::EndToEnd { size }.name(&s);
                let r = throughput::end_to_end(target, &s, size, 1, s.consumers).await;
                if let Some(rate) = r
                    .as_ref()
                    .ok()
                    .and_then(|f| f.iter().find(|f| f.name == "msg/s"))
                {
                    ctx.e2e_max.insert(size, rate.value);
                }
                rows.push(row(w, case, target, r));
            }
        }
        Workload::Latency => {
            for &size in &s.sizes {
                let max = match ctx.e2e_max.get(&size) {
                    Some(&max) => Ok(max),
                    None => throughput::end_to_end(target, &s, size, 1, s.consumers)
                        .await
                        .and_then(|f| {
                            f.iter()
                                .find(|f| f.name == "msg/s")
                                .map(|f| f.value)
                                .ok_or_else(|| anyhow::anyhow!("no end-to-end rate"))
                        }),
                };
                let case = Case::LatencyHalfMax { size }.name(&s);
                let r = match max {
                    Ok(max) if max > 0.0 => latency::run(target, &s, size, max * 0.5).await,
                    Ok(_) => Err(anyhow::anyhow!("the end-to-end maximum was 0")),
                    Err(e) => Err(e.context("measuring the end-to-end maximum")),
                };
                rows.push(row(w, case, target, r));
                // The same rate for every target: the like-for-like comparison.
                let case = Case::LatencyCommon { size }.name(&s);
                let r = latency::run(target, &s, size, s.latency_rate).await;
                rows.push(row(w, case, target, r));
            }
        }
        Workload::FanOut => {
            let size = fan_out_size(&s);
            let case = Case::FanOut { size }.name(&s);
            let r = throughput::end_to_end(target, &s, size, s.fanout, 1).await;
            rows.push(row(w, case, target, r));
        }
        Workload::Backlog | Workload::Startup => {
            if w == Workload::Startup && ctx.backlog_done {
                return rows;
            }
            let restart = ctx.with_startup;
            let (backlog, startup) = backlog::run(target, &s, restart).await;
            rows.push(row(
                Workload::Backlog,
                Case::Backlog.name(&s),
                target,
                backlog,
            ));
            if let Some(startup) = startup {
                rows.push(row(
                    Workload::Startup,
                    Case::Startup.name(&s),
                    target,
                    startup,
                ));
            }
            ctx.backlog_done = true;
        }
    }
    rows
}

/// Runs workload `w` like [`run`], but gives up after `timeout`: then the step's tasks are
/// aborted (see [`spawn`]) and it yields one failed row, and `Err` says the target should be
/// left alone for the rest of the round (its server may be wedged).
pub async fn run_with_timeout(
    w: Workload,
    target: &dyn Target,
    ctx: &mut Context,
    timeout: Duration,
) -> Result<Vec<Row>, Vec<Row>> {
    let settings = ctx.settings.clone();
    match tokio::time::timeout(timeout, run(w, target, ctx)).await {
        Ok(rows) => Ok(rows),
        Err(_) => Err(failed_rows(
            w,
            &settings,
            &target.name(),
            target.durability(),
            &format!(
                "gave up after {timeout:?} (--step-timeout); the target's later steps in this \
                 round were skipped"
            ),
        )),
    }
}

/// The rows of a step that did not run or did not finish: one per case it would have
/// produced, each saying `why`, so that a table shows the failure in the case's place.
pub fn failed_rows(
    w: Workload,
    s: &Settings,
    target: &str,
    durability: Durability,
    why: &str,
) -> Vec<Row> {
    Case::all(w, s)
        .into_iter()
        .map(|case| Row {
            workload: w.id().to_owned(),
            case: case.name(s),
            target: target.to_owned(),
            durability,
            figures: Vec::new(),
            error: Some(why.to_owned()),
            failed_rounds: Vec::new(),
        })
        .collect()
}

/// A row from a case's outcome.
fn row(w: Workload, case: String, target: &dyn Target, r: anyhow::Result<Vec<Figure>>) -> Row {
    let (figures, error) = match r {
        Ok(figures) => (figures, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    Row {
        workload: w.id().to_owned(),
        case,
        target: target.name(),
        durability: target.durability(),
        figures,
        error,
        failed_rounds: Vec::new(),
    }
}

/// Spawns a task of a step that is aborted when its handle is dropped: when a step is given
/// up (it ran past `--step-timeout`), its publishers and consumers stop with it instead of
/// loading the server through the next step.
pub(crate) fn spawn<F>(task: F) -> tokio_util::task::AbortOnDropHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio_util::task::AbortOnDropHandle::new(tokio::spawn(task))
}

/// A figure where more is better.
pub(crate) fn more(name: &str, value: f64) -> Figure {
    Figure {
        name: name.to_owned(),
        value,
        higher_is_better: true,
        spread: None,
    }
}

/// A figure where less is better.
pub(crate) fn less(name: &str, value: f64) -> Figure {
    Figure {
        name: name.to_owned(),
        value,
        higher_is_better: false,
        spread: None,
    }
}

/// The instant every payload's timestamp counts from.
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds from [`epoch`] to `at`.
pub(crate) fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// A message of `size` bytes (at least 8) stamped with `sent_ns`; from 16 bytes on, bytes
/// 8..16 carry a sequence number unique in this process (see [`Dedup`]), the rest is zeros.
pub(crate) fn payload(size: usize, sent_ns: u64) -> Bytes {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    let mut b = BytesMut::with_capacity(size.max(8));
    b.put_u64_le(sent_ns);
    if size >= 16 {
        b.put_u64_le(SEQ.fetch_add(1, Ordering::Relaxed));
    }
    b.resize(size.max(8), 0);
    b.freeze()
}

/// The stamp of a payload, `None` if it is too short to carry one.
pub(crate) fn stamp(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// The sequence number of a payload of 16 bytes or more.
pub(crate) fn seq(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?))
}

/// The sequence numbers one subscription has delivered, shared by its consumers: a message
/// delivered again (a redelivery, or a queue handing one message to two consumers) counts once
/// in the rates and shows as a duplicate.
#[derive(Clone, Default)]
pub(crate) struct Dedup(Arc<Mutex<HashSet<u64>>>);

impl Dedup {
    /// The first deliveries among `got`, and how many others were duplicates.
    pub(crate) fn fresh(&self, got: Vec<Bytes>) -> (Vec<Bytes>, u64) {
        let mut seen = self.0.lock().expect("dedup lock");
        let n = got.len();
        // Messages too short for a sequence number cannot be told apart: they count as new.
        let fresh: Vec<Bytes> = got
            .into_iter()
            .filter(|m| seq(m).is_none_or(|s| seen.insert(s)))
            .collect();
        let dups = (n - fresh.len()) as u64;
        (fresh, dups)
    }
}

/// Fails if a received payload was not sent by this run: unstamped, or stamped before the run
/// began (`since_ns`) or after now. A target that hands a consumer messages of another queue
/// or of an earlier run would otherwise inflate its rates silently.
pub(crate) fn check_own(got: &[Bytes], since_ns: u64) -> anyhow::Result<()> {
    let now = nanos(Instant::now());
    for m in got {
        match stamp(m) {
            Some(t) if t >= since_ns && t <= now => {}
            other => anyhow::bail!(
                "received a message this run did not send ({} bytes, stamp {other:?}, run began \
                 at {since_ns}): the target delivered a message of another queue or run",
                m.len()
            ),
        }
    }
    Ok(())
}

/// Microseconds, 1 µs up to an hour, three significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Whole microseconds of `d`, at least 1 (a histogram's lowest value).
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Milliseconds of a histogram value in microseconds.
pub(crate) fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// A queue spec with a name unique to this run.
pub(crate) fn spec(workload: &str, subscriptions: usize, message_size: usize) -> QueueSpec {
    let id = uuid::Uuid::new_v4().simple().to_string();
    QueueSpec {
        name: format!("cb-{workload}-{}", &id[..12]),
        subscriptions,
        message_size,
    }
}

/// Deletes the queue, adding its failure to the outcome's.
pub(crate) async fn finish(
    queue: &dyn Queue,
    r: anyhow::Result<Vec<Figure>>,
) -> anyhow::Result<Vec<Figure>> {
    let deleted = queue.delete().await;
    match (r, deleted) {
        (Ok(f), Ok(())) => Ok(f),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.context("deleting the queue")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stamp survives the round trip and the size is exact, small sizes included.
    #[test]
    fn payloads_carry_their_stamp() {
        for size in [1, 8, 128, 1024] {
            let p = payload(size, 0x0102_0304_0506_0708);
            assert_eq!(p.len(), size.max(8));
            assert_eq!(stamp(&p), Some(0x0102_0304_0506_0708));
        }
        assert_eq!(stamp(b"short"), None);
        assert_eq!(seq(&payload(8, 1)), None);
        assert_ne!(seq(&payload(16, 1)), seq(&payload(16, 1)));
    }

    /// A payload delivered twice counts once, whichever consumer of the subscription got it.
    #[test]
    fn duplicates_are_counted_once() {
        let a = payload(128, 1);
        let b = payload(128, 1);
        let dedup = Dedup::default();
        let other_consumer = dedup.clone();
        assert_eq!(dedup.fresh(vec![a.clone(), b.clone()]).0.len(), 2);
        let (fresh, dups) = other_consumer.fresh(vec![b, a.clone(), a]);
        assert_eq!((fresh.len(), dups), (0, 3));
    }

    /// A target whose server never answers: a queue is never set up.
    struct Wedged;

    #[async_trait::async_trait]
    impl Target for Wedged {
        fn name(&self) -> String {
            "wedged".into()
        }
        fn durability(&self) -> crate::target::Durability {
            crate::target::Durability::Memory
        }
        async fn queue(&self, _: &QueueSpec) -> anyhow::Result<Box<dyn Queue>> {
            std::future::pending().await
        }
    }

    /// A step that hangs is given up after the timeout with a row that says so, instead of
    /// holding the whole run (the emulator once sat on the 1M backlog until stopped by hand).
    #[tokio::test]
    async fn a_hanging_step_is_given_up() {
        let mut ctx = Context::new(Settings::new(true), false);
        let timeout = Duration::from_millis(200);
        let rows = run_with_timeout(Workload::Backlog, &Wedged, &mut ctx, timeout)
            .await
            .unwrap_err();
        assert_eq!(rows.len(), 1);
        assert!(
            rows[0]
                .error
                .as_deref()
                .unwrap()
                .starts_with("gave up after 200ms")
        );
    }

    /// The converge binary next to this test's build: release if built, else debug.
    fn converge_bin() -> std::path::PathBuf {
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
        ["release", "debug"]
            .iter()
            .map(|p| target.join(p).join("converge"))
            .find(|p| p.exists())
            .expect("build converge first: cargo build -p converge-cli")
    }

    /// Every workload against a real `converge serve` (fsync), in tiny windows: each must
    /// produce its figures without error, the backlog must come back whole after the restart
    /// (the drain counts every message), and the start-up must be timed. A target that lost
    /// messages, a restart that failed, or a consumer that never acked would fail it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_workload_runs_against_converge() {
        let work = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let opts = crate::targets::TargetOptions {
            pg_url: "postgres://postgres@127.0.0.1:5432/test".into(),
            nats_url: String::new(),
            amqp_url: String::new(),
            converge_bin: converge_bin(),
            emulator_bin: std::path::PathBuf::new(),
            work_dir: work.path().to_path_buf(),
            short: true,
            spawn: Vec::new(),
        };
        let target = crate::targets::build("converge-fsync", &opts)
            .await
            .unwrap();
        let mut s = Settings::new(true);
        s.warmup = Duration::from_millis(100);
        s.duration = Duration::from_millis(500);
        s.publisher_counts = vec![2];
        s.backlog = 2_000;
        s.latency_rate = 700.0;
        let s_rate = s.latency_rate;
        let mut ctx = Context::new(s, true);
        let mut rows = Vec::new();
        for w in Workload::ALL {
            rows.extend(run(w, target.as_ref(), &mut ctx).await);
        }
        target.shutdown().await.unwrap();
        for r in &rows {
            assert!(
                r.error.is_none(),
                "{} ({}): {:?}",
                r.workload,
                r.case,
                r.error
            );
            assert!(!r.figures.is_empty(), "{} has no figures", r.workload);
        }
        // A failed step's rows take the places of the cases it would have produced.
        let s = ctx.settings.clone();
        for w in Workload::ALL {
            let expected: Vec<String> = Case::all(w, &s).iter().map(|c| c.name(&s)).collect();
            let got: Vec<&String> = rows
                .iter()
                .filter(|r| r.workload == w.id())
                .map(|r| &r.case)
                .collect();
            assert_eq!(got, expected.iter().collect::<Vec<_>>(), "{}", w.id());
        }
        let ids: Vec<&str> = rows.iter().map(|r| r.workload.as_str()).collect();
        assert_eq!(
            ids,
            [
                "publish",
                "end-to-end",
                "latency",
                "latency",
                "fan-out",
                "backlog",
                "startup"
            ]
        );
        let startup = rows.iter().find(|r| r.workload == "startup").unwrap();
        let ready = startup.figure("startup s").unwrap();
        let first = startup.figure("first message s").unwrap();
        assert!(
            ready > 0.0 && first >= ready,
            "ready {ready} s, first {first} s"
        );
        let latency: Vec<&Row> = rows.iter().filter(|r| r.workload == "latency").collect();
        assert_eq!(latency[1].figure("rate msg/s"), Some(s_rate));
        let e2e = rows.iter().find(|r| r.workload == "end-to-end").unwrap();
        assert!(e2e.figure("msg/s").unwrap() > 0.0);
    }
}
