//! The transactional outbox: messages written in the application's own database transaction
//! and relayed to the broker once that transaction has committed.
//!
//! A service that updates its database and then publishes an event can fail between the two:
//! the update is committed and the event is lost, or (publishing first) the event is out and
//! the update rolled back. The outbox removes the gap. [`Outbox::enqueue`] (a typed event, as
//! a CloudEvent) or [`Outbox::enqueue_message`] (any message) inserts into an outbox table
//! *inside the application's transaction*, so the message is committed exactly when the
//! business change is, and rolled back with it. An [`OutboxRelay`] then reads committed rows in
//! commit order, publishes them through any [`Transport`] (the gRPC client, or the in-memory
//! backend in tests), and marks them published.
//!
//! # No duplicates across relay crashes
//!
//! The relay can crash (or lose its database connection) after the broker stored a message and
//! before the row was marked published; the next relay publishes the row again. Every row
//! carries a unique idempotency key, sent as the `converge-idempotency-key` attribute, so the
//! broker recognises the second publish and answers with the original message id instead of
//! storing a duplicate (within the topic's deduplication window, 24 h by default).
//!
//! # Why a serial cursor is not enough (PostgreSQL)
//!
//! The obvious relay remembers the highest `id` it published and asks for `id > cursor`. With
//! concurrent writers this loses rows: sequence values are handed out when a row is inserted,
//! not when its transaction commits. Transaction A inserts id 7, transaction B inserts id 8 and
//! commits first; the relay sees 8, publishes it and moves the cursor to 8; A commits and its
//! row 7 is below the cursor forever. Reading "every unpublished row" instead of a cursor does
//! not lose row 7 but publishes 8 before 7, so consumers see B's consequences before A's.
//!
//! The relay therefore only reads rows whose writing transaction lies below the *snapshot
//! horizon*: each row records the id of the transaction that wrote it (`txid`, a 64-bit `xid8`
//! that never wraps), and the relay asks for `txid < pg_snapshot_xmin(pg_current_snapshot())`,
//! the oldest transaction still running. Every transaction below that horizon has finished, so
//! no row can still appear below it: what the relay reads is final, and it reads it ordered by
//! `(txid, id)`. In the example, row 8 is held back while A is open (A's id is below B's, so A
//! holds the horizon down) and both are published once A ends, A's row first.
//!
//! The order is therefore the order in which transactions *took their transaction id* (their
//! first write), then insertion order within a transaction. For transactions that do not
//! overlap, that is commit order. For overlapping transactions PostgreSQL defines no order
//! between them anyway, unless they touch the same row: then the second one blocks on the row
//! lock, and if that row is the transaction's first write, its id is taken after the first
//! transaction's, so events about one aggregate keep the order of the aggregate's updates.
//!
//! The price of the horizon: a transaction that stays open (anywhere in the cluster, since
//! transaction ids are cluster-wide) holds back every row written after it began, until it
//! ends. Keep write transactions short; the relay logs how long rows waited (`max_lag_ms`).
//!
//! # Order on the broker
//!
//! Rows are published in that order *per topic and ordering key*: one publish call at a time
//! per key, calls for different keys concurrently, since Pub/Sub orders only messages that
//! share a key (and takes one key per publish request). A row the broker refuses for good (a
//! topic that does not exist, say) stays pending, holds back the later rows of its key and is
//! logged at error level with its id, until the cause is fixed or the row is deleted by hand.
//!
//! # Running the relay
//!
//! [`OutboxRelay::run`] inside the service, or `converge relay --database-url ...` beside it.
//! With PostgreSQL any number may run: one holds a session advisory lock and publishes, the
//! others stand by and take over when its session ends. Enqueue sends a notification
//! (`pg_notify`, delivered at commit) that wakes the relay at once; polling every
//! [`RelayConfig::poll_interval`] covers lost notifications. The leader also deletes rows
//! published more than [`RelayConfig::retention`] ago, in batches.
//!
//! # SQLite
//!
//! SQLite lets one writer at a time hold the database from its first write to its commit, so
//! rows are inserted in commit order and the `id` alone is a safe cursor. The relay polls (SQLite
//! has no notifications) and takes no lock: run one relay per SQLite database (a second one
//! would publish rows twice, which the broker deduplicates, but could reorder them).
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use converge::outbox::{Outbox, OutboxRelay, RelayConfig};
//! use converge::{OutgoingMessage, Transport};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example(transport: Arc<dyn Transport>) -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/app").await?;
//! let outbox = Outbox::new();
//! outbox.migrate(&pool).await?;
//!
//! // In the application: the message commits or rolls back with the business change.
//! let mut tx = pool.begin().await?;
//! sqlx::query("UPDATE orders SET state = 'paid' WHERE id = $1")
//!     .bind(42_i64)
//!     .execute(&mut *tx)
//!     .await?;
//! let message = OutgoingMessage {
//!     data: "order 42 paid".into(),
//!     ordering_key: "order-42".into(),
//!     ..Default::default()
//! };
//! outbox
//!     .enqueue_message(&mut tx, "projects/shop/topics/orders", message, "order-42-paid")
//!     .await?;
//! tx.commit().await?;
//!
//! // In the service (or as `converge relay --database-url ...`): publish what was committed.
//! let relay = OutboxRelay::new(outbox, pool, transport).with_config(RelayConfig::default());
//! let shutdown = CancellationToken::new();
//! relay.run(shutdown).await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`Transport`]: crate::transport::Transport

