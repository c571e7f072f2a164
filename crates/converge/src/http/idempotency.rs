//! The `Idempotency-Key` middleware for axum and tower, after the IETF draft
//! [draft-ietf-httpapi-idempotency-key-header](https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/).
//!
//! A client that sent a `POST` and got no answer cannot know whether the work was done. With
//! an `Idempotency-Key` header it can simply send the request again: this middleware runs the
//! handler once per key and answers every retry with the first response.
//!
//! # Behaviour
//!
//! For requests whose method is guarded (`POST` and `PATCH` by default, the methods the draft
//! names as not idempotent; others pass through untouched):
//!
//! | situation | answer |
//! |---|---|
//! | no `Idempotency-Key`, route [required](IdempotencyLayer::required) | `400`, problem "Idempotency-Key is missing" |
//! | no key, not required | the handler runs, nothing is recorded |
//! | malformed key, or more than one header | `400`, problem "Idempotency-Key is invalid" |
//! | request body over [`max_body`](IdempotencyLayer::max_body) | `413` problem |
//! | new key | the handler runs; its response is recorded (see below) |
//! | same key, same request, first still running | `409`, problem "A request is outstanding for this Idempotency-Key", `Retry-After` (at most 1 s), `x-should-retry: true` |
//! | same key, other request (fingerprint differs) | `422`, problem "Idempotency-Key is already used" |
//! | same key, same request, first completed | the recorded status, headers and body, plus `Idempotent-Replayed: true` |
//! | the store fails | `503` problem, handler not run |
//!
//! Errors are RFC 9457 `application/problem+json`, with the draft's titles, a `type` pointing
//! at the [documentation](IdempotencyLayer::documentation) (by default the draft itself) and the
//! same link in a `Link: <…>; rel="describedby"` header.
//!
//! The key accepts the draft's form, a structured-field string (`Idempotency-Key:
//! "8e03978e-40d5-43e8-bc93-6894a57f9324"`, parameters after it ignored), and the bare form many
//! clients send (`Idempotency-Key: 8e03978e-…`). Either way the key must be a valid
//! [`IdempotencyKey`] (1 to 256 bytes of visible ASCII); while the handler runs, it is
//! [`IdempotencyKey::current`] and a request extension, so the handler can pass it on.
//!
//! # What is recorded
//!
//! Responses with status 2xx, 3xx and 4xx are recorded and replayed, except 408, 409, 425 and
//! 429, whose meaning is "try again". 5xx responses are not recorded: the key is released and a
//! retry runs the handler again. A server error normally means the work did not happen (a
//! failed transaction rolls back) or a dependency was briefly down, and replaying a stored 500
//! for a day would turn a transient failure into a permanent one. The consequence for handlers:
//! **a 5xx must mean "no effect"** (commit last; return 2xx once committed). Stripe records 5xx
//! as well; we prefer convergence to pinning an error.
//!
//! Responses whose body exceeds `max_body` are passed on but not recorded (the key is released,
//! so a retry runs the handler again): raise the limit on routes with large answers, or make
//! their handler idempotent itself. Recorded headers exclude hop-by-hop fields and `date`.
//!
//! A handler that never finishes (the process crashed, the client disconnected and the future
//! was dropped) leaves its key leased until the [lease](IdempotencyLayer::lease) expires; retries
//! get 409 until then, and the first retry after it runs the handler again.
//!
//! # Expiry policy
//!
//! Keys are remembered for the [retention](IdempotencyLayer::retention) period (24 h by
//! default) after the response; a retry after that runs the handler again. The draft asks
//! servers to publish this policy: every response to a guarded request carries it in seconds
//! as `Idempotency-Retention: 86400` (a header of this middleware, not of the draft).
//!
//! # Scope
//!
//! Keys are client-chosen, so two clients may pick the same one. [`IdempotencyLayer::scope`]
//! maps a request to the namespace its key lives in (a tenant id, an authenticated client);
//! the default is one shared namespace. The fingerprint covers the method, the path and query
//! and the body, so reusing a key on another route is a 422, not a replay.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use axum::Router;
//! use axum::routing::post;
//! use converge::http::idempotency::IdempotencyLayer;
//! use converge::idempotency::store::SqlIdempotencyStore;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/app").await?;
//! let store = SqlIdempotencyStore::new(pool);
//! store.migrate().await?;
//! let app: Router = Router::new()
//!     .route("/orders", post(|| async { "created" }))
//!     .layer(
//!         IdempotencyLayer::new(Arc::new(store))
//!             .required(true)
//!             .lease(Duration::from_secs(30))
//!             .scope(|parts| {
//!                 let tenant = parts.headers.get("x-tenant").and_then(|v| v.to_str().ok());
//!                 tenant.unwrap_or_default().to_owned()
//!             }),
//!     );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use sha2::{Digest as _, Sha256};
use tower::{Layer, Service};

