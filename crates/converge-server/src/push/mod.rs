//! Push delivery: the broker calls the HTTP endpoint of each push subscription.
//!
//! A [`dispatcher`] watches the subscriptions and runs one [`worker`] per push subscription, so a
//! slow or failing endpoint only ever slows its own subscription. Each worker leases messages
//! from the store, sends them within a congestion [`window`] and acknowledges or nacks each one;
//! retries, backoff and dead-lettering stay the engine's job. [`envelope`] builds the HTTP
//! request body and headers.

pub mod auth;
pub mod dispatcher;
pub mod envelope;
pub mod window;
pub mod worker;

pub use dispatcher::PushDispatcher;

use std::time::Duration;

use converge_core::RetrySchedule;

/// First wait of the push backoff, the schedule of a push subscription without a retry policy.
///
/// The real service documents that a push subscription whose endpoint keeps failing gets an
/// exponential "push backoff" of 100 ms up to 60 s even without a retry policy (a pull
/// subscription without one is redelivered at once). Hammering a failing endpoint with immediate
/// retries would only keep it down, so converge does the same.
pub const PUSH_MINIMUM_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait of the push backoff; see [`PUSH_MINIMUM_BACKOFF`].
pub const PUSH_MAXIMUM_BACKOFF: Duration = Duration::from_secs(60);

/// The retry schedule of a push subscription that sets neither a retry policy nor
/// `converge-retry-*` labels: exponential backoff from [`PUSH_MINIMUM_BACKOFF`] to
/// [`PUSH_MAXIMUM_BACKOFF`], no give-up (the message lives until its retention ends).
pub fn default_push_retry() -> RetrySchedule {
    RetrySchedule {
        immediate_retries: 0,
        fixed_retries: 0,
        fixed_interval: Duration::ZERO,
        minimum_backoff: PUSH_MINIMUM_BACKOFF,
        maximum_backoff: PUSH_MAXIMUM_BACKOFF,
        max_retry_duration: None,
    }
}
