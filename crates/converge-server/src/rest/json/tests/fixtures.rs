//! Messages with every field set to a non-default value, for round-trip and golden tests.
#![allow(deprecated)] // `MessageTransform.enabled` and `PullRequest.return_immediately`

use std::collections::HashMap;

use prost_types::{Duration, FieldMask, Timestamp};

use crate::proto::{self, *};

pub(super) fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub(super) fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos })
}

pub(super) fn dur(seconds: i64, nanos: i32) -> Option<Duration> {
    Some(Duration { seconds, nanos })
}

pub(super) fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

/// Every ingestion source, each with all its fields set.
pub(super) fn ingestion_sources() -> Vec<ingestion_data_source_settings::Source> {
    use ingestion_data_source_settings::{self as ids, Source, cloud_storage::InputFormat};
    let cloud_storage = |format| ids::CloudStorage {
        state: 5,
        bucket: "b".into(),
        minimum_object_create_time: ts(1_700_000_000, 5),
        match_glob: "**.json".into(),
        input_format: Some(format),
    };
    vec![
        Source::AwsKinesis(ids::AwsKinesis {
            state: 2,
            stream_arn: "arn:stream".into(),
            consumer_arn: "arn:consumer".into(),
            aws_role_arn: "arn:role".into(),
            gcp_service_account: "sa@x".into(),
        }),
        Source::CloudStorage(cloud_storage(InputFormat::TextFormat(
            ids::cloud_storage::TextFormat {
                delimiter: Some(String::new()),
            },
        ))),
        Source::CloudStorage(cloud_storage(InputFormat::AvroFormat(
            ids::cloud_storage::AvroFormat {},
        ))),
        Source::CloudStorage(cloud_storage(InputFormat::PubsubAvroFormat(
            ids::cloud_storage::PubSubAvroFormat {},
        ))),
        Source::AzureEventHubs(ids::AzureEventHubs {
            state: 7,
            resource_group: "rg".into(),
            namespace: "ns".into(),
            event_hub: "eh".into(),
            client_id: "cid".into(),
            tenant_id: "tid".into(),
            subscription_id: "sid".into(),
            gcp_service_account: "sa@x".into(),
        }),
        Source::AwsMsk(ids::AwsMsk {
            state: 1,
            cluster_arn: "arn:cluster".into(),
            topic: "t".into(),
            aws_role_arn: "arn:role".into(),
            gcp_service_account: "sa@x".into(),
        }),
        Source::ConfluentCloud(ids::ConfluentCloud {
            state: 4,
            bootstrap_server: "host:9092".into(),
            cluster_id: "lkc".into(),
            topic: "t".into(),
            identity_pool_id: "pool".into(),
            gcp_service_account: "sa@x".into(),
        }),
    ]
}

/// Both kinds of message transform, all fields set.
pub(super) fn message_transforms() -> Vec<MessageTransform> {
    let parameters = prost_types::Struct {
        fields: [
            (
                "temperature".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(0.5)),
                },
            ),
            (
                "tags".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::ListValue(
                        prost_types::ListValue {
                            values: vec![prost_types::Value {
                                kind: Some(prost_types::value::Kind::StringValue("a".into())),
                            }],
                        },
                    )),
                },
            ),
        ]
        .into_iter()
        .collect(),
    };
    vec![
        MessageTransform {
            enabled: true,
            disabled: true,
            transform: Some(message_transform::Transform::JavascriptUdf(JavaScriptUdf {
                function_name: "redact".into(),
                code: "function redact(m) { return m; }".into(),
            })),
        },
        MessageTransform {
            enabled: false,
            disabled: false,
            transform: Some(message_transform::Transform::AiInference(AiInference {
                endpoint: "projects/p/locations/l/endpoints/e".into(),
                service_account_email: "ai@x".into(),
                inference_mode: Some(ai_inference::InferenceMode::UnstructuredInference(
                    ai_inference::UnstructuredInference {
                        parameters: Some(parameters),
                    },
                )),
            })),
        },
    ]
}

/// A topic with every field set, using `source` for its ingestion settings.
pub(super) fn topic_with(source: ingestion_data_source_settings::Source) -> Topic {
    Topic {
        name: "projects/p/topics/t".into(),
        labels: labels(&[("env", "prod"), ("team", "core")]),
        message_storage_policy: Some(MessageStoragePolicy {
            allowed_persistence_regions: vec!["europe-west1".into(), "us-east1".into()],
            enforce_in_transit: true,
        }),
        kms_key_name: "projects/p/locations/l/keyRings/r/cryptoKeys/k".into(),
        schema_settings: Some(SchemaSettings {
            schema: "projects/p/schemas/s".into(),
            encoding: Encoding::Binary.into(),
            first_revision_id: "r1".into(),
            last_revision_id: "r9".into(),
        }),
        satisfies_pzs: true,
        message_retention_duration: dur(86_400, 500_000_000),
        state: proto::topic::State::IngestionResourceError.into(),
        ingestion_data_source_settings: Some(IngestionDataSourceSettings {
            platform_logs_settings: Some(PlatformLogsSettings {
                severity: platform_logs_settings::Severity::Warning.into(),
            }),
            source: Some(source),
        }),
        message_transforms: message_transforms(),
        tags: labels(&[("tagKeys/1", "tagValues/2")]),
    }
}

