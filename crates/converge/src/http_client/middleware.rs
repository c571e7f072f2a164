//! The retry loop, as a [`reqwest_middleware::Middleware`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Extensions, HeaderMap, HeaderValue, Method};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

use super::{
    Attempts, Backoff, CallOptions, Decision, FailureKind, HttpClientError, IDEMPOTENCY_KEY_HEADER,
    Outcome, RetryBudget, RetryProfile, should_retry_header,
};
use crate::idempotency::IdempotencyKey;

/// The client-wide retry settings; [`CallOptions`] override some of them per call.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Which outcomes are retried.
    pub profile: RetryProfile,
    /// The waits between attempts.
    pub backoff: Backoff,
    /// The most a call may take, all attempts and waits included.
    pub deadline: Duration,
    /// The most attempts of one call, the first included (1 = never retry).
    pub max_attempts: u32,
    /// A timeout for each attempt (also cut to what is left of the deadline); `None` = only
    /// the deadline and the `reqwest::Client`'s own timeout.
    pub attempt_timeout: Option<Duration>,
    /// Whether a request with a non-idempotent method (POST, PATCH, …) and no
    /// `Idempotency-Key` is retried like the others. `false` (the default): only when the
    /// connection failed, that is when it certainly was not sent, or when the server answered
    /// `x-should-retry: true`; retrying it after the server may have acted risks doing the work
    /// twice.
    pub retry_non_idempotent: bool,
}

impl Default for RetryPolicy {
    /// [`RetryProfile::TransientOnly`], [`Backoff::default`], a deadline of 30 s, at most 5
    /// attempts, no per-attempt timeout, non-idempotent requests without a key not retried.
    fn default() -> Self {
        Self {
            profile: RetryProfile::default(),
            backoff: Backoff::default(),
            deadline: Duration::from_secs(30),
            max_attempts: 5,
            attempt_timeout: None,
            retry_non_idempotent: false,
        }
    }
}

/// The middleware doing the retries, for a caller that assembles its own
/// [`reqwest_middleware::ClientWithMiddleware`]; [`super::RetryClient`] wraps it ready to use.
///
/// Middlewares added after it in the stack run once per attempt, those before it once per
/// call. Each attempt is a clone of the request ([`reqwest::Request::try_clone`]); a request
/// whose body is a stream cannot be cloned and is sent once, never retried.
#[derive(Debug, Clone)]
pub struct RetryMiddleware {
    policy: RetryPolicy,
    budget: Arc<RetryBudget>,
}

impl RetryMiddleware {
    /// A middleware with `policy`, drawing retries from `budget` (share one budget between
    /// the clients calling the same dependency).
    pub fn new(policy: RetryPolicy, budget: Arc<RetryBudget>) -> Self {
        Self { policy, budget }
    }

    /// Its policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Its budget.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.budget
    }
}

/// Why a retryable outcome was returned without another attempt.
#[derive(Debug, Clone, Copy)]
enum GiveUp {
    Attempts,
    Deadline,
    Budget,
    NotReplayable,
    NotIdempotent,
}

impl GiveUp {
    fn as_str(self) -> &'static str {
        match self {
            Self::Attempts => "max_attempts",
            Self::Deadline => "deadline",
            Self::Budget => "budget",
            Self::NotReplayable => "body_not_replayable",
            Self::NotIdempotent => "not_idempotent",
        }
    }
}

#[async_trait::async_trait]
impl Middleware for RetryMiddleware {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let options = extensions.get::<CallOptions>().cloned().unwrap_or_default();
        let profile = options.profile.as_ref().unwrap_or(&self.policy.profile);
        let backoff = options.backoff.as_ref().unwrap_or(&self.policy.backoff);
        let max_attempts = options
            .max_attempts
            .unwrap_or(self.policy.max_attempts)
            .max(1);
        let mut limit = options.deadline.unwrap_or(self.policy.deadline);
        if let Some(max) = backoff.schedule().max_retry_duration {
            limit = limit.min(max);
        }
        let start = Instant::now();
        let ends = start + limit;
        if limit.is_zero() {
            return Err(reqwest_middleware::Error::middleware(
                HttpClientError::DeadlineExceeded { deadline: limit },
            ));
        }

        let has_key = set_idempotency_key(&mut request, options.idempotency_key.clone());
        let replay_safe =
            has_key || is_idempotent(request.method()) || self.policy.retry_non_idempotent;
        let method = request.method().clone();
        let host = request.url().host_str().unwrap_or("").to_string();
        let path = request.url().path().to_string();
        let base_timeout = match (request.timeout().copied(), self.policy.attempt_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };

