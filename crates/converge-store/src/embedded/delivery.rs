//! One subscription's delivery state: which messages of its topic it is done with, which are
//! leased to a subscriber until when, which wait for their next attempt, and which are held back
//! behind an earlier message of the same ordering key.
//!
//! Cursors are message ids, not positions, because the topic log drops its oldest entries as
//! every subscription finishes with them.
//!
//! Only "done" is durable (as `Record::Done`); leases, attempt counts and backoff timers are
//! deliberately kept in memory. After a crash they are forgotten and every unfinished message
//! is delivered again: at-least-once allows redelivery, never loss.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use converge_core::filter::Filter;
use converge_core::subscription::AfterFailure;
use converge_core::{AckId, Result, StoredMessage, Subscription};
use tokio::sync::Notify;

use super::topic_log::{Entry, TopicLog};
use super::wal::RecordPos;

/// Where one unfinished, already-considered message stands.
#[derive(Debug, Clone)]
struct Delivery {
    /// Deliveries so far.
    attempts: u32,
    /// When it was first delivered (start of the retry schedule).
    first_attempt: SystemTime,
    state: DeliveryState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeliveryState {
    /// Leased to a subscriber until `deadline`; `lease` tells this delivery from older ones.
    Leased { lease: u64, deadline: SystemTime },
    /// Waiting to be delivered (again) at `ready_at`.
    Waiting { ready_at: SystemTime },
}

/// A message handed out by [`SubscriptionState::take`].
#[derive(Debug)]
pub struct Taken {
    /// The ack id of this delivery.
    pub ack_id: AckId,
    /// The message.
    pub message: StoredMessage,
    /// Deliveries so far, this one included.
    pub attempts: u32,
}

/// How much one pull may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakeLimits {
    /// Messages at most.
    pub max_messages: usize,
    /// Bytes at most (the first message is always taken).
    pub max_bytes: Option<usize>,
    /// Lease length; `None` for the subscription's ack deadline.
    pub ack_deadline: Option<Duration>,
}

/// The parts of an ack id: which subscription incarnation, which message, which lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckRef {
    /// Engine id of the subscription.
    pub subscription_id: u64,
    /// Message id.
    pub message_id: u64,
    /// Lease number.
    pub lease: u64,
}

impl AckRef {
    /// Encodes as an opaque ack id.
    pub fn encode(&self) -> AckId {
        AckId(format!(
            "{:x}-{:x}-{:x}",
            self.subscription_id, self.message_id, self.lease
        ))
    }

    /// Decodes an ack id; `None` for anything this engine did not issue.
    pub fn decode(ack_id: &AckId) -> Option<Self> {
        let mut parts = ack_id.0.split('-').map(|p| u64::from_str_radix(p, 16));
        let (Some(Ok(subscription_id)), Some(Ok(message_id)), Some(Ok(lease)), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(Self {
            subscription_id,
            message_id,
            lease,
        })
    }
}

/// The delivery state of one subscription.
#[derive(Debug)]
pub struct SubscriptionState {
    /// Engine id (changes when a subscription is deleted and created again).
    pub id: u64,
    /// Settings.
    pub settings: Subscription,
    /// Engine id of the topic log it reads.
    pub log_id: u64,
    /// Messages with ids above this belong to the subscription.
    pub start_after: u64,
    /// Last pull, ack or ack-deadline change (for the expiration policy).
    pub last_activity: SystemTime,
    /// Woken when something may have become deliverable.
    pub notify: Arc<Notify>,
    filter: Option<Filter>,
    /// Every message with an id up to here is done.
    floor: u64,
    /// Every message with an id up to here has been looked at (delivered, filtered or parked).
    cursor: u64,
    /// Every message with an id up to here has been through the filter (rejected ones are done).
    filtered_upto: u64,
    /// Done messages above the floor.
    done: BTreeSet<u64>,
    deliveries: HashMap<u64, Delivery>,
    /// Waiting messages by the time they become deliverable.
    ready: BTreeSet<(SystemTime, u64)>,
    /// Leased messages by deadline.
    leases: BTreeSet<(SystemTime, u64)>,
    /// With ordering: the one message of each key that is leased or waiting.
    busy_keys: HashMap<Arc<str>, u64>,
    /// With ordering: messages held back behind their key's busy message, in order.
    parked: HashMap<Arc<str>, VecDeque<u64>>,
    next_lease: u64,
}

impl SubscriptionState {
    /// A subscription that has seen nothing after `start_after`.
    pub fn new(
        id: u64,
        settings: Subscription,
        log_id: u64,
        start_after: u64,
        now: SystemTime,
    ) -> Result<Self> {
        let filter = parse_filter(&settings.filter)?;
        Ok(Self {
            id,
            settings,
            log_id,
            start_after,
            last_activity: now,
            notify: Arc::new(Notify::new()),
            filter,
            floor: start_after,
            cursor: start_after,
            filtered_upto: start_after,
            done: BTreeSet::new(),
            deliveries: HashMap::new(),
            ready: BTreeSet::new(),
            leases: BTreeSet::new(),
            busy_keys: HashMap::new(),
            parked: HashMap::new(),
            // Lease numbers start from the clock so that ack ids issued before a restart never
            // match a lease issued after it.
            next_lease: super::record::to_ns(now),
        })
    }