use crate::idempotency::IdempotencyKey;
use crate::idempotency::store::{Begin, DEFAULT_RETENTION, IdempotencyStore, LeaseToken};

/// The request header carrying the key.
pub const IDEMPOTENCY_KEY_HEADER: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header marking a replayed response (`true`), so clients and logs can tell a
/// replay from a first answer.
pub const REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The response header advertising how long keys are remembered, in seconds (the draft asks
/// servers to publish their expiry policy).
pub const RETENTION_HEADER: HeaderName = HeaderName::from_static("idempotency-retention");

/// The default problem `type` and documentation link: the draft itself.
pub const DEFAULT_DOCUMENTATION: &str =
    "https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/";

/// The default lease: how long a request's key stays locked if its handler never finishes.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// The default cap on buffered request and recorded response bodies: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// The scope of a request's key (see [`IdempotencyLayer::scope`]).
type ScopeFn = dyn Fn(&Parts) -> String + Send + Sync;

/// The fingerprint of a request (see [`IdempotencyLayer::fingerprint`]).
type FingerprintFn = dyn Fn(&Parts, &[u8]) -> String + Send + Sync;

/// The longest `Retry-After` of a `409` answered while the first request runs.
const IN_PROGRESS_RETRY_HINT: Duration = Duration::from_secs(1);

/// A tower [`Layer`] adding `Idempotency-Key` handling to a service or axum router; see the
/// [module documentation](self) for the behaviour.
#[derive(Clone)]
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    store: Arc<dyn IdempotencyStore>,
    required: bool,
    retention: Duration,
    lease: Duration,
    max_body: usize,
    methods: Vec<Method>,
    documentation: String,
    scope: Arc<ScopeFn>,
    fingerprint: Arc<FingerprintFn>,
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("store", &self.config.store)
            .field("required", &self.config.required)
            .field("retention", &self.config.retention)
            .field("lease", &self.config.lease)
            .field("max_body", &self.config.max_body)
            .field("methods", &self.config.methods)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// The middleware over `store`: key optional, `POST` and `PATCH` guarded, 24 h retention,
    /// 60 s lease, 1 MiB body cap, one shared scope, the default fingerprint.
    pub fn new(store: Arc<dyn IdempotencyStore>) -> Self {
        Self {
            config: Arc::new(Config {
                store,
                required: false,
                retention: DEFAULT_RETENTION,
                lease: DEFAULT_LEASE,
                max_body: DEFAULT_MAX_BODY,
                methods: vec![Method::POST, Method::PATCH],
                documentation: DEFAULT_DOCUMENTATION.to_owned(),
                scope: Arc::new(|_| String::new()),
                fingerprint: Arc::new(default_fingerprint),
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// Whether guarded requests must carry a key (`400` without one). Off by default, so the
    /// layer can wrap a whole router; turn it on for routes whose clients are known to retry.
    #[must_use]
    pub fn required(self, required: bool) -> Self {
        self.with(|c| c.required = required)
    }

    /// How long a completed request's response is kept for replay (default 24 h), advertised in
    /// [`RETENTION_HEADER`].
    #[must_use]
    pub fn retention(self, retention: Duration) -> Self {
        self.with(|c| c.retention = retention)
    }

    /// How long a request's key stays locked if its handler never finishes (default 60 s).
    /// Longer than the slowest handler, or a slow request can be run twice concurrently;
    /// short enough that clients retrying after a crash are not turned away for long.
    #[must_use]
    pub fn lease(self, lease: Duration) -> Self {
        self.with(|c| c.lease = lease)
    }

    /// The largest request body buffered (larger: `413`) and response body recorded (larger:
    /// passed on, not recorded); default 1 MiB.
    #[must_use]
    pub fn max_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_body = bytes)
    }

    /// The methods guarded (default `POST` and `PATCH`); requests with others pass through.
    #[must_use]
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.with(|c| c.methods = methods.into_iter().collect())
    }

    /// The URI of the API's documentation of its idempotency policy, used as the problem
    /// `type` and in the `Link` header of errors (default: the draft).
    #[must_use]
    pub fn documentation(self, uri: impl Into<String>) -> Self {
        let uri = uri.into();
        self.with(|c| c.documentation = uri)
    }

    /// The namespace of a request's key: typically the tenant or the authenticated client, so
    /// that two clients choosing the same key do not see each other's responses (the draft's
    /// "composite key"). Default: one namespace for all.
    #[must_use]
    pub fn scope(self, scope: impl Fn(&Parts) -> String + Send + Sync + 'static) -> Self {
        self.with(|c| c.scope = Arc::new(scope))
    }

    /// How a request is fingerprinted: two requests under one key are "the same" if their
    /// fingerprints are equal. Default: [`default_fingerprint`]. Replace it to ignore fields
    /// that legitimately vary between retries (a timestamp in the body) or to include headers.
    #[must_use]
    pub fn fingerprint(
        self,
        fingerprint: impl Fn(&Parts, &[u8]) -> String + Send + Sync + 'static,
    ) -> Self {
        self.with(|c| c.fingerprint = Arc::new(fingerprint))
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`IdempotencyLayer`] wraps around an inner service.
#[derive(Clone)]
pub struct IdempotencyService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for IdempotencyService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The SHA-256, in hex, of the method, the path and query, and the body, separated by zero
/// bytes (which occur in neither the method nor the path, so distinct requests never share
/// the hashed text).
pub fn default_fingerprint(parts: &Parts, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(parts.method.as_str().as_bytes());
    hash.update([0]);
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    hash.update(target.as_bytes());
    hash.update([0]);
    hash.update(body);
    hash.finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Why the `Idempotency-Key` header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKeyHeader {
    /// The header appears more than once (the draft forbids it).
    #[error("more than one Idempotency-Key header")]
    Repeated,
    /// The value is neither a structured-field string nor a bare key.
    #[error("Idempotency-Key is not a structured-field string or a bare key")]
    Syntax,
    /// The value parsed, but is not a valid key.
    #[error("{0}")]
    Key(#[from] crate::idempotency::InvalidIdempotencyKey),
}

/// The key in `headers`: `Ok(None)` if there is none. Accepts the draft's structured-field
/// string (with escapes, parameters ignored) and a bare key.
///
/// ```
/// use converge::http::idempotency::key_from_headers;
/// use http::HeaderMap;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("idempotency-key", "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"".parse().unwrap());
/// let key = key_from_headers(&headers).unwrap().unwrap();
/// assert_eq!(key.as_str(), "8e03978e-40d5-43e8-bc93-6894a57f9324");
/// headers.insert("idempotency-key", "order-42".parse().unwrap());
/// assert_eq!(key_from_headers(&headers).unwrap().unwrap().as_str(), "order-42");
/// ```
///
/// # Errors
///
/// [`InvalidKeyHeader`] if the header is repeated, malformed, or not a valid key.
pub fn key_from_headers(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, InvalidKeyHeader> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(InvalidKeyHeader::Repeated);
    }
    let value = value.to_str().map_err(|_| InvalidKeyHeader::Syntax)?.trim();
    let key = match value.strip_prefix('"') {
        Some(quoted) => parse_sf_string(quoted)?,
        None => value.to_owned(),
    };
    Ok(Some(IdempotencyKey::parse(key)?))
}

/// The content of an RFC 8941 string whose opening quote was already consumed; what follows the
/// closing quote must be parameters (`;name=value…`), which are ignored.
fn parse_sf_string(rest: &str) -> Result<String, InvalidKeyHeader> {
    let mut out = String::new();
    let mut chars = rest.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped @ ('"' | '\\'))) => out.push(escaped),
                _ => return Err(InvalidKeyHeader::Syntax),
            },
            '"' => {
                let after = rest[index + 1..].trim_end();
                return if after.is_empty() || after.starts_with(';') {
                    Ok(out)
                } else {
                    Err(InvalidKeyHeader::Syntax)
                };
            }
            ' '..='~' => out.push(c),
            _ => return Err(InvalidKeyHeader::Syntax),
        }
    }
    Err(InvalidKeyHeader::Syntax)
}

