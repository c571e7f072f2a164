//! Every RPC over the real embedded engine, in memory: what the client gets back, and what the
//! engine then does (read back through the service or the `Store` trait, never by spying).
//!
//! Time that matters to the engine (leases, backoff) is a [`ManualClock`] that the tests advance;
//! nothing here sleeps. Long polls are observed by polling the pull future by hand.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use converge_core::{ManualClock, SubscriptionName, TopicName, limits};
use converge_store::embedded::{EmbeddedOptions, EmbeddedStore};
use futures::FutureExt;
use prost_types::FieldMask;
use tonic::Code;

use crate::proto as v1;
use crate::service::{ApiError, PubSub};

const TOPIC: &str = "projects/p/topics/orders";
const SUB: &str = "projects/p/subscriptions/workers";
/// The default ack deadline of a subscription that does not set one.
const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// The service over a fresh in-memory engine, and the clock both read.
struct Fixture {
    svc: PubSub,
    clock: ManualClock,
}

/// When every test starts: a fixed instant with a fractional second, so the conversion of
/// publish times to `Timestamp` is checked on both fields.
fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000)
}

fn service() -> Fixture {
    let clock = ManualClock::new(start());
    let store = EmbeddedStore::open(EmbeddedOptions::default(), Arc::new(clock.clone()))
        .expect("the in-memory engine opens");
    Fixture {
        svc: PubSub::new(Arc::new(store), Arc::new(clock.clone())),
        clock,
    }
}

/// A service with topic `orders` and pull subscription `workers` on it.
async fn with_subscription() -> Fixture {
    let f = service();
    create_topic(&f.svc, TOPIC).await;
    create_subscription(&f.svc, SUB, TOPIC).await;
    f
}

