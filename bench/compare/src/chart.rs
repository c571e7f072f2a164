//! The PNG chart of a run: one panel per workload, and in each panel one group of horizontal bars
//! per (case, figure), one bar per target.
//!
//! Meant to be read at a glance: converge's bars are in colour and every peer's in grey; bars
//! scale within their group (figures of one group share a unit, groups do not), every bar carries
//! its value, the best value of a group is bold, and each converge bar says how it compares with
//! the best peer of its group with the same durability, like for like ("2.1× better than nats
//! [os-buffer]"; any peer when none has that durability). A group's title says whether higher or
//! lower is better; a target's label says when it confirms a publish (`[fsync]`, `[os-buffer]`).
//! With `--rounds`, a bar is the median of the rounds and a thin whisker over it spans the lowest
//! to the highest round.
//!
//! Text is drawn with DejaVu Sans loaded at run time ([`FONT_PATH`]); without it the chart is
//! still drawn, without any text, rather than failing the run at its very end.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context as _;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

use crate::report::{Results, Spread};
use crate::target::Durability;

/// The regular face of the chart's text.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The bold face; the regular one stands in when it is missing.
const BOLD_FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf";
/// The family name the fonts are registered under with plotters.
const FAMILY: &str = "sans-serif";

const WIDTH: i32 = 1800;
const COLUMNS: i32 = 2;
const MARGIN: i32 = 24;
const HEADER_H: i32 = 96;
const PANEL_GAP: i32 = 24;
const PANEL_W: i32 = (WIDTH - 2 * MARGIN - (COLUMNS - 1) * PANEL_GAP) / COLUMNS;
const PANEL_TITLE_H: i32 = 46;
const PANEL_PAD: i32 = 14;
const GROUP_TITLE_H: i32 = 24;
const BAR_H: i32 = 18;
const BAR_GAP: i32 = 5;
const GROUP_GAP: i32 = 14;
/// Room left of the bars for the target labels.
const LABEL_W: i32 = 250;
/// Room right of the longest bar for its value and the comparison with the best peer.
const VALUE_W: i32 = 270;
const BAR_MAX_W: i32 = PANEL_W - LABEL_W - VALUE_W - PANEL_PAD;

/// converge's targets, in the order they appear: saturated, to stand out.
const CONVERGE_COLORS: [RGBColor; 3] = [
    RGBColor(0x15, 0x65, 0xc0),
    RGBColor(0x00, 0x89, 0x7b),
    RGBColor(0x6a, 0x1b, 0x9a),
];
/// Peers, in the order they appear: greys, distinct enough to tell neighbours apart.
const PEER_COLORS: [RGBColor; 4] = [
    RGBColor(0x8a, 0x8a, 0x8a),
    RGBColor(0xa8, 0xa8, 0xa8),
    RGBColor(0x75, 0x75, 0x75),
    RGBColor(0xbd, 0xbd, 0xbd),
];
const INK: RGBColor = RGBColor(0x1b, 0x1f, 0x24);
const MUTED: RGBColor = RGBColor(0x5a, 0x62, 0x6b);
const PANEL_BG: RGBColor = RGBColor(0xf6, 0xf8, 0xfa);
const PANEL_BORDER: RGBColor = RGBColor(0xd0, 0xd7, 0xde);
const BETTER: RGBColor = RGBColor(0x1a, 0x7f, 0x37);
const WORSE: RGBColor = RGBColor(0xcf, 0x22, 0x2e);
const FAILED: RGBColor = RGBColor(0xbc, 0x4c, 0x00);
/// The whiskers showing the range over rounds: dark enough to read over converge's colours and
/// over the peers' greys alike, and unlike any bar's colour.
const WHISKER: RGBColor = RGBColor(0x30, 0x30, 0x30);
/// How far a whisker's end ticks reach above and below the bar's middle line.
const WHISKER_TICK: i32 = 5;

/// Draws `results` as a PNG at `path`.
pub fn render(results: &Results, path: &Path) -> anyhow::Result<()> {
    let text = fonts_loaded();
    let panels = panels(results);
    let height = chart_height(&panels);
    let root = BitMapBackend::new(path, (WIDTH as u32, height as u32)).into_drawing_area();
    draw(&root, results, &panels, text)?;
    root.present()
        .map_err(drawing)
        .with_context(|| format!("writing the chart to {}", path.display()))
}

