//! How long to wait before each retry: the broker's schedules with full jitter.

use std::time::Duration;

use converge_core::retry::RetrySchedule;
use rand::Rng;

/// The waits between attempts of one call.
///
/// The phases are those of the broker's [`RetrySchedule`] (and its presets are reused as they
/// are): `immediate_retries` with no wait, `fixed_retries` each after `fixed_interval`, then
/// exponential backoff from `minimum_backoff`, multiplied by the multiplier (2 unless set) at
/// each retry and capped at `maximum_backoff`.
///
/// Unlike the broker, which uses equal jitter (a redelivery never comes back almost at once),
/// backoff delays here use **full jitter**: a delay is uniform in `[0, nominal]`. For many
/// clients hammering one recovering server, full jitter spreads the retries best (the AWS
/// Architecture Blog's comparison, "Exponential Backoff And Jitter"), and a client call has a
/// deadline, so an occasional short wait costs little. Immediate and fixed retries are not
/// jittered: they are explicit promises, as in the broker.
///
/// The presets and [`Backoff::exponential`] start with one immediate retry, because a second
/// attempt often reaches a healthier server or takes a healthier path.
///
/// ```
/// use std::time::Duration;
/// use converge::http_client::Backoff;
///
/// let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5));
/// assert_eq!(backoff.delay(1, 0.7), Duration::ZERO); // the first retry is immediate
/// assert_eq!(backoff.nominal_delay(2), Duration::from_millis(100));
/// assert_eq!(backoff.nominal_delay(3), Duration::from_millis(200));
/// assert!(backoff.delay(3, 0.5) <= Duration::from_millis(200));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    schedule: RetrySchedule,
    multiplier: f64,
}

impl Backoff {
    /// The broker's `pubsub` preset (10 s doubling to 10 min, for at most 7 days), with the
    /// first retry immediate.
    pub fn pubsub() -> Self {
        Self::from_schedule(RetrySchedule::pubsub()).with_immediate_retries(1)
    }

    /// The broker's `sns` preset: 3 immediate retries, 3 after 20 s, then 20 s doubling to
    /// 20 min, for at most 23 days.
    pub fn sns() -> Self {
        Self::from_schedule(RetrySchedule::sns())
    }

    /// A broker schedule as it is (`immediate_retries: 0` means the first retry waits). Its
    /// `max_retry_duration`, if any, also bounds each call, next to the call's deadline.
    pub fn from_schedule(schedule: RetrySchedule) -> Self {
        Self {
            schedule,
            multiplier: 2.0,
        }
    }

    /// One immediate retry, then `minimum` growing by the multiplier (2 unless
    /// [`Backoff::with_multiplier`]) up to `maximum`. Short ones suit calls made inside a
    /// request or a handler. A `maximum` below `minimum` is raised to it.
    pub fn exponential(minimum: Duration, maximum: Duration) -> Self {
        Self::from_schedule(RetrySchedule {
            immediate_retries: 1,
            fixed_retries: 0,
            fixed_interval: Duration::ZERO,
            minimum_backoff: minimum,
            maximum_backoff: maximum.max(minimum),
            max_retry_duration: None,
        })
    }

    /// Sets the growth factor of the backoff phase; values below 1 (and NaN) are read as 1 (a
    /// constant backoff), since a shrinking backoff would defeat its purpose.
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier >= 1.0 { multiplier } else { 1.0 };
        self
    }

    /// Sets the number of retries made at once.
    pub fn with_immediate_retries(mut self, count: u32) -> Self {
        self.schedule.immediate_retries = count;
        self
    }

    /// The underlying schedule.
    pub fn schedule(&self) -> &RetrySchedule {
        &self.schedule
    }

    /// The growth factor of the backoff phase.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// The most retry number `retry` (1 = the first retry) may wait: the cap of its jitter.
    pub fn nominal_delay(&self, retry: u32) -> Duration {
        let s = &self.schedule;
        let first_backoff = s
            .immediate_retries
            .saturating_add(s.fixed_retries)
            .saturating_add(1);
        let retry = retry.max(1);
        if retry < first_backoff || self.multiplier == 2.0 {
            // The broker's own computation (and its phases).
            return s.nominal_delay(retry);
        }
        let step = retry - first_backoff;
        let factor = self
            .multiplier
            .powi(i32::try_from(step).unwrap_or(i32::MAX));
        let seconds = s.minimum_backoff.as_secs_f64() * factor;
        if !seconds.is_finite() || seconds >= s.maximum_backoff.as_secs_f64() {
            s.maximum_backoff
        } else {
            Duration::from_secs_f64(seconds).min(s.maximum_backoff)
        }
    }

    /// Whether retry number `retry` is in the backoff phase (and so is jittered).
    fn is_backoff(&self, retry: u32) -> bool {
        let s = &self.schedule;
        u64::from(retry.max(1)) > u64::from(s.immediate_retries) + u64::from(s.fixed_retries)
    }

    /// The wait before retry number `retry` for a uniform sample `jitter` in `[0, 1)` (values
    /// outside are clamped): `nominal * jitter` in the backoff phase, the schedule's fixed
    /// waits before it. Pure, so schedules can be tested exactly.
    pub fn delay(&self, retry: u32, jitter: f64) -> Duration {
        let nominal = self.nominal_delay(retry);
        if !self.is_backoff(retry) {
            return nominal;
        }
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        nominal.mul_f64(jitter).min(nominal)
    }

    /// [`Backoff::delay`] with a sample drawn from `rng`.
    pub fn sample(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        self.delay(retry, rng.random::<f64>())
    }
}

