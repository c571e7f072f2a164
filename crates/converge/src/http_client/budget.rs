//! The retry budget: a cap on retries shared by every call of a client.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A token bucket limiting retries across all calls of one client, so that a failing
/// dependency gets a bounded trickle of retries instead of a storm that keeps it down.
///
/// Each call deposits `ratio` tokens (on its first attempt) and the bucket also refills at
/// `min_per_second` tokens a second; each retry takes one token, and a retry without a whole
/// token is not made (the call returns its last outcome). The bucket holds at most `burst`
/// tokens and starts full. So in a sustained outage, retries are at most `ratio` of the calls
/// plus `min_per_second` (the floor that lets a client with little traffic still retry); the
/// scheme is that of Finagle's `RetryBudget` and Envoy's retry budgets (gRPC's retry throttling
/// is a close cousin).
///
/// ```
/// use converge::http_client::RetryBudget;
///
/// // At most 10% of calls retried, plus 1 retry a second, in bursts of at most 20.
/// let budget = RetryBudget::new(0.1, 1.0, 20.0);
/// assert!(budget.try_withdraw());
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    refilled: Instant,
}

impl RetryBudget {
    /// A budget of `ratio` retries per call plus `min_per_second`, holding at most `burst`
    /// tokens. Negative or NaN arguments are read as 0.
    pub fn new(ratio: f64, min_per_second: f64, burst: f64) -> Self {
        let clean = |x: f64| if x > 0.0 { x } else { 0.0 };
        let burst = clean(burst);
        Self {
            ratio: clean(ratio),
            min_per_second: clean(min_per_second),
            burst,
            state: Mutex::new(State {
                tokens: burst,
                refilled: Instant::now(),
            }),
        }
    }

    /// A budget that never refuses a retry (the deadline and the attempt limit still apply).
    pub fn unlimited() -> Self {
        Self::new(0.0, 0.0, f64::INFINITY)
    }

    /// Counts one call (its first attempt): deposits `ratio` tokens.
    pub fn record_call(&self) {
        let mut state = self.state.lock();
        self.refill(&mut state);
        state.tokens = (state.tokens + self.ratio).min(self.burst);
    }

    /// Takes one token for a retry; `false` (and nothing taken) when less than one is left.
    pub fn try_withdraw(&self) -> bool {
        let mut state = self.state.lock();
        self.refill(&mut state);
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The tokens available now (whole tokens are retries).
    pub fn available(&self) -> f64 {
        let mut state = self.state.lock();
        self.refill(&mut state);
        state.tokens
    }

    fn refill(&self, state: &mut State) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(state.refilled);
        state.refilled = now;
        if self.min_per_second > 0.0 && elapsed > Duration::ZERO {
            state.tokens =
                (state.tokens + elapsed.as_secs_f64() * self.min_per_second).min(self.burst);
        }
    }
}

impl Default for RetryBudget {
    /// Finagle's defaults: 20% of calls plus 10 retries a second, in bursts of up to 100.
    fn default() -> Self {
        Self::new(0.2, 10.0, 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_ratio_of_calls_once_the_burst_is_spent() {
        let budget = RetryBudget::new(0.25, 0.0, 2.0);
        assert!(budget.try_withdraw());
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
        let mut granted = 0;
        for _ in 0..100 {
            budget.record_call();
            if budget.try_withdraw() {
                granted += 1;
            }
        }
        assert_eq!(granted, 25);
    }

    #[test]
    fn burst_caps_the_savings() {
        let budget = RetryBudget::new(1.0, 0.0, 3.0);
        for _ in 0..100 {
            budget.record_call();
        }
        assert_eq!(budget.available(), 3.0);
    }

    #[test]
    fn unlimited_never_refuses() {
        let budget = RetryBudget::unlimited();
        assert!((0..10_000).all(|_| budget.try_withdraw()));
    }

    #[test]
    fn floor_refills_over_time() {
        let budget = RetryBudget::new(0.0, 1000.0, 1.0);
        assert!(budget.try_withdraw());
        // Waits for the condition rather than for a fixed time.
        let start = Instant::now();
        while !budget.try_withdraw() {
            assert!(start.elapsed() < Duration::from_secs(10), "never refilled");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
