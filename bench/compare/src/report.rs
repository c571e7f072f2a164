//! Results of a run: what every (target, workload) step measured, as tables (stdout and
//! `results.md`) and as JSON (`results.json`).

use serde::{Deserialize, Serialize};

use crate::target::Durability;

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// Whether it ran with `--short` (tiny windows: figures are indicative only).
    pub short: bool,
    /// How many times every step ran (`--rounds`); figures are medians when above 1.
    pub rounds: usize,
    /// The targets that ran, in order.
    pub targets: Vec<TargetInfo>,
    /// One row per (workload, case, target), in the order they ran.
    pub rows: Vec<Row>,
}

/// A target as the tables describe it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetInfo {
    /// Target name (`converge-fsync`, `nats`, ...).
    pub name: String,
    /// When it confirms a publish.
    pub durability: Durability,
}

/// What one workload case measured on one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Workload id: `publish`, `end-to-end`, `latency`, `fan-out`, `backlog`, `startup`.
    pub workload: String,
    /// The case within the workload, e.g. `16 pub, 1024 B` (tables group rows by it).
    pub case: String,
    /// Target name.
    pub target: String,
    /// The target's durability.
    pub durability: Durability,
    /// The figures, in display order; empty when the step failed.
    pub figures: Vec<Figure>,
    /// Why the step failed or was skipped.
    pub error: Option<String>,
    /// With `--rounds` above 1: why the rounds that failed did, when others succeeded (the
    /// figures are then those of the successful rounds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_rounds: Vec<String>,
}

/// One measured number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    /// Column name, e.g. `msg/s`, `p99 ms`.
    pub name: String,
    /// The value.
    pub value: f64,
    /// Whether a larger value is better (throughput) or worse (latency, time, memory).
    pub higher_is_better: bool,
    /// With `--rounds` above 1: the range over the rounds (`value` is then their median).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
}

/// How a figure varied over the rounds of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// The lowest value of any round.
    pub min: f64,
    /// The highest value of any round.
    pub max: f64,
    /// How many rounds measured it.
    pub rounds: usize,
}

impl Row {
    /// The value of figure `name`, if measured.
    pub fn figure(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value)
    }
}

/// Folds the rounds of a run into one row per (workload, case, target), so that the tables,
/// the ratios and the chart read one figure per step whatever `--rounds` was.
///
/// Groups keep the order in which they first appear. A group of one row comes back as it is.
/// Otherwise every figure becomes the median of the rounds that succeeded (the median, not the
/// mean, so one disturbed round does not move it), with the range over those rounds as its
/// [`Spread`] when at least two measured it. When some rounds failed and others succeeded, the
/// row counts as a success and keeps the failures in `failed_rounds`; when every round failed,
/// the row is the first one (the rounds usually fail for the same reason).
pub fn aggregate(rows: Vec<Row>) -> Vec<Row> {
    let mut groups: Vec<Vec<Row>> = Vec::new();
    for row in rows {
        let same_step = |g: &&mut Vec<Row>| {
            let first = &g[0];
            first.workload == row.workload && first.case == row.case && first.target == row.target
        };
        match groups.iter_mut().find(same_step) {
            Some(group) => group.push(row),
            None => groups.push(vec![row]),
        }
    }
    groups.into_iter().map(fold_rounds).collect()
}

/// One row for the rounds of one step (`rounds` is never empty; see [`aggregate`]).
fn fold_rounds(mut rounds: Vec<Row>) -> Row {
    if rounds.len() == 1 {
        return rounds.remove(0);
    }
    // Every round of a step runs on the same target: its durability is the first round's.
    let durability = rounds[0].durability;
    let (succeeded, failed): (Vec<Row>, Vec<Row>) =
        rounds.into_iter().partition(|r| r.error.is_none());
    let Some(first_success) = succeeded.first() else {
        let mut first = failed.into_iter().next().expect("a group has a row");
        first.failed_rounds.clear();
        return first;
    };
    // Figure names in the order the first successful round gives them; a name only later
    // rounds measured (none of today's workloads do that) follows, rather than being lost.
    let mut names: Vec<(&str, bool)> = Vec::new();
    for figure in succeeded.iter().flat_map(|r| &r.figures) {
        if !names.iter().any(|(n, _)| *n == figure.name) {
            names.push((&figure.name, figure.higher_is_better));
        }
    }
    let figures = names
        .iter()
        .map(|&(name, higher_is_better)| {
            let mut values: Vec<f64> = succeeded.iter().filter_map(|r| r.figure(name)).collect();
            let spread = (values.len() >= 2).then(|| Spread {
                min: values.iter().copied().fold(f64::INFINITY, f64::min),
                max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                rounds: values.len(),
            });
            Figure {
                name: name.to_owned(),
                value: median(&mut values),
                higher_is_better,
                spread,
            }
        })
        .collect();
    let failed_rounds = failed
        .iter()
        .flat_map(|r| r.error.iter().chain(&r.failed_rounds))
        .cloned()
        .collect();
    Row {
        workload: first_success.workload.clone(),
        case: first_success.case.clone(),
        target: first_success.target.clone(),
        durability,
        figures,
        error: None,
        failed_rounds,
    }
}

