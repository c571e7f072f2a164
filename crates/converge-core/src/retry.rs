//! Retry schedules: how long a subscription waits before delivering a message again after a
//! nack or an expired lease, and when it stops trying.
//!
//! Pub/Sub's own `RetryPolicy { minimum_backoff, maximum_backoff }` gives exponential backoff:
//! the first retry waits the minimum, each next one doubles, capped at the maximum; without a
//! policy the message is redelivered at once (`Subscription::retry == None`). A system that must
//! converge needs a little more, so a [`RetrySchedule`] has four phases:
//!
//! 1. **immediate** retries (no delay: a second try often reaches a healthier server),
//! 2. an optional **fixed** phase (N retries, each after the same interval),
//! 3. **exponential backoff** with jitter between a minimum and a maximum, which then stays at
//!    the maximum,
//! 4. a **maximum total retry duration**, measured from the first delivery, after which the
//!    schedule gives up and the engine dead-letters the message (or drops it when the
//!    subscription has no dead-letter topic).
//!
//! # Setting a schedule through labels
//!
//! Any Pub/Sub client can set labels on a subscription, so converge reads its extensions from
//! them. Label values may contain only lowercase letters, digits, `-` and `_` (at most 63
//! characters), so durations are written as `<number><unit>` groups, largest unit first:
//! `500ms`, `10s`, `20m`, `2h`, `7d`, `1h30m` (see [`parse_label_duration`]).
//!
//! | Label                           | Value                                   | Sets                  |
//! |---------------------------------|-----------------------------------------|-----------------------|
//! | `converge-retry-preset`         | `pubsub` or `sns`                       | the base schedule     |
//! | `converge-retry-immediate`      | count, 0 to 100                         | `immediate_retries`   |
//! | `converge-retry-fixed`          | count, 0 to 10000                       | `fixed_retries`       |
//! | `converge-retry-fixed-interval` | duration, at most `1d`                  | `fixed_interval`      |
//! | `converge-retry-min-backoff`    | duration, at most `1d`                  | `minimum_backoff`     |
//! | `converge-retry-max-backoff`    | duration, at most `1d`                  | `maximum_backoff`     |
//! | `converge-retry-max-duration`   | duration, `1ms` to `31d`, or `none`     | `max_retry_duration`  |
//!
//! Precedence, lowest first: the preset (or, without one, Pub/Sub's default policy: 10 s to
//! 600 s, retried until the message's retention ends), then the fields the subscription's
//! `RetryPolicy` sets, then the explicit labels. An unknown `converge-retry-*` label or a bad
//! value is `INVALID_ARGUMENT` naming the label.
//!
//! The presets:
//! - `pubsub`: 10 s doubling to 10 min, for 7 days (Pub/Sub's default policy and retention);
//! - `sns`: 3 immediate, then 3 after 20 s each, then doubling from 20 s up to 20 min, then
//!   every 20 min, for 23 days in all (the shape of SNS's delivery policy).
//!
//! The topic label `converge-dedup-window` (read by [`dedup_window_from_labels`]) uses the same
//! duration syntax.
//!
//! # Jitter
//!
//! Backoff delays use *equal jitter*: of the nominal delay `d`, half is fixed and half is
//! random, so the delay lies in `[d/2, d]`. Retries of many messages that failed together thus
//! spread out instead of arriving together, yet a delay never collapses to about zero (as "full
//! jitter" allows). The result is then kept within `[minimum_backoff, maximum_backoff]`, so the
//! bounds a Pub/Sub client asked for always hold: the first backoff is exactly the minimum and
//! the spread grows with the delay. Immediate and fixed retries are not jittered; they are
//! explicit promises ("3 retries 20 s apart"). The random sample is an argument of
//! [`RetrySchedule::decide`], so the schedule stays a pure, testable function.

use std::collections::HashMap;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::topic::DEFAULT_DEDUP_WINDOW;

/// Prefix of every retry label; a label with this prefix that is not listed below is rejected,
/// so that a typo does not silently leave the default schedule in place.
pub const LABEL_PREFIX: &str = "converge-retry-";
/// Label choosing the base schedule: `pubsub` or `sns`.
pub const LABEL_PRESET: &str = "converge-retry-preset";
/// Label setting [`RetrySchedule::immediate_retries`].
pub const LABEL_IMMEDIATE: &str = "converge-retry-immediate";
/// Label setting [`RetrySchedule::fixed_retries`].
pub const LABEL_FIXED: &str = "converge-retry-fixed";
/// Label setting [`RetrySchedule::fixed_interval`].
pub const LABEL_FIXED_INTERVAL: &str = "converge-retry-fixed-interval";
/// Label setting [`RetrySchedule::minimum_backoff`].
pub const LABEL_MIN_BACKOFF: &str = "converge-retry-min-backoff";
/// Label setting [`RetrySchedule::maximum_backoff`].
pub const LABEL_MAX_BACKOFF: &str = "converge-retry-max-backoff";
/// Label setting [`RetrySchedule::max_retry_duration`]; `none` for never giving up.
pub const LABEL_MAX_DURATION: &str = "converge-retry-max-duration";
/// Value of [`LABEL_MAX_DURATION`] meaning "never give up".
pub const NO_MAX_DURATION: &str = "none";
/// Topic label setting how long idempotency keys are remembered.
pub const LABEL_DEDUP_WINDOW: &str = "converge-dedup-window";

