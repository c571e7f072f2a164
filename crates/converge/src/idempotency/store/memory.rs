//! The idempotency store in memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use converge_core::{Clock, SystemClock};
use parking_lot::Mutex;

use super::{Begin, IdempotencyStore, LeaseToken, StoreError, StoredOutcome};

/// An [`IdempotencyStore`] in a map in this process: for tests (with a
/// [`converge_core::ManualClock`] to expire leases without sleeping) and for single-process
/// services that can afford to forget every key on restart. Cheap to clone; clones share the
/// entries.
///
/// ```
/// use std::sync::Arc;
/// use std::time::{Duration, SystemTime};
///
/// use converge::idempotency::store::{Begin, IdempotencyStore, MemoryIdempotencyStore};
/// use converge_core::ManualClock;
///
/// # async fn example() -> Result<(), converge::idempotency::store::StoreError> {
/// let clock = ManualClock::new(SystemTime::UNIX_EPOCH);
/// let store = MemoryIdempotencyStore::new().with_clock(Arc::new(clock.clone()));
/// let lease = Duration::from_secs(30);
/// assert!(matches!(store.begin("", "k", "f", lease).await?, Begin::Started { .. }));
/// assert!(matches!(store.begin("", "k", "f", lease).await?, Begin::InProgress { .. }));
/// clock.advance(lease); // the first worker died: its lease runs out
/// assert!(matches!(store.begin("", "k", "f", lease).await?, Begin::Started { .. }));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct MemoryIdempotencyStore {
    entries: Arc<Mutex<HashMap<(String, String), Entry>>>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug)]
struct Entry {
    fingerprint: String,
    token: LeaseToken,
    /// The end of the lease while running, the end of retention once completed.
    expires_at: SystemTime,
    outcome: Option<StoredOutcome>,
}

impl Default for MemoryIdempotencyStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryIdempotencyStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self {
            entries: Arc::default(),
            clock: Arc::new(SystemClock),
        }
    }

    /// The same store reading time from `clock` (tests: a manual clock).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How many entries the store holds, expired ones included until cleanup.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        let now = self.clock.now();
        let mut entries = self.entries.lock();
        let id = (scope.to_owned(), key.to_owned());
        if let Some(entry) = entries.get(&id).filter(|entry| entry.expires_at > now) {
            return Ok(if entry.fingerprint != fingerprint {
                Begin::Mismatch
            } else if let Some(outcome) = &entry.outcome {
                Begin::Completed(outcome.clone())
            } else {
                Begin::InProgress {
                    retry_after: entry.expires_at.duration_since(now).unwrap_or_default(),
                }
            });
        }
        let token = LeaseToken::random();
        entries.insert(
            id,
            Entry {
                fingerprint: fingerprint.to_owned(),
                token,
                expires_at: now + lease,
                outcome: None,
            },
        );
        Ok(Begin::Started { token })
    }

    async fn complete(
        &self,
        scope: &str,
        key: &str,
        token: LeaseToken,
        outcome: &[u8],
        retention: Duration,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let mut entries = self.entries.lock();
        let Some(entry) = entries
            .get_mut(&(scope.to_owned(), key.to_owned()))
            .filter(|entry| entry.token == token && entry.outcome.is_none())
        else {
            return Ok(false);
        };
        entry.outcome = Some(StoredOutcome {
            data: outcome.to_vec(),
            completed_at: now,
        });
        entry.expires_at = now + retention;
        Ok(true)
    }

    async fn release(&self, scope: &str, key: &str, token: LeaseToken) -> Result<bool, StoreError> {
        let mut entries = self.entries.lock();
        let id = (scope.to_owned(), key.to_owned());
        let held = entries
            .get(&id)
            .is_some_and(|entry| entry.token == token && entry.outcome.is_none());
        if held {
            entries.remove(&id);
        }
        Ok(held)
    }

    async fn cleanup(&self) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let mut entries = self.entries.lock();
        let before = entries.len();
        entries.retain(|_, entry| entry.expires_at > now);
        Ok((before - entries.len()) as u64)
    }
}
