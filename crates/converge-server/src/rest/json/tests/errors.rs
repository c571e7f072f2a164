//! Every way a body can be rejected, with the exact Google-style message.

use serde_json::json;

use super::{JsonError, from_slice, parse_err};
use crate::proto::*;
use crate::rest::json::JsonErrorKind;

fn text(error: &JsonError) -> String {
    error.to_string()
}

#[test]
fn unknown_field_at_the_root() {
    let e = parse_err::<PullRequest>(json!({"maxMessages": 1, "foo": 1}));
    assert_eq!(e.kind, JsonErrorKind::UnknownName { name: "foo".into() });
    assert_eq!(e.path, "");
    assert_eq!(
        text(&e),
        "Invalid JSON payload received. Unknown name \"foo\": Cannot find field."
    );
}

#[test]
fn unknown_field_in_nested_messages_names_the_path() {
    let e = parse_err::<UpdateTopicRequest>(json!({"topic": {"labelz": {}}}));
    assert_eq!(
        text(&e),
        "Invalid JSON payload received. Unknown name \"labelz\" at 'topic': Cannot find field."
    );
    let e = parse_err::<PublishRequest>(json!({"messages": [{}, {"bar": 1}]}));
    assert_eq!(e.path, "messages[1]");
    assert_eq!(
        text(&e),
        "Invalid JSON payload received. Unknown name \"bar\" at 'messages[1]': Cannot find field."
    );
    let e = parse_err::<Subscription>(json!({"pushConfig": {"noWrapper": {"x": true}}}));
    assert_eq!(
        text(&e),
        "Invalid JSON payload received. Unknown name \"x\" at 'push_config.no_wrapper': Cannot find field."
    );
    let e = parse_err::<()>(json!({"a": 1}));
    assert_eq!(
        text(&e),
        "Invalid JSON payload received. Unknown name \"a\": Cannot find field."
    );
}

#[test]
fn wrong_scalar_types() {
    let cases = [
        (
            json!({"maxMessages": "abc"}),
            "Invalid value at 'max_messages' (TYPE_INT32), \"abc\"",
        ),
        (
            json!({"maxMessages": 2_147_483_648_i64}),
            "Invalid value at 'max_messages' (TYPE_INT32), 2147483648",
        ),
        (
            json!({"maxMessages": 1.5}),
            "Invalid value at 'max_messages' (TYPE_INT32), 1.5",
        ),
        (
            json!({"returnImmediately": "yes"}),
            "Invalid value at 'return_immediately' (TYPE_BOOL), \"yes\"",
        ),
        (
            json!({"subscription": 5}),
            "Invalid value at 'subscription' (TYPE_STRING), 5",
        ),
    ];
    for (body, expected) in cases {
        let e = parse_err::<PullRequest>(body);
        assert!(
            matches!(e.kind, JsonErrorKind::InvalidValue { .. }),
            "{e:?}"
        );
        assert_eq!(text(&e), expected);
    }
    let e = parse_err::<CloudStorageConfig>(json!({"maxBytes": "12x"}));
    assert_eq!(
        text(&e),
        "Invalid value at 'max_bytes' (TYPE_INT64), \"12x\""
    );
}

#[test]
fn wrong_enum_value() {
    let e = parse_err::<Topic>(json!({"state": "ON"}));
    assert_eq!(
        text(&e),
        "Invalid value at 'state' (type.googleapis.com/google.pubsub.v1.Topic.State), \"ON\""
    );
    let e = parse_err::<Topic>(json!({"state": true}));
    assert_eq!(e.path, "state");
}