/// Pub/Sub's default `minimum_backoff` when a retry policy leaves it unset.
pub const DEFAULT_MINIMUM_BACKOFF: Duration = Duration::from_secs(10);
/// Pub/Sub's default `maximum_backoff` when a retry policy leaves it unset.
pub const DEFAULT_MAXIMUM_BACKOFF: Duration = Duration::from_secs(600);
/// The largest value Pub/Sub accepts for either field of a retry policy.
pub const MAX_POLICY_BACKOFF: Duration = Duration::from_secs(600);
/// The largest backoff or fixed interval a label may set: longer waits belong to a scheduler,
/// not to a redelivery loop.
pub const MAX_LABEL_BACKOFF: Duration = Duration::from_secs(24 * 3600);
/// The most immediate retries a label may ask for; more would only spin on a broken consumer.
pub const MAX_IMMEDIATE_RETRIES: u32 = 100;
/// The most fixed-interval retries a label may ask for.
pub const MAX_FIXED_RETRIES: u32 = 10_000;
/// The longest retry duration: a subscription keeps a message at most 31 days anyway.
pub const MAX_RETRY_DURATION: Duration = Duration::from_secs(31 * 24 * 3600);
/// The shortest deduplication window a topic may set.
pub const MIN_DEDUP_WINDOW: Duration = Duration::from_secs(60);
/// The longest deduplication window a topic may set (the longest retention).
pub const MAX_DEDUP_WINDOW: Duration = Duration::from_secs(31 * 24 * 3600);

const DAY: Duration = Duration::from_secs(24 * 3600);

/// When to deliver a message again after a failed attempt, and when to stop.
///
/// Retry number `n` (the retry after the `n`-th failed delivery) waits:
/// - nothing while `n <= immediate_retries`;
/// - `fixed_interval` for the next `fixed_retries` retries;
/// - then `minimum_backoff * 2^k` for the `k`-th backoff retry (from 0), capped at
///   `maximum_backoff`, with equal jitter (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Retries made at once, before any waiting.
    pub immediate_retries: u32,
    /// Retries made `fixed_interval` apart after the immediate ones.
    pub fixed_retries: u32,
    /// The wait before each fixed retry.
    pub fixed_interval: Duration,
    /// The first backoff; each next one doubles.
    pub minimum_backoff: Duration,
    /// The cap of the backoff; once reached, every retry waits about this long.
    pub maximum_backoff: Duration,
    /// Give up once this long has passed since the first delivery; `None` never (the message
    /// then lives until its retention ends, as in Pub/Sub).
    pub max_retry_duration: Option<Duration>,
}

/// What to do after a failed delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Deliver again after this delay.
    RetryAfter(Duration),
    /// The schedule is exhausted: dead-letter the message, or drop it without a dead-letter
    /// topic.
    GiveUp,
}

/// The named base schedules of label `converge-retry-preset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// [`RetrySchedule::pubsub`].
    PubSub,
    /// [`RetrySchedule::sns`].
    Sns,
}

impl Preset {
    /// The label value naming this preset.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::PubSub => "pubsub",
            Preset::Sns => "sns",
        }
    }

    /// Parses a label value; the error names the label so the user knows what to fix.
    pub fn from_label(value: &str) -> Result<Self> {
        match value {
            "pubsub" => Ok(Preset::PubSub),
            "sns" => Ok(Preset::Sns),
            other => Err(Error::invalid(format!(
                "Invalid label {LABEL_PRESET}={other:?}: expected \"pubsub\" or \"sns\""
            ))),
        }
    }

    /// The schedule this preset stands for.
    pub fn schedule(self) -> RetrySchedule {
        match self {
            Preset::PubSub => RetrySchedule::pubsub(),
            Preset::Sns => RetrySchedule::sns(),
        }
    }
}

impl RetrySchedule {
    /// Pub/Sub's default policy: 10 s doubling to 10 min, for 7 days (its default retention).
    pub fn pubsub() -> Self {
        Self {
            max_retry_duration: Some(7 * DAY),
            ..Self::policy_defaults()
        }
    }

    /// An SNS-like schedule for endpoints that may be down for a while: 3 immediate retries,
    /// 3 more 20 s apart, then 20 s doubling up to 20 min, then every 20 min, for 23 days.
    pub fn sns() -> Self {
        Self {
            immediate_retries: 3,
            fixed_retries: 3,
            fixed_interval: Duration::from_secs(20),
            minimum_backoff: Duration::from_secs(20),
            maximum_backoff: Duration::from_secs(20 * 60),
            max_retry_duration: Some(23 * DAY),
        }
    }

    /// What a Pub/Sub retry policy with both fields unset means: 10 s to 600 s, no give-up.
    fn policy_defaults() -> Self {
        Self {
            immediate_retries: 0,
            fixed_retries: 0,
            fixed_interval: Duration::ZERO,
            minimum_backoff: DEFAULT_MINIMUM_BACKOFF,
            maximum_backoff: DEFAULT_MAXIMUM_BACKOFF,
            max_retry_duration: None,
        }
    }

    /// The schedule of a Pub/Sub `RetryPolicy` (`None` = field unset = its default of 10 s or
    /// 600 s), validated as the real service does: each field 0 to 600 s, maximum >= minimum.
    ///
    /// There is no give-up: in Pub/Sub a retried message lives until its retention ends.
    pub fn from_policy(minimum: Option<Duration>, maximum: Option<Duration>) -> Result<Self> {
        let mut schedule = Self::policy_defaults();
        schedule.apply_policy(minimum, maximum)?;
        if schedule.maximum_backoff < schedule.minimum_backoff {
            return Err(Error::invalid(format!(
                "Invalid retry_policy: maximum_backoff ({}) must not be less than \
                 minimum_backoff ({})",
                format_label_duration(schedule.maximum_backoff),
                format_label_duration(schedule.minimum_backoff)
            )));
        }
        Ok(schedule)
    }

