//! The Publisher RPCs: topics and publishing.

use converge_core::name::{ProjectId, SubscriptionName, TopicName};
use converge_core::{PageRequest, Topic, limits, retry};

use super::convert::{self, duration_from_proto};
use super::field_mask::{self, MaskEntry, mask_entry};
use super::{ApiError, PubSub, page_request, store_error};
use crate::proto as v1;

/// The paths UpdateTopic accepts, in snake_case.
const TOPIC_MASK: &[MaskEntry<v1::Topic>] = &[
    mask_entry!("labels", labels),
    mask_entry!("message_storage_policy", message_storage_policy),
    mask_entry!("kms_key_name", kms_key_name),
    mask_entry!("schema_settings", schema_settings),
    mask_entry!("message_retention_duration", message_retention_duration),
    mask_entry!(
        "ingestion_data_source_settings",
        ingestion_data_source_settings
    ),
    mask_entry!("message_transforms", message_transforms),
];

/// Validates a topic resource as written by a client and builds the domain topic named `name`.
///
/// Fields with no broker semantics (KMS key, storage policy) are kept verbatim in the resource;
/// features converge does not implement yet answer `UNIMPLEMENTED` rather than being accepted and
/// silently ignored. Schema settings are kept too; their schema is checked by the async
/// [`PubSub::check_schema_settings`] (it reads the store) and applied on publish.
pub(super) fn topic_from_proto(resource: &v1::Topic, name: TopicName) -> Result<Topic, ApiError> {
    if resource.ingestion_data_source_settings.is_some() {
        return Err(unimplemented_feature(
            "ingestion_data_source_settings: import topics",
        ));
    }
    if !resource.message_transforms.is_empty() {
        return Err(unimplemented_feature(
            "message_transforms: single message transforms",
        ));
    }
    limits::validate_labels(&resource.labels)?;
    let requested = resource
        .message_retention_duration
        .as_ref()
        .map(|d| duration_from_proto(d, "message_retention_duration"))
        .transpose()?;
    let message_retention = limits::topic_retention(requested)?;
    let dedup_window = retry::dedup_window_from_labels(&resource.labels)?;
    Ok(Topic {
        name,
        labels: resource.labels.clone(),
        message_retention,
        dedup_window,
        resource: convert::encode(resource),
    })
}

/// `UNIMPLEMENTED` for a resource field whose feature comes in a later version of converge.
pub(super) fn unimplemented_feature(what: &str) -> ApiError {
    ApiError::new(
        tonic::Code::Unimplemented,
        format!("{what} are not implemented yet"),
    )
}

impl PubSub {
    /// CreateTopic: validates the resource and creates it; `ALREADY_EXISTS` if the name is taken.
    pub async fn create_topic(&self, req: v1::Topic) -> Result<v1::Topic, ApiError> {
        let name = TopicName::parse(&req.name)?;
        let topic = topic_from_proto(&req, name.clone())?;
        if let Some(settings) = &req.schema_settings {
            self.check_schema_settings(settings).await?;
        }
        let created = self
            .store()
            .create_topic(topic)
            .await
            .map_err(store_error(name.id()))?;
        tracing::debug!(topic = %name, "topic created");
        convert::topic_to_proto(&created)
    }

    /// UpdateTopic: applies the fields named by `update_mask` to the stored topic, then validates
    /// the result as a whole, exactly as CreateTopic would.
    pub async fn update_topic(&self, req: v1::UpdateTopicRequest) -> Result<v1::Topic, ApiError> {
        let Some(patch) = req.topic else {
            return Err(ApiError::invalid(
                "Invalid topic: the UpdateTopicRequest must contain a topic",
            ));
        };
        let name = TopicName::parse(&patch.name)?;
        let paths = field_mask::normalized_paths(req.update_mask.as_ref(), "UpdateTopicRequest")?;
        let current = self
            .store()
            .get_topic(&name)
            .await
            .map_err(store_error(name.id()))?;
        let mut resource = convert::topic_to_proto(&current)?;
        let before = resource.clone();
        field_mask::apply(
            &mut resource,
            &patch,
            &paths,
            TOPIC_MASK,
            "UpdateTopicRequest",
            "Topic",
        )?;
        let updated = topic_from_proto(&resource, name.clone())?;
        if let Some(settings) = &resource.schema_settings
            && resource.schema_settings != before.schema_settings
        {
            self.check_schema_settings(settings).await?;
        }
        let stored = self
            .store()
            .update_topic(updated)
            .await
            .map_err(store_error(name.id()))?;
        tracing::debug!(topic = %name, paths = ?paths, "topic updated");
        convert::topic_to_proto(&stored)
    }

