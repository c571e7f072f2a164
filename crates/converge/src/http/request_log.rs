//! One structured log line per HTTP request a service serves (`REQUEST_INBOUND`) or makes
//! (`REQUEST_OUTBOUND`), and `x-request-id` carried from the first to the second.
//!
//! When a request fails three services away, the only way to follow it back is an id that every
//! hop logs. The inbound side ([`RequestLogLayer::inbound`]) gives every request an
//! `x-request-id` (a new UUID v4 when the caller sent none), echoes it in the response, logs the
//! exchange, and runs the handler inside a task-local [`RequestId`] scope. The outbound side
//! ([`OutboundRequestLog`], a [`reqwest_middleware::Middleware`]) logs every call the service
//! makes and sends the current id along, so a handler's outbound calls carry the id of the
//! request that caused them without the handler passing it around.
//!
//! The lines have the shape of the broker's own request log, so one log query covers the broker
//! and the services around it. Each is one `tracing` event at `INFO` with these fields:
//!
//! | field | inbound | outbound |
//! |---|---|---|
//! | `logType` | `REQUEST_INBOUND` | `REQUEST_OUTBOUND` |
//! | `service` | the name given to the layer | the name given to the middleware (the caller) |
//! | `host` | the `Host` header (or the URI's authority) | the host and port called |
//! | `sourceIp` | the peer address (axum `ConnectInfo`), else the first `x-forwarded-for` hop | empty |
//! | `method` | the HTTP method | the HTTP method |
//! | `path` | the path | the path |
//! | `status` | the status code as text (`"200"`) | the status code as text, `"error"` without an answer |
//! | `httpStatus` | the status code as a number (`499` when the client went away first) | the status code, `0` without an answer |
//! | `requestId` | the `x-request-id` | the `x-request-id` sent |
//! | `duration` | milliseconds until the response head (float) | milliseconds until the response head (float) |
//!
//! The timestamp is the log line's own: a JSON formatter such as `tracing_subscriber`'s writes
//! it once at the top of every line, so no field repeats it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::ConnectInfo;
use http::{HeaderMap, HeaderValue, Request, Response};
use tower::{Layer, Service};
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestId, PropagateRequestIdLayer, SetRequestId, SetRequestIdLayer,
};

/// The header that carries a request's id from service to service.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// `logType` of the line written for each request a service serves.
pub const INBOUND: &str = "REQUEST_INBOUND";

/// `logType` of the line written for each request a service makes.
pub const OUTBOUND: &str = "REQUEST_OUTBOUND";

tokio::task_local! {
    static CURRENT: RequestId;
}

/// The id of the inbound request being served, as a task-local.
///
/// [`RequestLogLayer::inbound`] runs every handler inside [`RequestId::scope`], so code the
/// handler calls (and [`OutboundRequestLog`] in particular) finds the id with
/// [`RequestId::current`] without it being threaded through every signature. Work spawned onto
/// other tasks does not inherit it: wrap the spawned future in [`RequestId::scope`] again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id of the request this task is serving, if any.
    pub fn current() -> Option<RequestId> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `future` with `self` as the current request id.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The request-log layers.
///
/// For a server (axum or any tower `Service` over `http` types):
///
/// ```
/// use axum::{Router, routing::get};
/// use converge::http::request_log::RequestLogLayer;
///
/// let app: Router = Router::new()
///     .route("/orders", get(|| async { "[]" }))
///     .layer(RequestLogLayer::inbound("orders"));
/// // Serve with `app.into_make_service_with_connect_info::<std::net::SocketAddr>()` so that
/// // the lines carry the caller's address.
/// ```
///
/// For an HTTP client, see [`RequestLogLayer::outbound`].
#[derive(Debug, Clone)]
pub struct RequestLogLayer {
    service: Arc<str>,
}

impl RequestLogLayer {
    /// The server side: sets a missing `x-request-id` to a new UUID v4, echoes it in the
    /// response, writes one `REQUEST_INBOUND` line per request naming `service`, and runs the
    /// handler with the id as the current [`RequestId`].
    pub fn inbound(service: impl Into<String>) -> Self {
        Self {
            service: Arc::from(service.into()),
        }
    }

    /// The client side: a [`reqwest_middleware::Middleware`] writing `REQUEST_OUTBOUND` lines
    /// naming `service` (the caller) and sending the current request id along.
    pub fn outbound(service: impl Into<String>) -> OutboundRequestLog {
        OutboundRequestLog::new(service)
    }
}

impl<S> Layer<S> for RequestLogLayer {
    type Service = SetRequestId<PropagateRequestId<InboundRequestLog<S>>, MakeRequestUuid>;

    fn layer(&self, inner: S) -> Self::Service {
        let logged = InboundRequestLog {
            inner,
            service: self.service.clone(),
        };
        // Outermost first: the id is set before anything sees the request, copied to the
        // response, and only then is the exchange logged (seeing the id).
        SetRequestIdLayer::x_request_id(MakeRequestUuid)
            .layer(PropagateRequestIdLayer::x_request_id().layer(logged))
    }
}

