//! The idempotency store in PostgreSQL or SQLite.
//!
//! One implementation for both: the statements are the same SQL (upsert with a `WHERE` on the
//! conflict branch and `RETURNING` exist in both), written with `$n` placeholders and turned
//! into SQLite's `?n`; times are Unix milliseconds from the store's clock in both.

use crate::sql::TableName;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use converge_core::{Clock, SystemClock};
use sqlx::{Pool, Postgres, Row as _, Sqlite};

use super::{
    Begin, IdempotencyStore, LeaseToken, StoreError, StoredOutcome, duration_millis, from_millis,
    to_millis,
};

/// The table used when none is configured.
pub const DEFAULT_TABLE: &str = "converge_idempotency";

/// The first key of the migration's advisory lock ("coni"); the second is a hash of the table
/// name (the table may not exist yet, so it has no oid).
const MIGRATE_LOCK_CLASS: i32 = 0x636f_6e69;

/// How many expired rows one cleanup statement deletes, so that cleaning up a large backlog
/// never holds many row locks, or SQLite's write lock, for long.
const CLEANUP_BATCH: i64 = 5_000;

/// How often `begin` looks again when the row it conflicted with vanished before it could be
/// read (released or cleaned up in between); each round makes progress for someone.
const BEGIN_ATTEMPTS: usize = 8;

/// The database behind a [`SqlIdempotencyStore`], whichever dialect.
#[derive(Debug, Clone)]
pub enum SqlPool {
    /// PostgreSQL.
    Postgres(Pool<Postgres>),
    /// SQLite.
    Sqlite(Pool<Sqlite>),
}

mod sealed {
    /// Turns a pool into the store's dialect-tagged pool; kept out of the public trait so that
    /// [`super::IdempotencyDatabase`] stays closed to the dialects whose SQL the store speaks.
    pub trait Sealed: sqlx::Database {
        fn into_pool(pool: sqlx::Pool<Self>) -> super::SqlPool;
    }

    impl Sealed for sqlx::Postgres {
        fn into_pool(pool: sqlx::Pool<Self>) -> super::SqlPool {
            super::SqlPool::Postgres(pool)
        }
    }

    impl Sealed for sqlx::Sqlite {
        fn into_pool(pool: sqlx::Pool<Self>) -> super::SqlPool {
            super::SqlPool::Sqlite(pool)
        }
    }
}

/// A database the idempotency store can live in: PostgreSQL ([`sqlx::Postgres`]) or SQLite
/// ([`sqlx::Sqlite`]). Sealed: the store's atomicity rests on the SQL of these two.
pub trait IdempotencyDatabase: sealed::Sealed {}

impl IdempotencyDatabase for Postgres {}

impl IdempotencyDatabase for Sqlite {}

/// An [`IdempotencyStore`] in a PostgreSQL or SQLite table, shared by every process using the
/// database. Cheap to clone.
///
/// ```no_run
/// use std::sync::Arc;
///
/// use converge::idempotency::store::{IdempotencyStore, SqlIdempotencyStore};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1/app").await?;
/// let store = SqlIdempotencyStore::new(pool);
/// store.migrate().await?;
/// let store: Arc<dyn IdempotencyStore> = Arc::new(store);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqlIdempotencyStore {
    pool: SqlPool,
    table: Arc<TableName>,
    clock: Arc<dyn Clock>,
}

/// Runs `$body` with `$pool` bound to whichever pool the store has: the statements are the
/// same text for both dialects, only the types differ.
macro_rules! on_pool {
    ($self:expr, $pool:ident => $body:expr) => {
        match &$self.pool {
            SqlPool::Postgres($pool) => $body,
            SqlPool::Sqlite($pool) => $body,
        }
    };
}

impl SqlIdempotencyStore {
    /// The store in `pool`, in the default table `converge_idempotency` (found through the
    /// connection's `search_path` in PostgreSQL), on the system clock.
    pub fn new<DB: IdempotencyDatabase>(pool: Pool<DB>) -> Self {
        Self {
            pool: DB::into_pool(pool),
            table: Arc::new(parse_table(DEFAULT_TABLE).expect("the default table name is valid")),
            clock: Arc::new(SystemClock),
        }
    }

