//! Which messages each open StreamingPull stream has out, for server-side flow control.
//!
//! A stream stops pulling while its outstanding messages (delivered, not yet acknowledged,
//! nacked or expired) reach its flow-control limits. Clients settle messages on the stream or,
//! like the official Python client, through the unary Acknowledge and ModifyAckDeadline RPCs, so
//! the bookkeeping cannot live in the stream alone: the registry is shared by the whole service
//! and every ack path reports to it ([`StreamRegistry::settled`], [`StreamRegistry::extended`]).
//! A lease that ran out stops counting by itself (each entry keeps its expiry), so a client
//! that forgets a message never blocks its stream for longer than the lease.
//!
//! The registry is memory only and advisory: the store's leases decide who may receive a
//! message; the registry only decides how many more a stream asks for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use converge_core::AckId;
use converge_core::name::SubscriptionName;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What a stream has out: ack id to lease, and the totals flow control compares with limits.
#[derive(Debug, Default)]
struct Outstanding {
    leases: HashMap<String, Lease>,
    bytes: usize,
}

/// One delivered message as flow control sees it.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// When the lease runs out, on the service's clock.
    expires: SystemTime,
    /// The message's size as Pub/Sub counts it for flow control.
    bytes: usize,
}

impl Outstanding {
    /// Forgets one ack id; `true` if it was outstanding.
    fn remove(&mut self, ack_id: &str) -> bool {
        let Some(lease) = self.leases.remove(ack_id) else {
            return false;
        };
        debug_assert!(self.bytes >= lease.bytes, "outstanding bytes underflow");
        self.bytes -= lease.bytes;
        true
    }

    /// Forgets every lease that ran out by `now`.
    fn purge_expired(&mut self, now: SystemTime) {
        let mut freed = 0;
        self.leases.retain(|_, lease| {
            let live = lease.expires > now;
            if !live {
                freed += lease.bytes;
            }
            live
        });
        debug_assert!(self.bytes >= freed, "outstanding bytes underflow");
        self.bytes -= freed;
    }
}

/// How much a stream has out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Messages delivered and not yet settled or expired.
    pub messages: usize,
    /// Their total size.
    pub bytes: usize,
}

/// One open stream's shared state.
#[derive(Debug)]
struct StreamEntry {
    id: u64,
    client_id: String,
    outstanding: Mutex<Outstanding>,
    /// Signalled when outstanding shrinks, so a stream waiting for room pulls again at once.
    changed: Notify,
    /// Cancelled when a newer stream of the same client takes this one's place.
    superseded: CancellationToken,
}

