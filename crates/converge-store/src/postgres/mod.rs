//! The PostgreSQL store: several converge nodes sharing one database (design:
//! `docs/postgres-store.md`).
//!
//! This is step 1 of the design's implementation order: the schema and its migrations
//! ([`schema`]), the connection pool, and the resources (topics, subscriptions, snapshot
//! records, documents) as inherent methods of [`PostgresStore`] with the embedded engine's
//! semantics: the same errors, messages and paging. The data plane (publish, pull, ack, seek)
//! and the `Store` implementation come next.
//!
//! Time always comes from the store's [`Clock`], never from SQL `now()`, so tests with a
//! `ManualClock` behave as they do on the embedded engine.

mod ack;
mod failure;
mod maintenance;
mod publish;
mod pull;
mod resources;
mod retention;
pub mod schema;
mod seek;
mod store_impl;
mod subscriptions;
#[cfg(test)]
mod tests;
mod wake;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use converge_core::{Clock, Error, SystemClock};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The connection URL could not be parsed.
    #[error("invalid PostgreSQL URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// The schema name would need quoting; only `[a-z_][a-z0-9_]*` is accepted.
    #[error("invalid schema name {0:?}: use lowercase letters, digits and '_'")]
    InvalidSchemaName(String),
    /// The database was migrated by a newer converge: this binary must not touch it.
    #[error(
        "schema {schema} is at version {found}, newer than this converge knows ({known}); \
         upgrade converge"
    )]
    SchemaTooNew {
        /// The schema.
        schema: String,
        /// The highest version recorded in the database.
        found: i32,
        /// The highest version this binary knows.
        known: i32,
    },
    /// A recorded migration is not one this binary has (a gap in the history).
    #[error("schema records migration {version}, which this converge does not know")]
    UnknownMigration {
        /// The recorded version.
        version: i32,
    },
    /// A recorded migration was applied from different SQL than this binary's.
    #[error(
        "migration {version} was applied with checksum {recorded}, but this converge has {expected}"
    )]
    ChecksumMismatch {
        /// The migration.
        version: i32,
        /// The checksum in `converge_migrations`.
        recorded: String,
        /// The checksum of this binary's SQL.
        expected: String,
    },
    /// A migration's SQL failed; its transaction was rolled back.
    #[error("migration {version} failed: {source}")]
    MigrationFailed {
        /// The migration.
        version: i32,
        /// PostgreSQL's error.
        #[source]
        source: sqlx::Error,
    },
    /// Connecting or talking to PostgreSQL failed (sqlx's error says how).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<PostgresError> for Error {
    fn from(e: PostgresError) -> Self {
        match e {
            PostgresError::Database(e) => db_error(e),
            PostgresError::InvalidUrl(_) | PostgresError::InvalidSchemaName(_) => {
                Error::invalid(e.to_string())
            }
            other => Error::FailedPrecondition(other.to_string()),
        }
    }
}

/// Maps a sqlx error to the API's: lost connections, pool timeouts, a restarting server and
/// serialization failures are `UNAVAILABLE` (the client may retry); anything else is a bug or
/// a broken database, `INTERNAL`.
pub(crate) fn db_error(e: sqlx::Error) -> Error {
    let transient = match &e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
        }),
        _ => false,
    };
    if transient {
        tracing::warn!(error = %e, "postgresql unavailable");
        Error::Unavailable(format!("PostgreSQL is unavailable: {e}"))
    } else {
        tracing::error!(error = %e, "postgresql error");
        Error::Internal(format!("PostgreSQL error: {e}"))
    }
}

/// The default schema: one per deployment; tests pick their own.
pub const DEFAULT_SCHEMA: &str = "converge";

/// How to open a [`PostgresStore`].
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The schema holding every table; a `?schema=` parameter in the URL takes precedence.
    pub schema: String,
    /// Pool size. Default `max(4, 2 × cores)`: nothing holds a connection while it waits, so
    /// the pool only needs to cover statements actually running.
    pub max_connections: u32,
    /// How long a statement waits for a free connection before answering `UNAVAILABLE`.
    pub acquire_timeout: Duration,
    /// Where time comes from (a `ManualClock` in tests).
    pub clock: Arc<dyn Clock>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        Self {
            schema: DEFAULT_SCHEMA.to_string(),
            max_connections: (2 * cores).max(4),
            acquire_timeout: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
        }
    }
}

/// The PostgreSQL store. Cheap to clone: clones share the pool.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use converge_store::postgres::{PostgresOptions, PostgresStore};
///
/// let store = PostgresStore::connect(
///     "postgres://postgres@127.0.0.1:5432/test?schema=converge",
///     PostgresOptions::default(),
/// )
/// .await?;
/// store.put_document("iam", "projects/p/topics/t", "{}".into()).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Connections for leasing (pull), with `synchronous_commit = off`: a lease PostgreSQL
    /// forgets in a crash only means an earlier redelivery, which at-least-once allows (the
    /// embedded engine keeps leases in memory for the same reason), so a pull need not wait for
    /// a WAL flush. Publishes and acks go through `pool` and wait for theirs.
    lease_pool: PgPool,
    clock: Arc<dyn Clock>,
    schema: Arc<str>,
    version: i32,
    /// What this node keeps beside the database: wake-ups, caches, leadership. Shared by clones.
    node: Arc<Node>,
}