    /// The same store in another table, `name` or `schema.name`.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidTable`] unless each part is a lowercase identifier (the name is
    /// spliced into SQL, so only names that need no quoting are accepted).
    pub fn with_table(mut self, table: &str) -> Result<Self, StoreError> {
        self.table = Arc::new(parse_table(table)?);
        Ok(self)
    }

    /// The same store reading time from `clock` (tests: a manual clock, to expire leases
    /// without sleeping). Every process sharing the table should use comparable clocks.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The table name as configured.
    pub fn table(&self) -> &str {
        &self.table.qualified
    }

    /// Creates the table and its index unless they exist. Safe to run at every start, from
    /// several processes at once (PostgreSQL: under an advisory lock, since concurrent
    /// `CREATE TABLE IF NOT EXISTS` can still collide).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`] if the statements fail (no permission, no such schema, …).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let table = &self.table.qualified;
        let index = format!("{}_expires", self.table.name);
        match &self.pool {
            SqlPool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                    .bind(MIGRATE_LOCK_CLASS)
                    .bind(table)
                    .execute(&mut *tx)
                    .await?;
                for statement in [
                    create_table(table, "bytea"),
                    format!("CREATE INDEX IF NOT EXISTS {index} ON {table} (expires_at)"),
                ] {
                    sqlx::query(&statement).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
            SqlPool::Sqlite(pool) => {
                // SQLite puts the schema on the index name and leaves the table unqualified.
                let index = match &self.table.schema {
                    Some(schema) => format!("{schema}.{index}"),
                    None => index,
                };
                let mut tx = pool.begin().await?;
                for statement in [
                    create_table(table, "BLOB"),
                    format!(
                        "CREATE INDEX IF NOT EXISTS {index} ON {} (expires_at)",
                        self.table.name
                    ),
                ] {
                    sqlx::query(&statement).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        }
        tracing::debug!(table = %table, "idempotency table ready");
        Ok(())
    }

    /// `sql` (written with `$n` placeholders) in the store's dialect.
    fn sql(&self, sql: &str) -> String {
        let sql = sql.replace("{table}", &self.table.qualified);
        match self.pool {
            SqlPool::Postgres(_) => sql,
            SqlPool::Sqlite(_) => sql.replace('$', "?"),
        }
    }

    fn error(&self, error: sqlx::Error) -> StoreError {
        if crate::sql::is_missing_table(&error) {
            return StoreError::MissingTable(self.table.qualified.clone());
        }
        StoreError::Database(error)
    }

    /// One attempt at taking the key: `Some(token)` if this call took it.
    async fn try_take(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        now: i64,
        lease: Duration,
    ) -> Result<Option<LeaseToken>, StoreError> {
        let sql = self.sql(
            "INSERT INTO {table} AS e (scope, idempotency_key, fingerprint, token, expires_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (scope, idempotency_key) DO UPDATE
             SET fingerprint = excluded.fingerprint, token = excluded.token,
                 expires_at = excluded.expires_at, completed_at = NULL, outcome = NULL
             WHERE e.expires_at <= $6
             RETURNING token",
        );
        let token = LeaseToken::random();
        let expires_at = now.saturating_add(duration_millis(lease));
        let row = on_pool!(self, pool => sqlx::query(&sql)
            .bind(scope)
            .bind(key)
            .bind(fingerprint)
            .bind(token.0)
            .bind(expires_at)
            .bind(now)
            .fetch_optional(pool)
            .await
            .map_err(|e| self.error(e))?
            .map(|row| row.try_get::<i64, _>(0))
            .transpose()?);
        Ok(row.map(LeaseToken))
    }

    /// The live entry for the key, if any: `(fingerprint, expires_at, completed_at, outcome)`.
    async fn read(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<(String, i64, Option<i64>, Option<Vec<u8>>)>, StoreError> {
        let sql = self.sql(
            "SELECT fingerprint, expires_at, completed_at, outcome FROM {table}
             WHERE scope = $1 AND idempotency_key = $2",
        );
        let row = on_pool!(self, pool => match sqlx::query(&sql)
            .bind(scope)
            .bind(key)
            .fetch_optional(pool)
            .await
            .map_err(|e| self.error(e))?
        {
            Some(row) => Some((
                row.try_get::<String, _>(0)?,
                row.try_get::<i64, _>(1)?,
                row.try_get::<Option<i64>, _>(2)?,
                row.try_get::<Option<Vec<u8>>, _>(3)?,
            )),
            None => None,
        });
        Ok(row)
    }
}

#[async_trait]
impl IdempotencyStore for SqlIdempotencyStore {
    async fn begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        let now = to_millis(self.clock.now());
        for _ in 0..BEGIN_ATTEMPTS {
            if let Some(token) = self.try_take(scope, key, fingerprint, now, lease).await? {
                return Ok(Begin::Started { token });
            }
            // Taken by a live entry: read it. It may vanish in between (released, cleaned
            // up); then try again.
            let Some((stored, expires_at, completed_at, outcome)) = self.read(scope, key).await?
            else {
                continue;
            };
            if expires_at <= now {
                continue;
            }
            if stored != fingerprint {
                return Ok(Begin::Mismatch);
            }
            return Ok(match completed_at {
                Some(completed_at) => Begin::Completed(StoredOutcome {
                    data: outcome.unwrap_or_default(),
                    completed_at: from_millis(completed_at),
                }),
                None => Begin::InProgress {
                    retry_after: Duration::from_millis(
                        u64::try_from(expires_at - now).unwrap_or(0),
                    ),
                },
            });
        }
        // Someone keeps releasing the key as soon as it is taken: report it as busy.
        Ok(Begin::InProgress {
            retry_after: Duration::from_secs(1),
        })
    }

    async fn complete(
        &self,
        scope: &str,
        key: &str,
        token: LeaseToken,
        outcome: &[u8],
        retention: Duration,
    ) -> Result<bool, StoreError> {
        let now = to_millis(self.clock.now());
        let sql = self.sql(
            "UPDATE {table} SET completed_at = $1, expires_at = $2, outcome = $3
             WHERE scope = $4 AND idempotency_key = $5 AND token = $6 AND completed_at IS NULL",
        );
        let done = on_pool!(self, pool => sqlx::query(&sql)
            .bind(now)
            .bind(now.saturating_add(duration_millis(retention)))
            .bind(outcome)
            .bind(scope)
            .bind(key)
            .bind(token.0)
            .execute(pool)
            .await
            .map_err(|e| self.error(e))?
            .rows_affected());
        Ok(done == 1)
    }

    async fn release(&self, scope: &str, key: &str, token: LeaseToken) -> Result<bool, StoreError> {
        let sql = self.sql(
            "DELETE FROM {table}
             WHERE scope = $1 AND idempotency_key = $2 AND token = $3 AND completed_at IS NULL",
        );
        let done = on_pool!(self, pool => sqlx::query(&sql)
            .bind(scope)
            .bind(key)
            .bind(token.0)
            .execute(pool)
            .await
            .map_err(|e| self.error(e))?
            .rows_affected());
        Ok(done == 1)
    }

    async fn cleanup(&self) -> Result<u64, StoreError> {
        let now = to_millis(self.clock.now());
        // The outer condition is checked again on the row as it is when deleted, so an entry
        // taken over since the inner select is kept.
        let sql = self.sql(
            "DELETE FROM {table}
             WHERE expires_at <= $1 AND (scope, idempotency_key) IN (
                 SELECT scope, idempotency_key FROM {table} WHERE expires_at <= $1 LIMIT $2
             )",
        );
        let mut total = 0;
        loop {
            let deleted = on_pool!(self, pool => sqlx::query(&sql)
                .bind(now)
                .bind(CLEANUP_BATCH)
                .execute(pool)
                .await
                .map_err(|e| self.error(e))?
                .rows_affected());
            total += deleted;
            if deleted < CLEANUP_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}

/// The table definition. Times are Unix milliseconds (the store's clock, not the database's).
fn create_table(table: &str, blob: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            scope TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            token BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            completed_at BIGINT,
            outcome {blob},
            PRIMARY KEY (scope, idempotency_key)
        )"
    )
}

fn parse_table(table: &str) -> Result<TableName, StoreError> {
    crate::sql::table_name(table).ok_or_else(|| StoreError::InvalidTable(table.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for good in ["converge_idempotency", "app.keys", "_x"] {
            assert_eq!(parse_table(good).unwrap().qualified, good);
        }
        for bad in [
            "",
            "Keys",
            "1t",
            "a.b.c",
            "x; drop table y",
            &"t".repeat(49),
        ] {
            assert!(matches!(parse_table(bad), Err(StoreError::InvalidTable(_))));
        }
    }
}
