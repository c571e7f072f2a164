//! Retry schedules: how long a subscription waits before delivering a message again after a
//! nack or an expired lease. (Placeholder: the full schedule model is being written.)

use std::time::Duration;

/// When to deliver a message again after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Retries made at once, before any backoff.
    pub immediate_retries: u32,
    /// Smallest backoff.
    pub minimum_backoff: Duration,
    /// Largest backoff.
    pub maximum_backoff: Duration,
    /// Give up (dead-letter) once this long has passed since the first delivery.
    pub max_retry_duration: Option<Duration>,
}

/// What to do after a failed delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Deliver again after this delay.
    RetryAfter(Duration),
    /// The schedule is exhausted.
    GiveUp,
}

impl RetrySchedule {
    /// Decides the next attempt after `failures` failed attempts.
    pub fn decide(&self, failures: u32, since_first_attempt: Duration, jitter: f64) -> RetryDecision {
        let _ = (failures, since_first_attempt, jitter);
        RetryDecision::RetryAfter(self.minimum_backoff)
    }
}
