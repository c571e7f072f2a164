//! proto3 JSON of the Publisher service's messages: `Topic` with everything it embeds
//! (storage policy, schema settings, every ingestion source, message transforms),
//! `PubsubMessage`, and the Publisher RPCs' request and response bodies.

use super::codec::{Bool, Bytes, Enum, Map, Msg, Opt, Repeated, Str};
use super::object::proto_message;
use super::wkt::{Dur, Mask, StructCodec, Ts};
use crate::proto::{
    self, AiInference, DetachSubscriptionResponse, IngestionDataSourceSettings, JavaScriptUdf,
    ListTopicSnapshotsResponse, ListTopicSubscriptionsResponse, ListTopicsResponse,
    MessageStoragePolicy, MessageTransform, PlatformLogsSettings, PublishRequest, PublishResponse,
    PubsubMessage, SchemaSettings, Topic, UpdateTopicRequest, ai_inference,
    ingestion_data_source_settings as ingestion, message_transform,
};
use ingestion::{aws_kinesis, aws_msk, azure_event_hubs, cloud_storage, confluent_cloud};

proto_message! {
    MessageStoragePolicy = "google.pubsub.v1.MessageStoragePolicy" {
        allowed_persistence_regions: Repeated<Str>,
        enforce_in_transit: Bool,
    }
}

proto_message! {
    SchemaSettings = "google.pubsub.v1.SchemaSettings" {
        schema: Str,
        encoding: Enum<proto::Encoding>,
        first_revision_id: Str,
        last_revision_id: Str,
    }
}

proto_message! {
    IngestionDataSourceSettings = "google.pubsub.v1.IngestionDataSourceSettings" {
        platform_logs_settings: Opt<Msg<PlatformLogsSettings>>,
    }
    oneof source {
        aws_kinesis => ingestion::Source::AwsKinesis: Msg<ingestion::AwsKinesis>,
        cloud_storage => ingestion::Source::CloudStorage: Msg<ingestion::CloudStorage>,
        azure_event_hubs => ingestion::Source::AzureEventHubs: Msg<ingestion::AzureEventHubs>,
        aws_msk => ingestion::Source::AwsMsk: Msg<ingestion::AwsMsk>,
        confluent_cloud => ingestion::Source::ConfluentCloud: Msg<ingestion::ConfluentCloud>,
    }
}

proto_message! {
    ingestion::AwsKinesis = "google.pubsub.v1.IngestionDataSourceSettings.AwsKinesis" {
        state: Enum<aws_kinesis::State>,
        stream_arn: Str,
        consumer_arn: Str,
        aws_role_arn: Str,
        gcp_service_account: Str,
    }
}

proto_message! {
    ingestion::CloudStorage = "google.pubsub.v1.IngestionDataSourceSettings.CloudStorage" {
        state: Enum<cloud_storage::State>,
        bucket: Str,
        minimum_object_create_time: Opt<Ts>,
        match_glob: Str,
    }
    oneof input_format {
        text_format => cloud_storage::InputFormat::TextFormat: Msg<cloud_storage::TextFormat>,
        avro_format => cloud_storage::InputFormat::AvroFormat: Msg<cloud_storage::AvroFormat>,
        pubsub_avro_format =>
            cloud_storage::InputFormat::PubsubAvroFormat: Msg<cloud_storage::PubSubAvroFormat>,
    }
}

proto_message! {
    cloud_storage::TextFormat =
        "google.pubsub.v1.IngestionDataSourceSettings.CloudStorage.TextFormat" {
        // `optional string`: has presence, so an empty delimiter is still written.
        delimiter: Opt<Str>,
    }
}

proto_message! {
    cloud_storage::AvroFormat =
        "google.pubsub.v1.IngestionDataSourceSettings.CloudStorage.AvroFormat" {}
}

proto_message! {
    cloud_storage::PubSubAvroFormat =
        "google.pubsub.v1.IngestionDataSourceSettings.CloudStorage.PubSubAvroFormat" {}
}

proto_message! {
    ingestion::AzureEventHubs = "google.pubsub.v1.IngestionDataSourceSettings.AzureEventHubs" {
        state: Enum<azure_event_hubs::State>,
        resource_group: Str,
        namespace: Str,
        event_hub: Str,
        client_id: Str,
        tenant_id: Str,
        subscription_id: Str,
        gcp_service_account: Str,
    }
}

