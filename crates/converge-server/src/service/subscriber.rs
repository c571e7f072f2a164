//! The Subscriber RPCs: subscriptions, pulling and acknowledging.

use std::time::{Duration, SystemTime};

use converge_core::filter::Filter;
use converge_core::name::{ProjectId, SubscriptionName, TopicName};
use converge_core::{AckId, DeadLetterPolicy, RetrySchedule, Subscription, limits};

use super::convert::{self, duration_from_proto};
use super::field_mask::{self, MaskEntry, mask_entry};
use super::publisher::unimplemented_feature;
use super::{ApiError, PubSub, page_request, store_error};
use crate::proto as v1;
use crate::push::auth::webhook::{self, Origin, SecretChange};

/// How long a Pull without `return_immediately` waits for a message before answering with none.
///
/// Bounded because the caller holds a unary RPC open meanwhile: clients give Pull a deadline
/// (60 s in the official libraries) and would see DEADLINE_EXCEEDED instead of an empty answer if
/// the broker waited longer. Clients that want to wait longer simply pull again; clients that
/// want a stream use StreamingPull.
pub const PULL_LONG_POLL: Duration = Duration::from_secs(10);
/// How long before the client's deadline a long-polling Pull answers.
const PULL_ANSWER_MARGIN: Duration = Duration::from_millis(200);

/// The paths UpdateSubscription accepts, in snake_case. `filter` and `topic` are immutable and
/// answered with their own error before this table is consulted.
const SUBSCRIPTION_MASK: &[MaskEntry<v1::Subscription>] = &[
    mask_entry!("push_config", push_config),
    mask_entry!("push_config.push_endpoint", push_config.push_endpoint),
    mask_entry!("push_config.attributes", push_config.attributes),
    mask_entry!("push_config.oidc_token", push_config.authentication_method),
    mask_entry!("push_config.pubsub_wrapper", push_config.wrapper),
    mask_entry!("push_config.no_wrapper", push_config.wrapper),
    mask_entry!("bigquery_config", bigquery_config),
    mask_entry!("cloud_storage_config", cloud_storage_config),
    mask_entry!("bigtable_config", bigtable_config),
    mask_entry!("ack_deadline_seconds", ack_deadline_seconds),
    mask_entry!("retain_acked_messages", retain_acked_messages),
    mask_entry!("message_retention_duration", message_retention_duration),
    mask_entry!("labels", labels),
    mask_entry!("enable_message_ordering", enable_message_ordering),
    mask_entry!("expiration_policy", expiration_policy),
    mask_entry!("expiration_policy.ttl", expiration_policy.ttl),
    mask_entry!("dead_letter_policy", dead_letter_policy),
    mask_entry!(
        "dead_letter_policy.dead_letter_topic",
        dead_letter_policy.dead_letter_topic
    ),
    mask_entry!(
        "dead_letter_policy.max_delivery_attempts",
        dead_letter_policy.max_delivery_attempts
    ),
    mask_entry!("retry_policy", retry_policy),
    mask_entry!("retry_policy.minimum_backoff", retry_policy.minimum_backoff),
    mask_entry!("retry_policy.maximum_backoff", retry_policy.maximum_backoff),
    mask_entry!("enable_exactly_once_delivery", enable_exactly_once_delivery),
    mask_entry!("message_transforms", message_transforms),
];

/// Fields that cannot change after creation, with the reason given to the client.
const IMMUTABLE_SUBSCRIPTION_FIELDS: &[(&str, &str)] = &[
    (
        "filter",
        "the filter of a subscription cannot be changed after creation",
    ),
    ("topic", "the topic of a subscription cannot be changed"),
    ("name", "the name of a subscription cannot be changed"),
];

/// Checks a push config: an empty endpoint means pull; otherwise the endpoint must be an absolute
/// `http` or `https` URL. The real service requires `https`; converge also takes `http` so that
/// local receivers (tests, development) need no certificate.
pub(super) fn check_push_config(config: Option<&v1::PushConfig>) -> Result<(), ApiError> {
    let Some(endpoint) = config.map(|c| c.push_endpoint.as_str()) else {
        return Ok(());
    };
    if endpoint.is_empty() {
        return Ok(());
    }
    let valid = http::Uri::try_from(endpoint).is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
    });
    if !valid {
        return Err(ApiError::invalid(format!(
            "Invalid push_config.push_endpoint: {endpoint:?} is not an absolute http(s) URL"
        )));
    }
    Ok(())
}