/// Registers DejaVu Sans with plotters once; false when it cannot be read.
fn fonts_loaded() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        // plotters keeps fonts for the life of the process and wants `'static` bytes: leaking
        // the two files (once per process) is exactly that.
        let load = |path: &str| {
            std::fs::read(path)
                .ok()
                .map(|b| &*Box::leak(b.into_boxed_slice()))
        };
        let Some(regular) = load(FONT_PATH) else {
            eprintln!("chart: {FONT_PATH} not found, drawing the chart without text");
            return false;
        };
        if register_font(FAMILY, FontStyle::Normal, regular).is_err() {
            eprintln!("chart: {FONT_PATH} is not a usable font, drawing the chart without text");
            return false;
        }
        if let Some(bold) = load(BOLD_FONT_PATH) {
            // Without it plotters falls back to the regular face.
            let _ = register_font(FAMILY, FontStyle::Bold, bold);
        }
        true
    })
}

fn drawing(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {error}")
}

/// One workload.
#[derive(Debug)]
struct Panel {
    workload: String,
    groups: Vec<Group>,
}

/// One figure of one case, across targets.
#[derive(Debug)]
struct Group {
    case: String,
    figure: String,
    higher_is_better: bool,
    bars: Vec<Bar>,
}

#[derive(Debug)]
struct Bar {
    target: String,
    durability: Durability,
    /// `None` when the step failed or was skipped.
    value: Option<f64>,
    /// Why there is no value.
    error: Option<String>,
    /// The range over the rounds, when more than one measured the value.
    spread: Option<Spread>,
}

impl Bar {
    fn is_converge(&self) -> bool {
        is_converge(&self.target)
    }
}

fn is_converge(target: &str) -> bool {
    target.starts_with("converge")
}

/// Groups the rows into panels and groups, in the order the run produced them; bars follow the
/// order of `results.targets`.
fn panels(results: &Results) -> Vec<Panel> {
    let mut panels: Vec<Panel> = Vec::new();
    for row in &results.rows {
        let index = match panels.iter().position(|p| p.workload == row.workload) {
            Some(index) => index,
            None => {
                panels.push(Panel {
                    workload: row.workload.clone(),
                    groups: Vec::new(),
                });
                panels.len() - 1
            }
        };
        let panel = &mut panels[index];
        for figure in &row.figures {
            let group = match panel
                .groups
                .iter()
                .position(|g| g.case == row.case && g.figure == figure.name)
            {
                Some(group) => group,
                None => {
                    panel.groups.push(Group {
                        case: row.case.clone(),
                        figure: figure.name.clone(),
                        higher_is_better: figure.higher_is_better,
                        bars: Vec::new(),
                    });
                    panel.groups.len() - 1
                }
            };
            panel.groups[group].bars.push(Bar {
                target: row.target.clone(),
                durability: row.durability,
                value: Some(figure.value),
                error: None,
                spread: figure.spread,
            });
        }
    }
    // A failed step has no figures: it shows as "failed" in every group of its case.
    for row in results.rows.iter().filter(|r| r.figures.is_empty()) {
        let Some(panel) = panels.iter_mut().find(|p| p.workload == row.workload) else {
            continue;
        };
        for group in panel.groups.iter_mut().filter(|g| g.case == row.case) {
            if !group.bars.iter().any(|b| b.target == row.target) {
                group.bars.push(Bar {
                    target: row.target.clone(),
                    durability: row.durability,
                    value: None,
                    error: row.error.clone(),
                    spread: None,
                });
            }
        }
    }
    let order = |target: &str| {
        results
            .targets
            .iter()
            .position(|t| t.name == target)
            .unwrap_or(usize::MAX)
    };
    for panel in &mut panels {
        for group in &mut panel.groups {
            group.bars.sort_by_key(|b| order(&b.target));
        }
    }
    for panel in &mut panels {
        let workload = panel.workload.clone();
        panel.groups.retain(|g| charted(&workload, g));
    }
    panels.retain(|p| !p.groups.is_empty());
    panels
}

/// Whether a group is worth a place on the chart. The tables keep every figure; the chart
/// leaves out those that repeat another one in other units (MB/s beside msg/s, seconds beside
/// rates), the rate a latency run was driven at, maxima (one sample), and p50 outside the
/// latency workload (its p99 is there). Duplicates only show when there are any.
fn charted(workload: &str, group: &Group) -> bool {
    match group.figure.as_str() {
        "MB/s" | "max ms" | "rate msg/s" | "published msg/s" | "publish s" | "drain s"
        | "batch p50 ms" => false,
        "p50 ms" => workload == "latency",
        "duplicates" => group.bars.iter().any(|b| b.value.is_some_and(|v| v > 0.0)),
        _ => true,
    }
}

