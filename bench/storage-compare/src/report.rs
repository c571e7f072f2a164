//! The Markdown table: one row per figure, one column per engine, each cell with its ratio to
//! converge's WAL (the first engine measured).

use std::fmt::Write as _;

/// One figure measured for every engine.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured, with its unit and whether more or less is better.
    pub label: String,
    /// The figure per engine, in column order.
    pub values: Vec<f64>,
    /// Decimals to print.
    pub decimals: usize,
}

impl Row {
    /// A row labelled `label`, printed with `decimals` decimals.
    pub fn new(label: impl Into<String>, decimals: usize) -> Self {
        Self {
            label: label.into(),
            values: Vec::new(),
            decimals,
        }
    }
}

/// Formats `value / baseline` as a ratio; `-` when the baseline is zero.
fn ratio(value: f64, baseline: f64) -> String {
    if baseline == 0.0 {
        return "-".to_owned();
    }
    format!("{:.2}×", value / baseline)
}

/// Renders the table. The first column is the baseline; the others show `value (ratio)`.
pub fn markdown(engines: &[String], rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = write!(out, "| figure |");
    for engine in engines {
        let _ = write!(out, " {engine} |");
    }
    out.push('\n');
    out.push_str("|---|");
    out.push_str(&"---:|".repeat(engines.len()));
    out.push('\n');
    for row in rows {
        debug_assert_eq!(row.values.len(), engines.len(), "one value per engine");
        let _ = write!(out, "| {} |", row.label);
        let baseline = row.values.first().copied().unwrap_or_default();
        for (i, value) in row.values.iter().enumerate() {
            let shown = format!("{value:.prec$}", prec = row.decimals);
            if i == 0 {
                let _ = write!(out, " {shown} |");
            } else {
                let _ = write!(out, " {shown} ({}) |", ratio(*value, baseline));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_relative_to_the_first_engine() {
        let mut row = Row::new("msgs/s ↑", 0);
        row.values = vec![200.0, 100.0, 400.0];
        let table = markdown(&["a".into(), "b".into(), "c".into()], &[row]);
        let line = table.lines().nth(2).unwrap();
        assert_eq!(line, "| msgs/s ↑ | 200 | 100 (0.50×) | 400 (2.00×) |");
    }

    #[test]
    fn zero_baseline_prints_no_ratio() {
        let mut row = Row::new("x", 1);
        row.values = vec![0.0, 3.0];
        let table = markdown(&["a".into(), "b".into()], &[row]);
        assert!(table.contains("| 3.0 (-) |"), "{table}");
    }
}
