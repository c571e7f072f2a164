//! Input spellings proto3 JSON parsers must accept besides the canonical output form.
#![allow(deprecated)] // `PullRequest.return_immediately`

use serde_json::json;

use super::fixtures::*;
use super::{ProtoJson, from_slice, parse};
use crate::proto::*;

#[test]
fn snake_case_names_are_accepted() {
    let camel = subscription_full().to_json();
    let snake = to_snake_keys(&camel);
    assert_ne!(camel, snake, "the fixture must have multi-word names");
    assert_eq!(parse::<Subscription>(snake), subscription_full());
}

/// Rewrites every object key of a message JSON to snake_case, except map keys (labels, tags,
/// attributes, struct fields), which are data.
fn to_snake_keys(value: &serde_json::Value) -> serde_json::Value {
    const DATA_MAPS: [&str; 4] = ["labels", "tags", "attributes", "parameters"];
    match value {
        serde_json::Value::Object(object) => object
            .iter()
            .map(|(key, item)| {
                let snake = super::super::names::snake_case(key);
                let item = if DATA_MAPS.contains(&snake.as_str()) {
                    item.clone()
                } else {
                    to_snake_keys(item)
                };
                (snake, item)
            })
            .collect(),
        serde_json::Value::Array(items) => items.iter().map(to_snake_keys).collect(),
        other => other.clone(),
    }
}

#[test]
fn bytes_accept_url_safe_and_unpadded_base64() {
    for data in ["AAEC+/8=", "AAEC+/8", "AAEC-_8=", "AAEC-_8"] {
        let request: PublishRequest = parse(json!({"messages": [{"data": data}]}));
        assert_eq!(request.messages[0].data, [0, 1, 2, 0xfb, 0xff], "{data}");
    }
}

#[test]
fn int64_accepts_numbers_and_int32_accepts_strings() {
    let config: CloudStorageConfig = parse(json!({"maxBytes": 5, "maxMessages": "7"}));
    assert_eq!((config.max_bytes, config.max_messages), (5, 7));
    let config: CloudStorageConfig = parse(json!({"maxBytes": "-9223372036854775808"}));
    assert_eq!(config.max_bytes, i64::MIN);
    let request: PullRequest = parse(json!({"maxMessages": "10"}));
    assert_eq!(request.max_messages, 10);
    let request: PullRequest = parse(json!({"maxMessages": 1e2}));
    assert_eq!(request.max_messages, 100);
}

#[test]
fn enums_accept_numbers() {
    let topic: Topic = parse(json!({"state": 1}));
    assert_eq!(topic.state, i32::from(crate::proto::topic::State::Active));
    let topic: Topic = parse(json!({"state": 42}));
    assert_eq!(topic.state, 42);
    let settings: SchemaSettings = parse(json!({"encoding": "JSON"}));
    assert_eq!(settings.encoding, i32::from(Encoding::Json));
}

#[test]
fn timestamps_accept_offsets_and_durations_fractions() {
    let message: PubsubMessage = parse(json!({"publishTime": "2024-01-01T05:30:00.5+05:30"}));
    assert_eq!(message.publish_time, ts(1_704_067_200, 500_000_000));
    let message: PubsubMessage = parse(json!({"publishTime": "2023-12-31T23:00:00-01:00"}));
    assert_eq!(message.publish_time, ts(1_704_067_200, 0));
    let policy: RetryPolicy =
        parse(json!({"minimumBackoff": "1.5s", "maximumBackoff": "0.000000001s"}));
    assert_eq!(policy.minimum_backoff, dur(1, 500_000_000));
    assert_eq!(policy.maximum_backoff, dur(0, 1));
}

#[test]
fn null_means_default() {
    let subscription: Subscription = parse(json!({
        "name": null, "pushConfig": null, "labels": null, "ackDeadlineSeconds": null
    }));
    assert_eq!(subscription, Subscription::default());
    let seek: SeekRequest = parse(json!({"time": null, "snapshot": "s"}));
    assert_eq!(
        seek.target,
        Some(seek_request::Target::Snapshot("s".into()))
    );
}

#[test]
fn field_masks_become_snake_case_paths() {
    let request: UpdateTopicRequest =
        parse(json!({"updateMask": "messageRetentionDuration,schema_settings.encoding"}));
    assert_eq!(
        request.update_mask,
        mask(&["message_retention_duration", "schema_settings.encoding"])
    );
}

#[test]
fn empty_body_is_the_default_message() {
    assert_eq!(
        from_slice::<PullRequest>(b"").unwrap(),
        PullRequest::default()
    );
    assert_eq!(
        from_slice::<PullRequest>(b" \n").unwrap(),
        PullRequest::default()
    );
    from_slice::<()>(b"").unwrap();
    from_slice::<()>(b"{}").unwrap();
    let request: AcknowledgeRequest = from_slice(br#"{"ack_ids":["a","b"]}"#).unwrap();
    assert_eq!(request.ack_ids, ["a", "b"]);
}

#[test]
fn repeated_and_map_round_trip_through_text() {
    let text = br#"{"messages":[{"attributes":{"a":"1","b":"2"},"orderingKey":"k"}]}"#;
    let request: PublishRequest = from_slice(text).unwrap();
    assert_eq!(
        request.messages[0].attributes,
        labels(&[("a", "1"), ("b", "2")])
    );
    assert_eq!(
        request.to_json(),
        json!({"messages": [{"attributes": {"a": "1", "b": "2"}, "orderingKey": "k"}]})
    );
}
