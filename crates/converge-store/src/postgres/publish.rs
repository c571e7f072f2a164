//! Publish (design §3.1): one transaction per batch, serialised per topic by the row lock on
//! the topic's head.
//!
//! The head lock is what makes a subscription's cursor safe: within a topic, ids are handed out
//! and become visible in increasing order, so a reader scanning `id > cursor` can never pass a
//! message that commits later. A global sequence would not give that (sequence values are
//! allocated out of commit order). The same lock makes the idempotency-key check-then-insert
//! race-free within the topic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use converge_core::{Error, MessageId, NewMessage, Result, TopicName};
use parking_lot::Mutex;
use sqlx::{PgConnection, Row};
use tokio::sync::oneshot;

use super::{PostgresStore, db_error, to_micros, ts_param};
use crate::embedded::state::not_found;

/// Message ids on the wire carry the topic's log id in their high bits, so that they are unique
/// across topics as the embedded engine's are, while each topic numbers its own messages
/// densely (1, 2, 3, ...) under its head lock. 2^40 messages per topic, 2^23 topics.
const TOPIC_SHIFT: u32 = 40;

/// The wire id of message `seq` of topic log `topic_id`.
pub(super) fn message_id(topic_id: i64, seq: i64) -> MessageId {
    debug_assert!(
        seq > 0 && seq < (1 << TOPIC_SHIFT),
        "message sequence {seq} out of range"
    );
    MessageId(((topic_id as u64) << TOPIC_SHIFT) | seq as u64)
}

/// What one publish stored.
pub(super) struct Published {
    /// The topic's log id.
    pub topic_id: i64,
    /// One id per message, in order; repeated idempotency keys get the original id.
    pub ids: Vec<MessageId>,
    /// Messages actually stored (the rest were duplicates).
    pub stored: usize,
}

/// JSON text of a message's attributes (the `attributes jsonb` column; the filter runs in Rust
/// on the decoded map, and an operator with psql can read them).
pub(super) fn attributes_json(message: &NewMessage) -> String {
    serde_json::to_string(&message.attributes).expect("string maps always serialize")
}

/// The attributes of the `attributes` column, read back as text.
pub(super) fn parse_attributes(text: &str) -> Result<converge_core::message::Attributes> {
    serde_json::from_str(text)
        .map_err(|e| Error::Internal(format!("undecodable message attributes: {e}")))
}

/// A publish waiting for a transaction.
struct Waiting {
    messages: Vec<NewMessage>,
    answer: oneshot::Sender<Result<Vec<MessageId>>>,
}

/// Publishes of one topic waiting on this node, and the slot of the one transaction at a time
/// that commits them.
///
/// Why: a publish holds its topic's head lock until its commit is flushed, so publishes of one
/// topic cannot share a WAL flush through PostgreSQL's group commit; one after the other, each
/// would pay a flush of its own. Instead, whoever gets the slot takes every publish queued
/// meanwhile and commits them together: under load, one flush serves many calls, as the
/// embedded engine's writer thread does; alone, a publish waits for nothing.
#[derive(Debug, Default)]
struct TopicBatcher {
    queue: Mutex<Vec<Waiting>>,
    slot: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

/// The batchers of this node, by topic.
#[derive(Debug, Default)]
pub(super) struct PublishBatchers {
    topics: Mutex<HashMap<TopicName, Arc<TopicBatcher>>>,
}

impl PublishBatchers {
    fn for_topic(&self, topic: &TopicName) -> Arc<TopicBatcher> {
        self.topics.lock().entry(topic.clone()).or_default().clone()
    }
}

impl PostgresStore {
    /// Publishes a batch and answers once it is committed. Concurrent publishes of one topic on
    /// this node share one transaction (see [`TopicBatcher`]). If the commit's answer is lost
    /// the caller gets an error although the batch may be stored: at-least-once, and a retry
    /// with idempotency keys finds the original ids.
    pub(super) async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<MessageId>> {
        self.check_open()?;
        let batcher = self.node.publishers.for_topic(topic);
        let (answer, mut answered) = oneshot::channel();
        batcher.queue.lock().push(Waiting { messages, answer });
        let slot = batcher.slot.lock().await;
        if let Ok(result) = answered.try_recv() {
            // The previous holder of the slot committed ours with its own.
            return result;
        }
        let batch = std::mem::take(&mut *batcher.queue.lock());
        if !batch.is_empty() {
            // Its own task, so that a caller that stops waiting cannot abandon the others'
            // publishes halfway: the commit and every answer happen regardless.
            let store = self.clone();
            let topic = topic.clone();
            let _ = tokio::spawn(async move { store.commit_together(&topic, batch).await }).await;
        }
        drop(slot);
        answered.await.unwrap_or_else(|_| {
            Err(Error::Internal(
                "a publish lost its answer (its commit task failed)".into(),
            ))
        })
    }