fn panel_height(panel: &Panel) -> i32 {
    let groups: i32 = panel
        .groups
        .iter()
        .map(|g| GROUP_TITLE_H + g.bars.len() as i32 * (BAR_H + BAR_GAP) + GROUP_GAP)
        .sum();
    PANEL_TITLE_H + groups + PANEL_PAD
}

/// Where each panel goes: into the column that is shortest so far (reading order is kept
/// left to right, top to bottom, as far as the heights allow).
fn placements(panels: &[Panel]) -> (Vec<(i32, i32)>, i32) {
    let mut bottoms = vec![MARGIN + HEADER_H; COLUMNS as usize];
    let mut at = Vec::with_capacity(panels.len());
    for panel in panels {
        let (column, top) = bottoms
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|&(column, top)| (top, column))
            .expect("at least one column");
        at.push((MARGIN + column as i32 * (PANEL_W + PANEL_GAP), top));
        bottoms[column] = top + panel_height(panel) + PANEL_GAP;
    }
    let bottom = bottoms.into_iter().max().unwrap_or(MARGIN + HEADER_H);
    (at, bottom)
}

fn chart_height(panels: &[Panel]) -> i32 {
    placements(panels).1 + MARGIN
}

/// The colour of each target's bars: converge's in colour, peers in grey.
fn target_color(results: &Results, target: &str) -> RGBColor {
    let (converge, peers): (Vec<&str>, Vec<&str>) = results
        .targets
        .iter()
        .map(|t| t.name.as_str())
        .partition(|name| is_converge(name));
    if is_converge(target) {
        let index = converge.iter().position(|t| *t == target).unwrap_or(0);
        CONVERGE_COLORS[index % CONVERGE_COLORS.len()]
    } else {
        let index = peers.iter().position(|t| *t == target).unwrap_or(0);
        PEER_COLORS[index % PEER_COLORS.len()]
    }
}

/// Draws text when a font is there; returns the text's width (0 without a font).
struct Pen<'a, DB: DrawingBackend> {
    area: &'a DrawingArea<DB, Shift>,
    enabled: bool,
}

