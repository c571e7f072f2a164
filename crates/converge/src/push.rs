//! Receiving push deliveries in an axum service: verify, decode, answer.
//!
//! A push subscription makes the broker POST each message to an HTTP endpoint and settle it by
//! the answer: a success status acknowledges, anything else is retried on the subscription's
//! schedule. Anyone who can reach the endpoint can POST to it too, so a receiver must check
//! that a request really comes from the broker before acting on it. This module does the three
//! things every receiver repeats:
//!
//! - **verify** ([`PushVerifier`]): the OIDC-style JWT in `Authorization: Bearer` (ES256, keys
//!   from the broker's JWK Set, `iss`, `aud`, `exp` and optionally `email` checked), or the
//!   Standard Webhooks signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`,
//!   HMAC-SHA256 with a `whsec_` secret, compared in constant time, timestamps within 5
//!   minutes), or nothing (a private network, tests);
//! - **decode** ([`PushMessage`], an axum extractor): the wrapped JSON envelope
//!   (`{"message": {...}, "subscription": "..."}`) or an unwrapped delivery (raw body, metadata
//!   in `x-goog-pubsub-*` headers) into the SDK's [`IncomingMessage`];
//! - **answer** ([`PushResponse`]): the handler's verdict as the status the broker understands
//!   (`204` acknowledges; `500` retries on the schedule; `429`/`503` with `Retry-After` also pause
//!   the subscription).
//!
//! A request that fails verification is refused with `401` (no or bad credentials) or `403`
//! (valid credentials for someone else: another audience, another account) and a reason in the
//! body; the broker treats it as a failed delivery and retries, so a receiver deployed with the
//! wrong key loses nothing.
//!
//! ```no_run
//! use axum::{Extension, Router, routing::post};
//! use converge::push::{PushMessage, PushResponse, PushVerifier};
//!
//! async fn on_push(push: PushMessage) -> PushResponse {
//!     let result: Result<(), std::io::Error> = {
//!         // Do the work with push.message.data, push.message.attributes...
//!         Ok(())
//!     };
//!     PushResponse::from_result(result)
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let verifier = PushVerifier::jwt(
//!     "http://converge:8085/converge/push/jwks.json",
//!     "https://orders.example/push",
//! )?;
//! let app: Router = Router::new()
//!     .route("/push", post(on_push))
//!     .layer(Extension(verifier));
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::Sha256;
use tokio::sync::Mutex;

use crate::transport::{Disposition, IncomingMessage};

/// Issuers accepted in push tokens: Google's, which converge also uses, so one receiver works
/// with both.
pub const ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];

/// How far a webhook timestamp may be from the receiver's clock, either way (Standard Webhooks'
/// recommendation). Older requests are refused as possible replays.
pub const WEBHOOK_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// How long a fetched JWK Set is used before it is fetched again.
pub const JWKS_TTL: Duration = Duration::from_secs(5 * 60);

/// A token naming a key that is not in the cached set refetches the set, but not more often
/// than this, so garbage tokens cannot make the receiver hammer the broker.
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);

/// The largest body read: a 10 MB message, base64-encoded in the envelope, plus attributes.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Header of the message id in an unwrapped delivery with metadata.
pub const HEADER_MESSAGE_ID: &str = "x-goog-pubsub-message-id";
/// Header of the publish time (RFC 3339) in an unwrapped delivery with metadata.
pub const HEADER_PUBLISH_TIME: &str = "x-goog-pubsub-publish-time";
/// Header of the subscription's full name in an unwrapped delivery with metadata.
pub const HEADER_SUBSCRIPTION: &str = "x-goog-pubsub-subscription-name";
/// Header of the ordering key in an unwrapped delivery with metadata.
pub const HEADER_ORDERING_KEY: &str = "x-goog-pubsub-ordering-key";
/// Standard Webhooks: the message id.
pub const HEADER_WEBHOOK_ID: &str = "webhook-id";
/// Standard Webhooks: unix seconds when the request was signed.
pub const HEADER_WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// Standard Webhooks: `v1,<base64 signature>`, possibly several separated by spaces.
pub const HEADER_WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// Why a push request was refused, and the status it is refused with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PushRejection {
    /// No credentials, or credentials that do not verify: `401`.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Valid credentials that are not for this receiver (audience, account): `403`.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The body is no push delivery: `400`.
    #[error("bad push request: {0}")]
    BadRequest(String),
    /// The keys to verify with cannot be fetched right now: `503`, so the broker retries.
    #[error("cannot verify now: {0}")]
    Unavailable(String),
    /// The router has no [`PushVerifier`] extension: `500`. A configuration mistake, reported
    /// rather than accepting unverified requests.
    #[error("no PushVerifier configured: add .layer(Extension(PushVerifier::...))")]
    NotConfigured,
}