mod postgres;
mod relay;
mod row;
mod sqlite;

use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use sqlx::{Pool, Postgres, Sqlite, Transaction};

use crate::cloudevents::{self, CloudEventError};
use crate::event::Event;
use crate::idempotency::IdempotencyKey;
use crate::sql::TableName;
use crate::transport::OutgoingMessage;
use row::NewRow;

pub use relay::{BatchReport, OutboxRelay, RelayConfig};

/// The sqlx this module is built on. The outbox takes the application's own pools and
/// transactions, which must come from this same version of sqlx; depending on it through this
/// re-export keeps the two from drifting apart.
pub use sqlx;

/// The table used when none is configured.
pub const DEFAULT_TABLE: &str = "converge_outbox";

/// The CloudEvents `source` of typed events when none is configured.
pub const DEFAULT_SOURCE: &str = "/outbox";

/// Why an outbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The table name is not a plain (optionally schema-qualified) lowercase SQL identifier. It
    /// is spliced into SQL, so only names that need no quoting are accepted.
    #[error(
        "invalid outbox table name {0:?}: expected [schema.]name, each part of lowercase letters, \
         digits and underscores, starting with a letter or underscore, at most 48 bytes"
    )]
    InvalidTable(String),
    /// The message would be refused by the broker (bad topic name, too large, bad attribute,
    /// empty idempotency key, …). Checked at enqueue, inside the application's transaction, so
    /// that a row that could never be published is never committed.
    #[error("invalid outbox message: {0}")]
    InvalidMessage(String),
    /// The outbox table does not exist: [`Outbox::migrate`] has not been run on this database
    /// (or on this schema).
    #[error("outbox table {0} does not exist; run Outbox::migrate first")]
    MissingTable(String),
    /// A typed event could not be encoded as a CloudEvent (its `Serialize` failed, an
    /// attribute is too long).
    #[error("cannot encode the event: {0}")]
    Encode(#[from] CloudEventError),
    /// The database URL names no database the outbox supports (`postgres://`,
    /// `postgresql://`, `sqlite:`). Only the scheme is kept: the URL may hold a password.
    #[error(
        "unsupported database URL scheme {0:?}: expected postgres://, postgresql:// or sqlite:"
    )]
    UnsupportedDatabase(String),
    /// The database refused or failed the statement.
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl OutboxError {
    /// Classifies a database error, recognising a missing table (a configuration mistake that
    /// retrying does not fix) in both dialects.
    fn from_sqlx(table: &str, error: sqlx::Error) -> Self {
        if crate::sql::is_missing_table(&error) {
            return Self::MissingTable(table.to_owned());
        }
        Self::Database(error)
    }
}