/// Whether a resource is a push subscription.
fn is_push(resource: &v1::Subscription) -> bool {
    resource
        .push_config
        .as_ref()
        .is_some_and(|c| !c.push_endpoint.is_empty())
}

/// What a subscription keeps from before an update (or gets at creation) that the client's
/// resource does not decide.
pub(super) struct Kept {
    /// The topic read; `None` once deleted.
    pub topic: Option<TopicName>,
    /// Creation time.
    pub created: SystemTime,
    /// Detached from its topic.
    pub detached: bool,
}

/// Validates a subscription resource as written by a client and builds the domain subscription.
/// Everything that needs no store is checked here; the existence of the topic and of the
/// dead-letter topic is checked by the caller.
pub(super) fn subscription_from_proto(
    resource: &v1::Subscription,
    name: SubscriptionName,
    kept: Kept,
) -> Result<Subscription, ApiError> {
    check_push_config(resource.push_config.as_ref())?;
    if resource.bigquery_config.is_some() {
        return Err(unimplemented_feature(
            "bigquery_config: BigQuery subscriptions",
        ));
    }
    if resource.cloud_storage_config.is_some() {
        return Err(unimplemented_feature(
            "cloud_storage_config: Cloud Storage subscriptions",
        ));
    }
    if resource.bigtable_config.is_some() {
        return Err(unimplemented_feature(
            "bigtable_config: Bigtable subscriptions",
        ));
    }
    if !resource.message_transforms.is_empty() {
        return Err(unimplemented_feature(
            "message_transforms: single message transforms",
        ));
    }
    limits::validate_labels(&resource.labels)?;
    let ack_deadline = limits::ack_deadline(resource.ack_deadline_seconds.into())?;
    let retention = optional_duration(
        resource.message_retention_duration.as_ref(),
        "message_retention_duration",
    )?;
    let message_retention = limits::subscription_retention(retention)?;
    let expiration = resource
        .expiration_policy
        .as_ref()
        .map(|p| optional_duration(p.ttl.as_ref(), "expiration_policy.ttl"))
        .transpose()?;
    let expiration_ttl = limits::expiration_policy(expiration)?;
    limits::expiration_covers_retention(expiration_ttl, message_retention)?;
    if !resource.filter.is_empty() {
        Filter::parse(&resource.filter).map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    let dead_letter_policy = resource
        .dead_letter_policy
        .as_ref()
        .map(dead_letter_policy)
        .transpose()?;
    let retry = RetrySchedule::resolve(
        retry_backoffs(resource.retry_policy.as_ref())?,
        &resource.labels,
    )?
    .or_else(|| is_push(resource).then(crate::push::default_push_retry));
    Ok(Subscription {
        name,
        topic: kept.topic,
        ack_deadline,
        retain_acked_messages: resource.retain_acked_messages,
        message_retention,
        enable_message_ordering: resource.enable_message_ordering,
        exactly_once: resource.enable_exactly_once_delivery,
        filter: resource.filter.clone(),
        dead_letter_policy,
        retry,
        expiration_ttl,
        detached: kept.detached,
        labels: resource.labels.clone(),
        created: kept.created,
        resource: convert::encode(resource),
    })
}

/// The domain dead-letter policy of a wire policy.
fn dead_letter_policy(p: &v1::DeadLetterPolicy) -> Result<DeadLetterPolicy, ApiError> {
    let topic = TopicName::parse(&p.dead_letter_topic).map_err(|e| {
        ApiError::invalid(format!("Invalid dead_letter_policy.dead_letter_topic: {e}"))
    })?;
    Ok(DeadLetterPolicy::new(topic, p.max_delivery_attempts)?)
}

/// The backoffs a retry policy sets (`None` for an unset field), or `None` without a policy.
type Backoffs = Option<(Option<Duration>, Option<Duration>)>;

/// The backoffs of a wire retry policy, for [`rules::retry_schedule`].
fn retry_backoffs(policy: Option<&v1::RetryPolicy>) -> Result<Backoffs, ApiError> {
    let Some(policy) = policy else {
        return Ok(None);
    };
    Ok(Some((
        optional_duration(
            policy.minimum_backoff.as_ref(),
            "retry_policy.minimum_backoff",
        )?,
        optional_duration(
            policy.maximum_backoff.as_ref(),
            "retry_policy.maximum_backoff",
        )?,
    )))
}

/// An optional wire duration as an optional std duration, `INVALID_ARGUMENT` naming `field` when
/// it is negative.
fn optional_duration(
    d: Option<&prost_types::Duration>,
    field: &str,
) -> Result<Option<Duration>, ApiError> {
    d.map(|d| duration_from_proto(d, field)).transpose()
}

/// Parses the ack ids of an Acknowledge or ModifyAckDeadline; `INVALID_ARGUMENT` when there is
/// none, since such a request can only be a client bug.
fn ack_ids(ids: Vec<String>) -> Result<Vec<AckId>, ApiError> {
    if ids.is_empty() {
        return Err(ApiError::invalid(
            "Invalid ack_ids: at least one ack id is required",
        ));
    }
    if ids.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "Invalid ack_ids: an ack id must not be empty",
        ));
    }
    Ok(ids.into_iter().map(AckId).collect())
}