    /// Replaces the settings (the filter is immutable and stays).
    pub fn update(&mut self, settings: Subscription) {
        debug_assert_eq!(
            settings.filter, self.settings.filter,
            "filters are immutable"
        );
        self.settings = settings;
    }

    /// Every message up to `floor` is done (messages below it may already be gone from the log).
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Leases messages within `limits`: first those whose retry time has come, then new ones.
    /// `durable_end` hides messages not yet durable; `load` reads a message from the journal.
    pub fn take(
        &mut self,
        log: &TopicLog,
        limits: TakeLimits,
        now: SystemTime,
        durable_end: RecordPos,
        load: &mut dyn FnMut(&Entry) -> Result<StoredMessage>,
    ) -> Result<Vec<Taken>> {
        let deadline = now + limits.ack_deadline.unwrap_or(self.settings.ack_deadline);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        // The first message always goes, whatever its size, or a large one would never leave.
        let fits = |out: &Vec<Taken>, bytes: usize, size: usize| {
            out.is_empty() || limits.max_bytes.is_none_or(|max| bytes + size <= max)
        };
        while out.len() < limits.max_messages {
            let Some(&(ready_at, id)) = self.ready.first() else {
                break;
            };
            if ready_at > now {
                break;
            }
            let Some(entry) = log.get(id) else {
                // Cannot happen while the floor holds the entry; stay safe if it does.
                debug_assert!(false, "waiting message {id} missing from its topic log");
                self.ready.pop_first();
                self.deliveries.remove(&id);
                continue;
            };
            let message = load(entry)?;
            if !fits(&out, bytes, message.size()) {
                return Ok(self.finish_take(out, now));
            }
            self.ready.pop_first();
            bytes += message.size();
            out.push(self.lease(id, message, now, deadline));
        }
        while out.len() < limits.max_messages {
            let Some(entry) = log.first_after(self.cursor) else {
                break;
            };
            if entry.pos >= durable_end {
                break;
            }
            if self.done.contains(&entry.id) {
                self.cursor = entry.id;
                continue;
            }
            let message = load(entry)?;
            if !fits(&out, bytes, message.size()) {
                break;
            }
            self.cursor = entry.id;
            if let Some(filter) = &self.filter
                && entry.id > self.filtered_upto
                && !filter.matches(&message.attributes)
            {
                // Messages a filter rejects are acknowledged at once, as Pub/Sub does. Not
                // persisted: the filter is immutable, so a replay rejects them again.
                self.complete(log, entry.id, now);
                metrics::counter!("converge_messages_filtered_total").increment(1);
                continue;
            }
            if self.settings.enable_message_ordering && !entry.ordering_key.is_empty() {
                if self.busy_keys.contains_key(&entry.ordering_key) {
                    self.parked
                        .entry(entry.ordering_key.clone())
                        .or_default()
                        .push_back(entry.id);
                    continue;
                }
                self.busy_keys.insert(entry.ordering_key.clone(), entry.id);
            }
            bytes += message.size();
            out.push(self.lease(entry.id, message, now, deadline));
        }
        Ok(self.finish_take(out, now))
    }

