//! The relay: reads committed outbox rows in order, publishes them, marks them published, and
//! deletes them once they are old.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use converge_core::limits::{MAX_PUBLISH_MESSAGES, MAX_PUBLISH_REQUEST_BYTES};
use futures::StreamExt as _;
use sqlx::{PgPool, Pool, SqlitePool};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::row::PendingRow;
use super::{Outbox, OutboxDatabase, OutboxError, postgres, sealed, sqlite};
use crate::transport::{Code, OutgoingMessage, Transport, TransportError};

/// Rows deleted per statement by cleanup, so that no statement holds many row locks or runs
/// for long.
const CLEANUP_BATCH: usize = 1_000;

/// How often the relay logs what it has done (when it has done anything).
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The first delay before looking again at rows held back by the snapshot horizon; it doubles
/// up to the poll interval (at most one second) while they stay held back.
const HORIZON_RETRY_MIN: Duration = Duration::from_millis(10);

/// The first delay after a failed round (broker or database unreachable).
const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// How a relay behaves. The defaults suit a relay inside a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// How often the relay looks for rows without being woken. With PostgreSQL notifications
    /// the relay is woken at each commit and polling is only the fallback (a lost notification,
    /// a reconnecting listener); without them (SQLite, or notifications turned off) it is the
    /// latency of the relay. Standby relays also try to take over this often.
    pub poll_interval: Duration,
    /// The most rows read, published and marked in one round. A full batch is followed by the
    /// next round at once.
    pub batch_size: usize,
    /// Published rows older than this are deleted; `None` keeps them forever. Keep at least
    /// the topic's deduplication window (24 h by default) if rows may be re-enqueued with the
    /// same key: the table's unique key is what refuses them once the broker has forgotten.
    pub retention: Option<Duration>,
    /// How often the leader deletes old published rows.
    pub cleanup_interval: Duration,
    /// How many publish calls (one per topic and ordering key) run at once. Calls for one
    /// ordering key never overlap, so its order is kept.
    pub max_concurrent_publishes: usize,
    /// The longest wait between rounds after failures (the wait doubles from 100 ms).
    pub max_backoff: Duration,
}

