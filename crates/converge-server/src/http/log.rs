//! One `REQUEST_INBOUND` log event and one metrics sample per inbound request.
//!
//! A gRPC call's outcome is known only at its end: `grpc-status` arrives in the trailers after
//! the last message (or in the headers for an immediate error). So the record travels with the
//! response body and is written when the body ends, or when it is dropped (a client that went
//! away mid-stream), which also makes "exactly one event per request" hold on every path.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tonic::Code;

use super::Operation;
use super::classify::{classify, status_label};

/// The middleware: records the request, runs it, and hands the record to the response body.
pub(super) async fn log_request(request: Request, next: Next) -> Response {
    let mut exchange = Exchange::begin(&request);
    let response = next.run(request).await;
    exchange.responded(&response);
    response.map(|inner| Body::new(LoggedBody { inner, exchange }))
}

/// What is known about one request until it is logged.
struct Exchange {
    service: &'static str,
    method: &'static str,
    path: String,
    request_id: String,
    source_ip: String,
    grpc: bool,
    started: Instant,
    http_status: Option<StatusCode>,
    grpc_status: Option<Code>,
    logged: bool,
}

impl Exchange {
    /// Starts the clock and notes who asked for what.
    fn begin(request: &Request) -> Self {
        let grpc = is_grpc(request.headers());
        let caller = classify(request.uri().path(), grpc);
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let source_ip = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip().to_string())
            .unwrap_or_default();
        Self {
            service: caller.service,
            method: caller.method,
            path: request.uri().path().to_owned(),
            request_id,
            source_ip,
            grpc,
            started: Instant::now(),
            http_status: None,
            grpc_status: None,
            logged: false,
        }
    }

    /// Notes the response head: HTTP status, the operation a REST handler named, and the
    /// `grpc-status` of a trailers-only gRPC answer.
    fn responded(&mut self, response: &Response) {
        self.http_status = Some(response.status());
        if let Some(Operation(name)) = response.extensions().get::<Operation>() {
            self.method = name;
        }
        self.note_grpc_status(response.headers());
    }

    /// Takes `grpc-status` from headers or trailers, if present.
    fn note_grpc_status(&mut self, headers: &HeaderMap) {
        let code = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok());
        if let Some(code) = code {
            self.grpc_status = Some(Code::from(code));
        }
    }

    /// Writes the log event and the metrics, once.
    fn finish(&mut self) {
        if self.logged {
            return;
        }
        self.logged = true;
        let elapsed = self.started.elapsed();
        let status = status_label(self.grpc, self.http_status, self.grpc_status);
        let http_status = self.http_status.map_or(499, |s| s.as_u16());
        tracing::info!(
            logType = "REQUEST_INBOUND",
            service = self.service,
            method = self.method,
            path = %self.path,
            status = %status,
            httpStatus = http_status,
            requestId = %self.request_id,
            duration = elapsed.as_secs_f64() * 1000.0,
            sourceIp = %self.source_ip,
            "inbound request"
        );
        crate::metrics::record_request(self.service, self.method, &status, elapsed);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Whether a request speaks gRPC (`application/grpc`, `application/grpc+proto`, …).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// A response body that logs its request when it ends, reading gRPC trailers on the way.
struct LoggedBody {
    inner: Body,
    exchange: Exchange,
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.exchange.note_grpc_status(trailers);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.exchange.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