impl PushRejection {
    /// The status the request is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotConfigured => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for PushRejection {
    fn into_response(self) -> Response {
        tracing::warn!(status = self.status().as_u16(), reason = %self, "push request rejected");
        let mut response = (self.status(), self.to_string()).into_response();
        if matches!(self, Self::Unauthorized(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Why a verifier cannot be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PushConfigError {
    /// The webhook secret is not `whsec_` followed by base64 of 24 to 64 bytes.
    #[error("the webhook secret is not a whsec_ secret of 24 to 64 bytes")]
    BadSecret,
    /// The HTTP client for the JWK Set cannot be built.
    #[error("cannot build the JWKS HTTP client: {0}")]
    HttpClient(String),
}

/// How push requests are verified. Put one in the router with `.layer(Extension(verifier))`;
/// [`PushMessage`] finds it there. Cheap to clone: clones share the JWK Set cache.
#[derive(Clone)]
pub struct PushVerifier {
    kind: Arc<Kind>,
}

/// The verification methods.
enum Kind {
    None,
    Jwt(JwtVerifier),
    Webhook(WebhookKey),
}

impl fmt::Debug for PushVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret never reaches a log.
        match self.kind.as_ref() {
            Kind::None => f.write_str("PushVerifier::None"),
            Kind::Jwt(jwt) => f
                .debug_struct("PushVerifier::Jwt")
                .field("jwks_url", &jwt.jwks_url)
                .field("audience", &jwt.audience)
                .field("email", &jwt.email)
                .finish(),
            Kind::Webhook(_) => f.write_str("PushVerifier::Webhook(<redacted>)"),
        }
    }
}

impl PushVerifier {
    /// Accepts every request unverified: for a receiver only the broker can reach, and tests.
    pub fn none() -> Self {
        Self {
            kind: Arc::new(Kind::None),
        }
    }

    /// Verifies the `Authorization: Bearer` JWT: signed ES256 by a key of the JWK Set at
    /// `jwks_url` (converge serves it at `/converge/push/jwks.json`), issued by Google's issuer
    /// name, for `audience` (the subscription's `oidc_token.audience`, or its push endpoint URL
    /// when that is empty), not expired. The set is fetched on first use and cached.
    pub fn jwt(
        jwks_url: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, PushConfigError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| PushConfigError::HttpClient(e.to_string()))?;
        Ok(Self {
            kind: Arc::new(Kind::Jwt(JwtVerifier {
                jwks_url: jwks_url.into(),
                audience: audience.into(),
                email: None,
                http,
                cache: Mutex::new(None),
            })),
        })
    }

    /// Also requires the token's `email` claim (the subscription's
    /// `oidc_token.service_account_email`) to be `email`, and verified. No effect on other
    /// verifiers.
    #[must_use]
    pub fn with_email(self, email: impl Into<String>) -> Self {
        match self.kind.as_ref() {
            // A new verifier rather than a change in place: clones already handed out keep
            // verifying as they were configured.
            Kind::Jwt(jwt) => Self {
                kind: Arc::new(Kind::Jwt(JwtVerifier {
                    jwks_url: jwt.jwks_url.clone(),
                    audience: jwt.audience.clone(),
                    email: Some(email.into()),
                    http: jwt.http.clone(),
                    cache: Mutex::new(None),
                })),
            },
            Kind::None | Kind::Webhook(_) => self,
        }
    }

    /// Verifies Standard Webhooks signatures made with `secret` (`whsec_…`, as the broker
    /// returned it when the subscription was created with `converge-webhook-secret: generate`).
    pub fn webhook(secret: &str) -> Result<Self, PushConfigError> {
        Ok(Self {
            kind: Arc::new(Kind::Webhook(WebhookKey::parse(secret)?)),
        })
    }

    /// Checks one request: its headers and exact body bytes.
    pub async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), PushRejection> {
        match self.kind.as_ref() {
            Kind::None => Ok(()),
            Kind::Jwt(jwt) => jwt.verify(headers).await,
            Kind::Webhook(key) => key.verify(headers, body, SystemTime::now()),
        }
    }
}

