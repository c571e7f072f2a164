//! The PostgreSQL schema as versioned migrations, and the code that applies them.
//!
//! Each migration is an SQL file compiled into the binary. [`migrate`] applies the missing ones
//! in order, each in its own transaction that first takes a transaction-scoped advisory lock
//! (`pg_advisory_xact_lock`) keyed on the schema name. Several nodes starting at once therefore
//! queue on the lock; each re-reads the recorded versions under it, so a migration is applied
//! exactly once, and a node that dies halfway leaves its migration entirely undone (DDL is
//! transactional in PostgreSQL). Holding the lock per transaction rather than per session means
//! that no error path can return a pooled connection that still holds it.
//!
//! A database whose schema is newer than this binary, or whose recorded checksum of a migration
//! differs from the binary's, is refused: running old code on a schema it does not know, or on
//! one that was changed behind its back, could corrupt it.

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor, Row};

use super::PostgresError;

/// One schema change, applied once per schema.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its position in the sequence, from 1, without gaps.
    pub version: i32,
    /// A short description, recorded beside the version for operators.
    pub name: &'static str,
    /// The statements, run in one transaction.
    pub sql: &'static str,
}

impl Migration {
    /// A fingerprint of the SQL, recorded when the migration is applied, so that a migration
    /// edited after release is detected instead of silently diverging between databases.
    pub fn checksum(&self) -> String {
        format!("crc32:{:08x}", crc32fast::hash(self.sql.as_bytes()))
    }
}

/// Every migration this binary knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "queue vacuum settings",
        sql: include_str!("migrations/0002_queue_vacuum.sql"),
    },
];

/// The schema version this binary expects: the last of [`MIGRATIONS`].
pub fn current_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Whether `schema` may be used as a schema name without quoting: lowercase ASCII letters,
/// digits and `_`, not starting with a digit, at most 63 bytes (PostgreSQL's limit). Keeping to
/// this set lets the name go into `search_path` and DDL without any escaping to get wrong.
pub fn valid_schema_name(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The advisory lock key of migrations on `schema`: one per schema, so that tests (one schema
/// each) do not queue behind each other, while the nodes of one deployment do.
fn lock_key(schema: &str) -> String {
    format!("converge.migrate.{schema}")
}

/// Applies the missing migrations of [`MIGRATIONS`] to `schema` (created if missing) and returns
/// the schema version afterwards. `conn` must have `search_path` set to `schema`.
pub async fn migrate(conn: &mut PgConnection, schema: &str) -> Result<i32, PostgresError> {
    migrate_with(conn, schema, MIGRATIONS).await
}

/// [`migrate`] with an explicit list of migrations (tests use longer lists to simulate a newer
/// binary, or a broken migration).
pub async fn migrate_with(
    conn: &mut PgConnection,
    schema: &str,
    migrations: &[Migration],
) -> Result<i32, PostgresError> {
    if !valid_schema_name(schema) {
        return Err(PostgresError::InvalidSchemaName(schema.to_string()));
    }
    let known = migrations.last().map_or(0, |m| m.version);
    loop {
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(lock_key(schema))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {schema}.converge_migrations (
               version int PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"
        ))
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(&format!(
            "SELECT version, checksum FROM {schema}.converge_migrations ORDER BY version"
        ))
        .fetch_all(&mut *tx)
        .await?;
        let mut applied = 0;
        for row in rows {
            let version: i32 = row.try_get("version")?;
            let checksum: String = row.try_get("checksum")?;
            if version > known {
                return Err(PostgresError::SchemaTooNew {
                    schema: schema.to_string(),
                    found: version,
                    known,
                });
            }
            let expected = migrations
                .iter()
                .find(|m| m.version == version)
                .ok_or(PostgresError::UnknownMigration { version })?;
            if expected.checksum() != checksum {
                return Err(PostgresError::ChecksumMismatch {
                    version,
                    recorded: checksum,
                    expected: expected.checksum(),
                });
            }
            applied = applied.max(version);
        }
        let Some(next) = migrations.iter().find(|m| m.version > applied) else {
            // Nothing to do: the transaction only read, and ending it frees the lock.
            tx.commit().await?;
            return Ok(applied);
        };
        tracing::info!(
            schema,
            version = next.version,
            name = next.name,
            "applying migration"
        );
        // A plain string runs unprepared (the simple protocol), so a migration may hold
        // several statements.
        (&mut *tx)
            .execute(next.sql)
            .await
            .map_err(|source| PostgresError::MigrationFailed {
                version: next.version,
                source,
            })?;
        sqlx::query(&format!(
            "INSERT INTO {schema}.converge_migrations (version, name, checksum) VALUES ($1, $2, $3)"
        ))
        .bind(next.version)
        .bind(next.name)
        .bind(next.checksum())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_dense_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(
                m.version,
                i as i32 + 1,
                "migration {} is out of place",
                m.name
            );
        }
    }

    #[test]
    fn schema_names_are_checked() {
        assert!(valid_schema_name("converge"));
        assert!(valid_schema_name("t_0a9f"));
        assert!(!valid_schema_name(""));
        assert!(!valid_schema_name("9lives"));
        assert!(!valid_schema_name("Converge"));
        assert!(!valid_schema_name("a; DROP TABLE x"));
        assert!(!valid_schema_name(&"a".repeat(64)));
    }
}
