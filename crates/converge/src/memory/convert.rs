//! Translation between the SDK's transport types and the engine's domain types, applying the
//! same validation the broker's service layer applies, so that a configuration or a publish the
//! broker refuses is refused in memory too, with the same status code.

use std::time::SystemTime;

use bytes::Bytes;
use converge_core::filter::Filter;
use converge_core::{
    DeadLetterPolicy, NewMessage, ReceivedMessage, RetrySchedule, Subscription, SubscriptionName,
    Topic, TopicName, limits, retry,
};

use crate::transport::{
    Code, IncomingMessage, OutgoingMessage, SubscriptionConfig, TopicConfig, TransportError,
};

/// The status code the broker answers an engine error with.
fn code_of(error: &converge_core::Error) -> Code {
    match error {
        converge_core::Error::InvalidArgument(_) => Code::InvalidArgument,
        converge_core::Error::NotFound(_) => Code::NotFound,
        converge_core::Error::AlreadyExists(_) => Code::AlreadyExists,
        converge_core::Error::FailedPrecondition(_) => Code::FailedPrecondition,
        converge_core::Error::Unavailable(_) => Code::Unavailable,
        converge_core::Error::Internal(_) => Code::Internal,
    }
}

/// An engine error as a transport error, keeping the engine's message.
pub(super) fn status(error: converge_core::Error) -> TransportError {
    TransportError::Status {
        code: code_of(&error),
        message: error.to_string(),
    }
}

/// Maps an engine error about the resource `id` (its short id) as the broker does: `NOT_FOUND`
/// and `ALREADY_EXISTS` with the real service's wording, anything else as it is.
pub(super) fn resource_error(id: &str) -> impl FnOnce(converge_core::Error) -> TransportError {
    let id = id.to_owned();
    move |error| match error {
        converge_core::Error::NotFound(_) => TransportError::Status {
            code: Code::NotFound,
            message: format!("Resource not found (resource={id})."),
        },
        converge_core::Error::AlreadyExists(_) => TransportError::Status {
            code: Code::AlreadyExists,
            message: format!("Resource already exists in the project (resource={id})."),
        },
        other => status(other),
    }
}

/// The engine's topic for a [`TopicConfig`], validated as the broker validates CreateTopic.
pub(super) fn topic(config: &TopicConfig) -> Result<Topic, TransportError> {
    let name = TopicName::parse(&config.name).map_err(status)?;
    limits::validate_labels(&config.labels).map_err(status)?;
    let dedup_window = retry::dedup_window_from_labels(&config.labels).map_err(status)?;
    Ok(Topic {
        name,
        labels: config.labels.clone(),
        message_retention: None,
        dedup_window,
        resource: Bytes::new(),
    })
}

/// The engine's subscription for a [`SubscriptionConfig`], validated as the broker validates
/// CreateSubscription (ack deadline, filter, dead-letter policy, retry policy and the
/// `converge-retry-*` labels). Retention and expiration take the broker's defaults, as they do
/// for a client that does not set them.
pub(super) fn subscription(
    config: &SubscriptionConfig,
    now: SystemTime,
) -> Result<Subscription, TransportError> {
    let name = SubscriptionName::parse(&config.name).map_err(status)?;
    let topic = TopicName::parse(&config.topic).map_err(status)?;
    limits::validate_labels(&config.labels).map_err(status)?;
    let seconds = i64::try_from(config.ack_deadline.as_secs()).unwrap_or(i64::MAX);
    let ack_deadline = limits::ack_deadline(seconds).map_err(status)?;
    let message_retention = limits::subscription_retention(None).map_err(status)?;
    let expiration_ttl = limits::expiration_policy(None).map_err(status)?;
    if !config.filter.is_empty() {
        Filter::parse(&config.filter).map_err(|e| TransportError::Status {
            code: Code::InvalidArgument,
            message: e.to_string(),
        })?;
    }
    let dead_letter_policy = config
        .dead_letter
        .as_ref()
        .map(|d| {
            let topic = TopicName::parse(&d.topic).map_err(|e| TransportError::Status {
                code: Code::InvalidArgument,
                message: format!("Invalid dead_letter_policy.dead_letter_topic: {e}"),
            })?;
            let attempts = i32::try_from(d.max_delivery_attempts).unwrap_or(i32::MAX);
            DeadLetterPolicy::new(topic, attempts).map_err(status)
        })
        .transpose()?;
    let policy = config.retry.map(|r| (Some(r.minimum), Some(r.maximum)));
    let retry = RetrySchedule::resolve(policy, &config.labels).map_err(status)?;
    Ok(Subscription {
        name,
        topic: Some(topic),
        ack_deadline,
        retain_acked_messages: false,
        message_retention,
        enable_message_ordering: config.message_ordering,
        exactly_once: false,
        filter: config.filter.clone(),
        dead_letter_policy,
        retry,
        expiration_ttl,
        detached: false,
        labels: config.labels.clone(),
        created: now,
        resource: Bytes::new(),
    })
}

