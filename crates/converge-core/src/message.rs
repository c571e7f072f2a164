//! Messages as publishers send them, as the store keeps them and as subscribers receive them.

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The attribute by which a publisher makes a publish idempotent: a message carrying it is
/// stored once per topic within the topic's deduplication window, and a repeated publish gets
/// the original message id back.
pub const IDEMPOTENCY_KEY_ATTRIBUTE: &str = "converge-idempotency-key";

/// Message attributes, as in Pub/Sub: string keys to string values.
pub type Attributes = HashMap<String, String>;

/// A message as a publisher hands it in, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewMessage {
    /// The payload; may be empty when there is at least one attribute.
    pub data: Bytes,
    /// Attributes.
    pub attributes: Attributes,
    /// Ordering key; empty for none.
    pub ordering_key: String,
}

impl NewMessage {
    /// The idempotency key of the message, if it carries one.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.attributes
            .get(IDEMPOTENCY_KEY_ATTRIBUTE)
            .map(String::as_str)
            .filter(|k| !k.is_empty())
    }
}

/// A message id. Ids are assigned by the store, increase with publish order (across topics)
/// and are never reused; on the wire they are decimal strings, as in Pub/Sub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub u64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A message as the store keeps it: durable, with its id and publish time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The id assigned at publish.
    pub id: MessageId,
    /// When the broker accepted the message.
    pub publish_time: SystemTime,
    /// The payload.
    pub data: Bytes,
    /// Attributes.
    pub attributes: Attributes,
    /// Ordering key; empty for none.
    pub ordering_key: String,
}

impl StoredMessage {
    /// Size as Pub/Sub counts it for flow control: data, attribute keys and values, ordering key.
    pub fn size(&self) -> usize {
        self.data.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.ordering_key.len()
    }
}

/// The handle a subscriber uses to acknowledge or extend one delivery of a message.
///
/// Opaque to clients. An ack id names one delivery (one lease): once that lease has expired or
/// the message was acknowledged, the ack id is stale and using it has no effect.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AckId(pub String);

impl fmt::Display for AckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One delivery of a message to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The handle to acknowledge or extend this delivery.
    pub ack_id: AckId,
    /// The message.
    pub message: StoredMessage,
    /// How many times the message has been delivered on this subscription, this delivery
    /// included; 0 when the subscription has no dead-letter policy (as in Pub/Sub).
    pub delivery_attempt: u32,
    /// The same count whatever the policy, for the broker's own logs (push requests).
    pub attempts: u32,
}
