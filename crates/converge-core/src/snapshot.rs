//! Snapshots as the store keeps them: a subscription's acknowledgement state at one moment,
//! which a later Seek can return the subscription (or another one on the same topic) to.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::name::{SnapshotName, TopicName};

/// How long a snapshot lives at most: the real service expires a snapshot when the oldest
/// unacknowledged message it holds is 7 days old.
pub const MAX_SNAPSHOT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// A snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Full name.
    pub name: SnapshotName,
    /// The topic of the subscription it was taken from.
    pub topic: TopicName,
    /// When the store will delete it (set by the store at creation).
    pub expire_time: SystemTime,
    /// User labels.
    pub labels: HashMap<String, String>,
    /// The resource as the API layer last wrote it; see [`crate::Topic::resource`].
    pub resource: Bytes,
}