impl PubSub {
    /// Checks that a subscription's dead-letter topic exists, since messages sent to a missing
    /// topic would be lost.
    async fn check_dead_letter_topic(&self, sub: &Subscription) -> Result<(), ApiError> {
        let Some(policy) = &sub.dead_letter_policy else {
            return Ok(());
        };
        self.store()
            .get_topic(&policy.topic)
            .await
            .map_err(store_error(policy.topic.id()))?;
        Ok(())
    }

    /// Stores, keeps or deletes the push webhook secret of `name` once its resource is written
    /// (never before: a refused request must not replace the secret of an existing
    /// subscription). The secret itself never enters the resource; see
    /// [`crate::push::auth::webhook`].
    async fn save_webhook_secret(
        &self,
        name: &SubscriptionName,
        change: &SecretChange,
    ) -> Result<(), ApiError> {
        webhook::save(self.store().as_ref(), &name.to_string(), change)
            .await
            .map_err(ApiError::from)
    }

    /// CreateSubscription: validates the resource; the topic (and dead-letter topic) must exist.
    pub async fn create_subscription(
        &self,
        mut req: v1::Subscription,
    ) -> Result<v1::Subscription, ApiError> {
        let name = SubscriptionName::parse(&req.name)?;
        let topic = TopicName::parse(&req.topic)?;
        let kept = Kept {
            topic: Some(topic.clone()),
            created: self.now(),
            detached: false,
        };
        let secret = webhook::take_webhook_secret(req.push_config.as_mut(), Origin::Create)?;
        let sub = subscription_from_proto(&req, name.clone(), kept)?;
        self.store()
            .get_topic(&topic)
            .await
            .map_err(store_error(topic.id()))?;
        self.check_dead_letter_topic(&sub).await?;
        let created = self
            .store()
            .create_subscription(sub)
            .await
            .map_err(store_error(name.id()))?;
        self.save_webhook_secret(&name, &secret).await?;
        tracing::debug!(subscription = %name, topic = %topic, "subscription created");
        let mut answer = convert::subscription_to_proto(&created)?;
        webhook::reveal(&mut answer, &secret);
        Ok(answer)
    }

    /// GetSubscription.
    pub async fn get_subscription(
        &self,
        req: v1::GetSubscriptionRequest,
    ) -> Result<v1::Subscription, ApiError> {
        let name = SubscriptionName::parse(&req.subscription)?;
        let sub = self
            .store()
            .get_subscription(&name)
            .await
            .map_err(store_error(name.id()))?;
        convert::subscription_to_proto(&sub)
    }

