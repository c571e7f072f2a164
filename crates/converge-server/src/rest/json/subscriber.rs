//! proto3 JSON of the Subscriber service's unary messages: `Subscription` with everything it
//! embeds (push config and its oneofs, BigQuery/Cloud Storage/Bigtable export configs, retry,
//! dead-letter and expiration policies), and the pull/ack RPCs' request and response bodies.

use super::codec::{Bool, Enum, I32, I64, Map, Msg, Opt, Repeated, Str};
use super::object::proto_message;
use super::wkt::{Dur, Mask};
use crate::proto::{
    self, AcknowledgeRequest, BigQueryConfig, BigtableConfig, CloudStorageConfig, DeadLetterPolicy,
    ExpirationPolicy, ListSubscriptionsResponse, MessageTransform, ModifyAckDeadlineRequest,
    ModifyPushConfigRequest, PubsubMessage, PullRequest, PullResponse, PushConfig, ReceivedMessage,
    RetryPolicy, Subscription, UpdateSubscriptionRequest, cloud_storage_config, push_config,
    subscription,
};

proto_message! {
    Subscription = "google.pubsub.v1.Subscription" {
        name: Str,
        topic: Str,
        push_config: Opt<Msg<PushConfig>>,
        bigquery_config: Opt<Msg<BigQueryConfig>>,
        cloud_storage_config: Opt<Msg<CloudStorageConfig>>,
        bigtable_config: Opt<Msg<BigtableConfig>>,
        ack_deadline_seconds: I32,
        retain_acked_messages: Bool,
        message_retention_duration: Opt<Dur>,
        labels: Map<Str>,
        enable_message_ordering: Bool,
        expiration_policy: Opt<Msg<ExpirationPolicy>>,
        filter: Str,
        dead_letter_policy: Opt<Msg<DeadLetterPolicy>>,
        retry_policy: Opt<Msg<RetryPolicy>>,
        detached: Bool,
        enable_exactly_once_delivery: Bool,
        topic_message_retention_duration: Opt<Dur>,
        state: Enum<subscription::State>,
        analytics_hub_subscription_info: Opt<Msg<subscription::AnalyticsHubSubscriptionInfo>>,
        message_transforms: Repeated<Msg<MessageTransform>>,
        tags: Map<Str>,
    }
}

proto_message! {
    subscription::AnalyticsHubSubscriptionInfo =
        "google.pubsub.v1.Subscription.AnalyticsHubSubscriptionInfo" {
        listing: Str,
        subscription: Str,
    }
}

proto_message! {
    RetryPolicy = "google.pubsub.v1.RetryPolicy" {
        minimum_backoff: Opt<Dur>,
        maximum_backoff: Opt<Dur>,
    }
}

proto_message! {
    DeadLetterPolicy = "google.pubsub.v1.DeadLetterPolicy" {
        dead_letter_topic: Str,
        max_delivery_attempts: I32,
    }
}

proto_message! {
    ExpirationPolicy = "google.pubsub.v1.ExpirationPolicy" {
        ttl: Opt<Dur>,
    }
}

proto_message! {
    PushConfig = "google.pubsub.v1.PushConfig" {
        push_endpoint: Str,
        attributes: Map<Str>,
    }
    oneof authentication_method {
        oidc_token => push_config::AuthenticationMethod::OidcToken: Msg<push_config::OidcToken>,
    }
    oneof wrapper {
        pubsub_wrapper => push_config::Wrapper::PubsubWrapper: Msg<push_config::PubsubWrapper>,
        no_wrapper => push_config::Wrapper::NoWrapper: Msg<push_config::NoWrapper>,
    }
}

proto_message! {
    push_config::OidcToken = "google.pubsub.v1.PushConfig.OidcToken" {
        service_account_email: Str,
        audience: Str,
    }
}

proto_message! {
    push_config::PubsubWrapper = "google.pubsub.v1.PushConfig.PubsubWrapper" {}
}

proto_message! {
    push_config::NoWrapper = "google.pubsub.v1.PushConfig.NoWrapper" {
        write_metadata: Bool,
    }
}

proto_message! {
    BigQueryConfig = "google.pubsub.v1.BigQueryConfig" {
        table: Str,
        use_topic_schema: Bool,
        write_metadata: Bool,
        drop_unknown_fields: Bool,
        state: Enum<proto::big_query_config::State>,
        use_table_schema: Bool,
        service_account_email: Str,
    }
}

proto_message! {
    BigtableConfig = "google.pubsub.v1.BigtableConfig" {
        table: Str,
        app_profile_id: Str,
        service_account_email: Str,
        write_metadata: Bool,
        state: Enum<proto::bigtable_config::State>,
    }
}

proto_message! {
    CloudStorageConfig = "google.pubsub.v1.CloudStorageConfig" {
        bucket: Str,
        filename_prefix: Str,
        filename_suffix: Str,
        filename_datetime_format: Str,
        max_duration: Opt<Dur>,
        max_bytes: I64,
        max_messages: I64,
        state: Enum<cloud_storage_config::State>,
        service_account_email: Str,
    }
    oneof output_format {
        text_config =>
            cloud_storage_config::OutputFormat::TextConfig: Msg<cloud_storage_config::TextConfig>,
        avro_config =>
            cloud_storage_config::OutputFormat::AvroConfig: Msg<cloud_storage_config::AvroConfig>,
    }
}

proto_message! {
    cloud_storage_config::TextConfig = "google.pubsub.v1.CloudStorageConfig.TextConfig" {}
}

proto_message! {
    cloud_storage_config::AvroConfig = "google.pubsub.v1.CloudStorageConfig.AvroConfig" {
        write_metadata: Bool,
        use_topic_schema: Bool,
    }
}

proto_message! {
    ReceivedMessage = "google.pubsub.v1.ReceivedMessage" {
        ack_id: Str,
        message: Opt<Msg<PubsubMessage>>,
        delivery_attempt: I32,
    }
}

proto_message! {
    UpdateSubscriptionRequest = "google.pubsub.v1.UpdateSubscriptionRequest" {
        subscription: Opt<Msg<Subscription>>,
        update_mask: Opt<Mask>,
    }
}

proto_message! {
    ListSubscriptionsResponse = "google.pubsub.v1.ListSubscriptionsResponse" {
        subscriptions: Repeated<Msg<Subscription>>,
        next_page_token: Str,
    }
}

proto_message! {
    ModifyPushConfigRequest = "google.pubsub.v1.ModifyPushConfigRequest" {
        subscription: Str,
        push_config: Opt<Msg<PushConfig>>,
    }
}

proto_message! {
    PullRequest = "google.pubsub.v1.PullRequest" {
        subscription: Str,
        return_immediately: Bool,
        max_messages: I32,
    }
}

proto_message! {
    PullResponse = "google.pubsub.v1.PullResponse" {
        received_messages: Repeated<Msg<ReceivedMessage>>,
    }
}

proto_message! {
    AcknowledgeRequest = "google.pubsub.v1.AcknowledgeRequest" {
        subscription: Str,
        ack_ids: Repeated<Str>,
    }
}

proto_message! {
    ModifyAckDeadlineRequest = "google.pubsub.v1.ModifyAckDeadlineRequest" {
        subscription: Str,
        ack_ids: Repeated<Str>,
        ack_deadline_seconds: I32,
    }
}
