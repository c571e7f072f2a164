//! Request logs over real sockets: a service ("orders") behind `RequestLogLayer::inbound` whose
//! handler calls a second service ("billing") through `OutboundRequestLog`; every line's fields
//! are checked, and the inbound `x-request-id` must reach the second service.
//!
//! The log is captured by a small subscriber installed globally, which keeps each event's
//! fields as JSON (what a JSON formatter would print); tests tell their lines apart by request
//! id, so they can run in parallel in one process.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use converge::http::request_log::{OutboundRequestLog, RequestId, RequestLogLayer};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::{Map, Value};

/// Every event seen by the process, as `{"fields": {...}}`.
static EVENTS: OnceLock<Arc<Mutex<Vec<Value>>>> = OnceLock::new();

/// Keeps the fields of every event.
struct Capture {
    events: Arc<Mutex<Vec<Value>>>,
}

/// Collects an event's fields into a JSON object.
struct Fields<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Map::new();
        event.record(&mut Fields(&mut fields));
        let line =
            serde_json::json!({ "level": event.metadata().level().as_str(), "fields": fields });
        self.events.lock().unwrap().push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Installs the capture once per process and returns the shared event list.
fn captured() -> Arc<Mutex<Vec<Value>>> {
    EVENTS
        .get_or_init(|| {
            let events = Arc::new(Mutex::new(Vec::new()));
            tracing::subscriber::set_global_default(Capture {
                events: events.clone(),
            })
            .expect("no other global subscriber in this test binary");
            events
        })
        .clone()
}

/// The request-log lines of type `log_type` with request id `id`.
fn lines(log_type: &str, id: &str) -> Vec<Map<String, Value>> {
    captured()
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| e["fields"].as_object())
        .filter(|f| f.get("logType") == Some(&Value::from(log_type)))
        .filter(|f| f.get("requestId") == Some(&Value::from(id)))
        .cloned()
        .collect()
}

