//! What a subscriber holds: every message received and not yet settled, whether waiting for a
//! handler or being handled. It decides which message runs next (client-side flow control and
//! one message at a time per ordering key) and which leases to extend.
//!
//! Flow control is enforced here too, not only by the broker: an endpoint may ignore the
//! stream's limits or deliver past them (a reconnect hands over what the old stream had out),
//! and the limits promise the handler, not the wire, at most so much at once.
//!
//! Pure bookkeeping, no I/O: the receive loop acts on what it returns, which keeps the rules
//! testable without a broker.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::transport::{Disposition, IncomingMessage, ReceiveOptions};

/// A message received and not yet settled.
#[derive(Debug, Clone)]
pub struct Held {
    /// The lease.
    pub ack_id: String,
    /// The message as the handler sees it.
    pub message: IncomingMessage,
    /// Its size as flow control counts it (the encoded `PubsubMessage`).
    pub size: usize,
    /// Runs only after the previous message of its ordering key has been settled.
    pub ordered: bool,
}

/// A message handed to its handler: what is needed to settle it when the handler returns.
#[derive(Debug, Clone)]
pub struct Running {
    /// The lease.
    pub ack_id: String,
    /// Its size as flow control counts it.
    pub size: usize,
    /// The ordering key, if the message is ordered (`None` otherwise).
    pub ordered_key: Option<String>,
}

/// The messages a subscriber holds.
#[derive(Debug)]
pub struct Holdings {
    max_messages: usize,
    max_bytes: usize,
    running_messages: usize,
    running_bytes: usize,
    /// Messages allowed to run, in arrival order, waiting for flow-control room.
    ready: VecDeque<Held>,
    /// Ordering keys with a message ready or running; each holds the later messages of its
    /// key, which wait for that one to be settled.
    keys: HashMap<String, VecDeque<Held>>,
    /// Every held lease and when it was received, for extension.
    leases: HashMap<String, Instant>,
}

impl Holdings {
    /// Empty, with the limits of `options` (a limit of 0 counts as 1: nothing could ever run).
    pub fn new(options: &ReceiveOptions) -> Self {
        Self {
            max_messages: options.max_outstanding_messages.max(1),
            max_bytes: options.max_outstanding_bytes.max(1),
            running_messages: 0,
            running_bytes: 0,
            ready: VecDeque::new(),
            keys: HashMap::new(),
            leases: HashMap::new(),
        }
    }

    /// Takes a received message; it runs when its turn comes.
    pub fn receive(&mut self, held: Held, now: Instant) {
        self.leases.insert(held.ack_id.clone(), now);
        if held.ordered && !held.message.ordering_key.is_empty() {
            match self.keys.get_mut(&held.message.ordering_key) {
                Some(waiting) => {
                    waiting.push_back(held);
                    return;
                }
                None => {
                    self.keys
                        .insert(held.message.ordering_key.clone(), VecDeque::new());
                }
            }
        }
        self.ready.push_back(held);
    }

    /// The next message to hand to a handler, if flow control leaves room: fewer than the
    /// maximum running, and its bytes fit (a message larger than the byte limit runs alone).
    pub fn next_to_run(&mut self) -> Option<(Held, Running)> {
        let front = self.ready.front()?;
        let fits = self.running_messages == 0
            || (self.running_messages < self.max_messages
                && self.running_bytes + front.size <= self.max_bytes);
        if !fits {
            return None;
        }
        let held = self.ready.pop_front()?;
        self.running_messages += 1;
        self.running_bytes += held.size;
        let running = Running {
            ack_id: held.ack_id.clone(),
            size: held.size,
            ordered_key: (held.ordered && !held.message.ordering_key.is_empty())
                .then(|| held.message.ordering_key.clone()),
        };
        Some((held, running))
    }

