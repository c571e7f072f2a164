//! The embedded engine: converge's default store, in-process, crash-safe, nothing to install.
//!
//! Layout:
//! - [`wal`]: the segmented write-ahead log with group commit (durability).
//! - [`journal`]: the log, or memory for `--memory`, behind one type.
//! - [`record`]: what is written to the log.
//! - [`state`]: the in-memory state and how each record changes it (shared by live writes and
//!   recovery).
//! - [`topic_log`]: one index of messages per topic, shared by its subscriptions.
//! - [`delivery`]: one subscription's leases, retries, ordering and cursors.
//! - [`snapshot`]: periodic snapshots that let old log segments go and bound recovery time.
//!
//! Concurrency: one mutex over the whole [`state::State`], never held across an `.await` nor
//! across an fsync. Writers queue their records into the journal while holding it (so log order
//! is state order) and wait for durability after releasing it. Subscribers see a message only
//! once it is durable (`Journal::durable_end`).

pub mod checkpoint;
pub mod delivery;
pub mod journal;
pub mod record;
pub mod snapshot;
pub mod state;
pub mod topic_log;
pub mod wal;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use converge_core::dead_letter::dead_letter_attributes;
use converge_core::store::SubscriptionStats;
use converge_core::{
    AckId, Clock, Error, MessageId, NewMessage, Page, PageRequest, ProjectId, ReceivedMessage,
    Result, Store, StoredMessage, Subscription, SubscriptionName, Topic, TopicName,
};
use parking_lot::Mutex;
use tokio::sync::Notify;

use self::delivery::{AckRef, AfterFailure};
use self::journal::{Durable, Journal, MemoryJournal};
use self::record::{MessageRecord, Record, SubscriptionRecord, TopicRecord};
use self::state::{State, already_exists, not_found};
use self::topic_log::Entry;
use self::snapshot::Snapshot;
use self::wal::{RecordPos, SyncMode, Wal, WalOptions};

/// When a write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After `fdatasync`: survives power loss. The default.
    #[default]
    Fsync,
    /// After `write()` to the OS: survives a crash of the broker, not of the machine.
    OsBuffer,
}

/// How to open the embedded engine.
#[derive(Debug, Clone, Default)]
pub struct EmbeddedOptions {
    /// Where the data lives; `None` keeps everything in memory (nothing survives a restart).
    pub dir: Option<PathBuf>,
    /// When a write counts as done.
    pub durability: Durability,
}

/// Page size of list calls that do not ask for one.
const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page a list call returns.
const MAX_PAGE_SIZE: usize = 1000;
/// When a dead-letter topic is missing, the message waits this long before the next try.
const DEAD_LETTER_TOPIC_MISSING_RETRY: Duration = Duration::from_secs(60);
/// Least time between two snapshots.
const SNAPSHOT_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Take a snapshot once this many segments were written since the last one, to bound recovery.
const SNAPSHOT_EVERY_SEGMENTS: u64 = 4;

/// The embedded engine. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    journal: Journal,
    clock: Arc<dyn Clock>,
    closed: AtomicBool,
    dir: Option<PathBuf>,
    snapshots: Mutex<SnapshotBook>,
}

/// When the last snapshot was taken and where replay would start from it.
struct SnapshotBook {
    resume_from: RecordPos,
    last: Option<std::time::Instant>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("journal", &self.inner.journal).finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store, replaying its log. Blocking: call from `spawn_blocking`.
    pub fn open(options: EmbeddedOptions, clock: Arc<dyn Clock>) -> Result<Self> {
        Self::open_with_segment_bytes(options, clock, WalOptions::default().segment_bytes)
    }

