//! The congestion window of one push subscription: how many requests may be in flight.
//!
//! The real service "dynamically adjusts the rate of push requests based on the rate at which it
//! receives success responses"; converge does it the way TCP does, because the problem is the same
//! (find what the receiver can take without being told):
//! - it starts at [`INITIAL_WINDOW`] and, in *slow start*, grows by one per success, so it doubles
//!   every round of successful requests;
//! - past the slow-start threshold it grows *additively*: by one per window's worth of successes;
//! - a failure (error status, timeout, refused connection) halves the window (never below 1) and
//!   sets the threshold to the new size, so growth after a failure is additive. As in TCP's fast
//!   recovery, the window halves at most once per round: failures of requests sent before the
//!   last decrease (they were in flight together, and describe the same trouble) do not halve it
//!   again. Each decrease starts a new *epoch*; a request remembers the epoch it was sent in;
//! - it never exceeds [`MAX_WINDOW`].

/// The window a subscription starts with.
pub const INITIAL_WINDOW: u32 = 1;
/// The window never grows beyond this many concurrent requests.
pub const MAX_WINDOW: u32 = 1000;

/// The window and its growth state. Pure: the worker feeds it outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Requests allowed in flight.
    size: u32,
    /// Below this, slow start; at or above, additive increase.
    threshold: u32,
    /// Successes counted towards the next additive increase.
    credit: u32,
    /// Decreases so far; failures of requests sent in an older epoch are not counted again.
    epoch: u64,
}

impl Default for Window {
    fn default() -> Self {
        Self::new()
    }
}

impl Window {
    /// A fresh window in slow start.
    pub fn new() -> Self {
        Self {
            size: INITIAL_WINDOW,
            threshold: MAX_WINDOW,
            credit: 0,
            epoch: 0,
        }
    }

    /// The current epoch, to remember with each request sent.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Requests allowed in flight now (1 to [`MAX_WINDOW`]).
    pub fn size(&self) -> u32 {
        debug_assert!((1..=MAX_WINDOW).contains(&self.size));
        self.size
    }

    /// A request succeeded: grow.
    pub fn on_success(&mut self) {
        if self.size >= MAX_WINDOW {
            return;
        }
        if self.size < self.threshold {
            self.size += 1;
            return;
        }
        self.credit += 1;
        if self.credit >= self.size {
            self.credit = 0;
            self.size += 1;
        }
    }

    /// A request sent in epoch `sent_in` failed or timed out: halve and leave slow start, unless
    /// the window already halved since that request was sent.
    pub fn on_failure(&mut self, sent_in: u64) {
        debug_assert!(sent_in <= self.epoch, "a request from the future");
        if sent_in < self.epoch {
            return;
        }
        self.epoch += 1;
        self.size = (self.size / 2).max(1);
        self.threshold = self.size;
        self.credit = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_then_halving_then_additive() {
        let mut w = Window::new();
        for _ in 0..15 {
            w.on_success();
        }
        assert_eq!(w.size(), INITIAL_WINDOW + 15);
        let sent_in = w.epoch();
        w.on_failure(sent_in);
        assert_eq!(w.size(), (INITIAL_WINDOW + 15) / 2);
        w.on_failure(sent_in);
        assert_eq!(w.size(), (INITIAL_WINDOW + 15) / 2, "one halving per round");
        let before = w.size();
        for _ in 0..before {
            w.on_success();
        }
        assert_eq!(w.size(), before + 1, "one window of successes adds one");
    }

    #[test]
    fn never_below_one_nor_above_the_cap() {
        let mut w = Window::new();
        for _ in 0..10 {
            let epoch = w.epoch();
            w.on_failure(epoch);
        }
        assert_eq!(w.size(), 1);
        let mut w = Window::new();
        for _ in 0..5000 {
            w.on_success();
        }
        assert_eq!(w.size(), MAX_WINDOW);
    }
}
