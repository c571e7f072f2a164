//! The idempotency store and the side-effect guard, with the same test bodies on every backend:
//! in memory, the real PostgreSQL (127.0.0.1:5432, database `test`, a schema of its own per
//! test) and SQLite (a temporary file). Every backend runs on a manual clock, so leases and
//! retention expire without sleeping.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure};
use converge::idempotency::guard::{GuardError, IdempotencyGuard};
use converge::idempotency::store::{
    Begin, IdempotencyStore, MemoryIdempotencyStore, SqlIdempotencyStore, StoreError,
};
use converge_core::{Clock as _, ManualClock};
use sqlx::sqlite::SqlitePoolOptions;
use support::{PgSchema, SqliteDb, WAIT};
use tokio::sync::Notify;

const LEASE: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(3600);
/// A store on some backend, its manual clock, and whatever must live as long as it.
struct Backend {
    store: Arc<dyn IdempotencyStore>,
    clock: ManualClock,
    /// The PostgreSQL schema or the SQLite file, removed when the test ends.
    _database: Option<Box<dyn Send + Sync>>,
}

fn clock() -> ManualClock {
    ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
}

async fn memory() -> anyhow::Result<Backend> {
    let clock = clock();
    let store = MemoryIdempotencyStore::new().with_clock(Arc::new(clock.clone()));
    Ok(Backend {
        store: Arc::new(store),
        clock,
        _database: None,
    })
}

async fn postgres() -> anyhow::Result<Backend> {
    let clock = clock();
    let table = format!("idem_{}", uuid::Uuid::new_v4().simple());
    let schema = PgSchema::new().await?;
    let store = SqlIdempotencyStore::new(schema.pool.clone())
        .with_table(&table)?
        .with_clock(Arc::new(clock.clone()));
    store.migrate().await?;
    // Twice: migration is idempotent.
    store.migrate().await?;
    Ok(Backend {
        store: Arc::new(store),
        clock,
        _database: Some(Box::new(schema)),
    })
}

async fn sqlite() -> anyhow::Result<Backend> {
    let clock = clock();
    let db = SqliteDb::new("keys.db").await?;
    let store = SqlIdempotencyStore::new(db.pool.clone()).with_clock(Arc::new(clock.clone()));
    store.migrate().await?;
    store.migrate().await?;
    Ok(Backend {
        store: Arc::new(store),
        clock,
        _database: Some(Box::new(db)),
    })
}

/// Generates `mod $test { memory, postgres, sqlite }`, each running `$test(backend)`.
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn memory() -> anyhow::Result<()> {
                super::$test(super::memory().await?).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() -> anyhow::Result<()> {
                super::$test(super::postgres().await?).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() -> anyhow::Result<()> {
                super::$test(super::sqlite().await?).await
            }
        }
    )*};
}

on_every_backend!(
    lifecycle,
    concurrent_begins_start_once,
    expired_lease_is_taken_over_and_late_finisher_fenced,
    release_lets_the_next_attempt_start,
    expiry_and_cleanup,
    scopes_are_independent,
    guard_runs_once_under_concurrency,
    guard_failure_is_not_remembered,
    guard_crash_is_taken_over_after_the_lease,
);

fn started(begin: &Begin) -> anyhow::Result<converge::idempotency::store::LeaseToken> {
    match begin {
        Begin::Started { token } => Ok(*token),
        other => bail!("expected Started, got {other:?}"),
    }
}

async fn lifecycle(b: Backend) -> anyhow::Result<()> {
    let s = &b.store;
    let token = started(&s.begin("t", "k1", "fp-a", LEASE).await?)?;
    // A retry while the first runs: in progress, for the rest of the lease.
    b.clock.advance(Duration::from_secs(10));
    match s.begin("t", "k1", "fp-a", LEASE).await? {
        Begin::InProgress { retry_after } => ensure!(
            retry_after == Duration::from_secs(20),
            "retry_after {retry_after:?}"
        ),
        other => bail!("expected InProgress, got {other:?}"),
    }
    // Another request under the same key: mismatch, while running and once done.
    ensure!(s.begin("t", "k1", "fp-b", LEASE).await? == Begin::Mismatch);
    let completed_at = b.clock.now();
    ensure!(
        s.complete("t", "k1", token, b"outcome-1", RETENTION)
            .await?
    );
    // Completing twice does nothing.
    ensure!(
        !s.complete("t", "k1", token, b"outcome-2", RETENTION)
            .await?
    );
    match s.begin("t", "k1", "fp-a", LEASE).await? {
        Begin::Completed(outcome) => {
            ensure!(outcome.data == b"outcome-1", "data {:?}", outcome.data);
            ensure!(outcome.completed_at == completed_at);
        }
        other => bail!("expected Completed, got {other:?}"),
    }
    ensure!(s.begin("t", "k1", "fp-b", LEASE).await? == Begin::Mismatch);
    // A completed key cannot be released.
    ensure!(!s.release("t", "k1", token).await?);
    Ok(())
}