    /// [`Self::open`] with a chosen log segment size (tests use small segments to exercise
    /// space reclamation).
    pub fn open_with_segment_bytes(options: EmbeddedOptions, clock: Arc<dyn Clock>, segment_bytes: u64) -> Result<Self> {
        let now = clock.now();
        // Message ids start at 1: a subscription's cursor 0 then means "before everything".
        let mut state = State { next_message_id: 1, ..State::default() };
        let mut resume_from = RecordPos::default();
        let journal = match &options.dir {
            None => Journal::Memory(MemoryJournal::default()),
            Some(dir) => {
                let stored = checkpoint::read_if_exists(dir, snapshot::FILE_NAME)
                    .map_err(|e| Error::Internal(format!("cannot read the snapshot in {}: {e}", dir.display())))?;
                if let Some(bytes) = stored {
                    let snapshot = Snapshot::decode(&bytes)?;
                    resume_from = snapshot.resume_from();
                    state = snapshot.restore(now)?;
                }
                let log_dir = dir.join("log");
                std::fs::create_dir_all(&log_dir)
                    .map_err(|e| Error::Internal(format!("cannot create {}: {e}", log_dir.display())))?;
                let sync = match options.durability {
                    Durability::Fsync => SyncMode::Fsync,
                    Durability::OsBuffer => SyncMode::OsBuffer,
                };
                let wal = Wal::open(&log_dir, WalOptions { sync, segment_bytes })
                    .map_err(journal::wal_error)?;
                let started = std::time::Instant::now();
                let mut records = 0u64;
                let mut failure = None;
                let replayed = wal.replay(resume_from, |pos, bytes| {
                    records += 1;
                    let applied = Record::decode(bytes).and_then(|r| state.apply(r, pos, now));
                    applied.map_err(|e| {
                        failure = Some(e.clone());
                        wal::WalError::Corrupt { segment: pos.segment, offset: pos.offset, reason: e.to_string() }
                    })
                });
                if let Some(e) = failure {
                    return Err(e);
                }
                replayed.map_err(journal::wal_error)?;
                tracing::info!(
                    records,
                    resumed_from_segment = resume_from.segment,
                    topics = state.topics.len(),
                    subscriptions = state.subscriptions.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    dir = %dir.display(),
                    "embedded store recovered"
                );
                Journal::Disk(wal)
            }
        };
        let snapshots = Mutex::new(SnapshotBook { resume_from, last: None });
        Ok(Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                journal,
                clock,
                closed: AtomicBool::new(false),
                dir: options.dir,
                snapshots,
            }),
        })
    }
}