        self.budget.record_call();
        let mut attempt: u32 = 1;
        loop {
            let spare = request.try_clone();
            let remaining = ends.saturating_duration_since(Instant::now());
            // Never let an attempt run past the deadline. A retry is only scheduled to start
            // before it; the 1 ms floor covers one that wakes up just at it.
            *request.timeout_mut() = Some(
                base_timeout
                    .map_or(remaining, |t| t.min(remaining))
                    .max(Duration::from_millis(1)),
            );
            let mut result = next.clone().run(request, extensions).await;
            let outcome = match &result {
                Ok(response) => Outcome::Response {
                    status: response.status(),
                    headers: response.headers(),
                },
                Err(error) => Outcome::Failure(FailureKind::of(error)),
            };
            let decision = profile.decide(&outcome);
            match &result {
                Ok(response) => tracing::debug!(
                    method = %method, host = %host, path = %path, attempt,
                    status = response.status().as_u16(), retry = decision == Decision::Retry,
                    "http attempt answered"
                ),
                Err(error) => tracing::debug!(
                    method = %method, host = %host, path = %path, attempt,
                    error = %error, retry = decision == Decision::Retry,
                    "http attempt failed"
                ),
            }

            let verdict = if decision == Decision::Stop {
                Ok(None)
            } else if attempt >= max_attempts {
                Err(GiveUp::Attempts)
            } else if !replay_safe && !sent_nothing_or_vouched(&outcome) {
                Err(GiveUp::NotIdempotent)
            } else {
                match spare {
                    None => Err(GiveUp::NotReplayable),
                    Some(spare) => {
                        let mut delay = backoff.delay(attempt, rand::random::<f64>());
                        if let Ok(response) = &result
                            && let Some(wait) = retry_after(response.headers(), SystemTime::now())
                        {
                            delay = delay.max(wait);
                        }
                        let remaining = ends.saturating_duration_since(Instant::now());
                        if delay >= remaining {
                            Err(GiveUp::Deadline)
                        } else if !self.budget.try_withdraw() {
                            Err(GiveUp::Budget)
                        } else {
                            Ok(Some((spare, delay)))
                        }
                    }
                }
            };

            match verdict {
                Ok(Some((spare, delay))) => {
                    tracing::info!(
                        method = %method, host = %host, path = %path, attempt,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        "retrying http request"
                    );
                    drop(result);
                    tokio::time::sleep(delay).await;
                    request = spare;
                    attempt += 1;
                }
                Ok(None) | Err(_) => {
                    if let Err(reason) = verdict {
                        tracing::warn!(
                            method = %method, host = %host, path = %path, attempt,
                            reason = reason.as_str(),
                            "giving up on retryable http request"
                        );
                    }
                    if let Ok(response) = &mut result {
                        response.extensions_mut().insert(Attempts {
                            count: attempt,
                            elapsed: start.elapsed(),
                        });
                    }
                    return result;
                }
            }
        }
    }
}

/// Whether retrying a non-idempotent request without a key is safe after this outcome: the
/// connection failed (nothing was sent), or the server itself asked for a retry with
/// `x-should-retry: true` (it knows whether it acted).
fn sent_nothing_or_vouched(outcome: &Outcome<'_>) -> bool {
    match outcome {
        Outcome::Failure(kind) => *kind == FailureKind::Connect,
        Outcome::Response { headers, .. } => should_retry_header(headers) == Some(true),
    }
}

/// Sets `Idempotency-Key` unless the request has one: the call's explicit key, else the key of
/// the handler running now. Returns whether the request carries a key.
fn set_idempotency_key(request: &mut Request, explicit: Option<IdempotencyKey>) -> bool {
    if request.headers().contains_key(IDEMPOTENCY_KEY_HEADER) {
        return true;
    }
    let Some(key) = explicit.or_else(IdempotencyKey::current) else {
        return false;
    };
    match HeaderValue::from_str(key.as_str()) {
        Ok(value) => {
            request.headers_mut().insert(IDEMPOTENCY_KEY_HEADER, value);
            true
        }
        // Unreachable: a key is visible ASCII, a valid header value.
        Err(_) => false,
    }
}

/// Whether repeating a request with this method has the effect of sending it once (RFC 9110
/// section 9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// How long `Retry-After` asks to wait, read at `now`: delay-seconds or an HTTP-date (a date
/// in the past means no wait). `None` without the header or with an unreadable value.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use converge::http_client::retry_after;
/// use http::{HeaderMap, HeaderValue};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", HeaderValue::from_static("120"));
/// assert_eq!(retry_after(&headers, SystemTime::now()), Some(Duration::from_secs(120)));
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long values saturate rather than fail: "wait longer than any deadline".
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_str(value).unwrap(),
        );
        headers
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(retry_after(&headers("0"), now), Some(Duration::ZERO));
        assert_eq!(
            retry_after(&headers(" 7 "), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&headers("99999999999999999999999"), now),
            Some(Duration::from_secs(u64::MAX))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            retry_after(&headers(&later), now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(retry_after(&headers(&earlier), now), Some(Duration::ZERO));
        for bad in ["-1", "1.5", "soon", ""] {
            assert_eq!(retry_after(&headers(bad), now), None, "{bad:?}");
        }
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn idempotent_methods() {
        for m in [Method::GET, Method::PUT, Method::DELETE, Method::HEAD] {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
        }
    }
}
