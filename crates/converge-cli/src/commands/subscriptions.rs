//! `converge subscriptions create|list|get|update|delete|detach`.

use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{
    DeadLetterPolicy, DeleteSubscriptionRequest, DetachSubscriptionRequest, ExpirationPolicy,
    GetSubscriptionRequest, ListSubscriptionsRequest, PushConfig, RetryPolicy, Subscription,
    UpdateSubscriptionRequest, push_config,
};
use prost_types::FieldMask;
use serde_json::{Value, json};

use super::{Context, UsageError};
use crate::cli::{
    SubscriptionCreateArgs, SubscriptionSettings, SubscriptionUpdateArgs, SubscriptionsCommand,
};
use crate::client::ClientError;
use crate::output::{details, duration_json, duration_text, pairs, pairs_json, table};
use crate::parse::{Limit, to_proto_duration};
use converge_core::ProjectId;
use converge_core::retry::{self, Preset};

/// Subscriptions asked for per page when listing.
const PAGE_SIZE: i32 = 1000;

/// Runs one subscriptions command.
pub async fn run(ctx: &Context, command: SubscriptionsCommand) -> anyhow::Result<()> {
    match command {
        SubscriptionsCommand::Create(args) => create(ctx, *args).await,
        SubscriptionsCommand::List => list(ctx).await,
        SubscriptionsCommand::Get(arg) => {
            let subscription = get(ctx, arg.name.expand(&ctx.project)?.to_string()).await?;
            show(ctx, &subscription)
        }
        SubscriptionsCommand::Update(args) => update(ctx, *args).await,
        SubscriptionsCommand::Delete(arg) => {
            let subscription = arg.name.expand(&ctx.project)?.to_string();
            tracing::debug!(subscription = %subscription, "delete subscription");
            let request = DeleteSubscriptionRequest {
                subscription: subscription.clone(),
            };
            ctx.clients
                .subscriber
                .clone()
                .delete_subscription(request)
                .await
                .map_err(ClientError::from)?;
            ctx.output.done(
                &json!({ "deleted": subscription }),
                &format!("Deleted subscription [{subscription}]."),
            )?;
            Ok(())
        }
        SubscriptionsCommand::Detach(arg) => {
            let subscription = arg.name.expand(&ctx.project)?.to_string();
            tracing::debug!(subscription = %subscription, "detach subscription");
            let request = DetachSubscriptionRequest {
                subscription: subscription.clone(),
            };
            ctx.clients
                .publisher
                .clone()
                .detach_subscription(request)
                .await
                .map_err(ClientError::from)?;
            ctx.output.done(
                &json!({ "detached": subscription }),
                &format!("Detached subscription [{subscription}]."),
            )?;
            Ok(())
        }
    }
}

async fn create(ctx: &Context, args: SubscriptionCreateArgs) -> anyhow::Result<()> {
    let mut subscription = Subscription {
        name: args.name.expand(&ctx.project)?.to_string(),
        topic: args.topic.expand(&ctx.project)?.to_string(),
        ..Subscription::default()
    };
    apply(&mut subscription, &args.settings, &ctx.project)?;
    tracing::debug!(subscription = %subscription.name, topic = %subscription.topic, "create subscription");
    let created = ctx
        .clients
        .subscriber
        .clone()
        .create_subscription(subscription)
        .await
        .map_err(ClientError::from)?
        .into_inner();
    show(ctx, &created)
}

/// Reads the subscription first so that settings kept together (labels, the retry and
/// dead-letter policies) change only in the parts given, then sends a mask of the fields given.
async fn update(ctx: &Context, args: SubscriptionUpdateArgs) -> anyhow::Result<()> {
    let name = args.name.expand(&ctx.project)?.to_string();
    let mut subscription = get(ctx, name).await?;
    let paths = apply_update(&mut subscription, &args, &ctx.project)?;
    tracing::debug!(subscription = %subscription.name, fields = ?paths, "update subscription");
    let request = UpdateSubscriptionRequest {
        subscription: Some(subscription),
        update_mask: Some(FieldMask { paths }),
    };
    let updated = ctx
        .clients
        .subscriber
        .clone()
        .update_subscription(request)
        .await
        .map_err(ClientError::from)?
        .into_inner();
    show(ctx, &updated)
}

