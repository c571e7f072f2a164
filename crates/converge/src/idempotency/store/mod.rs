//! Where idempotency keys are remembered: what was asked under a key, who is working on it, and
//! what came out.
//!
//! A retried request is harmless only if the server can tell it is a retry and answer as it
//! did the first time. [`IdempotencyStore`] keeps one entry per `(scope, key)`:
//!
//! - a **fingerprint** of the request (a hash of what was asked), so that a key reused for a
//!   *different* request is refused ([`Begin::Mismatch`]) instead of answered with another
//!   request's outcome;
//! - a **lease** while the work is in flight: one caller holds it ([`Begin::Started`]), the
//!   others are told to come back later ([`Begin::InProgress`]). A worker that crashes holds its
//!   lease only until it expires; the next retry then takes the key over;
//! - the **outcome** once the work is done ([`IdempotencyStore::complete`]), returned to every
//!   later attempt ([`Begin::Completed`]) until the entry **expires**, a retention period after
//!   completion (24 h by default, [`DEFAULT_RETENTION`]). [`IdempotencyStore::cleanup`] deletes
//!   expired entries.
//!
//! # Fencing
//!
//! A lease that expired may be taken over while its first holder is merely slow, not dead.
//! [`Begin::Started`] therefore carries a [`LeaseToken`], a random value fixed for one holder:
//! [`IdempotencyStore::complete`] and [`IdempotencyStore::release`] take effect only with the
//! token of the current holder, so a late finisher cannot overwrite (or erase) the outcome of
//! the worker that took over; it is told so (`Ok(false)`).
//!
//! # Time
//!
//! Every backend reads time from a [`converge_core::Clock`] (the system clock unless
//! `with_clock` says otherwise) and stores instants as Unix milliseconds, so tests move a
//! [`converge_core::ManualClock`] instead of sleeping, on PostgreSQL and SQLite alike. With
//! several processes sharing one database, their clocks should agree to well within a lease:
//! a process whose clock runs ahead by more than a lease sees leases as expired early.
//!
//! # Backends
//!
//! - [`MemoryIdempotencyStore`]: a map in the process, for tests and single-process services
//!   that accept forgetting everything on restart;
//! - [`SqlIdempotencyStore`]: PostgreSQL or SQLite through sqlx, one table
//!   (`converge_idempotency` by default), created by [`SqlIdempotencyStore::migrate`]. Taking a
//!   key is one atomic `INSERT … ON CONFLICT DO UPDATE … WHERE expired … RETURNING`, so two
//!   racing workers can never both start.

mod memory;
mod sql;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

pub use memory::MemoryIdempotencyStore;
pub use sql::{DEFAULT_TABLE, IdempotencyDatabase, SqlIdempotencyStore};

/// How long a completed key is remembered unless configured otherwise: 24 hours, the window
/// in which clients commonly retry (and the broker's own deduplication window).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Proof of holding the lease on a key: a random value chosen when the lease was taken.
/// Completing or releasing a key needs it, so only the current holder can (see the module
/// documentation on fencing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub(crate) i64);

impl LeaseToken {
    /// A fresh random token. Random rather than counted: an entry may be deleted by cleanup
    /// and created again, and a counter restarting at 1 would let a holder of the old entry
    /// pass for the holder of the new one.
    pub(crate) fn random() -> Self {
        Self(rand::random::<i64>())
    }

