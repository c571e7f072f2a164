//! Wake-ups of long polls (design §5).
//!
//! A pull that finds nothing waits on two local [`Notify`]s: its topic's (a publish) and its
//! subscription's (a nack, an ack that frees an ordering key, a Seek). A node wakes its own
//! waiters right after its commits, and tells the other nodes with `pg_notify` on one channel
//! per schema, which a dedicated `LISTEN` connection turns back into local wake-ups. NOTIFY is
//! sent after the commit, not inside the transaction: a notifying transaction takes a
//! database-wide lock at commit, which would serialise every topic's publishes.
//!
//! Wake-ups are only a latency optimisation: a waiting pull also re-checks every
//! [`POLL_INTERVAL`], so a notification lost to a crash or a reconnect delays, never loses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use converge_core::Result;
use parking_lot::Mutex;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use super::PostgresStore;

/// How often a waiting pull looks again without being woken.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The local waiters' handles, by topic id and by subscription id.
#[derive(Debug, Default)]
pub(super) struct Wakeups {
    topics: Mutex<HashMap<i64, Arc<Notify>>>,
    subscriptions: Mutex<HashMap<i64, Arc<Notify>>>,
}

impl Wakeups {
    /// The handle woken when topic `id` gets messages.
    pub(super) fn topic(&self, id: i64) -> Arc<Notify> {
        self.topics.lock().entry(id).or_default().clone()
    }

    /// The handle woken when something of subscription `id` becomes deliverable.
    pub(super) fn subscription(&self, id: i64) -> Arc<Notify> {
        self.subscriptions.lock().entry(id).or_default().clone()
    }

    fn wake_topic(&self, id: i64) {
        if let Some(n) = self.topics.lock().get(&id) {
            n.notify_waiters();
        }
    }

    fn wake_subscription(&self, id: i64) {
        if let Some(n) = self.subscriptions.lock().get(&id) {
            n.notify_waiters();
        }
    }

    /// Wakes everyone: after a reconnect (notifications sent meanwhile are lost) or at close.
    pub(super) fn wake_all(&self) {
        for n in self.topics.lock().values() {
            n.notify_waiters();
        }
        for n in self.subscriptions.lock().values() {
            n.notify_waiters();
        }
    }

    /// Applies one notification payload: `t:<id>`, `s:<id>` or `r` (handled by the caller).
    fn apply(&self, payload: &str) {
        let parsed = payload
            .split_once(':')
            .and_then(|(kind, id)| Some((kind, id.parse::<i64>().ok()?)));
        match parsed {
            Some(("t", id)) => self.wake_topic(id),
            Some(("s", id)) => self.wake_subscription(id),
            _ => {}
        }
    }
}

impl PostgresStore {
    /// The channel of this store's schema: nodes of other schemas (other deployments, other
    /// tests) never wake each other.
    fn channel(&self) -> String {
        format!("{}_wake", self.schema)
    }

    /// Wakes the long polls of a topic here at once and on the other nodes soon.
    pub(super) fn wake_topic(&self, topic_id: i64) {
        self.node.wake.wake_topic(topic_id);
        self.notify_others(format!("t:{topic_id}"));
    }

    /// Wakes the long polls of a subscription on every node.
    pub(super) async fn wake_subscription(&self, sub_id: i64) -> Result<()> {
        self.node.wake.wake_subscription(sub_id);
        self.notify_others(format!("s:{sub_id}"));
        Ok(())
    }

    /// Tells the other nodes that resource settings changed (their caches drop them).
    pub(super) fn notify_resources_changed(&self) {
        self.notify_others("r".to_string());
    }

    /// Sends a notification without making the caller wait for it: the caller's commit is what
    /// mattered, and the other nodes poll anyway.
    fn notify_others(&self, payload: String) {
        let pool = self.pool.clone();
        let channel = self.channel();
        tokio::spawn(async move {
            let sent = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&channel)
                .bind(&payload)
                .execute(&pool)
                .await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, payload, "notification not sent; other nodes will poll");
            }
        });
    }

    /// Starts the task that listens for the other nodes' notifications.
    pub(super) fn start_listener(&self) {
        let store = self.clone();
        let task = tokio::spawn(async move { store.listen().await });
        *self.node.listener.lock() = Some(task);
    }

    async fn listen(self) {
        let channel = self.channel();
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut listener = match PgListener::connect_with(&self.pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the notification listener; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if let Err(e) = listener.listen(&channel).await {
                tracing::warn!(error = %e, "LISTEN failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            backoff = Duration::from_millis(100);
            // Whatever was sent while we were away is lost: look again.
            self.node.wake.wake_all();
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) if n.payload() == "r" => self.node.subscriptions.clear(),
                    Ok(Some(n)) => self.node.wake.apply(n.payload()),
                    Ok(None) => {
                        tracing::warn!("notification listener lost its connection; reconnecting");
                        self.node.wake.wake_all();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "notification listener failed; reconnecting");
                        self.node.wake.wake_all();
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
        }
    }
}
