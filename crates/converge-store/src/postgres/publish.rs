//! Publish (design §3.1): one transaction per batch, serialised per topic by the row lock on
//! the topic's head.
//!
//! The head lock is what makes a subscription's cursor safe: within a topic, ids are handed out
//! and become visible in increasing order, so a reader scanning `id > cursor` can never pass a
//! message that commits later. A global sequence would not give that (sequence values are
//! allocated out of commit order). The same lock makes the idempotency-key check-then-insert
//! race-free within the topic.

use std::collections::HashMap;
use std::time::SystemTime;

use converge_core::{Error, MessageId, NewMessage, Result, TopicName};
use sqlx::{PgConnection, Row};

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

impl PostgresStore {
    /// Publishes a batch and answers once it is committed. If the commit's answer is lost the
    /// caller gets an error although the batch may be stored: at-least-once, and a retry with
    /// idempotency keys finds the original ids.
    pub(super) async fn publish_batch(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<MessageId>> {
        self.check_open()?;
        let now = self.clock.now();
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let result = self.publish_in(&mut tx, topic, &messages, now).await;
        let result = match result {
            Ok(Some(published)) => Ok(published),
            Ok(None) => Err(not_found(&topic.to_string())),
            Err(e) => Err(e),
        };
        let published = super::resources::finish_tx(tx, result).await?;
        metrics::counter!("converge_messages_published_total").increment(published.stored as u64);
        let repeated = published.ids.len() - published.stored;
        if repeated > 0 {
            metrics::counter!("converge_messages_deduplicated_total").increment(repeated as u64);
        }
        if published.stored > 0 {
            self.wake_topic(published.topic_id);
        }
        Ok(published.ids)
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
