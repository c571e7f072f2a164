//! The `Store` trait on the embedded engine: each operation takes the state lock, queues its
//! records, applies them, releases the lock, then waits for durability.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use converge_core::store::SubscriptionStats;
use converge_core::{
    AckId, AckOutcome, Error, MessageId, NewMessage, Page, PageRequest, ProjectId, PullOptions,
    ReceivedMessage, Result, SeekTarget, Snapshot, SnapshotName, Store, Subscription,
    SubscriptionName, Topic, TopicName,
};

use super::delivery::{self, AckRef, SubscriptionState, TakeLimits};
use super::record::{MessageRecord, Record, SubscriptionRecord, TopicRecord};
use super::state::{State, already_exists, not_found};
use super::{DEFAULT_PAGE_SIZE, EmbeddedStore, MAX_PAGE_SIZE, notifies_for};

/// The messages of the ack ids whose lease is current, and one outcome per ack id.
fn current_leases(
    sub: &SubscriptionState,
    ack_ids: &[AckId],
    now: SystemTime,
) -> (Vec<u64>, Vec<AckOutcome>) {
    let mut ids = Vec::with_capacity(ack_ids.len());
    let outcomes = ack_ids
        .iter()
        .map(
            |ack_id| match AckRef::decode(ack_id).and_then(|a| sub.live_lease(&a, now)) {
                Some(id) => {
                    ids.push(id);
                    AckOutcome::Applied
                }
                None => AckOutcome::Invalid,
            },
        )
        .collect();
    (ids, outcomes)
}

/// One page of `items` (sorted by key) after `page.page_token`, the last key of the previous
/// page.
pub(super) fn page<T, K: Clone + ToString>(
    items: impl Iterator<Item = (K, T)>,
    page: &PageRequest,
) -> Page<T> {
    let size = match page.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    let mut out = Vec::new();
    let mut last = None;
    let mut more = false;
    for (key, item) in items {
        let key_text = key.to_string();
        if !page.page_token.is_empty() && key_text.as_str() <= page.page_token.as_str() {
            continue;
        }
        if out.len() == size {
            more = true;
            break;
        }
        last = Some(key_text);
        out.push(item);
    }
    Page {
        items: out,
        next_page_token: if more {
            last.unwrap_or_default()
        } else {
            String::new()
        },
    }
}

