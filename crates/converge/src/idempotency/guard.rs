//! A guard around side effects in systems that know nothing of idempotency.
//!
//! A handler retried by the broker calls a third-party mail API again; a print job is
//! resubmitted; a file is uploaded twice. When the system on the other side accepts no
//! idempotency key, the only defence is on our side: remember that the call was made.
//! [`IdempotencyGuard::once`] does that with an [`IdempotencyStore`]: check the key, take a
//! lease, run the call, mark it done. A concurrent attempt while the lease is held gets
//! [`GuardError::InProgress`] (nack the message, retry later); an attempt after it was done
//! gets the recorded result without running anything.
//!
//! # What it cannot guarantee
//!
//! The call and the mark are two writes to two systems, and nothing makes them atomic. If the
//! process dies (or loses its database) **after the call took effect and before it was marked
//! done**, the lease expires and the next attempt makes the call again: the side effect
//! happens twice. The guard narrows that window to the time between the call returning and one
//! database write; it does not close it. Likewise, a call still running when its lease expires
//! can run concurrently with the attempt that took over: choose a lease comfortably longer than
//! the call's own timeout. Where the other system offers anything better (an idempotency key,
//! a client reference it deduplicates on, a way to ask "did this happen?"), use it.
//!
//! Failures are not remembered: when the call returns an error, the key is released so that the
//! next attempt runs it again (a failed call is presumed not to have taken effect).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::store::{Begin, DEFAULT_RETENTION, IdempotencyStore, StoreError};

/// The scope of the guard's keys unless configured otherwise, keeping them apart from the HTTP
/// middleware's keys in a shared store.
pub const DEFAULT_SCOPE: &str = "converge.guard";

/// The fingerprint every guarded call records. The guard identifies a call by its key alone.
const FINGERPRINT: &str = "guard";

/// Why [`IdempotencyGuard::once`] did not return the call's result.
#[derive(Debug, thiserror::Error)]
pub enum GuardError<E> {
    /// Another attempt holds the lease on this key (it is running the call, or it died and
    /// its lease has not expired yet). Nothing was run: retry after `retry_after` (for a
    /// message handler, nack so that the broker redelivers later).
    #[error("the guarded call is in progress elsewhere; retry in {retry_after:?}")]
    InProgress {
        /// How long the current lease still runs.
        retry_after: Duration,
    },
    /// The call ran and failed. The key was released: the next attempt runs it again.
    #[error("the guarded call failed: {0}")]
    Failed(E),
    /// The store could not be asked; nothing was run.
    #[error("idempotency store: {0}")]
    Store(#[from] StoreError),
    /// The recorded result could not be encoded, or a recorded result could not be read back as
    /// the type asked for (a key reused for a call with another result type).
    #[error("the guarded call's result cannot be stored or read back: {0}")]
    Outcome(#[source] serde_json::Error),
}

/// Runs side effects at most once per key, as far as a store can make it so; see the
/// [module documentation](self) for what it cannot guarantee. Cheap to clone.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use converge::idempotency::guard::{GuardError, IdempotencyGuard};
/// use converge::idempotency::store::MemoryIdempotencyStore;
///
/// # #[derive(Debug, thiserror::Error)] #[error("mail provider down")] struct MailError;
/// # async fn send_mail(_to: &str) -> Result<String, MailError> { Ok("msg-1".into()) }
/// # async fn example() -> Result<(), GuardError<MailError>> {
/// let guard = IdempotencyGuard::new(Arc::new(MemoryIdempotencyStore::new()));
/// let lease = Duration::from_secs(60);
/// // In a message handler, with the key of the intent (e.g. IdempotencyKey::current()):
/// let id: String = guard.once("welcome-mail/user-7", lease, || send_mail("a@example.com")).await?;
/// // A redelivery gets the recorded id without mailing again.
/// let again: String = guard.once("welcome-mail/user-7", lease, || send_mail("a@example.com")).await?;
/// assert_eq!(id, again);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct IdempotencyGuard {
    store: Arc<dyn IdempotencyStore>,
    scope: String,
    retention: Duration,
}

impl IdempotencyGuard {
    /// A guard over `store`, with keys in [`DEFAULT_SCOPE`] remembered for
    /// [`DEFAULT_RETENTION`] (24 h).
    pub fn new(store: Arc<dyn IdempotencyStore>) -> Self {
        Self {
            store,
            scope: DEFAULT_SCOPE.to_owned(),
            retention: DEFAULT_RETENTION,
        }
    }

    /// The same guard with its keys in `scope`, e.g. one per external system, so that the
    /// same intent key can guard a mail and a print job independently.
    #[must_use]
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// The same guard remembering completed calls for `retention`. Retries arriving later than
    /// that run the call again: keep it longer than the longest retry schedule that can
    /// redeliver the intent.
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Runs `call` unless it already ran to completion under `key`, and returns its result,
    /// the recorded one on later attempts.
    ///
    /// `lease` bounds how long a crashed attempt blocks the key: choose it longer than the
    /// call can take (its timeout), or a slow call may be run a second time concurrently.
    ///
    /// # Errors
    ///
    /// [`GuardError::InProgress`] if another attempt holds the lease; [`GuardError::Failed`]
    /// if the call failed (the key is released for the next attempt); [`GuardError::Store`]
    /// if the store failed before the call (nothing ran); [`GuardError::Outcome`] if the
    /// result does not round-trip through JSON.
    ///
    /// If marking the call done fails after it succeeded, the result is still returned (the
    /// effect happened; failing would invite a retry that repeats it) and the failure is logged
    /// at error level: that key may run again once its lease expires.
    pub async fn once<T, E, F, Fut>(
        &self,
        key: impl AsRef<str>,
        lease: Duration,
        call: F,
    ) -> Result<T, GuardError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let key = key.as_ref();
        let scope = self.scope.as_str();
        let token = match self.store.begin(scope, key, FINGERPRINT, lease).await? {
            Begin::Started { token } => token,
            Begin::Completed(outcome) => {
                tracing::debug!(scope = %scope, key = %key, "guarded call already done");
                return serde_json::from_slice(&outcome.data).map_err(GuardError::Outcome);
            }
            Begin::InProgress { retry_after } => {
                tracing::debug!(scope = %scope, key = %key, ?retry_after, "guarded call in progress");
                return Err(GuardError::InProgress { retry_after });
            }
            // One fingerprint for every guarded call: only a foreign writer of this scope
            // produces a mismatch. Treat the key as taken.
            Begin::Mismatch => {
                tracing::warn!(scope = %scope, key = %key, "guard key held by another kind of request");
                return Err(GuardError::InProgress { retry_after: lease });
            }
        };
        match call().await {
            Ok(value) => {
                let encoded = serde_json::to_vec(&value).map_err(GuardError::Outcome)?;
                match self
                    .store
                    .complete(scope, key, token, &encoded, self.retention)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(
                        scope = %scope, key = %key, token = %token,
                        "guarded call finished after its lease was taken over; it may have run twice"
                    ),
                    Err(error) => tracing::error!(
                        scope = %scope, key = %key, %error,
                        "guarded call done but not recorded; it may run again after the lease"
                    ),
                }
                Ok(value)
            }
            Err(error) => {
                if let Err(release) = self.store.release(scope, key, token).await {
                    tracing::warn!(
                        scope = %scope, key = %key, error = %release,
                        "guarded call failed and its key could not be released; retries wait for the lease"
                    );
                }
                Err(GuardError::Failed(error))
            }
        }
    }
}
