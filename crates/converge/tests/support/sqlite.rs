//! SQLite databases in temporary files, removed with their directory at the end of the test.

use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

/// A SQLite database in a file of a fresh temporary directory, with a pool on it. The
/// directory (and the file) go when this value is dropped, so keep it for the whole test.
pub struct SqliteDb {
    /// Connections (at most 4) to the file, waiting up to 30 s for a lock another holds.
    pub pool: SqlitePool,
    _dir: tempfile::TempDir,
}

impl SqliteDb {
    /// Creates `file` (e.g. `app.db`) in a new temporary directory and connects to it.
    pub async fn new(file: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(dir.path().join(file))
                    .create_if_missing(true)
                    .busy_timeout(Duration::from_secs(30)),
            )
            .await?;
        Ok(Self { pool, _dir: dir })
    }
}
