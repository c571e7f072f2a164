//! HTTP middleware over everything served on the port, gRPC and REST alike: request ids and one
//! structured log event plus metrics per inbound request.

mod classify;
mod log;

pub use classify::{Caller, classify, grpc_code_for_http, status_label};

use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

/// The RPC a REST (or admin) handler served, put in the response's extensions so the request log
/// and metrics name it (`Publish`, not `POST`). gRPC requests are named from their path instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation(pub &'static str);

/// Wraps `router` in the request-id and request-log layers.
///
/// Order, outermost first: a request without `x-request-id` gets a new UUID v4; the id is copied
/// to the response; then the request is logged and counted (seeing the id).
pub fn instrument(router: Router) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(axum::middleware::from_fn(log::log_request)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app() -> Router {
        instrument(Router::new().route("/x", get(|| async { "x" })))
    }

    #[tokio::test]
    async fn a_given_request_id_is_echoed() {
        let _log = capture();
        let request = Request::get("/x")
            .header("x-request-id", "abc-123")
            .body(Body::empty())
            .unwrap();
        let response = app().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-request-id"], "abc-123");
    }

    #[tokio::test]
    async fn a_missing_request_id_is_a_new_uuid_v4() {
        let _log = capture();
        let request = Request::get("/x").body(Body::empty()).unwrap();
        let response = app().oneshot(request).await.unwrap();
        let id = response.headers()["x-request-id"].to_str().unwrap();
        let parsed = uuid::Uuid::parse_str(id).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 4);
    }

    #[tokio::test]
    async fn each_request_gets_its_own_id() {
        let _log = capture();
        let first = app()
            .oneshot(Request::get("/x").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let second = app()
            .oneshot(Request::get("/x").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_ne!(
            first.headers()["x-request-id"],
            second.headers()["x-request-id"]
        );
    }

    /// Collects what a JSON tracing subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Routes this thread's events into a fresh buffer until the guard drops.
    ///
    /// Every test that sends requests through [`instrument`] installs one, even when it does not
    /// read the log: tracing caches per call site whether anyone listens, and a test logging with
    /// no subscriber at all could make a concurrent test's subscriber miss the event.
    fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    impl Captured {
        fn events(&self) -> Vec<serde_json::Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    #[tokio::test]
    async fn one_structured_event_per_request() {
        let (captured, _guard) = capture();

        let app = instrument(
            Router::new()
                .route("/healthz", get(|| async { "ok" }))
                .route(
                    "/v1/x",
                    get(|| async {
                        (
                            StatusCode::NOT_FOUND,
                            axum::Extension(Operation("GetTopic")),
                        )
                    }),
                ),
        );
        let request = Request::get("/healthz")
            .header("x-request-id", "r-1")
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        drop(
            axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap(),
        );

        let events = captured.events();
        assert_eq!(events.len(), 1, "{events:?}");
        let fields = &events[0]["fields"];
        assert_eq!(fields["logType"], "REQUEST_INBOUND");
        assert_eq!(fields["service"], "health");
        assert_eq!(fields["method"], "Healthz");
        assert_eq!(fields["path"], "/healthz");
        assert_eq!(fields["status"], "200");
        assert_eq!(fields["httpStatus"], 200);
        assert_eq!(fields["requestId"], "r-1");
        assert!(
            fields["duration"].as_f64().is_some_and(|d| d >= 0.0),
            "{fields}"
        );
        // The timestamp is the log line's own (the JSON formatter writes it once at the top).
        assert!(
            fields.get("timestamp").is_none(),
            "no second timestamp: {fields}"
        );
        let timestamp = events[0]["timestamp"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(timestamp).is_ok(), "{timestamp}");
        assert!(fields.get("sourceIp").is_some());

        let response = app
            .oneshot(Request::get("/v1/x").body(Body::empty()).unwrap())
            .await
            .unwrap();
        drop(response);
        let events = captured.events();
        assert_eq!(events.len(), 2, "{events:?}");
        let fields = &events[1]["fields"];
        assert_eq!(
            (&fields["service"], &fields["method"], &fields["status"]),
            (&"rest".into(), &"GetTopic".into(), &"404".into())
        );
    }

    #[tokio::test]
    async fn grpc_status_is_read_from_trailers() {
        let (captured, _guard) = capture();

        let app = instrument(Router::new().route(
            "/google.pubsub.v1.Publisher/Publish",
            axum::routing::post(|| async {
                let mut trailers = axum::http::HeaderMap::new();
                trailers.insert("grpc-status", "5".parse().unwrap());
                let frames = vec![
                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                        bytes::Bytes::from_static(b"x"),
                    )),
                    Ok(hyper::body::Frame::trailers(trailers)),
                ];
                let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
                ([("content-type", "application/grpc")], Body::new(body)).into_response()
            }),
        ));
        let request = Request::post("/google.pubsub.v1.Publisher/Publish")
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert!(captured.events().is_empty(), "logged before the body ended");
        let collected = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
        assert!(collected.trailers().is_some());

        let events = captured.events();
        assert_eq!(events.len(), 1, "{events:?}");
        let fields = &events[0]["fields"];
        assert_eq!(fields["service"], "Publisher");
        assert_eq!(fields["method"], "Publish");
        assert_eq!(fields["status"], "NOT_FOUND");
        assert_eq!(fields["httpStatus"], 200);
    }
}