impl EmbeddedStore {
    /// Bytes the log occupies on disk (0 in memory).
    pub fn disk_bytes(&self) -> u64 {
        match &self.inner.journal {
            Journal::Disk(wal) => wal.disk_bytes(),
            Journal::Memory(_) => 0,
        }
    }
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Unavailable("the store is shutting down".into()));
        }
        Ok(())
    }

    /// Appends records to the journal and applies them to the state, in one step under the
    /// state lock. The returned future resolves when they are durable.
    fn commit(&self, state: &mut State, records: Vec<Record>, now: SystemTime) -> Result<Durable> {
        let encoded = records.iter().map(Record::encode).collect();
        let (positions, durable) = self.journal.submit(encoded)?;
        for (record, pos) in records.into_iter().zip(positions) {
            state.apply(record, pos, now)?;
        }
        Ok(durable)
    }

    fn load(&self, entry: &Entry) -> Result<StoredMessage> {
        match Record::decode(&self.journal.read(entry.pos)?)? {
            Record::Message(m) => Ok(m.into_stored()),
            other => Err(Error::Internal(format!("expected a message at {:?}, found {other:?}", entry.pos))),
        }
    }

    /// Records for the failed deliveries of one subscription: dead-lettered messages are
    /// published to the dead-letter topic and completed at the source in the same batch.
    fn after_failures(
        &self,
        state: &mut State,
        name: &SubscriptionName,
        failed: Vec<u64>,
        now: SystemTime,
    ) -> Result<Vec<Record>> {
        let mut outcomes = Vec::new();
        {
            let Some(sub) = state.subscriptions.get_mut(name) else { return Ok(Vec::new()) };
            for id in failed {
                outcomes.push((id, sub.fail(id, now, rand::random::<f64>())));
            }
        }
        let mut records = Vec::new();
        let mut done = Vec::new();
        for (id, outcome) in outcomes {
            match outcome {
                AfterFailure::Retry => {
                    metrics::counter!("converge_messages_nacked_or_expired_total").increment(1);
                }
                AfterFailure::GiveUp { attempts } => {
                    tracing::warn!(subscription = %name, message_id = id, attempts, "retry schedule exhausted and no dead-letter topic: message dropped");
                    metrics::counter!("converge_messages_dropped_total", "reason" => "retries_exhausted").increment(1);
                    done.push(id);
                }
                AfterFailure::DeadLetter { attempts } => match self.dead_letter_record(state, name, id, attempts, now)? {
                    Some(record) => {
                        records.push(record);
                        done.push(id);
                        metrics::counter!("converge_messages_dead_lettered_total").increment(1);
                    }
                    None => {
                        let sub = state.subscriptions.get_mut(name).expect("checked above");
                        sub.wait(id, now + DEAD_LETTER_TOPIC_MISSING_RETRY);
                    }
                },
            }
        }
        if !done.is_empty() {
            let subscription_id = state.subscriptions[name].id;
            records.push(Record::Done { subscription_id, ids: done });
        }
        Ok(records)
    }

    /// The message record that forwards message `id` to the subscription's dead-letter topic,
    /// or `None` when that topic does not exist (the message then waits and tries again).
    fn dead_letter_record(
        &self,
        state: &mut State,
        name: &SubscriptionName,
        id: u64,
        attempts: u32,
        now: SystemTime,
    ) -> Result<Option<Record>> {
        let sub = &state.subscriptions[name];
        let Some(policy) = sub.settings.dead_letter_policy.clone() else { return Ok(None) };
        let Some(target) = state.topics.get(&policy.topic).map(|m| m.id) else {
            tracing::warn!(subscription = %name, dead_letter_topic = %policy.topic, "dead-letter topic does not exist; message kept");
            return Ok(None);
        };
        let Some(entry) = state.logs.get(&sub.log_id).and_then(|d| d.log.get(id)) else { return Ok(None) };
        let source = self.load(entry)?;
        let message = NewMessage {
            attributes: dead_letter_attributes(source.attributes, name, source.publish_time, attempts),
            data: source.data,
            ordering_key: source.ordering_key,
        };
        let new_id = state.next_message_id;
        state.next_message_id += 1;
        tracing::info!(subscription = %name, message_id = id, dead_letter_topic = %policy.topic, new_message_id = new_id, attempts, "message dead-lettered");
        Ok(Some(Record::Message(MessageRecord::new(target, new_id, now, &message))))
    }

    /// Takes a snapshot when it lets segments go or when recovery would replay too much, then
    /// deletes the segments the snapshot made unnecessary.
    async fn snapshot_if_useful(&self) -> Result<()> {
        let (Journal::Disk(wal), Some(dir)) = (&self.journal, &self.dir) else { return Ok(()) };
        let segments = wal.segments();
        let Some(&active) = segments.last() else { return Ok(()) };
        {
            let book = self.snapshots.lock();
            if book.last.is_some_and(|t| t.elapsed() < SNAPSHOT_MIN_INTERVAL) {
                return Ok(());
            }
            let state = self.state.lock();
            let freeable = segments.iter().any(|s| *s < active && !state.live_per_segment.contains_key(s));
            let behind = active.saturating_sub(book.resume_from.segment) >= SNAPSHOT_EVERY_SEGMENTS;
            if !freeable && !behind {
                return Ok(());
            }
        }
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
            checkpoint::write_atomic(&dir, snapshot::FILE_NAME, &bytes).map(|()| bytes.len())
        })
        .await
        .map_err(|e| Error::Internal(format!("snapshot task failed: {e}")))?
        .map_err(|e| Error::Internal(format!("cannot write the snapshot: {e}")))?;
        wal.remove_segments(&free).map_err(journal::wal_error)?;
        *self.snapshots.lock() = SnapshotBook { resume_from, last: Some(std::time::Instant::now()) };
        tracing::info!(
            bytes,
            segments_removed = free.len(),
            resume_segment = resume_from.segment,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        Ok(())
    }

    /// Subscribers to wake once `durable` resolves: everything attached to the topics written.
    fn wake_after(&self, durable: Durable, notifies: Vec<Arc<Notify>>) {
        if notifies.is_empty() {
            return;
        }
        tokio::spawn(async move {
            if durable.await.is_ok() {
                for n in notifies {
                    n.notify_waiters();
                }
            }
        });
    }
}