    /// The effective schedule of a subscription: its Pub/Sub retry policy (if any, as its
    /// `(minimum_backoff, maximum_backoff)` fields) combined with its `converge-retry-*` labels,
    /// by the precedence of the module documentation.
    ///
    /// `Ok(None)` = no policy and no retry labels = immediate redelivery, as in Pub/Sub.
    pub fn resolve(
        policy: Option<(Option<Duration>, Option<Duration>)>,
        labels: &HashMap<String, String>,
    ) -> Result<Option<Self>> {
        let mut retry_labels: Vec<(&str, &str)> = labels
            .iter()
            .filter(|(key, _)| key.starts_with(LABEL_PREFIX))
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        if policy.is_none() && retry_labels.is_empty() {
            return Ok(None);
        }
        // Sorted so that the same labels always produce the same error.
        retry_labels.sort_unstable();
        if let Some((key, _)) = retry_labels.iter().find(|(key, _)| !is_known_label(key)) {
            return Err(Error::invalid(format!(
                "Unknown label {key}: converge understands {LABEL_PRESET}, {LABEL_IMMEDIATE}, \
                 {LABEL_FIXED}, {LABEL_FIXED_INTERVAL}, {LABEL_MIN_BACKOFF}, \
                 {LABEL_MAX_BACKOFF} and {LABEL_MAX_DURATION}"
            )));
        }

        let mut schedule = match labels.get(LABEL_PRESET) {
            Some(value) => Preset::from_label(value)?.schedule(),
            None => Self::policy_defaults(),
        };
        if let Some((minimum, maximum)) = policy {
            schedule.apply_policy(minimum, maximum)?;
        }
        for (key, value) in retry_labels {
            schedule.apply_label(key, value)?;
        }
        if schedule.maximum_backoff < schedule.minimum_backoff {
            return Err(Error::invalid(format!(
                "The maximum backoff ({}) must not be less than the minimum backoff ({}); \
                 check retry_policy and the labels {LABEL_MIN_BACKOFF} and {LABEL_MAX_BACKOFF}",
                format_label_duration(schedule.maximum_backoff),
                format_label_duration(schedule.minimum_backoff)
            )));
        }
        Ok(Some(schedule))
    }

    /// Overrides the backoff bounds with the fields a Pub/Sub retry policy sets.
    fn apply_policy(&mut self, minimum: Option<Duration>, maximum: Option<Duration>) -> Result<()> {
        if let Some(minimum) = minimum {
            self.minimum_backoff = check_policy_bound("minimum_backoff", minimum)?;
        }
        if let Some(maximum) = maximum {
            self.maximum_backoff = check_policy_bound("maximum_backoff", maximum)?;
        }
        Ok(())
    }