impl<DB: DrawingBackend> Pen<'_, DB> {
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        text: &str,
        (x, y): (i32, i32),
        size: f64,
        bold: bool,
        color: RGBColor,
        pos: Pos,
    ) -> anyhow::Result<i32> {
        if !self.enabled || text.is_empty() {
            return Ok(0);
        }
        let weight = if bold {
            FontStyle::Bold
        } else {
            FontStyle::Normal
        };
        let style = FontDesc::new(FontFamily::Name(FAMILY), size, weight)
            .color(&color)
            .pos(pos);
        let (width, _) = self
            .area
            .estimate_text_size(text, &style)
            .map_err(drawing)?;
        self.area
            .draw(&Text::new(text.to_owned(), (x, y), style))
            .map_err(drawing)?;
        Ok(width as i32)
    }
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    results: &Results,
    panels: &[Panel],
    text: bool,
) -> anyhow::Result<()> {
    let pen = Pen {
        area: root,
        enabled: text,
    };
    root.fill(&WHITE).map_err(drawing)?;
    let left = Pos::new(HPos::Left, VPos::Top);
    pen.write(
        "converge beside its peers",
        (MARGIN, MARGIN),
        30.0,
        true,
        INK,
        left,
    )?;
    pen.write(
        "Coloured bars: converge; grey: peers. Bars scale within each group; each converge bar \
         compares with the best peer of the same durability (any peer when none has it).",
        (MARGIN, MARGIN + 40),
        15.0,
        false,
        MUTED,
        left,
    )?;
    let mut note = "[fsync]: a publish is confirmed once on disk; [os-buffer]: once in the OS \
                    page cache; [memory]: kept in memory."
        .to_owned();
    if results.short {
        note.push_str("  SHORT RUN: tiny windows, figures indicative only.");
    }
    if results.rounds > 1 {
        note.push_str(&format!(
            "  Bars: medians of {} rounds; whiskers: lowest to highest round.",
            results.rounds
        ));
    }
    pen.write(&note, (MARGIN, MARGIN + 62), 15.0, false, MUTED, left)?;

    let (at, _) = placements(panels);
    for (panel, &(x, y)) in panels.iter().zip(&at) {
        draw_panel(root, &pen, results, panel, (x, y))?;
    }
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    pen: &Pen<'_, DB>,
    results: &Results,
    panel: &Panel,
    (x, y): (i32, i32),
) -> anyhow::Result<()> {
    let bottom = y + panel_height(panel);
    root.draw(&Rectangle::new(
        [(x, y), (x + PANEL_W, bottom)],
        PANEL_BG.filled(),
    ))
    .map_err(drawing)?;
    root.draw(&Rectangle::new(
        [(x, y), (x + PANEL_W, bottom)],
        PANEL_BORDER.stroke_width(1),
    ))
    .map_err(drawing)?;
    pen.write(
        &workload_title(&panel.workload),
        (x + PANEL_PAD, y + 12),
        21.0,
        true,
        INK,
        Pos::new(HPos::Left, VPos::Top),
    )?;

    let bars_x = x + LABEL_W;
    let mut top = y + PANEL_TITLE_H;
    for group in &panel.groups {
        let better = if group.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        let title = format!("{} · {}  ({better})", group.case, group.figure);
        pen.write(
            &title,
            (x + PANEL_PAD, top + 4),
            14.0,
            true,
            MUTED,
            Pos::new(HPos::Left, VPos::Top),
        )?;
        top += GROUP_TITLE_H;

        let values: Vec<f64> = group
            .bars
            .iter()
            .filter_map(|b| b.value)
            .filter(|v| v.is_finite())
            .collect();
        // A whisker may reach past the longest bar: the scale makes room for it.
        let whisker_ends = group
            .bars
            .iter()
            .filter_map(|b| b.spread)
            .map(|s| s.max)
            .filter(|v| v.is_finite());
        let max = values
            .iter()
            .copied()
            .chain(whisker_ends)
            .fold(0.0_f64, f64::max);
        let best = if group.higher_is_better {
            values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        } else {
            values.iter().copied().fold(f64::INFINITY, f64::min)
        };
        for bar in &group.bars {
            let middle = top + BAR_H / 2;
            let converge = bar.is_converge();
            pen.write(
                &format!("{} [{}]", bar.target, bar.durability.label()),
                (bars_x - 8, middle),
                14.0,
                converge,
                INK,
                Pos::new(HPos::Right, VPos::Center),
            )?;
            let Some(value) = bar.value.filter(|v| v.is_finite()) else {
                // The workloads mark what does not apply to a target with "n/a"; anything
                // else is a failure.
                let skipped = bar.error.as_deref().is_some_and(|e| e.starts_with("n/a"));
                let (word, color) = if skipped {
                    ("n/a", MUTED)
                } else {
                    ("failed", FAILED)
                };
                pen.write(
                    word,
                    (bars_x + 4, middle),
                    14.0,
                    false,
                    color,
                    Pos::new(HPos::Left, VPos::Center),
                )?;
                top += BAR_H + BAR_GAP;
                continue;
            };
            let width = bar_width(value, max);
            if width > 0 {
                root.draw(&Rectangle::new(
                    [(bars_x, top), (bars_x + width, top + BAR_H)],
                    target_color(results, &bar.target).filled(),
                ))
                .map_err(drawing)?;
            }
            let mut right = bars_x + width;
            if let Some(spread) = bar.spread {
                right = right.max(draw_whisker(root, spread, max, bars_x, middle)?);
            }
            // The value goes right of the bar or of its whisker, whichever ends further.
            let mut text_x = right + 6;
            text_x += pen.write(
                &format_value(value),
                (text_x, middle),
                14.0,
                value == best,
                INK,
                Pos::new(HPos::Left, VPos::Center),
            )?;
            if converge && let Some((factor, peer)) = compare(bar, value, group) {
                let (words, color) = if factor >= 1.0 {
                    ("better", BETTER)
                } else {
                    ("worse", WORSE)
                };
                let factor = if factor >= 1.0 { factor } else { 1.0 / factor };
                pen.write(
                    &format!(
                        "{} {words} than {} [{}]",
                        format_factor(factor),
                        peer.target,
                        peer.durability.label()
                    ),
                    (text_x + 10, middle),
                    13.0,
                    false,
                    color,
                    Pos::new(HPos::Left, VPos::Center),
                )?;
            }
            top += BAR_H + BAR_GAP;
        }
        top += GROUP_GAP;
    }
    Ok(())
}

/// Draws the range of `spread` over a bar whose middle line is at `middle`, in a group scaled
/// to `max`: a line from the lowest round to the highest with a short tick at each end, so the
/// reader sees how much the rounds disagreed. Returns where it ends on the right.
fn draw_whisker<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    spread: Spread,
    max: f64,
    bars_x: i32,
    middle: i32,
) -> anyhow::Result<i32> {
    let (low, high) = whisker_span(spread, max, bars_x);
    // Filled rectangles rather than strokes: crisp, exactly two pixels thick.
    let parts = [
        [(low, middle - 1), (high, middle + 1)],
        [
            (low - 1, middle - WHISKER_TICK),
            (low + 1, middle + WHISKER_TICK),
        ],
        [
            (high - 1, middle - WHISKER_TICK),
            (high + 1, middle + WHISKER_TICK),
        ],
    ];
    for corners in parts {
        root.draw(&Rectangle::new(corners, WHISKER.filled()))
            .map_err(drawing)?;
    }
    Ok(high + 1)
}

