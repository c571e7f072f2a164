//! A retrying HTTP client for the calls a service makes to others.
//!
//! Retrying is only safe and useful when it is done with care, and doing it with care in every
//! call site is where it goes wrong; [`RetryClient`] does it once:
//!
//! - **What is retried** is a [`RetryProfile`]: `PubSub` (everything but a success, as Google
//!   Pub/Sub push does), `Sns` (1xx, 408, 429, 5xx and network errors, as SNS and Azure Service
//!   Bus do), `TransientOnly` (network errors, 408, 429, 502, 503, 504: the default) or a
//!   custom function. The server always has the last word through the response header
//!   [`SHOULD_RETRY_HEADER`] (`x-should-retry: false` stops retries whatever the profile).
//! - **When** is a [`Backoff`]: the broker's schedules (`pubsub`, `sns`, from
//!   [`converge_core::retry`]) or a short exponential one, with the first retry immediate and
//!   full jitter afterwards. A `Retry-After` header (seconds or HTTP-date) is waited for at
//!   least.
//! - **How long** is a per-call deadline (default 30 s) covering every attempt and wait, an
//!   attempt limit, and a [`RetryBudget`] shared by the client's calls, so that a caller never
//!   retries longer than it can wait and a failing dependency is not buried under retries. A
//!   wait that would end past the deadline is not started: the last response or error is
//!   returned at once.
//! - **Safely**: the key of the event handler running now ([`IdempotencyKey::current`]) or a
//!   key given per call is sent as the `Idempotency-Key` header, the same on every attempt, so
//!   the server can recognise a repeat. A request with a non-idempotent method (POST, PATCH)
//!   and no key is retried only when it certainly was not sent (connection failed) or the
//!   server asks for it (`x-should-retry: true`), unless
//!   [`RetryClientBuilder::retry_non_idempotent`] says otherwise.
//!
//! Retrying from inside a call only hides short glitches; a failure that lasts must travel up to
//! a durable place that retries for days (the broker redelivering the event). Keep deadlines
//! short inside handlers and let the handler fail.
//!
//! Each attempt is logged at `debug` (method, host, path, attempt, status or error), each retry
//! at `info` with its delay, and giving up on a retryable outcome at `warn` with the reason.
//! Per-attempt middlewares (such as an outbound request log) are added with
//! [`RetryClientBuilder::with_per_attempt`].
//!
//! ```no_run
//! use std::time::Duration;
//! use converge::http_client::{Backoff, CallOptions, RetryClient, RetryProfile};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = RetryClient::builder()
//!     .profile(RetryProfile::Sns)
//!     .backoff(Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2)))
//!     .deadline(Duration::from_secs(10))
//!     .build();
//! let response = client
//!     .post("http://mail.internal/send")
//!     .json(&serde_json::json!({ "to": "ada@example.com" }))
//!     .with_extension(CallOptions::new().deadline(Duration::from_secs(3)))
//!     .send()
//!     .await?;
//! println!("{} after {:?}", response.status(), response.extensions().get::<converge::http_client::Attempts>());
//! # Ok(()) }
//! ```

mod backoff;
mod budget;
mod classify;
mod middleware;

use std::sync::Arc;
use std::time::Duration;

use reqwest::{IntoUrl, Method};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, RequestBuilder};

pub use backoff::Backoff;
pub use budget::RetryBudget;
pub use classify::{
    Classifier, Decision, FailureKind, Outcome, RetryProfile, SHOULD_RETRY_HEADER,
    should_retry_header,
};
pub use middleware::{RetryMiddleware, RetryPolicy, retry_after};

use crate::idempotency::IdempotencyKey;

/// The header carrying the idempotency key of a call (the IETF draft
/// "The Idempotency-Key HTTP Header Field", as Stripe and others use it).
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// Errors raised by the retry layer itself; they reach the caller inside
/// [`reqwest_middleware::Error::Middleware`] (see [`HttpClientError::find`]). Errors of the
/// attempts themselves are returned as they are.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HttpClientError {
    /// The call had no time at all: its deadline was zero.
    #[error("http call deadline of {deadline:?} left no time for an attempt")]
    DeadlineExceeded {
        /// The deadline the call had.
        deadline: Duration,
    },
}

impl HttpClientError {
    /// The retry layer's error inside an error of the middleware stack, if it is one.
    pub fn find(error: &reqwest_middleware::Error) -> Option<&HttpClientError> {
        match error {
            reqwest_middleware::Error::Middleware(inner) => inner.downcast_ref(),
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }
}

/// Put in the extensions of a response by the retry layer: how many attempts the call took,
/// so callers can log or measure it (`response.extensions().get::<Attempts>()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts {
    /// Attempts made, the first included.
    pub count: u32,
    /// Time from the first attempt to this response.
    pub elapsed: Duration,
}

/// Settings for one call, overriding the client's; attach with
/// [`RequestBuilder::with_extension`].
///
/// ```no_run
/// use std::time::Duration;
/// use converge::http_client::{CallOptions, RetryClient};
/// use converge::idempotency::IdempotencyKey;
///
/// # async fn run(client: RetryClient) -> Result<(), Box<dyn std::error::Error>> {
/// let key: IdempotencyKey = "order-42-payment".parse()?;
/// client
///     .post("http://payments.internal/charges")
///     .with_extension(CallOptions::new().idempotency_key(key).deadline(Duration::from_secs(5)))
///     .send()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    deadline: Option<Duration>,
    max_attempts: Option<u32>,
    profile: Option<RetryProfile>,
    backoff: Option<Backoff>,
    idempotency_key: Option<IdempotencyKey>,
}