impl Default for RelayConfig {
    /// Polls every second, 100 rows a round, keeps published rows 24 hours and cleans up
    /// every minute, 8 concurrent publishes, backs off up to 30 seconds.
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            batch_size: 100,
            retention: Some(Duration::from_secs(24 * 3600)),
            cleanup_interval: Duration::from_secs(60),
            max_concurrent_publishes: 8,
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What one round of [`OutboxRelay::publish_batch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows read (committed, below the snapshot horizon, not yet published).
    pub read: usize,
    /// Rows the broker stored (it answered with their ids) and that are now marked published.
    pub published: usize,
    /// Rows whose publish failed; they stay pending and are tried again in a later round.
    pub failed: usize,
    /// Whether committed rows are held back because an older transaction is still open
    /// (PostgreSQL only): they are published once it ends.
    pub waiting_for_horizon: bool,
    /// How long the oldest published row waited between enqueue and publish.
    pub max_lag: Duration,
}

/// The database a relay reads, whichever dialect.
#[derive(Debug, Clone)]
pub enum RelayPool {
    /// PostgreSQL: horizon-bounded reads, leader lock, notifications.
    Postgres(PgPool),
    /// SQLite: id order, polling.
    Sqlite(SqlitePool),
}

/// Publishes committed outbox rows through a [`Transport`], in order, without duplicates.
///
/// [`OutboxRelay::run`] is the long-running loop, inside the service (spawn it next to the
/// server) or on its own (`converge relay --database-url ...`). With PostgreSQL, any number of
/// relays may run on one outbox: one takes a session advisory lock and publishes, the others
/// stand by and take over when its session ends.
///
/// A row is marked published only after the broker answered with message ids. If the relay
/// dies in between, the row is published again and the broker drops the repeat by its
/// idempotency key (see the [module documentation](super)).
///
/// # Example
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use converge::outbox::{Outbox, OutboxRelay, RelayConfig};
/// use converge::Transport;
/// use tokio_util::sync::CancellationToken;
///
/// # async fn example(pool: sqlx::PgPool, transport: Arc<dyn Transport>) -> Result<(), converge::outbox::OutboxError> {
/// let relay = OutboxRelay::new(Outbox::new(), pool, transport).with_config(RelayConfig {
///     poll_interval: Duration::from_secs(5),
///     ..RelayConfig::default()
/// });
/// let shutdown = CancellationToken::new();
/// let task = tokio::spawn({
///     let shutdown = shutdown.clone();
///     async move { relay.run(shutdown).await }
/// });
/// // ... on SIGTERM:
/// shutdown.cancel();
/// task.await.expect("relay task")?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct OutboxRelay {
    outbox: Outbox,
    pool: RelayPool,
    transport: Arc<dyn Transport>,
    config: RelayConfig,
}

impl OutboxRelay {
    /// A relay for `outbox` in the database of `pool`, publishing through `transport`, with
    /// the default [`RelayConfig`].
    pub fn new<DB: OutboxDatabase>(
        outbox: Outbox,
        pool: Pool<DB>,
        transport: Arc<dyn Transport>,
    ) -> Self {
        Self {
            outbox,
            pool: <DB as sealed::Sealed>::relay_pool(pool),
            transport,
            config: RelayConfig::default(),
        }
    }

    /// Connects to the database at `url` (`postgres://…`, `postgresql://…` or `sqlite:…`) with
    /// a small pool of its own, for a relay configured by URL (`converge relay`). A service
    /// that already has a pool should pass it to [`OutboxRelay::new`] instead.
    ///
    /// # Errors
    ///
    /// [`OutboxError::UnsupportedDatabase`] for another scheme; [`OutboxError::Database`] if
    /// the database cannot be reached (a SQLite file must exist).
    pub async fn connect(
        url: &str,
        outbox: Outbox,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, OutboxError> {
        // The relay needs one connection at a time for its rounds; the leader lock and the
        // listener have connections of their own.
        const POOL_SIZE: u32 = 4;
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme {
            "postgres" | "postgresql" => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(POOL_SIZE)
                    .connect(url)
                    .await?;
                Ok(Self::new(outbox, pool, transport))
            }
            "sqlite" => {
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(POOL_SIZE)
                    .connect(url)
                    .await?;
                Ok(Self::new(outbox, pool, transport))
            }
            other => Err(OutboxError::UnsupportedDatabase(other.to_owned())),
        }
    }

    /// Runs [`Outbox::migrate`] on the relay's own database: for a relay started before (or
    /// instead of) the application that owns the table.
    ///
    /// # Errors
    ///
    /// As [`Outbox::migrate`].
    pub async fn migrate(&self) -> Result<(), OutboxError> {
        match &self.pool {
            RelayPool::Postgres(pool) => self.outbox.migrate(pool).await,
            RelayPool::Sqlite(pool) => self.outbox.migrate(pool).await,
        }
    }

    /// The same relay with another configuration.
    #[must_use]
    pub fn with_config(mut self, config: RelayConfig) -> Self {
        self.config = RelayConfig {
            batch_size: config.batch_size.max(1),
            max_concurrent_publishes: config.max_concurrent_publishes.max(1),
            ..config
        };
        self
    }

    /// The configuration in use.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Runs until `shutdown` is cancelled: takes the leader lock (PostgreSQL; standing by
    /// while another relay holds it), then publishes rows as they commit, woken by
    /// notifications and polling every [`RelayConfig::poll_interval`], and deletes old
    /// published rows. Failures of the broker or the database are logged and retried with
    /// backoff; a round in progress when `shutdown` fires is finished first.
    ///
    /// # Errors
    ///
    /// [`OutboxError::MissingTable`] if the outbox table does not exist: retrying cannot fix
    /// a missing [`Outbox::migrate`].
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), OutboxError> {
        let wake = Arc::new(Notify::new());
        let stop_listening = shutdown.child_token();
        tracing::info!(table = %self.outbox.table(), "outbox relay starting");
        let listener = match &self.pool {
            RelayPool::Postgres(pool) if self.outbox.notify() => {
                let (ready, listening) = oneshot::channel();
                let listener = tokio::spawn(postgres::listen(
                    self.outbox.clone(),
                    pool.clone(),
                    wake.clone(),
                    ready,
                    stop_listening.clone(),
                ));
                // Listen before the first read, so that no commit falls in between unseen.
                let _ = listening.await;
                Some(listener)
            }
            _ => None,
        };
        let result = self.run_until_shutdown(&wake, &shutdown).await;
        stop_listening.cancel();
        if let Some(listener) = listener {
            let _ = listener.await;
        }
        match &result {
            Ok(()) => tracing::info!(table = %self.outbox.table(), "outbox relay stopped"),
            Err(error) => {
                tracing::error!(table = %self.outbox.table(), %error, "outbox relay failed");
            }
        }
        result
    }