/// The x of a whisker's two ends, on the scale of the bars (see [`bar_width`]); a bound that is
/// not a number sits at the start of the bar area.
fn whisker_span(spread: Spread, max: f64, bars_x: i32) -> (i32, i32) {
    let at = |v: f64| {
        if !v.is_finite() {
            return bars_x;
        }
        bars_x + bar_width(v, max)
    };
    (at(spread.min), at(spread.max))
}

/// Pixels for `value` in a group whose longest bar is `max`.
fn bar_width(value: f64, max: f64) -> i32 {
    if max <= 0.0 || value <= 0.0 {
        return 0;
    }
    // At least one pixel, so a small non-zero value is not mistaken for zero.
    ((value / max * f64::from(BAR_MAX_W)).round() as i32).clamp(1, BAR_MAX_W)
}

/// How converge's `bar` (of `value`) compares with the best peer of its group, like for like:
/// among the peers with the same durability when there are any, else among all peers.
fn compare<'a>(bar: &Bar, value: f64, group: &'a Group) -> Option<(f64, &'a Bar)> {
    let peers = |same_durability: bool| -> Vec<(&'a Bar, f64)> {
        group
            .bars
            .iter()
            .filter(|b| !b.is_converge())
            .filter(|b| !same_durability || b.durability == bar.durability)
            .filter_map(|b| Some((b, b.value?)))
            .collect()
    };
    let like_for_like = peers(true);
    let peers = if like_for_like.is_empty() {
        peers(false)
    } else {
        like_for_like
    };
    vs_best_peer(value, &peers, group.higher_is_better)
}

/// How many times better (> 1) or worse (< 1) `value` is than the best of `peers`, and which
/// peer that is; `None` without peers or when a zero makes the ratio meaningless.
fn vs_best_peer<P: Copy>(
    value: f64,
    peers: &[(P, f64)],
    higher_is_better: bool,
) -> Option<(f64, P)> {
    let peers = peers
        .iter()
        .copied()
        .filter(|(_, v)| v.is_finite() && *v > 0.0);
    let (peer, best) = if higher_is_better {
        peers.max_by(|a, b| a.1.total_cmp(&b.1))?
    } else {
        peers.min_by(|a, b| a.1.total_cmp(&b.1))?
    };
    if !(value.is_finite() && value > 0.0) {
        return None;
    }
    let factor = if higher_is_better {
        value / best
    } else {
        best / value
    };
    Some((factor, peer))
}

fn format_factor(factor: f64) -> String {
    if factor < 10.0 {
        format!("{factor:.1}×")
    } else {
        format!("{factor:.0}×")
    }
}

/// About three significant digits, with k/M/G for large values: `123k`, `1.23M`, `0.412`.
fn format_value(value: f64) -> String {
    let magnitude = value.abs();
    let (scaled, suffix) = if magnitude >= 1e9 {
        (value / 1e9, "G")
    } else if magnitude >= 1e6 {
        (value / 1e6, "M")
    } else if magnitude >= 1e4 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let digits = match scaled.abs() {
        m if m >= 100.0 || m == 0.0 => 0,
        m if m >= 10.0 => 1,
        m if m >= 1.0 => 2,
        _ => 3,
    };
    format!("{scaled:.digits$}{suffix}")
}

