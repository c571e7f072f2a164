//! What a node keeps of each subscription: its settings (cached briefly, dropped when this node
//! changes them and when another node says by NOTIFY that it did), and when it last recorded
//! the subscription's activity for the expiration policy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use converge_core::filter::Filter;
use converge_core::{Result, Subscription, SubscriptionName};
use parking_lot::Mutex;
use sqlx::postgres::PgRow;

use super::resources::{SUBSCRIPTION_SELECT, col, subscription_from_row};
use super::{PostgresStore, db_error, to_micros, ts_param};
use crate::embedded::delivery::parse_filter;
use crate::embedded::state::not_found;

/// How long a node trusts its cached copy of a subscription's settings. Changes made on this
/// node drop the copy at once, and other nodes hear of them by NOTIFY; the TTL bounds how stale
/// a copy can be when a notification was lost.
const SETTINGS_TTL: Duration = Duration::from_secs(2);

/// `last_activity` (for the expiration policy) is written at most this often per subscription
/// and node, so pulls do not each write the subscription's row.
const ACTIVITY_WRITE_INTERVAL: Duration = Duration::from_secs(60);

/// What a node keeps of a subscription.
#[derive(Debug)]
pub(super) struct SubscriptionInfo {
    /// Identity (changes when the name is deleted and created again).
    pub id: i64,
    /// The topic log it reads (kept after the topic is deleted).
    pub topic_id: i64,
    /// Settings, as stored.
    pub settings: Subscription,
    /// The parsed filter.
    pub filter: Option<Filter>,
    loaded: Instant,
}

/// Cached subscription settings, by name and by id.
#[derive(Debug, Default)]
pub(super) struct SubscriptionCache {
    by_name: Mutex<HashMap<SubscriptionName, Arc<SubscriptionInfo>>>,
    by_id: Mutex<HashMap<i64, Arc<SubscriptionInfo>>>,
    /// When this node last wrote each subscription's `last_activity`, in store-clock time.
    activity: Mutex<HashMap<i64, SystemTime>>,
}

impl SubscriptionCache {
    /// Forgets everything (another node changed a resource).
    pub(super) fn clear(&self) {
        self.by_name.lock().clear();
        self.by_id.lock().clear();
    }

    fn forget(&self, name: &SubscriptionName) {
        if let Some(info) = self.by_name.lock().remove(name) {
            self.by_id.lock().remove(&info.id);
        }
    }

    fn fresh<K: std::hash::Hash + Eq>(
        map: &Mutex<HashMap<K, Arc<SubscriptionInfo>>>,
        key: &K,
    ) -> Option<Arc<SubscriptionInfo>> {
        map.lock()
            .get(key)
            .filter(|i| i.loaded.elapsed() < SETTINGS_TTL)
            .cloned()
    }

    fn insert(&self, info: Arc<SubscriptionInfo>) {
        self.by_name
            .lock()
            .insert(info.settings.name.clone(), info.clone());
        self.by_id.lock().insert(info.id, info);
    }
}

impl PostgresStore {
    /// A subscription's settings, from the cache when fresh.
    pub(super) async fn subscription_info(
        &self,
        name: &SubscriptionName,
    ) -> Result<Arc<SubscriptionInfo>> {
        let cache = &self.node.subscriptions;
        if let Some(info) = SubscriptionCache::fresh(&cache.by_name, name) {
            return Ok(info);
        }
        let row = sqlx::query(&format!("{SUBSCRIPTION_SELECT} WHERE s.name = $1"))
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or_else(|| not_found(&name.to_string()))?;
        self.cache_row(&row)
    }

    /// A subscription's settings by id; `None` once it is deleted.
    pub(super) async fn subscription_by_id(
        &self,
        id: i64,
    ) -> Result<Option<Arc<SubscriptionInfo>>> {
        let cache = &self.node.subscriptions;
        if let Some(info) = SubscriptionCache::fresh(&cache.by_id, &id) {
            return Ok(Some(info));
        }
        let row = sqlx::query(&format!("{SUBSCRIPTION_SELECT} WHERE s.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(|row| self.cache_row(&row)).transpose()
    }

    fn cache_row(&self, row: &PgRow) -> Result<Arc<SubscriptionInfo>> {
        let settings = subscription_from_row(row)?;
        let topic_id: Option<i64> = col(row, "topic_id")?;
        let info = Arc::new(SubscriptionInfo {
            id: col(row, "id")?,
            topic_id: topic_id.unwrap_or(0),
            filter: parse_filter(&settings.filter)?,
            settings,
            loaded: Instant::now(),
        });
        self.node.subscriptions.insert(info.clone());
        Ok(info)
    }

    /// Drops the cached settings of a subscription this node changed, and tells the others.
    pub(super) fn forget_subscription(&self, name: &SubscriptionName) {
        self.node.subscriptions.forget(name);
        self.notify_resources_changed();
    }

    /// Records activity for the expiration policy, at most once a minute per subscription.
    pub(super) async fn touch(&self, sub_id: i64, now: SystemTime) -> Result<()> {
        {
            let mut activity = self.node.subscriptions.activity.lock();
            let recent = activity.get(&sub_id).is_some_and(|at| {
                now.duration_since(*at).unwrap_or(Duration::ZERO) < ACTIVITY_WRITE_INTERVAL
            });
            if recent {
                return Ok(());
            }
            activity.insert(sub_id, now);
        }
        sqlx::query(concat!(
            "UPDATE subscriptions SET last_activity = greatest(last_activity, ",
            ts_param!("$2"),
            ") WHERE id = $1"
        ))
        .bind(sub_id)
        .bind(to_micros(now))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }
}