/// The engine's message for an outgoing one.
pub(super) fn new_message(message: OutgoingMessage) -> NewMessage {
    NewMessage {
        data: message.data,
        attributes: message.attributes,
        ordering_key: message.ordering_key,
    }
}

/// The SDK's view of one delivery. `delivery_attempt` is `None` when the engine reports 0 (no
/// dead-letter policy), as Pub/Sub clients see it.
pub(super) fn incoming(received: &ReceivedMessage) -> IncomingMessage {
    let message = &received.message;
    IncomingMessage {
        message_id: message.id.to_string(),
        data: message.data.clone(),
        attributes: message.attributes.clone(),
        ordering_key: message.ordering_key.clone(),
        publish_time: message.publish_time,
        delivery_attempt: (received.delivery_attempt > 0).then_some(received.delivery_attempt),
    }
}

/// Splits one publish call into requests the broker would accept: each a run of consecutive
/// messages with one ordering key, at most [`limits::MAX_PUBLISH_MESSAGES`] messages and
/// [`limits::MAX_PUBLISH_REQUEST_BYTES`] bytes. Publishing the runs in order keeps the ids in
/// the caller's order and each key's messages in publish order.
pub(super) fn publish_requests(messages: Vec<NewMessage>) -> Vec<Vec<NewMessage>> {
    let mut requests: Vec<Vec<NewMessage>> = Vec::new();
    let mut bytes = 0usize;
    for message in messages {
        let size = limits::message_bytes(&message);
        let fits = requests.last().is_some_and(|current| {
            current[0].ordering_key == message.ordering_key
                && current.len() < limits::MAX_PUBLISH_MESSAGES
                && bytes + size <= limits::MAX_PUBLISH_REQUEST_BYTES
        });
        if fits {
            bytes += size;
            if let Some(current) = requests.last_mut() {
                current.push(message);
            }
        } else {
            bytes = size;
            requests.push(vec![message]);
        }
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(key: &str, data: &str) -> NewMessage {
        NewMessage {
            data: Bytes::from(data.to_owned()),
            attributes: Default::default(),
            ordering_key: key.to_owned(),
        }
    }

    #[test]
    fn publish_requests_split_on_ordering_key_changes_and_keep_order() {
        let requests = publish_requests(vec![
            message("a", "1"),
            message("a", "2"),
            message("", "3"),
            message("a", "4"),
        ]);
        let shape: Vec<Vec<&str>> = requests
            .iter()
            .map(|r| {
                r.iter()
                    .map(|m| std::str::from_utf8(&m.data).unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(shape, vec![vec!["1", "2"], vec!["3"], vec!["4"]]);
    }

    #[test]
    fn publish_requests_respect_the_message_count_limit() {
        let requests = publish_requests(
            (0..limits::MAX_PUBLISH_MESSAGES + 1)
                .map(|_| message("", "x"))
                .collect(),
        );
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].len(), limits::MAX_PUBLISH_MESSAGES);
        assert_eq!(requests[1].len(), 1);
    }

    #[test]
    fn engine_errors_keep_their_grpc_code() {
        let e = status(converge_core::Error::FailedPrecondition("detached".into()));
        assert_eq!(e.code(), Code::FailedPrecondition);
        let e = resource_error("orders")(converge_core::Error::NotFound("x".into()));
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.to_string().contains("resource=orders"));
    }
}