    /// Publish: validates the batch against the topic's schema (if it has one) and the publish
    /// limits and appends it; the answer lists the message ids, in request order, as decimal
    /// strings. A message the schema refuses fails the whole request: nothing is stored.
    pub async fn publish(&self, req: v1::PublishRequest) -> Result<v1::PublishResponse, ApiError> {
        let topic = TopicName::parse(&req.topic)?;
        let mut wire = req.messages;
        if let Some(settings) = self.topic_schema_settings(&topic).await? {
            self.validate_for_topic(&settings, &mut wire).await?;
        }
        let messages: Vec<_> = wire.into_iter().map(convert::new_message).collect();
        limits::validate_publish(&messages)?;
        let count = messages.len();
        let ids = self
            .store()
            .publish(&topic, messages)
            .await
            .map_err(store_error(topic.id()))?;
        debug_assert_eq!(ids.len(), count, "the store answers one id per message");
        tracing::debug!(topic = %topic, count, "published");
        Ok(v1::PublishResponse {
            message_ids: ids.iter().map(ToString::to_string).collect(),
        })
    }

    /// The schema settings of a topic, if it has any; `NOT_FOUND` for a missing topic.
    async fn topic_schema_settings(
        &self,
        topic: &TopicName,
    ) -> Result<Option<v1::SchemaSettings>, ApiError> {
        let stored = self
            .store()
            .get_topic(topic)
            .await
            .map_err(store_error(topic.id()))?;
        if stored.resource.is_empty() {
            return Ok(None);
        }
        let resource =
            <v1::Topic as prost::Message>::decode(stored.resource.clone()).map_err(|e| {
                ApiError::new(
                    tonic::Code::Internal,
                    format!("the stored topic cannot be decoded: {e}"),
                )
            })?;
        Ok(resource.schema_settings)
    }

    /// GetTopic.
    pub async fn get_topic(&self, req: v1::GetTopicRequest) -> Result<v1::Topic, ApiError> {
        let name = TopicName::parse(&req.topic)?;
        let topic = self
            .store()
            .get_topic(&name)
            .await
            .map_err(store_error(name.id()))?;
        convert::topic_to_proto(&topic)
    }

    /// ListTopics: one page of a project's topics, sorted by name.
    pub async fn list_topics(
        &self,
        req: v1::ListTopicsRequest,
    ) -> Result<v1::ListTopicsResponse, ApiError> {
        let project = ProjectId::parse(&req.project)?;
        let page = page_request(req.page_size, req.page_token)?;
        let page = self
            .store()
            .list_topics(&project, page)
            .await
            .map_err(ApiError::from)?;
        let topics = page
            .items
            .iter()
            .map(convert::topic_to_proto)
            .collect::<Result<_, _>>()?;
        Ok(v1::ListTopicsResponse {
            topics,
            next_page_token: page.next_page_token,
        })
    }

    /// ListTopicSubscriptions: the names of one page of a topic's subscriptions.
    pub async fn list_topic_subscriptions(
        &self,
        req: v1::ListTopicSubscriptionsRequest,
    ) -> Result<v1::ListTopicSubscriptionsResponse, ApiError> {
        let topic = TopicName::parse(&req.topic)?;
        let page: PageRequest = page_request(req.page_size, req.page_token)?;
        let page = self
            .store()
            .list_topic_subscriptions(&topic, page)
            .await
            .map_err(store_error(topic.id()))?;
        Ok(v1::ListTopicSubscriptionsResponse {
            subscriptions: page.items.iter().map(ToString::to_string).collect(),
            next_page_token: page.next_page_token,
        })
    }

    /// ListTopicSnapshots: the names of one page of a topic's snapshots; `NOT_FOUND` for a
    /// missing topic, as ListTopicSubscriptions.
    pub async fn list_topic_snapshots(
        &self,
        req: v1::ListTopicSnapshotsRequest,
    ) -> Result<v1::ListTopicSnapshotsResponse, ApiError> {
        let topic = TopicName::parse(&req.topic)?;
        let page = page_request(req.page_size, req.page_token)?;
        let page = self
            .store()
            .list_topic_snapshots(&topic, page)
            .await
            .map_err(store_error(topic.id()))?;
        Ok(v1::ListTopicSnapshotsResponse {
            snapshots: page.items.iter().map(ToString::to_string).collect(),
            next_page_token: page.next_page_token,
        })
    }

    /// DeleteTopic: the topic's subscriptions remain, showing topic `_deleted-topic_`.
    pub async fn delete_topic(&self, req: v1::DeleteTopicRequest) -> Result<(), ApiError> {
        let name = TopicName::parse(&req.topic)?;
        self.store()
            .delete_topic(&name)
            .await
            .map_err(store_error(name.id()))?;
        self.forget_iam_policy(&name.to_string()).await?;
        tracing::debug!(topic = %name, "topic deleted");
        Ok(())
    }

    /// DetachSubscription: the subscription stops receiving messages and its pulls fail.
    pub async fn detach_subscription(
        &self,
        req: v1::DetachSubscriptionRequest,
    ) -> Result<v1::DetachSubscriptionResponse, ApiError> {
        let name = SubscriptionName::parse(&req.subscription)?;
        self.store()
            .detach_subscription(&name)
            .await
            .map_err(store_error(name.id()))?;
        tracing::debug!(subscription = %name, "subscription detached");
        Ok(v1::DetachSubscriptionResponse {})
    }
}
