//! Which outcomes of an HTTP attempt are worth another attempt: the retry profiles and the
//! server's own say through [`SHOULD_RETRY_HEADER`].

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};

/// The response header by which a server tells its clients whether to retry, whatever their
/// profile: `x-should-retry: false` stops retries, `x-should-retry: true` asks for one (on a
/// non-2xx response, still within the deadline, attempt limit and budget). Any other value, or
/// no header, leaves the decision to the profile.
///
/// Why this name: there is no IETF standard for it, but `x-should-retry` with `true`/`false`
/// is the de-facto one, honoured by the widely used generated SDKs of several API providers
/// (OpenAI, Anthropic and other Stainless-generated clients); Stripe's `Stripe-Should-Retry`
/// has the same meaning under a vendor name. A converge service can send it to say "this
/// failure is permanent, retrying will not help" (a validation error answered with 500, a
/// 404 that will stay a 404) without every caller having to know its API.
pub const SHOULD_RETRY_HEADER: &str = "x-should-retry";

/// What the server says through [`SHOULD_RETRY_HEADER`]: `Some(false)` for `false`,
/// `Some(true)` for `true` (ASCII case and surrounding whitespace ignored), `None` otherwise.
pub fn should_retry_header(headers: &HeaderMap) -> Option<bool> {
    let value = headers.get(SHOULD_RETRY_HEADER)?.to_str().ok()?.trim();
    if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else {
        None
    }
}

/// How an attempt failed without a response, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// No connection could be made (refused, DNS, connect timeout): the request was certainly
    /// not sent, so even a non-idempotent request may be retried.
    Connect,
    /// The attempt timed out after the connection was made: the server may have done the work.
    Timeout,
    /// The connection broke while the request was sent or the response awaited (reset, closed
    /// early, protocol error): the server may have done the work.
    Transport,
    /// An error retrying cannot cure: an invalid request, too many redirects, an error raised
    /// by another middleware.
    Permanent,
}

impl FailureKind {
    /// The kind of an error returned by a [`reqwest_middleware`] stack.
    pub fn of(error: &reqwest_middleware::Error) -> Self {
        match error {
            reqwest_middleware::Error::Reqwest(error) => Self::of_reqwest(error),
            reqwest_middleware::Error::Middleware(_) => Self::Permanent,
        }
    }

    /// The kind of a [`reqwest::Error`]. A connect timeout counts as [`FailureKind::Connect`]:
    /// what matters for retrying is that nothing was sent.
    pub fn of_reqwest(error: &reqwest::Error) -> Self {
        if error.is_builder() || error.is_redirect() || error.is_decode() || error.is_status() {
            Self::Permanent
        } else if error.is_connect() {
            Self::Connect
        } else if error.is_timeout() {
            Self::Timeout
        } else if error.is_request() || error.is_body() {
            Self::Transport
        } else {
            Self::Permanent
        }
    }
}

/// The outcome of one attempt, as a classifier sees it.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The server answered.
    Response {
        /// Its status.
        status: StatusCode,
        /// Its headers (for [`SHOULD_RETRY_HEADER`], or a custom profile's own signals).
        headers: &'a HeaderMap,
    },
    /// No response arrived.
    Failure(FailureKind),
}

/// A classifier's verdict on one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again (if the deadline, the attempt limit and the budget allow).
    Retry,
    /// Return this outcome to the caller.
    Stop,
}