    /// Records that a handler returned; returns the leases to nack besides its own: after a
    /// nack of an ordered message, the later messages of its key held here, which must not run
    /// before it is redelivered.
    pub fn finished(&mut self, running: &Running, disposition: Disposition) -> Vec<String> {
        self.leases.remove(&running.ack_id);
        self.running_messages = self.running_messages.saturating_sub(1);
        self.running_bytes = self.running_bytes.saturating_sub(running.size);
        let Some(key) = &running.ordered_key else {
            return Vec::new();
        };
        let Some(waiting) = self.keys.get_mut(key) else {
            return Vec::new();
        };
        if disposition == Disposition::Nack {
            let dropped: Vec<String> = waiting.drain(..).map(|h| h.ack_id).collect();
            self.keys.remove(key);
            for id in &dropped {
                self.leases.remove(id);
            }
            return dropped;
        }
        match waiting.pop_front() {
            Some(next) => self.ready.push_back(next),
            None => {
                self.keys.remove(key);
            }
        }
        Vec::new()
    }

    /// Gives up every message not handed to a handler (at shutdown): their leases, to nack.
    pub fn release_waiting(&mut self) -> Vec<String> {
        let released: Vec<String> = self
            .ready
            .drain(..)
            .chain(self.keys.drain().flat_map(|(_, waiting)| waiting))
            .map(|h| h.ack_id)
            .collect();
        for id in &released {
            self.leases.remove(id);
        }
        released
    }

    /// Messages held, running or waiting.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.leases.len()
    }

    /// The lease extensions due at `now`: each held lease is extended by `deadline`, but never
    /// past `max_extension` after it was received (whole seconds, as the API counts; a lease
    /// with less than a second left is left to run out). Grouped by seconds, one call each.
    pub fn extensions(
        &self,
        now: Instant,
        deadline: Duration,
        max_extension: Duration,
    ) -> BTreeMap<i32, Vec<String>> {
        let mut out: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for (ack_id, received) in &self.leases {
            let left = max_extension.saturating_sub(now.saturating_duration_since(*received));
            let seconds = deadline.min(left).as_secs().min(MAX_DEADLINE_SECS);
            if seconds >= 1 {
                // Bounded by MAX_DEADLINE_SECS just above.
                out.entry(seconds as i32).or_default().push(ack_id.clone());
            }
        }
        out
    }
}