    fn finish_take(&mut self, out: Vec<Taken>, now: SystemTime) -> Vec<Taken> {
        if !out.is_empty() {
            self.last_activity = now;
        }
        out
    }

    /// Runs the filter over durable messages nobody has looked at yet, so that the ones it
    /// rejects leave the backlog before anyone pulls (an operator watching the backlog should
    /// see only what will be delivered). Returns how many it rejected.
    pub fn filter_ahead(
        &mut self,
        log: &TopicLog,
        now: SystemTime,
        durable_end: RecordPos,
        load: &mut dyn FnMut(&Entry) -> Result<StoredMessage>,
    ) -> Result<u64> {
        let Some(filter) = &self.filter else {
            return Ok(0);
        };
        let mut upto = self.filtered_upto.max(self.cursor);
        let mut rejected = Vec::new();
        for entry in log.iter_after(upto) {
            if entry.pos >= durable_end {
                break;
            }
            upto = entry.id;
            if self.done.contains(&entry.id) {
                continue;
            }
            if !filter.matches(&load(entry)?.attributes) {
                rejected.push(entry.id);
            }
        }
        self.filtered_upto = upto;
        for &id in &rejected {
            self.complete(log, id, now);
        }
        if !rejected.is_empty() {
            metrics::counter!("converge_messages_filtered_total").increment(rejected.len() as u64);
        }
        Ok(rejected.len() as u64)
    }

    fn lease(
        &mut self,
        id: u64,
        message: StoredMessage,
        now: SystemTime,
        deadline: SystemTime,
    ) -> Taken {
        let lease = self.next_lease;
        self.next_lease += 1;
        let delivery = self.deliveries.entry(id).or_insert(Delivery {
            attempts: 0,
            first_attempt: now,
            state: DeliveryState::Waiting { ready_at: now },
        });
        if delivery.attempts == 0 {
            delivery.first_attempt = now;
        }
        delivery.attempts += 1;
        delivery.state = DeliveryState::Leased { lease, deadline };
        self.leases.insert((deadline, id));
        Taken {
            ack_id: AckRef {
                subscription_id: self.id,
                message_id: id,
                lease,
            }
            .encode(),
            message,
            attempts: delivery.attempts,
        }
    }

    /// The message id of a current lease, or `None` if the ack id is stale or foreign.
    ///
    /// With exactly-once delivery a lease past its deadline is no longer current, even before
    /// the engine has noticed it expired: the message may be delivered again at any moment, so
    /// the ack must be refused rather than appear to succeed.
    pub fn live_lease(&self, ack: &AckRef, now: SystemTime) -> Option<u64> {
        if ack.subscription_id != self.id {
            return None;
        }
        match self.deliveries.get(&ack.message_id)?.state {
            DeliveryState::Leased { lease, deadline }
                if lease == ack.lease && (!self.settings.exactly_once || deadline > now) =>
            {
                Some(ack.message_id)
            }
            _ => None,
        }
    }

    /// Moves a current lease's deadline to `deadline`.
    pub fn extend(&mut self, id: u64, deadline: SystemTime) {
        let Some(d) = self.deliveries.get_mut(&id) else {
            return;
        };
        let DeliveryState::Leased {
            lease,
            deadline: old,
        } = d.state
        else {
            return;
        };
        self.leases.remove(&(old, id));
        self.leases.insert((deadline, id));
        d.state = DeliveryState::Leased { lease, deadline };
    }