/// Subscribers of the topics that `records` publish to.
fn notifies_for(state: &State, records: &[Record]) -> Vec<Arc<Notify>> {
    let mut out = Vec::new();
    for record in records {
        let Record::Message(m) = record else { continue };
        let Some(data) = state.logs.get(&m.topic_id) else { continue };
        for sub_id in &data.attached {
            if let Some(sub) = state.subscription_names.get(sub_id).and_then(|n| state.subscriptions.get(n)) {
                out.push(sub.notify.clone());
            }
        }
    }
    out
}

fn page<T, K: Clone + ToString>(
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
    Page { items: out, next_page_token: if more { last.unwrap_or_default() } else { String::new() } }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn create_topic(&self, topic: Topic) -> Result<Topic> {
        let inner = &self.inner;
        inner.check_open()?;
        let durable = {
            let mut state = inner.state.lock();
            if state.topics.contains_key(&topic.name) {
                return Err(already_exists(&topic.name.to_string()));
            }
            let id = state.allocate_id();
            let now = inner.clock.now();
            inner.commit(&mut state, vec![Record::TopicPut(TopicRecord::from_topic(id, &topic))], now)?
        };
        durable.await?;
        tracing::debug!(topic = %topic.name, "topic created");
        Ok(topic)
    }

    async fn get_topic(&self, name: &TopicName) -> Result<Topic> {
        let state = self.inner.state.lock();
        state.topics.get(name).map(|m| m.topic.clone()).ok_or_else(|| not_found(&name.to_string()))
    }

    async fn update_topic(&self, topic: Topic) -> Result<Topic> {
        let inner = &self.inner;
        inner.check_open()?;
        let durable = {
            let mut state = inner.state.lock();
            let id = state.topics.get(&topic.name).map(|m| m.id).ok_or_else(|| not_found(&topic.name.to_string()))?;
            let now = inner.clock.now();
            inner.commit(&mut state, vec![Record::TopicPut(TopicRecord::from_topic(id, &topic))], now)?
        };
        durable.await?;
        Ok(topic)
    }

    async fn list_topics(&self, project: &ProjectId, page_request: PageRequest) -> Result<Page<Topic>> {
        let state = self.inner.state.lock();
        let items = state
            .topics
            .iter()
            .filter(|(name, _)| name.project() == project)
            .map(|(name, meta)| (name.clone(), meta.topic.clone()));
        Ok(page(items, &page_request))
    }

    async fn delete_topic(&self, name: &TopicName) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let durable = {
            let mut state = inner.state.lock();
            let topic_id = state.topics.get(name).map(|m| m.id).ok_or_else(|| not_found(&name.to_string()))?;
            let now = inner.clock.now();
            inner.commit(&mut state, vec![Record::TopicDeleted { topic_id }], now)?
        };
        durable.await
    }

    async fn list_topic_subscriptions(&self, topic: &TopicName, page_request: PageRequest) -> Result<Page<SubscriptionName>> {
        let state = self.inner.state.lock();
        let meta = state.topics.get(topic).ok_or_else(|| not_found(&topic.to_string()))?;
        let mut names: Vec<SubscriptionName> = state.logs[&meta.id]
            .attached
            .iter()
            .filter_map(|id| state.subscription_names.get(id).cloned())
            .collect();
        names.sort();
        Ok(page(names.into_iter().map(|n| (n.clone(), n)), &page_request))
    }

    async fn create_subscription(&self, subscription: Subscription) -> Result<Subscription> {
        let inner = &self.inner;
        inner.check_open()?;
        delivery::parse_filter(&subscription.filter)?;
        let (durable, created) = {
            let mut state = inner.state.lock();
            if state.subscriptions.contains_key(&subscription.name) {
                return Err(already_exists(&subscription.name.to_string()));
            }
            let topic_name = subscription.topic.clone().ok_or_else(|| Error::invalid("A subscription needs a topic"))?;
            let topic_id = state.topics.get(&topic_name).map(|m| m.id).ok_or_else(|| not_found(&topic_name.to_string()))?;
            let now = inner.clock.now();
            let mut subscription = subscription;
            subscription.created = now;
            subscription.detached = false;
            let id = state.allocate_id();
            let start_after = state.next_message_id.saturating_sub(1);
            let record = SubscriptionRecord::from_subscription(id, topic_id, start_after, &subscription);
            (inner.commit(&mut state, vec![Record::SubscriptionPut(record)], now)?, subscription)
        };
        durable.await?;
        tracing::debug!(subscription = %created.name, "subscription created");
        Ok(created)
    }

    async fn get_subscription(&self, name: &SubscriptionName) -> Result<Subscription> {
        let state = self.inner.state.lock();
        state.subscriptions.get(name).map(|s| s.settings.clone()).ok_or_else(|| not_found(&name.to_string()))
    }

    async fn update_subscription(&self, subscription: Subscription) -> Result<Subscription> {
        let inner = &self.inner;
        inner.check_open()?;
        let (durable, updated) = {
            let mut state = inner.state.lock();
            let existing = state.subscriptions.get(&subscription.name).ok_or_else(|| not_found(&subscription.name.to_string()))?;
            if existing.settings.filter != subscription.filter {
                return Err(Error::invalid("The filter of a subscription cannot be changed"));
            }
            let mut updated = subscription;
            // What the store owns is not the caller's to change.
            updated.topic = existing.settings.topic.clone();
            updated.created = existing.settings.created;
            updated.detached = existing.settings.detached;
            let record = SubscriptionRecord::from_subscription(existing.id, existing.log_id, existing.start_after, &updated);
            let now = inner.clock.now();
            (inner.commit(&mut state, vec![Record::SubscriptionPut(record)], now)?, updated)
        };
        durable.await?;
        Ok(updated)
    }

    async fn list_subscriptions(&self, project: &ProjectId, page_request: PageRequest) -> Result<Page<Subscription>> {
        let state = self.inner.state.lock();
        let items = state
            .subscriptions
            .iter()
            .filter(|(name, _)| name.project() == project)
            .map(|(name, s)| (name.clone(), s.settings.clone()));
        Ok(page(items, &page_request))
    }

    async fn delete_subscription(&self, name: &SubscriptionName) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let durable = {
            let mut state = inner.state.lock();
            let subscription_id = state.subscriptions.get(name).map(|s| s.id).ok_or_else(|| not_found(&name.to_string()))?;
            let now = inner.clock.now();
            inner.commit(&mut state, vec![Record::SubscriptionDeleted { subscription_id }], now)?
        };
        durable.await
    }

    async fn detach_subscription(&self, name: &SubscriptionName) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let durable = {
            let mut state = inner.state.lock();
            let sub = state.subscriptions.get(name).ok_or_else(|| not_found(&name.to_string()))?;
            if sub.settings.detached {
                return Ok(());
            }
            let record = Record::SubscriptionDetached { subscription_id: sub.id, upto: state.next_message_id.saturating_sub(1) };
            let now = inner.clock.now();
            inner.commit(&mut state, vec![record], now)?
        };
        durable.await
    }

    async fn publish(&self, topic: &TopicName, messages: Vec<NewMessage>) -> Result<Vec<MessageId>> {
        let inner = &self.inner;
        inner.check_open()?;
        let (durable, ids, notifies, stored) = {
            let mut state = inner.state.lock();
            let topic_id = state.topics.get(topic).map(|m| m.id).ok_or_else(|| not_found(&topic.to_string()))?;
            let now = inner.clock.now();
            let mut ids = Vec::with_capacity(messages.len());
            let mut records = Vec::with_capacity(messages.len());
            let mut batch_keys: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
            let data = &state.logs[&topic_id];
            let window = data.dedup_window;
            let mut next_id = state.next_message_id;
            for message in &messages {
                if let Some(key) = message.idempotency_key() {
                    let seen = data
                        .dedup
                        .get(key)
                        .filter(|(_, at)| now.duration_since(*at).unwrap_or(Duration::ZERO) < window)
                        .map(|(id, _)| *id)
                        .or_else(|| batch_keys.get(key).copied());
                    if let Some(id) = seen {
                        ids.push(MessageId(id));
                        continue;
                    }
                    batch_keys.insert(key, next_id);
                }
                ids.push(MessageId(next_id));
                records.push(Record::Message(MessageRecord::new(topic_id, next_id, now, message)));
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
            metrics::counter!("converge_messages_deduplicated_total").increment((ids.len() - stored) as u64);
        }
        for n in notifies {
            n.notify_waiters();
        }
        Ok(ids)
    }

    async fn pull(&self, subscription: &SubscriptionName, max_messages: usize, wait: Duration) -> Result<Vec<ReceivedMessage>> {
        let inner = &self.inner;
        inner.check_open()?;
        let give_up_at = tokio::time::Instant::now() + wait;
        loop {
            let (notified, next_due) = {
                let mut state = inner.state.lock();
                let now = inner.clock.now();
                let notify = {
                    let sub = state.subscriptions.get(subscription).ok_or_else(|| not_found(&subscription.to_string()))?;
                    if sub.settings.detached {
                        return Err(Error::FailedPrecondition(format!("Subscription {subscription} is detached from its topic")));
                    }
                    sub.notify.clone()
                };
                // Register for wake-ups before looking, so a publish that lands in between
                // is not missed.
                let mut notified = Box::pin(notify.notified_owned());
                notified.as_mut().enable();

                let expired = state.subscriptions.get_mut(subscription).map(|s| s.expired_leases(now)).unwrap_or_default();
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
                let taken = sub.take(&data.log, max_messages, now, durable_end, &mut |e| inner.load(e))?;
                if !taken.is_empty() {
                    let has_dead_letter = sub.settings.dead_letter_policy.is_some();
                    metrics::counter!("converge_messages_delivered_total").increment(taken.len() as u64);
                    let redelivered = taken.iter().filter(|t| t.attempts > 1).count();
                    if redelivered > 0 {
                        metrics::counter!("converge_messages_redelivered_total").increment(redelivered as u64);
                    }
                    return Ok(taken
                        .into_iter()
                        .map(|t| ReceivedMessage {
                            ack_id: t.ack_id,
                            message: t.message,
                            delivery_attempt: if has_dead_letter { t.attempts } else { 0 },
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
                let in_clock = due.duration_since(inner.clock.now()).unwrap_or(Duration::ZERO);
                sleep_until = sleep_until.min(now_real + in_clock + Duration::from_millis(1));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(sleep_until) => {}
            }
        }
    }

    async fn acknowledge(&self, subscription: &SubscriptionName, ack_ids: &[AckId]) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let durable = {
            let mut state = inner.state.lock();
            let now = inner.clock.now();
            let sub = state.subscriptions.get_mut(subscription).ok_or_else(|| not_found(&subscription.to_string()))?;
            sub.last_activity = now;
            let ids: Vec<u64> = ack_ids
                .iter()
                .filter_map(AckRef::decode)
                .filter_map(|a| sub.live_lease(&a))
                .collect();
            if ids.is_empty() {
                return Ok(());
            }
            metrics::counter!("converge_messages_acked_total").increment(ids.len() as u64);
            let record = Record::Done { subscription_id: sub.id, ids };
            inner.commit(&mut state, vec![record], now)?
        };
        durable.await
    }

    async fn modify_ack_deadline(&self, subscription: &SubscriptionName, ack_ids: &[AckId], deadline: Duration) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let durable = {
            let mut state = inner.state.lock();
            let now = inner.clock.now();
            let sub = state.subscriptions.get_mut(subscription).ok_or_else(|| not_found(&subscription.to_string()))?;
            sub.last_activity = now;
            let ids: Vec<u64> = ack_ids
                .iter()
                .filter_map(AckRef::decode)
                .filter_map(|a| sub.live_lease(&a))
                .collect();
            if !deadline.is_zero() {
                for id in ids {
                    sub.extend(id, now + deadline);
                }
                return Ok(());
            }
            let notify = sub.notify.clone();
            let records = inner.after_failures(&mut state, subscription, ids, now)?;
            notify.notify_waiters();
            if records.is_empty() {
                return Ok(());
            }
            let notifies = notifies_for(&state, &records);
            let durable = inner.commit(&mut state, records, now)?;
            inner.wake_after(Box::pin(async { Ok(()) }), notifies);
            durable
        };
        durable.await
    }

    async fn subscription_stats(&self) -> Result<Vec<SubscriptionStats>> {
        let state = self.inner.state.lock();
        let now = self.inner.clock.now();
        Ok(state
            .subscriptions
            .iter()
            .map(|(name, sub)| {
                let (backlog, oldest) = state.logs.get(&sub.log_id).map(|d| sub.backlog(&d.log)).unwrap_or((0, None));
                SubscriptionStats {
                    name: name.clone(),
                    backlog,
                    oldest_unacked_age: oldest.and_then(|t| now.duration_since(t).ok()).unwrap_or(Duration::ZERO),
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
        let inner = &self.inner;
        inner.check_open()?;
        let durable = {
            let mut state = inner.state.lock();
            let now = inner.clock.now();
            inner.commit(&mut state, vec![Record::Probe], now)?
        };
        durable.await
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
        inner.journal.close().await
    }
}

impl Inner {
    /// The synchronous part of `maintain`: expirations, retention, leases, log truncation.
    fn maintain_state(&self) -> Result<()> {
        let inner = self;
        let mut state = inner.state.lock();
        let now = inner.clock.now();
        let names: Vec<SubscriptionName> = state.subscriptions.keys().cloned().collect();
        let mut records = Vec::new();
        for name in &names {
            let Ok((sub, data)) = state.subscription_mut(name) else { continue };
            // Expiration policy: delete subscriptions nobody has used for their TTL.
            if let Some(ttl) = sub.settings.expiration_ttl
                && now.duration_since(sub.last_activity).unwrap_or(Duration::ZERO) > ttl
            {
                tracing::info!(subscription = %name, "subscription expired after inactivity");
                records.push(Record::SubscriptionDeleted { subscription_id: sub.id });
                continue;
            }
            // Retention of unacknowledged messages.
            if let Some(cutoff) = now.checked_sub(sub.settings.message_retention) {
                let dropped = sub.expire_before(&data.log, cutoff, now);
                if dropped > 0 {
                    metrics::counter!("converge_messages_dropped_total", "reason" => "retention").increment(dropped);
                }
            }
            let expired = sub.expired_leases(now);
            if !expired.is_empty() {
                records.extend(inner.after_failures(&mut state, name, expired, now)?);
            }
            let Some(sub) = state.subscriptions.get(name) else { continue };
            if sub.next_due().is_some_and(|due| due <= now) {
                sub.notify.notify_waiters();
            }
        }
        if !records.is_empty() {
            let notifies = notifies_for(&state, &records);
            let durable = inner.commit(&mut state, records, now)?;
            inner.wake_after(durable, notifies);
        }
        truncate_logs(&mut state, &inner.journal, now);
        Ok(())
    }
}

/// Drops the oldest messages of each topic log once every reader is done with them and the
/// topic's own retention (if any) has passed; expires old idempotency keys.
fn truncate_logs(state: &mut State, journal: &Journal, now: SystemTime) {
    let State { logs, subscriptions, subscription_names, live_per_segment, .. } = state;
    for data in logs.values_mut() {
        let watermark = data
            .readers
            .iter()
            .filter_map(|id| subscription_names.get(id).and_then(|n| subscriptions.get(n)))
            .map(|s| s.floor())
            .min()
            .unwrap_or(u64::MAX);
        let mut released = Vec::new();
        while let Some(front) = data.log.front() {
            let retained = data
                .retention
                .is_some_and(|r| now.duration_since(front.publish_time).unwrap_or(Duration::ZERO) < r);
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

#[cfg(test)]
mod tests;
