//! Retrying calls that failed for a reason that may pass: exponential backoff with jitter,
//! bounded by a total time budget.
//!
//! The transient codes are the ones every official client retries (UNAVAILABLE,
//! DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNKNOWN, CANCELLED); anything
//! else (NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED, …) would fail the same way again and
//! is returned at once.

use std::future::Future;
use std::time::Duration;

use rand::Rng as _;
use tokio::time::Instant;

use crate::transport::TransportError;

/// How a call is retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrySettings {
    /// The first pause after a failure.
    pub initial_backoff: Duration,
    /// The longest pause between attempts.
    pub max_backoff: Duration,
    /// How much the pause grows after each failure (at least 1).
    pub multiplier: f64,
    /// The time budget of all attempts together, pauses included; past it the last error is
    /// returned. Each attempt's gRPC deadline is what is left of it (at most
    /// [`MAX_ATTEMPT_DEADLINE`]), so no attempt outlives it.
    pub total_timeout: Duration,
}

impl Default for RetrySettings {
    /// 100 ms doubling up to 10 s, for at most 60 s in total (the official clients' publish
    /// budget).
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            total_timeout: Duration::from_secs(60),
        }
    }
}

/// The longest gRPC deadline one attempt gets, however large the budget: an attempt that
/// hangs this long is better abandoned and retried.
pub const MAX_ATTEMPT_DEADLINE: Duration = Duration::from_secs(600);

/// Whether a gRPC failure may go away if the same call is made again.
pub fn is_transient(code: tonic::Code) -> bool {
    TransportError::Status {
        code,
        message: String::new(),
    }
    .is_transient()
}

/// The longest pause between attempts, whatever the settings say.
const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// The sequence of pauses between attempts: exponential, each drawn uniformly from the upper
/// half of its step ("equal jitter"), so clients that failed together do not retry together
/// but every pause still grows.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    multiplier: f64,
}

impl Backoff {
    /// Starts at `settings.initial_backoff`.
    pub fn new(settings: &RetrySettings) -> Self {
        // Bounded so that growing a pause can never overflow.
        let max = settings
            .max_backoff
            .clamp(Duration::from_millis(1), MAX_PAUSE);
        Self {
            next: settings
                .initial_backoff
                .clamp(Duration::from_millis(1), max),
            max,
            multiplier: if settings.multiplier.is_finite() {
                settings.multiplier.clamp(1.0, 100.0)
            } else {
                2.0
            },
        }
    }

    /// The pause before the next attempt; grows the one after.
    pub fn next_pause(&mut self) -> Duration {
        let step = self.next;
        self.next = self.next.mul_f64(self.multiplier).min(self.max);
        let half = step / 2;
        half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
    }
}

/// Runs `call` until it succeeds, fails with a non-transient code, or `settings.total_timeout`
/// is spent. `call` receives the time left, to use as the attempt's gRPC deadline.
pub async fn retry<T, F, Fut>(
    settings: &RetrySettings,
    what: &str,
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let start = Instant::now();
    // A budget too large to add (Duration::MAX: "retry forever") is as good as a century.
    let give_up_at = start
        .checked_add(settings.total_timeout)
        .unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 86_400));
    let mut backoff = Backoff::new(settings);
    let mut attempt = 1u32;
    loop {
        let left = give_up_at.saturating_duration_since(Instant::now());
        let deadline = left.clamp(Duration::from_millis(1), MAX_ATTEMPT_DEADLINE);
        let status = match call(deadline).await {
            Ok(value) => return Ok(value),
            Err(status) => status,
        };
        if !is_transient(status.code()) {
            return Err(status);
        }
        let pause = backoff.next_pause();
        if Instant::now() + pause >= give_up_at {
            tracing::debug!(call = what, attempt, code = ?status.code(), "retry budget spent");
            return Err(status);
        }
        tracing::debug!(call = what, attempt, code = ?status.code(), error = %status.message(), pause_ms = pause.as_millis() as u64, "transient failure, retrying");
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

/// A request with its gRPC deadline set to `timeout`.
pub fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn the_transient_codes_are_the_official_clients() {
        use tonic::Code;
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::Internal,
            Code::Unknown,
            Code::Cancelled,
        ] {
            assert!(is_transient(code), "{code:?}");
        }
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::AlreadyExists,
            Code::Unauthenticated,
        ] {
            assert!(!is_transient(code), "{code:?}");
        }
    }

    #[test]
    fn pauses_grow_within_their_jitter_band_up_to_the_maximum() {
        let settings = RetrySettings {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(800),
            multiplier: 2.0,
            total_timeout: Duration::from_secs(60),
        };
        let mut backoff = Backoff::new(&settings);
        for step in [100u64, 200, 400, 800, 800, 800] {
            let pause = backoff.next_pause();
            let step = Duration::from_millis(step);
            assert!(pause >= step / 2 && pause <= step, "{pause:?} vs {step:?}");
        }
    }

    fn fast() -> RetrySettings {
        RetrySettings {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            multiplier: 2.0,
            total_timeout: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_others_returned_at_once() {
        let settings = fast();
        let calls = AtomicU32::new(0);
        let out = retry(&settings, "test", |_| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    Err(tonic::Status::unavailable("down"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(out.unwrap(), 3);

        let calls = AtomicU32::new(0);
        let out: Result<(), _> = retry(&settings, "test", |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(tonic::Status::not_found("gone")) }
        })
        .await;
        assert_eq!(out.unwrap_err().code(), tonic::Code::NotFound);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_total_budget_ends_retrying_with_the_last_error() {
        let settings = RetrySettings {
            total_timeout: Duration::from_millis(200),
            ..fast()
        };
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = retry(&settings, "test", |left| {
            assert!(left <= Duration::from_millis(200));
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move { Err(tonic::Status::unavailable(format!("down {n}"))) }
        })
        .await;
        let status = out.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let calls = calls.load(Ordering::SeqCst);
        assert!(calls > 3, "{calls} attempts");
        assert_eq!(
            status.message(),
            format!("down {}", calls - 1),
            "the last error"
        );
    }
}