/// The middle value of `values` (the mean of the two middle ones for an even count); 0 for
/// none, which [`fold_rounds`] never asks for. Sorts `values` in place.
fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        return values[mid];
    }
    (values[mid - 1] + values[mid]) / 2.0
}

/// The figure a workload's ratio column compares.
pub fn primary(workload: &str) -> &'static str {
    match workload {
        "publish" | "end-to-end" => "msg/s",
        "latency" => "p99 ms",
        "fan-out" => "deliveries/s",
        "backlog" => "publish msg/s",
        // The same measure for every target: from the restart to the first message of the
        // backlog back in a consumer's hands ("startup s" is each server's own ready signal).
        "startup" => "first message s",
        _ => "",
    }
}

/// Whether a row is one of converge's.
fn is_converge(target: &str) -> bool {
    target.starts_with("converge")
}

/// The converge rows a ratio can compare, in column order.
const CONVERGE_ROWS: [&str; 3] = ["converge-fsync", "converge-os-buffer", "converge-postgres"];

/// The converge rows each peer is compared with: converge-fsync against every peer,
/// converge-os-buffer against the peers that confirm before fsync, and converge-postgres
/// against the queue on the same PostgreSQL.
fn comparisons(peer: &str, durability: Durability) -> Vec<&'static str> {
    let mut out = vec!["converge-fsync"];
    if durability != Durability::AfterFsync {
        out.push("converge-os-buffer");
    }
    if peer == "pgqueue" {
        out.push("converge-postgres");
    }
    out
}

/// converge / peer for one figure of one case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub workload: String,
    pub case: String,
    /// The converge row (`converge-fsync` or `converge-os-buffer`).
    pub converge: String,
    pub peer: String,
    pub peer_durability: Durability,
    pub figure: String,
    /// converge's value divided by the peer's.
    pub ratio: f64,
    /// Whether a ratio above 1 means converge is better.
    pub higher_is_better: bool,
}

/// Every ratio the results allow, for every figure.
pub fn ratios(results: &Results) -> Vec<Ratio> {
    let mut out = Vec::new();
    for peer in results.rows.iter().filter(|r| !is_converge(&r.target)) {
        for conv in comparisons(&peer.target, peer.durability) {
            let Some(c) = results
                .rows
                .iter()
                .find(|r| r.target == conv && r.workload == peer.workload && r.case == peer.case)
            else {
                continue;
            };
            for f in &peer.figures {
                let Some(cv) = c.figure(&f.name) else {
                    continue;
                };
                if f.value > 0.0 {
                    out.push(Ratio {
                        workload: peer.workload.clone(),
                        case: peer.case.clone(),
                        converge: conv.to_owned(),
                        peer: peer.target.clone(),
                        peer_durability: peer.durability,
                        figure: f.name.clone(),
                        ratio: cv / f.value,
                        higher_is_better: f.higher_is_better,
                    });
                }
            }
        }
    }
    out
}

