//! Naming requests for logs and metrics: which service, which method, which status.
//!
//! Labels must stay a small fixed set (they become Prometheus series), so names that a client
//! chose freely (unknown gRPC methods, arbitrary paths) collapse to `Unknown`.

use axum::http::StatusCode;
use tonic::Code;

use crate::service::error::status_name;

/// Who a request was for, as the log and metrics label it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `Publisher`, `Subscriber`, `rest`, `health`, `metrics`, `admin` or `grpc` (another
    /// gRPC service).
    pub service: &'static str,
    /// The RPC name (`Publish`), a probe name (`Readyz`) or `Unknown`.
    pub method: &'static str,
}

/// The methods of `google.pubsub.v1.Publisher`, as their gRPC routes spell them.
const PUBLISHER: &[&str] = &[
    "CreateTopic",
    "UpdateTopic",
    "Publish",
    "GetTopic",
    "ListTopics",
    "ListTopicSubscriptions",
    "ListTopicSnapshots",
    "DeleteTopic",
    "DetachSubscription",
];

/// The methods of `google.pubsub.v1.Subscriber`, as their gRPC routes spell them.
const SUBSCRIBER: &[&str] = &[
    "CreateSubscription",
    "GetSubscription",
    "UpdateSubscription",
    "ListSubscriptions",
    "DeleteSubscription",
    "ModifyAckDeadline",
    "Acknowledge",
    "Pull",
    "StreamingPull",
    "ModifyPushConfig",
    "GetSnapshot",
    "ListSnapshots",
    "CreateSnapshot",
    "UpdateSnapshot",
    "DeleteSnapshot",
    "Seek",
];

/// Names the caller of a request from its path. REST handlers refine `method` afterwards with
/// the [`super::Operation`] they put in the response.
pub fn classify(path: &str, grpc: bool) -> Caller {
    if grpc {
        return classify_grpc(path);
    }
    let (service, method) = match path {
        "/healthz" => ("health", "Healthz"),
        "/readyz" => ("health", "Readyz"),
        "/metrics" => ("metrics", "Scrape"),
        p if p.starts_with("/converge/") => ("admin", "Unknown"),
        _ => ("rest", "Unknown"),
    };
    Caller { service, method }
}

/// `/google.pubsub.v1.Publisher/Publish` → (`Publisher`, `Publish`).
fn classify_grpc(path: &str) -> Caller {
    let unknown = Caller {
        service: "grpc",
        method: "Unknown",
    };
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return unknown;
    };
    let (service, methods) = match service {
        "google.pubsub.v1.Publisher" => ("Publisher", PUBLISHER),
        "google.pubsub.v1.Subscriber" => ("Subscriber", SUBSCRIBER),
        _ => return unknown,
    };
    let method = methods
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("Unknown");
    Caller { service, method }
}

/// The gRPC code a client infers from an HTTP status when no `grpc-status` came (the gRPC
/// spec's HTTP-to-gRPC mapping).
pub fn grpc_code_for_http(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The `status` label and log field: the gRPC code name for gRPC, the HTTP status for the rest.
///
/// `http` is `None` when no response was produced (the client went away first); a gRPC
/// response without `grpc-status` ended before its trailers (also a client gone away), unless
/// its HTTP status already tells the code.
pub fn status_label(grpc: bool, http: Option<StatusCode>, grpc_status: Option<Code>) -> String {
    if !grpc {
        return http.map_or_else(|| "499".to_owned(), |s| s.as_u16().to_string());
    }
    let code = match (grpc_status, http) {
        (Some(code), _) => code,
        (None, Some(s)) if s != StatusCode::OK => grpc_code_for_http(s),
        (None, _) => Code::Cancelled,
    };
    status_name(code).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_name_service_and_method() {
        assert_eq!(
            classify("/google.pubsub.v1.Publisher/Publish", true),
            Caller {
                service: "Publisher",
                method: "Publish"
            }
        );
        assert_eq!(
            classify("/google.pubsub.v1.Subscriber/StreamingPull", true),
            Caller {
                service: "Subscriber",
                method: "StreamingPull"
            }
        );
    }

    #[test]
    fn unknown_grpc_names_collapse() {
        assert_eq!(
            classify("/google.pubsub.v1.Publisher/Nope", true),
            Caller {
                service: "Publisher",
                method: "Unknown"
            }
        );
        assert_eq!(
            classify("/grpc.health.v1.Health/Check", true),
            Caller {
                service: "grpc",
                method: "Unknown"
            }
        );
        assert_eq!(
            classify("/", true),
            Caller {
                service: "grpc",
                method: "Unknown"
            }
        );
    }

    #[test]
    fn fixed_paths_have_fixed_names() {
        assert_eq!(
            classify("/healthz", false),
            Caller {
                service: "health",
                method: "Healthz"
            }
        );
        assert_eq!(
            classify("/readyz", false),
            Caller {
                service: "health",
                method: "Readyz"
            }
        );
        assert_eq!(
            classify("/metrics", false),
            Caller {
                service: "metrics",
                method: "Scrape"
            }
        );
        assert_eq!(
            classify("/converge/test/clock:advance", false).service,
            "admin"
        );
        assert_eq!(
            classify("/v1/projects/p/topics/t", false),
            Caller {
                service: "rest",
                method: "Unknown"
            }
        );
    }

    #[test]
    fn rest_status_is_the_http_status() {
        assert_eq!(
            status_label(false, Some(StatusCode::NOT_FOUND), None),
            "404"
        );
        assert_eq!(status_label(false, None, None), "499");
    }

    #[test]
    fn grpc_status_prefers_the_grpc_code() {
        assert_eq!(
            status_label(true, Some(StatusCode::OK), Some(Code::Ok)),
            "OK"
        );
        assert_eq!(
            status_label(true, Some(StatusCode::OK), Some(Code::NotFound)),
            "NOT_FOUND"
        );
        assert_eq!(status_label(true, Some(StatusCode::OK), None), "CANCELLED");
        assert_eq!(status_label(true, None, None), "CANCELLED");
        assert_eq!(
            status_label(true, Some(StatusCode::SERVICE_UNAVAILABLE), None),
            "UNAVAILABLE"
        );
        assert_eq!(
            status_label(true, Some(StatusCode::NOT_FOUND), None),
            "UNIMPLEMENTED"
        );
    }
}
