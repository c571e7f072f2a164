//! The figures of a bench run: rates over the counting window and latency percentiles, for a
//! table or for JSON. Pure arithmetic over [`Totals`], so it is tested without a broker.

use std::time::Duration;

use serde_json::{Value, json};

use super::load::Totals;

/// Bytes in the megabyte of `MB/s` (decimal, as network and disk throughput are quoted).
const MEGABYTE: f64 = 1_000_000.0;

/// The percentiles reported, as (label, quantile).
const PERCENTILES: [(&str, f64); 4] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
];

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Length of the counting window.
    pub window: Duration,
    /// Successful Publish calls completed in the window.
    pub calls: u64,
    /// Messages in them.
    pub messages: u64,
    /// Bytes of message data in them.
    pub bytes: u64,
    /// Failed Publish calls over the whole run, warm-up included.
    pub failures: u64,
    /// Successful calls per second.
    pub calls_per_second: f64,
    /// Messages per second.
    pub messages_per_second: f64,
    /// Megabytes (10^6 bytes) of message data per second.
    pub megabytes_per_second: f64,
    /// Latency of the calls, or `None` when no call completed in the window.
    pub latency: Option<Latency>,
}

/// Latency of one Publish call, from sending it to having its message ids, in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    /// Percentiles in the order of [`PERCENTILES`].
    pub percentiles: [u64; PERCENTILES.len()],
    /// The slowest call.
    pub max: u64,
    /// The average.
    pub mean: f64,
}

impl Summary {
    /// Summarises the counts of a run whose messages carried `message_bytes` bytes of data each.
    pub fn new(totals: &Totals, message_bytes: u32) -> Self {
        debug_assert!(!totals.window.is_zero(), "the window is validated non-zero");
        debug_assert_eq!(totals.latency.len(), totals.calls, "one sample per call");
        let seconds = totals.window.as_secs_f64();
        let bytes = totals.messages * u64::from(message_bytes);
        let latency = (totals.calls > 0).then(|| Latency {
            percentiles: PERCENTILES.map(|(_, q)| totals.latency.value_at_quantile(q)),
            max: totals.latency.max(),
            mean: totals.latency.mean(),
        });
        Self {
            window: totals.window,
            calls: totals.calls,
            messages: totals.messages,
            bytes,
            failures: totals.failures,
            calls_per_second: totals.calls as f64 / seconds,
            messages_per_second: totals.messages as f64 / seconds,
            megabytes_per_second: bytes as f64 / MEGABYTE / seconds,
            latency,
        }
    }

    /// The figures as JSON: counts, rates, and latency in microseconds.
    pub fn to_json(&self) -> Value {
        let latency = self.latency.as_ref().map_or(Value::Null, |l| {
            let mut object = serde_json::Map::new();
            for ((label, _), value) in PERCENTILES.iter().zip(l.percentiles) {
                object.insert((*label).to_owned(), json!(value));
            }
            object.insert("max".into(), json!(l.max));
            object.insert("mean".into(), json!(l.mean));
            Value::Object(object)
        });
        json!({
            "durationSeconds": self.window.as_secs_f64(),
            "calls": self.calls,
            "messages": self.messages,
            "bytes": self.bytes,
            "failures": self.failures,
            "callsPerSecond": self.calls_per_second,
            "messagesPerSecond": self.messages_per_second,
            "megabytesPerSecond": self.megabytes_per_second,
            "latencyMicros": latency,
        })
    }

    /// The figures as (label, value) rows for people: rates, then latency in milliseconds.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            (
                "messages",
                format!("{} ({:.1}/s)", self.messages, self.messages_per_second),
            ),
            (
                "publish calls",
                format!("{} ({:.1}/s)", self.calls, self.calls_per_second),
            ),
            (
                "throughput",
                format!("{:.2} MB/s", self.megabytes_per_second),
            ),
        ];
        match &self.latency {
            Some(l) => {
                for ((label, _), micros) in PERCENTILES.iter().zip(l.percentiles) {
                    rows.push((label, millis(micros as f64)));
                }
                rows.push(("max", millis(l.max as f64)));
                rows.push(("mean", millis(l.mean)));
            }
            None => rows.push(("latency", "no call completed".to_owned())),
        }
        rows.push(("failures", self.failures.to_string()));
        rows
    }
}

/// Microseconds as milliseconds with microsecond precision, e.g. `1.234 ms`.
fn millis(micros: f64) -> String {
    format!("{:.3} ms", micros / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of `calls` calls of `batch` messages whose latencies are 1..=calls milliseconds.
    fn totals(calls: u64, batch: usize, window: Duration) -> Totals {
        let mut totals = Totals::new(window);
        for ms in 1..=calls {
            totals.success(batch, Duration::from_millis(ms));
        }
        totals
    }

    #[test]
    fn rates_divide_by_the_window() {
        let summary = Summary::new(&totals(1000, 10, Duration::from_secs(4)), 1024);
        assert_eq!((summary.calls, summary.messages), (1000, 10_000));
        assert_eq!(summary.bytes, 10_240_000);
        assert!((summary.calls_per_second - 250.0).abs() < 1e-9);
        assert!((summary.messages_per_second - 2500.0).abs() < 1e-9);
        assert!((summary.megabytes_per_second - 2.56).abs() < 1e-9);
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let summary = Summary::new(&totals(1000, 1, Duration::from_secs(1)), 1);
        let latency = summary.latency.unwrap();
        // 3 significant digits: each value is within 0.1 % of the exact percentile.
        let exact = [500_000.0, 900_000.0, 990_000.0, 999_000.0];
        for (got, want) in latency.percentiles.iter().zip(exact) {
            let error = (*got as f64 - want).abs() / want;
            assert!(error < 0.001, "{got} vs {want}");
        }
        assert!((latency.max as f64 - 1_000_000.0).abs() / 1_000_000.0 < 0.001);
        assert!((latency.mean - 500_500.0).abs() / 500_500.0 < 0.001);
        assert!(latency.percentiles.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn no_completed_call_means_no_latency() {
        let mut totals = Totals::new(Duration::from_secs(1));
        totals.failure("UNAVAILABLE: down".into());
        let summary = Summary::new(&totals, 1024);
        assert_eq!(summary.latency, None);
        assert_eq!(summary.failures, 1);
        assert_eq!(summary.to_json()["latencyMicros"], Value::Null);
        assert!(
            summary
                .rows()
                .iter()
                .any(|(k, v)| *k == "latency" && v == "no call completed")
        );
    }

    #[test]
    fn json_and_rows_carry_the_same_figures() {
        // Below 2048 µs the histogram is exact, so the figures can be compared as they are.
        let mut totals = Totals::new(Duration::from_secs(2));
        for micros in [100, 200, 300, 400] {
            totals.success(2, Duration::from_micros(micros));
        }
        let summary = Summary::new(&totals, 100);
        let json = summary.to_json();
        assert_eq!(json["messages"], 8);
        assert_eq!(json["bytes"], 800);
        assert_eq!(json["callsPerSecond"], 2.0);
        assert_eq!(json["latencyMicros"]["max"], 400);
        assert_eq!(json["latencyMicros"]["p50"], 200);
        let rows: std::collections::HashMap<_, _> = summary.rows().into_iter().collect();
        assert_eq!(rows["messages"], "8 (4.0/s)");
        assert_eq!(rows["max"], "0.400 ms");
        assert_eq!(rows["p50"], "0.200 ms");
        assert_eq!(rows["mean"], "0.250 ms");
        assert_eq!(rows["failures"], "0");
    }
}
