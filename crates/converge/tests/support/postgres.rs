//! The real PostgreSQL (127.0.0.1:5432, user `postgres`, database `test`), one schema per
//! test, so tests run in parallel without seeing each other's tables or rows.

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Executor as _, PgConnection};

/// The test database.
pub const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A schema of its own, with a pool whose connections use it as `search_path`. Dropped (with
/// everything in it) when this value is dropped, even when the test panics, or explicitly with
/// [`PgSchema::remove`] to see an error.
pub struct PgSchema {
    /// The schema's name (`test_<random>`), also the `application_name` of its connections.
    pub name: String,
    /// Connections (at most 10) with `search_path` set to the schema.
    pub pool: PgPool,
    removed: bool,
}

impl PgSchema {
    /// Creates a fresh schema and connects a pool to it.
    pub async fn new() -> anyhow::Result<Self> {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(DATABASE_URL)
            .await
            .context("connecting to the test database")?;
        admin
            .execute(format!("CREATE SCHEMA {name}").as_str())
            .await
            .with_context(|| format!("creating schema {name}"))?;
        admin.close().await?;
        let search_path = format!("SET search_path TO {name}");
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .after_connect(move |conn, _meta| {
                let search_path = search_path.clone();
                Box::pin(async move {
                    conn.execute(search_path.as_str()).await?;
                    Ok(())
                })
            })
            // Named after the schema, so that the drop can end whatever a failed test left
            // open (a transaction holding locks would block it).
            .connect_with(
                DATABASE_URL
                    .parse::<PgConnectOptions>()?
                    .application_name(&name),
            )
            .await?;
        Ok(Self {
            name,
            pool,
            removed: false,
        })
    }

    /// Drops the schema now, reporting a failure instead of printing it.
    pub async fn remove(mut self) -> anyhow::Result<()> {
        self.removed = true;
        self.pool.close().await;
        drop_schema(&self.name).await
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let name = self.name.clone();
        // Dropping runs inside the test's runtime, which must not block on itself: drop the
        // schema from a thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(drop_schema(&name))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop schema {}", self.name);
        }
    }
}

/// Ends the schema's connections and drops it with everything in it.
async fn drop_schema(name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(DATABASE_URL).await?;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1",
    )
    .bind(name)
    .execute(&mut admin)
    .await?;
    admin.execute("SET lock_timeout = '10s'").await?;
    admin
        .execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
        .await?;
    Ok(())
}