    /// [`run`](Self::run) until `shutdown` completes (a signal handler, say), for callers
    /// without a [`CancellationToken`] at hand.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) -> Result<(), OutboxError> {
        let token = CancellationToken::new();
        let run = self.run(token.clone());
        tokio::pin!(run);
        tokio::select! {
            result = &mut run => return result,
            () = shutdown => token.cancel(),
        }
        run.await
    }

    async fn run_until_shutdown(
        &self,
        wake: &Notify,
        shutdown: &CancellationToken,
    ) -> Result<(), OutboxError> {
        let mut progress = Progress::new();
        loop {
            let mut leadership = match &self.pool {
                RelayPool::Postgres(pool) => match self.await_leadership(pool, shutdown).await? {
                    Some(leadership) => Some(leadership),
                    None => return Ok(()),
                },
                RelayPool::Sqlite(_) => None,
            };
            let outcome = self
                .lead(leadership.as_mut(), wake, shutdown, &mut progress)
                .await;
            if let Some(leadership) = leadership {
                leadership.close().await;
            }
            match outcome {
                Lead::Shutdown => return Ok(()),
                Lead::LostLock => {}
                Lead::Fatal(error) => return Err(error),
            }
        }
    }

    /// Waits until this relay holds the leader lock; `None` on shutdown.
    async fn await_leadership(
        &self,
        pool: &PgPool,
        shutdown: &CancellationToken,
    ) -> Result<Option<postgres::LockSession>, OutboxError> {
        let table = self.outbox.table();
        let mut session: Option<postgres::LockSession> = None;
        let mut standing_by = false;
        loop {
            if session.is_none() {
                match postgres::LockSession::open(&self.outbox, pool).await {
                    Ok(opened) => session = Some(opened),
                    Err(error @ OutboxError::MissingTable(_)) => return Err(error),
                    Err(error) => {
                        tracing::warn!(table = %table, %error, "cannot open the outbox relay lock session; retrying");
                    }
                }
            }
            if let Some(open) = session.as_mut() {
                match open.try_lock().await {
                    Ok(true) => {
                        tracing::info!(table = %table, "outbox relay is the leader; publishing");
                        return Ok(session);
                    }
                    Ok(false) if !standing_by => {
                        tracing::info!(table = %table, "another outbox relay is publishing; standing by");
                        standing_by = true;
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(table = %table, %error, "cannot take the outbox relay lock; retrying");
                        session = None;
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    if let Some(open) = session {
                        open.close().await;
                    }
                    return Ok(None);
                }
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// Publishes rounds until shutdown, a lost lock or a fatal error.
    async fn lead(
        &self,
        mut leadership: Option<&mut postgres::LockSession>,
        wake: &Notify,
        shutdown: &CancellationToken,
        progress: &mut Progress,
    ) -> Lead {
        let table = self.outbox.table();
        let mut backoff = Doubling::new(BACKOFF_MIN, self.config.max_backoff);
        let horizon_max = self.config.poll_interval.min(Duration::from_secs(1));
        let mut horizon = Doubling::new(HORIZON_RETRY_MIN, horizon_max);
        let mut next_cleanup = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return Lead::Shutdown;
            }
            if let Some(leadership) = leadership.as_deref_mut()
                && let Err(error) = leadership.check().await
            {
                tracing::warn!(table = %table, %error, "lost the outbox relay lock; standing by");
                return Lead::LostLock;
            }
            // (delay before the next round, whether a notification may cut it short)
            let (delay, wakeable) = match self.publish_batch().await {
                Ok(report) => {
                    progress.record(&report);
                    if report.failed > 0 && report.published == 0 {
                        (backoff.next(), false)
                    } else {
                        backoff.reset();
                        if report.read >= self.config.batch_size {
                            (Duration::ZERO, true)
                        } else if report.waiting_for_horizon {
                            (horizon.next(), true)
                        } else {
                            horizon.reset();
                            (self.config.poll_interval, true)
                        }
                    }
                }
                Err(error @ OutboxError::MissingTable(_)) => return Lead::Fatal(error),
                Err(error) => {
                    tracing::warn!(table = %table, %error, "outbox relay round failed; retrying");
                    (backoff.next(), false)
                }
            };
            if self.config.retention.is_some() && Instant::now() >= next_cleanup {
                match self.cleanup().await {
                    Ok(0) => {}
                    Ok(deleted) => {
                        tracing::info!(table = %table, deleted, "deleted old outbox rows")
                    }
                    Err(error @ OutboxError::MissingTable(_)) => return Lead::Fatal(error),
                    Err(error) => tracing::warn!(table = %table, %error, "outbox cleanup failed"),
                }
                next_cleanup = Instant::now() + self.config.cleanup_interval;
            }
            progress.log_if_due(table);
            if delay.is_zero() {
                continue;
            }
            let cleanup_due = async {
                if self.config.retention.is_some() {
                    tokio::time::sleep_until(next_cleanup).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            let woken = async {
                if wakeable {
                    wake.notified().await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return Lead::Shutdown,
                () = tokio::time::sleep(delay) => {}
                () = woken => {}
                () = cleanup_due => {}
            }
        }
    }

    /// One round: reads up to [`RelayConfig::batch_size`] committed rows in order, publishes
    /// them (one call per topic and ordering key, calls for different keys concurrently), and
    /// marks those the broker stored. Rows whose publish failed stay pending.
    ///
    /// [`run`](Self::run) calls this in a loop while holding the leader lock; calling it
    /// directly takes no lock, which is for tests and for applications that schedule rounds
    /// themselves (run one scheduler per outbox: concurrent rounds publish rows twice, which
    /// the broker deduplicates, but may reorder them).
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] if reading or marking fails (published rows that could not
    /// be marked are published again later and deduplicated by the broker);
    /// [`OutboxError::MissingTable`] if there is no outbox table.
    pub async fn publish_batch(&self) -> Result<BatchReport, OutboxError> {
        let limit = self.config.batch_size;
        let (rows, waiting_for_horizon) = match &self.pool {
            RelayPool::Postgres(pool) => postgres::fetch_pending(&self.outbox, pool, limit).await?,
            RelayPool::Sqlite(pool) => sqlite::fetch_pending(&self.outbox, pool, limit).await?,
        };
        let mut report = BatchReport {
            read: rows.len(),
            waiting_for_horizon,
            ..BatchReport::default()
        };
        if rows.is_empty() {
            return Ok(report);
        }
        let ages: HashMap<i64, Duration> = rows.iter().map(|row| (row.id, row.age)).collect();
        let (published, failed) = self.publish_rows(rows).await;
        report.failed = failed;
        if published.is_empty() {
            return Ok(report);
        }
        let marked = match &self.pool {
            RelayPool::Postgres(pool) => {
                postgres::mark_published(&self.outbox, pool, &published).await?
            }
            RelayPool::Sqlite(pool) => {
                sqlite::mark_published(&self.outbox, pool, &published).await?
            }
        };
        if usize::try_from(marked).unwrap_or(usize::MAX) < published.len() {
            tracing::debug!(
                table = %self.outbox.table(),
                published = published.len(),
                marked,
                "some outbox rows were already marked published by another relay"
            );
        }
        report.published = published.len();
        report.max_lag = published
            .iter()
            .filter_map(|(id, _)| ages.get(id))
            .max()
            .copied()
            .unwrap_or_default();
        tracing::debug!(
            table = %self.outbox.table(),
            read = report.read,
            published = report.published,
            failed = report.failed,
            lag_ms = report.max_lag.as_millis(),
            "outbox round"
        );
        Ok(report)
    }

    /// Deletes rows published more than [`RelayConfig::retention`] ago, in batches; returns
    /// how many. Does nothing when retention is `None`. [`run`](Self::run) calls it every
    /// [`RelayConfig::cleanup_interval`] while it leads.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] if a delete fails (what was deleted before stays deleted).
    pub async fn cleanup(&self) -> Result<u64, OutboxError> {
        let Some(retention) = self.config.retention else {
            return Ok(0);
        };
        let mut deleted = 0;
        loop {
            let batch = match &self.pool {
                RelayPool::Postgres(pool) => {
                    postgres::delete_published(&self.outbox, pool, retention, CLEANUP_BATCH).await?
                }
                RelayPool::Sqlite(pool) => {
                    sqlite::delete_published(&self.outbox, pool, retention, CLEANUP_BATCH).await?
                }
            };
            deleted += batch;
            if batch < CLEANUP_BATCH as u64 {
                return Ok(deleted);
            }
        }
    }

    /// Publishes `rows` (in `(txid, id)` order) grouped by topic and ordering key; returns the
    /// `(row id, message id)` pairs the broker stored and the number of rows that failed.
    async fn publish_rows(&self, rows: Vec<PendingRow>) -> (Vec<(i64, String)>, usize) {
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<(String, String), usize> = HashMap::new();
        for row in rows {
            let key = (row.topic.clone(), row.message.ordering_key.clone());
            let at = *index.entry(key).or_insert_with(|| {
                groups.push(Group {
                    topic: row.topic.clone(),
                    rows: Vec::new(),
                });
                groups.len() - 1
            });
            groups[at].rows.push(row);
        }
        let outcomes: Vec<GroupOutcome> = futures::stream::iter(groups)
            .map(|group| self.publish_group(group))
            .buffer_unordered(self.config.max_concurrent_publishes)
            .collect()
            .await;
        let mut published = Vec::new();
        let mut failed = 0;
        for outcome in outcomes {
            published.extend(outcome.published);
            failed += outcome.failed;
        }
        (published, failed)
    }

    /// Publishes one group in request-sized chunks, one after the other, stopping at the first
    /// failure so that no later message of the key overtakes an earlier one.
    async fn publish_group(&self, group: Group) -> GroupOutcome {
        let Group { topic, rows } = group;
        let total = rows.len();
        let mut outcome = GroupOutcome::default();
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let mut chunk: Vec<PendingRow> = Vec::new();
            let mut bytes = 0;
            while let Some(row) = rows.peek() {
                let size = message_bytes(&row.message);
                let fits =
                    chunk.len() < MAX_PUBLISH_MESSAGES && bytes + size <= MAX_PUBLISH_REQUEST_BYTES;
                if !chunk.is_empty() && !fits {
                    break;
                }
                bytes += size;
                chunk.extend(rows.next());
            }
            let messages: Vec<OutgoingMessage> =
                chunk.iter().map(|row| row.message.clone()).collect();
            let result = self
                .transport
                .publish(&topic, messages)
                .await
                .and_then(|ids| {
                    if ids.len() == chunk.len() {
                        Ok(ids)
                    } else {
                        Err(TransportError::Status {
                            code: Code::Internal,
                            message: format!(
                                "the broker answered {} message ids for {} messages",
                                ids.len(),
                                chunk.len()
                            ),
                        })
                    }
                });
            match result {
                Ok(ids) => outcome
                    .published
                    .extend(chunk.iter().map(|row| row.id).zip(ids)),
                Err(error) => {
                    outcome.failed = total - outcome.published.len();
                    let first_row = chunk.first().map_or(0, |row| row.id);
                    let ordering_key = chunk
                        .first()
                        .map_or("", |row| row.message.ordering_key.as_str());
                    if error.is_transient() {
                        tracing::warn!(
                            table = %self.outbox.table(),
                            topic = %topic,
                            ordering_key,
                            first_row,
                            rows = outcome.failed,
                            %error,
                            "publishing outbox rows failed; they stay pending"
                        );
                    } else {
                        tracing::error!(
                            table = %self.outbox.table(),
                            topic = %topic,
                            ordering_key,
                            first_row,
                            rows = outcome.failed,
                            %error,
                            "the broker refused outbox rows; they stay pending and hold back \
                             later rows of their ordering key"
                        );
                    }
                    break;
                }
            }
        }
        outcome
    }
}

/// How a spell of leadership ended.
#[derive(Debug)]
enum Lead {
    Shutdown,
    LostLock,
    Fatal(OutboxError),
}

/// Rows of one topic and ordering key, in order.
#[derive(Debug)]
struct Group {
    topic: String,
    rows: Vec<PendingRow>,
}

#[derive(Debug, Default)]
struct GroupOutcome {
    published: Vec<(i64, String)>,
    failed: usize,
}

/// The bytes a message counts against the publish request limit (as the broker counts them).
fn message_bytes(message: &OutgoingMessage) -> usize {
    message.data.len()
        + message
            .attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + message.ordering_key.len()
}

/// A delay that doubles from `min` up to `max` on each use until reset.
#[derive(Debug)]
struct Doubling {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Doubling {
    fn new(min: Duration, max: Duration) -> Self {
        let min = min.min(max);
        Self {
            min,
            max,
            current: min,
        }
    }

    fn next(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.current = self.min;
    }
}

/// Counters between two progress log lines.
#[derive(Debug)]
struct Progress {
    since: Instant,
    published: u64,
    failed: u64,
    max_lag: Duration,
}

impl Progress {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            published: 0,
            failed: 0,
            max_lag: Duration::ZERO,
        }
    }

    fn record(&mut self, report: &BatchReport) {
        self.published += report.published as u64;
        self.failed += report.failed as u64;
        self.max_lag = self.max_lag.max(report.max_lag);
    }

    /// Logs the counters every [`PROGRESS_LOG_INTERVAL`] if anything happened, then resets.
    fn log_if_due(&mut self, table: &str) {
        if self.since.elapsed() < PROGRESS_LOG_INTERVAL {
            return;
        }
        if self.published > 0 || self.failed > 0 {
            tracing::info!(
                table = %table,
                published = self.published,
                failed = self.failed,
                max_lag_ms = self.max_lag.as_millis(),
                "outbox relay progress"
            );
        }
        *self = Self::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_delays_are_bounded_and_reset() {
        let mut delay = Doubling::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<_> = (0..4).map(|_| delay.next().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        delay.reset();
        assert_eq!(delay.next(), Duration::from_millis(100));
        // A minimum above the maximum is capped.
        let mut capped = Doubling::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(capped.next(), Duration::from_secs(1));
    }

    #[test]
    fn message_size_counts_data_attributes_and_ordering_key() {
        let message = OutgoingMessage {
            data: "12345".into(),
            attributes: [("ab".to_owned(), "cde".to_owned())].into(),
            ordering_key: "k".into(),
        };
        assert_eq!(message_bytes(&message), 5 + 5 + 1);
    }
}
