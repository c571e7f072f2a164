//! Behaviour every storage engine owes the broker, written once against `dyn Store`.
//!
//! The broker's service layer only sees [`Store`], so an engine is correct when it behaves like
//! the others through that trait: leases, retries, dead-lettering, ordering, filters,
//! idempotency keys, retention, snapshots and Seek, documents. The scenarios here say so with a
//! [`ManualClock`] (time moves only when a scenario moves it) and nothing engine-specific: no
//! files, no log, no SQL. Each engine instantiates them with [`conformance_tests!`](crate::conformance_tests);
//! what only one engine promises (the embedded engine's log, segments and checkpoints, or that
//! it forgets leases on restart) stays in that engine's own tests.
//!
//! The module is compiled for tests only: every engine lives in this crate, so their tests reach
//! it as `crate::conformance`. The macro already names everything through `$crate`, so making it
//! public behind a cargo feature, should an engine outside this crate need it, is a change of
//! the `cfg` line in `lib.rs` and a `[features]` entry, nothing here.
//!
//! ```ignore
//! // In an engine's tests: one module of `#[tokio::test]`s per backend.
//! crate::conformance_tests!(memory => MemoryBackend);
//! crate::conformance_tests!(disk => DiskBackend::new(), durable);
//! ```

pub mod delivery;
pub mod resources;
pub mod seek;
pub mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use converge_core::{ManualClock, Result, Store};

/// How a scenario gets a store of the engine under test.
///
/// A backend owns where the data lives (a directory, a database schema), so it can open the
/// same data again: that is what a restart is, and what [`Harness::restart`] asks for.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Opens the store on this backend's data with `clock` as its time source. The first call
    /// gives an empty store; later calls (after the previous store was closed) give the same
    /// data again if the backend is [durable](Backend::durable).
    async fn open(&self, clock: &ManualClock) -> Result<Arc<dyn Store>>;

    /// Whether data outlives a store. Restart scenarios are generated only for durable
    /// backends, since an in-memory store starts empty every time.
    fn durable(&self) -> bool;
}

/// What a scenario works with: the store under test, the clock it reads, and the backend to
/// reopen it with.
pub struct Harness {
    /// The store under test. Replaced by [`Harness::restart`]: do not keep a clone across one.
    pub store: Arc<dyn Store>,
    /// The store's clock, shared with it: advancing it is how scenarios reach deadlines,
    /// backoffs, retention and expiry without sleeping.
    pub clock: ManualClock,
    backend: Box<dyn Backend>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// Where every scenario's clock starts: a fixed, realistic time, so that runs are reproducible
/// and times near the epoch do not hide arithmetic on publish times.
pub fn start_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

impl Harness {
    /// Opens a fresh store of `backend` on a manual clock at [`start_time`].
    ///
    /// # Panics
    ///
    /// If the backend cannot open its store: a harness is test code, and the panic is the
    /// test's failure.
    pub async fn open(backend: impl Backend) -> Self {
        let clock = ManualClock::new(start_time());
        let store = backend
            .open(&clock)
            .await
            .expect("the backend opens a fresh store");
        Self {
            store,
            clock,
            backend: Box::new(backend),
        }
    }

    /// Whether [`Harness::restart`] keeps the data.
    pub fn durable(&self) -> bool {
        self.backend.durable()
    }

    /// Closes the store cleanly and opens it again on the same data, as a broker restart
    /// would. The clock keeps its time.
    ///
    /// # Panics
    ///
    /// If the backend is not durable (a restart scenario was generated for a backend that
    /// cannot keep data), or if closing or reopening fails.
    pub async fn restart(&mut self) {
        assert!(self.durable(), "a restart scenario needs a durable backend");
        self.store.close().await.expect("the store closes cleanly");
        self.store = self
            .backend
            .open(&self.clock)
            .await
            .expect("the backend reopens its data");
    }

    /// Closes the store at the end of a scenario, so that a failure to shut down cleanly is a
    /// failure of the test too.
    ///
    /// # Panics
    ///
    /// If closing fails.
    pub async fn close(self) {
        self.store.close().await.expect("the store closes cleanly");
    }
}

/// Generates one `#[tokio::test]` per conformance scenario for one backend, in a module of its
/// own (so several backends can be instantiated side by side).
///
/// `conformance_tests!(name => backend_expr)` runs every scenario that needs no restart;
/// adding `, durable` also runs the restart scenarios, for backends whose data outlives a store.
/// `backend_expr` is evaluated once per test, inside the generated module (which imports the
/// caller's items with `use super::*`), and must give a [`Backend`].
#[macro_export]
macro_rules! conformance_tests {
    (@module $module:ident => $backend:expr; [$($extra_group:ident :: $extra:ident),* $(,)?]) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $crate::conformance_tests!(@tests $backend; [
                delivery::publish_pull_ack_and_fan_out,
                delivery::nack_and_retry_backoff,
                delivery::extends_and_shortens_leases,
                delivery::dead_letters_after_max_attempts,
                delivery::filters_acknowledge_what_they_reject,
                delivery::ordering_keys_deliver_one_at_a_time_in_order,
                delivery::idempotency_keys_store_a_message_once,
                delivery::pull_options_bound_bytes_and_set_the_lease,
                delivery::exactly_once_reports_expired_and_stale_ack_ids,
                delivery::an_ack_call_naming_a_message_twice_applies_the_current_lease,
                delivery::long_poll_wakes_on_publish,
                delivery::an_ack_wakes_a_long_poll_waiting_for_the_next_message_of_its_key,
                resources::retention_expiration_and_detach,
                resources::deleting_a_topic_leaves_its_subscriptions_readable,
                resources::topic_retention_keeps_messages_longer_then_lets_them_go,
                resources::errors_name_the_resource,
                resources::lists_page_through_names,
                resources::documents_are_stored_listed_and_deleted,
                seek::seek_to_a_snapshot_brings_back_what_it_marked_unacknowledged,
                seek::seek_to_a_time_replays_acknowledged_messages_only_when_retained,
                seek::topic_retention_lets_a_seek_reach_before_the_subscription,
                seek::snapshot_and_seek_errors,
                seek::snapshots_are_listed_updated_deleted_and_expire,
                $($extra_group::$extra,)*
            ]);
        }
    };
    (@tests $backend:expr; [$($group:ident :: $name:ident),* $(,)?]) => {
        $(
            #[tokio::test]
            async fn $name() {
                let mut harness = $crate::conformance::Harness::open($backend).await;
                $crate::conformance::$group::$name(&mut harness).await;
                harness.close().await;
            }
        )*
    };
    ($module:ident => $backend:expr) => {
        $crate::conformance_tests!(@module $module => $backend; []);
    };
    ($module:ident => $backend:expr, durable) => {
        $crate::conformance_tests!(@module $module => $backend; [
            resources::a_restart_keeps_acknowledgements_and_unacknowledged_messages,
        ]);
    };
}