/// The per-process state of a store: nothing here is needed for correctness (the database is
/// the truth); it saves round trips and lets long polls sleep until something happens.
#[derive(Debug)]
struct Node {
    /// Local long polls, woken after local commits and by the NOTIFY listener.
    wake: wake::Wakeups,
    /// Concurrent publishes of one topic, committed together.
    publishers: publish::PublishBatchers,
    /// Subscription settings by name and by id, refreshed after a short time.
    subscriptions: subscriptions::SubscriptionCache,
    /// The dedicated connection holding (or trying for) the leader lock.
    leader: tokio::sync::Mutex<maintenance::Leadership>,
    /// Connection settings, for the dedicated connections (leader, listener).
    connect_options: PgConnectOptions,
    /// Set by `close`: no new work, long polls return.
    closed: std::sync::atomic::AtomicBool,
    /// The NOTIFY listener task.
    listener: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Splits a `schema=` parameter out of `url` (sqlx does not know it), returning the URL without
/// it and the schema if there was one.
fn split_schema(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut schema = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("schema=") {
            Some(s) => {
                schema = Some(s.to_string());
                false
            }
            None => !kv.is_empty(),
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, schema)
}

impl PostgresStore {
    /// Connects, migrates the schema (waiting for other nodes that are migrating it), and opens
    /// the pool. Fails if the schema is newer than this binary or was migrated by different SQL.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<Self, PostgresError> {
        let (url, from_url) = split_schema(url);
        let schema = from_url.unwrap_or(options.schema);
        if !schema::valid_schema_name(&schema) {
            return Err(PostgresError::InvalidSchemaName(schema));
        }
        let connect_options: PgConnectOptions = url.parse().map_err(PostgresError::InvalidUrl)?;
        // Every connection of the pool works in the schema, and none can hold a lock for ever.
        let connect_options = connect_options.options([
            ("search_path", schema.as_str()),
            ("statement_timeout", "30s"),
            ("idle_in_transaction_session_timeout", "60s"),
            // "already exists, skipping" notices of the idempotent migration are noise.
            ("client_min_messages", "warning"),
        ]);
        let mut conn = connect_options.connect().await?;
        let version = schema::migrate(&mut conn, &schema).await?;
        conn.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect_options.clone())
            .await?;
        let lease_pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(
                connect_options
                    .clone()
                    .options([("synchronous_commit", "off")]),
            );
        tracing::info!(schema = %schema, version, "postgresql store open");
        let store = Self {
            pool,
            lease_pool,
            clock: options.clock,
            schema: schema.into(),
            version,
            node: Arc::new(Node {
                wake: wake::Wakeups::default(),
                publishers: publish::PublishBatchers::default(),
                subscriptions: subscriptions::SubscriptionCache::default(),
                leader: tokio::sync::Mutex::new(maintenance::Leadership::default()),
                connect_options,
                closed: std::sync::atomic::AtomicBool::new(false),
                listener: parking_lot::Mutex::new(None),
            }),
        };
        store.start_listener();
        Ok(store)
    }

    /// The schema this store works in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The schema version found (after migrating) at connect.
    pub fn schema_version(&self) -> i32 {
        self.version
    }

    /// Fails with `UNAVAILABLE` once the store was closed.
    fn check_open(&self) -> converge_core::Result<()> {
        if self.node.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Unavailable("the store is closed".into()));
        }
        Ok(())
    }

    /// The pool, for the parts of the store built on top of the resources (and for tests that
    /// inspect rows).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Microseconds since the epoch: PostgreSQL's `timestamptz` resolution. Times travel as
/// integers, converted in SQL by `ts_param!` and `ts_column!`, so that the store needs no
/// date-time crate (and no new sqlx feature for the whole workspace).
pub(crate) fn to_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// The inverse of [`to_micros`].
pub(crate) fn from_micros(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

/// SQL turning an `int8` parameter of microseconds (`$n`) into a `timestamptz`.
macro_rules! ts_param {
    ($p:literal) => {
        concat!(
            "(timestamptz 'epoch' + ",
            $p,
            "::int8 * interval '1 microsecond')"
        )
    };
}
pub(crate) use ts_param;

/// SQL turning a `timestamptz` expression into `int8` microseconds.
macro_rules! ts_column {
    ($c:literal) => {
        concat!("(extract(epoch FROM ", $c, ") * 1000000)::int8")
    };
}
pub(crate) use ts_column;

#[cfg(test)]
mod url_and_time_tests {
    use super::*;

    #[test]
    fn schema_is_split_out_of_the_url() {
        assert_eq!(
            split_schema("postgres://h/db?schema=t_1&sslmode=disable"),
            (
                "postgres://h/db?sslmode=disable".to_string(),
                Some("t_1".to_string())
            )
        );
        assert_eq!(
            split_schema("postgres://h/db?schema=x"),
            ("postgres://h/db".to_string(), Some("x".to_string()))
        );
        assert_eq!(
            split_schema("postgres://h/db"),
            ("postgres://h/db".to_string(), None)
        );
    }

    #[test]
    fn micros_round_trip() {
        for us in [0i64, 1, 1_700_000_000_123_456, -5] {
            assert_eq!(to_micros(from_micros(us)), us);
        }
    }
}