async fn get(ctx: &Context, subscription: String) -> anyhow::Result<Subscription> {
    tracing::debug!(subscription = %subscription, "get subscription");
    let request = GetSubscriptionRequest { subscription };
    Ok(ctx
        .clients
        .subscriber
        .clone()
        .get_subscription(request)
        .await
        .map_err(ClientError::from)?
        .into_inner())
}

async fn list(ctx: &Context) -> anyhow::Result<()> {
    let mut subscriptions = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListSubscriptionsRequest {
            project: ctx.project.to_string(),
            page_size: PAGE_SIZE,
            page_token,
        };
        let page = ctx
            .clients
            .subscriber
            .clone()
            .list_subscriptions(request)
            .await
            .map_err(ClientError::from)?
            .into_inner();
        subscriptions.extend(page.subscriptions);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let json = Value::Array(subscriptions.iter().map(subscription_json).collect());
    ctx.output.emit(&json, || {
        let mut t = table(&[
            "NAME",
            "TOPIC",
            "ACK DEADLINE",
            "DEAD LETTER TOPIC",
            "DETACHED",
        ]);
        for s in &subscriptions {
            let dead_letter = s
                .dead_letter_policy
                .as_ref()
                .map(|p| p.dead_letter_topic.clone())
                .unwrap_or_default();
            t.add_row(vec![
                s.name.clone(),
                s.topic.clone(),
                format!("{}s", s.ack_deadline_seconds),
                dead_letter,
                s.detached.to_string(),
            ]);
        }
        t
    })?;
    Ok(())
}

/// The update mask paths, in the order of the proto, without repeats.
#[derive(Debug, Default)]
struct Mask(Vec<String>);

impl Mask {
    fn add(&mut self, path: &str) {
        if !self.0.iter().any(|p| p == path) {
            self.0.push(path.to_owned());
        }
    }
}

/// Writes the settings given into `subscription` and returns the names of the fields changed.
fn apply(
    subscription: &mut Subscription,
    settings: &SubscriptionSettings,
    project: &ProjectId,
) -> anyhow::Result<Vec<String>> {
    let mut mask = Mask::default();
    if let Some(deadline) = settings.ack_deadline {
        subscription.ack_deadline_seconds = i32::try_from(deadline.as_secs())
            .map_err(|_| UsageError(format!("--ack-deadline {deadline:?} is too long")))?;
        mask.add("ack_deadline_seconds");
    }
    if let Some(filter) = &settings.filter {
        subscription.filter.clone_from(filter);
        mask.add("filter");
    }
    if settings.dead_letter_topic.is_some() || settings.max_delivery_attempts.is_some() {
        let policy = subscription
            .dead_letter_policy
            .get_or_insert_with(DeadLetterPolicy::default);
        if let Some(topic) = &settings.dead_letter_topic {
            policy.dead_letter_topic = topic.expand(project)?.to_string();
        }
        if let Some(attempts) = settings.max_delivery_attempts {
            policy.max_delivery_attempts = attempts;
        }
        if policy.dead_letter_topic.is_empty() {
            return Err(
                UsageError("--max-delivery-attempts needs --dead-letter-topic".into()).into(),
            );
        }
        mask.add("dead_letter_policy");
    }
    if settings.min_backoff.is_some() || settings.max_backoff.is_some() {
        let policy = subscription
            .retry_policy
            .get_or_insert_with(RetryPolicy::default);
        if let Some(min) = settings.min_backoff {
            policy.minimum_backoff = Some(to_proto_duration(min));
        }
        if let Some(max) = settings.max_backoff {
            policy.maximum_backoff = Some(to_proto_duration(max));
        }
        mask.add("retry_policy");
    }
    if let Some(ordering) = settings.ordering {
        subscription.enable_message_ordering = ordering;
        mask.add("enable_message_ordering");
    }
    if let Some(retention) = settings.retention {
        subscription.message_retention_duration = Some(to_proto_duration(retention));
        mask.add("message_retention_duration");
    }
    if let Some(retain) = settings.retain_acked {
        subscription.retain_acked_messages = retain;
        mask.add("retain_acked_messages");
    }
    if let Some(expiration) = settings.expiration_ttl {
        let ttl = match expiration {
            Limit::After(ttl) => Some(to_proto_duration(ttl)),
            Limit::Never => None,
        };
        subscription.expiration_policy = Some(ExpirationPolicy { ttl });
        mask.add("expiration_policy");
    }
    apply_push(subscription, settings, &mut mask);
    let converge_labels = [
        (
            retry::LABEL_PRESET,
            settings
                .retry_preset
                .map(|p| Preset::from(p).as_str().to_owned()),
        ),
        (
            retry::LABEL_IMMEDIATE,
            settings.retry_immediate.map(|n| n.to_string()),
        ),
        (
            retry::LABEL_MAX_DURATION,
            settings.retry_max_duration.map(|limit| match limit {
                Limit::After(d) => retry::format_label_duration(d),
                Limit::Never => retry::NO_MAX_DURATION.to_owned(),
            }),
        ),
    ];
    let given = settings.labels.iter().cloned().chain(
        converge_labels
            .into_iter()
            .filter_map(|(key, value)| value.map(|value| (key.to_owned(), value))),
    );
    for (key, value) in given {
        subscription.labels.insert(key, value);
        mask.add("labels");
    }
    Ok(mask.0)
}

