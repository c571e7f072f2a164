//! The HTTP request a push delivery sends: body and headers, wrapped or unwrapped.
//!
//! Wrapped (the default) is the JSON envelope of the real service, with both spellings of the id
//! and publish time (`messageId` and `message_id`, ...) because subscribers in the wild read
//! either. Unwrapped (`no_wrapper`) sends the raw data, so an endpoint that was not written for
//! Pub/Sub can consume it; `write_metadata` then moves the metadata into headers.

use std::time::SystemTime;

use base64::Engine as _;
use bytes::Bytes;
use converge_core::ReceivedMessage;
use http::{HeaderName, HeaderValue};
use serde::Serialize;

use crate::proto as v1;

/// Header of the message id in an unwrapped delivery with `write_metadata`.
pub const HEADER_MESSAGE_ID: &str = "x-goog-pubsub-message-id";
/// Header of the publish time (RFC 3339) in an unwrapped delivery with `write_metadata`.
pub const HEADER_PUBLISH_TIME: &str = "x-goog-pubsub-publish-time";
/// Header of the full subscription name in an unwrapped delivery with `write_metadata`.
pub const HEADER_SUBSCRIPTION: &str = "x-goog-pubsub-subscription-name";
/// Header of the ordering key in an unwrapped delivery with `write_metadata` (only when set).
pub const HEADER_ORDERING_KEY: &str = "x-goog-pubsub-ordering-key";

/// One push request, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    /// The request body.
    pub body: Bytes,
    /// Headers to send besides the authentication ones.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The wrapped body: `{"message": ..., "subscription": ..., "deliveryAttempt": ...}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    message: WrappedMessage<'a>,
    subscription: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_attempt: Option<u32>,
}

/// The message inside the wrapped body.
#[derive(Serialize)]
struct WrappedMessage<'a> {
    #[serde(skip_serializing_if = "String::is_empty")]
    data: String,
    #[serde(skip_serializing_if = "std::collections::HashMap::is_empty")]
    attributes: &'a std::collections::HashMap<String, String>,
    #[serde(rename = "messageId")]
    message_id_camel: &'a str,
    message_id: &'a str,
    #[serde(rename = "publishTime")]
    publish_time_camel: &'a str,
    publish_time: &'a str,
    #[serde(rename = "orderingKey", skip_serializing_if = "str::is_empty")]
    ordering_key: &'a str,
}

/// A publish time as the wire shows it: RFC 3339 in UTC, nanosecond precision.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Builds the request for one delivery of `received` on `subscription` (the full name).
///
/// `with_attempt` says whether the subscription has a dead-letter policy: only then does the
/// real service count attempts and put `deliveryAttempt` in the body.
pub fn build(
    subscription: &str,
    config: &v1::PushConfig,
    received: &ReceivedMessage,
    with_attempt: bool,
) -> PushRequest {
    match config.wrapper {
        Some(v1::push_config::Wrapper::NoWrapper(no_wrapper)) => {
            unwrapped(subscription, received, no_wrapper.write_metadata)
        }
        Some(v1::push_config::Wrapper::PubsubWrapper(_)) | None => {
            wrapped(subscription, received, with_attempt)
        }
    }
}

