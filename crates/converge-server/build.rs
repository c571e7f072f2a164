//! Generates the gRPC **server** stubs of `google.pubsub.v1.Publisher`, `Subscriber` and
//! `SchemaService`, and of the IAM mixin `google.iam.v1.IAMPolicy`.
//!
//! The googleapis crates ship the prost message types and client stubs only, so the server
//! traits are generated here with `tonic_build::manual`, from method tables checked against
//! those crates' client stubs (no `.proto` files, no `protoc`). The generated files land in
//! `OUT_DIR` as `{package}.{Service}.rs`: the Publisher and Subscriber stubs are included by
//! `src/grpc/stubs.rs`, the SchemaService stubs by `src/grpc/schema.rs` and the IAMPolicy stubs
//! by `src/grpc/iam.rs`.

use tonic_build::manual::{Builder, Method, Service};

/// The package of the Pub/Sub services (`/google.pubsub.v1.Publisher/...`).
const PACKAGE: &str = "google.pubsub.v1";
/// The package of the IAM mixin (`/google.iam.v1.IAMPolicy/...`).
const IAM_PACKAGE: &str = "google.iam.v1";
/// Where the prost types of the Pub/Sub services live.
const PUBSUB_TYPES: &str = "crate::proto";
/// Where the prost types of the IAM mixin live.
const IAM_TYPES: &str = "crate::grpc::iam::proto";
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

/// Every method of `google.pubsub.v1.SchemaService`.
const SCHEMA_SERVICE: &[Row] = &[
    (
        "create_schema",
        "CreateSchema",
        "CreateSchemaRequest",
        "Schema",
        Kind::Unary,
    ),
    (
        "get_schema",
        "GetSchema",
        "GetSchemaRequest",
        "Schema",
        Kind::Unary,
    ),
    (
        "list_schemas",
        "ListSchemas",
        "ListSchemasRequest",
        "ListSchemasResponse",
        Kind::Unary,
    ),
    (
        "list_schema_revisions",
        "ListSchemaRevisions",
        "ListSchemaRevisionsRequest",
        "ListSchemaRevisionsResponse",
        Kind::Unary,
    ),
    (
        "commit_schema",
        "CommitSchema",
        "CommitSchemaRequest",
        "Schema",
        Kind::Unary,
    ),
    (
        "rollback_schema",
        "RollbackSchema",
        "RollbackSchemaRequest",
        "Schema",
        Kind::Unary,
    ),
    (
        "delete_schema_revision",
        "DeleteSchemaRevision",
        "DeleteSchemaRevisionRequest",
        "Schema",
        Kind::Unary,
    ),
    (
        "delete_schema",
        "DeleteSchema",
        "DeleteSchemaRequest",
        "",
        Kind::Unary,
    ),
    (
        "validate_schema",
        "ValidateSchema",
        "ValidateSchemaRequest",
        "ValidateSchemaResponse",
        Kind::Unary,
    ),
    (
        "validate_message",
        "ValidateMessage",
        "ValidateMessageRequest",
        "ValidateMessageResponse",
        Kind::Unary,
    ),
];

/// Every method of the IAM mixin `google.iam.v1.IAMPolicy`.
const IAM_POLICY: &[Row] = &[
    (
        "set_iam_policy",
        "SetIamPolicy",
        "SetIamPolicyRequest",
        "Policy",
        Kind::Unary,
    ),
    (
        "get_iam_policy",
        "GetIamPolicy",
        "GetIamPolicyRequest",
        "Policy",
        Kind::Unary,
    ),
    (
        "test_iam_permissions",
        "TestIamPermissions",
        "TestIamPermissionsRequest",
        "TestIamPermissionsResponse",
        Kind::Unary,
    ),
];

/// The Rust path of a message type under the module `types`; the empty name stands for
/// `google.protobuf.Empty`.
fn type_path(types: &str, message: &str) -> String {
    if message.is_empty() {
        EMPTY.to_owned()
    } else {
        format!("{types}::{message}")
    }
}

/// Builds one service of `package` from its method table, its types under the module `types`.
fn service(package: &str, types: &str, name: &str, rows: &[Row]) -> Service {
    let mut builder = Service::builder().name(name).package(package);
    for &(rust_name, route, input, output, kind) in rows {
        let mut method = Method::builder()
            .name(rust_name)
            .route_name(route)
            .input_type(type_path(types, input))
            .output_type(type_path(types, output))
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
            service(PACKAGE, PUBSUB_TYPES, "Publisher", PUBLISHER),
            service(PACKAGE, PUBSUB_TYPES, "Subscriber", SUBSCRIBER),
            service(PACKAGE, PUBSUB_TYPES, "SchemaService", SCHEMA_SERVICE),
            service(IAM_PACKAGE, IAM_TYPES, "IAMPolicy", IAM_POLICY),
        ]);
}
