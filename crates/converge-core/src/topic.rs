//! Topics as the store keeps them.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use crate::name::TopicName;

/// How long a repeated idempotency key is recognised on a topic unless the topic says
/// otherwise (label `converge-dedup-window`).
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A topic: a named log of messages that every subscription of the topic reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// Full name.
    pub name: TopicName,
    /// User labels, including converge's own `converge-*` settings.
    pub labels: HashMap<String, String>,
    /// When set, messages are kept this long after publish even once acknowledged everywhere
    /// (for seek); when unset, a message is dropped once every subscription is done with it.
    pub message_retention: Option<Duration>,
    /// How long an idempotency key is remembered.
    pub dedup_window: Duration,
    /// The resource as the API layer last wrote it, encoded by that layer. The store keeps it
    /// verbatim so that fields without broker semantics (KMS key, storage policy, ...) are
    /// returned exactly as they were set.
    pub resource: Bytes,
}
