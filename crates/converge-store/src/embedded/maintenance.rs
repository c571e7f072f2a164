//! Periodic work of the embedded engine: expiration policies, retention, expired leases,
//! dropping what every subscription is done with, and snapshots that give disk space back.

use std::time::{Duration, SystemTime};

use converge_core::{Error, Result, SubscriptionName};

use super::journal::{self, Journal};
use super::record::Record;
use super::snapshot::{self, Snapshot};
use super::state::{self, State};
use super::{
    Inner, SNAPSHOT_EVERY_BYTES, SNAPSHOT_MIN_INTERVAL, SnapshotBook, atomic_file, log_distance,
    notifies_for,
};

impl Inner {
    /// Takes a snapshot when it lets segments go or when recovery would replay too much, then
    /// deletes the segments the snapshot made unnecessary.
    pub(super) async fn snapshot_if_useful(&self) -> Result<()> {
        let (Journal::Disk(wal), Some(_)) = (&self.journal, &self.dir) else {
            return Ok(());
        };
        let segments = wal.segments();
        let Some(&active) = segments.last() else {
            return Ok(());
        };
        {
            let book = self.snapshots.lock();
            if book
                .last
                .is_some_and(|t| t.elapsed() < SNAPSHOT_MIN_INTERVAL)
            {
                return Ok(());
            }
            let state = self.state.lock();
            let freeable = segments
                .iter()
                .any(|s| *s < active && !state.live_per_segment.contains_key(s));
            let written = log_distance(book.resume_from, wal.durable_end(), self.segment_bytes);
            let behind = written >= SNAPSHOT_EVERY_BYTES;
            if !freeable && !behind {
                return Ok(());
            }
        }
        self.take_snapshot().await
    }

    /// Writes a snapshot now and deletes the segments it makes unnecessary. Also called on a
    /// clean shutdown, so that the next start replays almost nothing.
    pub(super) async fn take_snapshot(&self) -> Result<()> {
        let (Journal::Disk(wal), Some(dir)) = (&self.journal, &self.dir) else {
            return Ok(());
        };
        let segments = wal.segments();
        let started = std::time::Instant::now();
        let (snapshot, free, durable) = {
            let state = self.state.lock();
            // The probe's position is the first record the snapshot does not reflect.
            let (positions, durable) = self.journal.submit(vec![Record::Probe.encode()])?;
            let resume_from = positions[0];
            let free: Vec<u64> = segments
                .iter()
                .copied()
                .filter(|s| *s < resume_from.segment && !state.live_per_segment.contains_key(s))
                .collect();
            (Snapshot::capture(&state, resume_from), free, durable)
        };
        durable.await?;
        let resume_from = snapshot.resume_from();
        let dir = dir.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            let bytes = snapshot.encode();
            atomic_file::write_atomic(&dir, snapshot::FILE_NAME, &bytes).map(|()| bytes.len())
        })
        .await
        .map_err(|e| Error::Internal(format!("snapshot task failed: {e}")))?
        .map_err(|e| Error::Internal(format!("cannot write the snapshot: {e}")))?;
        wal.remove_segments(&free).map_err(journal::wal_error)?;
        *self.snapshots.lock() = SnapshotBook {
            resume_from,
            last: Some(std::time::Instant::now()),
        };
        tracing::info!(
            bytes,
            segments_removed = free.len(),
            resume_segment = resume_from.segment,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        Ok(())
    }
    /// The synchronous part of `maintain`: expirations, retention, leases, log truncation.
    /// Runs every subscription's filter over the messages it has not looked at yet.
    pub(super) fn filter_ahead(&self, state: &mut State, now: SystemTime) -> Result<()> {
        let durable_end = self.journal.durable_end();
        let State {
            subscriptions,
            logs,
            ..
        } = state;
        for sub in subscriptions.values_mut() {
            let Some(data) = logs.get(&sub.log_id) else {
                continue;
            };
            sub.filter_ahead(&data.log, now, durable_end, &mut |e| self.load(e))?;
        }
        Ok(())
    }

    pub(super) fn maintain_state(&self) -> Result<()> {
        let inner = self;
        let mut state = inner.state.lock();
        let now = inner.clock.now();
        let names: Vec<SubscriptionName> = state.subscriptions.keys().cloned().collect();
        let mut records = Vec::new();
        for name in &names {
            let Ok((sub, data)) = state.subscription_mut(name) else {
                continue;
            };
            // Expiration policy: delete subscriptions nobody has used for their TTL.
            if let Some(ttl) = sub.settings.expiration_ttl
                && now
                    .duration_since(sub.last_activity)
                    .unwrap_or(Duration::ZERO)
                    > ttl
            {
                tracing::info!(subscription = %name, "subscription expired after inactivity");
                records.push(Record::SubscriptionDeleted {
                    subscription_id: sub.id,
                });
                continue;
            }
            // Retention of unacknowledged messages: the longer of the subscription's and the
            // topic's, as in Pub/Sub.
            let retention = sub
                .settings
                .message_retention
                .max(data.retention.unwrap_or_default());
            if let Some(cutoff) = now.checked_sub(retention) {
                let dropped = sub.expire_before(&data.log, cutoff, now);
                if dropped > 0 {
                    metrics::counter!("converge_messages_dropped_total", "reason" => "retention")
                        .increment(dropped);
                }
            }
            let expired = sub.expired_leases(now);
            if !expired.is_empty() {
                records.extend(inner.after_failures(&mut state, name, expired, now)?);
            }
            let Some(sub) = state.subscriptions.get(name) else {
                continue;
            };
            if sub.next_due().is_some_and(|due| due <= now) {
                sub.notify.notify_waiters();
            }
        }
        records.extend(expired_pubsub_snapshots(&state, now));
        if !records.is_empty() {
            let notifies = notifies_for(&state, &records);
            let durable = inner.commit(&mut state, records, now)?;
            inner.wake_after(durable, notifies);
        }
        inner.filter_ahead(&mut state, now)?;
        truncate_logs(&mut state, &inner.journal, now);
        Ok(())
    }
}

