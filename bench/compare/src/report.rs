//! Results of a run: what every (target, workload) step measured, as tables (stdout and
//! `results.md`) and as JSON (`results.json`).

use serde::Serialize;

use crate::target::Durability;

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Whether it ran with `--short` (tiny windows: figures are indicative only).
    pub short: bool,
    /// The targets that ran, in order.
    pub targets: Vec<TargetInfo>,
    /// One row per (workload, case, target), in the order they ran.
    pub rows: Vec<Row>,
}

/// A target as the tables describe it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetInfo {
    /// Target name (`converge-fsync`, `nats`, ...).
    pub name: String,
    /// When it confirms a publish.
    pub durability: Durability,
}

/// What one workload case measured on one target.
#[derive(Debug, Clone, Serialize)]
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
}

/// One measured number.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Column name, e.g. `msg/s`, `p99 ms`.
    pub name: String,
    /// The value.
    pub value: f64,
    /// Whether a larger value is better (throughput) or worse (latency, time, memory).
    pub higher_is_better: bool,
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

/// The figure a workload's ratio column compares.
pub fn primary(workload: &str) -> &'static str {
    match workload {
        "publish" | "end-to-end" => "msg/s",
        "latency" => "p99 ms",
        "fan-out" => "deliveries/s",
        "backlog" => "publish msg/s",
        "startup" => "startup s",
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
#[derive(Debug, Clone, Serialize)]
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
        for r in rows {
            let _ = write!(md, "| {} | {} |", r.target, r.durability.label());
            if let Some(e) = &r.error {
                let e = e.replace('|', "/").replace('\n', " ");
                let e: String = e.chars().take(160).collect();
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
                    let v = r.figure(c).map(fmt).unwrap_or_default();
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
                    .map(|x| format!("{:.2}×", x.ratio))
                    .unwrap_or_else(|| "".to_owned());
                let _ = write!(md, " {v} |");
            }
            md.push('\n');
        }
        if !better.is_empty() {
            let _ = writeln!(md, "\nRatios compare {primary} ({better}).");
        }
    }
    md
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
            }],
            error: None,
        }
    }

    /// converge-fsync is compared with every peer, converge-os-buffer only with peers that do
    /// not fsync, like for like.
    #[test]
    fn ratios_compare_like_for_like() {
        let results = Results {
            short: true,
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