impl CallOptions {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most this call may take, every attempt and wait included.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The most attempts of this call (1 = no retry).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// The profile for this call.
    pub fn profile(mut self, profile: RetryProfile) -> Self {
        self.profile = Some(profile);
        self
    }

    /// The backoff for this call.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// The `Idempotency-Key` of this call, instead of the current handler's (a header set on
    /// the request itself still wins).
    pub fn idempotency_key(mut self, key: IdempotencyKey) -> Self {
        self.idempotency_key = Some(key);
        self
    }
}

/// A `reqwest` client that retries, see the [module documentation](self).
///
/// Cheap to clone; clones share the connection pool and the [`RetryBudget`].
///
/// ```no_run
/// use converge::http_client::RetryClient;
///
/// # async fn run() -> Result<(), reqwest_middleware::Error> {
/// let client = RetryClient::new();
/// let status = client.get("http://inventory.internal/items/7").send().await?.status();
/// # let _ = status;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RetryClient {
    client: ClientWithMiddleware,
    budget: Arc<RetryBudget>,
}

impl Default for RetryClient {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryClient {
    /// A client with the default policy ([`RetryPolicy::default`]) and budget
    /// ([`RetryBudget::default`]) over a default `reqwest::Client`.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder, to choose the profile, backoff, limits and middlewares.
    pub fn builder() -> RetryClientBuilder {
        RetryClientBuilder::default()
    }

    /// Starts a request; send it with [`RequestBuilder::send`].
    pub fn request<U: IntoUrl>(&self, method: Method, url: U) -> RequestBuilder {
        self.client.request(method, url)
    }

    /// Starts a GET.
    pub fn get<U: IntoUrl>(&self, url: U) -> RequestBuilder {
        self.client.get(url)
    }

    /// Starts a POST.
    pub fn post<U: IntoUrl>(&self, url: U) -> RequestBuilder {
        self.client.post(url)
    }

    /// Starts a PUT.
    pub fn put<U: IntoUrl>(&self, url: U) -> RequestBuilder {
        self.client.put(url)
    }

    /// Starts a PATCH.
    pub fn patch<U: IntoUrl>(&self, url: U) -> RequestBuilder {
        self.client.patch(url)
    }

    /// Starts a DELETE.
    pub fn delete<U: IntoUrl>(&self, url: U) -> RequestBuilder {
        self.client.delete(url)
    }

    /// Sends a request built elsewhere, with retries.
    pub async fn execute(
        &self,
        request: reqwest::Request,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.client.execute(request).await
    }

    /// The middleware client underneath (to hand to code that takes one).
    pub fn inner(&self) -> &ClientWithMiddleware {
        &self.client
    }

    /// The budget the client's retries draw from.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.budget
    }
}

/// Builds a [`RetryClient`].
#[derive(Default)]
pub struct RetryClientBuilder {
    client: Option<reqwest::Client>,
    policy: RetryPolicy,
    budget: Option<Arc<RetryBudget>>,
    per_call: Vec<Arc<dyn Middleware>>,
    per_attempt: Vec<Arc<dyn Middleware>>,
}

impl RetryClientBuilder {
    /// The `reqwest::Client` to send with (its pool, timeouts, proxies); default
    /// `reqwest::Client::new()`.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Replaces the whole policy.
    pub fn policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Which outcomes are retried (default [`RetryProfile::TransientOnly`]).
    pub fn profile(mut self, profile: RetryProfile) -> Self {
        self.policy.profile = profile;
        self
    }

    /// The waits between attempts (default [`Backoff::default`]).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.policy.backoff = backoff;
        self
    }

    /// The most a call may take, all attempts included (default 30 s).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.policy.deadline = deadline;
        self
    }

    /// The most attempts of a call, the first included (default 5).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.policy.max_attempts = max_attempts;
        self
    }

    /// A timeout for each attempt, within the deadline (default none).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.policy.attempt_timeout = Some(timeout);
        self
    }

    /// Retry POST, PATCH and other non-idempotent requests that carry no `Idempotency-Key`
    /// like the others (default `false`: only when the connection failed or the server
    /// answered `x-should-retry: true`). Only for servers known to tolerate repeats.
    pub fn retry_non_idempotent(mut self, retry: bool) -> Self {
        self.policy.retry_non_idempotent = retry;
        self
    }

    /// The retry budget (default [`RetryBudget::default`], one per client).
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(Arc::new(budget));
        self
    }

    /// A budget shared with other clients calling the same dependency.
    pub fn shared_budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// A middleware run once per call, outside the retries (e.g. a circuit breaker or a span
    /// around the whole call). Runs in the order added.
    pub fn with_per_call(mut self, middleware: impl Middleware) -> Self {
        self.per_call.push(Arc::new(middleware));
        self
    }

    /// A middleware run once per attempt, inside the retries (e.g. the outbound request log
    /// of [`crate::http::request_log`], request signing with a fresh timestamp). Runs in the
    /// order added.
    pub fn with_per_attempt(mut self, middleware: impl Middleware) -> Self {
        self.per_attempt.push(Arc::new(middleware));
        self
    }

    /// The client.
    pub fn build(self) -> RetryClient {
        let budget = self.budget.unwrap_or_default();
        let mut builder = ClientBuilder::new(self.client.unwrap_or_default());
        for middleware in self.per_call {
            builder = builder.with_arc(middleware);
        }
        builder = builder.with(RetryMiddleware::new(self.policy, budget.clone()));
        for middleware in self.per_attempt {
            builder = builder.with_arc(middleware);
        }
        RetryClient {
            client: builder.build(),
            budget,
        }
    }
}