    /// Puts a message back to wait until `ready_at` (used when its dead-letter topic is missing).
    pub fn wait(&mut self, id: u64, ready_at: SystemTime) {
        let Some(d) = self.deliveries.get_mut(&id) else {
            return;
        };
        if let DeliveryState::Leased { deadline, .. } = d.state {
            self.leases.remove(&(deadline, id));
        }
        d.state = DeliveryState::Waiting { ready_at };
        self.ready.insert((ready_at, id));
    }

    /// Messages whose lease has expired by `now`; they are no longer leased and must each go
    /// through [`Self::fail`].
    pub fn expired_leases(&mut self, now: SystemTime) -> Vec<u64> {
        let mut expired = Vec::new();
        while let Some(&(deadline, id)) = self.leases.first() {
            if deadline > now {
                break;
            }
            self.leases.pop_first();
            expired.push(id);
        }
        expired
    }

    /// A delivery failed (nack, or lease expired): decides what happens next following the
    /// dead-letter policy and the retry schedule. `jitter` is a sample in [0, 1).
    pub fn fail(&mut self, id: u64, now: SystemTime, jitter: f64) -> AfterFailure {
        let Some(d) = self.deliveries.get_mut(&id) else {
            return AfterFailure::Retry { ready_at: now };
        };
        if let DeliveryState::Leased { deadline, .. } = d.state {
            self.leases.remove(&(deadline, id));
        }
        let outcome = self
            .settings
            .after_failure(d.attempts, d.first_attempt, now, jitter);
        if let AfterFailure::Retry { ready_at } = outcome {
            d.state = DeliveryState::Waiting { ready_at };
            self.ready.insert((ready_at, id));
        }
        outcome
    }

    /// The subscription is done with message `id` (acknowledged, filtered out, dead-lettered,
    /// expired, or replayed as done).
    pub fn complete(&mut self, log: &TopicLog, id: u64, now: SystemTime) {
        if id <= self.floor || self.done.contains(&id) {
            return;
        }
        if let Some(d) = self.deliveries.remove(&id) {
            match d.state {
                DeliveryState::Leased { deadline, .. } => self.leases.remove(&(deadline, id)),
                DeliveryState::Waiting { ready_at } => self.ready.remove(&(ready_at, id)),
            };
        }
        if let Some(entry) = log.get(id) {
            self.release_key(&entry.ordering_key, id, now);
        }
        self.done.insert(id);
        self.advance_floor(log);
    }

    /// With ordering, the key's next parked message becomes deliverable once `id` is done.
    fn release_key(&mut self, key: &Arc<str>, id: u64, now: SystemTime) {
        if key.is_empty() {
            return;
        }
        if self.busy_keys.get(key) != Some(&id) {
            // A parked message finished early (retention): just forget it.
            if let Some(queue) = self.parked.get_mut(key) {
                queue.retain(|parked| *parked != id);
            }
            return;
        }
        self.busy_keys.remove(key);
        let Some(queue) = self.parked.get_mut(key) else {
            return;
        };
        let Some(next) = queue.pop_front() else {
            return;
        };
        if queue.is_empty() {
            self.parked.remove(key);
        }
        self.busy_keys.insert(key.clone(), next);
        self.deliveries.insert(
            next,
            Delivery {
                attempts: 0,
                first_attempt: now,
                state: DeliveryState::Waiting { ready_at: now },
            },
        );
        self.ready.insert((now, next));
    }

    fn advance_floor(&mut self, log: &TopicLog) {
        while let Some(next) = log.first_after(self.floor) {
            if !self.done.remove(&next.id) {
                break;
            }
            self.floor = next.id;
        }
        // Done ids below the floor can be left over when the log dropped entries (retention).
        while self.done.first().is_some_and(|&id| id <= self.floor) {
            self.done.pop_first();
        }
        self.cursor = self.cursor.max(self.floor);
    }

