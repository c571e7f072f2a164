//! [`Transport`] over the Pub/Sub gRPC API, so the event bus and the outbox relay run against
//! converge or any compatible endpoint.

use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{
    DeadLetterPolicy, RetryPolicy, Subscription, Topic,
};
use tokio_util::sync::CancellationToken;

use super::connect::Client;
use super::publisher::{PublishError, Publisher, PublisherSettings};
use super::retry::{RetrySettings, retry, with_timeout};
use crate::transport::{
    Code, MessageHandler, OutgoingMessage, ReceiveOptions, SubscriptionConfig, TopicConfig,
    Transport, TransportError,
};

impl Client {
    /// The shared batching publisher of `topic`, created on first use.
    fn cached_publisher(&self, topic: &str) -> Publisher {
        self.publishers
            .lock()
            .entry(topic.to_owned())
            .or_insert_with(|| self.publisher(topic, PublisherSettings::default()))
            .clone()
    }
}

/// The subscription as the API spells it.
fn subscription_proto(config: &SubscriptionConfig) -> Subscription {
    Subscription {
        name: config.name.clone(),
        topic: config.topic.clone(),
        // The API's range is 10..=600 s; anything else is for the broker to refuse.
        ack_deadline_seconds: i32::try_from(config.ack_deadline.as_secs()).unwrap_or(i32::MAX),
        retry_policy: config.retry.map(|r| RetryPolicy {
            minimum_backoff: Some(proto_duration(r.minimum)),
            maximum_backoff: Some(proto_duration(r.maximum)),
        }),
        dead_letter_policy: config.dead_letter.as_ref().map(|d| DeadLetterPolicy {
            dead_letter_topic: d.topic.clone(),
            max_delivery_attempts: i32::try_from(d.max_delivery_attempts).unwrap_or(i32::MAX),
        }),
        enable_message_ordering: config.message_ordering,
        filter: config.filter.clone(),
        labels: config.labels.clone(),
        ..Default::default()
    }
}

fn proto_duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// Creating is idempotent here: ALREADY_EXISTS means the resource is there, which is all
/// `ensure_*` promises (an existing resource is left as it is, not compared).
fn created_or_exists(result: Result<(), tonic::Status>) -> Result<(), TransportError> {
    match result {
        Err(status) if status.code() != Code::AlreadyExists => Err(status.into()),
        _ => Ok(()),
    }
}

#[async_trait::async_trait]
impl Transport for Client {
    async fn ensure_topic(&self, topic: &TopicConfig) -> Result<(), TransportError> {
        let request = Topic {
            name: topic.name.clone(),
            labels: topic.labels.clone(),
            ..Default::default()
        };
        let result = retry(&RetrySettings::default(), "create_topic", |left| {
            let mut stub = self.publisher_stub();
            let request = with_timeout(request.clone(), left);
            async move { stub.create_topic(request).await.map(drop) }
        })
        .await;
        created_or_exists(result)?;
        tracing::debug!(topic = %topic.name, "topic ensured");
        Ok(())
    }

    async fn ensure_subscription(
        &self,
        subscription: &SubscriptionConfig,
    ) -> Result<(), TransportError> {
        let request = subscription_proto(subscription);
        let result = retry(&RetrySettings::default(), "create_subscription", |left| {
            let mut stub = self.subscriber_stub();
            let request = with_timeout(request.clone(), left);
            async move { stub.create_subscription(request).await.map(drop) }
        })
        .await;
        created_or_exists(result)?;
        tracing::debug!(subscription = %subscription.name, topic = %subscription.topic, "subscription ensured");
        Ok(())
    }

    /// Publishes through the topic's shared [`Publisher`], so concurrent callers share
    /// batches. A failure on an ordering key pauses the key for every caller until it
    /// settles; then the key is resumed, because a caller of this trait retries whole calls
    /// (the outbox relay does) and must not find the key paused forever.
    async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<String>, TransportError> {
        let publisher = self.cached_publisher(topic);
        let handles: Vec<_> = messages
            .into_iter()
            .map(|m| {
                let key = m.ordering_key.clone();
                (key, publisher.publish(m))
            })
            .collect();
        let mut ids = Vec::with_capacity(handles.len());
        let mut first_error: Option<PublishError> = None;
        for (key, handle) in handles {
            match handle.await {
                Ok(id) => ids.push(id),
                Err(e) => {
                    if !key.is_empty() {
                        publisher.resume_publish(&key);
                    }
                    // The broker's reason beats the consequential "key paused".
                    let better = matches!(
                        (&first_error, &e),
                        (None, _)
                            | (
                                Some(PublishError::OrderingKeyPaused { .. }),
                                PublishError::Transport(_)
                            )
                    );
                    if better {
                        first_error = Some(e);
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(ids),
        }
    }

    async fn receive(
        &self,
        subscription: &str,
        options: ReceiveOptions,
        handler: MessageHandler,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError> {
        self.subscriber(subscription, options)
            .with_settings(self.subscriber_settings)
            .receive(handler, shutdown)
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::transport::{DeadLetter, RetryBackoff};

    #[test]
    fn subscription_config_maps_to_the_proto() {
        let mut config =
            SubscriptionConfig::new("projects/p/subscriptions/s", "projects/p/topics/t");
        config.ack_deadline = Duration::from_secs(42);
        config.retry = Some(RetryBackoff {
            minimum: Duration::from_secs(1),
            maximum: Duration::from_millis(60_500),
        });
        config.dead_letter = Some(DeadLetter {
            topic: "projects/p/topics/dlq".into(),
            max_delivery_attempts: 7,
        });
        config.message_ordering = true;
        config.filter = "attributes.kind = \"a\"".into();
        config.labels.insert("team".into(), "x".into());
        let proto = subscription_proto(&config);
        assert_eq!(proto.name, "projects/p/subscriptions/s");
        assert_eq!(proto.topic, "projects/p/topics/t");
        assert_eq!(proto.ack_deadline_seconds, 42);
        let retry = proto.retry_policy.expect("retry policy");
        assert_eq!(
            retry.minimum_backoff.map(|d| (d.seconds, d.nanos)),
            Some((1, 0))
        );
        assert_eq!(
            retry.maximum_backoff.map(|d| (d.seconds, d.nanos)),
            Some((60, 500_000_000))
        );
        let dl = proto.dead_letter_policy.expect("dead letter policy");
        assert_eq!(dl.dead_letter_topic, "projects/p/topics/dlq");
        assert_eq!(dl.max_delivery_attempts, 7);
        assert!(proto.enable_message_ordering);
        assert_eq!(proto.filter, "attributes.kind = \"a\"");
        assert_eq!(proto.labels.get("team").map(String::as_str), Some("x"));

        let plain = subscription_proto(&SubscriptionConfig::new("n", "t"));
        assert!(plain.retry_policy.is_none() && plain.dead_letter_policy.is_none());
        assert_eq!(plain.ack_deadline_seconds, 10);
    }
}
