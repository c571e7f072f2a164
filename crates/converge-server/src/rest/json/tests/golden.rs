//! Exact proto3 JSON for a few representative messages, compared as JSON values (key order is
//! irrelevant in JSON) and parsed back to the same prost value.

use serde_json::{Value, json};

use super::fixtures::*;
use super::{ProtoJson, parse};
use crate::proto::*;

fn assert_golden<T: ProtoJson + PartialEq + std::fmt::Debug>(value: &T, golden: Value) {
    assert_eq!(value.to_json(), golden);
    assert_eq!(&parse::<T>(golden), value);
}

#[test]
fn topic() {
    assert_golden(
        &topic_full(),
        json!({
            "name": "projects/p/topics/t",
            "labels": {"env": "prod", "team": "core"},
            "messageStoragePolicy": {
                "allowedPersistenceRegions": ["europe-west1", "us-east1"],
                "enforceInTransit": true
            },
            "kmsKeyName": "projects/p/locations/l/keyRings/r/cryptoKeys/k",
            "schemaSettings": {
                "schema": "projects/p/schemas/s",
                "encoding": "BINARY",
                "firstRevisionId": "r1",
                "lastRevisionId": "r9"
            },
            "satisfiesPzs": true,
            "messageRetentionDuration": "86400.500s",
            "state": "INGESTION_RESOURCE_ERROR",
            "ingestionDataSourceSettings": {
                "platformLogsSettings": {"severity": "WARNING"},
                "awsKinesis": {
                    "state": "KINESIS_PERMISSION_DENIED",
                    "streamArn": "arn:stream",
                    "consumerArn": "arn:consumer",
                    "awsRoleArn": "arn:role",
                    "gcpServiceAccount": "sa@x"
                }
            },
            "messageTransforms": [
                {
                    "enabled": true,
                    "disabled": true,
                    "javascriptUdf": {
                        "functionName": "redact",
                        "code": "function redact(m) { return m; }"
                    }
                },
                {
                    "aiInference": {
                        "endpoint": "projects/p/locations/l/endpoints/e",
                        "serviceAccountEmail": "ai@x",
                        "unstructuredInference": {
                            "parameters": {"temperature": 0.5, "tags": ["a"]}
                        }
                    }
                }
            ],
            "tags": {"tagKeys/1": "tagValues/2"}
        }),
    );
}

#[test]
fn subscription_with_push_config_and_policies() {
    let subscription = Subscription {
        name: "projects/p/subscriptions/s".into(),
        topic: "projects/p/topics/t".into(),
        push_config: Some(push_config_with(push_config::Wrapper::PubsubWrapper(
            push_config::PubsubWrapper {},
        ))),
        ack_deadline_seconds: 20,
        message_retention_duration: dur(604_800, 0),
        labels: labels(&[("env", "test")]),
        enable_message_ordering: true,
        expiration_policy: Some(ExpirationPolicy { ttl: None }),
        filter: "hasPrefix(attributes.k, \"a\")".into(),
        dead_letter_policy: Some(DeadLetterPolicy {
            dead_letter_topic: "projects/p/topics/dlq".into(),
            max_delivery_attempts: 5,
        }),
        retry_policy: Some(RetryPolicy {
            minimum_backoff: dur(10, 0),
            maximum_backoff: dur(0, 250_000),
        }),
        state: subscription::State::Active.into(),
        ..Subscription::default()
    };
    assert_golden(
        &subscription,
        json!({
            "name": "projects/p/subscriptions/s",
            "topic": "projects/p/topics/t",
            "pushConfig": {
                "pushEndpoint": "https://example.com/push",
                "attributes": {"x-goog-version": "v1"},
                "oidcToken": {"serviceAccountEmail": "push@x", "audience": "aud"},
                "pubsubWrapper": {}
            },
            "ackDeadlineSeconds": 20,
            "messageRetentionDuration": "604800s",
            "labels": {"env": "test"},
            "enableMessageOrdering": true,
            "expirationPolicy": {},
            "filter": "hasPrefix(attributes.k, \"a\")",
            "deadLetterPolicy": {
                "deadLetterTopic": "projects/p/topics/dlq",
                "maxDeliveryAttempts": 5
            },
            "retryPolicy": {"minimumBackoff": "10s", "maximumBackoff": "0.000250s"},
            "state": "ACTIVE"
        }),
    );
}

#[test]
fn pull_response_with_bytes_and_timestamps() {
    let response = PullResponse {
        received_messages: vec![received_message(1), received_message(2)],
    };
    let message = json!({
        "data": "AAEC+/8=",
        "attributes": {"k": "v"},
        "messageId": "42",
        "publishTime": "2024-01-01T00:00:00.123456789Z",
        "orderingKey": "ok"
    });
    assert_golden(
        &response,
        json!({
            "receivedMessages": [
                {"ackId": "ack-1", "message": message, "deliveryAttempt": 1},
                {"ackId": "ack-2", "message": message, "deliveryAttempt": 2}
            ]
        }),
    );
}

#[test]
fn cloud_storage_config_with_int64() {
    let config = cloud_storage_config_with(cloud_storage_config::OutputFormat::TextConfig(
        cloud_storage_config::TextConfig {},
    ));
    assert_golden(
        &config,
        json!({
            "bucket": "bucket",
            "filenamePrefix": "pre",
            "filenameSuffix": "suf",
            "filenameDatetimeFormat": "YYYY-MM-DD",
            "maxDuration": "300s",
            "maxBytes": "9007199254740993",
            "maxMessages": "1000",
            "state": "SCHEMA_MISMATCH",
            "serviceAccountEmail": "gcs@x",
            "textConfig": {}
        }),
    );
}

#[test]
fn update_request_field_mask_is_camel_case_text() {
    let request = UpdateSubscriptionRequest {
        subscription: Some(Subscription {
            ack_deadline_seconds: 60,
            ..Subscription::default()
        }),
        update_mask: mask(&["ack_deadline_seconds", "push_config.oidc_token"]),
    };
    assert_golden(
        &request,
        json!({
            "subscription": {"ackDeadlineSeconds": 60},
            "updateMask": "ackDeadlineSeconds,pushConfig.oidcToken"
        }),
    );
}

#[test]
fn oneof_members_are_written_even_when_default() {
    let seek = SeekRequest {
        subscription: String::new(),
        target: Some(seek_request::Target::Snapshot(String::new())),
    };
    assert_golden(&seek, json!({"snapshot": ""}));
    let seek = SeekRequest {
        subscription: "s".into(),
        target: Some(seek_request::Target::Time(prost_types::Timestamp::default())),
    };
    assert_golden(
        &seek,
        json!({"subscription": "s", "time": "1970-01-01T00:00:00Z"}),
    );
}

#[test]
fn schema_and_unknown_enum_numbers() {
    assert_golden(
        &schema_full(),
        json!({
            "name": "projects/p/schemas/s",
            "type": "AVRO",
            "definition": "{\"type\":\"record\"}",
            "revisionId": "abc123",
            "revisionCreateTime": "2024-01-01T00:00:00Z"
        }),
    );
    // A number with no name (from a newer proto) is written as the number.
    let topic = Topic {
        state: 99,
        ..Topic::default()
    };
    assert_golden(&topic, json!({"state": 99}));
}
