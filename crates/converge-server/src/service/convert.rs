//! Translation between the prost types of `google.pubsub.v1` and the domain types of
//! `converge_core`, in the direction that needs no validation: domain to wire, and the plain
//! value conversions (durations, timestamps, messages) both ways.
//!
//! Resources go out as the client wrote them (the store keeps the encoded request verbatim), with
//! the fields the broker owns overwritten and the defaults the real service reports filled in, so
//! that a Get answers exactly what the real service would.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use converge_core::name::DELETED_TOPIC;
use converge_core::retry::{DEFAULT_MAXIMUM_BACKOFF, DEFAULT_MINIMUM_BACKOFF};
use converge_core::{NewMessage, ReceivedMessage, Subscription, Topic};

use super::ApiError;
use crate::proto as v1;

/// A std duration as a protobuf `Duration`. Saturates instead of failing: every duration the
/// broker reports is far below the ~292-billion-year range of the wire type.
pub fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// A protobuf `Duration` as a std duration; `INVALID_ARGUMENT` naming `field` when it is negative
/// or malformed (nanos out of range, mixed signs).
pub fn duration_from_proto(d: &prost_types::Duration, field: &str) -> Result<Duration, ApiError> {
    let sign_mismatch = (d.seconds > 0 && d.nanos < 0) || (d.seconds < 0 && d.nanos > 0);
    if d.nanos.abs() >= 1_000_000_000 || sign_mismatch {
        return Err(ApiError::invalid(format!(
            "Invalid {field}: malformed duration {}s {}ns",
            d.seconds, d.nanos
        )));
    }
    Duration::try_from(*d).map_err(|_| {
        ApiError::invalid(format!(
            "Invalid {field}: the duration must not be negative"
        ))
    })
}

/// A point in time as a protobuf `Timestamp`.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// A published message as the domain takes it; the id and publish time a client may have set are
/// ignored, as the real service ignores them.
pub fn new_message(m: v1::PubsubMessage) -> NewMessage {
    NewMessage {
        data: Bytes::from(m.data),
        attributes: m.attributes,
        ordering_key: m.ordering_key,
    }
}

/// One delivery as the wire shows it: message id as a decimal string, publish time as a
/// `Timestamp`, `delivery_attempt` exactly as the store counted it (0 without a dead-letter
/// policy).
pub fn received_message(r: ReceivedMessage) -> v1::ReceivedMessage {
    let m = r.message;
    v1::ReceivedMessage {
        ack_id: r.ack_id.0,
        message: Some(v1::PubsubMessage {
            data: m.data.to_vec(),
            attributes: m.attributes,
            message_id: m.id.to_string(),
            publish_time: Some(timestamp(m.publish_time)),
            ordering_key: m.ordering_key,
        }),
        delivery_attempt: i32::try_from(r.delivery_attempt).unwrap_or(i32::MAX),
    }
}

/// Encodes a resource as the store keeps it.
pub fn encode<M: prost::Message>(resource: &M) -> Bytes {
    Bytes::from(resource.encode_to_vec())
}

/// Decodes a stored resource; empty bytes (a resource created by another path than this API)
/// decode to the default message. `INTERNAL` when the bytes are not the expected message, which
/// means the store returned something this layer never wrote.
fn decode<M: prost::Message + Default>(
    bytes: &Bytes,
    kind: &str,
    name: &str,
) -> Result<M, ApiError> {
    M::decode(bytes.as_ref()).map_err(|e| {
        tracing::error!(resource = %name, kind, error = %e, "stored resource does not decode");
        ApiError::new(
            tonic::Code::Internal,
            format!("The stored {kind} {name} is corrupt"),
        )
    })
}

/// A topic as Get, Create, Update and List answer it.
pub fn topic_to_proto(topic: &Topic) -> Result<v1::Topic, ApiError> {
    let name = topic.name.to_string();
    let mut out: v1::Topic = decode(&topic.resource, "topic", &name)?;
    out.name = name;
    out.labels = topic.labels.clone();
    out.message_retention_duration = topic.message_retention.map(duration_to_proto);
    out.state = v1::topic::State::Active as i32;
    out.satisfies_pzs = false;
    Ok(out)
}

/// A subscription as Get, Create, Update and List answer it, with the defaults the real service
/// reports: `push_config` `{}` for a pull subscription, the expiration policy in force (an empty
/// policy for "never"), and the retry policy's unset backoffs.
pub fn subscription_to_proto(sub: &Subscription) -> Result<v1::Subscription, ApiError> {
    let name = sub.name.to_string();
    let mut out: v1::Subscription = decode(&sub.resource, "subscription", &name)?;
    out.name = name;
    out.topic = sub
        .topic
        .as_ref()
        .map_or_else(|| DELETED_TOPIC.to_string(), ToString::to_string);
    out.ack_deadline_seconds = i32::try_from(sub.ack_deadline.as_secs()).unwrap_or(i32::MAX);
    out.retain_acked_messages = sub.retain_acked_messages;
    out.message_retention_duration = Some(duration_to_proto(sub.message_retention));
    out.labels = sub.labels.clone();
    out.enable_message_ordering = sub.enable_message_ordering;
    out.expiration_policy = Some(v1::ExpirationPolicy {
        ttl: sub.expiration_ttl.map(duration_to_proto),
    });
    out.filter = sub.filter.clone();
    out.dead_letter_policy = sub
        .dead_letter_policy
        .as_ref()
        .map(|p| v1::DeadLetterPolicy {
            dead_letter_topic: p.topic.to_string(),
            max_delivery_attempts: i32::try_from(p.max_delivery_attempts).unwrap_or(i32::MAX),
        });
    if let Some(policy) = out.retry_policy.as_mut() {
        fill_retry_defaults(policy);
    }
    out.push_config.get_or_insert_with(Default::default);
    out.detached = sub.detached;
    out.state = v1::subscription::State::Active as i32;
    out.topic_message_retention_duration = None;
    Ok(out)
}

/// Fills the backoffs a retry policy leaves unset with the real service's defaults.
pub fn fill_retry_defaults(policy: &mut v1::RetryPolicy) {
    policy
        .minimum_backoff
        .get_or_insert_with(|| duration_to_proto(DEFAULT_MINIMUM_BACKOFF));
    policy
        .maximum_backoff
        .get_or_insert_with(|| duration_to_proto(DEFAULT_MAXIMUM_BACKOFF));
}