/// Deletions of the Pub/Sub snapshots whose expire time has come.
fn expired_pubsub_snapshots(state: &State, now: SystemTime) -> Vec<Record> {
    state
        .pubsub_snapshots
        .iter()
        .filter(|(_, s)| s.snapshot.expire_time <= now)
        .map(|(name, _)| {
            tracing::info!(snapshot = %name, "snapshot expired");
            Record::PubSubSnapshotDeleted {
                name: name.to_string(),
            }
        })
        .collect()
}

/// Drops the oldest messages of each topic log once every reader is done with them, no live
/// Pub/Sub snapshot still marks them (snapshots keep everything above their floor), and neither
/// the topic's retention nor a reader's retention of acknowledged messages
/// (`retain_acked_messages`) keeps them; expires old idempotency keys.
pub(super) fn truncate_logs(state: &mut State, journal: &Journal, now: SystemTime) {
    let State {
        logs,
        subscriptions,
        subscription_names,
        live_per_segment,
        pubsub_snapshots,
        ..
    } = state;
    for (&topic_id, data) in logs.iter_mut() {
        let readers = data.readers.iter().filter_map(|id| {
            subscription_names
                .get(id)
                .and_then(|n| subscriptions.get(n))
        });
        let watermark = readers
            .clone()
            .map(|s| s.floor())
            .chain(
                pubsub_snapshots
                    .values()
                    .filter(|s| s.record.topic_id == topic_id)
                    .map(|s| s.record.floor),
            )
            .min()
            .unwrap_or(u64::MAX);
        // Acknowledged messages a reader keeps for Seek: the longest such retention.
        let acked_retention = readers
            .filter(|s| s.settings.retain_acked_messages)
            .map(|s| s.settings.message_retention)
            .max();
        let mut released = Vec::new();
        while let Some(front) = data.log.front() {
            let age = now
                .duration_since(front.publish_time)
                .unwrap_or(Duration::ZERO);
            let retained =
                data.retention.is_some_and(|r| age < r) || acked_retention.is_some_and(|r| age < r);
            if front.id > watermark || retained {
                break;
            }
            let entry = data.log.pop_front().expect("front exists");
            state::release_segment(live_per_segment, entry.pos.segment);
            released.push(entry.pos);
        }
        journal.release(released);
        while let Some((at, key)) = data.dedup_order.front() {
            if now.duration_since(*at).unwrap_or(Duration::ZERO) < data.dedup_window {
                break;
            }
            if data.dedup.get(key).is_some_and(|(_, t)| t == at) {
                data.dedup.remove(key);
            }
            data.dedup_order.pop_front();
        }
    }
}