    /// UpdateSubscription: applies the fields named by `update_mask` to the stored subscription,
    /// then validates the result as a whole, as CreateSubscription would. The filter and topic are
    /// immutable.
    pub async fn update_subscription(
        &self,
        req: v1::UpdateSubscriptionRequest,
    ) -> Result<v1::Subscription, ApiError> {
        const REQUEST: &str = "UpdateSubscriptionRequest";
        let Some(patch) = req.subscription else {
            return Err(ApiError::invalid(
                "Invalid subscription: the UpdateSubscriptionRequest must contain a subscription",
            ));
        };
        let name = SubscriptionName::parse(&patch.name)?;
        let paths = field_mask::normalized_paths(req.update_mask.as_ref(), REQUEST)?;
        if let Some((field, why)) = IMMUTABLE_SUBSCRIPTION_FIELDS
            .iter()
            .find(|(f, _)| paths.iter().any(|p| p == f))
        {
            return Err(ApiError::invalid(format!(
                "Invalid update_mask provided in the {REQUEST}: '{field}': {why}"
            )));
        }
        let current = self
            .store()
            .get_subscription(&name)
            .await
            .map_err(store_error(name.id()))?;
        let mut resource = convert::subscription_to_proto(&current)?;
        field_mask::apply(
            &mut resource,
            &patch,
            &paths,
            SUBSCRIPTION_MASK,
            REQUEST,
            "Subscription",
        )?;
        let secret = webhook::take_webhook_secret(resource.push_config.as_mut(), Origin::Update)?;
        let kept = Kept {
            topic: current.topic.clone(),
            created: current.created,
            detached: current.detached,
        };
        let updated = subscription_from_proto(&resource, name.clone(), kept)?;
        if paths.iter().any(|p| p.starts_with("dead_letter_policy")) {
            self.check_dead_letter_topic(&updated).await?;
        }
        let stored = self
            .store()
            .update_subscription(updated)
            .await
            .map_err(store_error(name.id()))?;
        self.save_webhook_secret(&name, &secret).await?;
        tracing::debug!(subscription = %name, paths = ?paths, "subscription updated");
        let mut answer = convert::subscription_to_proto(&stored)?;
        webhook::reveal(&mut answer, &secret);
        Ok(answer)
    }

    /// ListSubscriptions: one page of a project's subscriptions, sorted by name.
    pub async fn list_subscriptions(
        &self,
        req: v1::ListSubscriptionsRequest,
    ) -> Result<v1::ListSubscriptionsResponse, ApiError> {
        let project = ProjectId::parse(&req.project)?;
        let page = page_request(req.page_size, req.page_token)?;
        let page = self
            .store()
            .list_subscriptions(&project, page)
            .await
            .map_err(ApiError::from)?;
        let subscriptions = page
            .items
            .iter()
            .map(convert::subscription_to_proto)
            .collect::<Result<_, _>>()?;
        Ok(v1::ListSubscriptionsResponse {
            subscriptions,
            next_page_token: page.next_page_token,
        })
    }

    /// DeleteSubscription: the subscription and its backlog.
    pub async fn delete_subscription(
        &self,
        req: v1::DeleteSubscriptionRequest,
    ) -> Result<(), ApiError> {
        let name = SubscriptionName::parse(&req.subscription)?;
        self.store()
            .delete_subscription(&name)
            .await
            .map_err(store_error(name.id()))?;
        self.forget_iam_policy(&name.to_string()).await?;
        self.save_webhook_secret(&name, &SecretChange::Remove)
            .await?;
        tracing::debug!(subscription = %name, "subscription deleted");
        Ok(())
    }

    /// ModifyAckDeadline: extends leases, or nacks them with a deadline of 0. With exactly-once
    /// delivery, invalid ack ids are reported as Acknowledge reports them.
    pub async fn modify_ack_deadline(
        &self,
        req: v1::ModifyAckDeadlineRequest,
    ) -> Result<(), ApiError> {
        let name = SubscriptionName::parse(&req.subscription)?;
        let deadline = limits::modify_ack_deadline(req.ack_deadline_seconds.into())?;
        let ids = ack_ids(req.ack_ids)?;
        let outcomes = self
            .modify_ack_deadline_tracked(&name, &ids, deadline)
            .await?;
        tracing::debug!(subscription = %name, count = ids.len(), deadline_secs = deadline.as_secs(), "ack deadline modified");
        self.check_exactly_once(&name, &ids, &outcomes).await
    }