/// Waits (generously) until exactly one such line is there, and returns it.
async fn one_line(log_type: &str, id: &str, service: &str) -> Map<String, Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found: Vec<_> = lines(log_type, id)
            .into_iter()
            .filter(|f| f.get("service") == Some(&Value::from(service)))
            .collect();
        if !found.is_empty() {
            assert_eq!(
                found.len(),
                1,
                "one {log_type} line of {service}: {found:?}"
            );
            return found.into_iter().next().unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {log_type} line of {service} with id {id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves `app` on a free local port with peer addresses, returning the address.
async fn serve(app: Router) -> SocketAddr {
    support::serve(app).await.expect("serving on a free port")
}

/// "billing": answers `201` with the `x-request-id` it received and the id its handler sees
/// as current.
async fn billing() -> SocketAddr {
    let app = Router::new()
        .route(
            "/charge",
            post(|headers: HeaderMap| async move {
                let received = headers
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let current = RequestId::current().map(|id| id.0).unwrap_or_default();
                (StatusCode::CREATED, format!("{received} {current}"))
            }),
        )
        .layer(RequestLogLayer::inbound("billing"));
    serve(app).await
}

/// The logging HTTP client of "orders".
fn orders_client() -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(OutboundRequestLog::new("orders"))
        .build()
}

/// "orders": `GET /checkout` calls billing and answers what billing answered.
async fn orders(billing: SocketAddr) -> SocketAddr {
    let app = Router::new()
        .route(
            "/checkout",
            get(
                move |State(client): State<ClientWithMiddleware>| async move {
                    let answer = client
                        .post(format!("http://{billing}/charge"))
                        .send()
                        .await
                        .expect("billing answers");
                    answer.text().await.expect("a body")
                },
            ),
        )
        .with_state(orders_client())
        .layer(RequestLogLayer::inbound("orders"));
    serve(app).await
}

/// Checks the fields every line has, with the values this exchange should show.
#[allow(clippy::too_many_arguments)]
fn assert_line(
    line: &Map<String, Value>,
    log_type: &str,
    service: &str,
    host: &str,
    source_ip: &str,
    method: &str,
    path: &str,
    status: u16,
) {
    assert_eq!(line["logType"], log_type, "{line:?}");
    assert_eq!(line["service"], service, "{line:?}");
    assert_eq!(line["host"], host, "{line:?}");
    assert_eq!(line["sourceIp"], source_ip, "{line:?}");
    assert_eq!(line["method"], method, "{line:?}");
    assert_eq!(line["path"], path, "{line:?}");
    assert_eq!(line["status"], status.to_string(), "{line:?}");
    assert_eq!(line["httpStatus"], status, "{line:?}");
    assert!(
        line["duration"].as_f64().is_some_and(|d| d >= 0.0),
        "duration in milliseconds: {line:?}"
    );
    assert!(
        line.get("timestamp").is_none(),
        "the line's own timestamp only"
    );
}

#[tokio::test]
async fn an_inbound_request_id_travels_through_an_outbound_call_and_every_line_has_its_fields()
-> anyhow::Result<()> {
    captured();
    let billing = billing().await;
    let orders = orders(billing).await;
    let id = format!("req-{}", uuid::Uuid::new_v4());

    let response = reqwest::Client::new()
        .get(format!("http://{orders}/checkout"))
        .header("x-request-id", &id)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], id.as_str(), "echoed");
    let body = response.text().await?;
    assert_eq!(
        body,
        format!("{id} {id}"),
        "billing received the inbound id and its handler saw it as current"
    );

    let inbound = one_line("REQUEST_INBOUND", &id, "orders").await;
    assert_line(
        &inbound,
        "REQUEST_INBOUND",
        "orders",
        &orders.to_string(),
        "127.0.0.1",
        "GET",
        "/checkout",
        200,
    );
    let outbound = one_line("REQUEST_OUTBOUND", &id, "orders").await;
    assert_line(
        &outbound,
        "REQUEST_OUTBOUND",
        "orders",
        &billing.to_string(),
        "",
        "POST",
        "/charge",
        201,
    );
    let downstream = one_line("REQUEST_INBOUND", &id, "billing").await;
    assert_line(
        &downstream,
        "REQUEST_INBOUND",
        "billing",
        &billing.to_string(),
        "127.0.0.1",
        "POST",
        "/charge",
        201,
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_request_id_becomes_a_uuid_that_is_echoed_logged_and_propagated()
-> anyhow::Result<()> {
    captured();
    let billing = billing().await;
    let orders = orders(billing).await;

    let response = reqwest::Client::new()
        .get(format!("http://{orders}/checkout"))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"].to_str()?.to_owned();
    let parsed = uuid::Uuid::parse_str(&id)?;
    assert_eq!(parsed.get_version_num(), 4);
    assert_eq!(response.text().await?, format!("{id} {id}"));

    one_line("REQUEST_INBOUND", &id, "orders").await;
    one_line("REQUEST_OUTBOUND", &id, "orders").await;
    one_line("REQUEST_INBOUND", &id, "billing").await;
    Ok(())
}

#[tokio::test]
async fn a_call_outside_any_request_gets_its_own_id_and_a_failed_call_is_logged()
-> anyhow::Result<()> {
    captured();
    let billing = billing().await;
    let client = orders_client();

    let answer = client
        .post(format!("http://{billing}/charge"))
        .send()
        .await?
        .text()
        .await?;
    let (received, current) = answer.split_once(' ').expect("two ids");
    assert_eq!(received, current);
    assert_eq!(uuid::Uuid::parse_str(received)?.get_version_num(), 4);
    one_line("REQUEST_OUTBOUND", received, "orders").await;
    one_line("REQUEST_INBOUND", received, "billing").await;

    // A port nobody listens on: bind one, note it, close it.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?
    };
    let id = format!("failed-{}", uuid::Uuid::new_v4());
    let error = client
        .get(format!("http://{closed}/nothing"))
        .header("x-request-id", &id)
        .send()
        .await;
    assert!(error.is_err());
    let line = one_line("REQUEST_OUTBOUND", &id, "orders").await;
    assert_eq!(line["status"], "error", "{line:?}");
    assert_eq!(line["httpStatus"], 0, "{line:?}");
    assert_eq!(line["host"], closed.to_string(), "{line:?}");
    assert_eq!(line["path"], "/nothing", "{line:?}");
    assert!(line.get("error").is_some(), "{line:?}");
    Ok(())
}