impl Default for Backoff {
    /// 100 ms doubling to 5 s after one immediate retry: a call that someone waits for.
    fn default() -> Self {
        Self::exponential(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn presets_start_immediately_then_follow_the_broker_caps() {
        let pubsub = Backoff::pubsub();
        let caps: Vec<_> = (1..=8).map(|n| pubsub.nominal_delay(n)).collect();
        assert_eq!(
            caps,
            [S(0), S(10), S(20), S(40), S(80), S(160), S(320), S(600)]
        );
        assert_eq!(pubsub.nominal_delay(50), S(600));
        assert_eq!(pubsub.schedule().max_retry_duration, Some(S(7 * 86_400)));

        let sns = Backoff::sns();
        let caps: Vec<_> = (1..=10).map(|n| sns.nominal_delay(n)).collect();
        assert_eq!(
            caps,
            [
                S(0),
                S(0),
                S(0),
                S(20),
                S(20),
                S(20),
                S(20),
                S(40),
                S(80),
                S(160)
            ]
        );
        assert_eq!(sns.nominal_delay(100), S(1200));
        // Fixed retries are promises, not jittered.
        assert_eq!(sns.delay(4, 0.0), S(20));
        assert_eq!(sns.delay(7, 0.0), S(0));
    }

    #[test]
    fn first_retry_has_zero_delay_whatever_the_sample() {
        let mut rng = StdRng::seed_from_u64(7);
        for backoff in [Backoff::pubsub(), Backoff::sns(), Backoff::default()] {
            for _ in 0..100 {
                assert_eq!(backoff.sample(1, &mut rng), Duration::ZERO, "{backoff:?}");
            }
        }
    }

    #[test]
    fn full_jitter_spans_zero_to_the_cap_and_caps_grow() {
        let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2));
        let mut rng = StdRng::seed_from_u64(42);
        let mut previous_cap = Duration::ZERO;
        for retry in 2..=8 {
            let cap = backoff.nominal_delay(retry);
            assert!(cap >= previous_cap, "caps never shrink");
            previous_cap = cap;
            let samples: Vec<_> = (0..2000).map(|_| backoff.sample(retry, &mut rng)).collect();
            assert!(samples.iter().all(|d| *d <= cap), "retry {retry}");
            // Full jitter: samples reach both ends of [0, cap], not only the upper half.
            assert!(samples.iter().any(|d| *d < cap / 10), "retry {retry}");
            assert!(samples.iter().any(|d| *d > cap * 9 / 10), "retry {retry}");
        }
        assert_eq!(backoff.nominal_delay(2), Duration::from_millis(100));
        assert_eq!(backoff.nominal_delay(6), Duration::from_millis(1600));
        assert_eq!(backoff.nominal_delay(7), Duration::from_secs(2));
        assert_eq!(backoff.delay(4, 0.5), Duration::from_millis(200));
    }

    #[test]
    fn same_seed_same_schedule() {
        let backoff = Backoff::pubsub();
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (1..20)
                .map(|n| backoff.sample(n, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn custom_multiplier() {
        let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10))
            .with_multiplier(3.0);
        let caps: Vec<_> = (1..=6).map(|n| backoff.nominal_delay(n)).collect();
        assert_eq!(
            caps,
            [0, 100, 300, 900, 2700, 8100].map(Duration::from_millis)
        );
        assert_eq!(backoff.nominal_delay(7), S(10));
        assert_eq!(backoff.nominal_delay(u32::MAX), S(10));
        let constant = Backoff::exponential(S(1), S(10)).with_multiplier(0.5);
        assert_eq!(constant.multiplier(), 1.0);
        assert_eq!(constant.nominal_delay(9), S(1));
        let nan = Backoff::exponential(S(1), S(10)).with_multiplier(f64::NAN);
        assert_eq!(nan.nominal_delay(9), S(1));
    }

    #[test]
    fn out_of_range_samples_are_clamped() {
        let backoff = Backoff::exponential(S(1), S(1));
        assert_eq!(backoff.delay(2, 7.0), S(1));
        assert_eq!(backoff.delay(2, -1.0), Duration::ZERO);
        assert_eq!(backoff.delay(2, f64::NAN), Duration::ZERO);
    }
}