/// A number as tables print it: three significant digits or so, thousands without decimals.
pub fn fmt(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        let n = v.round() as i64;
        let s = n.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        if n < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A ratio with two decimals, or enough digits that a small one does not print as 0.00.
pub fn fmt_ratio(r: f64) -> String {
    if r >= 0.095 || r == 0.0 {
        format!("{r:.2}×")
    } else if r >= 0.001 {
        format!("{r:.3}×")
    } else {
        format!("{r:.1e}×")
    }
}

/// The tables, as Markdown (which also reads well on a terminal).
pub fn markdown(results: &Results) -> String {
    use std::fmt::Write as _;
    let ratios = ratios(results);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# converge-bench results{}\n",
        if results.short {
            " (short run: indicative only)"
        } else {
            ""
        }
    );
    if results.rounds > 1 {
        let _ = writeln!(
            md,
            "Every figure is the median of {} rounds; ± is half the range between the lowest \
             and the highest round, relative to the median.\n",
            results.rounds
        );
    }
    md.push_str("| target | confirms a publish |\n|---|---|\n");
    for t in &results.targets {
        let _ = writeln!(md, "| {} | {} |", t.name, durability_text(t.durability));
    }
    // Cases in running order, grouped by workload.
    let mut cases: Vec<(&str, &str)> = Vec::new();
    for r in &results.rows {
        if !cases.contains(&(r.workload.as_str(), r.case.as_str())) {
            cases.push((&r.workload, &r.case));
        }
    }
    for (workload, case) in cases {
        let rows: Vec<&Row> = results
            .rows
            .iter()
            .filter(|r| r.workload == workload && r.case == case)
            .collect();
        let mut columns: Vec<&str> = Vec::new();
        for r in &rows {
            for f in &r.figures {
                if !columns.contains(&f.name.as_str()) {
                    columns.push(&f.name);
                }
            }
        }
        let primary = primary(workload);
        let better = rows
            .iter()
            .flat_map(|r| &r.figures)
            .find(|f| f.name == primary)
            .map(|f| {
                if f.higher_is_better {
                    "above 1: converge better"
                } else {
                    "below 1: converge better"
                }
            })
            .unwrap_or("");
        let _ = writeln!(md, "\n## {workload}: {case}\n");
        md.push_str("| target | durability |");
        for c in &columns {
            let _ = write!(md, " {c} |");
        }
        for conv in CONVERGE_ROWS {
            let _ = write!(md, " {conv} / this ({primary}) |");
        }
        md.push_str("\n|---|---|");
        for _ in 0..columns.len() + CONVERGE_ROWS.len() {
            md.push_str("---:|");
        }
        md.push('\n');
        for r in &rows {
            let _ = write!(
                md,
                "| {}{} | {} |",
                r.target,
                failed_mark(r, results.rounds),
                r.durability.label()
            );
            if let Some(e) = &r.error {
                let e = one_line(e);
                if e.starts_with("n/a") {
                    let _ = write!(md, " {e} |");
                } else {
                    let _ = write!(md, " failed: {e} |");
                }
                for _ in 1..columns.len() {
                    md.push_str(" |");
                }
            } else {
                for c in &columns {
                    let v = r
                        .figures
                        .iter()
                        .find(|f| f.name == *c)
                        .map(fmt_figure)
                        .unwrap_or_default();
                    let _ = write!(md, " {v} |");
                }
            }
            for conv in CONVERGE_ROWS {
                let v = ratios
                    .iter()
                    .find(|x| {
                        x.workload == workload
                            && x.case == case
                            && x.peer == r.target
                            && x.converge == conv
                            && x.figure == primary
                    })
                    .map(|x| fmt_ratio(x.ratio))
                    .unwrap_or_else(|| "".to_owned());
                let _ = write!(md, " {v} |");
            }
            md.push('\n');
        }
        failed_rounds_list(&mut md, &rows);
        if !better.is_empty() {
            let _ = writeln!(md, "\nRatios compare {primary} ({better}).");
        }
    }
    md
}

/// A figure as its table cell shows it: the value, and with a spread over rounds how far the
/// rounds strayed from it (`12,345 ±4%`), so a reader can tell a real gap from noise.
fn fmt_figure(f: &Figure) -> String {
    let value = fmt(f.value);
    let Some(spread) = f.spread else {
        return value;
    };
    // Relative to a zero median there is no percentage to give.
    if f.value == 0.0 || !f.value.is_finite() {
        return value;
    }
    let percent = (spread.max - spread.min) / 2.0 / f.value.abs() * 100.0;
    format!("{value} ±{}%", percent.round())
}

/// An error as one table cell or list item can hold it: on one line, without the `|` that
/// would end a cell, and cut to 160 characters so a long chain of causes does not swamp the
/// table.
fn one_line(error: &str) -> String {
    error
        .replace('|', "/")
        .replace('\n', " ")
        .chars()
        .take(160)
        .collect()
}