    /// Overrides one field with a `converge-retry-*` label; the preset label is applied first
    /// by [`RetrySchedule::resolve`] and ignored here.
    fn apply_label(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            LABEL_PRESET => {}
            LABEL_IMMEDIATE => {
                self.immediate_retries = parse_count(key, value, MAX_IMMEDIATE_RETRIES)?;
            }
            LABEL_FIXED => self.fixed_retries = parse_count(key, value, MAX_FIXED_RETRIES)?,
            LABEL_FIXED_INTERVAL => self.fixed_interval = parse_bounded(key, value)?,
            LABEL_MIN_BACKOFF => self.minimum_backoff = parse_bounded(key, value)?,
            LABEL_MAX_BACKOFF => self.maximum_backoff = parse_bounded(key, value)?,
            LABEL_MAX_DURATION => self.max_retry_duration = parse_max_duration(value)?,
            other => {
                debug_assert!(false, "apply_label called with unknown label {other}");
                return Err(Error::invalid(format!("Unknown label {other}")));
            }
        }
        Ok(())
    }

    /// After `failures` failed attempts (1 = the first delivery failed; 0 is read as 1), with
    /// the first delivery `since_first_attempt` ago, what to do; `jitter` is a uniform sample
    /// in `[0, 1)`.
    ///
    /// Gives up once `since_first_attempt` has reached `max_retry_duration`; before that, the
    /// delay is cut so that the last retry happens no later than the deadline.
    pub fn decide(
        &self,
        failures: u32,
        since_first_attempt: Duration,
        jitter: f64,
    ) -> RetryDecision {
        let remaining = match self.max_retry_duration {
            None => None,
            Some(max) => match max.checked_sub(since_first_attempt) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return RetryDecision::GiveUp,
            },
        };
        let delay = self.delay(failures, jitter);
        RetryDecision::RetryAfter(remaining.map_or(delay, |left| delay.min(left)))
    }

    /// The delay before retry number `retry` (1 = the first retry) with jitter sample `jitter`
    /// in `[0, 1)`, ignoring the maximum retry duration.
    pub fn delay(&self, retry: u32, jitter: f64) -> Duration {
        debug_assert!(
            (0.0..1.0).contains(&jitter),
            "jitter {jitter} is outside [0, 1)"
        );
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        match self.phase(retry) {
            Phase::Immediate => Duration::ZERO,
            Phase::Fixed => self.fixed_interval,
            Phase::Backoff(step) => {
                let nominal = self.backoff(step);
                // `max` then `min` rather than `clamp`, which panics when the bounds are
                // inverted in a schedule built by hand.
                equal_jitter(nominal, jitter)
                    .max(self.minimum_backoff)
                    .min(self.maximum_backoff)
            }
        }
    }

    /// The delay before retry number `retry` without jitter: what the schedule promises at
    /// most, for display (`converge subscriptions describe`) and for reasoning about totals.
    pub fn nominal_delay(&self, retry: u32) -> Duration {
        match self.phase(retry) {
            Phase::Immediate => Duration::ZERO,
            Phase::Fixed => self.fixed_interval,
            Phase::Backoff(step) => self.backoff(step),
        }
    }

    /// Which phase retry number `retry` falls in.
    fn phase(&self, retry: u32) -> Phase {
        let retry = retry.max(1);
        if retry <= self.immediate_retries {
            return Phase::Immediate;
        }
        let after_immediate = retry - self.immediate_retries;
        if after_immediate <= self.fixed_retries {
            return Phase::Fixed;
        }
        Phase::Backoff(after_immediate - self.fixed_retries - 1)
    }

    /// `minimum_backoff * 2^step`, capped at `maximum_backoff` (also on overflow).
    fn backoff(&self, step: u32) -> Duration {
        debug_assert!(
            self.minimum_backoff <= self.maximum_backoff,
            "minimum backoff above maximum in {self:?}"
        );
        if self.minimum_backoff.is_zero() {
            return Duration::ZERO;
        }
        1u32.checked_shl(step)
            .and_then(|factor| self.minimum_backoff.checked_mul(factor))
            .map_or(self.maximum_backoff, |delay| {
                delay.min(self.maximum_backoff)
            })
    }

    /// The labels that reproduce this schedule on their own (for
    /// `converge subscriptions create --retry-*`): every field is written, so that the result
    /// does not depend on the preset or on defaults. Durations are written to the millisecond.
    pub fn to_labels(&self) -> Vec<(String, String)> {
        let max_duration = self
            .max_retry_duration
            .map_or_else(|| NO_MAX_DURATION.to_string(), format_label_duration);
        [
            (LABEL_IMMEDIATE, self.immediate_retries.to_string()),
            (LABEL_FIXED, self.fixed_retries.to_string()),
            (
                LABEL_FIXED_INTERVAL,
                format_label_duration(self.fixed_interval),
            ),
            (
                LABEL_MIN_BACKOFF,
                format_label_duration(self.minimum_backoff),
            ),
            (
                LABEL_MAX_BACKOFF,
                format_label_duration(self.maximum_backoff),
            ),
            (LABEL_MAX_DURATION, max_duration),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
    }
}

/// The phase of one retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Immediate,
    Fixed,
    /// The `n`-th backoff retry, from 0.
    Backoff(u32),
}

/// Equal jitter: half of `nominal` fixed, the other half scaled by `jitter` in `[0, 1]`, so the
/// result lies in `[nominal / 2, nominal]`.
fn equal_jitter(nominal: Duration, jitter: f64) -> Duration {
    let fixed = nominal / 2;
    let spread = nominal - fixed;
    (fixed + spread.mul_f64(jitter)).min(nominal)
}

fn is_known_label(key: &str) -> bool {
    matches!(
        key,
        LABEL_PRESET
            | LABEL_IMMEDIATE
            | LABEL_FIXED
            | LABEL_FIXED_INTERVAL
            | LABEL_MIN_BACKOFF
            | LABEL_MAX_BACKOFF
            | LABEL_MAX_DURATION
    )
}

fn check_policy_bound(field: &str, value: Duration) -> Result<Duration> {
    if value > MAX_POLICY_BACKOFF {
        return Err(Error::invalid(format!(
            "Invalid retry_policy.{field} {}: must be between 0s and {}",
            format_label_duration(value),
            format_label_duration(MAX_POLICY_BACKOFF)
        )));
    }
    Ok(value)
}