/// The claims a push token is checked for.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
}

/// A fetched JWK Set.
struct CachedSet {
    set: JwkSet,
    fetched: Instant,
}

/// JWT verification with a cached JWK Set.
struct JwtVerifier {
    jwks_url: String,
    audience: String,
    email: Option<String>,
    http: reqwest::Client,
    cache: Mutex<Option<CachedSet>>,
}

impl JwtVerifier {
    async fn verify(&self, headers: &HeaderMap) -> Result<(), PushRejection> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| PushRejection::Unauthorized("no bearer token".into()))?;
        let jwt_header = jsonwebtoken::decode_header(token)
            .map_err(|e| PushRejection::Unauthorized(format!("malformed token: {e}")))?;
        if jwt_header.alg != Algorithm::ES256 {
            return Err(PushRejection::Unauthorized(format!(
                "token algorithm {:?}, expected ES256",
                jwt_header.alg
            )));
        }
        let kid = jwt_header
            .kid
            .ok_or_else(|| PushRejection::Unauthorized("token has no kid".into()))?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&ISSUERS);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidAudience => {
                    PushRejection::Forbidden("token is for another audience".into())
                }
                ErrorKind::InvalidIssuer => {
                    PushRejection::Forbidden("token from an unknown issuer".into())
                }
                ErrorKind::ExpiredSignature => PushRejection::Unauthorized("token expired".into()),
                _ => PushRejection::Unauthorized(format!("token does not verify: {e}")),
            }
        })?;
        if let Some(expected) = &self.email {
            let claims = data.claims;
            if claims.email.as_deref() != Some(expected.as_str()) {
                return Err(PushRejection::Forbidden(
                    "token is for another service account".into(),
                ));
            }
            if claims.email_verified != Some(true) {
                return Err(PushRejection::Forbidden(
                    "token email is not verified".into(),
                ));
            }
        }
        Ok(())
    }

    /// The decoding key `kid`, from the cache or a fresh fetch.
    async fn key(&self, kid: &str) -> Result<DecodingKey, PushRejection> {
        let mut cache = self.cache.lock().await;
        let (stale, may_refetch) = match cache.as_ref() {
            None => (true, true),
            Some(cached) => (
                cached.fetched.elapsed() > JWKS_TTL,
                cached.fetched.elapsed() > JWKS_MIN_REFETCH,
            ),
        };
        let known = cache.as_ref().is_some_and(|c| c.set.find(kid).is_some());
        if stale || (!known && may_refetch) {
            match self.fetch().await {
                Ok(set) => {
                    *cache = Some(CachedSet {
                        set,
                        fetched: Instant::now(),
                    });
                }
                // A stale set is better than none while the broker is unreachable.
                Err(e) if cache.is_some() && known => {
                    tracing::warn!(url = %self.jwks_url, error = %e, "cannot refresh the push jwks; using the cached one");
                }
                Err(e) => return Err(e),
            }
        }
        let jwk = cache
            .as_ref()
            .and_then(|c| c.set.find(kid))
            .ok_or_else(|| PushRejection::Unauthorized(format!("unknown signing key {kid:?}")))?;
        DecodingKey::from_jwk(jwk)
            .map_err(|e| PushRejection::Unavailable(format!("unusable key {kid:?}: {e}")))
    }

    /// Fetches the JWK Set.
    async fn fetch(&self) -> Result<JwkSet, PushRejection> {
        let unavailable =
            |e: reqwest::Error| PushRejection::Unavailable(format!("GET {}: {e}", self.jwks_url));
        let set = self
            .http
            .get(&self.jwks_url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json::<JwkSet>()
            .await
            .map_err(unavailable)?;
        tracing::debug!(url = %self.jwks_url, keys = set.keys.len(), "push jwks fetched");
        Ok(set)
    }
}

