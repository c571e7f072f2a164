//! Subscriptions as the store keeps them.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::dead_letter::DeadLetterPolicy;
use crate::name::{SubscriptionName, TopicName};
use crate::retry::RetrySchedule;

/// Ack deadline when a subscription sets none.
pub const DEFAULT_ACK_DEADLINE: Duration = Duration::from_secs(10);
/// Retention of unacknowledged messages when a subscription sets none.
pub const DEFAULT_SUBSCRIPTION_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Inactivity after which a subscription is deleted when it sets no expiration policy.
pub const DEFAULT_EXPIRATION_TTL: Duration = Duration::from_secs(31 * 24 * 3600);

/// A subscription: a cursor over one topic with its own delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Full name.
    pub name: SubscriptionName,
    /// The topic read; `None` once the topic has been deleted (shown as `_deleted-topic_`).
    pub topic: Option<TopicName>,
    /// How long a delivery is leased before the message is delivered again.
    pub ack_deadline: Duration,
    /// Keep acknowledged messages for the retention period (for seek).
    pub retain_acked_messages: bool,
    /// How long an unacknowledged message is kept.
    pub message_retention: Duration,
    /// Deliver messages of one ordering key one at a time, in publish order.
    pub enable_message_ordering: bool,
    /// Exactly-once delivery: no redelivery while a lease is valid or after a successful ack,
    /// and acks of expired leases are reported as failures instead of ignored.
    pub exactly_once: bool,
    /// Filter text; empty for none. Immutable after creation.
    pub filter: String,
    /// Where messages go after too many deliveries.
    pub dead_letter_policy: Option<DeadLetterPolicy>,
    /// Backoff between deliveries; `None` redelivers at once, as Pub/Sub does without a retry
    /// policy.
    pub retry: Option<RetrySchedule>,
    /// Delete the subscription after this long without activity; `None` never.
    pub expiration_ttl: Option<Duration>,
    /// Detached from its topic: delivers nothing, pull fails.
    pub detached: bool,
    /// User labels, including converge's own `converge-*` settings.
    pub labels: HashMap<String, String>,
    /// When the subscription was created (set by the store).
    pub created: SystemTime,
    /// The resource as the API layer last wrote it; see [`crate::Topic::resource`].
    pub resource: Bytes,
}

/// What must happen to a message whose delivery failed (a nack, or a lease that expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// It waits for its next attempt, deliverable again at `ready_at`.
    Retry {
        /// When it becomes deliverable again.
        ready_at: SystemTime,
    },
    /// It has used up its attempts: forward it to the dead-letter topic, then complete it.
    DeadLetter {
        /// Deliveries made.
        attempts: u32,
    },
    /// The retry schedule gave up and there is no dead-letter topic: complete it (dropped).
    GiveUp {
        /// Deliveries made.
        attempts: u32,
    },
}

impl Subscription {
    /// Decides the fate of a message whose `attempts`-th delivery failed at `now`, following the
    /// dead-letter policy and then the retry schedule (measured from `first_attempt`). `jitter`
    /// is a sample in [0, 1). Every engine asks this one function, so a retry schedule means the
    /// same thing whichever store keeps the lease.
    pub fn after_failure(
        &self,
        attempts: u32,
        first_attempt: SystemTime,
        now: SystemTime,
        jitter: f64,
    ) -> AfterFailure {
        use crate::retry::RetryDecision;
        let dead_letter = self.dead_letter_policy.as_ref();
        if dead_letter.is_some_and(|p| p.is_exhausted(attempts)) {
            return AfterFailure::DeadLetter { attempts };
        }
        let Some(schedule) = &self.retry else {
            return AfterFailure::Retry { ready_at: now };
        };
        let elapsed = now.duration_since(first_attempt).unwrap_or(Duration::ZERO);
        match schedule.decide(attempts, elapsed, jitter) {
            RetryDecision::RetryAfter(delay) => AfterFailure::Retry {
                ready_at: now + delay,
            },
            RetryDecision::GiveUp if dead_letter.is_some() => AfterFailure::DeadLetter { attempts },
            RetryDecision::GiveUp => AfterFailure::GiveUp { attempts },
        }
    }
}
