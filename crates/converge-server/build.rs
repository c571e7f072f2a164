//! Generates the gRPC **server** stubs of `google.pubsub.v1.Publisher` and `Subscriber`.
//!
//! The `googleapis-tonic-google-pubsub-v1` crate ships the prost message types and client stubs
//! only, so the server traits are generated here with `tonic_build::manual`, from a method table
//! checked against that crate's client stubs (no `.proto` files, no `protoc`). The generated
//! files land in `OUT_DIR` as `google.pubsub.v1.Publisher.rs` and
//! `google.pubsub.v1.Subscriber.rs` and are included by `src/grpc/stubs.rs`.

use tonic_build::manual::{Builder, Method, Service};

/// The package every generated route lives under (`/google.pubsub.v1.Publisher/...`).
const PACKAGE: &str = "google.pubsub.v1";
/// Codec of every method: the prost types of the googleapis crate.
const CODEC: &str = "tonic_prost::ProstCodec";
/// `google.protobuf.Empty`: `()` is not a path, so the stubs name an alias of it.
const EMPTY: &str = "crate::grpc::Empty";

/// How messages flow in one method.
#[derive(Clone, Copy)]
enum Kind {
    /// One request, one response.
    Unary,
    /// A stream each way (StreamingPull).
    Bidi,
}

/// One row of a method table: (Rust name, route name, request type, response type, kind).
type Row = (&'static str, &'static str, &'static str, &'static str, Kind);

/// Every method of `google.pubsub.v1.Publisher`.
const PUBLISHER: &[Row] = &[
    ("create_topic", "CreateTopic", "Topic", "Topic", Kind::Unary),
    (
        "update_topic",
        "UpdateTopic",
        "UpdateTopicRequest",
        "Topic",
        Kind::Unary,
    ),
    (
        "publish",
        "Publish",
        "PublishRequest",
        "PublishResponse",
        Kind::Unary,
    ),
    (
        "get_topic",
        "GetTopic",
        "GetTopicRequest",
        "Topic",
        Kind::Unary,
    ),
    (
        "list_topics",
        "ListTopics",
        "ListTopicsRequest",
        "ListTopicsResponse",
        Kind::Unary,
    ),
    (
        "list_topic_subscriptions",
        "ListTopicSubscriptions",
        "ListTopicSubscriptionsRequest",
        "ListTopicSubscriptionsResponse",
        Kind::Unary,
    ),
    (
        "list_topic_snapshots",
        "ListTopicSnapshots",
        "ListTopicSnapshotsRequest",
        "ListTopicSnapshotsResponse",
        Kind::Unary,
    ),
    (
        "delete_topic",
        "DeleteTopic",
        "DeleteTopicRequest",
        "",
        Kind::Unary,
    ),
    (
        "detach_subscription",
        "DetachSubscription",
        "DetachSubscriptionRequest",
        "DetachSubscriptionResponse",
        Kind::Unary,
    ),
];

/// Every method of `google.pubsub.v1.Subscriber`.
const SUBSCRIBER: &[Row] = &[
    (
        "create_subscription",
        "CreateSubscription",
        "Subscription",
        "Subscription",
        Kind::Unary,
    ),
    (
        "get_subscription",
        "GetSubscription",
        "GetSubscriptionRequest",
        "Subscription",
        Kind::Unary,
    ),
    (
        "update_subscription",
        "UpdateSubscription",
        "UpdateSubscriptionRequest",
        "Subscription",
        Kind::Unary,
    ),
    (
        "list_subscriptions",
        "ListSubscriptions",
        "ListSubscriptionsRequest",
        "ListSubscriptionsResponse",
        Kind::Unary,
    ),
    (
        "delete_subscription",
        "DeleteSubscription",
        "DeleteSubscriptionRequest",
        "",
        Kind::Unary,
    ),
    (
        "modify_ack_deadline",
        "ModifyAckDeadline",
        "ModifyAckDeadlineRequest",
        "",
        Kind::Unary,
    ),
    (
        "acknowledge",
        "Acknowledge",
        "AcknowledgeRequest",
        "",
        Kind::Unary,
    ),
    ("pull", "Pull", "PullRequest", "PullResponse", Kind::Unary),
    (
        "streaming_pull",
        "StreamingPull",
        "StreamingPullRequest",
        "StreamingPullResponse",
        Kind::Bidi,
    ),
    (
        "modify_push_config",
        "ModifyPushConfig",
        "ModifyPushConfigRequest",
        "",
        Kind::Unary,
    ),
    (
        "get_snapshot",
        "GetSnapshot",
        "GetSnapshotRequest",
        "Snapshot",
        Kind::Unary,
    ),
    (
        "list_snapshots",
        "ListSnapshots",
        "ListSnapshotsRequest",
        "ListSnapshotsResponse",
        Kind::Unary,
    ),
    (
        "create_snapshot",
        "CreateSnapshot",
        "CreateSnapshotRequest",
        "Snapshot",
        Kind::Unary,
    ),
    (
        "update_snapshot",
        "UpdateSnapshot",
        "UpdateSnapshotRequest",
        "Snapshot",
        Kind::Unary,
    ),
    (
        "delete_snapshot",
        "DeleteSnapshot",
        "DeleteSnapshotRequest",
        "",
        Kind::Unary,
    ),
    ("seek", "Seek", "SeekRequest", "SeekResponse", Kind::Unary),
];

/// The Rust path of a message type; the empty name stands for `google.protobuf.Empty`.
fn type_path(message: &str) -> String {
    if message.is_empty() {
        EMPTY.to_owned()
    } else {
        format!("crate::proto::{message}")
    }
}

/// Builds one service from its method table.
fn service(name: &str, rows: &[Row]) -> Service {
    let mut builder = Service::builder().name(name).package(PACKAGE);
    for &(rust_name, route, input, output, kind) in rows {
        let mut method = Method::builder()
            .name(rust_name)
            .route_name(route)
            .input_type(type_path(input))
            .output_type(type_path(output))
            .codec_path(CODEC);
        if let Kind::Bidi = kind {
            method = method.client_streaming().server_streaming();
        }
        builder = builder.method(method.build());
    }
    builder.build()
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    Builder::new()
        .build_client(false)
        .build_server(true)
        .compile(&[
            service("Publisher", PUBLISHER),
            service("Subscriber", SUBSCRIBER),
        ]);
}