/// The service [`RequestLogLayer::inbound`] wraps around the application (inside the
/// request-id layers): logs each exchange and scopes the handler with its [`RequestId`].
#[derive(Debug, Clone)]
pub struct InboundRequestLog<S> {
    inner: S,
    service: Arc<str>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for InboundRequestLog<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let mut exchange = Exchange::inbound(&self.service, &request);
        let id = RequestId(exchange.request_id.clone());
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = id.scope(future).await;
            match &result {
                Ok(response) => exchange.finish(response.status().as_u16(), None),
                // An error from the inner service ends the connection without an answer; the
                // caller sees no status, so log it as a server error.
                Err(_) => exchange.finish(500, Some("the service failed")),
            }
            result
        })
    }
}

/// What is known about one exchange until it is logged. Dropping it unlogged (the caller went
/// away, the future was cancelled) logs it as `499`, so every request gets its line.
struct Exchange {
    log_type: &'static str,
    service: Arc<str>,
    host: String,
    source_ip: String,
    method: String,
    path: String,
    request_id: String,
    started: Instant,
    logged: bool,
}

impl Exchange {
    /// Notes who asked for what and starts the clock.
    fn inbound<B>(service: &Arc<str>, request: &Request<B>) -> Self {
        let headers = request.headers();
        let host = header_text(headers, http::header::HOST.as_str())
            .or_else(|| request.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let source_ip = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip().to_string())
            .or_else(|| {
                header_text(headers, "x-forwarded-for")
                    .and_then(|v| v.split(',').next().map(|hop| hop.trim().to_owned()))
            })
            .unwrap_or_default();
        Self {
            log_type: INBOUND,
            service: service.clone(),
            host,
            source_ip,
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            request_id: header_text(headers, REQUEST_ID_HEADER).unwrap_or_default(),
            started: Instant::now(),
            logged: false,
        }
    }

    /// Writes the line, once.
    fn finish(&mut self, http_status: u16, error: Option<&str>) {
        if self.logged {
            return;
        }
        self.logged = true;
        let duration = self.started.elapsed().as_secs_f64() * 1000.0;
        let status = if http_status == 0 {
            "error".to_owned()
        } else {
            http_status.to_string()
        };
        match error {
            None => tracing::info!(
                logType = self.log_type,
                service = %self.service,
                host = %self.host,
                sourceIp = %self.source_ip,
                method = %self.method,
                path = %self.path,
                status = %status,
                httpStatus = http_status,
                requestId = %self.request_id,
                duration,
                "{}",
                message(self.log_type)
            ),
            Some(error) => tracing::info!(
                logType = self.log_type,
                service = %self.service,
                host = %self.host,
                sourceIp = %self.source_ip,
                method = %self.method,
                path = %self.path,
                status = %status,
                httpStatus = http_status,
                requestId = %self.request_id,
                duration,
                error,
                "{}",
                message(self.log_type)
            ),
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish(
            499,
            Some("the request was abandoned before it was answered"),
        );
    }
}

/// The human part of a line.
fn message(log_type: &str) -> &'static str {
    if log_type == INBOUND {
        "inbound request"
    } else {
        "outbound request"
    }
}

/// A header's value as text, if present and printable.
fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The client side of the request log: a [`reqwest_middleware::Middleware`].
///
/// Writes one `REQUEST_OUTBOUND` line per request and sets `x-request-id` on requests that
/// have none: the current [`RequestId`] when called while serving a request (so the callee's
/// `REQUEST_INBOUND` line has the same id as ours), else a new UUID v4, so that the two sides
/// of a call made outside any request can still be matched. It is just a middleware, so it
/// stacks with others (retries: put it after the retry middleware to log every attempt, before
/// it to log each call once).
///
/// ```
/// use converge::http::request_log::OutboundRequestLog;
///
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(OutboundRequestLog::new("orders"))
///     .build();
/// # drop(client);
/// ```
#[derive(Debug, Clone)]
pub struct OutboundRequestLog {
    service: Arc<str>,
}

impl OutboundRequestLog {
    /// The middleware for calls made by `service`.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: Arc::from(service.into()),
        }
    }
}

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for OutboundRequestLog {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let existing = header_text(request.headers(), REQUEST_ID_HEADER);
        let request_id = match existing {
            Some(id) => id,
            None => {
                let id = RequestId::current()
                    .map(|RequestId(id)| id)
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                if let Ok(value) = HeaderValue::from_str(&id) {
                    request.headers_mut().insert(REQUEST_ID_HEADER, value);
                }
                id
            }
        };
        let url = request.url();
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => String::new(),
        };
        let mut exchange = Exchange {
            log_type: OUTBOUND,
            service: self.service.clone(),
            host,
            source_ip: String::new(),
            method: request.method().to_string(),
            path: url.path().to_owned(),
            request_id,
            started: Instant::now(),
            logged: false,
        };
        let result = next.run(request, extensions).await;
        match &result {
            Ok(response) => exchange.finish(response.status().as_u16(), None),
            Err(error) => exchange.finish(0, Some(&error.to_string())),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_current_id_is_only_set_inside_a_scope() {
        assert_eq!(RequestId::current(), None);
        let id = RequestId("abc".into());
        let seen = id.clone().scope(async { RequestId::current() }).await;
        assert_eq!(seen, Some(id));
        assert_eq!(RequestId::current(), None);
    }
}
