//! Prometheus metrics: the global recorder, request counters, and `/metrics`.
//!
//! Counters and histograms go through the `metrics` facade, so the store (messages published,
//! delivered, acked, …) and the transport record into the same registry. Per-subscription
//! backlog gauges are computed at scrape time from [`converge_core::Store::subscription_stats`]
//! and rendered directly, so a deleted subscription disappears from the next scrape instead of
//! lingering as a stale gauge.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use converge_core::store::SubscriptionStats;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

/// Counter of inbound requests, labelled `service`, `method`, `status`.
pub const REQUESTS_TOTAL: &str = "converge_requests_total";
/// Histogram of request durations in seconds, labelled `service`, `method`.
pub const REQUEST_DURATION: &str = "converge_request_duration_seconds";
/// Gauge: unacknowledged messages of a subscription.
pub const BACKLOG: &str = "converge_subscription_backlog_messages";
/// Gauge: age of a subscription's oldest unacknowledged message.
pub const OLDEST_UNACKED_AGE: &str = "converge_subscription_oldest_unacked_age_seconds";

/// Bucket bounds of the request duration histogram: from a cache-hot ack to a long poll.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process-wide recorder's handle, installing the recorder on first use.
///
/// A process has one global recorder, and tests start several servers in one process, so this
/// installs it once and shares it. If something else installed a recorder first, converge
/// renders its own (empty) registry and says so, rather than failing to start.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_owned()), DURATION_BUCKETS)
            .expect("the duration buckets are not empty");
        match builder.install_recorder() {
            Ok(handle) => handle,
            Err(e) => {
                tracing::warn!(error = %e, "another metrics recorder is installed: /metrics shows only scrape-time gauges");
                PrometheusBuilder::new().build_recorder().handle()
            }
        }
    })
}

/// Counts one finished request and its duration.
pub fn record_request(service: &'static str, method: &str, status: &str, duration: Duration) {
    metrics::counter!(REQUESTS_TOTAL, "service" => service, "method" => method.to_owned(), "status" => status.to_owned())
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "service" => service, "method" => method.to_owned())
        .record(duration.as_secs_f64());
}

/// The `/metrics` route, to merge into the server's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(state)
}

/// Renders the registry plus the per-subscription gauges in the Prometheus text format.
async fn scrape(State(state): State<AppState>) -> Response {
    let mut body = handle().render();
    if let Some(service) = state.service_if_open() {
        match service.store().subscription_stats().await {
            Ok(stats) => body.push_str(&render_subscription_gauges(&stats)),
            Err(e) => tracing::warn!(error = %e, "subscription stats unavailable for /metrics"),
        }
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The two per-subscription gauge families, one sample per subscription.
fn render_subscription_gauges(stats: &[SubscriptionStats]) -> String {
    let mut out = String::new();
    if stats.is_empty() {
        return out;
    }
    let _ = writeln!(out, "# TYPE {BACKLOG} gauge");
    for s in stats {
        let _ = writeln!(
            out,
            "{BACKLOG}{{subscription=\"{}\"}} {}",
            escape_label(&s.name.to_string()),
            s.backlog
        );
    }
    let _ = writeln!(out, "# TYPE {OLDEST_UNACKED_AGE} gauge");
    for s in stats {
        let _ = writeln!(
            out,
            "{OLDEST_UNACKED_AGE}{{subscription=\"{}\"}} {}",
            escape_label(&s.name.to_string()),
            s.oldest_unacked_age.as_secs_f64()
        );
    }
    out
}

/// Escapes a label value as the text exposition format requires (`\`, `"`, newline).
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_core::SubscriptionName;

    fn stats(name: &str, backlog: u64, age_ms: u64) -> SubscriptionStats {
        SubscriptionStats {
            name: SubscriptionName::parse(name).expect("valid name"),
            backlog,
            oldest_unacked_age: Duration::from_millis(age_ms),
        }
    }

    #[test]
    fn gauges_have_one_sample_per_subscription() {
        let text = render_subscription_gauges(&[
            stats("projects/p/subscriptions/sub-a", 3, 1500),
            stats("projects/p/subscriptions/sub-b", 0, 0),
        ]);
        assert!(text.contains("converge_subscription_backlog_messages{subscription=\"projects/p/subscriptions/sub-a\"} 3\n"));
        assert!(text.contains("converge_subscription_backlog_messages{subscription=\"projects/p/subscriptions/sub-b\"} 0\n"));
        assert!(text.contains(
            "converge_subscription_oldest_unacked_age_seconds{subscription=\"projects/p/subscriptions/sub-a\"} 1.5\n"
        ));
        assert_eq!(text.matches("# TYPE").count(), 2);
    }

    #[test]
    fn no_subscriptions_render_nothing() {
        assert_eq!(render_subscription_gauges(&[]), "");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }
}