pub(super) fn topic_full() -> Topic {
    let source = ingestion_sources().swap_remove(0);
    topic_with(source)
}

pub(super) fn message_full() -> PubsubMessage {
    PubsubMessage {
        data: vec![0, 1, 2, 0xfb, 0xff],
        attributes: labels(&[("k", "v")]),
        message_id: "42".into(),
        publish_time: ts(1_704_067_200, 123_456_789),
        ordering_key: "ok".into(),
    }
}

pub(super) fn push_config_with(wrapper: push_config::Wrapper) -> PushConfig {
    PushConfig {
        push_endpoint: "https://example.com/push".into(),
        attributes: labels(&[("x-goog-version", "v1")]),
        authentication_method: Some(push_config::AuthenticationMethod::OidcToken(
            push_config::OidcToken {
                service_account_email: "push@x".into(),
                audience: "aud".into(),
            },
        )),
        wrapper: Some(wrapper),
    }
}

pub(super) fn cloud_storage_config_with(
    format: cloud_storage_config::OutputFormat,
) -> CloudStorageConfig {
    CloudStorageConfig {
        bucket: "bucket".into(),
        filename_prefix: "pre".into(),
        filename_suffix: "suf".into(),
        filename_datetime_format: "YYYY-MM-DD".into(),
        max_duration: dur(300, 0),
        max_bytes: 9_007_199_254_740_993,
        max_messages: 1000,
        state: cloud_storage_config::State::SchemaMismatch.into(),
        service_account_email: "gcs@x".into(),
        output_format: Some(format),
    }
}

/// A subscription with every field set (push, BigQuery, Cloud Storage and Bigtable configs all
/// at once: the service would reject that, the mapping must not care).
pub(super) fn subscription_with(
    wrapper: push_config::Wrapper,
    format: cloud_storage_config::OutputFormat,
) -> Subscription {
    Subscription {
        name: "projects/p/subscriptions/s".into(),
        topic: "projects/p/topics/t".into(),
        push_config: Some(push_config_with(wrapper)),
        bigquery_config: Some(BigQueryConfig {
            table: "p.d.t".into(),
            use_topic_schema: true,
            write_metadata: true,
            drop_unknown_fields: true,
            state: big_query_config::State::VertexAiLocationRestriction.into(),
            use_table_schema: true,
            service_account_email: "bq@x".into(),
        }),
        cloud_storage_config: Some(cloud_storage_config_with(format)),
        bigtable_config: Some(BigtableConfig {
            table: "projects/p/instances/i/tables/t".into(),
            app_profile_id: "default".into(),
            service_account_email: "bt@x".into(),
            write_metadata: true,
            state: bigtable_config::State::AppProfileMisconfigured.into(),
        }),
        ack_deadline_seconds: 30,
        retain_acked_messages: true,
        message_retention_duration: dur(600, 0),
        labels: labels(&[("a", "b")]),
        enable_message_ordering: true,
        expiration_policy: Some(ExpirationPolicy {
            ttl: dur(86_400, 0),
        }),
        filter: "attributes.k = \"v\"".into(),
        dead_letter_policy: Some(DeadLetterPolicy {
            dead_letter_topic: "projects/p/topics/dlq".into(),
            max_delivery_attempts: 5,
        }),
        retry_policy: Some(RetryPolicy {
            minimum_backoff: dur(10, 0),
            maximum_backoff: dur(600, 0),
        }),
        detached: true,
        enable_exactly_once_delivery: true,
        topic_message_retention_duration: dur(1, 500_000_000),
        state: subscription::State::ResourceError.into(),
        analytics_hub_subscription_info: Some(subscription::AnalyticsHubSubscriptionInfo {
            listing: "projects/p/locations/l/dataExchanges/d/listings/x".into(),
            subscription: "projects/p/locations/l/subscriptions/y".into(),
        }),
        message_transforms: message_transforms(),
        tags: labels(&[("tagKeys/1", "tagValues/2")]),
    }
}

pub(super) fn subscription_full() -> Subscription {
    subscription_with(
        push_config::Wrapper::NoWrapper(push_config::NoWrapper {
            write_metadata: true,
        }),
        cloud_storage_config::OutputFormat::AvroConfig(cloud_storage_config::AvroConfig {
            write_metadata: true,
            use_topic_schema: true,
        }),
    )
}

pub(super) fn received_message(index: i32) -> ReceivedMessage {
    ReceivedMessage {
        ack_id: format!("ack-{index}"),
        message: Some(message_full()),
        delivery_attempt: index,
    }
}

pub(super) fn snapshot_full() -> Snapshot {
    Snapshot {
        name: "projects/p/snapshots/snap".into(),
        topic: "projects/p/topics/t".into(),
        expire_time: ts(1_704_067_200, 1_000),
        labels: labels(&[("a", "b")]),
    }
}

pub(super) fn schema_full() -> Schema {
    Schema {
        name: "projects/p/schemas/s".into(),
        r#type: schema::Type::Avro.into(),
        definition: "{\"type\":\"record\"}".into(),
        revision_id: "abc123".into(),
        revision_create_time: ts(1_704_067_200, 0),
    }
}