#[test]
fn wrong_shapes_for_messages_lists_and_maps() {
    let e = parse_err::<UpdateTopicRequest>(json!({"topic": "x"}));
    assert_eq!(
        text(&e),
        "Invalid value at 'topic' (type.googleapis.com/google.pubsub.v1.Topic), \"x\""
    );
    let e = parse_err::<PullRequest>(json!({"subscription": ["a"]}));
    assert_eq!(
        text(&e),
        "Invalid JSON payload received. Unknown name \"subscription\": Proto field is not repeating, cannot start list."
    );
    let e = parse_err::<AcknowledgeRequest>(json!({"ackIds": "a"}));
    assert_eq!(text(&e), "Invalid value at 'ack_ids' (TYPE_STRING), \"a\"");
    let e = parse_err::<AcknowledgeRequest>(json!({"ackIds": ["a", null]}));
    assert_eq!(
        text(&e),
        "Invalid value at 'ack_ids[1]' (TYPE_STRING), null"
    );
    let e = parse_err::<Topic>(json!({"labels": {"a": 1}}));
    assert_eq!(text(&e), "Invalid value at 'labels[a]' (TYPE_STRING), 1");
    let e = parse_err::<Topic>(json!({"labels": "a=b"}));
    assert_eq!(
        text(&e),
        "Invalid value at 'labels' (map<string, TYPE_STRING>), \"a=b\""
    );
}

#[test]
fn bad_base64() {
    let e = parse_err::<PublishRequest>(json!({"messages": [{"data": "!!not base64"}]}));
    assert_eq!(e.path, "messages[0].data");
    assert_eq!(
        text(&e),
        "Invalid value at 'messages[0].data' (TYPE_BYTES), Base64 decoding failed for \"!!not base64\""
    );
}

#[test]
fn bad_duration_timestamp_and_field_mask() {
    let e = parse_err::<UpdateSubscriptionRequest>(
        json!({"subscription": {"retryPolicy": {"minimumBackoff": "10"}}}),
    );
    assert_eq!(
        text(&e),
        "Invalid value at 'subscription.retry_policy.minimum_backoff' (type.googleapis.com/google.protobuf.Duration), \"10\""
    );
    let e = parse_err::<Subscription>(json!({"messageRetentionDuration": 600}));
    assert_eq!(e.path, "message_retention_duration");
    let e = parse_err::<SeekRequest>(json!({"time": "yesterday"}));
    assert_eq!(
        text(&e),
        "Invalid value at 'time' (type.googleapis.com/google.protobuf.Timestamp), \"yesterday\""
    );
    let e = parse_err::<UpdateTopicRequest>(json!({"updateMask": {"paths": ["labels"]}}));
    assert_eq!(
        text(&e),
        "Invalid value at 'update_mask' (type.googleapis.com/google.protobuf.FieldMask), {\"paths\":[\"labels\"]}"
    );
}

#[test]
fn oneof_set_twice() {
    let e = parse_err::<SeekRequest>(json!({"time": "2024-01-01T00:00:00Z", "snapshot": "s"}));
    assert_eq!(e.kind, JsonErrorKind::Payload);
    assert_eq!(
        text(&e),
        "Invalid JSON payload received. More than one field of oneof \"target\" is set."
    );
    let e = parse_err::<ModifyPushConfigRequest>(
        json!({"pushConfig": {"pubsubWrapper": {}, "noWrapper": {}}}),
    );
    assert_eq!(
        text(&e),
        "Invalid JSON payload received. More than one field of oneof \"wrapper\" is set at 'push_config'."
    );
}

#[test]
fn field_given_in_both_spellings() {
    let e = parse_err::<AcknowledgeRequest>(json!({"ackIds": ["a"], "ack_ids": ["b"]}));
    assert_eq!(
        text(&e),
        "Invalid JSON payload received. Field \"ack_ids\" is given twice, as \"ackIds\" and \"ack_ids\"."
    );
}

#[test]
fn body_that_is_not_a_json_object() {
    let e = from_slice::<PullRequest>(b"[1]").unwrap_err();
    assert_eq!(
        text(&e),
        "Invalid JSON payload received. Unknown name \"\": Root element must be a message."
    );
    let e = from_slice::<PullRequest>(b"{\"maxMessages\": ").unwrap_err();
    assert_eq!(e.kind, JsonErrorKind::Payload);
    assert!(
        text(&e).starts_with("Invalid JSON payload received. Malformed JSON: "),
        "{e}"
    );
}
