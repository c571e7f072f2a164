//! to_json then from_json (and to_vec then from_slice) gives back the same prost value.
#![allow(deprecated)] // `PullRequest.return_immediately`

use std::fmt::Debug;

use super::fixtures::*;
use super::{ProtoJson, from_slice, to_vec};
use crate::proto::*;

fn round_trip<T: ProtoJson + PartialEq + Debug + Default>(value: T) {
    let json = value.to_json();
    let back = T::from_json(&json).unwrap_or_else(|e| panic!("{e}\n{json}"));
    assert_eq!(back, value, "JSON was {json}");
    let bytes = to_vec(&value);
    let back: T = from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, value);
    if value != T::default() {
        assert_ne!(
            json,
            serde_json::json!({}),
            "a set value must not serialize as {{}}"
        );
    }
}

#[test]
fn topic_with_every_ingestion_source() {
    for source in ingestion_sources() {
        round_trip(topic_with(source));
    }
}

#[test]
fn topic_parts_alone() {
    round_trip(MessageStoragePolicy {
        allowed_persistence_regions: vec!["r".into()],
        enforce_in_transit: true,
    });
    for transform in message_transforms() {
        round_trip(transform);
    }
    round_trip(topic_full().schema_settings.unwrap());
    round_trip(topic_full().ingestion_data_source_settings.unwrap());
}

#[test]
fn publisher_bodies() {
    round_trip(message_full());
    round_trip(PublishRequest {
        topic: "projects/p/topics/t".into(),
        messages: vec![message_full(), PubsubMessage::default()],
    });
    round_trip(PublishResponse {
        message_ids: vec!["1".into(), "2".into()],
    });
    round_trip(UpdateTopicRequest {
        topic: Some(topic_full()),
        update_mask: mask(&[
            "labels",
            "message_storage_policy.allowed_persistence_regions",
        ]),
    });
    round_trip(ListTopicsResponse {
        topics: vec![topic_full(), Topic::default()],
        next_page_token: "next".into(),
    });
    round_trip(ListTopicSubscriptionsResponse {
        subscriptions: vec!["projects/p/subscriptions/s".into()],
        next_page_token: "next".into(),
    });
    round_trip(ListTopicSnapshotsResponse {
        snapshots: vec!["projects/p/snapshots/s".into()],
        next_page_token: "next".into(),
    });
    round_trip(DetachSubscriptionResponse {});
    round_trip(());
}

#[test]
fn subscription_with_every_wrapper_and_output_format() {
    let wrappers = [
        push_config::Wrapper::PubsubWrapper(push_config::PubsubWrapper {}),
        push_config::Wrapper::NoWrapper(push_config::NoWrapper {
            write_metadata: true,
        }),
        push_config::Wrapper::NoWrapper(push_config::NoWrapper {
            write_metadata: false,
        }),
    ];
    let formats = [
        cloud_storage_config::OutputFormat::TextConfig(cloud_storage_config::TextConfig {}),
        cloud_storage_config::OutputFormat::AvroConfig(cloud_storage_config::AvroConfig {
            write_metadata: true,
            use_topic_schema: true,
        }),
    ];
    for wrapper in &wrappers {
        for format in &formats {
            round_trip(subscription_with(*wrapper, *format));
        }
    }
}

#[test]
fn subscriber_bodies() {
    round_trip(UpdateSubscriptionRequest {
        subscription: Some(subscription_full()),
        update_mask: mask(&["ack_deadline_seconds", "push_config"]),
    });
    round_trip(ListSubscriptionsResponse {
        subscriptions: vec![subscription_full(), Subscription::default()],
        next_page_token: "next".into(),
    });
    round_trip(ModifyPushConfigRequest {
        subscription: "projects/p/subscriptions/s".into(),
        push_config: subscription_full().push_config,
    });
    round_trip(PullRequest {
        subscription: "projects/p/subscriptions/s".into(),
        return_immediately: true,
        max_messages: 100,
    });
    round_trip(PullResponse {
        received_messages: vec![received_message(1), received_message(2)],
    });
    round_trip(received_message(3));
    round_trip(AcknowledgeRequest {
        subscription: "projects/p/subscriptions/s".into(),
        ack_ids: vec!["a".into(), "b".into()],
    });
    round_trip(ModifyAckDeadlineRequest {
        subscription: "projects/p/subscriptions/s".into(),
        ack_ids: vec!["a".into()],
        ack_deadline_seconds: 600,
    });
}

#[test]
fn snapshot_and_seek_bodies() {
    round_trip(snapshot_full());
    round_trip(CreateSnapshotRequest {
        name: "projects/p/snapshots/snap".into(),
        subscription: "projects/p/subscriptions/s".into(),
        labels: labels(&[("a", "b")]),
        tags: labels(&[("tagKeys/1", "tagValues/2")]),
    });
    round_trip(UpdateSnapshotRequest {
        snapshot: Some(snapshot_full()),
        update_mask: mask(&["expire_time"]),
    });
    round_trip(ListSnapshotsResponse {
        snapshots: vec![snapshot_full()],
        next_page_token: "next".into(),
    });
    // Oneof members have presence: the epoch and the empty name survive the trip.
    for target in [
        seek_request::Target::Time(prost_types::Timestamp::default()),
        seek_request::Target::Time(ts(1_704_067_200, 1).unwrap()),
        seek_request::Target::Snapshot(String::new()),
        seek_request::Target::Snapshot("projects/p/snapshots/snap".into()),
    ] {
        round_trip(SeekRequest {
            subscription: "projects/p/subscriptions/s".into(),
            target: Some(target),
        });
    }
    round_trip(SeekResponse {});
}

#[test]
fn schema_bodies() {
    round_trip(schema_full());
    round_trip(CreateSchemaRequest {
        parent: "projects/p".into(),
        schema: Some(schema_full()),
        schema_id: "s".into(),
    });
    round_trip(ListSchemasResponse {
        schemas: vec![schema_full()],
        next_page_token: "next".into(),
    });
    round_trip(ListSchemaRevisionsResponse {
        schemas: vec![schema_full(), schema_full()],
        next_page_token: "next".into(),
    });
    round_trip(CommitSchemaRequest {
        name: "projects/p/schemas/s".into(),
        schema: Some(schema_full()),
    });
    round_trip(RollbackSchemaRequest {
        name: "projects/p/schemas/s".into(),
        revision_id: "abc".into(),
    });
    round_trip(ValidateSchemaRequest {
        parent: "projects/p".into(),
        schema: Some(schema_full()),
    });
    round_trip(ValidateSchemaResponse {});
    for spec in [
        validate_message_request::SchemaSpec::Name("projects/p/schemas/s".into()),
        validate_message_request::SchemaSpec::Schema(schema_full()),
    ] {
        round_trip(ValidateMessageRequest {
            parent: "projects/p".into(),
            message: b"{\"a\":1}".to_vec(),
            encoding: Encoding::Json.into(),
            schema_spec: Some(spec),
        });
    }
    round_trip(ValidateMessageResponse {});
}

#[test]
fn defaults_are_empty_objects() {
    assert_eq!(Topic::default().to_json(), serde_json::json!({}));
    assert_eq!(Subscription::default().to_json(), serde_json::json!({}));
    assert_eq!(PullResponse::default().to_json(), serde_json::json!({}));
    assert_eq!(().to_json(), serde_json::json!({}));
    round_trip(Topic::default());
    round_trip(Subscription::default());
}