/// A Standard Webhooks secret's key bytes.
struct WebhookKey(Vec<u8>);

impl WebhookKey {
    fn parse(secret: &str) -> Result<Self, PushConfigError> {
        let encoded = secret
            .strip_prefix("whsec_")
            .ok_or(PushConfigError::BadSecret)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| PushConfigError::BadSecret)?;
        if !(24..=64).contains(&key.len()) {
            return Err(PushConfigError::BadSecret);
        }
        Ok(Self(key))
    }

    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), PushRejection> {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| PushRejection::Unauthorized(format!("no {name} header")))
        };
        let id = get(HEADER_WEBHOOK_ID)?;
        let timestamp_text = get(HEADER_WEBHOOK_TIMESTAMP)?;
        let signatures = get(HEADER_WEBHOOK_SIGNATURE)?;
        let timestamp: u64 = timestamp_text
            .parse()
            .map_err(|_| PushRejection::Unauthorized("malformed webhook-timestamp".into()))?;
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if now.abs_diff(timestamp) > WEBHOOK_TOLERANCE.as_secs() {
            return Err(PushRejection::Unauthorized(
                "webhook-timestamp outside the tolerance".into(),
            ));
        }
        for candidate in signatures.split(' ') {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                continue;
            };
            let Ok(signature) = STANDARD.decode(encoded) else {
                continue;
            };
            let mut mac =
                Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp_text.as_bytes());
            mac.update(b".");
            mac.update(body);
            // verify_slice compares in constant time.
            if mac.verify_slice(&signature).is_ok() {
                return Ok(());
            }
        }
        Err(PushRejection::Unauthorized(
            "webhook-signature does not match".into(),
        ))
    }
}

/// One verified push delivery: the message and the subscription it came from.
///
/// An axum extractor (it consumes the body, so it comes last among a handler's arguments). It
/// reads the [`PushVerifier`] from the request's extensions, verifies the request, and decodes
/// either form the broker sends: the wrapped JSON envelope, or an unwrapped body with its
/// metadata in `x-goog-pubsub-*` headers (then every header that is not a standard HTTP or
/// authentication header is taken as an attribute, as the broker writes attributes as headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    /// The subscription's full name (empty for an unwrapped delivery without metadata).
    pub subscription: String,
    /// The message.
    pub message: IncomingMessage,
}

impl<S> FromRequest<S> for PushMessage
where
    S: Send + Sync,
{
    type Rejection = PushRejection;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let verifier = request
            .extensions()
            .get::<PushVerifier>()
            .cloned()
            .ok_or(PushRejection::NotConfigured)?;
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|e| PushRejection::BadRequest(format!("cannot read the body: {e}")))?;
        verifier.verify(&parts.headers, &body).await?;
        decode(&parts.headers, body)
    }
}

/// The wrapped body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    message: WrappedMessage,
    #[serde(default)]
    subscription: String,
    #[serde(default)]
    delivery_attempt: Option<u32>,
}

/// The message of the wrapped body. The broker sends both spellings of the id and the time
/// (`messageId` and `message_id`); other senders may send either, so both are read.
#[derive(Deserialize)]
struct WrappedMessage {
    #[serde(default)]
    data: String,
    #[serde(default)]
    attributes: HashMap<String, String>,
    #[serde(default, rename = "messageId")]
    message_id_camel: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default, rename = "publishTime")]
    publish_time_camel: Option<String>,
    #[serde(default)]
    publish_time: Option<String>,
    #[serde(default, rename = "orderingKey")]
    ordering_key_camel: Option<String>,
    #[serde(default)]
    ordering_key: Option<String>,
}

