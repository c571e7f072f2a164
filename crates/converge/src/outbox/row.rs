//! The rows of the outbox table, as inserted and as read back for publishing. A private module,
//! so that these types (which appear in the sealed trait) stay out of the public API.

use std::collections::HashMap;
use std::time::Duration;

use converge_core::TopicName;
use converge_core::message::{IDEMPOTENCY_KEY_ATTRIBUTE, NewMessage};

use super::OutboxError;
use crate::transport::OutgoingMessage;

/// A validated row to insert.
#[derive(Debug)]
pub struct NewRow {
    pub(super) topic: String,
    pub(super) data: Vec<u8>,
    /// The attributes without the idempotency key, which has its own column.
    pub(super) attributes: HashMap<String, String>,
    pub(super) ordering_key: String,
    pub(super) idempotency_key: String,
}

impl NewRow {
    pub(super) fn new(
        topic: &str,
        message: OutgoingMessage,
        idempotency_key: &str,
    ) -> Result<Self, OutboxError> {
        let invalid = |e: converge_core::Error| OutboxError::InvalidMessage(e.to_string());
        TopicName::parse(topic).map_err(invalid)?;
        if idempotency_key.is_empty() {
            return Err(OutboxError::InvalidMessage(
                "the idempotency key is empty".to_owned(),
            ));
        }
        let OutgoingMessage {
            data,
            mut attributes,
            ordering_key,
        } = message;
        attributes.remove(IDEMPOTENCY_KEY_ATTRIBUTE);
        // Checked as the relay will publish it: with the key attribute.
        let mut published = NewMessage {
            data,
            attributes,
            ordering_key,
        };
        published.attributes.insert(
            IDEMPOTENCY_KEY_ATTRIBUTE.to_owned(),
            idempotency_key.to_owned(),
        );
        converge_core::limits::validate_publish(std::slice::from_ref(&published))
            .map_err(invalid)?;
        published.attributes.remove(IDEMPOTENCY_KEY_ATTRIBUTE);
        Ok(Self {
            topic: topic.to_owned(),
            data: published.data.to_vec(),
            attributes: published.attributes,
            ordering_key: published.ordering_key,
            idempotency_key: idempotency_key.to_owned(),
        })
    }
}

/// A row read back for publishing.
#[derive(Debug, Clone)]
pub struct PendingRow {
    pub(super) id: i64,
    pub(super) topic: String,
    /// The message as it is published, idempotency key attribute included.
    pub(super) message: OutgoingMessage,
    /// How long ago the row was enqueued.
    pub(super) age: Duration,
}

impl PendingRow {
    pub(super) fn new(
        id: i64,
        topic: String,
        data: Vec<u8>,
        mut attributes: HashMap<String, String>,
        ordering_key: String,
        idempotency_key: String,
        age: Duration,
    ) -> Self {
        attributes.insert(IDEMPOTENCY_KEY_ATTRIBUTE.to_owned(), idempotency_key);
        Self {
            id,
            topic,
            message: OutgoingMessage {
                data: data.into(),
                attributes,
                ordering_key,
            },
            age,
        }
    }
}