/// Writes the `--push-*` settings into the push config.
fn apply_push(subscription: &mut Subscription, settings: &SubscriptionSettings, mask: &mut Mask) {
    let given = settings.push_endpoint.is_some()
        || settings.push_no_wrapper
        || !settings.push_attributes.is_empty();
    if !given {
        return;
    }
    let config = subscription
        .push_config
        .get_or_insert_with(PushConfig::default);
    if let Some(endpoint) = &settings.push_endpoint {
        config.push_endpoint.clone_from(endpoint);
    }
    if settings.push_no_wrapper {
        config.wrapper = Some(push_config::Wrapper::NoWrapper(push_config::NoWrapper {
            write_metadata: settings.push_write_metadata,
        }));
    }
    config
        .attributes
        .extend(settings.push_attributes.iter().cloned());
    mask.add("push_config");
}

/// [`apply`] plus the settings only `update` has; fails when nothing would change.
fn apply_update(
    subscription: &mut Subscription,
    args: &SubscriptionUpdateArgs,
    project: &ProjectId,
) -> anyhow::Result<Vec<String>> {
    let mut mask = Mask(apply(subscription, &args.settings, project)?);
    for key in &args.remove_labels {
        subscription.labels.remove(key);
        mask.add("labels");
    }
    if args.clear_dead_letter_policy {
        subscription.dead_letter_policy = None;
        mask.add("dead_letter_policy");
    }
    if args.clear_retry_policy {
        subscription.retry_policy = None;
        mask.add("retry_policy");
    }
    if mask.0.is_empty() {
        return Err(
            UsageError("nothing to update: give at least one setting (see --help)".into()).into(),
        );
    }
    Ok(mask.0)
}

fn show(ctx: &Context, s: &Subscription) -> anyhow::Result<()> {
    ctx.output.emit(&subscription_json(s), || {
        let dead_letter = s
            .dead_letter_policy
            .as_ref()
            .map(|p| {
                format!(
                    "{} after {} attempts",
                    p.dead_letter_topic, p.max_delivery_attempts
                )
            })
            .unwrap_or_default();
        let retry = s
            .retry_policy
            .as_ref()
            .map(|p| {
                format!(
                    "backoff {} to {}",
                    duration_text(p.minimum_backoff.as_ref()),
                    duration_text(p.maximum_backoff.as_ref())
                )
            })
            .unwrap_or_else(|| {
                let push = s
                    .push_config
                    .as_ref()
                    .is_some_and(|c| !c.push_endpoint.is_empty());
                // Without a retry policy the broker backs off push deliveries anyway.
                if push {
                    "push backoff 100ms to 60s".into()
                } else {
                    "immediate redelivery".into()
                }
            });
        let expiration = match &s.expiration_policy {
            Some(ExpirationPolicy { ttl: None }) => "never".to_owned(),
            Some(ExpirationPolicy { ttl }) => {
                format!("after {} inactive", duration_text(ttl.as_ref()))
            }
            None => String::new(),
        };
        details(vec![
            ("name", s.name.clone()),
            ("topic", s.topic.clone()),
            ("ackDeadlineSeconds", s.ack_deadline_seconds.to_string()),
            ("filter", s.filter.clone()),
            ("deadLetterPolicy", dead_letter),
            ("retryPolicy", retry),
            (
                "enableMessageOrdering",
                s.enable_message_ordering.to_string(),
            ),
            (
                "messageRetentionDuration",
                duration_text(s.message_retention_duration.as_ref()),
            ),
            ("retainAckedMessages", s.retain_acked_messages.to_string()),
            ("expirationPolicy", expiration),
            (
                "pushEndpoint",
                s.push_config
                    .as_ref()
                    .map(|c| c.push_endpoint.clone())
                    .unwrap_or_default(),
            ),
            ("detached", s.detached.to_string()),
            ("labels", pairs(&s.labels)),
        ])
    })?;
    Ok(())
}