/// Where the outbox lives: the table (and in PostgreSQL the notification channel) that
/// [`Outbox::enqueue_message`] writes to and [`OutboxRelay`] reads from. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbox {
    inner: Arc<Settings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    /// The table name as configured, `name` or `schema.name`; validated, spliced into SQL.
    table: String,
    /// The schema part, if the name is qualified.
    schema: Option<String>,
    /// The unqualified table name (index names are derived from it).
    name: String,
    /// Whether enqueue sends a PostgreSQL notification to wake the relay.
    notify: bool,
    /// The CloudEvents `source` of typed events enqueued with [`Outbox::enqueue`].
    source: String,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Outbox {
    /// The outbox in the default table, `converge_outbox` (found through the connection's
    /// `search_path` in PostgreSQL), with notifications on.
    pub fn new() -> Self {
        Self::with_table(DEFAULT_TABLE).expect("the default table name is valid")
    }

    /// The outbox in another table, `name` or `schema.name`, for several outboxes in one
    /// database or an outbox outside the default schema.
    ///
    /// # Errors
    ///
    /// [`OutboxError::InvalidTable`] unless each part is a lowercase identifier (the name is
    /// spliced into SQL, so only names that need no quoting are accepted).
    pub fn with_table(table: &str) -> Result<Self, OutboxError> {
        let Some(TableName {
            qualified,
            schema,
            name,
        }) = crate::sql::table_name(table)
        else {
            return Err(OutboxError::InvalidTable(table.to_owned()));
        };
        Ok(Self {
            inner: Arc::new(Settings {
                table: qualified,
                schema,
                name,
                notify: true,
                source: DEFAULT_SOURCE.to_owned(),
            }),
        })
    }

    /// Turns PostgreSQL notifications off (they are on by default): enqueue no longer runs
    /// `pg_notify`, and the relay only finds rows by polling. Notifications wake the relay at
    /// once, but every committing transaction that notified takes a database-wide lock for a
    /// moment; at thousands of enqueuing transactions per second, polling can be the better
    /// trade. No effect on SQLite.
    #[must_use]
    pub fn without_notifications(self) -> Self {
        self.with_settings(|settings| settings.notify = false)
    }

    /// Sets the CloudEvents `source` of the typed events enqueued with [`Outbox::enqueue`]: a
    /// URI-reference naming where they happen, e.g. `/orders` (default `/outbox`). CloudEvents
    /// consumers take `source` + `id` as the identity of an event, so give each service its
    /// own.
    ///
    /// # Errors
    ///
    /// [`OutboxError::InvalidMessage`] if `source` is empty (CloudEvents requires one).
    pub fn with_source(self, source: &str) -> Result<Self, OutboxError> {
        if source.is_empty() {
            return Err(OutboxError::InvalidMessage(
                "the event source is empty; CloudEvents requires one".to_owned(),
            ));
        }
        Ok(self.with_settings(|settings| source.clone_into(&mut settings.source)))
    }

    fn with_settings(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Arc::unwrap_or_clone(self.inner);
        change(&mut settings);
        Self {
            inner: Arc::new(settings),
        }
    }

    /// The CloudEvents `source` of typed events.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// The table name as configured (`name` or `schema.name`).
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The PostgreSQL notification channel: the table name as configured, so that outboxes in
    /// different tables wake only their own relays.
    pub fn channel(&self) -> &str {
        &self.inner.table
    }

    fn notify(&self) -> bool {
        self.inner.notify
    }

    /// The name of an index of the table: unqualified, derived from the table's name.
    fn index_name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.inner.name)
    }

    /// Creates the outbox table and its indexes unless they exist. Safe to run at every start,
    /// from several processes at once (PostgreSQL: under an advisory lock, since concurrent
    /// `CREATE TABLE IF NOT EXISTS` can still collide).
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] if the statements fail (no permission, no such schema, …).
    pub async fn migrate<DB: OutboxDatabase>(&self, pool: &Pool<DB>) -> Result<(), OutboxError> {
        <DB as sealed::Sealed>::migrate(self, pool).await
    }

    /// Adds `message` for `topic` (full name, `projects/{project}/topics/{topic}`) to the
    /// outbox, inside the application's transaction `tx`: it is published after `tx` commits,
    /// and never if `tx` rolls back.
    ///
    /// `idempotency_key` identifies the message for deduplication: it is published as the
    /// `converge-idempotency-key` attribute (replacing one in `message.attributes`), so a
    /// relay that publishes the row twice after a crash stores it once, and it is unique in
    /// the table, so enqueueing the same key twice (a retried request, say) adds nothing:
    /// the call then returns `Ok(false)`. Returns `Ok(true)` when a row was added.
    ///
    /// # Errors
    ///
    /// [`OutboxError::InvalidMessage`] if the broker would refuse the message (checked here,
    /// so a row that could never be published is never committed); [`OutboxError::Database`]
    /// if the insert fails (the transaction is then aborted, as for any failed statement).
    pub async fn enqueue_message<DB: OutboxDatabase>(
        &self,
        tx: &mut Transaction<'_, DB>,
        topic: &str,
        message: OutgoingMessage,
        idempotency_key: &str,
    ) -> Result<bool, OutboxError> {
        let row = NewRow::new(topic, message, idempotency_key)?;
        <DB as sealed::Sealed>::enqueue(self, &mut **tx, row).await
    }
}