async fn concurrent_begins_start_once(b: Backend) -> anyhow::Result<()> {
    let attempts: Vec<_> = (0..50)
        .map(|_| {
            let store = b.store.clone();
            tokio::spawn(async move { store.begin("t", "race", "fp", LEASE).await })
        })
        .collect();
    let mut started = 0;
    let mut in_progress = 0;
    for attempt in attempts {
        match attempt.await?? {
            Begin::Started { .. } => started += 1,
            Begin::InProgress { .. } => in_progress += 1,
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(
        (started, in_progress) == (1, 49),
        "started {started}, in progress {in_progress}"
    );
    // The same race on an expired lease: one takes it over.
    b.clock.advance(LEASE);
    let attempts: Vec<_> = (0..50)
        .map(|_| {
            let store = b.store.clone();
            tokio::spawn(async move { store.begin("t", "race", "fp", LEASE).await })
        })
        .collect();
    let mut started = 0;
    for attempt in attempts {
        if matches!(attempt.await??, Begin::Started { .. }) {
            started += 1;
        }
    }
    ensure!(started == 1, "{started} took the expired lease over");
    Ok(())
}

async fn expired_lease_is_taken_over_and_late_finisher_fenced(b: Backend) -> anyhow::Result<()> {
    let s = &b.store;
    let first = started(&s.begin("t", "k", "fp", LEASE).await?)?;
    b.clock.advance(LEASE - Duration::from_millis(1));
    ensure!(matches!(
        s.begin("t", "k", "fp", LEASE).await?,
        Begin::InProgress { .. }
    ));
    b.clock.advance(Duration::from_millis(1));
    let second = started(&s.begin("t", "k", "fp", LEASE).await?)?;
    ensure!(first != second, "the takeover reused the token");
    // The first worker was only slow: its late outcome and release are refused.
    ensure!(!s.complete("t", "k", first, b"late", RETENTION).await?);
    ensure!(!s.release("t", "k", first).await?);
    ensure!(
        s.complete("t", "k", second, b"new owner", RETENTION)
            .await?
    );
    match s.begin("t", "k", "fp", LEASE).await? {
        Begin::Completed(outcome) => ensure!(outcome.data == b"new owner"),
        other => bail!("expected Completed, got {other:?}"),
    }
    // A holder whose lease ran out but was not taken over still completes.
    let slow = started(&s.begin("t", "slow", "fp", LEASE).await?)?;
    b.clock.advance(LEASE * 2);
    ensure!(s.complete("t", "slow", slow, b"done", RETENTION).await?);
    Ok(())
}

async fn release_lets_the_next_attempt_start(b: Backend) -> anyhow::Result<()> {
    let s = &b.store;
    let token = started(&s.begin("t", "k", "fp", LEASE).await?)?;
    ensure!(s.release("t", "k", token).await?);
    ensure!(!s.release("t", "k", token).await?);
    // No waiting for the lease, and another fingerprint is fine: the key is free again.
    let again = started(&s.begin("t", "k", "other", LEASE).await?)?;
    ensure!(!s.complete("t", "k", token, b"x", RETENTION).await?);
    ensure!(s.complete("t", "k", again, b"x", RETENTION).await?);
    Ok(())
}

async fn expiry_and_cleanup(b: Backend) -> anyhow::Result<()> {
    let s = &b.store;
    let done = started(&s.begin("t", "done", "fp", LEASE).await?)?;
    ensure!(s.complete("t", "done", done, b"x", RETENTION).await?);
    started(&s.begin("t", "abandoned", "fp", LEASE).await?)?;
    ensure!(s.cleanup().await? == 0, "nothing has expired yet");
    b.clock.advance(LEASE);
    // The abandoned lease has expired; the completed key is kept for its retention.
    ensure!(s.cleanup().await? == 1);
    ensure!(matches!(
        s.begin("t", "done", "fp", LEASE).await?,
        Begin::Completed(_)
    ));
    b.clock.advance(RETENTION);
    let live = started(&s.begin("t", "live", "fp", LEASE).await?)?;
    // Past retention the key is free even before cleanup, and under another fingerprint.
    let reused = started(&s.begin("t", "done", "other", LEASE).await?)?;
    ensure!(s.release("t", "done", reused).await?);
    b.clock.advance(Duration::from_secs(1));
    ensure!(s.cleanup().await? == 0, "only live entries are left");
    ensure!(s.complete("t", "live", live, b"y", RETENTION).await?);
    b.clock.advance(RETENTION);
    ensure!(s.cleanup().await? == 1);
    Ok(())
}

async fn scopes_are_independent(b: Backend) -> anyhow::Result<()> {
    let s = &b.store;
    let a = started(&s.begin("tenant-a", "k", "fp-a", LEASE).await?)?;
    started(&s.begin("tenant-b", "k", "fp-b", LEASE).await?)?;
    ensure!(s.complete("tenant-a", "k", a, b"a", RETENTION).await?);
    ensure!(matches!(
        s.begin("tenant-b", "k", "fp-b", LEASE).await?,
        Begin::InProgress { .. }
    ));
    Ok(())
}

async fn guard_runs_once_under_concurrency(b: Backend) -> anyhow::Result<()> {
    let guard = IdempotencyGuard::new(b.store.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let call = |runs: Arc<AtomicUsize>, release: Arc<Notify>| async move {
        let n = runs.fetch_add(1, Ordering::SeqCst);
        release.notified().await;
        Ok::<_, std::io::Error>(format!("mail-{n}"))
    };
    // The first attempt takes the lease and waits inside the call.
    let first = tokio::spawn({
        let (guard, runs, release) = (guard.clone(), runs.clone(), release.clone());
        async move { guard.once("mail/1", LEASE, || call(runs, release)).await }
    });
    wait_until(|| runs.load(Ordering::SeqCst) == 1).await?;
    // Concurrent duplicates are told to come back later, and run nothing.
    let duplicates: Vec<_> = (0..20)
        .map(|_| {
            let (guard, runs, release) = (guard.clone(), runs.clone(), release.clone());
            tokio::spawn(async move { guard.once("mail/1", LEASE, || call(runs, release)).await })
        })
        .collect();
    for duplicate in duplicates {
        match duplicate.await? {
            Err(GuardError::InProgress { retry_after }) => ensure!(retry_after <= LEASE),
            other => bail!("expected InProgress, got {other:?}"),
        }
    }
    release.notify_one();
    let value = first.await??;
    ensure!(value == "mail-0");
    // After it is done, attempts get the recorded result without running.
    for _ in 0..5 {
        let again: String = guard
            .once("mail/1", LEASE, || call(runs.clone(), release.clone()))
            .await?;
        ensure!(again == value);
    }
    ensure!(runs.load(Ordering::SeqCst) == 1);
    // Reading the result back as another type is an error, not a silent re-run.
    let wrong: Result<u64, GuardError<std::io::Error>> =
        guard.once("mail/1", LEASE, || async { Ok(7) }).await;
    ensure!(matches!(wrong, Err(GuardError::Outcome(_))), "{wrong:?}");
    // Another scope guards another system under the same key.
    let printer = IdempotencyGuard::new(b.store.clone()).with_scope("printer");
    let printed: u32 = printer
        .once("mail/1", LEASE, || async { Ok::<_, std::io::Error>(3) })
        .await?;
    ensure!(printed == 3);
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("provider unavailable")]
struct ProviderDown;

async fn guard_failure_is_not_remembered(b: Backend) -> anyhow::Result<()> {
    let guard = IdempotencyGuard::new(b.store.clone()).with_retention(RETENTION);
    let runs = AtomicUsize::new(0);
    let failed: Result<u32, _> = guard
        .once("k", LEASE, || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Err(ProviderDown)
        })
        .await;
    ensure!(matches!(failed, Err(GuardError::Failed(ProviderDown))));
    // The next attempt runs at once (no lease to wait out) and its success is remembered.
    let ok: u32 = guard
        .once("k", LEASE, || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ProviderDown>(5)
        })
        .await?;
    ensure!(ok == 5);
    let again: u32 = guard
        .once("k", LEASE, || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ProviderDown>(6)
        })
        .await?;
    ensure!(again == 5 && runs.load(Ordering::SeqCst) == 2);
    // After the retention period the call runs again.
    b.clock.advance(RETENTION);
    let later: u32 = guard
        .once("k", LEASE, || async { Ok::<_, ProviderDown>(7) })
        .await?;
    ensure!(later == 7);
    Ok(())
}

