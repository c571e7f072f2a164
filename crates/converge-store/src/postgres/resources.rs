//! Topics, subscriptions, snapshot records and documents on PostgreSQL, with the embedded
//! engine's semantics: the same `NOT_FOUND` / `ALREADY_EXISTS` messages, the same checks in the
//! same order, and name-keyed paging whose tokens are names.
//!
//! Settings are stored as the embedded engine's records (`record.rs`, postcard), beside the
//! columns SQL filters on. The engine ids inside those records are written as 0: the row's
//! identity column is the id, and it is only known once the row is inserted.

use bytes::Bytes;
use converge_core::snapshot::MAX_SNAPSHOT_LIFETIME;
use converge_core::{
    Error, Page, PageRequest, ProjectId, Result, Snapshot, SnapshotName, Subscription,
    SubscriptionName, Topic, TopicName,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};

use super::{PostgresStore, db_error, from_micros, to_micros, ts_column, ts_param};
use crate::embedded::delivery::parse_filter;
use crate::embedded::record::{PubSubSnapshotRecord, SubscriptionRecord, TopicRecord};
use crate::embedded::state::{already_exists, not_found};

/// Page size of list calls that do not ask for one (as in the embedded engine).
const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page a list call returns (as in the embedded engine).
const MAX_PAGE_SIZE: usize = 1000;
/// A snapshot that would expire sooner than this after its creation is refused, as the
/// embedded engine and the real service refuse it.
const MIN_SNAPSHOT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("records always serialize")
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    postcard::from_bytes(bytes)
        .map_err(|e| Error::Internal(format!("undecodable {what} settings: {e}")))
}

pub(super) fn col<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
    row: &'r PgRow,
    name: &str,
) -> Result<T> {
    row.try_get(name).map_err(db_error)
}

/// The size of the page `page` asks for.
fn page_size(page: &PageRequest) -> usize {
    match page.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// One page out of `rows`, fetched with `LIMIT size + 1` and sorted by key: the extra row only
/// says that there is a next page, whose token is the last key kept.
fn finish_page<T>(mut rows: Vec<(String, T)>, size: usize) -> Page<T> {
    let more = rows.len() > size;
    rows.truncate(size);
    let next_page_token = if more {
        rows.last().map(|(k, _)| k.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    Page {
        items: rows.into_iter().map(|(_, item)| item).collect(),
        next_page_token,
    }
}

/// The condition and ordering of a keyset page over `col`: `$1` is the name prefix, `$2` the
/// page token (empty: from the start), `$3` the limit. The prefix test is written so that the
/// `COLLATE "C"` index on `col` serves it.
macro_rules! keyset {
    ($col:literal) => {
        concat!(
            $col,
            " >= $1 AND starts_with(",
            $col,
            ", $1) AND ($2 = '' OR ",
            $col,
            " > $2) ORDER BY ",
            $col,
            " LIMIT $3"
        )
    };
}

/// Ends a transaction as its work went: commits after success, rolls back after an error.
///
/// The rollback is explicit so that the locks are released before the caller gets its answer;
/// a dropped `Transaction` only queues its rollback until the connection is used again.
pub(super) async fn finish_tx<T>(tx: Transaction<'_, Postgres>, result: Result<T>) -> Result<T> {
    match result {
        Ok(value) => {
            tx.commit().await.map_err(db_error)?;
            Ok(value)
        }
        Err(e) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "rollback failed; the connection is discarded");
            }
            Err(e)
        }
    }
}

/// The real service's words for a subscription without a topic.
pub(super) fn detached_error(name: &SubscriptionName) -> Error {
    Error::FailedPrecondition(format!(
        "Subscription {name} is detached from its topic or its topic was deleted"
    ))
}

/// A subscription read back from its row: the stored settings, with the columns that change
/// outside them (topic liveness, detachment) applied.
pub(super) fn subscription_from_row(row: &PgRow) -> Result<Subscription> {
    let record: SubscriptionRecord = decode(&col::<Vec<u8>>(row, "settings")?, "subscription")?;
    let topic = col::<Option<String>>(row, "topic_name")?
        .map(|t| TopicName::parse(&t))
        .transpose()?;
    let mut sub = record.to_subscription(topic)?;
    sub.detached = col(row, "detached")?;
    Ok(sub)
}