impl Outbox {
    /// Adds the typed `event` for `topic` inside the application's transaction `tx`, encoded
    /// as the event bus publishes events (a CloudEvent in binary mode: JSON payload, `ce-*`
    /// attributes, the event's ordering key), under a fresh idempotency key, which is also its
    /// `ce-id`. Returns the key.
    ///
    /// A fresh key suits an intent that starts here (a user request). Code that may run again
    /// for the same intent after its transaction committed (a retried message handler) should
    /// use [`Outbox::enqueue_with_key`] with a key derived from the intent's, e.g.
    /// `IdempotencyKey::current().map(|key| key.derive(0))`, so the repeat adds nothing.
    ///
    /// ```no_run
    /// use converge::event::Event;
    /// use converge::outbox::Outbox;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct OrderPaid { order: u64 }
    ///
    /// impl Event for OrderPaid {
    ///     const TYPE: &'static str = "com.example.order.paid";
    ///     fn ordering_key(&self) -> Option<String> {
    ///         Some(format!("order-{}", self.order))
    ///     }
    /// }
    ///
    /// # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let outbox = Outbox::new().with_source("/orders")?;
    /// let mut tx = pool.begin().await?;
    /// sqlx::query("UPDATE orders SET paid = true WHERE id = $1").bind(42_i64).execute(&mut *tx).await?;
    /// outbox.enqueue(&mut tx, "projects/shop/topics/orders", &OrderPaid { order: 42 }).await?;
    /// tx.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`OutboxError::Encode`] if the event does not serialize or a CloudEvents attribute is
    /// too long; otherwise as [`Outbox::enqueue_message`].
    pub async fn enqueue<DB: OutboxDatabase, E: Event>(
        &self,
        tx: &mut Transaction<'_, DB>,
        topic: &str,
        event: &E,
    ) -> Result<IdempotencyKey, OutboxError> {
        let key = IdempotencyKey::new();
        self.enqueue_with_key(tx, topic, event, &key).await?;
        Ok(key)
    }

    /// [`Outbox::enqueue`] under a key chosen by the caller. Returns `Ok(false)` (adding
    /// nothing) if the outbox already holds a row with this key.
    ///
    /// # Errors
    ///
    /// As [`Outbox::enqueue`].
    pub async fn enqueue_with_key<DB: OutboxDatabase, E: Event>(
        &self,
        tx: &mut Transaction<'_, DB>,
        topic: &str,
        event: &E,
        key: &IdempotencyKey,
    ) -> Result<bool, OutboxError> {
        let message = cloudevents::encode(event, self.source(), key, SystemTime::now())?;
        self.enqueue_message(tx, topic, message, key.as_str()).await
    }
}

mod sealed {
    use super::{BoxFuture, NewRow, Outbox, OutboxError, Pool, relay};

    /// The outbox's internals per database, kept out of the public trait so that
    /// [`super::OutboxDatabase`] stays closed: the outbox speaks the SQL of the databases it
    /// knows, and the relay relies on their specific guarantees (snapshots, single writer).
    pub trait Sealed: sqlx::Database {
        fn migrate<'a>(
            outbox: &'a Outbox,
            pool: &'a Pool<Self>,
        ) -> BoxFuture<'a, Result<(), OutboxError>>;