impl<S> Service<Request<Body>> for IdempotencyService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if !self.config.methods.contains(request.method()) {
            return Box::pin(self.inner.call(request));
        }
        // The clone that was made ready is the one that must be called; keep it and leave a
        // fresh clone in its place (the usual tower pattern for services moved into futures).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(handle(self.config.clone(), inner, request))
    }
}

/// The middleware for one guarded request.
async fn handle<S>(
    config: Arc<Config>,
    mut inner: S,
    request: Request<Body>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    let key = match key_from_headers(request.headers()) {
        Ok(Some(key)) => key,
        Ok(None) if config.required => {
            return Ok(config.problem(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key is missing",
                "This operation is idempotent and requires an Idempotency-Key header.",
            ));
        }
        Ok(None) => return inner.call(request).await,
        Err(error) => {
            return Ok(config.problem(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key is invalid",
                &error.to_string(),
            ));
        }
    };
    let (mut parts, body) = request.into_parts();
    let body = match http_body_util::Limited::new(body, config.max_body)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let too_large = error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return Ok(if too_large {
                config.problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Request body too large for an idempotent request",
                    &format!(
                        "Requests with an Idempotency-Key are limited to {} bytes.",
                        config.max_body
                    ),
                )
            } else {
                config.problem(
                    StatusCode::BAD_REQUEST,
                    "Request body could not be read",
                    &error.to_string(),
                )
            });
        }
    };
    let scope = (config.scope)(&parts);
    let fingerprint = (config.fingerprint)(&parts, &body);
    let store = &config.store;
    let token = match store
        .begin(&scope, key.as_str(), &fingerprint, config.lease)
        .await
    {
        Ok(Begin::Started { token }) => token,
        Ok(Begin::InProgress { retry_after }) => {
            tracing::debug!(scope = %scope, key = %key, "idempotent request still running");
            let mut response = config.problem(
                StatusCode::CONFLICT,
                "A request is outstanding for this Idempotency-Key",
                "A request with the same Idempotency-Key for the same operation is being \
                 processed. Retry later.",
            );
            // The lease's end is only the worst case: the first request usually finishes much
            // sooner, so the hint is at most a second. `x-should-retry: true` tells a
            // retrying client (converge's `http_client` among them) that retrying this POST
            // is safe and expected.
            let hint = retry_after.min(IN_PROGRESS_RETRY_HINT);
            let seconds = hint.as_secs() + u64::from(hint.subsec_nanos() > 0);
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
            headers.insert(
                crate::http_client::SHOULD_RETRY_HEADER,
                HeaderValue::from_static("true"),
            );
            return Ok(response);
        }
        Ok(Begin::Mismatch) => {
            tracing::debug!(scope = %scope, key = %key, "idempotency key reused for another request");
            return Ok(config.problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency-Key is already used",
                "This Idempotency-Key was used for a different request. A key must not be \
                 reused across different payloads of this operation.",
            ));
        }
        Ok(Begin::Completed(outcome)) => {
            return Ok(match decode_response(&outcome.data) {
                Some(mut response) => {
                    tracing::debug!(scope = %scope, key = %key, "idempotent response replayed");
                    let headers = response.headers_mut();
                    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
                    headers.insert(RETENTION_HEADER, config.retention_value());
                    response
                }
                None => {
                    tracing::error!(scope = %scope, key = %key, "recorded response is unreadable");
                    config.unavailable("The recorded response for this key is unreadable.")
                }
            });
        }
        Err(error) => {
            tracing::error!(scope = %scope, key = %key, %error, "idempotency store failed");
            return Ok(config.unavailable("The idempotency store is unavailable."));
        }
    };

    parts.extensions.insert(key.clone());
    let request = Request::from_parts(parts, Body::from(body));
    let result = key.clone().scope(inner.call(request)).await;
    let response = match result {
        Ok(response) => response,
        Err(error) => {
            release(store.as_ref(), &scope, &key, token).await;
            return Err(error);
        }
    };
    if !recorded(response.status()) {
        tracing::debug!(scope = %scope, key = %key, status = %response.status(), "response not recorded; key released");
        release(store.as_ref(), &scope, &key, token).await;
        let mut response = response;
        response
            .headers_mut()
            .insert(RETENTION_HEADER, config.retention_value());
        return Ok(response);
    }
    let (mut head, body) = response.into_parts();
    let (body, complete) = buffer(body, config.max_body).await;
    match complete {
        Some(bytes) => {
            let encoded = encode_response(head.status, &head.headers, &bytes);
            match store
                .complete(&scope, key.as_str(), token, &encoded, config.retention)
                .await
            {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    scope = %scope, key = %key,
                    "request finished after its lease was taken over; its response was not recorded"
                ),
                Err(error) => tracing::error!(
                    scope = %scope, key = %key, %error,
                    "response not recorded; a retry after the lease runs the request again"
                ),
            }
        }
        None => {
            tracing::warn!(scope = %scope, key = %key, max_body = config.max_body, "response too large to record; key released");
            release(store.as_ref(), &scope, &key, token).await;
        }
    }
    head.headers
        .insert(RETENTION_HEADER, config.retention_value());
    Ok(Response::from_parts(head, body))
}