proto_message! {
    ingestion::AwsMsk = "google.pubsub.v1.IngestionDataSourceSettings.AwsMsk" {
        state: Enum<aws_msk::State>,
        cluster_arn: Str,
        topic: Str,
        aws_role_arn: Str,
        gcp_service_account: Str,
    }
}

proto_message! {
    ingestion::ConfluentCloud = "google.pubsub.v1.IngestionDataSourceSettings.ConfluentCloud" {
        state: Enum<confluent_cloud::State>,
        bootstrap_server: Str,
        cluster_id: Str,
        topic: Str,
        identity_pool_id: Str,
        gcp_service_account: Str,
    }
}

proto_message! {
    PlatformLogsSettings = "google.pubsub.v1.PlatformLogsSettings" {
        severity: Enum<proto::platform_logs_settings::Severity>,
    }
}

proto_message! {
    JavaScriptUdf = "google.pubsub.v1.JavaScriptUDF" {
        function_name: Str,
        code: Str,
    }
}

proto_message! {
    AiInference = "google.pubsub.v1.AIInference" {
        endpoint: Str,
        service_account_email: Str,
    }
    oneof inference_mode {
        unstructured_inference => ai_inference::InferenceMode::UnstructuredInference:
            Msg<ai_inference::UnstructuredInference>,
    }
}

proto_message! {
    ai_inference::UnstructuredInference =
        "google.pubsub.v1.AIInference.UnstructuredInference" {
        parameters: Opt<StructCodec>,
    }
}

proto_message! {
    MessageTransform = "google.pubsub.v1.MessageTransform" {
        enabled: Bool,
        disabled: Bool,
    }
    oneof transform {
        javascript_udf => message_transform::Transform::JavascriptUdf: Msg<JavaScriptUdf>,
        ai_inference => message_transform::Transform::AiInference: Msg<AiInference>,
    }
}

proto_message! {
    Topic = "google.pubsub.v1.Topic" {
        name: Str,
        labels: Map<Str>,
        message_storage_policy: Opt<Msg<MessageStoragePolicy>>,
        kms_key_name: Str,
        schema_settings: Opt<Msg<SchemaSettings>>,
        satisfies_pzs: Bool,
        message_retention_duration: Opt<Dur>,
        state: Enum<proto::topic::State>,
        ingestion_data_source_settings: Opt<Msg<IngestionDataSourceSettings>>,
        message_transforms: Repeated<Msg<MessageTransform>>,
        tags: Map<Str>,
    }
}

proto_message! {
    PubsubMessage = "google.pubsub.v1.PubsubMessage" {
        data: Bytes,
        attributes: Map<Str>,
        message_id: Str,
        publish_time: Opt<Ts>,
        ordering_key: Str,
    }
}

proto_message! {
    UpdateTopicRequest = "google.pubsub.v1.UpdateTopicRequest" {
        topic: Opt<Msg<Topic>>,
        update_mask: Opt<Mask>,
    }
}

proto_message! {
    PublishRequest = "google.pubsub.v1.PublishRequest" {
        topic: Str,
        messages: Repeated<Msg<PubsubMessage>>,
    }
}

proto_message! {
    PublishResponse = "google.pubsub.v1.PublishResponse" {
        message_ids: Repeated<Str>,
    }
}

proto_message! {
    ListTopicsResponse = "google.pubsub.v1.ListTopicsResponse" {
        topics: Repeated<Msg<Topic>>,
        next_page_token: Str,
    }
}

proto_message! {
    ListTopicSubscriptionsResponse = "google.pubsub.v1.ListTopicSubscriptionsResponse" {
        subscriptions: Repeated<Str>,
        next_page_token: Str,
    }
}

proto_message! {
    ListTopicSnapshotsResponse = "google.pubsub.v1.ListTopicSnapshotsResponse" {
        snapshots: Repeated<Str>,
        next_page_token: Str,
    }
}

proto_message! {
    DetachSubscriptionResponse = "google.pubsub.v1.DetachSubscriptionResponse" {}
}