        fn enqueue<'a>(
            outbox: &'a Outbox,
            conn: &'a mut Self::Connection,
            row: NewRow,
        ) -> BoxFuture<'a, Result<bool, OutboxError>>;

        fn relay_pool(pool: Pool<Self>) -> relay::RelayPool;
    }

    impl Sealed for sqlx::Postgres {
        fn migrate<'a>(
            outbox: &'a Outbox,
            pool: &'a Pool<Self>,
        ) -> BoxFuture<'a, Result<(), OutboxError>> {
            Box::pin(super::postgres::migrate(outbox, pool))
        }

        fn enqueue<'a>(
            outbox: &'a Outbox,
            conn: &'a mut Self::Connection,
            row: NewRow,
        ) -> BoxFuture<'a, Result<bool, OutboxError>> {
            Box::pin(super::postgres::enqueue(outbox, conn, row))
        }

        fn relay_pool(pool: Pool<Self>) -> relay::RelayPool {
            relay::RelayPool::Postgres(pool)
        }
    }

    impl Sealed for sqlx::Sqlite {
        fn migrate<'a>(
            outbox: &'a Outbox,
            pool: &'a Pool<Self>,
        ) -> BoxFuture<'a, Result<(), OutboxError>> {
            Box::pin(super::sqlite::migrate(outbox, pool))
        }

        fn enqueue<'a>(
            outbox: &'a Outbox,
            conn: &'a mut Self::Connection,
            row: NewRow,
        ) -> BoxFuture<'a, Result<bool, OutboxError>> {
            Box::pin(super::sqlite::enqueue(outbox, conn, row))
        }

        fn relay_pool(pool: Pool<Self>) -> relay::RelayPool {
            relay::RelayPool::Sqlite(pool)
        }
    }
}

/// A database the outbox can live in: PostgreSQL ([`sqlx::Postgres`]) or SQLite
/// ([`sqlx::Sqlite`]). Sealed: the outbox depends on each database's own guarantees
/// (PostgreSQL snapshots, SQLite's single writer), so it cannot be implemented elsewhere.
pub trait OutboxDatabase: sealed::Sealed {}

impl OutboxDatabase for Postgres {}

impl OutboxDatabase for Sqlite {}

#[cfg(test)]
mod tests {
    use converge_core::message::IDEMPOTENCY_KEY_ATTRIBUTE;

    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for good in ["converge_outbox", "_x", "app.outbox_2", "s1.t"] {
            assert_eq!(Outbox::with_table(good).unwrap().table(), good);
        }
        for bad in [
            "",
            "Outbox",
            "1table",
            "a.b.c",
            "a.",
            ".a",
            "x; drop table y",
            "\"quoted\"",
            &"t".repeat(49),
        ] {
            assert!(
                matches!(Outbox::with_table(bad), Err(OutboxError::InvalidTable(_))),
                "{bad:?} should be refused"
            );
        }
        let outbox = Outbox::with_table("app.events").unwrap();
        assert_eq!(outbox.index_name("pending"), "events_pending");
        assert_eq!(outbox.channel(), "app.events");
        assert!(outbox.notify());
        assert!(!outbox.without_notifications().notify());
    }

    #[test]
    fn rows_are_checked_as_the_broker_will_check_them() {
        let topic = "projects/proj/topics/orders";
        let message = |data: &str| OutgoingMessage {
            data: data.to_owned().into(),
            ..Default::default()
        };
        let row = NewRow::new(topic, message("x"), "k-1").unwrap();
        assert_eq!(row.idempotency_key, "k-1");
        // The key travels in its own column, whatever the attributes said.
        let mut with_key = message("x");
        with_key
            .attributes
            .insert(IDEMPOTENCY_KEY_ATTRIBUTE.to_owned(), "other".to_owned());
        let row = NewRow::new(topic, with_key, "k-2").unwrap();
        assert!(row.attributes.is_empty());
        // An empty payload is fine: the key attribute makes the message non-empty.
        assert!(NewRow::new(topic, message(""), "k").is_ok());

        let refused = |topic: &str, message: OutgoingMessage, key: &str| {
            matches!(
                NewRow::new(topic, message, key),
                Err(OutboxError::InvalidMessage(_))
            )
        };
        assert!(refused("orders", message("x"), "k"), "short topic name");
        assert!(refused(topic, message("x"), ""), "empty key");
        assert!(refused(topic, message("x"), &"k".repeat(1025)), "long key");
        let mut reserved = message("x");
        reserved
            .attributes
            .insert("goog-x".to_owned(), "1".to_owned());
        assert!(refused(topic, reserved, "k"), "reserved attribute");
        assert!(
            refused(topic, message(&"x".repeat(10_000_001)), "k"),
            "too large"
        );
    }
}