async fn guard_crash_is_taken_over_after_the_lease(b: Backend) -> anyhow::Result<()> {
    let guard = IdempotencyGuard::new(b.store.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    // A worker that dies inside the call: its future is dropped mid-flight.
    let crashed = tokio::spawn({
        let (guard, runs) = (guard.clone(), runs.clone());
        async move {
            guard
                .once("k", LEASE, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<Result<u32, ProviderDown>>().await
                })
                .await
        }
    });
    wait_until(|| runs.load(Ordering::SeqCst) == 1).await?;
    crashed.abort();
    ensure!(crashed.await.is_err_and(|e| e.is_cancelled()));
    let attempt = || {
        let runs = runs.clone();
        guard.once("k", LEASE, move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ProviderDown>(42_u32)
        })
    };
    ensure!(matches!(
        attempt().await,
        Err(GuardError::InProgress { .. })
    ));
    b.clock.advance(LEASE);
    ensure!(attempt().await? == 42);
    ensure!(attempt().await? == 42);
    ensure!(runs.load(Ordering::SeqCst) == 2, "the takeover ran once");
    Ok(())
}

#[tokio::test]
async fn invalid_table_names_are_refused() -> anyhow::Result<()> {
    let pool = SqlitePoolOptions::new().connect("sqlite::memory:").await?;
    let refused = SqlIdempotencyStore::new(pool.clone()).with_table("keys; drop table x");
    ensure!(matches!(refused, Err(StoreError::InvalidTable(_))));
    // Before migrate, the table is reported missing, not as a bare database error.
    let store = SqlIdempotencyStore::new(pool).with_table("not_migrated")?;
    let error = store.begin("", "k", "fp", LEASE).await.unwrap_err();
    ensure!(matches!(error, StoreError::MissingTable(_)), "{error:?}");
    Ok(())
}

async fn wait_until(condition: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        ensure!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