/// The columns [`subscription_from_row`] reads, from `subscriptions s` joined with its topic
/// while that topic is live.
pub(super) const SUBSCRIPTION_SELECT: &str =
    "SELECT s.id, s.topic_id, s.name, s.settings, s.detached, t.name AS topic_name
    FROM subscriptions s LEFT JOIN topics t ON t.id = s.topic_id AND NOT t.deleted";

impl PostgresStore {
    /// Creates a topic. `ALREADY_EXISTS` if a live topic has the name.
    pub async fn create_topic(&self, topic: Topic) -> Result<Topic> {
        let settings = encode(&TopicRecord::from_topic(0, &topic));
        let created = sqlx::query(
            "WITH t AS (
               INSERT INTO topics (name, retention_ms, dedup_window_ms, settings)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (name) WHERE NOT deleted DO NOTHING RETURNING id)
             INSERT INTO topic_heads (topic_id) SELECT id FROM t RETURNING topic_id",
        )
        .bind(topic.name.to_string())
        .bind(topic.message_retention.map(|d| d.as_millis() as i64))
        .bind(topic.dedup_window.as_millis() as i64)
        .bind(settings)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        match created {
            Some(_) => {
                tracing::debug!(topic = %topic.name, "topic created");
                Ok(topic)
            }
            None => Err(already_exists(&topic.name.to_string())),
        }
    }

    /// Reads a live topic.
    pub async fn get_topic(&self, name: &TopicName) -> Result<Topic> {
        let row = sqlx::query("SELECT settings FROM topics WHERE name = $1 AND NOT deleted")
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| not_found(&name.to_string()))?;
        decode::<TopicRecord>(&col::<Vec<u8>>(&row, "settings")?, "topic")?.to_topic()
    }

    /// Replaces a live topic's settings (the caller has applied the field mask); bumps its
    /// version so that node caches reload it.
    pub async fn update_topic(&self, topic: Topic) -> Result<Topic> {
        let updated = sqlx::query(
            "UPDATE topics SET retention_ms = $2, dedup_window_ms = $3, settings = $4,
                    version = version + 1
              WHERE name = $1 AND NOT deleted",
        )
        .bind(topic.name.to_string())
        .bind(topic.message_retention.map(|d| d.as_millis() as i64))
        .bind(topic.dedup_window.as_millis() as i64)
        .bind(encode(&TopicRecord::from_topic(0, &topic)))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        if updated.rows_affected() == 0 {
            return Err(not_found(&topic.name.to_string()));
        }
        Ok(topic)
    }

    /// Lists a project's live topics by name.
    pub async fn list_topics(&self, project: &ProjectId, page: PageRequest) -> Result<Page<Topic>> {
        let size = page_size(&page);
        let rows = sqlx::query(concat!(
            "SELECT name, settings FROM topics WHERE NOT deleted AND ",
            keyset!("name")
        ))
        .bind(format!("projects/{}/topics/", project.as_str()))
        .bind(&page.page_token)
        .bind(size as i64 + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let items = rows
            .iter()
            .map(|row| {
                let topic = decode::<TopicRecord>(&col::<Vec<u8>>(row, "settings")?, "topic")?;
                Ok((col(row, "name")?, topic.to_topic()?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(finish_page(items, size))
    }

    /// Deletes a topic. Its row stays, marked deleted, because its log lives on while
    /// subscriptions read it; its subscriptions remain, attached to no topic.
    pub async fn delete_topic(&self, name: &TopicName) -> Result<()> {
        let deleted = sqlx::query(
            "UPDATE topics SET deleted = true, version = version + 1
              WHERE name = $1 AND NOT deleted",
        )
        .bind(name.to_string())
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        if deleted.rows_affected() == 0 {
            return Err(not_found(&name.to_string()));
        }
        tracing::debug!(topic = %name, "topic deleted");
        Ok(())
    }

    /// Lists the names of a live topic's attached subscriptions.
    pub async fn list_topic_subscriptions(
        &self,
        topic: &TopicName,
        page: PageRequest,
    ) -> Result<Page<SubscriptionName>> {
        let sql = concat!(
            "SELECT name FROM subscriptions WHERE topic_id = $4 AND NOT detached AND ",
            keyset!("name")
        );
        self.list_topic_children(sql, topic, page, SubscriptionName::parse)
            .await
    }

    /// The id of the live topic `name`, or `NOT_FOUND`.
    async fn live_topic_id(&self, name: &TopicName) -> Result<i64> {
        let row = sqlx::query("SELECT id FROM topics WHERE name = $1 AND NOT deleted")
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| not_found(&name.to_string()))?;
        col(&row, "id")
    }

    /// Creates a subscription, which receives the messages published to its topic from now on
    /// (ids above the topic's last id when it is created).
    pub async fn create_subscription(&self, subscription: Subscription) -> Result<Subscription> {
        parse_filter(&subscription.filter)?;
        let now = self.clock.now();
        let name = subscription.name.to_string();
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let result: Result<_> = async {
            let taken = sqlx::query("SELECT 1 FROM subscriptions WHERE name = $1")
                .bind(&name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
            if taken.is_some() {
                return Err(already_exists(&name));
            }
            let topic = subscription
                .topic
                .as_ref()
                .ok_or_else(|| Error::invalid("A subscription needs a topic"))?;
            let head = sqlx::query(
                "SELECT t.id, h.last_id FROM topics t JOIN topic_heads h ON h.topic_id = t.id
                  WHERE t.name = $1 AND NOT t.deleted",
            )
            .bind(topic.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            .ok_or_else(|| not_found(&topic.to_string()))?;
            let topic_id: i64 = col(&head, "id")?;
            let start_after: i64 = col(&head, "last_id")?;
            let created = Subscription {
                created: now,
                detached: false,
                ..subscription
            };
            let record = SubscriptionRecord::from_subscription(0, 0, 0, &created);
            let inserted = sqlx::query(concat!(
                "INSERT INTO subscriptions (name, topic_id, start_after, settings, last_activity)
                 VALUES ($1, $2, $3, $4, ",
                ts_param!("$5"),
                ") ON CONFLICT (name) DO NOTHING RETURNING id"
            ))
            .bind(&name)
            .bind(topic_id)
            .bind(start_after)
            .bind(encode(&record))
            .bind(to_micros(now))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
            // A concurrent create of the same name committed after our check.
            let Some(inserted) = inserted else {
                return Err(already_exists(&name));
            };
            let sub_id: i64 = col(&inserted, "id")?;
            sqlx::query("INSERT INTO sub_cursors (sub_id, cursor) VALUES ($1, $2)")
                .bind(sub_id)
                .bind(start_after)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            tracing::debug!(
                subscription = %created.name, sub_id, start_after, "subscription created"
            );
            Ok(created)
        }
        .await;
        finish_tx(tx, result).await
    }

    /// Reads a subscription.
    pub async fn get_subscription(&self, name: &SubscriptionName) -> Result<Subscription> {
        let row = sqlx::query(&format!("{SUBSCRIPTION_SELECT} WHERE s.name = $1"))
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| not_found(&name.to_string()))?;
        subscription_from_row(&row)
    }

    /// Replaces a subscription's settings (the caller has applied the field mask and checked
    /// the immutable fields). The filter cannot change; topic, creation time and detachment
    /// are the store's and are kept.
    pub async fn update_subscription(&self, subscription: Subscription) -> Result<Subscription> {
        let name = subscription.name.to_string();
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let result: Result<_> = async {
            let row = sqlx::query(&format!(
                "{SUBSCRIPTION_SELECT} WHERE s.name = $1 FOR UPDATE OF s"
            ))
            .bind(&name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            .ok_or_else(|| not_found(&name))?;
            let existing = subscription_from_row(&row)?;
            if existing.filter != subscription.filter {
                return Err(Error::invalid(
                    "The filter of a subscription cannot be changed",
                ));
            }
            let updated = Subscription {
                topic: existing.topic,
                created: existing.created,
                detached: existing.detached,
                ..subscription
            };
            let record = SubscriptionRecord::from_subscription(0, 0, 0, &updated);
            sqlx::query(
                "UPDATE subscriptions SET settings = $2, version = version + 1 WHERE name = $1",
            )
            .bind(&name)
            .bind(encode(&record))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            Ok(updated)
        }
        .await;
        finish_tx(tx, result).await
    }

    /// Lists a project's subscriptions by name.
    pub async fn list_subscriptions(
        &self,
        project: &ProjectId,
        page: PageRequest,
    ) -> Result<Page<Subscription>> {
        let size = page_size(&page);
        let rows = sqlx::query(&format!(
            "{SUBSCRIPTION_SELECT} WHERE {}",
            keyset!("s.name")
        ))
        .bind(format!("projects/{}/subscriptions/", project.as_str()))
        .bind(&page.page_token)
        .bind(size as i64 + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let items = rows
            .iter()
            .map(|row| Ok((col(row, "name")?, subscription_from_row(row)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(finish_page(items, size))
    }

    /// Deletes a subscription; its cursor and deliveries go with it (`ON DELETE CASCADE`).
    pub async fn delete_subscription(&self, name: &SubscriptionName) -> Result<()> {
        let deleted = sqlx::query("DELETE FROM subscriptions WHERE name = $1")
            .bind(name.to_string())
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        if deleted.rows_affected() == 0 {
            return Err(not_found(&name.to_string()));
        }
        tracing::debug!(subscription = %name, "subscription deleted");
        Ok(())
    }

    /// Detaches a subscription from its topic: its backlog is dropped and it reads nothing
    /// more. Detaching twice is not an error.
    pub async fn detach_subscription(&self, name: &SubscriptionName) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let result: Result<_> = async {
            let row =
                sqlx::query("SELECT id, detached FROM subscriptions WHERE name = $1 FOR UPDATE")
                    .bind(name.to_string())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_error)?
                    .ok_or_else(|| not_found(&name.to_string()))?;
            if col::<bool>(&row, "detached")? {
                return Ok(());
            }
            let sub_id: i64 = col(&row, "id")?;
            sqlx::query(
                "UPDATE subscriptions SET detached = true, version = version + 1 WHERE id = $1",
            )
            .bind(sub_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            sqlx::query("DELETE FROM deliveries WHERE sub_id = $1")
                .bind(sub_id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            tracing::debug!(subscription = %name, sub_id, "subscription detached");
            Ok(())
        }
        .await;
        finish_tx(tx, result).await
    }

    /// Captures a subscription's acknowledgement state (its cursor and the ids of its
    /// `deliveries` rows) as a snapshot of its topic, expiring 7 days after its oldest
    /// unacknowledged message. `ALREADY_EXISTS` if the name is taken; `FAILED_PRECONDITION` if
    /// the subscription has no topic or the snapshot would expire within the hour.
    pub async fn create_snapshot(
        &self,
        snapshot: Snapshot,
        subscription: &SubscriptionName,
    ) -> Result<Snapshot> {
        let now = self.clock.now();
        let name = snapshot.name.to_string();
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let result: Result<_> = async {
            let taken = sqlx::query("SELECT 1 FROM snapshots WHERE name = $1")
                .bind(&name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
            if taken.is_some() {
                return Err(already_exists(&name));
            }
            let row = sqlx::query(
                "SELECT s.id, s.topic_id, s.detached, t.name AS topic_name, c.cursor
                   FROM subscriptions s JOIN sub_cursors c ON c.sub_id = s.id
                   LEFT JOIN topics t ON t.id = s.topic_id AND NOT t.deleted
                  WHERE s.name = $1",
            )
            .bind(subscription.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?
            .ok_or_else(|| not_found(&subscription.to_string()))?;
            let topic = match (
                col::<Option<String>>(&row, "topic_name")?,
                col(&row, "detached")?,
            ) {
                (Some(topic), false) => TopicName::parse(&topic)?,
                _ => return Err(detached_error(subscription)),
            };
            let sub_id: i64 = col(&row, "id")?;
            let topic_id: i64 = col::<Option<i64>>(&row, "topic_id")?
                .ok_or_else(|| detached_error(subscription))?;
            let cursor: i64 = col(&row, "cursor")?;
            // One statement, so one consistent view of the subscription's rows. The oldest
            // unacknowledged message is the oldest row, or the first message past the cursor.
            let state = sqlx::query(concat!(
                "SELECT coalesce((SELECT array_agg(msg_id ORDER BY msg_id) FROM deliveries
                                   WHERE sub_id = $1), '{}') AS undone,
                        ",
                ts_column!(
                    "least((SELECT min(publish_time) FROM deliveries WHERE sub_id = $1),
                           (SELECT publish_time FROM messages WHERE topic_id = $2 AND id > $3
                             ORDER BY id LIMIT 1))"
                ),
                " AS oldest"
            ))
            .bind(sub_id)
            .bind(topic_id)
            .bind(cursor)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
            let undone: Vec<i64> = col(&state, "undone")?;
            let oldest = col::<Option<i64>>(&state, "oldest")?.map(from_micros);
            let expire_time = oldest.map_or(now, |t| t.min(now)) + MAX_SNAPSHOT_LIFETIME;
            if expire_time < now + MIN_SNAPSHOT_LIFETIME {
                return Err(Error::FailedPrecondition(format!(
                    "The backlog of subscription {subscription} is too old: a snapshot of it \
                     would expire in less than 1 hour"
                )));
            }
            let floor = undone.first().map_or(cursor, |first| first - 1);
            let created = Snapshot {
                topic,
                expire_time,
                ..snapshot
            };
            let record = PubSubSnapshotRecord::from_snapshot(0, 0, Vec::new(), &created);
            let inserted = sqlx::query(concat!(
                "INSERT INTO snapshots
                   (name, topic_id, cursor, undone, floor, expire_time, settings)
                 VALUES ($1, $2, $3, $4, $5, ",
                ts_param!("$6"),
                ", $7) ON CONFLICT (name) DO NOTHING"
            ))
            .bind(&name)
            .bind(topic_id)
            .bind(cursor)
            .bind(&undone)
            .bind(floor)
            .bind(to_micros(expire_time))
            .bind(encode(&record))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            if inserted.rows_affected() == 0 {
                return Err(already_exists(&name));
            }
            tracing::debug!(
                snapshot = %created.name, subscription = %subscription, cursor, floor,
                "snapshot created"
            );
            Ok(created)
        }
        .await;
        finish_tx(tx, result).await
    }

    /// Reads a snapshot.
    pub async fn get_snapshot(&self, name: &SnapshotName) -> Result<Snapshot> {
        let row = sqlx::query("SELECT settings FROM snapshots WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| not_found(&name.to_string()))?;
        decode::<PubSubSnapshotRecord>(&col::<Vec<u8>>(&row, "settings")?, "snapshot")?
            .to_snapshot()
    }

    /// Replaces a snapshot's labels, expire time and resource; its topic and captured state
    /// stay.
    pub async fn update_snapshot(&self, snapshot: Snapshot) -> Result<Snapshot> {
        let name = snapshot.name.to_string();
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let result: Result<_> = async {
            let row = sqlx::query("SELECT settings FROM snapshots WHERE name = $1 FOR UPDATE")
                .bind(&name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?
                .ok_or_else(|| not_found(&name))?;
            let existing: PubSubSnapshotRecord =
                decode(&col::<Vec<u8>>(&row, "settings")?, "snapshot")?;
            let updated = Snapshot {
                topic: TopicName::parse(&existing.topic)?,
                ..snapshot
            };
            let record = PubSubSnapshotRecord::from_snapshot(0, 0, Vec::new(), &updated);
            sqlx::query(concat!(
                "UPDATE snapshots SET settings = $2, expire_time = ",
                ts_param!("$3"),
                " WHERE name = $1"
            ))
            .bind(&name)
            .bind(encode(&record))
            .bind(to_micros(updated.expire_time))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            Ok(updated)
        }
        .await;
        finish_tx(tx, result).await
    }

    /// Lists a project's snapshots by name.
    pub async fn list_snapshots(
        &self,
        project: &ProjectId,
        page: PageRequest,
    ) -> Result<Page<Snapshot>> {
        let size = page_size(&page);
        let rows = sqlx::query(concat!(
            "SELECT name, settings FROM snapshots WHERE ",
            keyset!("name")
        ))
        .bind(format!("projects/{}/snapshots/", project.as_str()))
        .bind(&page.page_token)
        .bind(size as i64 + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let items = rows
            .iter()
            .map(|row| {
                let record: PubSubSnapshotRecord =
                    decode(&col::<Vec<u8>>(row, "settings")?, "snapshot")?;
                Ok((col(row, "name")?, record.to_snapshot()?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(finish_page(items, size))
    }

    /// Lists the names of a live topic's snapshots.
    pub async fn list_topic_snapshots(
        &self,
        topic: &TopicName,
        page: PageRequest,
    ) -> Result<Page<SnapshotName>> {
        let sql = concat!(
            "SELECT name FROM snapshots WHERE topic_id = $4 AND ",
            keyset!("name")
        );
        self.list_topic_children(sql, topic, page, SnapshotName::parse)
            .await
    }

    /// One page of the names of a live topic's children (subscriptions, snapshots): `sql`
    /// selects `name` with the keyset condition, the topic's id as `$4`.
    async fn list_topic_children<N>(
        &self,
        sql: &'static str,
        topic: &TopicName,
        page: PageRequest,
        parse: fn(&str) -> Result<N>,
    ) -> Result<Page<N>> {
        let topic_id = self.live_topic_id(topic).await?;
        let size = page_size(&page);
        let rows = sqlx::query(sql)
            .bind("projects/")
            .bind(&page.page_token)
            .bind(size as i64 + 1)
            .bind(topic_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let items = rows
            .iter()
            .map(|row| {
                let name: String = col(row, "name")?;
                let parsed = parse(&name)?;
                Ok((name, parsed))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(finish_page(items, size))
    }

    /// Deletes a snapshot.
    pub async fn delete_snapshot(&self, name: &SnapshotName) -> Result<()> {
        let deleted = sqlx::query("DELETE FROM snapshots WHERE name = $1")
            .bind(name.to_string())
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        if deleted.rows_affected() == 0 {
            return Err(not_found(&name.to_string()));
        }
        Ok(())
    }

    /// Stores an API document under `kind` and `key`, replacing any previous one.
    pub async fn put_document(&self, kind: &str, key: &str, value: Bytes) -> Result<()> {
        sqlx::query(
            "INSERT INTO documents (kind, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
        )
        .bind(kind)
        .bind(key)
        .bind(value.as_ref())
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    /// Reads a document.
    pub async fn get_document(&self, kind: &str, key: &str) -> Result<Option<Bytes>> {
        let row = sqlx::query("SELECT value FROM documents WHERE kind = $1 AND key = $2")
            .bind(kind)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(|row| col::<Vec<u8>>(&row, "value").map(Bytes::from))
            .transpose()
    }

    /// Deletes a document; `false` if there was none.
    pub async fn delete_document(&self, kind: &str, key: &str) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM documents WHERE kind = $1 AND key = $2")
            .bind(kind)
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(deleted.rows_affected() > 0)
    }

    /// Lists the documents of `kind` whose key starts with `prefix`, by key. Page tokens are
    /// keys.
    pub async fn list_documents(
        &self,
        kind: &str,
        prefix: &str,
        page: PageRequest,
    ) -> Result<Page<(String, Bytes)>> {
        let size = page_size(&page);
        let rows = sqlx::query(concat!(
            "SELECT key, value FROM documents WHERE kind = $4 AND ",
            keyset!("key")
        ))
        .bind(prefix)
        .bind(&page.page_token)
        .bind(size as i64 + 1)
        .bind(kind)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        let items = rows
            .iter()
            .map(|row| {
                let key: String = col(row, "key")?;
                let value = Bytes::from(col::<Vec<u8>>(row, "value")?);
                Ok((key.clone(), (key, value)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(finish_page(items, size))
    }
}