/// A custom classification function, see [`RetryProfile::Custom`].
pub type Classifier = Arc<dyn Fn(&Outcome<'_>) -> Decision + Send + Sync>;

/// Which outcomes are retried. Whatever the profile, a 2xx response is never retried, an
/// error of kind [`FailureKind::Permanent`] is never retried by the presets, and
/// [`SHOULD_RETRY_HEADER`] overrides the profile.
///
/// | outcome                         | `PubSub` | `Sns` | `TransientOnly` |
/// |---------------------------------|----------|-------|-----------------|
/// | 1xx                             | retry    | retry | stop            |
/// | 2xx                             | stop     | stop  | stop            |
/// | 3xx (not followed)              | retry    | stop  | stop            |
/// | 408, 429                        | retry    | retry | retry           |
/// | other 4xx                       | retry    | stop  | stop            |
/// | 500                             | retry    | retry | stop            |
/// | 502, 503, 504                   | retry    | retry | retry           |
/// | other 5xx                       | retry    | retry | stop            |
/// | connect, timeout, broken conn.  | retry    | retry | retry           |
///
/// `TransientOnly` does not retry 500: an internal error usually comes from a bug the same
/// request will hit again, and a call made inside a request or a handler should fail fast and
/// leave the long retries to a durable place (the broker). Use `Sns` or a custom profile to
/// retry it.
#[derive(Clone)]
pub enum RetryProfile {
    /// As Google Pub/Sub push: everything but a success is retried (Pub/Sub push additionally
    /// treats 102 as success; a client never sees a final 1xx, so the difference is moot).
    PubSub,
    /// As AWS SNS and Azure Service Bus: 1xx, 408, 429, 5xx and network errors.
    Sns,
    /// Only the failures that are transient by definition: network errors, 408, 429, 502, 503
    /// and 504. The default: the right choice for a call made while someone waits.
    TransientOnly,
    /// A function of the outcome (still overridden by [`SHOULD_RETRY_HEADER`]).
    Custom(Classifier),
}

impl RetryProfile {
    /// A [`RetryProfile::Custom`] from a closure.
    ///
    /// ```
    /// use converge::http_client::{Decision, Outcome, RetryProfile};
    ///
    /// // This API answers 409 while a resource it depends on is still being created.
    /// let profile = RetryProfile::custom(|outcome: &Outcome<'_>| match outcome {
    ///     Outcome::Response { status, .. } if status.as_u16() == 409 => Decision::Retry,
    ///     other => RetryProfile::TransientOnly.classify(other),
    /// });
    /// # let _ = profile;
    /// ```
    pub fn custom(f: impl Fn(&Outcome<'_>) -> Decision + Send + Sync + 'static) -> Self {
        Self::Custom(Arc::new(f))
    }

    /// The profile's own verdict, without the [`SHOULD_RETRY_HEADER`] override.
    pub fn classify(&self, outcome: &Outcome<'_>) -> Decision {
        let retry = match (self, outcome) {
            (Self::Custom(f), outcome) => return f(outcome),
            (_, Outcome::Failure(kind)) => !matches!(kind, FailureKind::Permanent),
            (_, Outcome::Response { status, .. }) if status.is_success() => false,
            (Self::PubSub, Outcome::Response { .. }) => true,
            (Self::Sns, Outcome::Response { status, .. }) => {
                status.is_informational()
                    || status.is_server_error()
                    || matches!(status.as_u16(), 408 | 429)
            }
            (Self::TransientOnly, Outcome::Response { status, .. }) => {
                matches!(status.as_u16(), 408 | 429 | 502 | 503 | 504)
            }
        };
        if retry {
            Decision::Retry
        } else {
            Decision::Stop
        }
    }

    /// The verdict that counts: a 2xx response stops, then [`SHOULD_RETRY_HEADER`] decides if
    /// present, then the profile.
    pub fn decide(&self, outcome: &Outcome<'_>) -> Decision {
        if let Outcome::Response { status, headers } = outcome {
            if status.is_success() {
                return Decision::Stop;
            }
            match should_retry_header(headers) {
                Some(true) => return Decision::Retry,
                Some(false) => return Decision::Stop,
                None => {}
            }
        }
        self.classify(outcome)
    }
}

impl fmt::Debug for RetryProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PubSub => f.write_str("PubSub"),
            Self::Sns => f.write_str("Sns"),
            Self::TransientOnly => f.write_str("TransientOnly"),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl Default for RetryProfile {
    /// [`RetryProfile::TransientOnly`].
    fn default() -> Self {
        Self::TransientOnly
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn status_decision(profile: &RetryProfile, code: u16, headers: &HeaderMap) -> Decision {
        let status = StatusCode::from_u16(code).unwrap();
        profile.decide(&Outcome::Response { status, headers })
    }

    /// Every status from 100 to 599 against the table of [`RetryProfile`], written out
    /// independently of the implementation.
    #[test]
    fn classifies_every_status_class_per_profile() {
        let none = HeaderMap::new();
        for code in 100u16..600 {
            let expected_pubsub = !(200..300).contains(&code);
            let expected_sns = (100..200).contains(&code)
                || (500..600).contains(&code)
                || code == 408
                || code == 429;
            let expected_transient = [408, 429, 502, 503, 504].contains(&code);
            for (profile, expected) in [
                (RetryProfile::PubSub, expected_pubsub),
                (RetryProfile::Sns, expected_sns),
                (RetryProfile::TransientOnly, expected_transient),
            ] {
                let want = if expected {
                    Decision::Retry
                } else {
                    Decision::Stop
                };
                assert_eq!(
                    status_decision(&profile, code, &none),
                    want,
                    "{profile:?} {code}"
                );
            }
        }
    }

    #[test]
    fn classifies_failures_per_profile() {
        for profile in [
            RetryProfile::PubSub,
            RetryProfile::Sns,
            RetryProfile::TransientOnly,
        ] {
            for kind in [
                FailureKind::Connect,
                FailureKind::Timeout,
                FailureKind::Transport,
            ] {
                assert_eq!(
                    profile.decide(&Outcome::Failure(kind)),
                    Decision::Retry,
                    "{profile:?} {kind:?}"
                );
            }
            assert_eq!(
                profile.decide(&Outcome::Failure(FailureKind::Permanent)),
                Decision::Stop,
                "{profile:?}"
            );
        }
    }

    #[test]
    fn should_retry_header_overrides_every_profile_but_not_success() {
        let mut no = HeaderMap::new();
        no.insert(SHOULD_RETRY_HEADER, HeaderValue::from_static("false"));
        let mut yes = HeaderMap::new();
        yes.insert(SHOULD_RETRY_HEADER, HeaderValue::from_static(" TRUE "));
        let mut junk = HeaderMap::new();
        junk.insert(SHOULD_RETRY_HEADER, HeaderValue::from_static("maybe"));
        let always = RetryProfile::custom(|_| Decision::Retry);
        let never = RetryProfile::custom(|_| Decision::Stop);
        for profile in [
            RetryProfile::PubSub,
            RetryProfile::Sns,
            RetryProfile::TransientOnly,
            always.clone(),
            never.clone(),
        ] {
            for code in [100, 302, 400, 404, 408, 429, 500, 503] {
                assert_eq!(
                    status_decision(&profile, code, &no),
                    Decision::Stop,
                    "{profile:?} {code}"
                );
                assert_eq!(
                    status_decision(&profile, code, &yes),
                    Decision::Retry,
                    "{profile:?} {code}"
                );
                assert_eq!(
                    status_decision(&profile, code, &junk),
                    status_decision(&profile, code, &HeaderMap::new()),
                    "{profile:?} {code}"
                );
            }
            for code in [200, 201, 204, 299] {
                assert_eq!(status_decision(&profile, code, &yes), Decision::Stop);
            }
        }
        assert_eq!(
            status_decision(&always, 404, &HeaderMap::new()),
            Decision::Retry
        );
        assert_eq!(
            status_decision(&never, 503, &HeaderMap::new()),
            Decision::Stop
        );
    }
}