    /// The token's value, for logs.
    pub fn value(&self) -> i64 {
        self.0
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The outcome recorded for a completed key: opaque bytes (the HTTP middleware stores a
/// response, the guard a JSON value), and when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutcome {
    /// What [`IdempotencyStore::complete`] stored.
    pub data: Vec<u8>,
    /// When the key was completed.
    pub completed_at: SystemTime,
}

/// What [`IdempotencyStore::begin`] found, and did, for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The key was new (or expired, or its previous holder's lease ran out): the caller now
    /// holds the lease and should do the work, then [`IdempotencyStore::complete`] or
    /// [`IdempotencyStore::release`] the key with this token.
    Started {
        /// The caller's proof of holding the lease.
        token: LeaseToken,
    },
    /// Another caller holds the lease on this key: the work is running (or its worker died,
    /// and the lease has not expired yet). Try again after `retry_after`.
    InProgress {
        /// How long the current lease still runs.
        retry_after: Duration,
    },
    /// The work was done: here is its outcome.
    Completed(StoredOutcome),
    /// The key is taken by a request with another fingerprint: the client reused a key for a
    /// different request. Nothing was changed.
    Mismatch,
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The table name is not a plain (optionally schema-qualified) lowercase SQL identifier.
    /// It is spliced into SQL, so only names that need no quoting are accepted.
    #[error(
        "invalid idempotency table name {0:?}: expected [schema.]name, each part of lowercase \
         letters, digits and underscores, starting with a letter or underscore, at most 48 bytes"
    )]
    InvalidTable(String),
    /// The table does not exist: [`SqlIdempotencyStore::migrate`] has not been run.
    #[error("idempotency table {0} does not exist; run SqlIdempotencyStore::migrate first")]
    MissingTable(String),
    /// The database refused or failed the statement.
    #[error("idempotency store database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The memory of idempotency keys: see the [module documentation](self) for the model.
///
/// Object safe (`Arc<dyn IdempotencyStore>`), so the middleware and the guard work on any
/// backend, including one written outside this crate.
///
/// ```
/// use std::time::Duration;
///
/// use converge::idempotency::store::{Begin, IdempotencyStore, MemoryIdempotencyStore};
///
/// # async fn example() -> Result<(), converge::idempotency::store::StoreError> {
/// let store = MemoryIdempotencyStore::new();
/// let lease = Duration::from_secs(30);
/// let Begin::Started { token } = store.begin("tenant-1", "order-42", "sha256:ab", lease).await?
/// else {
///     unreachable!("a new key starts");
/// };
/// // … do the work, then record its outcome for the retries to come:
/// store.complete("tenant-1", "order-42", token, b"201 created", Duration::from_secs(86_400)).await?;
/// assert!(matches!(
///     store.begin("tenant-1", "order-42", "sha256:ab", lease).await?,
///     Begin::Completed(outcome) if outcome.data == b"201 created"
/// ));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
/// ```
#[async_trait]
pub trait IdempotencyStore: Send + Sync + fmt::Debug {
    /// Looks up `(scope, key)` and, if it is free, takes a lease on it for `lease`, atomically:
    /// of any number of concurrent callers, at most one gets [`Begin::Started`]. A key is free
    /// if it is unknown, expired, or leased by a holder whose lease has run out. A key held or
    /// completed under another `fingerprint` is [`Begin::Mismatch`].
    async fn begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Begin, StoreError>;

    /// Records `outcome` for the key held with `token`, to be returned to every later
    /// [`IdempotencyStore::begin`] for `retention`. Returns `false`, recording nothing, if
    /// `token` no longer holds the key (the lease expired and someone took over, or the entry
    /// was cleaned up). A holder whose lease expired but was not taken over still completes.
    async fn complete(
        &self,
        scope: &str,
        key: &str,
        token: LeaseToken,
        outcome: &[u8],
        retention: Duration,
    ) -> Result<bool, StoreError>;

    /// Forgets the key held with `token`, so that the next attempt starts over at once
    /// (the work failed in a way worth retrying). Returns `false` if `token` no longer holds
    /// it.
    async fn release(&self, scope: &str, key: &str, token: LeaseToken) -> Result<bool, StoreError>;

    /// Deletes the entries that have expired (completed ones past their retention, and
    /// leased ones whose lease ran out), returning how many. Run it periodically, e.g. with
    /// [`spawn_cleanup`]; correctness does not depend on it, only the table's size does.
    async fn cleanup(&self) -> Result<u64, StoreError>;
}

/// Runs [`IdempotencyStore::cleanup`] every `interval` until `shutdown` is cancelled, logging
/// what it deleted and any failure (a failed round is retried at the next tick).
pub fn spawn_cleanup(
    store: std::sync::Arc<dyn IdempotencyStore>,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match store.cleanup().await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, "expired idempotency keys deleted"),
                Err(error) => tracing::warn!(%error, "idempotency key cleanup failed"),
            }
        }
    })
}

/// Milliseconds since the Unix epoch (0 before it, saturating far after it).
pub(crate) fn to_millis(time: SystemTime) -> i64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// The instant `millis` after the Unix epoch.
pub(crate) fn from_millis(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

/// A duration in milliseconds, saturating.
pub(crate) fn duration_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