    /// Completes every message published before `cutoff` (retention of unacknowledged messages).
    /// Returns how many were dropped.
    pub fn expire_before(&mut self, log: &TopicLog, cutoff: SystemTime, now: SystemTime) -> u64 {
        let old: Vec<u64> = log
            .iter_after(self.floor)
            .take_while(|e| e.publish_time < cutoff)
            .filter(|e| !self.done.contains(&e.id))
            .map(|e| e.id)
            .collect();
        for &id in &old {
            self.cursor = self.cursor.max(id);
            self.complete(log, id, now);
        }
        old.len() as u64
    }

    /// What a snapshot keeps of this subscription: the floor and the done set above it.
    ///
    /// Messages a filter rejected count as done here although they are never written as
    /// `Record::Done`: the filter is immutable, so treating them as done is what a replay would
    /// conclude again.
    pub fn durable_progress(&self) -> (u64, Vec<u64>) {
        (self.floor, self.done.iter().copied().collect())
    }

    /// Restores what [`Self::durable_progress`] captured. The floor is taken as is: a Seek may
    /// have moved it below `start_after` (messages retained from before the subscription).
    pub fn restore_progress(&mut self, floor: u64, done: BTreeSet<u64>) {
        self.floor = floor;
        self.cursor = self.floor;
        self.filtered_upto = self.filtered_upto.min(self.floor);
        self.done = done.into_iter().filter(|&id| id > self.floor).collect();
    }

    /// Whether the subscription is done with message `id` (acknowledged, or below its floor).
    pub fn is_done(&self, id: u64) -> bool {
        id <= self.floor || self.done.contains(&id)
    }

    /// Replaces the acknowledgement state (Seek): afterwards exactly the messages up to `floor`
    /// and those in `done` count as done. Leases, retries and ordering holds are dropped, so
    /// every message made unacknowledged is delivered again (and a filter judges it again).
    pub fn seek_to(&mut self, log: &TopicLog, floor: u64, done: BTreeSet<u64>) {
        self.deliveries.clear();
        self.ready.clear();
        self.leases.clear();
        self.busy_keys.clear();
        self.parked.clear();
        self.floor = floor;
        self.cursor = floor;
        self.filtered_upto = floor;
        self.done = done.into_iter().filter(|&id| id > floor).collect();
        self.advance_floor(log);
    }

    /// Drops the whole backlog up to `upto` (detach).
    pub fn clear(&mut self, upto: u64) {
        self.deliveries.clear();
        self.ready.clear();
        self.leases.clear();
        self.busy_keys.clear();
        self.parked.clear();
        self.done.clear();
        self.floor = self.floor.max(upto);
        self.cursor = self.cursor.max(upto);
        self.filtered_upto = self.filtered_upto.max(upto);
    }

    /// The earliest time at which something becomes deliverable without a new publish: a retry
    /// coming due, or a lease expiring.
    pub fn next_due(&self) -> Option<SystemTime> {
        let ready = self.ready.first().map(|(t, _)| *t);
        let lease = self.leases.first().map(|(t, _)| *t);
        match (ready, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Unfinished messages and the publish time of the oldest one.
    pub fn backlog(&self, log: &TopicLog) -> (u64, Option<SystemTime>) {
        if self.settings.detached {
            return (0, None);
        }
        let count = log.count_after(self.floor).saturating_sub(self.done.len()) as u64;
        let oldest = log
            .iter_after(self.floor)
            .find(|e| !self.done.contains(&e.id))
            .map(|e| e.publish_time);
        (count, oldest)
    }
}

/// Parses a subscription's filter text; empty means none.
pub fn parse_filter(text: &str) -> Result<Option<Filter>> {
    if text.is_empty() {
        return Ok(None);
    }
    Filter::parse(text)
        .map(Some)
        .map_err(|e| converge_core::Error::invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_ids_round_trip_and_reject_foreign_text() {
        let a = AckRef {
            subscription_id: 7,
            message_id: 123_456,
            lease: u64::MAX,
        };
        assert_eq!(AckRef::decode(&a.encode()), Some(a));
        for bad in ["", "1-2", "1-2-3-4", "x-2-3", "projects/p/subscriptions/s"] {
            assert_eq!(AckRef::decode(&AckId(bad.into())), None, "{bad}");
        }
    }
}