/// A subscription in proto3 JSON, limited to the fields converge gives meaning to. Scalars are
/// always present; policies only when set, as in the API.
fn subscription_json(s: &Subscription) -> Value {
    let mut value = json!({
        "name": s.name,
        "topic": s.topic,
        "ackDeadlineSeconds": s.ack_deadline_seconds,
        "filter": s.filter,
        "enableMessageOrdering": s.enable_message_ordering,
        "retainAckedMessages": s.retain_acked_messages,
        "detached": s.detached,
        "labels": pairs_json(&s.labels),
    });
    if s.message_retention_duration.is_some() {
        value["messageRetentionDuration"] = duration_json(s.message_retention_duration.as_ref());
    }
    if let Some(p) = &s.dead_letter_policy {
        value["deadLetterPolicy"] = json!({ "deadLetterTopic": p.dead_letter_topic, "maxDeliveryAttempts": p.max_delivery_attempts });
    }
    if let Some(p) = &s.retry_policy {
        value["retryPolicy"] = json!({
            "minimumBackoff": duration_json(p.minimum_backoff.as_ref()),
            "maximumBackoff": duration_json(p.maximum_backoff.as_ref()),
        });
    }
    if let Some(p) = &s.expiration_policy {
        value["expirationPolicy"] = match &p.ttl {
            Some(ttl) => json!({ "ttl": duration_json(Some(ttl)) }),
            None => json!({}),
        };
    }
    if let Some(push) = s
        .push_config
        .as_ref()
        .filter(|p| !p.push_endpoint.is_empty())
    {
        value["pushConfig"] = json!({ "pushEndpoint": push.push_endpoint });
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn update_args(args: &[&str]) -> SubscriptionUpdateArgs {
        let argv = ["converge", "subscriptions", "update", "work"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Subscriptions(SubscriptionsCommand::Update(args)) => *args,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn project() -> ProjectId {
        ProjectId::new("p").unwrap()
    }

    #[test]
    fn push_flags_fill_the_push_config() {
        let mut s = Subscription::default();
        let args = update_args(&[
            "--push-endpoint",
            "http://127.0.0.1:9/in",
            "--push-no-wrapper",
            "--push-write-metadata",
            "--push-attribute",
            "x-goog-version=v1",
        ]);
        let paths = apply_update(&mut s, &args, &project()).unwrap();
        assert_eq!(paths, ["push_config"]);
        let config = s.push_config.unwrap();
        assert_eq!(config.push_endpoint, "http://127.0.0.1:9/in");
        assert_eq!(
            config.wrapper,
            Some(push_config::Wrapper::NoWrapper(push_config::NoWrapper {
                write_metadata: true
            }))
        );
        assert_eq!(pairs(&config.attributes), "x-goog-version=v1");
        let metadata_alone = Cli::try_parse_from([
            "converge",
            "subscriptions",
            "update",
            "work",
            "--push-write-metadata",
        ]);
        assert!(
            metadata_alone.is_err(),
            "--push-write-metadata needs --push-no-wrapper"
        );
    }

    #[test]
    fn the_mask_names_exactly_the_fields_given() {
        let mut s = Subscription::default();
        let args = update_args(&[
            "--ack-deadline",
            "30s",
            "--min-backoff",
            "5s",
            "--retry-immediate",
            "3",
        ]);
        let paths = apply_update(&mut s, &args, &project()).unwrap();
        assert_eq!(paths, ["ack_deadline_seconds", "retry_policy", "labels"]);
        assert_eq!(s.ack_deadline_seconds, 30);
        let retry = s.retry_policy.unwrap();
        assert_eq!(retry.minimum_backoff.map(|d| d.seconds), Some(5));
        assert_eq!(retry.maximum_backoff, None);
        assert_eq!(
            s.labels.get(retry::LABEL_IMMEDIATE).map(String::as_str),
            Some("3")
        );
    }

    #[test]
    fn partial_policies_keep_the_parts_not_given() {
        let mut s = Subscription {
            dead_letter_policy: Some(DeadLetterPolicy {
                dead_letter_topic: "projects/p/topics/dlq".into(),
                max_delivery_attempts: 7,
            }),
            labels: [
                ("team".to_owned(), "core".to_owned()),
                ("old".to_owned(), "x".to_owned()),
            ]
            .into(),
            ..Subscription::default()
        };
        let args = update_args(&[
            "--max-delivery-attempts",
            "9",
            "--label",
            "env=dev",
            "--remove-label",
            "old",
        ]);
        let paths = apply_update(&mut s, &args, &project()).unwrap();
        assert_eq!(paths, ["dead_letter_policy", "labels"]);
        let policy = s.dead_letter_policy.unwrap();
        assert_eq!(
            (
                policy.dead_letter_topic.as_str(),
                policy.max_delivery_attempts
            ),
            ("projects/p/topics/dlq", 9)
        );
        assert_eq!(pairs(&s.labels), "env=dev, team=core");
    }

    #[test]
    fn clearing_and_booleans_and_expiration() {
        let mut s = Subscription {
            retry_policy: Some(RetryPolicy::default()),
            ..Subscription::default()
        };
        let args = update_args(&[
            "--clear-retry-policy",
            "--ordering=false",
            "--retain-acked",
            "--expiration-ttl",
            "never",
        ]);
        let paths = apply_update(&mut s, &args, &project()).unwrap();
        assert_eq!(
            paths,
            [
                "enable_message_ordering",
                "retain_acked_messages",
                "expiration_policy",
                "retry_policy"
            ]
        );
        assert!(s.retry_policy.is_none());
        assert!(!s.enable_message_ordering);
        assert!(s.retain_acked_messages);
        assert_eq!(s.expiration_policy, Some(ExpirationPolicy { ttl: None }));
        assert_eq!(subscription_json(&s)["expirationPolicy"], json!({}));
    }

    #[test]
    fn converge_settings_become_labels() {
        let mut s = Subscription::default();
        let args = update_args(&["--retry-preset", "sns", "--retry-max-duration", "7d"]);
        apply_update(&mut s, &args, &project()).unwrap();
        assert_eq!(
            s.labels.get(retry::LABEL_PRESET).map(String::as_str),
            Some("sns")
        );
        assert_eq!(
            s.labels.get(retry::LABEL_MAX_DURATION).map(String::as_str),
            Some("7d")
        );
        let mut s = Subscription::default();
        let args = update_args(&["--retry-max-duration", "none", "--retry-preset", "pubsub"]);
        apply_update(&mut s, &args, &project()).unwrap();
        let max = s.labels.get(retry::LABEL_MAX_DURATION).map(String::as_str);
        assert_eq!(max, Some(retry::NO_MAX_DURATION));
        assert_eq!(
            s.labels.get(retry::LABEL_PRESET).map(String::as_str),
            Some("pubsub")
        );
    }

    #[test]
    fn an_empty_update_and_attempts_without_a_topic_are_usage_errors() {
        let err =
            apply_update(&mut Subscription::default(), &update_args(&[]), &project()).unwrap_err();
        assert!(err.downcast_ref::<UsageError>().is_some(), "{err}");
        let args = update_args(&["--max-delivery-attempts", "5"]);
        let err = apply_update(&mut Subscription::default(), &args, &project()).unwrap_err();
        assert!(err.to_string().contains("--dead-letter-topic"), "{err}");
    }

    #[test]
    fn dead_letter_topics_expand_into_the_project() {
        let mut s = Subscription::default();
        apply_update(
            &mut s,
            &update_args(&["--dead-letter-topic", "dlq"]),
            &project(),
        )
        .unwrap();
        assert_eq!(
            subscription_json(&s)["deadLetterPolicy"]["deadLetterTopic"],
            "projects/p/topics/dlq"
        );
    }
}