    /// Acknowledge: acking an unknown or already acknowledged id is not an error, except with
    /// exactly-once delivery, where such ids are named in an `EXACTLY_ONCE_ACKID_FAILURE`
    /// error (the valid ones are acknowledged all the same). Frees StreamingPull flow control.
    pub async fn acknowledge(&self, req: v1::AcknowledgeRequest) -> Result<(), ApiError> {
        let name = SubscriptionName::parse(&req.subscription)?;
        let ids = ack_ids(req.ack_ids)?;
        let outcomes = self.acknowledge_tracked(&name, &ids).await?;
        tracing::debug!(subscription = %name, count = ids.len(), "acknowledged");
        self.check_exactly_once(&name, &ids, &outcomes).await
    }

    /// Pull: leases up to `max_messages` (capped at [`limits::MAX_PULL_MESSAGES`]); waits up to
    /// [`PULL_LONG_POLL`] for a first message unless `return_immediately` is set.
    pub async fn pull(&self, req: v1::PullRequest) -> Result<v1::PullResponse, ApiError> {
        self.pull_within(req, None).await
    }

    /// Pull, answering before `client_deadline` (the caller's remaining time, e.g. from gRPC's
    /// `grpc-timeout`): a long poll must not outlive the client, or messages leased into an
    /// answer nobody reads stay hidden for a whole ack deadline.
    pub async fn pull_within(
        &self,
        req: v1::PullRequest,
        client_deadline: Option<Duration>,
    ) -> Result<v1::PullResponse, ApiError> {
        #[allow(deprecated)]
        let return_immediately = req.return_immediately;
        let name = SubscriptionName::parse(&req.subscription)?;
        let max = limits::pull_max_messages(req.max_messages)?;
        let wait = if return_immediately {
            Duration::ZERO
        } else {
            let answer_by = client_deadline.map_or(PULL_LONG_POLL, |d| {
                // Leave the answer time to travel back.
                d.saturating_sub(PULL_ANSWER_MARGIN.min(d / 2))
            });
            PULL_LONG_POLL.min(answer_by)
        };
        let received = self
            .store()
            .pull(&name, max, wait)
            .await
            .map_err(store_error(name.id()))?;
        debug_assert!(received.len() <= max, "the store leased more than asked");
        tracing::debug!(subscription = %name, max, count = received.len(), "pulled");
        Ok(v1::PullResponse {
            received_messages: received
                .into_iter()
                .map(convert::received_message)
                .collect(),
        })
    }

    /// ModifyPushConfig: replaces the push config (none or an empty endpoint = pull). The push
    /// dispatcher notices the change and starts or stops delivering.
    pub async fn modify_push_config(
        &self,
        req: v1::ModifyPushConfigRequest,
    ) -> Result<(), ApiError> {
        let name = SubscriptionName::parse(&req.subscription)?;
        check_push_config(req.push_config.as_ref())?;
        let current = self
            .store()
            .get_subscription(&name)
            .await
            .map_err(store_error(name.id()))?;
        let mut resource = convert::subscription_to_proto(&current)?;
        let mut push_config = req.push_config;
        let secret = webhook::take_webhook_secret(push_config.as_mut(), Origin::ModifyPushConfig)?;
        resource.push_config = push_config;
        let kept = Kept {
            topic: current.topic.clone(),
            created: current.created,
            detached: current.detached,
        };
        let updated = subscription_from_proto(&resource, name.clone(), kept)?;
        self.store()
            .update_subscription(updated)
            .await
            .map_err(store_error(name.id()))?;
        self.save_webhook_secret(&name, &secret).await?;
        tracing::debug!(subscription = %name, push = is_push(&resource), "push config modified");
        Ok(())
    }
}
