//! Periodic work, readiness and shutdown (design §5-6).
//!
//! Sweeps run on one node at a time: the one holding a session advisory lock on a dedicated
//! connection. The lock is an optimisation only: every sweep re-checks its conditions under the
//! row locks it takes, so two leaders at once would waste work, never break anything. When the
//! leader's process dies its connection closes, PostgreSQL frees the lock, and another node
//! takes it at its next tick.

use std::sync::atomic::Ordering;
use std::time::Duration;

use converge_core::{Error, Result};
use sqlx::{ConnectOptions, Connection, PgConnection};

use super::{PostgresStore, db_error};

/// Leases expired per tick at most (in batches), so one tick stays short.
const MAX_EXPIRY_BATCHES_PER_TICK: usize = 20;
/// How long `/readyz` waits for PostgreSQL before saying not ready.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// This node's claim to leadership: the dedicated connection, and whether it holds the lock.
#[derive(Debug, Default)]
pub(super) struct Leadership {
    conn: Option<PgConnection>,
    leader: bool,
}

impl PostgresStore {
    /// The advisory-lock key text: one leader per schema (per deployment).
    fn leader_key(&self) -> String {
        format!("converge.leader.{}", self.schema)
    }

    /// Whether this node leads now: checks that a held lock's connection is alive, or tries to
    /// take the lock.
    async fn lead(&self) -> bool {
        let mut leadership = self.node.leader.lock().await;
        if leadership.conn.is_none() {
            match self.node.connect_options.connect().await {
                Ok(conn) => leadership.conn = Some(conn),
                Err(e) => {
                    tracing::warn!(error = %e, "no leader connection");
                    return false;
                }
            }
        }
        let key = self.leader_key();
        let was_leader = leadership.leader;
        let conn = leadership.conn.as_mut().expect("connected above");
        let answer = if was_leader {
            sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(&mut *conn)
                .await
                .map(|_| true)
        } else {
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock(hashtext($1))")
                .bind(&key)
                .fetch_one(&mut *conn)
                .await
        };
        match answer {
            Ok(leads) => {
                if leads && !leadership.leader {
                    tracing::info!(schema = %self.schema, "this node now runs the periodic sweeps");
                }
                leadership.leader = leads;
                leads
            }
            Err(e) => {
                if leadership.leader {
                    tracing::warn!(error = %e, "lost the leader connection; stepping down");
                }
                *leadership = Leadership::default();
                false
            }
        }
    }

    /// One tick of periodic work: on the leader, expired leases, retention, expirations and log
    /// truncation; elsewhere nothing.
    pub(super) async fn maintain_tick(&self) -> Result<()> {
        if self.node.closed.load(Ordering::Acquire) || !self.lead().await {
            return Ok(());
        }
        let now = self.clock.now();
        for _ in 0..MAX_EXPIRY_BATCHES_PER_TICK {
            if self.expire_leases(None, now).await? < super::failure::EXPIRY_BATCH as usize {
                break;
            }
        }
        self.sweep_retention(now).await
    }

    /// Ready when PostgreSQL answers through the pool within [`READY_TIMEOUT`].
    pub(super) async fn ready(&self) -> Result<()> {
        self.check_open()?;
        let probe = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.pool);
        match tokio::time::timeout(READY_TIMEOUT, probe).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(db_error(e)),
            Err(_) => Err(Error::Unavailable(format!(
                "PostgreSQL did not answer within {READY_TIMEOUT:?}"
            ))),
        }
    }

    /// Stops: long polls return, the listener stops, the leader lock is released, the pool
    /// waits for statements in flight and closes.
    pub(super) async fn shut_down(&self) -> Result<()> {
        if self.node.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.node.wake.wake_all();
        if let Some(listener) = self.node.listener.lock().take() {
            listener.abort();
        }
        let conn = self.node.leader.lock().await.conn.take();
        if let Some(mut conn) = conn {
            // Unlock explicitly: closing the session frees the lock too, but only once its
            // backend has exited, which may be after `close` returned; this way the next leader
            // takes over at its next tick.
            let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
        self.lease_pool.close().await;
        self.pool.close().await;
        tracing::info!(schema = %self.schema, "postgresql store closed");
        Ok(())
    }
}