/// Decodes a verified delivery.
fn decode(headers: &HeaderMap, body: Bytes) -> Result<PushMessage, PushRejection> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(message_id) = text(HEADER_MESSAGE_ID) {
        return Ok(unwrapped(headers, body, message_id));
    }
    // The broker marks the envelope as JSON and sends raw data without a content type; a
    // signed raw delivery still names its message in `webhook-id`.
    let json =
        text(header::CONTENT_TYPE.as_str()).is_some_and(|ct| ct.starts_with("application/json"));
    if !json && let Some(id) = text(HEADER_WEBHOOK_ID) {
        return Ok(unwrapped(headers, body, id));
    }
    let envelope = serde_json::from_slice::<Envelope>(&body)
        .map_err(|e| PushRejection::BadRequest(format!("not a push envelope: {e}")))?;
    let m = envelope.message;
    let data = STANDARD
        .decode(m.data.as_bytes())
        .map_err(|_| PushRejection::BadRequest("message.data is not base64".into()))?;
    Ok(PushMessage {
        subscription: envelope.subscription,
        message: IncomingMessage {
            message_id: m.message_id_camel.or(m.message_id).unwrap_or_default(),
            data: Bytes::from(data),
            attributes: m.attributes,
            ordering_key: m.ordering_key_camel.or(m.ordering_key).unwrap_or_default(),
            publish_time: parse_time(&m.publish_time_camel.or(m.publish_time).unwrap_or_default()),
            delivery_attempt: envelope.delivery_attempt,
        },
    })
}

/// Headers that are transport or authentication, never message attributes.
const NOT_ATTRIBUTES: &[&str] = &[
    "accept",
    "accept-encoding",
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "host",
    "user-agent",
    "transfer-encoding",
    "te",
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    HEADER_WEBHOOK_ID,
    HEADER_WEBHOOK_TIMESTAMP,
    HEADER_WEBHOOK_SIGNATURE,
];

/// An unwrapped delivery: the body is the data.
fn unwrapped(headers: &HeaderMap, body: Bytes, message_id: String) -> PushMessage {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let attributes = headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !name.starts_with("x-goog-pubsub-") && !NOT_ATTRIBUTES.contains(&name)
        })
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    PushMessage {
        subscription: text(HEADER_SUBSCRIPTION),
        message: IncomingMessage {
            message_id,
            data: body,
            attributes,
            ordering_key: text(HEADER_ORDERING_KEY),
            publish_time: parse_time(&text(HEADER_PUBLISH_TIME)),
            delivery_attempt: None,
        },
    }
}

/// An RFC 3339 time, or the epoch when absent or unreadable (the time is informative; refusing
/// the delivery over it would only make the broker retry it forever).
fn parse_time(text: &str) -> SystemTime {
    humantime::parse_rfc3339_weak(text).unwrap_or(UNIX_EPOCH)
}

/// The answer to a push request, in the terms the broker settles by.
///
/// `Ack` is `204` (acknowledged). `Retry` is `500`: the message comes back on the subscription's
/// retry schedule (dead-lettered after `max_delivery_attempts`). `RetryAfter` is `503` with
/// `Retry-After`, and `TooManyRequests` is `429` (with `Retry-After` when given): converge then
/// pauses the whole subscription that long, which is how a receiver sheds load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResponse {
    /// Processed: acknowledge.
    Ack,
    /// Not processed: redeliver on the retry schedule.
    Retry,
    /// Not processed; the receiver is unavailable for this long: `503` with `Retry-After`.
    RetryAfter(Duration),
    /// Not processed; the receiver is overloaded: `429`, with `Retry-After` when given.
    TooManyRequests(Option<Duration>),
}