/// The mark after a target's name when some of its rounds failed (` (1 of 3 rounds failed)`),
/// pointing at the list under the table; empty otherwise.
fn failed_mark(row: &Row, rounds: usize) -> String {
    let failed = row.failed_rounds.len();
    if failed == 0 {
        return String::new();
    }
    // The rounds that measured something, so the total is right even if the run's `rounds`
    // and the row disagree.
    let measured = row
        .figures
        .iter()
        .filter_map(|f| f.spread.map(|s| s.rounds))
        .max()
        .unwrap_or(1);
    let total = rounds.max(failed + measured);
    let noun = if total == 1 { "round" } else { "rounds" };
    format!(" ({failed} of {total} {noun} failed)")
}

/// Under a table: why the rounds marked in it failed, one item per distinct error of a row
/// (with how many rounds it stopped when more than one).
fn failed_rounds_list(md: &mut String, rows: &[&Row]) {
    use std::fmt::Write as _;
    let marked: Vec<&&Row> = rows
        .iter()
        .filter(|r| !r.failed_rounds.is_empty())
        .collect();
    if marked.is_empty() {
        return;
    }
    md.push_str("\nFailed rounds:\n\n");
    for row in marked {
        let mut errors: Vec<(String, usize)> = Vec::new();
        for e in row.failed_rounds.iter().map(|e| one_line(e)) {
            match errors.iter_mut().find(|(seen, _)| *seen == e) {
                Some((_, count)) => *count += 1,
                None => errors.push((e, 1)),
            }
        }
        for (e, count) in errors {
            let times = if count > 1 {
                format!(" ({count} rounds)")
            } else {
                String::new()
            };
            let _ = writeln!(md, "- {}{times}: {e}", row.target);
        }
    }
}

fn durability_text(d: Durability) -> &'static str {
    match d {
        Durability::AfterFsync => "after fsync",
        Durability::AfterOsBuffer => "after the OS buffer (no fsync per publish)",
        Durability::Memory => "in memory only",
    }
}

/// `results.json`: the results, with every ratio.
#[derive(Serialize)]
struct Json<'a> {
    #[serde(flatten)]
    results: &'a Results,
    ratios: Vec<Ratio>,
}