/// Whether a response with `status` is recorded for replay (see the module documentation).
fn recorded(status: StatusCode) -> bool {
    !(status.is_server_error()
        || matches!(status.as_u16(), 408 | 409 | 425 | 429)
        || status.is_informational())
}

async fn release(
    store: &dyn IdempotencyStore,
    scope: &str,
    key: &IdempotencyKey,
    token: LeaseToken,
) {
    if let Err(error) = store.release(scope, key.as_str(), token).await {
        tracing::warn!(scope = %scope, key = %key, %error, "idempotency key not released; retries wait for the lease");
    }
}

/// Reads `body` up to `max` bytes: the body to send on and, if it fit, its bytes. A body over
/// the cap is passed on whole (what was read, then the rest) and reported as not recorded.
async fn buffer(mut body: Body, max: usize) -> (Body, Option<Bytes>) {
    let mut buffered = BytesMut::new();
    loop {
        match body.frame().await {
            None => {
                let bytes = buffered.freeze();
                return (Body::from(bytes.clone()), Some(bytes));
            }
            Some(Ok(frame)) => {
                // Trailers are not recorded; responses with trailers are rare outside gRPC.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buffered.extend_from_slice(&data);
                if buffered.len() > max {
                    let head = futures::stream::once(futures::future::ready(Ok::<_, axum::Error>(
                        buffered.freeze(),
                    )));
                    let rest = body.into_data_stream();
                    return (
                        Body::from_stream(futures::StreamExt::chain(head, rest)),
                        None,
                    );
                }
            }
            Some(Err(error)) => {
                let head =
                    futures::stream::iter([Ok::<_, axum::Error>(buffered.freeze()), Err(error)]);
                return (Body::from_stream(head), None);
            }
        }
    }
}