fn parse_count(key: &str, value: &str, max: u32) -> Result<u32> {
    let invalid = || {
        Error::invalid(format!(
            "Invalid label {key}={value:?}: expected a count from 0 to {max}"
        ))
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match value.parse::<u32>() {
        Ok(count) if count <= max => Ok(count),
        _ => Err(invalid()),
    }
}

fn parse_bounded(key: &str, value: &str) -> Result<Duration> {
    let duration = parse_label_duration(value)
        .map_err(|e| Error::invalid(format!("Invalid label {key}={value:?}: {e}")))?;
    if duration > MAX_LABEL_BACKOFF {
        return Err(Error::invalid(format!(
            "Invalid label {key}={value:?}: at most {} is allowed",
            format_label_duration(MAX_LABEL_BACKOFF)
        )));
    }
    Ok(duration)
}

fn parse_max_duration(value: &str) -> Result<Option<Duration>> {
    if value == NO_MAX_DURATION {
        return Ok(None);
    }
    let key = LABEL_MAX_DURATION;
    let duration = parse_label_duration(value)
        .map_err(|e| Error::invalid(format!("Invalid label {key}={value:?}: {e}")))?;
    if duration.is_zero() || duration > MAX_RETRY_DURATION {
        return Err(Error::invalid(format!(
            "Invalid label {key}={value:?}: expected a duration from 1ms to {}, or \"{NO_MAX_DURATION}\"",
            format_label_duration(MAX_RETRY_DURATION)
        )));
    }
    Ok(Some(duration))
}

/// The duration units of label values, largest first, as (suffix, length).
const UNITS: [(&str, Duration); 5] = [
    ("d", DAY),
    ("h", Duration::from_secs(3600)),
    ("m", Duration::from_secs(60)),
    ("s", Duration::from_secs(1)),
    ("ms", Duration::from_millis(1)),
];

/// Parses a duration written for a label value: one or more `<number><unit>` groups with units
/// `d`, `h`, `m`, `s`, `ms`, each unit at most once and largest first (`10s`, `5m`, `2h`, `7d`,
/// `1h30m`, `1500ms`). Labels cannot hold `.`, spaces or upper case, hence this small syntax.
pub fn parse_label_duration(s: &str) -> Result<Duration> {
    let invalid = |why: &str| {
        Error::invalid(format!(
            "Invalid duration {s:?}: {why} (write e.g. 10s, 5m, 2h, 7d or 1h30m)"
        ))
    };
    if s.is_empty() {
        return Err(invalid("it is empty"));
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    // Index into UNITS of the last unit seen: the next one must be smaller.
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid("expected a number"));
        }
        let number: u32 = rest[..digits]
            .parse()
            .map_err(|_| invalid("the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(invalid(&format!("unknown unit {unit:?}")));
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(invalid("units must appear once each, largest first"));
        }
        last_unit = Some(index);
        total = UNITS[index]
            .1
            .checked_mul(number)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| invalid("it is too long"))?;
    }
    Ok(total)
}

/// Formats a duration in the syntax of [`parse_label_duration`], largest units first
/// (`1h30m`, `0s`); below a millisecond is dropped, as labels are written to the millisecond.
pub fn format_label_duration(d: Duration) -> String {
    let mut millis = d.as_millis();
    if millis == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (name, unit) in UNITS {
        let unit_millis = unit.as_millis();
        let count = millis / unit_millis;
        if count > 0 {
            out.push_str(&count.to_string());
            out.push_str(name);
            millis %= unit_millis;
        }
    }
    out
}

