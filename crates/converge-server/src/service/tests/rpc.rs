//! Every RPC over the fake store: what reaches the store, and what the client gets back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use converge_core::{AckId, ManualClock, TopicName};
use prost_types::FieldMask;
use tonic::Code;

use super::fake_store::FakeStore;
use crate::proto as v1;
use crate::service::{ApiError, PULL_LONG_POLL, PubSub};

const TOPIC: &str = "projects/p/topics/orders";
const SUB: &str = "projects/p/subscriptions/workers";

fn service() -> (PubSub, Arc<FakeStore>) {
    let store = Arc::new(FakeStore::default());
    let clock = Arc::new(ManualClock::starting_now());
    (PubSub::new(store.clone(), clock), store)
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(ToString::to_string).collect(),
    })
}

fn secs(s: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: s,
        nanos: 0,
    }
}

fn assert_error(e: ApiError, code: Code, needle: &str) {
    assert_eq!(e.code, code, "{e}");
    assert!(
        e.message.contains(needle),
        "message {:?} should contain {needle:?}",
        e.message
    );
}

/// A service with topic `orders` and pull subscription `workers` on it.
async fn with_subscription() -> (PubSub, Arc<FakeStore>) {
    let (svc, store) = service();
    svc.create_topic(v1::Topic {
        name: TOPIC.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    svc.create_subscription(v1::Subscription {
        name: SUB.into(),
        topic: TOPIC.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    (svc, store)
}

async fn publish(svc: &PubSub, data: &[u8]) -> v1::PublishResponse {
    let message = v1::PubsubMessage {
        data: data.to_vec(),
        ..Default::default()
    };
    svc.publish(v1::PublishRequest {
        topic: TOPIC.into(),
        messages: vec![message],
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn topics_are_created_read_and_not_duplicated() {
    let (svc, _) = service();
    let written = v1::Topic {
        name: TOPIC.into(),
        kms_key_name: "k".into(),
        ..Default::default()
    };
    let created = svc.create_topic(written.clone()).await.unwrap();
    assert_eq!(created.kms_key_name, "k");
    assert_eq!(created.state, v1::topic::State::Active as i32);
    let got = svc
        .get_topic(v1::GetTopicRequest {
            topic: TOPIC.into(),
        })
        .await
        .unwrap();
    assert_eq!(got, created);

    let dup = svc.create_topic(written).await.unwrap_err();
    assert_eq!(
        (dup.code, dup.message.as_str()),
        (
            Code::AlreadyExists,
            "Resource already exists in the project (resource=orders)."
        )
    );
    let missing = svc
        .get_topic(v1::GetTopicRequest {
            topic: "projects/p/topics/other".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (missing.code, missing.message.as_str()),
        (Code::NotFound, "Resource not found (resource=other).")
    );
    let bad = svc
        .get_topic(v1::GetTopicRequest {
            topic: "topics/orders".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code, Code::InvalidArgument);
}

#[tokio::test]
async fn update_topic_applies_only_the_masked_fields() {
    let (svc, store) = service();
    svc.create_topic(v1::Topic {
        name: TOPIC.into(),
        kms_key_name: "k".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let patch = v1::Topic {
        name: TOPIC.into(),
        labels: HashMap::from([("team".into(), "a".into())]),
        message_retention_duration: Some(secs(7200)),
        kms_key_name: "changed".into(),
        ..Default::default()
    };
    let req = |paths: &[&str]| v1::UpdateTopicRequest {
        topic: Some(patch.clone()),
        update_mask: mask(paths),
    };

    assert_error(
        svc.update_topic(req(&[])).await.unwrap_err(),
        Code::InvalidArgument,
        "update_mask",
    );
    assert_error(
        svc.update_topic(req(&["bogus"])).await.unwrap_err(),
        Code::InvalidArgument,
        "'bogus'",
    );

    let out = svc
        .update_topic(req(&["labels", "messageRetentionDuration"]))
        .await
        .unwrap();
    assert_eq!(out.labels, patch.labels);
    assert_eq!(out.message_retention_duration, Some(secs(7200)));
    assert_eq!(
        out.kms_key_name, "k",
        "a field outside the mask is unchanged"
    );
    let name = TopicName::parse(TOPIC).unwrap();
    assert_eq!(
        store.state.lock().unwrap().topics[&name].message_retention,
        Some(Duration::from_secs(7200))
    );

    let missing = v1::UpdateTopicRequest {
        topic: Some(v1::Topic {
            name: "projects/p/topics/other".into(),
            ..Default::default()
        }),
        update_mask: mask(&["labels"]),
    };
    assert_error(
        svc.update_topic(missing).await.unwrap_err(),
        Code::NotFound,
        "resource=other",
    );
}

#[tokio::test]
async fn publish_validates_and_answers_decimal_ids() {
    let (svc, store) = with_subscription().await;
    let ids = publish(&svc, b"one").await;
    assert_eq!(ids.message_ids, ["1000"]);
    assert_eq!(
        store.state.lock().unwrap().published[0].1.data.as_ref(),
        b"one"
    );

    let empty = v1::PublishRequest {
        topic: TOPIC.into(),
        messages: vec![],
    };
    assert_eq!(
        svc.publish(empty).await.unwrap_err().code,
        Code::InvalidArgument
    );
    let blank = v1::PublishRequest {
        topic: TOPIC.into(),
        messages: vec![v1::PubsubMessage::default()],
    };
    assert_eq!(
        svc.publish(blank).await.unwrap_err().code,
        Code::InvalidArgument
    );
    let message = v1::PubsubMessage {
        data: b"x".to_vec(),
        ..Default::default()
    };
    let missing = v1::PublishRequest {
        topic: "projects/p/topics/other".into(),
        messages: vec![message],
    };
    let e = svc.publish(missing).await.unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (Code::NotFound, "Resource not found (resource=other).")
    );
}

#[tokio::test]
async fn listing_passes_pages_through() {
    let (svc, store) = with_subscription().await;
    let req = v1::ListTopicsRequest {
        project: "projects/p".into(),
        page_size: 7,
        page_token: "tok".into(),
    };
    let out = svc.list_topics(req).await.unwrap();
    assert_eq!(out.topics.len(), 1);
    assert_eq!(out.next_page_token, "next");
    assert_eq!(
        store.state.lock().unwrap().last_page,
        Some(converge_core::PageRequest {
            page_size: 7,
            page_token: "tok".into()
        })
    );
    let bad = v1::ListTopicsRequest {
        project: "p".into(),
        ..Default::default()
    };
    assert_eq!(
        svc.list_topics(bad).await.unwrap_err().code,
        Code::InvalidArgument
    );

    let subs = svc
        .list_topic_subscriptions(v1::ListTopicSubscriptionsRequest {
            topic: TOPIC.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(subs.subscriptions, [SUB]);
    let all = svc
        .list_subscriptions(v1::ListSubscriptionsRequest {
            project: "projects/p".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.subscriptions[0].ack_deadline_seconds, 10);
}

#[tokio::test]
async fn create_subscription_checks_topics_and_push() {
    let (svc, _) = with_subscription().await;
    let sub = |name: &str, topic: &str| v1::Subscription {
        name: name.into(),
        topic: topic.into(),
        ..Default::default()
    };

    let e = svc
        .create_subscription(sub(
            "projects/p/subscriptions/sub2",
            "projects/p/topics/nope",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (Code::NotFound, "Resource not found (resource=nope).")
    );

    let mut dlq = sub("projects/p/subscriptions/sub2", TOPIC);
    dlq.dead_letter_policy = Some(v1::DeadLetterPolicy {
        dead_letter_topic: "projects/p/topics/dead".into(),
        max_delivery_attempts: 5,
    });
    assert_error(
        svc.create_subscription(dlq).await.unwrap_err(),
        Code::NotFound,
        "resource=dead",
    );

    let e = svc.create_subscription(sub(SUB, TOPIC)).await.unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            Code::AlreadyExists,
            "Resource already exists in the project (resource=workers)."
        )
    );

    let mut push = sub("projects/p/subscriptions/sub3", TOPIC);
    push.push_config = Some(v1::PushConfig {
        push_endpoint: "https://example.com/push".into(),
        ..Default::default()
    });
    assert_error(
        svc.create_subscription(push).await.unwrap_err(),
        Code::Unimplemented,
        "push subscriptions",
    );

    let got = svc
        .get_subscription(v1::GetSubscriptionRequest {
            subscription: SUB.into(),
        })
        .await
        .unwrap();
    assert_eq!((got.topic.as_str(), got.ack_deadline_seconds), (TOPIC, 10));
}

#[tokio::test]
async fn update_subscription_honours_masks_and_immutability() {
    let (svc, store) = with_subscription().await;
    let patch = v1::Subscription {
        name: SUB.into(),
        ack_deadline_seconds: 30,
        filter: "attributes.x = \"1\"".into(),
        retry_policy: Some(v1::RetryPolicy {
            minimum_backoff: Some(secs(20)),
            maximum_backoff: Some(secs(40)),
        }),
        push_config: Some(v1::PushConfig {
            push_endpoint: "https://example.com".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let req = |paths: &[&str]| v1::UpdateSubscriptionRequest {
        subscription: Some(patch.clone()),
        update_mask: mask(paths),
    };

    assert_error(
        svc.update_subscription(req(&["filter"])).await.unwrap_err(),
        Code::InvalidArgument,
        "filter",
    );
    assert_error(
        svc.update_subscription(req(&["topic"])).await.unwrap_err(),
        Code::InvalidArgument,
        "topic",
    );
    assert_error(
        svc.update_subscription(req(&["nope"])).await.unwrap_err(),
        Code::InvalidArgument,
        "'nope'",
    );
    assert_error(
        svc.update_subscription(req(&[])).await.unwrap_err(),
        Code::InvalidArgument,
        "update_mask",
    );
    assert_error(
        svc.update_subscription(req(&["pushConfig.pushEndpoint"]))
            .await
            .unwrap_err(),
        Code::Unimplemented,
        "push",
    );

    let out = svc
        .update_subscription(req(&["ackDeadlineSeconds", "retry_policy.minimum_backoff"]))
        .await
        .unwrap();
    assert_eq!(out.ack_deadline_seconds, 30);
    assert_eq!(
        out.retry_policy,
        Some(v1::RetryPolicy {
            minimum_backoff: Some(secs(20)),
            maximum_backoff: Some(secs(600))
        })
    );
    assert_eq!(out.filter, "", "the filter is not touched");
    let name = converge_core::SubscriptionName::parse(SUB).unwrap();
    let stored = store.state.lock().unwrap().subscriptions[&name].clone();
    assert_eq!(stored.ack_deadline, Duration::from_secs(30));
    assert_eq!(
        stored.retry.map(|r| r.minimum_backoff),
        Some(Duration::from_secs(20))
    );
}

#[tokio::test]
async fn deleting_a_topic_leaves_its_subscription_on_the_deleted_topic() {
    let (svc, _) = with_subscription().await;
    svc.delete_topic(v1::DeleteTopicRequest {
        topic: TOPIC.into(),
    })
    .await
    .unwrap();
    let got = svc
        .get_subscription(v1::GetSubscriptionRequest {
            subscription: SUB.into(),
        })
        .await
        .unwrap();
    assert_eq!(got.topic, "_deleted-topic_");
    let e = svc
        .delete_topic(v1::DeleteTopicRequest {
            topic: TOPIC.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.message, "Resource not found (resource=orders).");
}

#[tokio::test]
#[allow(deprecated)]
async fn pull_bounds_its_wait_and_converts_messages() {
    let (svc, store) = with_subscription().await;
    publish(&svc, b"hello").await;
    let pull = |max_messages, return_immediately| v1::PullRequest {
        subscription: SUB.into(),
        max_messages,
        return_immediately,
    };

    assert_error(
        svc.pull(pull(0, true)).await.unwrap_err(),
        Code::InvalidArgument,
        "max_messages",
    );
    let out = svc.pull(pull(5000, false)).await.unwrap();
    assert_eq!(
        store.state.lock().unwrap().last_pull,
        Some((1000, PULL_LONG_POLL))
    );
    let received = &out.received_messages[0];
    let message = received.message.as_ref().unwrap();
    assert_eq!(
        (message.data.as_slice(), message.message_id.as_str()),
        (&b"hello"[..], "1000")
    );
    assert_eq!(
        message.publish_time,
        Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 500_000_000
        })
    );
    assert_eq!(received.delivery_attempt, 0);

    svc.pull(pull(3, true)).await.unwrap();
    assert_eq!(
        store.state.lock().unwrap().last_pull,
        Some((3, Duration::ZERO))
    );

    let missing = v1::PullRequest {
        subscription: "projects/p/subscriptions/nope".into(),
        max_messages: 1,
        return_immediately: true,
    };
    assert_error(
        svc.pull(missing).await.unwrap_err(),
        Code::NotFound,
        "resource=nope",
    );
    svc.detach_subscription(v1::DetachSubscriptionRequest {
        subscription: SUB.into(),
    })
    .await
    .unwrap();
    assert_eq!(
        svc.pull(pull(1, true)).await.unwrap_err().code,
        Code::FailedPrecondition
    );
}

#[tokio::test]
async fn ack_and_modack_validate_ids_and_deadlines() {
    let (svc, store) = with_subscription().await;
    let ack = |ids: &[&str]| v1::AcknowledgeRequest {
        subscription: SUB.into(),
        ack_ids: ids.iter().map(ToString::to_string).collect(),
    };
    assert_error(
        svc.acknowledge(ack(&[])).await.unwrap_err(),
        Code::InvalidArgument,
        "ack_ids",
    );
    svc.acknowledge(ack(&["a", "b"])).await.unwrap();
    assert_eq!(
        store.state.lock().unwrap().acked,
        [AckId("a".into()), AckId("b".into())]
    );

    let modack = |seconds, ids: &[&str]| v1::ModifyAckDeadlineRequest {
        subscription: SUB.into(),
        ack_ids: ids.iter().map(ToString::to_string).collect(),
        ack_deadline_seconds: seconds,
    };
    assert_error(
        svc.modify_ack_deadline(modack(601, &["a"]))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "ack_deadline_seconds",
    );
    assert_error(
        svc.modify_ack_deadline(modack(-1, &["a"]))
            .await
            .unwrap_err(),
        Code::InvalidArgument,
        "ack_deadline_seconds",
    );
    assert_error(
        svc.modify_ack_deadline(modack(10, &[])).await.unwrap_err(),
        Code::InvalidArgument,
        "ack_ids",
    );
    svc.modify_ack_deadline(modack(0, &["a"])).await.unwrap();
    assert_eq!(
        store.state.lock().unwrap().modacks,
        [(AckId("a".into()), Duration::ZERO)]
    );

    let missing = v1::AcknowledgeRequest {
        subscription: "projects/p/subscriptions/nope".into(),
        ack_ids: vec!["a".into()],
    };
    let e = svc.acknowledge(missing).await.unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (Code::NotFound, "Resource not found (resource=nope).")
    );
}

#[tokio::test]
async fn modify_push_config_accepts_only_pull() {
    let (svc, _) = with_subscription().await;
    let req = |sub: &str, endpoint: &str| v1::ModifyPushConfigRequest {
        subscription: sub.into(),
        push_config: Some(v1::PushConfig {
            push_endpoint: endpoint.into(),
            ..Default::default()
        }),
    };
    svc.modify_push_config(req(SUB, "")).await.unwrap();
    assert_error(
        svc.modify_push_config(req(SUB, "https://x"))
            .await
            .unwrap_err(),
        Code::Unimplemented,
        "push subscriptions",
    );
    assert_error(
        svc.modify_push_config(req("projects/p/subscriptions/nope", ""))
            .await
            .unwrap_err(),
        Code::NotFound,
        "resource=nope",
    );
}

#[tokio::test]
async fn snapshots_and_seek_are_unimplemented() {
    let (svc, _) = with_subscription().await;
    let codes = [
        svc.get_snapshot(Default::default()).await.unwrap_err().code,
        svc.list_snapshots(Default::default())
            .await
            .unwrap_err()
            .code,
        svc.create_snapshot(Default::default())
            .await
            .unwrap_err()
            .code,
        svc.update_snapshot(Default::default())
            .await
            .unwrap_err()
            .code,
        svc.delete_snapshot(Default::default())
            .await
            .unwrap_err()
            .code,
        svc.seek(Default::default()).await.unwrap_err().code,
        svc.list_topic_snapshots(Default::default())
            .await
            .unwrap_err()
            .code,
    ];
    assert!(codes.iter().all(|c| *c == Code::Unimplemented), "{codes:?}");
}

#[tokio::test]
async fn delete_and_detach_report_missing_subscriptions() {
    let (svc, _) = with_subscription().await;
    svc.delete_subscription(v1::DeleteSubscriptionRequest {
        subscription: SUB.into(),
    })
    .await
    .unwrap();
    let e = svc
        .delete_subscription(v1::DeleteSubscriptionRequest {
            subscription: SUB.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.message, "Resource not found (resource=workers).");
    let e = svc
        .detach_subscription(v1::DetachSubscriptionRequest {
            subscription: SUB.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound);
}
