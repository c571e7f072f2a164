//! What the CLI prints: aligned tables for people, one JSON document with `--json` for programs.
//!
//! Every command builds both forms from the same response, so the two never disagree on what
//! was done. JSON field names follow the proto3 JSON mapping of the API (camelCase, durations
//! as `"600s"`, RFC 3339 timestamps), so that output can be fed to tools written for Pub/Sub.

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use comfy_table::{Table, presets};
use serde_json::Value;

/// Where and how results are printed.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    json: bool,
}

impl Output {
    /// Machine output (`--json`) or tables.
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// Whether programs read the output (`--json`).
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints `json` in JSON mode, else the table built by `table` (built only when needed).
    pub fn emit(&self, json: &Value, table: impl FnOnce() -> Table) -> io::Result<()> {
        let text = if self.json {
            serde_json::to_string_pretty(json).map_err(io::Error::other)?
        } else {
            render(table())
        };
        print(&text)
    }

    /// Prints a one-line confirmation for people, or `json` in JSON mode.
    pub fn done(&self, json: &Value, message: &str) -> io::Result<()> {
        if self.json {
            return self.emit(json, Table::new);
        }
        print(message)
    }
}

/// Writes `text` and a newline to stdout. A closed pipe (`converge ... | head`) is not an error:
/// the reader has all it wanted.
pub fn print(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// An empty table with these column headers, in the borderless style of `kubectl get`.
pub fn table(headers: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_header(headers.iter().copied());
    table
}

/// A two-column table of a single resource's fields.
pub fn details(fields: Vec<(&str, String)>) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    for (key, value) in fields {
        table.add_row(vec![format!("{key}:"), value]);
    }
    table
}

/// Renders a table with two spaces between columns and no padding at the line ends.
fn render(mut table: Table) -> String {
    let last = table.column_count().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
    }
    table
        .to_string()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Labels or attributes as `k=v, k2=v2`, sorted by key so that output is stable.
pub fn pairs(map: &HashMap<String, String>) -> String {
    let mut pairs: Vec<_> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(", ")
}

/// Labels or attributes as a JSON object with sorted keys.
pub fn pairs_json(map: &HashMap<String, String>) -> Value {
    let sorted: std::collections::BTreeMap<_, _> = map.iter().collect();
    serde_json::json!(sorted)
}

/// A protobuf duration for people (`7d`, `1h 30m`, `10s`), or empty when unset.
pub fn duration_text(d: Option<&prost_types::Duration>) -> String {
    d.and_then(|d| Duration::try_from(*d).ok())
        .map(human_duration)
        .unwrap_or_default()
}

/// A duration in days, hours, minutes, seconds and milliseconds, largest first, zero parts left
/// out. Unlike humantime's own format it never uses months (30.44 days), so 31 days reads `31d`;
/// the result parses back with [`crate::parse::duration`].
pub fn human_duration(d: Duration) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut secs = d.as_secs();
    let mut parts = Vec::new();
    for (size, unit) in UNITS {
        if secs >= size {
            parts.push(format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    let millis = d.subsec_millis();
    if millis > 0 {
        parts.push(format!("{millis}ms"));
    }
    if parts.is_empty() {
        return "0s".to_owned();
    }
    parts.join(" ")
}

/// A protobuf duration in proto3 JSON (`"604800s"`), or null when unset.
pub fn duration_json(d: Option<&prost_types::Duration>) -> Value {
    let Some(d) = d else {
        return Value::Null;
    };
    if d.nanos == 0 {
        return Value::String(format!("{}s", d.seconds));
    }
    // proto3 JSON writes 3, 6 or 9 fractional digits.
    let nanos = format!("{:09}", d.nanos.unsigned_abs());
    let digits = if nanos.ends_with("000000") {
        &nanos[..3]
    } else if nanos.ends_with("000") {
        &nanos[..6]
    } else {
        &nanos
    };
    Value::String(format!("{}.{digits}s", d.seconds))
}

/// A protobuf timestamp as RFC 3339 (milliseconds for people), or empty when unset.
pub fn timestamp_text(t: Option<&prost_types::Timestamp>) -> String {
    timestamp(t)
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_default()
}

/// A protobuf timestamp as RFC 3339 with nanoseconds, or null when unset.
pub fn timestamp_json(t: Option<&prost_types::Timestamp>) -> Value {
    timestamp(t).map_or(Value::Null, |t| {
        Value::String(humantime::format_rfc3339_nanos(t).to_string())
    })
}

fn timestamp(t: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

/// How a payload is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The payload itself if it is UTF-8, else its base64.
    pub text: String,
    /// `utf-8` or `base64`.
    pub encoding: &'static str,
}

/// Shows a payload as text when it is valid UTF-8, else as base64, so that binary data never
/// garbles a terminal.
pub fn payload(data: &[u8]) -> Payload {
    match std::str::from_utf8(data) {
        Ok(text) => Payload {
            text: text.to_owned(),
            encoding: "utf-8",
        },
        Err(_) => Payload {
            text: BASE64.encode(data),
            encoding: "base64",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_space() {
        let mut t = table(&["NAME", "LABELS"]);
        t.add_row(vec!["projects/p/topics/orders", "a=b"]);
        t.add_row(vec!["projects/p/topics/x", ""]);
        let text = render(t);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAME"), "{text}");
        let column = lines[1].find("a=b").unwrap();
        assert_eq!(lines[0].find("LABELS").unwrap(), column, "{text}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text:?}");
    }

    #[test]
    fn pairs_are_sorted() {
        let map: HashMap<_, _> = [
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "1".to_owned()),
        ]
        .into();
        assert_eq!(pairs(&map), "a=1, b=2");
        assert_eq!(pairs_json(&map).to_string(), r#"{"a":"1","b":"2"}"#);
    }

    #[test]
    fn durations_follow_proto3_json() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(duration_json(Some(&d(600, 0))), "600s");
        assert_eq!(duration_json(Some(&d(1, 500_000_000))), "1.500s");
        assert_eq!(duration_json(Some(&d(1, 1))), "1.000000001s");
        assert_eq!(duration_json(None), Value::Null);
        assert_eq!(duration_text(Some(&d(7 * 86_400, 0))), "7d");
        assert_eq!(duration_text(None), "");
    }

    #[test]
    fn human_durations_use_days_at_most_and_parse_back() {
        for (d, text) in [
            (Duration::from_secs(31 * 86_400), "31d"),
            (Duration::from_secs(90_061), "1d 1h 1m 1s"),
            (Duration::from_secs(5_400), "1h 30m"),
            (Duration::from_millis(1_500), "1s 500ms"),
            (Duration::from_millis(20), "20ms"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(human_duration(d), text);
            assert_eq!(crate::parse::duration(text).unwrap(), d, "{text}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5_000_000,
        };
        assert_eq!(timestamp_text(Some(&t)), "2023-11-14T22:13:20.005Z");
        assert_eq!(timestamp_json(Some(&t)), "2023-11-14T22:13:20.005000000Z");
        assert_eq!(timestamp_text(None), "");
    }

    #[test]
    fn payloads_are_text_when_valid_utf8_else_base64() {
        assert_eq!(
            payload("héllo".as_bytes()),
            Payload {
                text: "héllo".into(),
                encoding: "utf-8"
            }
        );
        assert_eq!(
            payload(&[0xff, 0x00]),
            Payload {
                text: "/wA=".into(),
                encoding: "base64"
            }
        );
    }
}
