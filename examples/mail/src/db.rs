//! The example's own tables: the users the signup creates and the mail status the last handler
//! records. The outbox table belongs to the SDK ([`converge::outbox`]).

use sqlx::PgPool;

/// Creates the tables in the pool's schema (the demo gives each run a schema of its own).
pub async fn migrate(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS users (
             id BIGSERIAL PRIMARY KEY,
             email TEXT NOT NULL UNIQUE,
             created_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .execute(pool)
    .await?;
    // One row per user: the primary key makes recording the status an idempotent insertion.
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS mail_status (
             user_id BIGINT PRIMARY KEY REFERENCES users (id),
             provider_mail_id TEXT NOT NULL,
             recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Users, users with a recorded mail status, and the largest number of status rows any user has
/// (1 when the system converged; the table's key makes more impossible, so the example also
/// counts the provider's side).
pub async fn counts(pool: &PgPool) -> sqlx::Result<(i64, i64)> {
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(pool)
        .await?;
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM mail_status")
        .fetch_one(pool)
        .await?;
    Ok((users, recorded))
}