impl StreamEntry {
    fn outstanding(&self) -> MutexGuard<'_, Outstanding> {
        // The data stays consistent even if a holder panicked: every update is one step.
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The open streams of every subscription, shared by the service (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct StreamRegistry {
    inner: Arc<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    next_id: AtomicU64,
    streams: Mutex<HashMap<SubscriptionName, Vec<Arc<StreamEntry>>>>,
}

impl RegistryInner {
    fn streams(&self) -> MutexGuard<'_, HashMap<SubscriptionName, Vec<Arc<StreamEntry>>>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StreamRegistry {
    /// Registers a new stream on `subscription`. A stream of the same non-empty `client_id`
    /// already open on the subscription is superseded: the new stream takes over what it has
    /// out (the client still holds those messages) and the old one is told to end.
    pub fn register(&self, subscription: &SubscriptionName, client_id: &str) -> Registration {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut all = self.inner.streams();
        let streams = all.entry(subscription.clone()).or_default();
        let mut inherited = Outstanding::default();
        if !client_id.is_empty()
            && let Some(pos) = streams.iter().position(|s| s.client_id == client_id)
        {
            let old = streams.swap_remove(pos);
            inherited = std::mem::take(&mut *old.outstanding());
            old.superseded.cancel();
            tracing::debug!(subscription = %subscription, client_id, old_stream = old.id, new_stream = id, inherited = inherited.leases.len(), "stream superseded by a reconnect");
        }
        let entry = Arc::new(StreamEntry {
            id,
            client_id: client_id.to_owned(),
            outstanding: Mutex::new(inherited),
            changed: Notify::new(),
            superseded: CancellationToken::new(),
        });
        streams.push(entry.clone());
        Registration {
            registry: self.clone(),
            subscription: subscription.clone(),
            entry,
        }
    }

    /// Ack ids acknowledged or nacked (by any path): no longer outstanding on any stream.
    pub fn settled(&self, subscription: &SubscriptionName, ack_ids: &[AckId]) {
        self.for_each_stream(subscription, |entry| {
            let mut outstanding = entry.outstanding();
            let mut freed = false;
            for ack_id in ack_ids {
                freed |= outstanding.remove(&ack_id.0);
            }
            drop(outstanding);
            if freed {
                entry.changed.notify_one();
            }
        });
    }

    /// Ack ids whose lease was extended to `expires`: they keep counting until then.
    pub fn extended(
        &self,
        subscription: &SubscriptionName,
        ack_ids: &[AckId],
        expires: SystemTime,
    ) {
        self.for_each_stream(subscription, |entry| {
            let mut outstanding = entry.outstanding();
            for ack_id in ack_ids {
                if let Some(lease) = outstanding.leases.get_mut(&ack_id.0) {
                    lease.expires = expires;
                }
            }
        });
    }

    /// The number of open streams on `subscription`.
    pub fn stream_count(&self, subscription: &SubscriptionName) -> usize {
        self.inner.streams().get(subscription).map_or(0, Vec::len)
    }

    fn for_each_stream(&self, subscription: &SubscriptionName, mut f: impl FnMut(&StreamEntry)) {
        let all = self.inner.streams();
        let Some(streams) = all.get(subscription) else {
            return;
        };
        for entry in streams {
            f(entry);
        }
    }

    /// Removes one stream (by id: a superseded stream was already removed).
    fn remove(&self, subscription: &SubscriptionName, id: u64) {
        let mut all = self.inner.streams();
        let Some(streams) = all.get_mut(subscription) else {
            return;
        };
        streams.retain(|s| s.id != id);
        if streams.is_empty() {
            all.remove(subscription);
        }
    }
}

/// One stream's place in the registry; the stream leaves the registry when this is dropped.
/// What it had out is then forgotten: those leases simply expire and the messages are
/// delivered again.
#[derive(Debug)]
pub struct Registration {
    registry: StreamRegistry,
    subscription: SubscriptionName,
    entry: Arc<StreamEntry>,
}

impl Registration {
    /// Records messages just delivered on this stream, as `(ack id, size)`, leased until
    /// `expires`.
    pub fn delivered(
        &self,
        messages: impl IntoIterator<Item = (String, usize)>,
        expires: SystemTime,
    ) {
        let mut outstanding = self.entry.outstanding();
        for (ack_id, bytes) in messages {
            let previous = outstanding.leases.insert(ack_id, Lease { expires, bytes });
            debug_assert!(previous.is_none(), "an ack id was delivered twice");
            outstanding.bytes += bytes;
        }
    }

    /// What this stream has out at `now` (leases that ran out no longer count).
    pub fn usage(&self, now: SystemTime) -> Usage {
        let mut outstanding = self.entry.outstanding();
        outstanding.purge_expired(now);
        Usage {
            messages: outstanding.leases.len(),
            bytes: outstanding.bytes,
        }
    }

    /// Completes once something this stream had out was settled (or at once if that happened
    /// since the last wait).
    pub async fn changed(&self) {
        self.entry.changed.notified().await;
    }

    /// Cancelled when a newer stream of the same client took this one's place.
    pub fn superseded(&self) -> &CancellationToken {
        &self.entry.superseded
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(&self.subscription, self.entry.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sub(id: &str) -> SubscriptionName {
        SubscriptionName::parse(&format!("projects/p/subscriptions/sub-{id}")).expect("valid name")
    }

    fn ids(ids: &[&str]) -> Vec<AckId> {
        ids.iter().map(|s| AckId((*s).to_owned())).collect()
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn settling_frees_room_on_the_stream_that_had_the_message() {
        let registry = StreamRegistry::default();
        let a = registry.register(&sub("s"), "");
        let b = registry.register(&sub("s"), "");
        a.delivered([("a1".into(), 10), ("a2".into(), 5)], at(100));
        b.delivered([("b1".into(), 7)], at(100));
        registry.settled(&sub("s"), &ids(&["a1", "unknown"]));
        assert_eq!(
            a.usage(at(0)),
            Usage {
                messages: 1,
                bytes: 5
            }
        );
        assert_eq!(
            b.usage(at(0)),
            Usage {
                messages: 1,
                bytes: 7
            }
        );
        registry.settled(&sub("other"), &ids(&["a2", "b1"]));
        assert_eq!(
            a.usage(at(0)).messages,
            1,
            "another subscription's acks do not count"
        );
    }

    #[test]
    fn expired_leases_stop_counting_unless_extended() {
        let registry = StreamRegistry::default();
        let a = registry.register(&sub("s"), "");
        a.delivered([("x".into(), 1), ("y".into(), 2)], at(10));
        registry.extended(&sub("s"), &ids(&["y"]), at(20));
        assert_eq!(a.usage(at(9)).messages, 2);
        assert_eq!(
            a.usage(at(10)),
            Usage {
                messages: 1,
                bytes: 2
            }
        );
        assert_eq!(a.usage(at(20)), Usage::default());
    }

    #[test]
    fn a_reconnect_with_the_same_client_id_takes_over_and_ends_the_old_stream() {
        let registry = StreamRegistry::default();
        let old = registry.register(&sub("s"), "client-1");
        let other = registry.register(&sub("s"), "client-2");
        old.delivered([("m1".into(), 3)], at(100));
        let new = registry.register(&sub("s"), "client-1");
        assert!(old.superseded().is_cancelled());
        assert!(!other.superseded().is_cancelled());
        assert_eq!(
            new.usage(at(0)),
            Usage {
                messages: 1,
                bytes: 3
            }
        );
        assert_eq!(old.usage(at(0)), Usage::default());
        drop(old);
        assert_eq!(
            registry.stream_count(&sub("s")),
            2,
            "dropping the old stream keeps the new"
        );
        registry.settled(&sub("s"), &ids(&["m1"]));
        assert_eq!(new.usage(at(0)), Usage::default());
    }

    #[test]
    fn streams_without_client_id_never_supersede_each_other() {
        let registry = StreamRegistry::default();
        let a = registry.register(&sub("s"), "");
        let _b = registry.register(&sub("s"), "");
        assert!(!a.superseded().is_cancelled());
        assert_eq!(registry.stream_count(&sub("s")), 2);
    }

    #[test]
    fn dropping_the_last_stream_forgets_the_subscription() {
        let registry = StreamRegistry::default();
        let a = registry.register(&sub("s"), "c");
        drop(a);
        assert_eq!(registry.stream_count(&sub("s")), 0);
        assert!(registry.inner.streams().is_empty());
    }

    #[tokio::test]
    async fn settling_wakes_a_stream_waiting_for_room() {
        let registry = StreamRegistry::default();
        let a = registry.register(&sub("s"), "");
        a.delivered([("x".into(), 1)], at(100));
        registry.settled(&sub("s"), &ids(&["x"]));
        // The permit is stored: a wait begun after the ack completes at once.
        tokio::time::timeout(Duration::from_secs(5), a.changed())
            .await
            .expect("woken by the ack");
    }
}