/// The JSON envelope.
fn wrapped(subscription: &str, received: &ReceivedMessage, with_attempt: bool) -> PushRequest {
    let m = &received.message;
    let id = m.id.to_string();
    let time = rfc3339(m.publish_time);
    let envelope = Envelope {
        message: WrappedMessage {
            data: base64::engine::general_purpose::STANDARD.encode(&m.data),
            attributes: &m.attributes,
            message_id_camel: &id,
            message_id: &id,
            publish_time_camel: &time,
            publish_time: &time,
            ordering_key: &m.ordering_key,
        },
        subscription,
        delivery_attempt: (with_attempt && received.delivery_attempt > 0)
            .then_some(received.delivery_attempt),
    };
    let body = serde_json::to_vec(&envelope).unwrap_or_else(|e| {
        // Serializing strings and maps cannot fail; keep the delivery going regardless.
        debug_assert!(false, "push envelope does not serialize: {e}");
        Vec::new()
    });
    PushRequest {
        body: Bytes::from(body),
        headers: vec![(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
    }
}

/// The raw data, with the metadata in headers when asked.
fn unwrapped(subscription: &str, received: &ReceivedMessage, write_metadata: bool) -> PushRequest {
    let m = &received.message;
    let mut headers = Vec::new();
    if write_metadata {
        let fixed = [
            (HEADER_MESSAGE_ID, m.id.to_string()),
            (HEADER_PUBLISH_TIME, rfc3339(m.publish_time)),
            (HEADER_SUBSCRIPTION, subscription.to_owned()),
            (HEADER_ORDERING_KEY, m.ordering_key.clone()),
        ];
        let attributes = m.attributes.iter().map(|(k, v)| (k.as_str(), v.clone()));
        for (name, value) in fixed.into_iter().chain(attributes) {
            if value.is_empty() && name == HEADER_ORDERING_KEY {
                continue;
            }
            match (
                HeaderName::try_from(name),
                HeaderValue::try_from(value.as_str()),
            ) {
                (Ok(name), Ok(value)) => headers.push((name, value)),
                // An attribute that is no valid header cannot travel this way; the data still
                // does, as with the real service.
                _ => tracing::debug!(
                    header = name,
                    "attribute is not a valid HTTP header; skipped"
                ),
            }
        }
    }
    PushRequest {
        body: m.data.clone(),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use converge_core::{AckId, MessageId, StoredMessage};

    use super::*;

    fn received(attempt: u32) -> ReceivedMessage {
        ReceivedMessage {
            ack_id: AckId("a".into()),
            message: StoredMessage {
                id: MessageId(42),
                publish_time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_614_366_835_749),
                data: Bytes::from_static(b"hello"),
                attributes: HashMap::from([("k".to_owned(), "v".to_owned())]),
                ordering_key: String::new(),
            },
            delivery_attempt: attempt,
            attempts: attempt.max(1),
        }
    }

    fn config(wrapper: Option<v1::push_config::Wrapper>) -> v1::PushConfig {
        v1::PushConfig {
            push_endpoint: "http://127.0.0.1:1/".into(),
            wrapper,
            ..Default::default()
        }
    }

    #[test]
    fn wrapped_body_has_both_spellings_and_attempt_only_when_asked() {
        let sub = "projects/p/subscriptions/s";
        let req = build(sub, &config(None), &received(3), true);
        let json: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(json["message"]["data"], "aGVsbG8=");
        assert_eq!(json["message"]["messageId"], "42");
        assert_eq!(json["message"]["message_id"], "42");
        assert_eq!(
            json["message"]["publishTime"],
            json["message"]["publish_time"]
        );
        assert!(
            json["message"]["publishTime"]
                .as_str()
                .unwrap()
                .starts_with("2021-02-26T19:13:55.749")
        );
        assert_eq!(json["message"]["attributes"]["k"], "v");
        assert_eq!(json["subscription"], sub);
        assert_eq!(json["deliveryAttempt"], 3);
        let req = build(sub, &config(None), &received(3), false);
        let json: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert!(json.get("deliveryAttempt").is_none());
    }

    #[test]
    fn unwrapped_sends_raw_data_and_metadata_headers_only_when_asked() {
        let no_wrapper = |write_metadata| {
            config(Some(v1::push_config::Wrapper::NoWrapper(
                v1::push_config::NoWrapper { write_metadata },
            )))
        };
        let req = build(
            "projects/p/subscriptions/s",
            &no_wrapper(false),
            &received(1),
            true,
        );
        assert_eq!(req.body, Bytes::from_static(b"hello"));
        assert!(req.headers.is_empty());
        let req = build(
            "projects/p/subscriptions/s",
            &no_wrapper(true),
            &received(1),
            true,
        );
        let get = |n: &str| {
            req.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(get(HEADER_MESSAGE_ID).as_deref(), Some("42"));
        assert_eq!(
            get(HEADER_SUBSCRIPTION).as_deref(),
            Some("projects/p/subscriptions/s")
        );
        assert_eq!(get("k").as_deref(), Some("v"));
        assert!(get(HEADER_PUBLISH_TIME).is_some());
        assert!(get(HEADER_ORDERING_KEY).is_none());
    }
}