/// How long a topic remembers idempotency keys: label `converge-dedup-window` (1 minute to
/// 31 days), or [`DEFAULT_DEDUP_WINDOW`] without it.
pub fn dedup_window_from_labels(labels: &HashMap<String, String>) -> Result<Duration> {
    let Some(value) = labels.get(LABEL_DEDUP_WINDOW) else {
        return Ok(DEFAULT_DEDUP_WINDOW);
    };
    let key = LABEL_DEDUP_WINDOW;
    let window = parse_label_duration(value)
        .map_err(|e| Error::invalid(format!("Invalid label {key}={value:?}: {e}")))?;
    if !(MIN_DEDUP_WINDOW..=MAX_DEDUP_WINDOW).contains(&window) {
        return Err(Error::invalid(format!(
            "Invalid label {key}={value:?}: must be between {} and {}",
            format_label_duration(MIN_DEDUP_WINDOW),
            format_label_duration(MAX_DEDUP_WINDOW)
        )));
    }
    Ok(window)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn delay_of(decision: RetryDecision) -> Duration {
        match decision {
            RetryDecision::RetryAfter(d) => d,
            RetryDecision::GiveUp => panic!("expected a retry, got {decision:?}"),
        }
    }

    #[test]
    fn pubsub_preset_doubles_from_10s_to_10min_for_7_days() {
        let s = RetrySchedule::pubsub();
        let nominal: Vec<u64> = (1..=8).map(|n| s.nominal_delay(n).as_secs()).collect();
        assert_eq!(nominal, [10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(s.max_retry_duration, Some(S(7 * 24 * 3600)));
        assert_eq!(s.immediate_retries, 0);
        assert_eq!(s.fixed_retries, 0);
    }

    #[test]
    fn sns_preset_has_its_four_phases() {
        let s = RetrySchedule::sns();
        let nominal: Vec<u64> = (1..=14).map(|n| s.nominal_delay(n).as_secs()).collect();
        assert_eq!(
            nominal,
            [0, 0, 0, 20, 20, 20, 20, 40, 80, 160, 320, 640, 1200, 1200]
        );
        assert_eq!(s.max_retry_duration, Some(S(23 * 24 * 3600)));
    }

    #[test]
    fn first_backoff_is_the_minimum_whatever_the_jitter() {
        let s = RetrySchedule::pubsub();
        assert_eq!(s.delay(1, 0.0), S(10));
        assert_eq!(s.delay(1, 0.999), S(10));
    }

    #[test]
    fn equal_jitter_spans_half_to_full_delay() {
        let s = RetrySchedule::pubsub();
        // Retry 4: nominal 80 s.
        assert_eq!(s.delay(4, 0.0), S(40));
        assert_eq!(s.delay(4, 0.5), S(60));
        let high = s.delay(4, 0.999_999);
        assert!(high > S(79) && high <= S(80), "{high:?}");
        // At the cap: nominal 600 s, so 300 s to 600 s.
        assert_eq!(s.delay(20, 0.0), S(300));
        assert!(s.delay(20, 0.999_999) <= S(600));
    }

    #[test]
    fn fixed_and_immediate_retries_are_not_jittered() {
        let s = RetrySchedule::sns();
        assert_eq!(s.delay(2, 0.9), Duration::ZERO);
        assert_eq!(s.delay(5, 0.0), S(20));
        assert_eq!(s.delay(5, 0.9), S(20));
    }

    #[test]
    fn zero_failures_reads_as_the_first() {
        let s = RetrySchedule::pubsub();
        assert_eq!(
            s.decide(0, Duration::ZERO, 0.0),
            s.decide(1, Duration::ZERO, 0.0)
        );
    }

    #[test]
    fn gives_up_exactly_at_the_max_duration() {
        let s = RetrySchedule::pubsub();
        let max = s.max_retry_duration.unwrap();
        assert_eq!(s.decide(3, max, 0.5), RetryDecision::GiveUp);
        assert_eq!(s.decide(3, max + S(1), 0.5), RetryDecision::GiveUp);
        assert!(matches!(
            s.decide(3, max - S(1), 0.5),
            RetryDecision::RetryAfter(_)
        ));
    }

    #[test]
    fn last_retry_is_cut_to_the_deadline() {
        let s = RetrySchedule::pubsub();
        let max = s.max_retry_duration.unwrap();
        assert_eq!(delay_of(s.decide(30, max - S(7), 0.5)), S(7));
    }

    #[test]
    fn without_max_duration_never_gives_up() {
        let s = RetrySchedule::from_policy(None, None).unwrap();
        let forever = S(400 * 24 * 3600);
        assert_eq!(delay_of(s.decide(u32::MAX, forever, 0.0)), S(300));
    }

    #[test]
    fn huge_retry_numbers_saturate_at_the_maximum() {
        let s = RetrySchedule {
            maximum_backoff: S(24 * 3600),
            ..RetrySchedule::pubsub()
        };
        assert_eq!(s.nominal_delay(33), S(24 * 3600));
        assert_eq!(s.nominal_delay(u32::MAX), S(24 * 3600));
    }

    #[test]
    fn zero_minimum_backoff_redelivers_at_once() {
        let s = RetrySchedule::from_policy(Some(Duration::ZERO), None).unwrap();
        assert_eq!(s.delay(1, 0.5), Duration::ZERO);
        assert_eq!(s.delay(40, 0.5), Duration::ZERO);
    }

    #[test]
    fn from_policy_applies_pubsub_defaults_and_bounds() {
        let s = RetrySchedule::from_policy(None, None).unwrap();
        assert_eq!((s.minimum_backoff, s.maximum_backoff), (S(10), S(600)));
        assert_eq!(s.max_retry_duration, None);
        let s = RetrySchedule::from_policy(Some(S(600)), Some(S(600))).unwrap();
        assert_eq!((s.minimum_backoff, s.maximum_backoff), (S(600), S(600)));
        let s = RetrySchedule::from_policy(Some(Duration::ZERO), Some(Duration::ZERO)).unwrap();
        assert_eq!(
            (s.minimum_backoff, s.maximum_backoff),
            (Duration::ZERO, Duration::ZERO)
        );
    }

    #[test]
    fn from_policy_rejects_out_of_range_fields() {
        let err = RetrySchedule::from_policy(Some(S(601)), None).unwrap_err();
        assert_eq!(
            err,
            Error::invalid(
                "Invalid retry_policy.minimum_backoff 10m1s: must be between 0s and 10m"
            )
        );
        let err = RetrySchedule::from_policy(None, Some(S(601))).unwrap_err();
        assert!(
            err.to_string().contains("retry_policy.maximum_backoff"),
            "{err}"
        );
    }

    #[test]
    fn from_policy_rejects_maximum_below_minimum() {
        let err = RetrySchedule::from_policy(Some(S(30)), Some(S(20))).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        assert!(err.to_string().contains("maximum_backoff (20s)"), "{err}");
        // Unset maximum defaults to 600 s, above any valid minimum.
        assert!(RetrySchedule::from_policy(Some(S(600)), None).is_ok());
        // Unset minimum defaults to 10 s.
        assert!(RetrySchedule::from_policy(None, Some(S(9))).is_err());
        assert!(RetrySchedule::from_policy(None, Some(S(10))).is_ok());
    }

    #[test]
    fn resolve_without_policy_or_labels_is_immediate_redelivery() {
        let other = labels(&[("team", "a"), ("converge-dedup-window", "1h")]);
        assert_eq!(RetrySchedule::resolve(None, &other).unwrap(), None);
    }

    #[test]
    fn resolve_with_policy_only_matches_from_policy() {
        let policy = Some((Some(S(5)), Some(S(50))));
        let resolved = RetrySchedule::resolve(policy, &HashMap::new()).unwrap();
        assert_eq!(
            resolved,
            Some(RetrySchedule::from_policy(Some(S(5)), Some(S(50))).unwrap())
        );
    }

    #[test]
    fn resolve_preset_alone() {
        let l = labels(&[(LABEL_PRESET, "sns")]);
        assert_eq!(
            RetrySchedule::resolve(None, &l).unwrap(),
            Some(RetrySchedule::sns())
        );
    }

    #[test]
    fn resolve_precedence_preset_then_policy_then_labels() {
        let l = labels(&[(LABEL_PRESET, "sns"), (LABEL_MAX_BACKOFF, "5m")]);
        // The policy sets the minimum (overriding the preset's 20 s) and the maximum, which the
        // label overrides in turn.
        let s = RetrySchedule::resolve(Some((Some(S(30)), Some(S(60)))), &l)
            .unwrap()
            .unwrap();
        assert_eq!(s.minimum_backoff, S(30));
        assert_eq!(s.maximum_backoff, S(300));
        assert_eq!(s.immediate_retries, 3);
        assert_eq!(s.max_retry_duration, Some(S(23 * 24 * 3600)));
        // A policy field left unset keeps the preset's value.
        let s = RetrySchedule::resolve(Some((Some(S(30)), None)), &l)
            .unwrap()
            .unwrap();
        assert_eq!(s.maximum_backoff, S(300));
        let only_preset = labels(&[(LABEL_PRESET, "sns")]);
        let s = RetrySchedule::resolve(Some((None, None)), &only_preset)
            .unwrap()
            .unwrap();
        assert_eq!(s.maximum_backoff, S(1200));
    }

    #[test]
    fn resolve_labels_without_preset_start_from_pubsub_defaults() {
        let l = labels(&[(LABEL_IMMEDIATE, "2")]);
        let s = RetrySchedule::resolve(None, &l).unwrap().unwrap();
        assert_eq!(
            s,
            RetrySchedule {
                immediate_retries: 2,
                ..RetrySchedule::from_policy(None, None).unwrap()
            }
        );
    }

    #[test]
    fn resolve_reads_every_label() {
        let l = labels(&[
            (LABEL_IMMEDIATE, "1"),
            (LABEL_FIXED, "4"),
            (LABEL_FIXED_INTERVAL, "1m30s"),
            (LABEL_MIN_BACKOFF, "2m"),
            (LABEL_MAX_BACKOFF, "1h"),
            (LABEL_MAX_DURATION, "none"),
        ]);
        let s = RetrySchedule::resolve(Some((Some(S(1)), Some(S(2)))), &l)
            .unwrap()
            .unwrap();
        let expected = RetrySchedule {
            immediate_retries: 1,
            fixed_retries: 4,
            fixed_interval: S(90),
            minimum_backoff: S(120),
            maximum_backoff: S(3600),
            max_retry_duration: None,
        };
        assert_eq!(s, expected);
    }

    #[test]
    fn resolve_rejects_unknown_retry_labels_by_name() {
        let l = labels(&[(LABEL_PRESET, "sns"), ("converge-retry-immediately", "3")]);
        let err = RetrySchedule::resolve(None, &l).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        assert!(
            err.to_string()
                .starts_with("Unknown label converge-retry-immediately"),
            "{err}"
        );
    }

    #[test]
    fn resolve_rejects_bad_values_naming_the_label() {
        let cases = [
            (LABEL_PRESET, "aws"),
            (LABEL_IMMEDIATE, "-1"),
            (LABEL_IMMEDIATE, "101"),
            (LABEL_IMMEDIATE, ""),
            (LABEL_FIXED, "10001"),
            (LABEL_FIXED, "+3"),
            (LABEL_FIXED_INTERVAL, "1d1s"),
            (LABEL_MIN_BACKOFF, "ten"),
            (LABEL_MAX_BACKOFF, "25h"),
            (LABEL_MAX_DURATION, "0s"),
            (LABEL_MAX_DURATION, "32d"),
            (LABEL_MAX_DURATION, "never"),
        ];
        for (key, value) in cases {
            let err = RetrySchedule::resolve(None, &labels(&[(key, value)])).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{key}={value}");
            assert!(err.to_string().contains(key), "{key}={value}: {err}");
        }
    }

    #[test]
    fn resolve_label_bounds_just_inside() {
        let l = labels(&[
            (LABEL_IMMEDIATE, "100"),
            (LABEL_FIXED, "10000"),
            (LABEL_FIXED_INTERVAL, "1d"),
            (LABEL_MAX_BACKOFF, "1d"),
            (LABEL_MAX_DURATION, "31d"),
        ]);
        let s = RetrySchedule::resolve(None, &l).unwrap().unwrap();
        assert_eq!(s.immediate_retries, 100);
        assert_eq!(s.fixed_retries, 10_000);
        assert_eq!(s.max_retry_duration, Some(MAX_RETRY_DURATION));
        let l = labels(&[(LABEL_MAX_DURATION, "1ms")]);
        let s = RetrySchedule::resolve(None, &l).unwrap().unwrap();
        assert_eq!(s.max_retry_duration, Some(Duration::from_millis(1)));
    }

    #[test]
    fn resolve_rejects_policy_out_of_range_even_with_labels() {
        let l = labels(&[(LABEL_PRESET, "sns")]);
        let err = RetrySchedule::resolve(Some((None, Some(S(601)))), &l).unwrap_err();
        assert!(
            err.to_string().contains("retry_policy.maximum_backoff"),
            "{err}"
        );
    }

    #[test]
    fn resolve_rejects_inverted_bounds_from_any_source() {
        let l = labels(&[(LABEL_MIN_BACKOFF, "20m")]);
        let err = RetrySchedule::resolve(None, &l).unwrap_err();
        assert!(err.to_string().contains(LABEL_MIN_BACKOFF), "{err}");
        assert!(err.to_string().contains("(10m)"), "{err}");
    }

    #[test]
    fn to_labels_round_trips_the_presets() {
        for schedule in [RetrySchedule::pubsub(), RetrySchedule::sns()] {
            let l: HashMap<String, String> = schedule.to_labels().into_iter().collect();
            assert_eq!(
                RetrySchedule::resolve(None, &l).unwrap(),
                Some(schedule.clone())
            );
        }
        let sns: HashMap<_, _> = RetrySchedule::sns().to_labels().into_iter().collect();
        assert_eq!(sns[LABEL_MAX_BACKOFF], "20m");
        assert_eq!(sns[LABEL_MAX_DURATION], "23d");
        let never = RetrySchedule::from_policy(None, None).unwrap().to_labels();
        assert!(never.contains(&(LABEL_MAX_DURATION.to_string(), "none".to_string())));
    }

    #[test]
    fn parses_label_durations() {
        let cases = [
            ("0s", Duration::ZERO),
            ("10s", S(10)),
            ("5m", S(300)),
            ("2h", S(7200)),
            ("7d", S(7 * 86_400)),
            ("1h30m", S(5400)),
            (
                "1d2h3m4s5ms",
                S(86_400 + 7200 + 180 + 4) + Duration::from_millis(5),
            ),
            ("1500ms", Duration::from_millis(1500)),
            ("90m", S(5400)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_label_duration(text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn rejects_malformed_label_durations() {
        for text in [
            "",
            "10",
            "s",
            "10x",
            "1.5s",
            "10S",
            "30m1h",
            "1m1m",
            "-1s",
            "1h 30m",
            "99999999999s",
        ] {
            let err = parse_label_duration(text).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{text}");
            assert!(
                err.to_string().contains(&format!("{text:?}")),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn formats_label_durations() {
        assert_eq!(format_label_duration(Duration::ZERO), "0s");
        assert_eq!(format_label_duration(S(5400)), "1h30m");
        assert_eq!(format_label_duration(S(23 * 86_400)), "23d");
        assert_eq!(
            format_label_duration(Duration::from_millis(1500)),
            "1s500ms"
        );
        assert_eq!(format_label_duration(Duration::from_micros(1)), "0s");
    }

    #[test]
    fn dedup_window_default_and_bounds() {
        assert_eq!(
            dedup_window_from_labels(&HashMap::new()).unwrap(),
            DEFAULT_DEDUP_WINDOW
        );
        let window = |v: &str| dedup_window_from_labels(&labels(&[(LABEL_DEDUP_WINDOW, v)]));
        assert_eq!(window("1m").unwrap(), S(60));
        assert_eq!(window("31d").unwrap(), S(31 * 86_400));
        for bad in ["59s", "31d1ms", "forever"] {
            let err = window(bad).unwrap_err();
            assert!(err.to_string().contains(LABEL_DEDUP_WINDOW), "{bad}: {err}");
        }
    }

    fn arb_schedule() -> impl Strategy<Value = RetrySchedule> {
        (
            0u32..5,
            0u32..5,
            0u64..120_000,
            0u64..600_000,
            0u64..86_400_000,
            prop::option::of(1u64..2_000_000_000),
        )
            .prop_map(|(immediate, fixed, interval, min, extra, max_duration)| {
                RetrySchedule {
                    immediate_retries: immediate,
                    fixed_retries: fixed,
                    fixed_interval: Duration::from_millis(interval),
                    minimum_backoff: Duration::from_millis(min),
                    maximum_backoff: Duration::from_millis(min + extra),
                    max_retry_duration: max_duration.map(Duration::from_millis),
                }
            })
    }

    proptest! {
        #[test]
        fn immediate_retries_have_zero_delay(s in arb_schedule(), jitter in 0.0f64..1.0) {
            for n in 1..=s.immediate_retries {
                prop_assert_eq!(s.delay(n, jitter), Duration::ZERO);
            }
        }

        #[test]
        fn backoff_never_leaves_its_bounds(s in arb_schedule(), n in 1u32..200, jitter in 0.0f64..1.0) {
            let delay = s.delay(n, jitter);
            if n > s.immediate_retries + s.fixed_retries {
                prop_assert!(delay >= s.minimum_backoff && delay <= s.maximum_backoff, "{:?}", delay);
                let nominal = s.nominal_delay(n);
                prop_assert!(delay <= nominal && delay >= (nominal / 2).max(s.minimum_backoff));
            }
        }

        #[test]
        fn backoff_is_monotone_for_a_given_jitter(s in arb_schedule(), n in 1u32..200, jitter in 0.0f64..1.0) {
            let first_backoff = s.immediate_retries + s.fixed_retries + 1;
            let n = n.max(first_backoff);
            prop_assert!(s.delay(n, jitter) <= s.delay(n + 1, jitter));
            prop_assert!(s.nominal_delay(n) <= s.nominal_delay(n + 1));
        }

        #[test]
        fn gives_up_exactly_after_the_max_duration(
            s in arb_schedule(), n in 1u32..200, since_ms in 0u64..3_000_000_000, jitter in 0.0f64..1.0,
        ) {
            let since = Duration::from_millis(since_ms);
            let decision = s.decide(n, since, jitter);
            match s.max_retry_duration {
                Some(max) if since >= max => prop_assert_eq!(decision, RetryDecision::GiveUp),
                Some(max) => {
                    let delay = delay_of(decision);
                    prop_assert!(since + delay <= max);
                    prop_assert_eq!(delay, s.delay(n, jitter).min(max - since));
                }
                None => prop_assert_eq!(decision, RetryDecision::RetryAfter(s.delay(n, jitter))),
            }
        }

        #[test]
        fn labels_reproduce_the_schedule(s in arb_schedule()) {
            prop_assume!(s.maximum_backoff <= MAX_LABEL_BACKOFF);
            let l: HashMap<String, String> = s.to_labels().into_iter().collect();
            prop_assert_eq!(RetrySchedule::resolve(None, &l).unwrap(), Some(s));
        }

        #[test]
        fn formatted_durations_parse_back(ms in 0u64..10_000_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_label_duration(&format_label_duration(d)).unwrap(), d);
        }
    }
}
