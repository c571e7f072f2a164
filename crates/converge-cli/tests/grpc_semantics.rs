//! The semantics of Google Cloud Pub/Sub, checked over gRPC against the real `converge` binary
//! with the generated client stubs of `google.pubsub.v1`.
//!
//! Each test starts its own broker (see `common`), so tests are independent and run in
//! parallel. Time-based behaviour (leases, backoffs, retention, expiration) is reached by moving
//! the broker's test clock, never by sleeping.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::pubsub::{self, PubsubMessage};
use common::{
    Broker, Grpc, PROJECT, ack_ids, data_of, message, message_with, new_subscription_name,
    new_topic_name, subscription, subscription_name, topic_name, unique_id,
};
use prost_types::FieldMask;
use tonic::Code;

/// Seconds in a day.
const DAY: i64 = 24 * 3600;

/// Asserts that `result` failed with `code` and that its message contains every fragment, so
/// that an error names the field or limit concerned, not just the right code.
#[track_caller]
fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    fragments: &[&str],
) {
    let status = match result {
        Ok(value) => panic!("expected {code:?} containing {fragments:?}, got Ok({value:?})"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{status:?}");
    for fragment in fragments {
        assert!(
            status.message().contains(fragment),
            "{:?} does not mention {fragment:?}",
            status.message()
        );
    }
}

/// A broker with one topic and one default subscription to it.
async fn broker_with_subscription() -> (Broker, Grpc, String, String) {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("topic");
    let sub = new_subscription_name("sub");
    grpc.create_topic(&topic).await;
    grpc.create_subscription(subscription(&sub, &topic)).await;
    (broker, grpc, topic, sub)
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

fn seconds(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The only message of a pull answer; panics naming what came instead.
#[track_caller]
fn single(received: &[pubsub::ReceivedMessage]) -> &pubsub::ReceivedMessage {
    assert_eq!(
        received.len(),
        1,
        "expected one message, got {:?}",
        data_of(received)
    );
    &received[0]
}

// ---------------------------------------------------------------------------------------------
// Names

#[tokio::test]
async fn invalid_ids_are_invalid_argument() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("topic");
    grpc.create_topic(&topic).await;
    let too_long = format!("a{}", "b".repeat(255));
    let cases: [(&str, &str); 5] = [
        ("ab", "between 3 and 255"),
        (&too_long, "between 3 and 255"),
        ("bad*char", "'*'"),
        ("1starts-with-digit", "start with a letter"),
        ("goog-reserved", "goog"),
    ];
    for (id, why) in cases {
        let created = grpc
            .try_create_topic(pubsub::Topic {
                name: topic_name(id),
                ..Default::default()
            })
            .await;
        assert_status(created, Code::InvalidArgument, &["topic", why]);
        let created = grpc
            .try_create_subscription(subscription(&subscription_name(id), &topic))
            .await;
        assert_status(created, Code::InvalidArgument, &["subscription", why]);
    }
    let malformed = grpc
        .publisher
        .clone()
        .get_topic(pubsub::GetTopicRequest {
            topic: "topics/x-y-z".into(),
        })
        .await;
    assert_status(malformed, Code::InvalidArgument, &["topics/x-y-z"]);
}

#[tokio::test]
async fn unknown_resources_are_not_found() {
    let (_broker, grpc, topic, _sub) = broker_with_subscription().await;
    let missing_topic = new_topic_name("missing");
    let missing_sub = new_subscription_name("missing");
    let missing_topic_id = missing_topic.rsplit('/').next().unwrap();
    let missing_sub_id = missing_sub.rsplit('/').next().unwrap();

    let got = grpc
        .publisher
        .clone()
        .get_topic(pubsub::GetTopicRequest {
            topic: missing_topic.clone(),
        })
        .await;
    assert_status(got, Code::NotFound, &[missing_topic_id]);
    assert_status(
        grpc.publish(&missing_topic, vec![message("x")]).await,
        Code::NotFound,
        &[missing_topic_id],
    );
    let deleted = grpc
        .publisher
        .clone()
        .delete_topic(pubsub::DeleteTopicRequest {
            topic: missing_topic.clone(),
        })
        .await;
    assert_status(deleted, Code::NotFound, &[missing_topic_id]);
    let created = grpc
        .try_create_subscription(subscription(
            &new_subscription_name("orphan"),
            &missing_topic,
        ))
        .await;
    assert_status(created, Code::NotFound, &[missing_topic_id]);

    assert_status(
        grpc.get_subscription(&missing_sub).await,
        Code::NotFound,
        &[missing_sub_id],
    );
    assert_status(
        grpc.try_pull(&missing_sub, 1, true).await,
        Code::NotFound,
        &[missing_sub_id],
    );
    let acked = grpc
        .subscriber
        .clone()
        .acknowledge(pubsub::AcknowledgeRequest {
            subscription: missing_sub.clone(),
            ack_ids: vec!["1-2-3".into()],
        })
        .await;
    assert_status(acked, Code::NotFound, &[missing_sub_id]);
    // The existing topic is still there: the errors above changed nothing.
    assert!(
        grpc.publisher
            .clone()
            .get_topic(pubsub::GetTopicRequest { topic })
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn duplicates_are_already_exists() {
    let (_broker, grpc, topic, sub) = broker_with_subscription().await;
    let again = grpc
        .try_create_topic(pubsub::Topic {
            name: topic.clone(),
            ..Default::default()
        })
        .await;
    assert_status(
        again,
        Code::AlreadyExists,
        &[topic.rsplit('/').next().unwrap()],
    );
    let again = grpc
        .try_create_subscription(subscription(&sub, &topic))
        .await;
    assert_status(
        again,
        Code::AlreadyExists,
        &[sub.rsplit('/').next().unwrap()],
    );
}

// ---------------------------------------------------------------------------------------------
// Publish limits

#[tokio::test]
async fn publish_limits_are_enforced() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("limits");
    grpc.create_topic(&topic).await;

    let empty = PubsubMessage::default();
    assert_status(
        grpc.publish(&topic, vec![empty]).await,
        Code::InvalidArgument,
        &["messages[0]", "attribute"],
    );

    let too_many = (0..1001).map(|i| message(&format!("m{i}"))).collect();
    assert_status(
        grpc.publish(&topic, too_many).await,
        Code::InvalidArgument,
        &["1001", "1000"],
    );

    let half = "x".repeat(5_000_001);
    let too_big = vec![message(&half), message(&half)];
    assert_status(
        grpc.publish(&topic, too_big).await,
        Code::InvalidArgument,
        &["10000002", "10000000"],
    );

    let attributes: Vec<(String, String)> = (0..101)
        .map(|i| (format!("k{i}"), "v".to_owned()))
        .collect();
    let attributes: Vec<(&str, &str)> = attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let many_attributes = message_with("x", &attributes);
    assert_status(
        grpc.publish(&topic, vec![many_attributes]).await,
        Code::InvalidArgument,
        &["101", "100"],
    );

    let long_key = "k".repeat(257);
    let bad_key = message_with("x", &[(&long_key, "v")]);
    assert_status(
        grpc.publish(&topic, vec![bad_key]).await,
        Code::InvalidArgument,
        &["257", "256"],
    );

    let long_value = "v".repeat(1025);
    let bad_value = message_with("x", &[("key", &long_value)]);
    assert_status(
        grpc.publish(&topic, vec![bad_value]).await,
        Code::InvalidArgument,
        &["1025", "1024"],
    );

    let bad_ordering_key = PubsubMessage {
        ordering_key: "o".repeat(1025),
        ..message("x")
    };
    assert_status(
        grpc.publish(&topic, vec![bad_ordering_key]).await,
        Code::InvalidArgument,
        &["rdering key", "1025", "1024"],
    );

    let first = PubsubMessage {
        ordering_key: "a".into(),
        ..message("x")
    };
    let second = PubsubMessage {
        ordering_key: "b".into(),
        ..message("y")
    };
    assert_status(
        grpc.publish(&topic, vec![first, second]).await,
        Code::InvalidArgument,
        &["rdering key"],
    );

    // The limits themselves are allowed: exactly 1000 messages, 100 attributes, 256-byte keys,
    // 1024-byte values and ordering keys, and a message with attributes only.
    let at_limit = (0..1000).map(|i| message(&format!("m{i}"))).collect();
    assert_status(
        grpc.publish(&topic, vec![]).await,
        Code::InvalidArgument,
        &["no messages"],
    );
    assert_eq!(
        grpc.publish(&topic, at_limit)
            .await
            .expect("1000 messages")
            .len(),
        1000
    );
    let attributes: Vec<(String, String)> = (0..100)
        .map(|i| (format!("k{i}"), "v".repeat(1024)))
        .collect();
    let attributes: Vec<(&str, &str)> = attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let full = PubsubMessage {
        ordering_key: "o".repeat(1024),
        ..message_with("x", &attributes)
    };
    let key_256 = "k".repeat(256);
    let attributes_only = message_with("", &[(&key_256, "v")]);
    grpc.publish(&topic, vec![full])
        .await
        .expect("a message at every per-message limit");
    grpc.publish(&topic, vec![attributes_only])
        .await
        .expect("an attributes-only message");
}

#[tokio::test]
async fn a_nine_megabyte_message_round_trips() {
    let (_broker, grpc, topic, sub) = broker_with_subscription().await;
    let data: Vec<u8> = (0..9_000_000u32).map(|i| (i % 251) as u8).collect();
    let big = PubsubMessage {
        data: data.clone(),
        ..Default::default()
    };
    let ids = grpc
        .publish(&topic, vec![big])
        .await
        .expect("a 9 MB message is within the limits");
    let received = grpc.pull(&sub, 1).await;
    let got = single(&received).message.as_ref().unwrap();
    assert_eq!(got.message_id, ids[0]);
    assert!(
        got.data == data,
        "the 9 MB payload came back altered ({} bytes)",
        got.data.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Topics

#[tokio::test]
async fn topic_create_get_update_list_delete() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let mut publisher = grpc.publisher.clone();
    let name = new_topic_name("orders");
    let created = publisher
        .create_topic(pubsub::Topic {
            name: name.clone(),
            labels: labels(&[("team", "a")]),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.name, name);
    assert_eq!(created.labels, labels(&[("team", "a")]));
    let got = publisher
        .get_topic(pubsub::GetTopicRequest {
            topic: name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);

    let patch = pubsub::Topic {
        name: name.clone(),
        labels: labels(&[("team", "b"), ("env", "test")]),
        message_retention_duration: seconds(3600),
        ..Default::default()
    };
    let updated = publisher
        .update_topic(pubsub::UpdateTopicRequest {
            topic: Some(patch.clone()),
            update_mask: mask(&["labels"]),
        })
        .await
        .expect("update labels")
        .into_inner();
    assert_eq!(updated.labels, labels(&[("team", "b"), ("env", "test")]));
    assert_eq!(
        updated.message_retention_duration, None,
        "fields outside the mask are unchanged"
    );
    let updated = publisher
        .update_topic(pubsub::UpdateTopicRequest {
            topic: Some(patch.clone()),
            update_mask: mask(&["messageRetentionDuration"]),
        })
        .await
        .expect("update retention in camelCase")
        .into_inner();
    assert_eq!(updated.message_retention_duration, seconds(3600));
    let got = publisher
        .get_topic(pubsub::GetTopicRequest {
            topic: name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, updated, "an update is stored");
    let bad = publisher
        .update_topic(pubsub::UpdateTopicRequest {
            topic: Some(patch.clone()),
            update_mask: mask(&["no_such_field"]),
        })
        .await;
    assert_status(bad, Code::InvalidArgument, &["no_such_field"]);
    let empty = publisher
        .update_topic(pubsub::UpdateTopicRequest {
            topic: Some(patch),
            update_mask: None,
        })
        .await;
    assert_status(empty, Code::InvalidArgument, &["update_mask"]);

    let mut names = vec![name.clone()];
    for _ in 0..4 {
        let other = new_topic_name("more");
        grpc.create_topic(&other).await;
        names.push(other);
    }
    names.sort();
    let mut listed = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = publisher
            .list_topics(pubsub::ListTopicsRequest {
                project: format!("projects/{PROJECT}"),
                page_size: 2,
                page_token,
            })
            .await
            .expect("list")
            .into_inner();
        assert!(
            page.topics.len() <= 2,
            "a page holds at most page_size topics"
        );
        listed.extend(page.topics.into_iter().map(|t| t.name));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(listed, names, "every topic once, sorted by name");
    assert_eq!(pages, 3);

    publisher
        .delete_topic(pubsub::DeleteTopicRequest {
            topic: name.clone(),
        })
        .await
        .expect("delete");
    let gone = publisher
        .get_topic(pubsub::GetTopicRequest { topic: name })
        .await;
    assert_status(gone, Code::NotFound, &[]);
}

#[tokio::test]
async fn topic_subscriptions_are_listed_and_outlive_the_topic() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let mut publisher = grpc.publisher.clone();
    let topic = new_topic_name("topic");
    let other_topic = new_topic_name("other");
    grpc.create_topic(&topic).await;
    grpc.create_topic(&other_topic).await;
    let mut subs: Vec<String> = (0..3).map(|_| new_subscription_name("sub")).collect();
    for sub in &subs {
        grpc.create_subscription(subscription(sub, &topic)).await;
    }
    grpc.create_subscription(subscription(
        &new_subscription_name("elsewhere"),
        &other_topic,
    ))
    .await;
    grpc.publish_data(&topic, &["kept"]).await;
    subs.sort();

    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = publisher
            .list_topic_subscriptions(pubsub::ListTopicSubscriptionsRequest {
                topic: topic.clone(),
                page_size: 2,
                page_token,
            })
            .await
            .expect("list topic subscriptions")
            .into_inner();
        listed.extend(page.subscriptions);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    listed.sort();
    assert_eq!(listed, subs);

    publisher
        .delete_topic(pubsub::DeleteTopicRequest {
            topic: topic.clone(),
        })
        .await
        .expect("delete topic");
    for sub in &subs {
        let got = grpc
            .get_subscription(sub)
            .await
            .expect("the subscription remains");
        assert_eq!(got.topic, "_deleted-topic_");
    }
    assert_eq!(
        data_of(&grpc.pull(&subs[0], 10).await),
        ["kept"],
        "its backlog is still readable"
    );
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

#[tokio::test]
async fn subscription_defaults_are_the_real_services() {
    let (_broker, grpc, topic, sub) = broker_with_subscription().await;
    let got = grpc.get_subscription(&sub).await.expect("get");
    assert_eq!(got.name, sub);
    assert_eq!(got.topic, topic);
    assert_eq!(got.ack_deadline_seconds, 10);
    assert_eq!(got.message_retention_duration, seconds(7 * DAY));
    assert_eq!(got.expiration_policy.and_then(|p| p.ttl), seconds(31 * DAY));
    assert_eq!(
        got.push_config,
        Some(pubsub::PushConfig::default()),
        "a pull subscription"
    );
    assert_eq!(got.retry_policy, None);
    assert_eq!(got.dead_letter_policy, None);
    assert!(!got.enable_message_ordering && !got.detached && !got.retain_acked_messages);
    assert!(got.filter.is_empty());
}

#[tokio::test]
async fn subscription_updates_follow_snake_and_camel_case_masks() {
    let (_broker, grpc, topic, sub) = broker_with_subscription().await;
    let mut subscriber = grpc.subscriber.clone();
    let patch = pubsub::Subscription {
        ack_deadline_seconds: 30,
        labels: labels(&[("team", "a")]),
        retry_policy: Some(pubsub::RetryPolicy {
            minimum_backoff: seconds(20),
            maximum_backoff: seconds(300),
        }),
        message_retention_duration: seconds(DAY),
        ..subscription(&sub, &topic)
    };
    let update = |paths: &[&str], patch: &pubsub::Subscription| pubsub::UpdateSubscriptionRequest {
        subscription: Some(patch.clone()),
        update_mask: mask(paths),
    };

    let updated = subscriber
        .update_subscription(update(&["ack_deadline_seconds"], &patch))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.ack_deadline_seconds, 30);
    assert!(updated.labels.is_empty(), "labels were not in the mask");
    assert_eq!(
        updated.message_retention_duration,
        seconds(7 * DAY),
        "retention was not in the mask"
    );

    let patch = pubsub::Subscription {
        ack_deadline_seconds: 45,
        ..patch
    };
    let updated = subscriber
        .update_subscription(update(
            &["ackDeadlineSeconds", "labels", "retryPolicy.minimumBackoff"],
            &patch,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.ack_deadline_seconds, 45);
    assert_eq!(updated.labels, labels(&[("team", "a")]));
    let retry = updated.retry_policy.expect("a retry policy");
    assert_eq!(retry.minimum_backoff, seconds(20));
    assert_eq!(
        retry.maximum_backoff,
        seconds(600),
        "the unset maximum shows its default"
    );

    let updated = subscriber
        .update_subscription(update(
            &["message_retention_duration", "retry_policy"],
            &patch,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.message_retention_duration, seconds(DAY));
    assert_eq!(
        updated.retry_policy.and_then(|r| r.maximum_backoff),
        seconds(300)
    );

    let got = grpc.get_subscription(&sub).await.unwrap();
    assert_eq!(got.ack_deadline_seconds, 45, "updates are stored");
    assert_eq!(got.message_retention_duration, seconds(DAY));

    let bad = subscriber
        .update_subscription(update(&["ackDeadlineSecs"], &patch))
        .await;
    assert_status(bad, Code::InvalidArgument, &["ack_deadline_secs"]);
    let out_of_range = pubsub::Subscription {
        ack_deadline_seconds: 601,
        ..patch.clone()
    };
    let bad = subscriber
        .update_subscription(update(&["ack_deadline_seconds"], &out_of_range))
        .await;
    assert_status(bad, Code::InvalidArgument, &["ack_deadline_seconds", "601"]);
    assert_eq!(
        grpc.get_subscription(&sub)
            .await
            .unwrap()
            .ack_deadline_seconds,
        45,
        "a rejected update changes nothing"
    );
}

#[tokio::test]
async fn subscriptions_list_in_pages_and_delete() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let mut subscriber = grpc.subscriber.clone();
    let topic = new_topic_name("topic");
    grpc.create_topic(&topic).await;
    let mut subs: Vec<String> = (0..5).map(|_| new_subscription_name("sub")).collect();
    for sub in &subs {
        grpc.create_subscription(subscription(sub, &topic)).await;
    }
    subs.sort();
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = subscriber
            .list_subscriptions(pubsub::ListSubscriptionsRequest {
                project: format!("projects/{PROJECT}"),
                page_size: 2,
                page_token,
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.subscriptions.len() <= 2);
        listed.extend(page.subscriptions.into_iter().map(|s| s.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(listed, subs);

    subscriber
        .delete_subscription(pubsub::DeleteSubscriptionRequest {
            subscription: subs[0].clone(),
        })
        .await
        .expect("delete");
    assert_status(grpc.get_subscription(&subs[0]).await, Code::NotFound, &[]);
    let again = subscriber
        .delete_subscription(pubsub::DeleteSubscriptionRequest {
            subscription: subs[0].clone(),
        })
        .await;
    assert_status(again, Code::NotFound, &[]);
    let page = subscriber
        .list_subscriptions(pubsub::ListSubscriptionsRequest {
            project: format!("projects/{PROJECT}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.subscriptions.len(), 4);
}

#[tokio::test]
async fn a_filter_cannot_be_changed() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("topic");
    grpc.create_topic(&topic).await;
    let sub = new_subscription_name("filtered");
    let filter = r#"attributes.region = "eu""#;
    grpc.create_subscription(pubsub::Subscription {
        filter: filter.into(),
        ..subscription(&sub, &topic)
    })
    .await;
    let patch = pubsub::Subscription {
        filter: r#"attributes.region = "us""#.into(),
        ..subscription(&sub, &topic)
    };
    let update = grpc
        .subscriber
        .clone()
        .update_subscription(pubsub::UpdateSubscriptionRequest {
            subscription: Some(patch),
            update_mask: mask(&["filter"]),
        })
        .await;
    assert_status(update, Code::InvalidArgument, &["filter"]);
    assert_eq!(grpc.get_subscription(&sub).await.unwrap().filter, filter);
}

#[tokio::test]
async fn a_bad_filter_names_its_position() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("topic");
    grpc.create_topic(&topic).await;
    let sub = new_subscription_name("filtered");
    for bad in [
        "attributes.x = ",
        r#"attributes.x = "a" AND"#,
        r#"data = "x""#,
    ] {
        let created = grpc
            .try_create_subscription(pubsub::Subscription {
                filter: bad.into(),
                ..subscription(&sub, &topic)
            })
            .await;
        assert_status(created, Code::InvalidArgument, &["filter", "position"]);
    }
    assert_status(grpc.get_subscription(&sub).await, Code::NotFound, &[]);
}

// ---------------------------------------------------------------------------------------------
// Delivery

#[tokio::test]
async fn subscriptions_receive_what_is_published_after_them_fanned_out() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("topic");
    grpc.create_topic(&topic).await;
    grpc.publish_data(&topic, &["before"]).await;
    let (a, b) = (new_subscription_name("a"), new_subscription_name("b"));
    grpc.create_subscription(subscription(&a, &topic)).await;
    grpc.create_subscription(subscription(&b, &topic)).await;
    let ids = grpc.publish_data(&topic, &["one", "two"]).await;
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    for sub in [&a, &b] {
        let received = grpc.pull(sub, 10).await;
        assert_eq!(data_of(&received), ["one", "two"], "{sub}");
        let got_ids: Vec<&str> = received
            .iter()
            .map(|r| r.message.as_ref().unwrap().message_id.as_str())
            .collect();
        assert_eq!(got_ids, ids.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            received.iter().all(|r| r.delivery_attempt == 0),
            "no dead-letter policy: attempt 0"
        );
        assert!(received[0].message.as_ref().unwrap().publish_time.is_some());
    }
}

#[tokio::test]
async fn ack_removes_and_nack_redelivers() {
    let (broker, grpc, topic, sub) = broker_with_subscription().await;
    grpc.publish_data(&topic, &["acked", "nacked"]).await;
    let received = grpc.pull(&sub, 10).await;
    assert_eq!(data_of(&received), ["acked", "nacked"]);
    assert!(
        grpc.pull(&sub, 10).await.is_empty(),
        "leased messages are not delivered twice"
    );

    grpc.ack(&sub, vec![received[0].ack_id.clone()]).await;
    grpc.nack(&sub, vec![received[1].ack_id.clone()]).await;
    let again = grpc.pull(&sub, 10).await;
    assert_eq!(
        data_of(&again),
        ["nacked"],
        "a nack redelivers at once without a retry policy"
    );
    assert_ne!(
        again[0].ack_id, received[1].ack_id,
        "each delivery has its own ack id"
    );
    grpc.ack(&sub, ack_ids(&again)).await;

    broker.advance_clock(Duration::from_secs(11)).await;
    assert!(
        grpc.pull(&sub, 10).await.is_empty(),
        "acknowledged messages never come back"
    );
}

#[tokio::test]
async fn an_expired_lease_is_delivered_again() {
    let (broker, grpc, topic, sub) = broker_with_subscription().await;
    grpc.publish_data(&topic, &["m"]).await;
    let first = grpc.pull(&sub, 10).await;
    assert_eq!(data_of(&first), ["m"]);
    broker.advance_clock(Duration::from_secs(9)).await;
    assert!(
        grpc.pull(&sub, 10).await.is_empty(),
        "the lease of 10 s still holds after 9 s"
    );
    broker.advance_clock(Duration::from_secs(2)).await;
    let second = grpc.pull(&sub, 10).await;
    assert_eq!(
        data_of(&second),
        ["m"],
        "redelivered once the ack deadline passed"
    );

    // The first delivery's ack id expired with its lease: acking it is OK and does nothing.
    grpc.ack(&sub, ack_ids(&first)).await;
    broker.advance_clock(Duration::from_secs(11)).await;
    assert_eq!(
        data_of(&grpc.pull(&sub, 10).await),
        ["m"],
        "a stale ack id did not acknowledge"
    );
}

#[tokio::test]
async fn modify_ack_deadline_extends_the_lease() {
    let (broker, grpc, topic, sub) = broker_with_subscription().await;
    grpc.publish_data(&topic, &["m"]).await;
    let received = grpc.pull(&sub, 10).await;
    grpc.modify_ack_deadline(&sub, ack_ids(&received), 60)
        .await
        .expect("modack 60");
    broker.advance_clock(Duration::from_secs(30)).await;
    assert!(
        grpc.pull(&sub, 10).await.is_empty(),
        "the extended lease holds past the 10 s deadline"
    );
    broker.advance_clock(Duration::from_secs(31)).await;
    assert_eq!(
        data_of(&grpc.pull(&sub, 10).await),
        ["m"],
        "and ends after 60 s"
    );
}

#[tokio::test]
async fn acks_of_unknown_or_used_ack_ids_are_ok() {
    let (broker, grpc, topic, sub) = broker_with_subscription().await;
    grpc.publish_data(&topic, &["m"]).await;
    let received = grpc.pull(&sub, 10).await;
    grpc.ack(&sub, ack_ids(&received)).await;
    grpc.ack(&sub, ack_ids(&received)).await;
    grpc.ack(&sub, vec!["not-an-ack-id".into(), "ffff-ffff-ffff".into()])
        .await;
    grpc.modify_ack_deadline(&sub, vec!["not-an-ack-id".into()], 30)
        .await
        .expect("modack of an unknown id");
    broker.advance_clock(Duration::from_secs(11)).await;
    assert!(grpc.pull(&sub, 10).await.is_empty());
}

#[tokio::test]
async fn ack_deadlines_are_bounded() {
    let (_broker, grpc, topic, sub) = broker_with_subscription().await;
    for bad in [9, 601, -1] {
        let created = grpc
            .try_create_subscription(pubsub::Subscription {
                ack_deadline_seconds: bad,
                ..subscription(&new_subscription_name("bad"), &topic)
            })
            .await;
        assert_status(
            created,
            Code::InvalidArgument,
            &["ack_deadline_seconds", &bad.to_string()],
        );
    }
    for good in [10, 600] {
        let created = grpc
            .create_subscription(pubsub::Subscription {
                ack_deadline_seconds: good,
                ..subscription(&new_subscription_name("good"), &topic)
            })
            .await;
        assert_eq!(created.ack_deadline_seconds, good);
    }
    grpc.publish_data(&topic, &["m"]).await;
    let received = grpc.pull(&sub, 1).await;
    let modack = grpc
        .modify_ack_deadline(&sub, ack_ids(&received), 601)
        .await;
    assert_status(
        modack,
        Code::InvalidArgument,
        &["ack_deadline_seconds", "601"],
    );
    grpc.modify_ack_deadline(&sub, ack_ids(&received), 600)
        .await
        .expect("600 is the maximum");
}

#[tokio::test]
async fn a_long_poll_returns_when_a_message_arrives() {
    let (_broker, grpc, topic, sub) = broker_with_subscription().await;
    let waiting = tokio::spawn({
        let grpc = grpc.clone();
        let sub = sub.clone();
        async move { grpc.pull_wait(&sub, 10).await }
    });
    // Gives the pull time to reach the broker before the publish; if it arrives later it finds
    // the message at once, so the assertion below holds either way and cannot flake.
    tokio::time::sleep(Duration::from_millis(200)).await;
    grpc.publish_data(&topic, &["wake"]).await;
    // The broker's long poll lasts 10 s; an answer only at its end would hold no message.
    let received = tokio::time::timeout(Duration::from_secs(8), waiting)
        .await
        .expect("the waiting pull answered as the message arrived")
        .expect("the pull task");
    assert_eq!(data_of(&received), ["wake"]);
}

// ---------------------------------------------------------------------------------------------
// Retry policy

#[tokio::test]
async fn a_retry_policy_delays_redelivery_by_its_minimum_backoff() {
    let (broker, grpc, topic, _) = broker_with_subscription().await;
    let sub = new_subscription_name("backoff");
    grpc.create_subscription(pubsub::Subscription {
        retry_policy: Some(pubsub::RetryPolicy {
            minimum_backoff: seconds(10),
            maximum_backoff: seconds(600),
        }),
        ..subscription(&sub, &topic)
    })
    .await;
    grpc.publish_data(&topic, &["m"]).await;
    let received = grpc.pull(&sub, 10).await;
    grpc.nack(&sub, ack_ids(&received)).await;
    assert!(grpc.pull(&sub, 10).await.is_empty(), "not at once");
    broker.advance_clock(Duration::from_secs(9)).await;
    assert!(
        grpc.pull(&sub, 10).await.is_empty(),
        "not before the 10 s minimum backoff"
    );
    broker.advance_clock(Duration::from_millis(1500)).await;
    assert_eq!(
        data_of(&grpc.pull(&sub, 10).await),
        ["m"],
        "after the backoff"
    );
}

#[tokio::test]
async fn the_sns_preset_retries_immediately_first() {
    let (broker, grpc, topic, _) = broker_with_subscription().await;
    let sub = new_subscription_name("sns");
    grpc.create_subscription(pubsub::Subscription {
        labels: labels(&[("converge-retry-preset", "sns")]),
        ..subscription(&sub, &topic)
    })
    .await;
    grpc.publish_data(&topic, &["m"]).await;
    let mut received = grpc.pull(&sub, 10).await;
    for retry in 1..=3 {
        grpc.nack(&sub, ack_ids(&received)).await;
        received = grpc.pull(&sub, 10).await;
        assert_eq!(data_of(&received), ["m"], "immediate retry {retry}");
    }
    grpc.nack(&sub, ack_ids(&received)).await;
    assert!(
        grpc.pull(&sub, 10).await.is_empty(),
        "after 3 immediate retries the next one waits"
    );
    broker.advance_clock(Duration::from_secs(21)).await;
    assert_eq!(data_of(&grpc.pull(&sub, 10).await), ["m"], "20 s later");

    let bad = grpc
        .try_create_subscription(pubsub::Subscription {
            labels: labels(&[("converge-retry-preset", "fast")]),
            ..subscription(&new_subscription_name("bad"), &topic)
        })
        .await;
    assert_status(bad, Code::InvalidArgument, &["converge-retry-preset"]);
}

// ---------------------------------------------------------------------------------------------
// Dead letters

#[tokio::test]
async fn a_message_is_dead_lettered_after_max_delivery_attempts() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let (topic, dead_topic) = (new_topic_name("work"), new_topic_name("dead"));
    grpc.create_topic(&topic).await;
    grpc.create_topic(&dead_topic).await;
    let dead_sub = new_subscription_name("dead");
    grpc.create_subscription(subscription(&dead_sub, &dead_topic))
        .await;
    let sub_id = unique_id("worker");
    let sub = subscription_name(&sub_id);
    grpc.create_subscription(pubsub::Subscription {
        dead_letter_policy: Some(pubsub::DeadLetterPolicy {
            dead_letter_topic: dead_topic.clone(),
            max_delivery_attempts: 5,
        }),
        ..subscription(&sub, &topic)
    })
    .await;
    grpc.publish(&topic, vec![message_with("poison", &[("k", "v")])])
        .await
        .unwrap();

    for attempt in 1..=5 {
        let received = grpc.pull(&sub, 10).await;
        assert_eq!(single(&received).delivery_attempt, attempt);
        grpc.nack(&sub, ack_ids(&received)).await;
    }
    assert!(
        grpc.pull(&sub, 10).await.is_empty(),
        "after 5 attempts the message left the subscription"
    );
    let dead = grpc.pull_wait(&dead_sub, 10).await;
    let dead = single(&dead).message.as_ref().unwrap();
    assert_eq!(dead.data, b"poison");
    let attrs = &dead.attributes;
    assert_eq!(attrs["k"], "v");
    assert_eq!(attrs["CloudPubSubDeadLetterSourceSubscription"], sub_id);
    assert_eq!(
        attrs["CloudPubSubDeadLetterSourceSubscriptionProject"],
        PROJECT
    );
    assert_eq!(attrs["CloudPubSubDeadLetterSourceDeliveryCount"], "5");
    assert!(!attrs["CloudPubSubDeadLetterSourceTopicPublishTime"].is_empty());
}

#[tokio::test]
async fn max_delivery_attempts_are_bounded() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let (topic, dead_topic) = (new_topic_name("work"), new_topic_name("dead"));
    grpc.create_topic(&topic).await;
    grpc.create_topic(&dead_topic).await;
    let with_attempts = |n: i32, topic_of_dead: &str| pubsub::Subscription {
        dead_letter_policy: Some(pubsub::DeadLetterPolicy {
            dead_letter_topic: topic_of_dead.to_owned(),
            max_delivery_attempts: n,
        }),
        ..subscription(&new_subscription_name("sub"), &topic)
    };
    for bad in [4, 101] {
        let created = grpc
            .try_create_subscription(with_attempts(bad, &dead_topic))
            .await;
        assert_status(
            created,
            Code::InvalidArgument,
            &["dead_letter_policy.max_delivery_attempts", &bad.to_string()],
        );
    }
    for good in [5, 100] {
        let created = grpc
            .create_subscription(with_attempts(good, &dead_topic))
            .await;
        assert_eq!(
            created.dead_letter_policy.unwrap().max_delivery_attempts,
            good
        );
    }
    let missing = new_topic_name("missing");
    let created = grpc
        .try_create_subscription(with_attempts(5, &missing))
        .await;
    assert_status(
        created,
        Code::NotFound,
        &[missing.rsplit('/').next().unwrap()],
    );
}

// ---------------------------------------------------------------------------------------------
// Filters

#[tokio::test]
async fn a_filter_delivers_only_matching_messages() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("topic");
    grpc.create_topic(&topic).await;
    let sub = new_subscription_name("eu");
    grpc.create_subscription(pubsub::Subscription {
        filter: r#"attributes.region = "eu""#.into(),
        ..subscription(&sub, &topic)
    })
    .await;
    let messages = vec![
        message_with("us", &[("region", "us")]),
        message_with("eu", &[("region", "eu")]),
        message("none"),
        message_with("eu-prefixed", &[("region", "eu-west")]),
    ];
    grpc.publish(&topic, messages).await.unwrap();
    assert_eq!(
        broker.backlog(&sub).await,
        Some(1),
        "rejected messages are not backlog"
    );
    let received = grpc.pull(&sub, 10).await;
    assert_eq!(data_of(&received), ["eu"]);
    grpc.ack(&sub, ack_ids(&received)).await;
    broker.advance_clock(Duration::from_secs(601)).await;
    assert!(
        grpc.pull(&sub, 10).await.is_empty(),
        "non-matching messages are never delivered"
    );
    assert_eq!(broker.backlog(&sub).await, Some(0));
}

// ---------------------------------------------------------------------------------------------
// Ordering

#[tokio::test]
async fn ordering_keys_deliver_in_order_one_at_a_time() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("topic");
    grpc.create_topic(&topic).await;
    let sub = new_subscription_name("ordered");
    grpc.create_subscription(pubsub::Subscription {
        enable_message_ordering: true,
        ..subscription(&sub, &topic)
    })
    .await;
    let keyed = |data: &str, key: &str| PubsubMessage {
        ordering_key: key.into(),
        ..message(data)
    };
    grpc.publish(&topic, vec![keyed("a1", "a"), keyed("a2", "a")])
        .await
        .unwrap();
    grpc.publish(&topic, vec![keyed("b1", "b")]).await.unwrap();
    grpc.publish(&topic, vec![keyed("a3", "a")]).await.unwrap();

    let first = grpc.pull(&sub, 10).await;
    assert_eq!(
        data_of(&first),
        ["a1", "b1"],
        "one message per key in flight"
    );
    assert!(
        grpc.pull(&sub, 10).await.is_empty(),
        "a2 waits for a1's ack"
    );
    grpc.nack(&sub, vec![first[0].ack_id.clone()]).await;
    let again = grpc.pull(&sub, 10).await;
    assert_eq!(
        data_of(&again),
        ["a1"],
        "a nack redelivers the key's head first"
    );
    grpc.ack(&sub, ack_ids(&again)).await;
    let next = grpc.pull(&sub, 10).await;
    assert_eq!(data_of(&next), ["a2"]);
    assert_eq!(next[0].message.as_ref().unwrap().ordering_key, "a");
    grpc.ack(&sub, ack_ids(&next)).await;
    assert_eq!(data_of(&grpc.pull(&sub, 10).await), ["a3"]);
}

// ---------------------------------------------------------------------------------------------
// Retention and expiration

#[tokio::test]
async fn messages_older_than_the_retention_disappear() {
    let (broker, grpc, topic, long) = broker_with_subscription().await;
    let short = new_subscription_name("short");
    grpc.create_subscription(pubsub::Subscription {
        message_retention_duration: seconds(600),
        ..subscription(&short, &topic)
    })
    .await;
    grpc.publish_data(&topic, &["old"]).await;
    broker.advance_clock(Duration::from_secs(601)).await;
    assert!(
        grpc.pull(&short, 10).await.is_empty(),
        "older than the 10 min retention"
    );
    assert_eq!(
        data_of(&grpc.pull(&long, 10).await),
        ["old"],
        "the 7-day retention still holds it"
    );
}

#[tokio::test]
async fn an_unused_subscription_expires() {
    let (broker, grpc, topic, _) = broker_with_subscription().await;
    let sub = new_subscription_name("expiring");
    let created = grpc
        .create_subscription(pubsub::Subscription {
            expiration_policy: Some(pubsub::ExpirationPolicy { ttl: seconds(DAY) }),
            message_retention_duration: seconds(600),
            ..subscription(&sub, &topic)
        })
        .await;
    assert_eq!(created.expiration_policy.and_then(|p| p.ttl), seconds(DAY));
    broker.advance_clock(Duration::from_secs(23 * 3600)).await;
    assert!(
        grpc.get_subscription(&sub).await.is_ok(),
        "still there before its TTL"
    );
    broker.advance_clock(Duration::from_secs(2 * 3600)).await;
    assert_status(grpc.get_subscription(&sub).await, Code::NotFound, &[]);

    let short_ttl = grpc
        .try_create_subscription(pubsub::Subscription {
            expiration_policy: Some(pubsub::ExpirationPolicy { ttl: seconds(3600) }),
            ..subscription(&new_subscription_name("short"), &topic)
        })
        .await;
    assert_status(short_ttl, Code::InvalidArgument, &["expiration_policy.ttl"]);
}

// ---------------------------------------------------------------------------------------------
// Detach

#[tokio::test]
async fn a_detached_subscription_fails_to_pull_and_loses_its_backlog() {
    let (broker, grpc, topic, sub) = broker_with_subscription().await;
    grpc.publish_data(&topic, &["one", "two"]).await;
    assert_eq!(broker.backlog(&sub).await, Some(2));
    grpc.publisher
        .clone()
        .detach_subscription(pubsub::DetachSubscriptionRequest {
            subscription: sub.clone(),
        })
        .await
        .expect("detach");
    let pulled = grpc.try_pull(&sub, 10, true).await;
    assert_status(pulled, Code::FailedPrecondition, &[]);
    let got = grpc
        .get_subscription(&sub)
        .await
        .expect("a detached subscription remains");
    assert!(got.detached);
    assert_eq!(
        broker.backlog(&sub).await.unwrap_or(0),
        0,
        "its backlog is dropped"
    );
    grpc.publish_data(&topic, &["three"]).await;
    assert_eq!(
        broker.backlog(&sub).await.unwrap_or(0),
        0,
        "nothing new arrives"
    );
    let listed = grpc
        .publisher
        .clone()
        .list_topic_subscriptions(pubsub::ListTopicSubscriptionsRequest {
            topic,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !listed.subscriptions.contains(&sub),
        "the topic no longer lists it"
    );
}

// ---------------------------------------------------------------------------------------------
// Idempotent publish

#[tokio::test]
async fn an_idempotency_key_publishes_once() {
    let (broker, grpc, topic, sub) = broker_with_subscription().await;
    let keyed = |data: &str, key: &str| message_with(data, &[("converge-idempotency-key", key)]);
    let first = grpc
        .publish(&topic, vec![keyed("order", "order-42")])
        .await
        .unwrap();
    let again = grpc
        .publish(&topic, vec![keyed("order", "order-42")])
        .await
        .unwrap();
    assert_eq!(again, first, "the same key answers the same message id");
    let other = grpc
        .publish(&topic, vec![keyed("order", "order-43")])
        .await
        .unwrap();
    assert_ne!(other, first, "another key is another message");
    let received = grpc.pull(&sub, 10).await;
    assert_eq!(
        received.len(),
        2,
        "one delivery per key: {:?}",
        data_of(&received)
    );
    grpc.ack(&sub, ack_ids(&received)).await;
    broker.advance_clock(Duration::from_secs(11)).await;
    assert!(grpc.pull(&sub, 10).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Not implemented yet: an explicit answer, never a fake success

#[tokio::test]
async fn a_clean_restart_keeps_resources_and_unacked_messages() {
    let mut broker = Broker::start_on_disk();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("durable");
    let sub = new_subscription_name("durable");
    grpc.create_topic(&topic).await;
    grpc.create_subscription(pubsub::Subscription {
        ack_deadline_seconds: 42,
        ..subscription(&sub, &topic)
    })
    .await;
    let ids = grpc
        .publish_data(&topic, &["acked", "pending", "leased"])
        .await;
    let received = grpc.pull(&sub, 10).await;
    assert_eq!(data_of(&received), ["acked", "pending", "leased"]);
    grpc.ack(&sub, vec![received[0].ack_id.clone()]).await;
    grpc.nack(&sub, vec![received[1].ack_id.clone()]).await;
    drop(grpc);

    let status = broker.stop().await;
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean shutdown");
    broker.restart().await;
    let grpc = broker.grpc().await;
    let got = grpc
        .get_subscription(&sub)
        .await
        .expect("the subscription survived");
    assert_eq!(got.ack_deadline_seconds, 42);
    assert_eq!(got.topic, topic);
    let received = grpc.pull(&sub, 10).await;
    assert_eq!(
        data_of(&received),
        ["pending", "leased"],
        "unacked messages survive, leases do not, acks do"
    );
    let got_ids: Vec<&str> = received
        .iter()
        .map(|r| r.message.as_ref().unwrap().message_id.as_str())
        .collect();
    assert_eq!(
        got_ids,
        [ids[1].as_str(), ids[2].as_str()],
        "with their ids"
    );
    let later = grpc.publish_data(&topic, &["after"]).await;
    assert!(
        later[0].parse::<u64>().unwrap() > ids[2].parse::<u64>().unwrap(),
        "message ids keep increasing across restarts"
    );
}

// ---------------------------------------------------------------------------------------------
// Request logs

#[tokio::test]
async fn a_request_id_is_echoed_and_logged() {
    let (broker, grpc, topic, _) = broker_with_subscription().await;
    let mut request = tonic::Request::new(pubsub::GetTopicRequest {
        topic: topic.clone(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "abc".parse().unwrap());
    let response = grpc
        .publisher
        .clone()
        .get_topic(request)
        .await
        .expect("get topic");
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("abc")
    );

    let event = broker.wait_for_log(Duration::from_secs(5), |e| {
        e["logType"] == "REQUEST_INBOUND" && e["requestId"] == "abc"
    });
    assert_eq!(event["service"], "Publisher", "{event}");
    assert_eq!(event["method"], "GetTopic", "{event}");
    assert_eq!(event["status"], "OK", "{event}");
    assert_eq!(event["sourceIp"], "127.0.0.1", "{event}");
    assert!(
        event["duration"].as_f64().is_some_and(|d| d >= 0.0),
        "{event}"
    );

    let mut failing = tonic::Request::new(pubsub::GetTopicRequest {
        topic: new_topic_name("missing"),
    });
    failing
        .metadata_mut()
        .insert("x-request-id", "abc-missing".parse().unwrap());
    assert_status(
        grpc.publisher.clone().get_topic(failing).await,
        Code::NotFound,
        &[],
    );
    let event = broker.wait_for_log(Duration::from_secs(5), |e| {
        e["logType"] == "REQUEST_INBOUND" && e["requestId"] == "abc-missing"
    });
    assert_eq!(event["status"], "NOT_FOUND", "{event}");

    let response = grpc
        .publisher
        .clone()
        .get_topic(pubsub::GetTopicRequest { topic })
        .await
        .unwrap();
    let generated = response
        .metadata()
        .get("x-request-id")
        .expect("a generated request id")
        .to_str()
        .unwrap();
    assert!(!generated.is_empty() && generated != "abc");
}