    /// Commits the queued publishes of one topic in one transaction and answers each.
    async fn commit_together(&self, topic: &TopicName, mut batch: Vec<Waiting>) {
        let now = self.clock.now();
        let counts: Vec<usize> = batch.iter().map(|w| w.messages.len()).collect();
        let all: Vec<NewMessage> = batch
            .iter_mut()
            .flat_map(|w| std::mem::take(&mut w.messages))
            .collect();
        let result = async {
            let mut tx = self.pool.begin().await.map_err(db_error)?;
            let result = match self.publish_in(&mut tx, topic, &all, now).await {
                Ok(Some(published)) => Ok(published),
                Ok(None) => Err(not_found(&topic.to_string())),
                Err(e) => Err(e),
            };
            super::resources::finish_tx(tx, result).await
        }
        .await;
        let published = match result {
            Ok(published) => published,
            Err(e) => {
                for waiting in batch {
                    let _ = waiting.answer.send(Err(e.clone()));
                }
                return;
            }
        };
        debug_assert_eq!(published.ids.len(), all.len(), "one id per message");
        metrics::counter!("converge_messages_published_total").increment(published.stored as u64);
        let repeated = published.ids.len() - published.stored;
        if repeated > 0 {
            metrics::counter!("converge_messages_deduplicated_total").increment(repeated as u64);
        }
        if published.stored > 0 {
            self.wake_topic(published.topic_id);
        }
        let mut ids = published.ids.into_iter();
        for (waiting, count) in batch.into_iter().zip(counts) {
            let mine: Vec<MessageId> = ids.by_ref().take(count).collect();
            let _ = waiting.answer.send(Ok(mine));
        }
    }

    /// Appends `messages` to `topic` inside the caller's transaction (a publish, or a
    /// dead-letter forward that must commit with the removal of its source). `None` when the
    /// topic does not exist. The topic's head stays locked until the caller's transaction ends.
    pub(super) async fn publish_in(
        &self,
        tx: &mut PgConnection,
        topic: &TopicName,
        messages: &[NewMessage],
        now: SystemTime,
    ) -> Result<Option<Published>> {
        let head = sqlx::query(
            "SELECT t.id, t.dedup_window_ms, h.last_id
               FROM topics t JOIN topic_heads h ON h.topic_id = t.id
              WHERE t.name = $1 AND NOT t.deleted
                FOR UPDATE OF h",
        )
        .bind(topic.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let Some(head) = head else {
            return Ok(None);
        };
        let topic_id: i64 = head.try_get("id").map_err(db_error)?;
        let window_ms: i64 = head.try_get("dedup_window_ms").map_err(db_error)?;
        let last_id: i64 = head.try_get("last_id").map_err(db_error)?;

        let keys: Vec<&str> = messages
            .iter()
            .filter_map(|m| m.idempotency_key())
            .collect();
        let mut seen: HashMap<String, i64> = HashMap::new();
        if !keys.is_empty() {
            let rows = sqlx::query(concat!(
                "SELECT key, msg_id FROM dedup WHERE topic_id = $1 AND key = ANY($2)
                    AND published_at > ",
                ts_param!("$3"),
                " - $4::int8 * interval '1 millisecond'"
            ))
            .bind(topic_id)
            .bind(&keys)
            .bind(to_micros(now))
            .bind(window_ms)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
            for row in rows {
                seen.insert(
                    row.try_get("key").map_err(db_error)?,
                    row.try_get("msg_id").map_err(db_error)?,
                );
            }
        }

        let mut ids = Vec::with_capacity(messages.len());
        let (mut seqs, mut okeys, mut attrs, mut data) = (vec![], vec![], vec![], vec![]);
        let (mut new_keys, mut new_key_ids) = (vec![], vec![]);
        let mut next = last_id;
        for message in messages {
            let key = message.idempotency_key();
            if let Some(&original) = key.and_then(|k| seen.get(k)) {
                ids.push(message_id(topic_id, original));
                continue;
            }
            next += 1;
            if let Some(key) = key {
                // A repeat later in this batch gets this message's id.
                seen.insert(key.to_string(), next);
                new_keys.push(key.to_string());
                new_key_ids.push(next);
            }
            ids.push(message_id(topic_id, next));
            seqs.push(next);
            okeys.push(message.ordering_key.as_str());
            attrs.push(attributes_json(message));
            data.push(message.data.as_ref());
        }
        let stored = seqs.len();
        if stored == 0 {
            return Ok(Some(Published {
                topic_id,
                ids,
                stored,
            }));
        }
        if next >= 1 << TOPIC_SHIFT {
            return Err(Error::FailedPrecondition(format!(
                "Topic {topic} has used all of its message ids"
            )));
        }
        sqlx::query(concat!(
            "INSERT INTO messages (topic_id, id, publish_time, ordering_key, attributes, data)
             SELECT $1, u.id, ",
            ts_param!("$2"),
            ", u.ok, u.a::jsonb, u.d
               FROM unnest($3::int8[], $4::text[], $5::text[], $6::bytea[]) AS u(id, ok, a, d)"
        ))
        .bind(topic_id)
        .bind(to_micros(now))
        .bind(&seqs)
        .bind(&okeys)
        .bind(&attrs)
        .bind(&data)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        sqlx::query("UPDATE topic_heads SET last_id = $2 WHERE topic_id = $1")
            .bind(topic_id)
            .bind(next)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        if !new_keys.is_empty() {
            sqlx::query(concat!(
                "INSERT INTO dedup (topic_id, key, msg_id, published_at)
                 SELECT $1, u.k, u.id, ",
                ts_param!("$4"),
                " FROM unnest($2::text[], $3::int8[]) AS u(k, id)
                 ON CONFLICT (topic_id, key)
                 DO UPDATE SET msg_id = excluded.msg_id, published_at = excluded.published_at"
            ))
            .bind(topic_id)
            .bind(&new_keys)
            .bind(&new_key_ids)
            .bind(to_micros(now))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        Ok(Some(Published {
            topic_id,
            ids,
            stored,
        }))
    }
}