impl PushResponse {
    /// `Ok` acknowledges; `Err` is logged and retried.
    pub fn from_result<E: fmt::Display>(result: Result<(), E>) -> Self {
        match result {
            Ok(()) => Self::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "push handler failed; the message will be redelivered");
                Self::Retry
            }
        }
    }

    /// The status code sent.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Ack => StatusCode::NO_CONTENT,
            Self::Retry => StatusCode::INTERNAL_SERVER_ERROR,
            Self::RetryAfter(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl From<Disposition> for PushResponse {
    fn from(disposition: Disposition) -> Self {
        match disposition {
            Disposition::Ack => Self::Ack,
            Disposition::Nack => Self::Retry,
        }
    }
}

impl IntoResponse for PushResponse {
    fn into_response(self) -> Response {
        let mut response = self.status().into_response();
        let delay = match self {
            Self::RetryAfter(delay) | Self::TooManyRequests(Some(delay)) => Some(delay),
            _ => None,
        };
        if let Some(delay) = delay {
            // Whole seconds, rounded up: zero would mean "retry at once".
            let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks specification.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: u64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn spec_headers(signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_WEBHOOK_ID, HeaderValue::from_static(SPEC_ID));
        headers.insert(HEADER_WEBHOOK_TIMESTAMP, HeaderValue::from(SPEC_TIMESTAMP));
        headers.insert(
            HEADER_WEBHOOK_SIGNATURE,
            HeaderValue::from_str(signature).unwrap(),
        );
        headers
    }

    #[test]
    fn the_specification_test_vector_verifies_and_tampering_does_not() {
        let key = WebhookKey::parse(SPEC_SECRET).unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(SPEC_TIMESTAMP);
        key.verify(&spec_headers(SPEC_SIGNATURE), SPEC_BODY, at)
            .expect("the spec's signature verifies");
        let several = format!("v1,bm90IGl0 {SPEC_SIGNATURE}");
        key.verify(&spec_headers(&several), SPEC_BODY, at)
            .expect("any of several signatures may match");
        assert!(matches!(
            key.verify(&spec_headers(SPEC_SIGNATURE), b"{}", at),
            Err(PushRejection::Unauthorized(_))
        ));
        let late = at + WEBHOOK_TOLERANCE + Duration::from_secs(1);
        assert!(matches!(
            key.verify(&spec_headers(SPEC_SIGNATURE), SPEC_BODY, late),
            Err(PushRejection::Unauthorized(reason)) if reason.contains("tolerance")
        ));
        assert!(WebhookKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(WebhookKey::parse("whsec_c2hvcnQ=").is_err());
    }

    #[test]
    fn responses_map_to_the_statuses_the_broker_settles_by() {
        assert_eq!(PushResponse::Ack.into_response().status(), 204);
        assert_eq!(PushResponse::from(Disposition::Nack).status(), 500);
        let paused = PushResponse::RetryAfter(Duration::from_millis(1500)).into_response();
        assert_eq!(paused.status(), 503);
        assert_eq!(paused.headers()[header::RETRY_AFTER], "2");
        let throttled = PushResponse::TooManyRequests(None).into_response();
        assert_eq!(throttled.status(), 429);
        assert!(throttled.headers().get(header::RETRY_AFTER).is_none());
        assert_eq!(
            PushResponse::from_result(Err::<(), _>("boom")),
            PushResponse::Retry
        );
    }

    #[test]
    fn both_spellings_of_the_envelope_decode() {
        let body = br#"{"message":{"data":"aGVsbG8=","attributes":{"k":"v"},"message_id":"7","messageId":"7",
            "publish_time":"2021-02-26T19:13:55.749Z"},"subscription":"projects/p/subscriptions/s",
            "deliveryAttempt":2}"#;
        let push = decode(&HeaderMap::new(), Bytes::from_static(body)).unwrap();
        assert_eq!(push.subscription, "projects/p/subscriptions/s");
        assert_eq!(push.message.message_id, "7");
        assert_eq!(push.message.data, Bytes::from_static(b"hello"));
        assert_eq!(push.message.attributes["k"], "v");
        assert_eq!(push.message.delivery_attempt, Some(2));
        assert!(push.message.publish_time > UNIX_EPOCH);
        assert!(matches!(
            decode(&HeaderMap::new(), Bytes::from_static(b"nope")),
            Err(PushRejection::BadRequest(_))
        ));
    }
}