/// Headers not recorded: connection-specific ones, `date` (a replay has its own) and the
/// ones this middleware sets itself.
fn is_unrecorded(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "date"
            | "content-length"
            | "idempotency-retention"
            | "idempotent-replayed"
    )
}

/// The recorded form of a response: a version byte, the status (2 bytes), the header count
/// (4 bytes), each header as name length (4), name, value length (4), value, then the body.
fn encode_response(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 256);
    out.push(1);
    out.extend_from_slice(&status.as_u16().to_be_bytes());
    let kept: Vec<_> = headers
        .iter()
        .filter(|(name, _)| !is_unrecorded(name))
        .collect();
    out.extend_from_slice(&(kept.len() as u32).to_be_bytes());
    for (name, value) in kept {
        for part in [name.as_str().as_bytes(), value.as_bytes()] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(body);
    out
}

/// The response recorded by [`encode_response`], or `None` if `data` is not one.
fn decode_response(data: &[u8]) -> Option<Response<Body>> {
    fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = data.split_at_checked(n)?;
        *data = rest;
        Some(head)
    }
    fn take_u32(data: &mut &[u8]) -> Option<usize> {
        let bytes = take(data, 4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?) as usize)
    }
    let mut data = data;
    if take(&mut data, 1)? != [1] {
        return None;
    }
    let status = u16::from_be_bytes(take(&mut data, 2)?.try_into().ok()?);
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::from_u16(status).ok()?;
    for _ in 0..take_u32(&mut data)? {
        let len = take_u32(&mut data)?;
        let name = HeaderName::from_bytes(take(&mut data, len)?).ok()?;
        let len = take_u32(&mut data)?;
        let value = HeaderValue::from_bytes(take(&mut data, len)?).ok()?;
        response.headers_mut().append(name, value);
    }
    *response.body_mut() = Body::from(Bytes::copy_from_slice(data));
    Some(response)
}