/// A panel's title for the workload ids `report` uses.
fn workload_title(workload: &str) -> String {
    let title = match workload {
        "publish" => "Durable publish throughput",
        "end-to-end" => "End-to-end throughput (publish → receive → ack)",
        "latency" => "End-to-end latency, open loop (own 50% of max; common rate)",
        "fan-out" => "Fan-out to 8 subscriptions",
        "backlog" => "Backlog published, then drained",
        "startup" => "Start-up with the backlog on disk",
        other => other,
    };
    title.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Figure, Row, Spread, TargetInfo};

    fn target(name: &str, durability: Durability) -> TargetInfo {
        TargetInfo {
            name: name.to_owned(),
            durability,
        }
    }

    fn row(workload: &str, case: &str, target: &TargetInfo, figures: &[(&str, f64, bool)]) -> Row {
        Row {
            workload: workload.to_owned(),
            case: case.to_owned(),
            target: target.name.clone(),
            durability: target.durability,
            figures: figures
                .iter()
                .map(|&(name, value, higher_is_better)| Figure {
                    name: name.to_owned(),
                    value,
                    higher_is_better,
                    spread: None,
                })
                .collect(),
            error: None,
            failed_rounds: Vec::new(),
        }
    }

    /// Made-up figures shaped like a full run: every workload, all seven targets, one failed
    /// step. Used to look at the chart (`sample_chart_png` writes it) and by the tests.
    fn sample() -> Results {
        let targets = vec![
            target("converge-fsync", Durability::AfterFsync),
            target("converge-os-buffer", Durability::AfterOsBuffer),
            target("converge-postgres", Durability::AfterFsync),
            target("emulator", Durability::Memory),
            target("nats", Durability::AfterOsBuffer),
            target("rabbitmq", Durability::AfterFsync),
            target("pgqueue", Durability::AfterFsync),
        ];
        let scale = [1.0, 1.9, 0.35, 0.6, 1.4, 0.45, 0.25];
        let mut rows = Vec::new();
        for (t, s) in targets.iter().zip(scale) {
            for (case, base) in [
                ("1 pub, 128 B", 40_000.0),
                ("16 pub, 128 B", 210_000.0),
                ("1 pub, 1024 B", 31_000.0),
                ("16 pub, 1024 B", 150_000.0),
            ] {
                rows.push(row("publish", case, t, &[("msg/s", base * s, true)]));
            }
            rows.push(row(
                "end-to-end",
                "1 pub / 1 sub, 1024 B",
                t,
                &[
                    ("msg/s", 60_000.0 * s, true),
                    ("MB/s", 60.0 * s, true),
                    ("p50 ms", 3.0 / s, false),
                    ("p99 ms", 9.0 / s, false),
                    ("duplicates", 0.0, false),
                ],
            ));
            rows.push(row(
                "latency",
                "1024 B at 50% max",
                t,
                &[
                    ("p50 ms", 1.2 / s, false),
                    ("p99 ms", 4.1 / s, false),
                    ("p99.9 ms", 9.5 / s, false),
                ],
            ));
            if t.name == "emulator" {
                let mut failed = row("fan-out", "8 subs, 1024 B", t, &[]);
                failed.error = Some("timed out".to_owned());
                rows.push(failed);
            } else {
                rows.push(row(
                    "fan-out",
                    "8 subs, 1024 B",
                    t,
                    &[("deliveries/s", 180_000.0 * s, true)],
                ));
            }
            rows.push(row(
                "backlog",
                "1M × 1024 B",
                t,
                &[
                    ("publish msg/s", 120_000.0 * s, true),
                    ("drain msg/s", 90_000.0 * s, true),
                    ("peak RSS MiB", 180.0 / s, false),
                ],
            ));
            if is_converge(&t.name) {
                rows.push(row(
                    "startup",
                    "1M on disk",
                    t,
                    &[("startup s", 0.8 / s, false)],
                ));
            } else {
                let mut skipped = row("startup", "1M on disk", t, &[]);
                skipped.error = Some("n/a: the tool does not restart this server".to_owned());
                rows.push(skipped);
            }
        }
        // Three rounds, as `--rounds 3` would give: a few bars carry their range, over a
        // converge colour and over a peer's grey, for higher- and lower-is-better figures.
        for (target, workload, case, figure, min, max) in [
            (
                "converge-fsync",
                "publish",
                "16 pub, 1024 B",
                "msg/s",
                120_000.0,
                171_000.0,
            ),
            (
                "nats",
                "publish",
                "16 pub, 1024 B",
                "msg/s",
                190_000.0,
                232_000.0,
            ),
            (
                "converge-os-buffer",
                "latency",
                "1024 B at 50% max",
                "p99 ms",
                1.9,
                2.6,
            ),
        ] {
            let row = rows
                .iter_mut()
                .find(|r| r.target == target && r.workload == workload && r.case == case)
                .expect("the sample has the row");
            let figure = row
                .figures
                .iter_mut()
                .find(|f| f.name == figure)
                .expect("the row has the figure");
            figure.spread = Some(Spread {
                min,
                max,
                rounds: 3,
            });
        }
        Results {
            short: false,
            rounds: 3,
            targets,
            rows,
        }
    }

    /// Draws `results` without text into memory: the RGB pixels, the width and the height.
    fn pixels(results: &Results) -> (Vec<u8>, u32, u32) {
        let panels = panels(results);
        let (w, h) = (WIDTH as u32, chart_height(&panels) as u32);
        let mut buffer = vec![0u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
            // Without text: only the bars and whiskers carry their colours then.
            draw(&root, results, &panels, false).unwrap();
            root.present().unwrap();
        }
        (buffer, w, h)
    }

    /// Renders the sample to `target/converge-bench-sample-chart.png`, to look at by eye, and
    /// checks a non-empty PNG came out.
    #[test]
    fn sample_chart_png() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target");
        let path = dir.join("converge-bench-sample-chart.png");
        render(&sample(), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        assert!(bytes.len() > 10_000, "suspiciously small PNG");
    }

    /// Renders into memory and measures the bars: within a group each bar's length is
    /// proportional to its value, converge's bar is in converge's colour, the peer's in grey.
    #[test]
    fn bars_are_proportional_and_converge_is_coloured() {
        let converge = target("converge-fsync", Durability::AfterFsync);
        let nats = target("nats", Durability::AfterOsBuffer);
        let results = Results {
            short: true,
            rounds: 1,
            targets: vec![converge.clone(), nats.clone()],
            rows: vec![
                row("publish", "1 pub", &converge, &[("msg/s", 300.0, true)]),
                row("publish", "1 pub", &nats, &[("msg/s", 100.0, true)]),
            ],
        };
        let (buffer, w, h) = pixels(&results);
        let widest_run = |color: RGBColor| {
            (0..h)
                .map(|y| {
                    (0..w)
                        .filter(|&x| {
                            let i = ((y * w + x) * 3) as usize;
                            buffer[i..i + 3] == [color.0, color.1, color.2]
                        })
                        .count()
                })
                .max()
                .unwrap_or(0) as f64
        };
        let converge_w = widest_run(target_color(&results, "converge-fsync"));
        let nats_w = widest_run(target_color(&results, "nats"));
        assert_eq!(
            converge_w,
            f64::from(BAR_MAX_W),
            "the largest value fills the bar area"
        );
        assert!(CONVERGE_COLORS.contains(&target_color(&results, "converge-fsync")));
        assert!(PEER_COLORS.contains(&target_color(&results, "nats")));
        assert!(
            (converge_w / nats_w - 3.0).abs() < 0.05,
            "bar lengths {converge_w} and {nats_w} are not 3:1"
        );
    }

    /// A bar with a spread gets a whisker from its lowest to its highest round, across the
    /// middle of that bar only, and the group's scale makes room for the whisker's end.
    #[test]
    fn whisker_spans_the_rounds() {
        let converge = target("converge-fsync", Durability::AfterFsync);
        let nats = target("nats", Durability::AfterOsBuffer);
        let mut measured = row("publish", "1 pub", &converge, &[("msg/s", 300.0, true)]);
        measured.figures[0].spread = Some(Spread {
            min: 200.0,
            max: 400.0,
            rounds: 3,
        });
        let results = Results {
            short: false,
            rounds: 3,
            targets: vec![converge.clone(), nats.clone()],
            rows: vec![
                measured,
                row("publish", "1 pub", &nats, &[("msg/s", 100.0, true)]),
            ],
        };
        let (buffer, w, h) = pixels(&results);
        let at = |x: u32, y: u32, color: RGBColor| {
            let i = ((y * w + x) * 3) as usize;
            buffer[i..i + 3] == [color.0, color.1, color.2]
        };
        let whisker: Vec<(i32, i32)> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .filter(|&(x, y)| at(x, y, WHISKER))
            .map(|(x, y)| (x as i32, y as i32))
            .collect();
        assert!(!whisker.is_empty(), "no whisker drawn");
        let left = whisker.iter().map(|p| p.0).min().unwrap();
        let right = whisker.iter().map(|p| p.0).max().unwrap();
        let upper = whisker.iter().map(|p| p.1).min().unwrap();
        let lower = whisker.iter().map(|p| p.1).max().unwrap();
        // The first panel's first bar: 400 (the whisker's end) fills the bar area, so the
        // whisker runs from half of it (200) to all of it.
        let bars_x = MARGIN + LABEL_W;
        let top = MARGIN + HEADER_H + PANEL_TITLE_H + GROUP_TITLE_H;
        let middle = top + BAR_H / 2;
        let near = |got: i32, want: i32| (got - want).abs() <= 1;
        assert!(near(left, bars_x + BAR_MAX_W / 2), "starts at {left}");
        assert!(near(right, bars_x + BAR_MAX_W), "ends at {right}");
        assert!(near(upper, middle - WHISKER_TICK), "top at {upper}");
        assert!(near(lower, middle + WHISKER_TICK), "bottom at {lower}");
        assert!(upper >= top && lower <= top + BAR_H, "outside its bar");
        // The line between the ticks, on the middle row.
        let line = (left..=right)
            .filter(|&x| at(x as u32, middle as u32, WHISKER))
            .count() as i32;
        assert!(line >= right - left, "broken line: {line} pixels");
        // The bar is the median, 300 of 400: three quarters of the area, measured on a row
        // of the bar the whisker does not cross.
        let bar = (0..w)
            .filter(|&x| at(x, top as u32 + 1, target_color(&results, "converge-fsync")))
            .count() as f64;
        let expected = 0.75 * f64::from(BAR_MAX_W);
        assert!((bar - expected).abs() <= 1.0, "bar {bar}, not {expected}");
        // The peer's bar has no spread, so no whisker on its row.
        let nats_middle = middle + BAR_H + BAR_GAP;
        assert!(lower < nats_middle - WHISKER_TICK);
    }

    /// Failed steps show in every group of their case; bars follow the run's target order.
    #[test]
    fn groups_follow_cases_and_figures() {
        let panels = panels(&sample());
        let titles: Vec<&str> = panels.iter().map(|p| p.workload.as_str()).collect();
        assert_eq!(
            titles,
            [
                "publish",
                "end-to-end",
                "latency",
                "fan-out",
                "backlog",
                "startup"
            ]
        );
        let latency = &panels[2];
        assert_eq!(latency.groups.len(), 3);
        assert!(!latency.groups[0].higher_is_better);
        let fan_out = &panels[3].groups[0];
        assert_eq!(fan_out.bars.len(), 7);
        assert_eq!(fan_out.bars[3].target, "emulator");
        assert_eq!(fan_out.bars[3].value, None);
        // The chart keeps the headline figures only.
        let end_to_end: Vec<&str> = panels[1].groups.iter().map(|g| g.figure.as_str()).collect();
        assert_eq!(end_to_end, ["msg/s", "p99 ms"]);
        let startup = &panels[5].groups[0];
        assert_eq!(startup.bars.len(), 7);
        assert!(startup.bars[6].error.as_deref().unwrap().starts_with("n/a"));
        let order: Vec<&str> = panels[0].groups[0]
            .bars
            .iter()
            .map(|b| b.target.as_str())
            .collect();
        assert_eq!(order[0], "converge-fsync");
        assert_eq!(order[6], "pgqueue");
    }

    #[test]
    fn compares_with_the_best_peer_in_the_right_direction() {
        let peers = [("nats", 200.0), ("rabbitmq", 100.0)];
        assert_eq!(vs_best_peer(400.0, &peers, true), Some((2.0, "nats")));
        assert_eq!(vs_best_peer(100.0, &peers, true), Some((0.5, "nats")));
        // Lower is better: the best peer is the smallest, and half its value is twice as good.
        assert_eq!(vs_best_peer(50.0, &peers, false), Some((2.0, "rabbitmq")));
        assert_eq!(vs_best_peer::<&str>(50.0, &[], false), None);
        assert_eq!(vs_best_peer(0.0, &peers, false), None);
    }

    /// converge in fsync mode is compared with fsync peers only, even when a peer that does
    /// not fsync is faster; without a peer of its durability, with the best of all.
    #[test]
    fn compares_like_for_like() {
        let bar = |target: &str, durability, value| Bar {
            target: target.to_owned(),
            durability,
            value: Some(value),
            error: None,
            spread: None,
        };
        let group = Group {
            case: "1 pub".to_owned(),
            figure: "msg/s".to_owned(),
            higher_is_better: true,
            bars: vec![
                bar("converge-fsync", Durability::AfterFsync, 300.0),
                bar("converge-memory", Durability::Memory, 900.0),
                bar("nats", Durability::AfterOsBuffer, 400.0),
                bar("rabbitmq", Durability::AfterFsync, 100.0),
                bar("pgqueue", Durability::AfterFsync, 150.0),
            ],
        };
        let (factor, peer) = compare(&group.bars[0], 300.0, &group).unwrap();
        assert_eq!((factor, peer.target.as_str()), (2.0, "pgqueue"));
        let (factor, peer) = compare(&group.bars[1], 900.0, &group).unwrap();
        assert_eq!((factor, peer.target.as_str()), (2.25, "nats"));
    }

    #[test]
    fn formats_values_short() {
        assert_eq!(format_value(123_456.0), "123k");
        assert_eq!(format_value(12_345.0), "12.3k");
        assert_eq!(format_value(1_234.4), "1234");
        assert_eq!(format_value(1_234_567.0), "1.23M");
        assert_eq!(format_value(4.1), "4.10");
        assert_eq!(format_value(0.4123), "0.412");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_factor(2.04), "2.0×");
        assert_eq!(format_factor(12.4), "12×");
    }
}