/// The longest lease the API grants at once.
pub const MAX_DEADLINE_SECS: u64 = 600;

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn held(id: &str, key: &str, size: usize) -> Held {
        Held {
            ack_id: id.into(),
            message: IncomingMessage {
                message_id: id.into(),
                data: Default::default(),
                attributes: Default::default(),
                ordering_key: key.into(),
                publish_time: SystemTime::UNIX_EPOCH,
                delivery_attempt: None,
            },
            size,
            ordered: true,
        }
    }

    fn holdings(messages: usize, bytes: usize) -> Holdings {
        Holdings::new(&ReceiveOptions {
            max_outstanding_messages: messages,
            max_outstanding_bytes: bytes,
            max_lease_extension: Duration::from_secs(3600),
        })
    }

    fn run_all(h: &mut Holdings) -> Vec<Running> {
        std::iter::from_fn(|| h.next_to_run().map(|(_, r)| r)).collect()
    }

    #[test]
    fn flow_control_limits_messages_and_bytes() {
        let now = Instant::now();
        let mut h = holdings(2, 100);
        for id in ["a", "b", "c"] {
            h.receive(held(id, "", 10), now);
        }
        let running = run_all(&mut h);
        assert_eq!(running.len(), 2, "at most two at once");
        h.finished(&running[0], Disposition::Ack);
        assert_eq!(run_all(&mut h).len(), 1, "room for one more");

        let mut h = holdings(10, 100);
        h.receive(held("big", "", 80), now);
        h.receive(held("small", "", 30), now);
        let running = run_all(&mut h);
        assert_eq!(running.len(), 1, "30 more bytes do not fit");
        h.finished(&running[0], Disposition::Ack);
        assert_eq!(run_all(&mut h).len(), 1);

        let mut h = holdings(10, 100);
        h.receive(held("huge", "", 500), now);
        assert_eq!(run_all(&mut h).len(), 1, "an oversized message runs alone");
    }

    #[test]
    fn one_message_per_ordering_key_runs_at_a_time_in_order() {
        let now = Instant::now();
        let mut h = holdings(100, 1 << 20);
        for id in ["k1", "k2", "k3"] {
            h.receive(held(id, "key", 1), now);
        }
        h.receive(held("other", "other-key", 1), now);
        let running = run_all(&mut h);
        let ids: Vec<_> = running.iter().map(|r| r.ack_id.as_str()).collect();
        assert_eq!(ids, ["k1", "other"]);
        h.finished(&running[0], Disposition::Ack);
        let next = run_all(&mut h);
        assert_eq!(next[0].ack_id, "k2");
        h.finished(&next[0], Disposition::Ack);
        assert_eq!(run_all(&mut h)[0].ack_id, "k3");
    }

    #[test]
    fn a_nack_of_an_ordered_message_gives_up_the_rest_of_its_key() {
        let now = Instant::now();
        let mut h = holdings(100, 1 << 20);
        for id in ["k1", "k2", "k3"] {
            h.receive(held(id, "key", 1), now);
        }
        let running = run_all(&mut h);
        assert_eq!(h.finished(&running[0], Disposition::Nack), ["k2", "k3"]);
        assert!(run_all(&mut h).is_empty());
        assert_eq!(h.held(), 0);
        // The key is free again for its redelivery.
        h.receive(held("k1-again", "key", 1), now);
        assert_eq!(run_all(&mut h)[0].ack_id, "k1-again");
    }

    #[test]
    fn unordered_messages_with_a_key_run_concurrently() {
        let now = Instant::now();
        let mut h = holdings(100, 1 << 20);
        for id in ["a", "b"] {
            h.receive(
                Held {
                    ordered: false,
                    ..held(id, "key", 1)
                },
                now,
            );
        }
        assert_eq!(run_all(&mut h).len(), 2);
    }

    #[test]
    fn extensions_stop_at_the_maximum_extension() {
        let start = Instant::now();
        let mut h = holdings(100, 1 << 20);
        h.receive(held("old", "", 1), start);
        h.receive(held("new", "", 1), start + Duration::from_secs(50));
        let now = start + Duration::from_secs(55);
        let ext = h.extensions(now, Duration::from_secs(20), Duration::from_secs(60));
        assert_eq!(
            ext.get(&5).map(Vec::as_slice),
            Some(&["old".to_owned()][..])
        );
        assert_eq!(
            ext.get(&20).map(Vec::as_slice),
            Some(&["new".to_owned()][..])
        );
        let later = start + Duration::from_secs(60);
        let ext = h.extensions(later, Duration::from_secs(20), Duration::from_secs(60));
        assert!(ext.values().flatten().all(|id| id != "old"), "{ext:?}");
    }

    #[test]
    fn releasing_at_shutdown_returns_only_what_did_not_run() {
        let now = Instant::now();
        let mut h = holdings(1, 1 << 20);
        for id in ["a", "b", "c"] {
            h.receive(held(id, "", 1), now);
        }
        h.receive(held("k1", "key", 1), now);
        h.receive(held("k2", "key", 1), now);
        let running = run_all(&mut h);
        assert_eq!(running.len(), 1);
        let mut released = h.release_waiting();
        released.sort();
        assert_eq!(released, ["b", "c", "k1", "k2"]);
        assert_eq!(
            h.held(),
            1,
            "the running one stays until its handler returns"
        );
        assert!(h.finished(&running[0], Disposition::Ack).is_empty());
        assert_eq!(h.held(), 0);
    }
}
