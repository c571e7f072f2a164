//! The enums of `google.pubsub.v1` as proto3 JSON sees them: by value name, or by number.
//!
//! prost stores enum fields as bare `i32` and gives each enum type inherent (not trait)
//! `as_str_name`/`from_str_name` methods; [`ProtoEnum`] lifts those into a trait so one generic
//! codec serves every enum.

use crate::proto;

/// A protobuf enum whose values can be named in JSON.
pub trait ProtoEnum {
    /// The enum's full proto name (e.g. `google.pubsub.v1.Topic.State`), quoted in errors.
    const FULL_NAME: &'static str;
    /// The proto value name of `number` (e.g. `ACTIVE`), if the number is a known value.
    fn name_of(number: i32) -> Option<&'static str>;
    /// The number of the proto value name `name`, if it names a value.
    fn number_of(name: &str) -> Option<i32>;
}

/// Parses an enum given as a URL query parameter (`?view=FULL`), which, like JSON, may use the
/// value name or its number.
pub fn parse_enum<E: ProtoEnum>(text: &str) -> Option<i32> {
    E::number_of(text).or_else(|| text.parse::<i32>().ok())
}

macro_rules! proto_enums {
    ($($ty:ty = $full_name:literal),* $(,)?) => {
        $(impl ProtoEnum for $ty {
            const FULL_NAME: &'static str = $full_name;
            fn name_of(number: i32) -> Option<&'static str> {
                <$ty>::try_from(number).ok().map(|value| value.as_str_name())
            }
            fn number_of(name: &str) -> Option<i32> {
                <$ty>::from_str_name(name).map(|value| value as i32)
            }
        })*
    };
}

proto_enums! {
    proto::topic::State = "google.pubsub.v1.Topic.State",
    proto::subscription::State = "google.pubsub.v1.Subscription.State",
    proto::big_query_config::State = "google.pubsub.v1.BigQueryConfig.State",
    proto::bigtable_config::State = "google.pubsub.v1.BigtableConfig.State",
    proto::cloud_storage_config::State = "google.pubsub.v1.CloudStorageConfig.State",
    proto::ingestion_data_source_settings::aws_kinesis::State =
        "google.pubsub.v1.IngestionDataSourceSettings.AwsKinesis.State",
    proto::ingestion_data_source_settings::cloud_storage::State =
        "google.pubsub.v1.IngestionDataSourceSettings.CloudStorage.State",
    proto::ingestion_data_source_settings::azure_event_hubs::State =
        "google.pubsub.v1.IngestionDataSourceSettings.AzureEventHubs.State",
    proto::ingestion_data_source_settings::aws_msk::State =
        "google.pubsub.v1.IngestionDataSourceSettings.AwsMsk.State",
    proto::ingestion_data_source_settings::confluent_cloud::State =
        "google.pubsub.v1.IngestionDataSourceSettings.ConfluentCloud.State",
    proto::platform_logs_settings::Severity = "google.pubsub.v1.PlatformLogsSettings.Severity",
    proto::schema::Type = "google.pubsub.v1.Schema.Type",
    proto::Encoding = "google.pubsub.v1.Encoding",
    proto::SchemaView = "google.pubsub.v1.SchemaView",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_map_both_ways() {
        assert_eq!(proto::topic::State::name_of(1), Some("ACTIVE"));
        assert_eq!(proto::topic::State::name_of(99), None);
        assert_eq!(proto::SchemaView::number_of("FULL"), Some(2));
        assert_eq!(proto::SchemaView::number_of("full"), None);
        assert_eq!(parse_enum::<proto::SchemaView>("BASIC"), Some(1));
        assert_eq!(parse_enum::<proto::SchemaView>("2"), Some(2));
        assert_eq!(parse_enum::<proto::SchemaView>("LOTS"), None);
    }
}