/// Reads the results a run wrote to `results.json` (its ratios are computed again).
pub fn read(path: &std::path::Path) -> anyhow::Result<Results> {
    let bytes = std::fs::read(path)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Folds the results of several runs into one, in order: a later run's rows replace an
/// earlier run's rows of the same workload and target (a rerun of some workloads on some
/// targets), the other rows are kept, and targets are listed in order of first appearance.
pub fn merge(runs: Vec<Results>) -> Results {
    let mut merged = Results {
        short: false,
        rounds: 1,
        targets: Vec::new(),
        rows: Vec::new(),
    };
    for run in runs {
        merged.short |= run.short;
        merged.rounds = merged.rounds.max(run.rounds);
        for t in run.targets {
            if !merged.targets.iter().any(|m| m.name == t.name) {
                merged.targets.push(t);
            }
        }
        let replaced = |r: &Row| {
            run.rows
                .iter()
                .any(|n| n.workload == r.workload && n.target == r.target)
        };
        let mut rows: Vec<Row> = merged.rows.into_iter().filter(|r| !replaced(r)).collect();
        rows.extend(run.rows);
        merged.rows = rows;
    }
    merged
}

/// Writes `results.json` and `results.md` into `dir`.
pub fn write(results: &Results, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = Json {
        results,
        ratios: ratios(results),
    };
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&json)?)?;
    std::fs::write(dir.join("results.md"), markdown(results))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: &str, durability: Durability, msgs: f64) -> Row {
        Row {
            workload: "publish".into(),
            case: "1 pub, 1024 B".into(),
            target: target.into(),
            durability,
            figures: vec![Figure {
                name: "msg/s".into(),
                value: msgs,
                higher_is_better: true,
                spread: None,
            }],
            error: None,
            failed_rounds: Vec::new(),
        }
    }

    /// converge-fsync is compared with every peer, converge-os-buffer only with peers that do
    /// not fsync, like for like.
    #[test]
    fn ratios_compare_like_for_like() {
        let results = Results {
            short: true,
            rounds: 1,
            targets: vec![],
            rows: vec![
                row("converge-fsync", Durability::AfterFsync, 1000.0),
                row("converge-os-buffer", Durability::AfterOsBuffer, 4000.0),
                row("rabbitmq", Durability::AfterFsync, 500.0),
                row("nats", Durability::AfterOsBuffer, 2000.0),
            ],
        };
        let r = ratios(&results);
        let get = |c: &str, p: &str| {
            r.iter()
                .find(|x| x.converge == c && x.peer == p)
                .map(|x| x.ratio)
        };
        assert_eq!(get("converge-fsync", "rabbitmq"), Some(2.0));
        assert_eq!(get("converge-os-buffer", "rabbitmq"), None);
        assert_eq!(get("converge-fsync", "nats"), Some(0.5));
        assert_eq!(get("converge-os-buffer", "nats"), Some(2.0));
        let md = markdown(&results);
        assert!(
            md.contains("| nats | os-buffer | 2,000 | 0.50× | 2.00× |  |"),
            "{md}"
        );
    }

    /// One round of one step: `target` measured `msgs` msg/s and `p99` ms.
    fn round(target: &str, case: &str, msgs: f64, p99: f64) -> Row {
        let mut r = row(target, Durability::AfterOsBuffer, msgs);
        r.case = case.into();
        r.figures.push(Figure {
            name: "p99 ms".into(),
            value: p99,
            higher_is_better: false,
            spread: None,
        });
        r
    }

    /// One round of one step that failed with `error`.
    fn failed_round(target: &str, case: &str, error: &str) -> Row {
        let mut r = round(target, case, 0.0, 0.0);
        r.figures.clear();
        r.error = Some(error.into());
        r
    }

    /// The figure `name` of `row`, which the test expects to be there.
    fn figure<'a>(row: &'a Row, name: &str) -> &'a Figure {
        row.figures
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no {name} in {row:?}"))
    }

    /// Three rounds: the middle value is the figure, whatever order the rounds came in, and
    /// the spread covers all three.
    #[test]
    fn aggregate_takes_the_median_of_an_odd_count() {
        let rows = aggregate(vec![
            round("nats", "a", 900.0, 4.0),
            round("nats", "a", 1000.0, 2.0),
            round("nats", "a", 700.0, 3.0),
        ]);
        assert_eq!(rows.len(), 1);
        let msgs = figure(&rows[0], "msg/s");
        assert_eq!(msgs.value, 900.0);
        assert_eq!(
            msgs.spread,
            Some(Spread {
                min: 700.0,
                max: 1000.0,
                rounds: 3
            })
        );
        assert!(msgs.higher_is_better);
        let p99 = figure(&rows[0], "p99 ms");
        assert_eq!(p99.value, 3.0);
        assert_eq!(p99.spread.map(|s| (s.min, s.max)), Some((2.0, 4.0)));
        assert!(!p99.higher_is_better);
        let names: Vec<&str> = rows[0].figures.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["msg/s", "p99 ms"]);
        assert_eq!(rows[0].error, None);
        assert!(rows[0].failed_rounds.is_empty());
    }

    /// Four rounds: the figure is the mean of the two middle values.
    #[test]
    fn aggregate_takes_the_mean_of_the_middle_two_of_an_even_count() {
        let rows = aggregate(vec![
            round("nats", "a", 100.0, 1.0),
            round("nats", "a", 400.0, 8.0),
            round("nats", "a", 200.0, 2.0),
            round("nats", "a", 1000.0, 5.0),
        ]);
        let msgs = figure(&rows[0], "msg/s");
        assert_eq!(msgs.value, 300.0);
        assert_eq!(
            msgs.spread,
            Some(Spread {
                min: 100.0,
                max: 1000.0,
                rounds: 4
            })
        );
        assert_eq!(figure(&rows[0], "p99 ms").value, 3.5);
    }

    /// A failed round among successes: the row succeeds with the figures of the others
    /// (their spread counts only them) and keeps the failure's reason.
    #[test]
    fn aggregate_keeps_a_failed_round_aside() {
        let rows = aggregate(vec![
            round("nats", "a", 500.0, 1.0),
            failed_round("nats", "a", "timed out"),
            round("nats", "a", 300.0, 3.0),
        ]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].error, None);
        assert_eq!(rows[0].failed_rounds, ["timed out"]);
        let msgs = figure(&rows[0], "msg/s");
        assert_eq!(msgs.value, 400.0);
        assert_eq!(msgs.spread.map(|s| s.rounds), Some(2));
    }

    /// One successful round among failures: its figures stand, without a spread (one round
    /// has no range).
    #[test]
    fn aggregate_gives_no_spread_for_a_single_successful_round() {
        let rows = aggregate(vec![
            failed_round("nats", "a", "refused"),
            round("nats", "a", 500.0, 1.0),
            failed_round("nats", "a", "timed out"),
        ]);
        assert_eq!(rows[0].error, None);
        assert_eq!(rows[0].failed_rounds, ["refused", "timed out"]);
        assert_eq!(figure(&rows[0], "msg/s").value, 500.0);
        assert_eq!(figure(&rows[0], "msg/s").spread, None);
    }

    /// Every round failed: the step failed, for the first round's reason.
    #[test]
    fn aggregate_reports_the_first_error_when_every_round_failed() {
        let rows = aggregate(vec![
            failed_round("nats", "a", "refused"),
            failed_round("nats", "a", "timed out"),
        ]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].error.as_deref(), Some("refused"));
        assert!(rows[0].failed_rounds.is_empty());
        assert!(rows[0].figures.is_empty());
    }

    /// Rounds of different steps interleave (each step runs its rounds, or the run repeats
    /// whole passes): each step gets one row, in the order the steps first appeared, with
    /// the durability of its first round.
    #[test]
    fn aggregate_keeps_the_order_of_first_appearance() {
        let mut rabbit = round("rabbitmq", "a", 50.0, 9.0);
        rabbit.durability = Durability::AfterFsync;
        let rows = aggregate(vec![
            round("nats", "b", 10.0, 1.0),
            rabbit.clone(),
            round("nats", "a", 20.0, 1.0),
            round("nats", "b", 30.0, 1.0),
            rabbit,
            round("nats", "a", 40.0, 1.0),
        ]);
        let keys: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.target.as_str(), r.case.as_str()))
            .collect();
        assert_eq!(keys, [("nats", "b"), ("rabbitmq", "a"), ("nats", "a")]);
        assert_eq!(rows[0].figure("msg/s"), Some(20.0));
        assert_eq!(rows[1].durability, Durability::AfterFsync);
        assert_eq!(rows[1].figure("msg/s"), Some(50.0));
        assert_eq!(rows[2].figure("msg/s"), Some(30.0));
        assert_eq!(rows[0].workload, "publish");
    }

    /// A step that ran once comes back exactly as it was: no spread, errors untouched.
    #[test]
    fn aggregate_leaves_a_single_round_alone() {
        let mut skipped = failed_round("pgqueue", "a", "n/a: not supported");
        skipped.failed_rounds = vec!["left as it was".into()];
        let rows = aggregate(vec![round("nats", "a", 123.0, 4.5), skipped]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].figure("msg/s"), Some(123.0));
        assert_eq!(rows[0].figure("p99 ms"), Some(4.5));
        assert!(rows[0].figures.iter().all(|f| f.spread.is_none()));
        assert_eq!(rows[1].error.as_deref(), Some("n/a: not supported"));
        assert_eq!(rows[1].failed_rounds, ["left as it was"]);
    }

    /// With rounds, the tables say what the figures are, print each spread as ± half the
    /// range relative to the median, and leave a zero median without a percentage.
    #[test]
    fn markdown_prints_the_spread() {
        let mut fsync = row("converge-fsync", Durability::AfterFsync, 12_345.0);
        // Half of 1,000 over 12,345 is 4.05%.
        fsync.figures[0].spread = Some(Spread {
            min: 11_800.0,
            max: 12_800.0,
            rounds: 3,
        });
        let mut nats = row("nats", Durability::AfterOsBuffer, 0.0);
        nats.figures[0].spread = Some(Spread {
            min: 0.0,
            max: 10.0,
            rounds: 3,
        });
        let mut results = Results {
            short: false,
            rounds: 3,
            targets: vec![],
            rows: vec![fsync, nats],
        };
        let md = markdown(&results);
        assert!(
            md.contains("Every figure is the median of 3 rounds; ± is half the range"),
            "{md}"
        );
        assert!(
            md.contains("| converge-fsync | fsync | 12,345 ±4% |"),
            "{md}"
        );
        assert!(md.contains("| nats | os-buffer | 0 |"), "{md}");
        results.rounds = 1;
        assert!(!markdown(&results).contains("median of"));
    }

    /// A row with failed rounds says so beside its target, and the reasons follow the table,
    /// one line each, repeated reasons counted, cut like the error cells are.
    #[test]
    fn markdown_marks_failed_rounds() {
        let mut nats = row("nats", Durability::AfterOsBuffer, 2000.0);
        nats.figures[0].spread = Some(Spread {
            min: 1900.0,
            max: 2100.0,
            rounds: 2,
        });
        let long = format!("broken | pipe\n{}", "x".repeat(300));
        nats.failed_rounds = vec![long.clone()];
        let mut rabbit = row("rabbitmq", Durability::AfterFsync, 500.0);
        rabbit.failed_rounds = vec!["timed out".into(), "timed out".into()];
        let results = Results {
            short: false,
            rounds: 3,
            targets: vec![],
            rows: vec![
                row("converge-fsync", Durability::AfterFsync, 1000.0),
                nats,
                rabbit,
            ],
        };
        let md = markdown(&results);
        assert!(
            md.contains("| nats (1 of 3 rounds failed) | os-buffer | 2,000 ±5% | 0.50× |"),
            "{md}"
        );
        assert!(
            md.contains("| rabbitmq (2 of 3 rounds failed) | fsync | 500 | 2.00× |"),
            "{md}"
        );
        assert!(md.contains("| converge-fsync | fsync | 1,000 |"), "{md}");
        let cut: String = format!("broken / pipe {}", "x".repeat(300))
            .chars()
            .take(160)
            .collect();
        assert!(
            md.contains(&format!(
                "\nFailed rounds:\n\n- nats: {cut}\n- rabbitmq (2 rounds): timed out\n"
            )),
            "{md}"
        );
        assert!(!md.contains(&"x".repeat(160)), "{md}");
    }

    /// What a run writes reads back the same, and a later run replaces only the rows of the
    /// workloads and targets it ran.
    #[test]
    fn results_round_trip_and_merge() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Results {
            short: false,
            rounds: 3,
            targets: vec![],
            rows: vec![
                row("converge-fsync", Durability::AfterFsync, 1000.0),
                row("nats", Durability::AfterOsBuffer, 2000.0),
            ],
        };
        first.rows[0].figures[0].spread = Some(Spread {
            min: 900.0,
            max: 1100.0,
            rounds: 3,
        });
        write(&first, dir.path()).unwrap();
        let back = read(&dir.path().join("results.json")).unwrap();
        assert_eq!(back.rounds, 3);
        assert_eq!(back.rows.len(), 2);
        assert_eq!(
            back.rows[0].figures[0].spread,
            first.rows[0].figures[0].spread
        );
        let mut rerun = row("nats", Durability::AfterOsBuffer, 3000.0);
        rerun.case = "another case".into();
        let second = Results {
            short: false,
            rounds: 1,
            targets: vec![],
            rows: vec![rerun],
        };
        let merged = merge(vec![back, second]);
        let nats: Vec<f64> = merged
            .rows
            .iter()
            .filter(|r| r.target == "nats")
            .filter_map(|r| r.figure("msg/s"))
            .collect();
        assert_eq!(nats, [3000.0]);
        assert_eq!(merged.rows.len(), 2);
        assert_eq!(merged.rounds, 3);
    }

    #[test]
    fn ratios_print_readably() {
        assert_eq!(fmt_ratio(1.234), "1.23×");
        assert_eq!(fmt_ratio(0.1), "0.10×");
        assert_eq!(fmt_ratio(0.004), "0.004×");
        assert_eq!(fmt_ratio(0.00004), "4.0e-5×");
    }

    #[test]
    fn numbers_print_readably() {
        assert_eq!(fmt(1_234_567.4), "1,234,567");
        assert_eq!(fmt(123.4), "123");
        assert_eq!(fmt(12.34), "12.3");
        assert_eq!(fmt(1.234), "1.23");
        assert_eq!(fmt(0.1234), "0.123");
        assert_eq!(fmt(0.0), "0");
        assert_eq!(fmt(3.0), "3");
    }
}