async fn create_topic(svc: &PubSub, name: &str) -> v1::Topic {
    svc.create_topic(v1::Topic {
        name: name.into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn create_subscription(svc: &PubSub, name: &str, topic: &str) -> v1::Subscription {
    svc.create_subscription(v1::Subscription {
        name: name.into(),
        topic: topic.into(),
        ..Default::default()
    })
    .await
    .unwrap()
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

fn message(data: &[u8]) -> v1::PubsubMessage {
    v1::PubsubMessage {
        data: data.to_vec(),
        ..Default::default()
    }
}

/// Publishes one message per item of `data` to `orders`, in one request; the message ids.
async fn publish(svc: &PubSub, data: &[&[u8]]) -> Vec<String> {
    svc.publish(v1::PublishRequest {
        topic: TOPIC.into(),
        messages: data.iter().map(|d| message(d)).collect(),
    })
    .await
    .unwrap()
    .message_ids
}

#[allow(deprecated)]
fn pull_request(
    subscription: &str,
    max_messages: i32,
    return_immediately: bool,
) -> v1::PullRequest {
    v1::PullRequest {
        subscription: subscription.into(),
        max_messages,
        return_immediately,
    }
}

/// Pulls up to 100 messages from `subscription` without waiting.
async fn pull_now(svc: &PubSub, subscription: &str) -> Vec<v1::ReceivedMessage> {
    svc.pull(pull_request(subscription, 100, true))
        .await
        .unwrap()
        .received_messages
}

/// The data of received messages, as text, in order.
fn data(received: &[v1::ReceivedMessage]) -> Vec<String> {
    received
        .iter()
        .map(|r| String::from_utf8(r.message.as_ref().unwrap().data.clone()).unwrap())
        .collect()
}

fn ack_ids(received: &[v1::ReceivedMessage]) -> Vec<String> {
    received.iter().map(|r| r.ack_id.clone()).collect()
}

fn modack(seconds: i32, ids: &[String]) -> v1::ModifyAckDeadlineRequest {
    v1::ModifyAckDeadlineRequest {
        subscription: SUB.into(),
        ack_ids: ids.to_vec(),
        ack_deadline_seconds: seconds,
    }
}

#[tokio::test]
async fn topics_are_created_read_and_not_duplicated() {
    let Fixture { svc, .. } = service();
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
    let Fixture { svc, .. } = service();
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

    let read_back = svc
        .get_topic(v1::GetTopicRequest {
            topic: TOPIC.into(),
        })
        .await
        .unwrap();
    assert_eq!(read_back, out, "the engine kept what the update answered");
    let stored = svc
        .store()
        .get_topic(&TopicName::parse(TOPIC).unwrap())
        .await
        .unwrap();
    assert_eq!(
        (stored.message_retention, stored.labels),
        (Some(Duration::from_secs(7200)), patch.labels.clone()),
        "the engine's own topic carries the new retention and labels"
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
async fn publish_answers_decimal_ids_of_what_subscribers_receive() {
    let Fixture { svc, .. } = with_subscription().await;
    let ids = publish(&svc, &[b"one", b"two"]).await;
    assert_eq!(ids.len(), 2);
    let numeric: Vec<u64> = ids.iter().map(|id| id.parse().unwrap()).collect();
    assert!(numeric[0] < numeric[1], "ids follow request order: {ids:?}");

    let received = pull_now(&svc, SUB).await;
    assert_eq!(data(&received), ["one", "two"]);
    let received_ids: Vec<&str> = received
        .iter()
        .map(|r| r.message.as_ref().unwrap().message_id.as_str())
        .collect();
    assert_eq!(
        received_ids, ids,
        "a subscriber sees the ids the publisher got"
    );
}

#[tokio::test]
async fn publish_validates_batches_and_topics() {
    let Fixture { svc, .. } = with_subscription().await;
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
    let missing = v1::PublishRequest {
        topic: "projects/p/topics/other".into(),
        messages: vec![message(b"x")],
    };
    let e = svc.publish(missing).await.unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (Code::NotFound, "Resource not found (resource=other).")
    );
    assert!(
        pull_now(&svc, SUB).await.is_empty(),
        "no rejected message reached the subscription"
    );
}

#[tokio::test]
async fn list_topics_pages_through_one_project_in_name_order() {
    let Fixture { svc, .. } = service();
    let mut names: Vec<String> = ["delta", "alpha", "echo", "charlie", "bravo"]
        .iter()
        .map(|id| format!("projects/p/topics/{id}"))
        .collect();
    for name in &names {
        create_topic(&svc, name).await;
    }
    create_topic(&svc, "projects/q/topics/elsewhere").await;
    names.sort();

    let mut seen = Vec::new();
    let mut tokens = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = svc
            .list_topics(v1::ListTopicsRequest {
                project: "projects/p".into(),
                page_size: 2,
                page_token,
            })
            .await
            .unwrap();
        assert!(page.topics.len() <= 2, "a page holds at most page_size");
        seen.extend(page.topics.into_iter().map(|t| t.name));
        if page.next_page_token.is_empty() {
            break;
        }
        tokens.push(page.next_page_token.clone());
        page_token = page.next_page_token;
    }
    assert_eq!(seen, names, "every topic of the project once, sorted");
    assert_eq!(tokens.len(), 2, "five topics in pages of two: two tokens");

    let all = svc
        .list_topics(v1::ListTopicsRequest {
            project: "projects/p".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.topics.len(), names.len(), "page size 0: the default");
    assert_eq!(all.next_page_token, "", "everything fits: no token");

    let negative = v1::ListTopicsRequest {
        project: "projects/p".into(),
        page_size: -1,
        ..Default::default()
    };
    assert_error(
        svc.list_topics(negative).await.unwrap_err(),
        Code::InvalidArgument,
        "page_size",
    );
    let bad = v1::ListTopicsRequest {
        project: "p".into(),
        ..Default::default()
    };
    assert_eq!(
        svc.list_topics(bad).await.unwrap_err().code,
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn listing_subscriptions_by_project_and_by_topic() {
    let Fixture { svc, .. } = with_subscription().await;
    create_topic(&svc, "projects/p/topics/quiet").await;
    create_subscription(&svc, "projects/p/subscriptions/audit", TOPIC).await;

    let first = svc
        .list_subscriptions(v1::ListSubscriptionsRequest {
            project: "projects/p".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(first.subscriptions.len(), 1);
    assert_eq!(
        first.subscriptions[0].name,
        "projects/p/subscriptions/audit"
    );
    assert_eq!(first.subscriptions[0].ack_deadline_seconds, 10);
    assert_ne!(first.next_page_token, "", "a second page follows");
    let second = svc
        .list_subscriptions(v1::ListSubscriptionsRequest {
            project: "projects/p".into(),
            page_size: 1,
            page_token: first.next_page_token,
        })
        .await
        .unwrap();
    let names: Vec<&str> = second
        .subscriptions
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, [SUB]);
    assert_eq!(second.next_page_token, "");

    let of_topic = svc
        .list_topic_subscriptions(v1::ListTopicSubscriptionsRequest {
            topic: TOPIC.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        of_topic.subscriptions,
        ["projects/p/subscriptions/audit", SUB]
    );
    let of_quiet = svc
        .list_topic_subscriptions(v1::ListTopicSubscriptionsRequest {
            topic: "projects/p/topics/quiet".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(of_quiet.subscriptions.is_empty());
    let e = svc
        .list_topic_subscriptions(v1::ListTopicSubscriptionsRequest {
            topic: "projects/p/topics/nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (Code::NotFound, "Resource not found (resource=nope).")
    );
}

#[tokio::test]
async fn create_subscription_checks_topics_and_push() {
    let Fixture { svc, .. } = with_subscription().await;
    let sub = |name: &str, topic: &str| v1::Subscription {
        name: name.into(),
        topic: topic.into(),
        ..Default::default()
    };
    let absent = |name: &'static str| {
        let svc = svc.clone();
        async move {
            svc.get_subscription(v1::GetSubscriptionRequest {
                subscription: name.into(),
            })
            .await
            .unwrap_err()
            .code
        }
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
    assert_eq!(
        absent("projects/p/subscriptions/sub2").await,
        Code::NotFound,
        "a rejected subscription was not created"
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
    let created = svc.create_subscription(push).await.unwrap();
    assert_eq!(
        created.push_config.unwrap().push_endpoint,
        "https://example.com/push",
        "a push subscription is created with its endpoint"
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
    let Fixture { svc, clock } = with_subscription().await;
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

    let out = svc
        .update_subscription(req(&["ackDeadlineSeconds", "retry_policy.minimum_backoff"]))
        .await
        .unwrap();
    assert_eq!(out.ack_deadline_seconds, 30);
    let expected_retry = Some(v1::RetryPolicy {
        minimum_backoff: Some(secs(20)),
        maximum_backoff: Some(secs(600)),
    });
    assert_eq!(out.retry_policy, expected_retry);
    assert_eq!(out.filter, "", "the filter is not touched");
    let read_back = svc
        .get_subscription(v1::GetSubscriptionRequest {
            subscription: SUB.into(),
        })
        .await
        .unwrap();
    assert_eq!(read_back, out, "the engine kept what the update answered");

    // The engine applies both: a lease now lasts 30 s, and a lease that runs out counts as a
    // failed delivery, so the message then waits the 20 s minimum backoff. With the old 10 s
    // lease it would be back at 30 s.
    publish(&svc, &[b"m"]).await;
    let leased = pull_now(&svc, SUB).await;
    assert_eq!(data(&leased), ["m"]);
    clock.advance(DEFAULT_LEASE + Duration::from_secs(1));
    assert!(pull_now(&svc, SUB).await.is_empty(), "still leased at 11 s");
    clock.advance(Duration::from_secs(20));
    assert!(
        pull_now(&svc, SUB).await.is_empty(),
        "at 31 s the 30 s lease has just run out and the backoff started"
    );
    clock.advance(Duration::from_secs(20));
    let again = pull_now(&svc, SUB).await;
    assert_eq!(data(&again), ["m"], "redelivered after lease and backoff");

    // A nack is the second failure: it waits between the 20 s minimum and the nominal 40 s
    // of the second backoff step (the jitter picks where).
    svc.modify_ack_deadline(modack(0, &ack_ids(&again)))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(19));
    assert!(pull_now(&svc, SUB).await.is_empty(), "still backing off");
    clock.advance(Duration::from_secs(21));
    assert_eq!(data(&pull_now(&svc, SUB).await), ["m"]);
}

#[tokio::test]
async fn deleting_a_topic_leaves_its_subscription_on_the_deleted_topic() {
    let Fixture { svc, .. } = with_subscription().await;
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
    let gone = svc
        .get_topic(v1::GetTopicRequest {
            topic: TOPIC.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code, Code::NotFound);
    let e = svc
        .delete_topic(v1::DeleteTopicRequest {
            topic: TOPIC.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.message, "Resource not found (resource=orders).");
}

#[tokio::test]
async fn pull_converts_messages() {
    let Fixture { svc, .. } = with_subscription().await;
    let ids = publish(&svc, &[b"hello"]).await;
    let out = svc.pull(pull_request(SUB, 10, false)).await.unwrap();
    let [received] = out.received_messages.as_slice() else {
        panic!("one message expected: {out:?}");
    };
    assert!(!received.ack_id.is_empty());
    let message = received.message.as_ref().unwrap();
    assert_eq!(
        (message.data.as_slice(), message.message_id.as_str()),
        (&b"hello"[..], ids[0].as_str())
    );
    assert_eq!(
        message.publish_time,
        Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 500_000_000
        }),
        "the publish time is the clock's time at publish"
    );
    assert_eq!(
        received.delivery_attempt, 0,
        "no dead-letter policy: no attempt count"
    );
}

#[tokio::test]
async fn pull_validates_and_caps_max_messages() {
    let Fixture { svc, .. } = with_subscription().await;
    assert_error(
        svc.pull(pull_request(SUB, 0, true)).await.unwrap_err(),
        Code::InvalidArgument,
        "max_messages",
    );
    let batch: Vec<&[u8]> = vec![b"m"; limits::MAX_PUBLISH_MESSAGES];
    publish(&svc, &batch).await;
    publish(&svc, &[b"last"]).await;
    let available = limits::MAX_PUBLISH_MESSAGES + 1;
    assert!(available > limits::MAX_PULL_MESSAGES);

    let first = svc.pull(pull_request(SUB, 5000, true)).await.unwrap();
    assert_eq!(
        first.received_messages.len(),
        limits::MAX_PULL_MESSAGES,
        "a larger max_messages is capped"
    );
    let rest = svc.pull(pull_request(SUB, 3, true)).await.unwrap();
    assert_eq!(
        rest.received_messages.len(),
        (available - limits::MAX_PULL_MESSAGES).min(3)
    );
}

#[tokio::test]
async fn return_immediately_answers_an_empty_subscription_at_once() {
    let Fixture { svc, .. } = with_subscription().await;
    let answered = svc
        .pull(pull_request(SUB, 10, true))
        .now_or_never()
        .expect("return_immediately does not wait");
    assert!(answered.unwrap().received_messages.is_empty());

    let long_poll = svc.pull(pull_request(SUB, 10, false));
    assert!(
        long_poll.now_or_never().is_none(),
        "without return_immediately an empty pull waits"
    );
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_a_message_is_published() {
    let Fixture { svc, .. } = with_subscription().await;
    let mut long_poll = pin!(svc.pull(pull_request(SUB, 10, false)));
    assert!(
        futures::poll!(long_poll.as_mut()).is_pending(),
        "nothing to deliver yet: the pull waits"
    );

    let publisher = svc.clone();
    let ids = tokio::spawn(async move { publish(&publisher, &[b"wake"]).await })
        .await
        .unwrap();

    // The publish has completed, so the waiting pull has been woken: its very next poll answers,
    // long before the long poll would have run out.
    let std::task::Poll::Ready(answered) = futures::poll!(long_poll.as_mut()) else {
        panic!("the long poll was not woken by the publish");
    };
    let received = answered.unwrap().received_messages;
    assert_eq!(data(&received), ["wake"]);
    assert_eq!(received[0].message.as_ref().unwrap().message_id, ids[0]);
}

#[tokio::test]
async fn pull_reports_missing_and_detached_subscriptions() {
    let Fixture { svc, .. } = with_subscription().await;
    assert_error(
        svc.pull(pull_request("projects/p/subscriptions/nope", 1, true))
            .await
            .unwrap_err(),
        Code::NotFound,
        "resource=nope",
    );
    svc.detach_subscription(v1::DetachSubscriptionRequest {
        subscription: SUB.into(),
    })
    .await
    .unwrap();
    assert_eq!(
        svc.pull(pull_request(SUB, 1, true)).await.unwrap_err().code,
        Code::FailedPrecondition
    );
    let got = svc
        .get_subscription(v1::GetSubscriptionRequest {
            subscription: SUB.into(),
        })
        .await
        .unwrap();
    assert!(got.detached, "the subscription shows it is detached");
}

#[tokio::test]
async fn acknowledged_messages_do_not_come_back() {
    let Fixture { svc, clock } = with_subscription().await;
    let ack = |ids: Vec<String>| v1::AcknowledgeRequest {
        subscription: SUB.into(),
        ack_ids: ids,
    };
    assert_error(
        svc.acknowledge(ack(vec![])).await.unwrap_err(),
        Code::InvalidArgument,
        "ack_ids",
    );
    svc.acknowledge(ack(vec!["a".into(), "b".into()]))
        .await
        .expect("unknown ack ids are not an error");

    publish(&svc, &[b"acked", b"kept"]).await;
    let leased = pull_now(&svc, SUB).await;
    assert_eq!(data(&leased), ["acked", "kept"]);
    svc.acknowledge(ack(vec![leased[0].ack_id.clone()]))
        .await
        .unwrap();
    clock.advance(DEFAULT_LEASE + Duration::from_secs(1));
    assert_eq!(
        data(&pull_now(&svc, SUB).await),
        ["kept"],
        "once the leases ran out only the unacknowledged message comes back"
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
async fn modify_ack_deadline_extends_or_ends_leases() {
    let Fixture { svc, clock } = with_subscription().await;
    let some = vec!["a".to_string()];
    for (seconds, ids, needle) in [
        (601, &some, "ack_deadline_seconds"),
        (-1, &some, "ack_deadline_seconds"),
        (10, &Vec::new(), "ack_ids"),
    ] {
        assert_error(
            svc.modify_ack_deadline(modack(seconds, ids))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            needle,
        );
    }

    publish(&svc, &[b"m"]).await;
    let leased = ack_ids(&pull_now(&svc, SUB).await);
    svc.modify_ack_deadline(modack(60, &leased)).await.unwrap();
    clock.advance(DEFAULT_LEASE + Duration::from_secs(1));
    assert!(
        pull_now(&svc, SUB).await.is_empty(),
        "the lease was extended past the default 10 s"
    );
    clock.advance(Duration::from_secs(49));
    let again = pull_now(&svc, SUB).await;
    assert_eq!(data(&again), ["m"], "and ran out after 60 s");

    svc.modify_ack_deadline(modack(0, &ack_ids(&again)))
        .await
        .unwrap();
    assert_eq!(
        data(&pull_now(&svc, SUB).await),
        ["m"],
        "a deadline of 0 nacks: without a retry policy the message is redelivered at once"
    );

    let missing = v1::ModifyAckDeadlineRequest {
        subscription: "projects/p/subscriptions/nope".into(),
        ..modack(10, &some)
    };
    assert_error(
        svc.modify_ack_deadline(missing).await.unwrap_err(),
        Code::NotFound,
        "resource=nope",
    );
}

#[tokio::test]
async fn delivery_attempts_are_counted_with_a_dead_letter_policy() {
    let Fixture { svc, .. } = with_subscription().await;
    create_topic(&svc, "projects/p/topics/dead").await;
    let counted = "projects/p/subscriptions/counted";
    svc.create_subscription(v1::Subscription {
        name: counted.into(),
        topic: TOPIC.into(),
        dead_letter_policy: Some(v1::DeadLetterPolicy {
            dead_letter_topic: "projects/p/topics/dead".into(),
            max_delivery_attempts: 5,
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    publish(&svc, &[b"m"]).await;

    let first = pull_now(&svc, counted).await;
    assert_eq!(first[0].delivery_attempt, 1);
    svc.modify_ack_deadline(v1::ModifyAckDeadlineRequest {
        subscription: counted.into(),
        ack_ids: ack_ids(&first),
        ack_deadline_seconds: 0,
    })
    .await
    .unwrap();
    let second = pull_now(&svc, counted).await;
    assert_eq!(
        (data(&second), second[0].delivery_attempt),
        (vec!["m".to_string()], 2)
    );
}

#[tokio::test]
async fn modify_push_config_switches_between_pull_and_push() {
    let Fixture { svc, .. } = with_subscription().await;
    let req = |sub: &str, endpoint: &str| v1::ModifyPushConfigRequest {
        subscription: sub.into(),
        push_config: Some(v1::PushConfig {
            push_endpoint: endpoint.into(),
            ..Default::default()
        }),
    };
    let endpoint = || async {
        let got = svc
            .get_subscription(v1::GetSubscriptionRequest {
                subscription: SUB.into(),
            })
            .await
            .unwrap();
        got.push_config.map(|c| c.push_endpoint).unwrap_or_default()
    };
    svc.modify_push_config(req(SUB, "https://x.example/push"))
        .await
        .unwrap();
    assert_eq!(
        endpoint().await,
        "https://x.example/push",
        "now a push subscription"
    );
    svc.modify_push_config(req(SUB, "")).await.unwrap();
    assert_eq!(endpoint().await, "", "and back to pull");
    assert_error(
        svc.modify_push_config(req("projects/p/subscriptions/nope", ""))
            .await
            .unwrap_err(),
        Code::NotFound,
        "resource=nope",
    );
}

#[tokio::test]
async fn a_topic_lists_no_snapshots() {
    let Fixture { svc, .. } = with_subscription().await;
    let req = |topic: &str| v1::ListTopicSnapshotsRequest {
        topic: topic.into(),
        ..Default::default()
    };
    let listed = svc.list_topic_snapshots(req(TOPIC)).await.unwrap();
    assert_eq!(listed, v1::ListTopicSnapshotsResponse::default());

    let e = svc
        .list_topic_snapshots(req("projects/p/topics/nope"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (Code::NotFound, "Resource not found (resource=nope).")
    );
    assert_eq!(
        svc.list_topic_snapshots(req("topics/orders"))
            .await
            .unwrap_err()
            .code,
        Code::InvalidArgument
    );
    let negative = v1::ListTopicSnapshotsRequest {
        page_size: -1,
        ..req(TOPIC)
    };
    assert_eq!(
        svc.list_topic_snapshots(negative).await.unwrap_err().code,
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn delete_and_detach_report_missing_subscriptions() {
    let Fixture { svc, .. } = with_subscription().await;
    publish(&svc, &[b"backlog"]).await;
    svc.delete_subscription(v1::DeleteSubscriptionRequest {
        subscription: SUB.into(),
    })
    .await
    .unwrap();
    let name = SubscriptionName::parse(SUB).unwrap();
    assert!(
        matches!(
            svc.store().get_subscription(&name).await,
            Err(converge_core::Error::NotFound(_))
        ),
        "the engine no longer has it"
    );
    assert_eq!(
        svc.pull(pull_request(SUB, 1, true)).await.unwrap_err().code,
        Code::NotFound
    );
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

    create_subscription(&svc, SUB, TOPIC).await;
    assert!(
        pull_now(&svc, SUB).await.is_empty(),
        "a new subscription of the same name starts empty"
    );
}