impl Config {
    fn retention_value(&self) -> HeaderValue {
        HeaderValue::from(self.retention.as_secs())
    }

    /// An RFC 9457 problem response.
    fn problem(&self, status: StatusCode, title: &str, detail: &str) -> Response<Body> {
        let body = serde_json::json!({
            "type": self.documentation,
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        let mut response = Response::new(Body::from(body.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CONTENT_LANGUAGE, HeaderValue::from_static("en"));
        if let Ok(link) =
            HeaderValue::from_str(&format!("<{}>; rel=\"describedby\"", self.documentation))
        {
            headers.insert(header::LINK, link);
        }
        headers.insert(RETENTION_HEADER, self.retention_value());
        response
    }

    fn unavailable(&self, detail: &str) -> Response<Body> {
        let mut response = self.problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Idempotency store unavailable",
            detail,
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<Option<IdempotencyKey>, InvalidKeyHeader> {
        let mut headers = HeaderMap::new();
        headers.insert(
            IDEMPOTENCY_KEY_HEADER,
            HeaderValue::from_str(value).unwrap(),
        );
        key_from_headers(&headers)
    }

    #[test]
    fn header_forms() {
        let key = |s: &str| Some(IdempotencyKey::parse(s).unwrap());
        assert_eq!(parse("\"abc-1\"").unwrap(), key("abc-1"));
        assert_eq!(parse("abc-1").unwrap(), key("abc-1"));
        assert_eq!(parse("  abc-1  ").unwrap(), key("abc-1"));
        assert_eq!(parse("\"a\\\"b\"").unwrap(), key("a\"b"));
        assert_eq!(parse("\"abc\";v=1").unwrap(), key("abc"));
        assert_eq!(parse("\"abc").unwrap_err(), InvalidKeyHeader::Syntax);
        assert_eq!(parse("\"abc\"x").unwrap_err(), InvalidKeyHeader::Syntax);
        assert_eq!(parse("\"a\\b\"").unwrap_err(), InvalidKeyHeader::Syntax);
        assert!(matches!(parse("\"a b\""), Err(InvalidKeyHeader::Key(_))));
        assert!(matches!(parse("\"\""), Err(InvalidKeyHeader::Key(_))));
        let mut headers = HeaderMap::new();
        headers.append(IDEMPOTENCY_KEY_HEADER, HeaderValue::from_static("a"));
        headers.append(IDEMPOTENCY_KEY_HEADER, HeaderValue::from_static("b"));
        assert_eq!(key_from_headers(&headers), Err(InvalidKeyHeader::Repeated));
        assert_eq!(key_from_headers(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn recorded_responses_round_trip() {
        let mut headers = HeaderMap::new();
        headers.insert("location", HeaderValue::from_static("/orders/1"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.insert(
            "date",
            HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"),
        );
        headers.insert("connection", HeaderValue::from_static("close"));
        let data = encode_response(StatusCode::CREATED, &headers, b"{\"id\":1}");
        let response = decode_response(&data).unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers().len(), 3);
        let cookies: Vec<_> = response.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(response.headers().get("date").is_none());
        assert!(decode_response(&data[..10]).is_none(), "truncated");
        assert!(decode_response(&[2, 0, 200]).is_none());
        assert!(decode_response(&[1, 0]).is_none());
    }

    #[test]
    fn what_is_recorded() {
        for status in [200, 201, 204, 301, 400, 404, 422] {
            assert!(recorded(StatusCode::from_u16(status).unwrap()), "{status}");
        }
        for status in [408, 409, 425, 429, 500, 502, 503] {
            assert!(!recorded(StatusCode::from_u16(status).unwrap()), "{status}");
        }
    }

    #[test]
    fn fingerprints_cover_method_target_and_body() {
        let parts = |method: &str, uri: &str| {
            Request::builder()
                .method(method)
                .uri(uri)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let a = default_fingerprint(&parts("POST", "/orders?x=1"), b"{}");
        assert_eq!(a.len(), 64);
        assert_eq!(a, default_fingerprint(&parts("POST", "/orders?x=1"), b"{}"));
        assert_ne!(
            a,
            default_fingerprint(&parts("PATCH", "/orders?x=1"), b"{}")
        );
        assert_ne!(a, default_fingerprint(&parts("POST", "/orders?x=2"), b"{}"));
        assert_ne!(
            a,
            default_fingerprint(&parts("POST", "/orders?x=1"), b"{ }")
        );
    }
}