impl super::Inner {
    /// One write: under the state lock, `f` validates against the current state and returns
    /// the records to append (and the caller's answer); they are queued and applied, the lock is
    /// released, and the answer is returned once they are durable.
    pub(super) async fn write<T>(
        &self,
        f: impl FnOnce(&mut State, SystemTime) -> Result<(Vec<Record>, T)>,
    ) -> Result<T> {
        self.check_open()?;
        let (durable, answer) = {
            let mut state = self.state.lock();
            let now = self.clock.now();
            let (records, answer) = f(&mut state, now)?;
            if records.is_empty() {
                return Ok(answer);
            }
            (self.commit(&mut state, records, now)?, answer)
        };
        durable.await?;
        Ok(answer)
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn create_topic(&self, topic: Topic) -> Result<Topic> {
        self.inner
            .write(|state, _| {
                if state.topics.contains_key(&topic.name) {
                    return Err(already_exists(&topic.name.to_string()));
                }
                let id = state.allocate_id();
                Ok((
                    vec![Record::TopicPut(TopicRecord::from_topic(id, &topic))],
                    topic,
                ))
            })
            .await
    }

    async fn get_topic(&self, name: &TopicName) -> Result<Topic> {
        let state = self.inner.state.lock();
        state
            .topics
            .get(name)
            .map(|m| m.topic.clone())
            .ok_or_else(|| not_found(&name.to_string()))
    }

    async fn update_topic(&self, topic: Topic) -> Result<Topic> {
        self.inner
            .write(|state, _| {
                let id = state.topic_id(&topic.name)?;
                Ok((
                    vec![Record::TopicPut(TopicRecord::from_topic(id, &topic))],
                    topic,
                ))
            })
            .await
    }

    async fn list_topics(
        &self,
        project: &ProjectId,
        page_request: PageRequest,
    ) -> Result<Page<Topic>> {
        let state = self.inner.state.lock();
        let items = state
            .topics
            .iter()
            .filter(|(name, _)| name.project() == project)
            .map(|(name, meta)| (name.clone(), meta.topic.clone()));
        Ok(page(items, &page_request))
    }

    async fn delete_topic(&self, name: &TopicName) -> Result<()> {
        self.inner
            .write(|state, _| {
                let topic_id = state.topic_id(name)?;
                Ok((vec![Record::TopicDeleted { topic_id }], ()))
            })
            .await
    }

    async fn list_topic_subscriptions(
        &self,
        topic: &TopicName,
        page_request: PageRequest,
    ) -> Result<Page<SubscriptionName>> {
        let state = self.inner.state.lock();
        let topic_id = state.topic_id(topic)?;
        let mut names: Vec<SubscriptionName> = state.logs[&topic_id]
            .attached
            .iter()
            .filter_map(|id| state.subscription_names.get(id).cloned())
            .collect();
        names.sort();
        Ok(page(
            names.into_iter().map(|n| (n.clone(), n)),
            &page_request,
        ))
    }

    async fn create_subscription(&self, subscription: Subscription) -> Result<Subscription> {
        delivery::parse_filter(&subscription.filter)?;
        self.inner
            .write(|state, now| {
                if state.subscriptions.contains_key(&subscription.name) {
                    return Err(already_exists(&subscription.name.to_string()));
                }
                let topic = subscription
                    .topic
                    .as_ref()
                    .ok_or_else(|| Error::invalid("A subscription needs a topic"))?;
                let topic_id = state.topic_id(topic)?;
                let created = Subscription {
                    created: now,
                    detached: false,
                    ..subscription
                };
                let id = state.allocate_id();
                // It receives what is published from now on: ids above the last one assigned.
                let start_after = state.next_message_id.saturating_sub(1);
                let record =
                    SubscriptionRecord::from_subscription(id, topic_id, start_after, &created);
                Ok((vec![Record::SubscriptionPut(record)], created))
            })
            .await
    }

    async fn get_subscription(&self, name: &SubscriptionName) -> Result<Subscription> {
        let state = self.inner.state.lock();
        state
            .subscriptions
            .get(name)
            .map(|s| s.settings.clone())
            .ok_or_else(|| not_found(&name.to_string()))
    }

    async fn update_subscription(&self, subscription: Subscription) -> Result<Subscription> {
        self.inner
            .write(|state, _| {
                let existing = state
                    .subscriptions
                    .get(&subscription.name)
                    .ok_or_else(|| not_found(&subscription.name.to_string()))?;
                if existing.settings.filter != subscription.filter {
                    return Err(Error::invalid(
                        "The filter of a subscription cannot be changed",
                    ));
                }
                // What the store owns is not the caller's to change.
                let updated = Subscription {
                    topic: existing.settings.topic.clone(),
                    created: existing.settings.created,
                    detached: existing.settings.detached,
                    ..subscription
                };
                let record = SubscriptionRecord::from_subscription(
                    existing.id,
                    existing.log_id,
                    existing.start_after,
                    &updated,
                );
                Ok((vec![Record::SubscriptionPut(record)], updated))
            })
            .await
    }

    async fn list_subscriptions(
        &self,
        project: &ProjectId,
        page_request: PageRequest,
    ) -> Result<Page<Subscription>> {
        let state = self.inner.state.lock();
        let items = state
            .subscriptions
            .iter()
            .filter(|(name, _)| name.project() == project)
            .map(|(name, s)| (name.clone(), s.settings.clone()));
        Ok(page(items, &page_request))
    }

    async fn delete_subscription(&self, name: &SubscriptionName) -> Result<()> {
        self.inner
            .write(|state, _| {
                let subscription_id = state.subscription(name)?.id;
                Ok((vec![Record::SubscriptionDeleted { subscription_id }], ()))
            })
            .await
    }

    async fn detach_subscription(&self, name: &SubscriptionName) -> Result<()> {
        self.inner
            .write(|state, _| {
                let sub = state.subscription(name)?;
                if sub.settings.detached {
                    return Ok((Vec::new(), ()));
                }
                let record = Record::SubscriptionDetached {
                    subscription_id: sub.id,
                    upto: state.next_message_id.saturating_sub(1),
                };
                Ok((vec![record], ()))
            })
            .await
    }

    async fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<MessageId>> {
        let inner = &self.inner;
        inner.check_open()?;
        let (durable, ids, notifies, stored) = {
            let mut state = inner.state.lock();
            let topic_id = state
                .topics
                .get(topic)
                .map(|m| m.id)
                .ok_or_else(|| not_found(&topic.to_string()))?;
            let now = inner.clock.now();
            let mut ids = Vec::with_capacity(messages.len());
            let mut records = Vec::with_capacity(messages.len());
            let mut batch_keys: std::collections::HashMap<&str, u64> =
                std::collections::HashMap::new();
            let data = &state.logs[&topic_id];
            let window = data.dedup_window;
            let mut next_id = state.next_message_id;
            for message in &messages {
                if let Some(key) = message.idempotency_key() {
                    let seen = data
                        .dedup
                        .get(key)
                        .filter(|(_, at)| {
                            now.duration_since(*at).unwrap_or(Duration::ZERO) < window
                        })
                        .map(|(id, _)| *id)
                        .or_else(|| batch_keys.get(key).copied());
                    if let Some(id) = seen {
                        ids.push(MessageId(id));
                        continue;
                    }
                    batch_keys.insert(key, next_id);
                }
                ids.push(MessageId(next_id));
                records.push(Record::Message(MessageRecord::new(
                    topic_id, next_id, now, message,
                )));
                next_id += 1;
            }
            let stored = records.len();
            let notifies = notifies_for(&state, &records);
            let durable = inner.commit(&mut state, records, now)?;
            (durable, ids, notifies, stored)
        };
        durable.await?;
        metrics::counter!("converge_messages_published_total").increment(stored as u64);
        if stored < ids.len() {
            metrics::counter!("converge_messages_deduplicated_total")
                .increment((ids.len() - stored) as u64);
        }
        for n in notifies {
            n.notify_waiters();
        }
        Ok(ids)
    }

    async fn pull_with(
        &self,
        subscription: &SubscriptionName,
        options: PullOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        let inner = &self.inner;
        inner.check_open()?;
        let limits = TakeLimits {
            max_messages: options.max_messages,
            max_bytes: options.max_bytes,
            ack_deadline: options.ack_deadline,
        };
        let give_up_at = tokio::time::Instant::now() + options.wait;
        loop {
            let (notified, next_due) = {
                let mut state = inner.state.lock();
                let now = inner.clock.now();
                let notify = {
                    let sub = state
                        .subscriptions
                        .get(subscription)
                        .ok_or_else(|| not_found(&subscription.to_string()))?;
                    if sub.settings.detached {
                        return Err(Error::FailedPrecondition(format!(
                            "Subscription {subscription} is detached from its topic"
                        )));
                    }
                    sub.notify.clone()
                };
                // Register for wake-ups before looking, so a publish that lands in between
                // is not missed.
                let mut notified = Box::pin(notify.notified_owned());
                notified.as_mut().enable();

                let expired = state
                    .subscriptions
                    .get_mut(subscription)
                    .map(|s| s.expired_leases(now))
                    .unwrap_or_default();
                if !expired.is_empty() {
                    let records = inner.after_failures(&mut state, subscription, expired, now)?;
                    if !records.is_empty() {
                        let notifies = notifies_for(&state, &records);
                        let durable = inner.commit(&mut state, records, now)?;
                        inner.wake_after(durable, notifies);
                    }
                }
                let durable_end = inner.journal.durable_end();
                let (sub, data) = state.subscription_mut(subscription)?;
                let taken =
                    sub.take(&data.log, limits, now, durable_end, &mut |e| inner.load(e))?;
                if !taken.is_empty() {
                    let has_dead_letter = sub.settings.dead_letter_policy.is_some();
                    metrics::counter!("converge_messages_delivered_total")
                        .increment(taken.len() as u64);
                    let redelivered = taken.iter().filter(|t| t.attempts > 1).count();
                    if redelivered > 0 {
                        metrics::counter!("converge_messages_redelivered_total")
                            .increment(redelivered as u64);
                    }
                    return Ok(taken
                        .into_iter()
                        .map(|t| ReceivedMessage {
                            ack_id: t.ack_id,
                            message: t.message,
                            delivery_attempt: if has_dead_letter { t.attempts } else { 0 },
                            attempts: t.attempts,
                        })
                        .collect());
                }
                (notified, sub.next_due())
            };
            let now_real = tokio::time::Instant::now();
            if now_real >= give_up_at || inner.closed.load(Ordering::Acquire) {
                return Ok(Vec::new());
            }
            let mut sleep_until = give_up_at;
            if let Some(due) = next_due {
                let in_clock = due
                    .duration_since(inner.clock.now())
                    .unwrap_or(Duration::ZERO);
                sleep_until = sleep_until.min(now_real + in_clock + Duration::from_millis(1));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(sleep_until) => {}
            }
        }
    }

    async fn acknowledge(
        &self,
        subscription: &SubscriptionName,
        ack_ids: &[AckId],
    ) -> Result<Vec<AckOutcome>> {
        self.inner
            .write(|state, now| {
                let sub = state
                    .subscriptions
                    .get_mut(subscription)
                    .ok_or_else(|| not_found(&subscription.to_string()))?;
                sub.last_activity = now;
                let (ids, outcomes) = current_leases(sub, ack_ids, now);
                if ids.is_empty() {
                    return Ok((Vec::new(), outcomes));
                }
                metrics::counter!("converge_messages_acked_total").increment(ids.len() as u64);
                if sub.settings.enable_message_ordering {
                    // An ack frees its ordering key: the key's next message is deliverable now.
                    // Waiters take the state lock only after this write is applied.
                    sub.notify.notify_waiters();
                }
                let subscription_id = sub.id;
                Ok((
                    vec![Record::Done {
                        subscription_id,
                        ids,
                    }],
                    outcomes,
                ))
            })
            .await
    }

    async fn modify_ack_deadline(
        &self,
        subscription: &SubscriptionName,
        ack_ids: &[AckId],
        deadline: Duration,
    ) -> Result<Vec<AckOutcome>> {
        let inner = &self.inner;
        inner.check_open()?;
        let (durable, notifies, outcomes) = {
            let mut state = inner.state.lock();
            let now = inner.clock.now();
            let sub = state
                .subscriptions
                .get_mut(subscription)
                .ok_or_else(|| not_found(&subscription.to_string()))?;
            sub.last_activity = now;
            let (ids, outcomes) = current_leases(sub, ack_ids, now);
            if !deadline.is_zero() {
                for id in ids {
                    sub.extend(id, now + deadline);
                }
                return Ok(outcomes);
            }
            let notify = sub.notify.clone();
            let records = inner.after_failures(&mut state, subscription, ids, now)?;
            notify.notify_waiters();
            if records.is_empty() {
                return Ok(outcomes);
            }
            // Dead-lettered messages: their new topic's subscribers look once they are durable.
            let notifies = notifies_for(&state, &records);
            (inner.commit(&mut state, records, now)?, notifies, outcomes)
        };
        durable.await?;
        for n in notifies {
            n.notify_waiters();
        }
        Ok(outcomes)
    }

    async fn create_snapshot(
        &self,
        snapshot: Snapshot,
        subscription: &SubscriptionName,
    ) -> Result<Snapshot> {
        self.inner.create_snapshot(snapshot, subscription).await
    }

    async fn get_snapshot(&self, name: &SnapshotName) -> Result<Snapshot> {
        self.inner.get_snapshot(name)
    }

    async fn update_snapshot(&self, snapshot: Snapshot) -> Result<Snapshot> {
        self.inner.update_snapshot(snapshot).await
    }

    async fn list_snapshots(
        &self,
        project: &ProjectId,
        page_request: PageRequest,
    ) -> Result<Page<Snapshot>> {
        self.inner.list_snapshots(project, page_request)
    }

    async fn list_topic_snapshots(
        &self,
        topic: &TopicName,
        page_request: PageRequest,
    ) -> Result<Page<SnapshotName>> {
        self.inner.list_topic_snapshots(topic, page_request)
    }

    async fn delete_snapshot(&self, name: &SnapshotName) -> Result<()> {
        self.inner.delete_snapshot(name).await
    }

    async fn seek(&self, subscription: &SubscriptionName, target: SeekTarget) -> Result<()> {
        self.inner.seek(subscription, target).await
    }

    async fn put_document(&self, kind: &str, key: &str, value: Bytes) -> Result<()> {
        let record = Record::DocumentPut {
            kind: kind.to_string(),
            key: key.to_string(),
            value: value.to_vec(),
        };
        self.inner.write(|_, _| Ok((vec![record], ()))).await
    }

    async fn get_document(&self, kind: &str, key: &str) -> Result<Option<Bytes>> {
        let state = self.inner.state.lock();
        let found = state.documents.get(&(kind.to_string(), key.to_string()));
        Ok(found.map(|v| Bytes::from(v.clone())))
    }

    async fn delete_document(&self, kind: &str, key: &str) -> Result<bool> {
        self.inner
            .write(|state, _| {
                let id = (kind.to_string(), key.to_string());
                if !state.documents.contains_key(&id) {
                    return Ok((Vec::new(), false));
                }
                let (kind, key) = id;
                Ok((vec![Record::DocumentDeleted { kind, key }], true))
            })
            .await
    }

    async fn list_documents(
        &self,
        kind: &str,
        prefix: &str,
        page_request: PageRequest,
    ) -> Result<Page<(String, Bytes)>> {
        let state = self.inner.state.lock();
        let start = (kind.to_string(), prefix.to_string());
        let items = state
            .documents
            .range(start..)
            .take_while(|((k, key), _)| k == kind && key.starts_with(prefix))
            .map(|((_, key), value)| (key.clone(), (key.clone(), Bytes::from(value.clone()))));
        Ok(page(items, &page_request))
    }

    async fn subscription_stats(&self) -> Result<Vec<SubscriptionStats>> {
        let mut state = self.inner.state.lock();
        let now = self.inner.clock.now();
        self.inner.filter_ahead(&mut state, now)?;
        Ok(state
            .subscriptions
            .iter()
            .map(|(name, sub)| {
                let (backlog, oldest) = state
                    .logs
                    .get(&sub.log_id)
                    .map(|d| sub.backlog(&d.log))
                    .unwrap_or((0, None));
                SubscriptionStats {
                    name: name.clone(),
                    backlog,
                    oldest_unacked_age: oldest
                        .and_then(|t| now.duration_since(t).ok())
                        .unwrap_or(Duration::ZERO),
                }
            })
            .collect())
    }

    async fn maintain(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        inner.maintain_state()?;
        inner.snapshot_if_useful().await
    }

    async fn check_ready(&self) -> Result<()> {
        self.inner.write(|_, _| Ok((vec![Record::Probe], ()))).await
    }

    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        {
            let state = inner.state.lock();
            for sub in state.subscriptions.values() {
                sub.notify.notify_waiters();
            }
        }
        // A failed final snapshot costs only a longer replay at the next start.
        if let Err(e) = inner.take_snapshot().await {
            tracing::warn!(error = %e, "no snapshot at shutdown; the next start replays the log");
        }
        inner.journal.close().await
    }
}
