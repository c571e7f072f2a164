//! The parts that need no store: field masks, conversions, defaults, validation messages.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use converge_core::{
    AckId, MessageId, ReceivedMessage, StoredMessage, SubscriptionName, TopicName,
};
use prost_types::FieldMask;
use tonic::Code;

use crate::proto as v1;
use crate::service::convert::{self, duration_from_proto, duration_to_proto};
use crate::service::field_mask::{self, MaskEntry, mask_entry};
use crate::service::publisher::topic_from_proto;
use crate::service::subscriber::{Kept, subscription_from_proto};
use crate::service::{ApiError, page_request, store_error};

fn secs(s: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: s,
        nanos: 0,
    }
}

fn topic_name() -> TopicName {
    TopicName::parse("projects/p/topics/orders").unwrap()
}

fn sub_name() -> SubscriptionName {
    SubscriptionName::parse("projects/p/subscriptions/workers").unwrap()
}

fn kept() -> Kept {
    Kept {
        topic: Some(topic_name()),
        created: SystemTime::UNIX_EPOCH,
        detached: false,
    }
}

fn sub_resource() -> v1::Subscription {
    v1::Subscription {
        name: sub_name().to_string(),
        topic: topic_name().to_string(),
        ..Default::default()
    }
}

/// The error of building a subscription from `edit(default resource)`.
fn sub_error(edit: impl FnOnce(&mut v1::Subscription)) -> ApiError {
    let mut r = sub_resource();
    edit(&mut r);
    subscription_from_proto(&r, sub_name(), kept()).expect_err("the resource should be rejected")
}

fn assert_invalid(e: &ApiError, needles: &[&str]) {
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    for n in needles {
        assert!(
            e.message.contains(n),
            "message {:?} should contain {n:?}",
            e.message
        );
    }
}

// ----- field masks -----

#[test]
fn mask_paths_are_normalised_to_snake_case() {
    for (given, want) in [
        ("ackDeadlineSeconds", "ack_deadline_seconds"),
        ("ack_deadline_seconds", "ack_deadline_seconds"),
        ("pushConfig.pushEndpoint", "push_config.push_endpoint"),
        (
            "retry_policy.minimum_backoff",
            "retry_policy.minimum_backoff",
        ),
        ("labels", "labels"),
    ] {
        assert_eq!(field_mask::to_snake_case(given), want);
    }
}

#[test]
fn an_empty_or_missing_mask_is_rejected() {
    let empty = FieldMask { paths: vec![] };
    for mask in [None, Some(&empty)] {
        let e = field_mask::normalized_paths(mask, "UpdateTopicRequest").unwrap_err();
        assert_invalid(&e, &["update_mask", "UpdateTopicRequest"]);
    }
}

#[test]
fn mask_paths_split_on_commas_and_deduplicate() {
    let mask = FieldMask {
        paths: vec![
            "labels,ackDeadlineSeconds".into(),
            "ack_deadline_seconds".into(),
        ],
    };
    let paths = field_mask::normalized_paths(Some(&mask), "R").unwrap();
    assert_eq!(paths, ["labels", "ack_deadline_seconds"]);
}

#[test]
fn an_unknown_path_applies_nothing() {
    const TABLE: &[MaskEntry<v1::Subscription>] = &[
        mask_entry!("labels", labels),
        mask_entry!("retry_policy.minimum_backoff", retry_policy.minimum_backoff),
    ];
    let mut target = v1::Subscription::default();
    let source = v1::Subscription {
        labels: HashMap::from([("a".into(), "b".into())]),
        retry_policy: Some(v1::RetryPolicy {
            minimum_backoff: Some(secs(5)),
            maximum_backoff: Some(secs(50)),
        }),
        ..Default::default()
    };
    let paths = vec!["labels".to_string(), "bogus".to_string()];
    let e =
        field_mask::apply(&mut target, &source, &paths, TABLE, "R", "Subscription").unwrap_err();
    assert_invalid(&e, &["'bogus'", "Subscription"]);
    assert_eq!(target, v1::Subscription::default());

    let paths = vec![
        "labels".to_string(),
        "retry_policy.minimum_backoff".to_string(),
    ];
    field_mask::apply(&mut target, &source, &paths, TABLE, "R", "Subscription").unwrap();
    assert_eq!(target.labels, source.labels);
    // Only the nested field is copied: the parent is created, its other field left unset.
    assert_eq!(
        target.retry_policy,
        Some(v1::RetryPolicy {
            minimum_backoff: Some(secs(5)),
            maximum_backoff: None
        })
    );
}

// ----- plain conversions -----

#[test]
fn durations_convert_both_ways_and_negative_ones_are_rejected() {
    let d = Duration::new(90, 500);
    assert_eq!(duration_from_proto(&duration_to_proto(d), "f").unwrap(), d);
    assert_invalid(
        &duration_from_proto(&secs(-1), "retry_policy.minimum_backoff").unwrap_err(),
        &["retry_policy.minimum_backoff"],
    );
    let mixed = prost_types::Duration {
        seconds: 1,
        nanos: -5,
    };
    assert_invalid(
        &duration_from_proto(&mixed, "ttl").unwrap_err(),
        &["ttl", "malformed"],
    );
}

#[test]
fn a_received_message_carries_id_time_and_attempt() {
    let r = ReceivedMessage {
        ack_id: AckId("ack-1".into()),
        message: StoredMessage {
            id: MessageId(42),
            publish_time: SystemTime::UNIX_EPOCH + Duration::from_millis(2_250),
            data: Bytes::from_static(b"hi"),
            attributes: HashMap::from([("k".into(), "v".into())]),
            ordering_key: "ok".into(),
        },
        delivery_attempt: 3,
        attempts: 3,
    };
    let out = convert::received_message(r);
    assert_eq!(out.ack_id, "ack-1");
    assert_eq!(out.delivery_attempt, 3);
    let m = out.message.unwrap();
    assert_eq!(m.message_id, "42");
    assert_eq!(
        m.publish_time,
        Some(prost_types::Timestamp {
            seconds: 2,
            nanos: 250_000_000
        })
    );
    assert_eq!(
        (m.data.as_slice(), m.ordering_key.as_str()),
        (&b"hi"[..], "ok")
    );
    assert_eq!(m.attributes["k"], "v");
}

#[test]
fn a_published_message_ignores_client_set_id_and_time() {
    let m = v1::PubsubMessage {
        data: b"x".to_vec(),
        message_id: "999".into(),
        publish_time: Some(prost_types::Timestamp {
            seconds: 5,
            nanos: 0,
        }),
        ordering_key: "k".into(),
        ..Default::default()
    };
    let n = convert::new_message(m);
    assert_eq!((n.data.as_ref(), n.ordering_key.as_str()), (&b"x"[..], "k"));
}

// ----- topics -----

#[test]
fn a_topic_round_trips_with_broker_owned_fields_overwritten() {
    let written = v1::Topic {
        name: topic_name().to_string(),
        labels: HashMap::from([("team".into(), "core".into())]),
        kms_key_name: "projects/p/locations/l/keyRings/r/cryptoKeys/k".into(),
        message_retention_duration: Some(secs(3600)),
        satisfies_pzs: true,
        ..Default::default()
    };
    let topic = topic_from_proto(&written, topic_name()).unwrap();
    assert_eq!(topic.message_retention, Some(Duration::from_secs(3600)));
    assert_eq!(
        topic.dedup_window,
        converge_core::topic::DEFAULT_DEDUP_WINDOW
    );
    let out = convert::topic_to_proto(&topic).unwrap();
    let want = v1::Topic {
        state: v1::topic::State::Active as i32,
        satisfies_pzs: false,
        ..written
    };
    assert_eq!(out, want);
}

#[test]
fn topic_validation_names_the_field_and_limit() {
    let t = |edit: fn(&mut v1::Topic)| {
        let mut r = v1::Topic {
            name: topic_name().to_string(),
            ..Default::default()
        };
        edit(&mut r);
        topic_from_proto(&r, topic_name()).unwrap_err()
    };
    assert_invalid(
        &t(|r| r.message_retention_duration = Some(secs(60))),
        &["message_retention_duration"],
    );
    assert_invalid(
        &t(|r| r.labels = HashMap::from([("Bad".into(), String::new())])),
        &["Bad"],
    );
    assert_invalid(
        &t(|r| r.labels = HashMap::from([("converge-dedup-window".into(), "1s".into())])),
        &["converge-dedup-window"],
    );
}

#[test]
fn the_dedup_window_label_sets_the_topic_window() {
    let r = v1::Topic {
        labels: HashMap::from([("converge-dedup-window".into(), "2h".into())]),
        ..Default::default()
    };
    assert_eq!(
        topic_from_proto(&r, topic_name()).unwrap().dedup_window,
        Duration::from_secs(7200)
    );
}

// ----- subscriptions -----

#[test]
fn an_empty_subscription_gets_the_real_service_defaults() {
    let sub = subscription_from_proto(&sub_resource(), sub_name(), kept()).unwrap();
    assert_eq!(sub.ack_deadline, Duration::from_secs(10));
    assert_eq!(sub.message_retention, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(
        sub.expiration_ttl,
        Some(Duration::from_secs(31 * 24 * 3600))
    );
    assert_eq!(
        (sub.retry.clone(), sub.dead_letter_policy.clone()),
        (None, None)
    );

    let out = convert::subscription_to_proto(&sub).unwrap();
    assert_eq!(out.ack_deadline_seconds, 10);
    assert_eq!(out.message_retention_duration, Some(secs(604_800)));
    assert_eq!(
        out.expiration_policy,
        Some(v1::ExpirationPolicy {
            ttl: Some(secs(2_678_400))
        })
    );
    assert_eq!(out.push_config, Some(v1::PushConfig::default()));
    assert_eq!(out.state, v1::subscription::State::Active as i32);
    assert_eq!(out.retry_policy, None);
}

#[test]
fn an_empty_expiration_policy_means_never() {
    let mut r = sub_resource();
    r.expiration_policy = Some(v1::ExpirationPolicy { ttl: None });
    let sub = subscription_from_proto(&r, sub_name(), kept()).unwrap();
    assert_eq!(sub.expiration_ttl, None);
    let out = convert::subscription_to_proto(&sub).unwrap();
    assert_eq!(
        out.expiration_policy,
        Some(v1::ExpirationPolicy { ttl: None })
    );
}

#[test]
fn a_retry_policy_gets_default_backoffs_and_a_schedule() {
    let mut r = sub_resource();
    r.retry_policy = Some(v1::RetryPolicy {
        minimum_backoff: Some(secs(5)),
        maximum_backoff: None,
    });
    let sub = subscription_from_proto(&r, sub_name(), kept()).unwrap();
    let schedule = sub.retry.clone().unwrap();
    assert_eq!(
        (schedule.minimum_backoff, schedule.maximum_backoff),
        (Duration::from_secs(5), Duration::from_secs(600))
    );
    let out = convert::subscription_to_proto(&sub).unwrap();
    assert_eq!(
        out.retry_policy,
        Some(v1::RetryPolicy {
            minimum_backoff: Some(secs(5)),
            maximum_backoff: Some(secs(600))
        })
    );
}

#[test]
fn a_deleted_topic_and_detachment_show_on_the_way_out() {
    let mut sub = subscription_from_proto(&sub_resource(), sub_name(), kept()).unwrap();
    sub.topic = None;
    sub.detached = true;
    let out = convert::subscription_to_proto(&sub).unwrap();
    assert_eq!(out.topic, "_deleted-topic_");
    assert!(out.detached);
}

#[test]
fn dead_letter_policy_defaults_to_five_attempts() {
    let mut r = sub_resource();
    r.dead_letter_policy = Some(v1::DeadLetterPolicy {
        dead_letter_topic: "projects/p/topics/dead".into(),
        max_delivery_attempts: 0,
    });
    let sub = subscription_from_proto(&r, sub_name(), kept()).unwrap();
    let out = convert::subscription_to_proto(&sub).unwrap();
    assert_eq!(out.dead_letter_policy.unwrap().max_delivery_attempts, 5);
}

#[test]
fn subscription_validation_names_the_field_and_limit() {
    assert_invalid(
        &sub_error(|r| r.ack_deadline_seconds = 5),
        &["ack_deadline_seconds", "10", "600"],
    );
    assert_invalid(
        &sub_error(|r| r.ack_deadline_seconds = 601),
        &["ack_deadline_seconds"],
    );
    assert_invalid(
        &sub_error(|r| r.message_retention_duration = Some(secs(60))),
        &["message_retention_duration"],
    );
    assert_invalid(
        &sub_error(|r| {
            r.expiration_policy = Some(v1::ExpirationPolicy {
                ttl: Some(secs(3600)),
            })
        }),
        &["expiration_policy.ttl"],
    );
    assert_invalid(
        &sub_error(|r| {
            r.message_retention_duration = Some(secs(3 * 86_400));
            r.expiration_policy = Some(v1::ExpirationPolicy {
                ttl: Some(secs(86_400)),
            });
        }),
        &["expiration_policy.ttl", "message_retention_duration"],
    );
    assert_invalid(
        &sub_error(|r| r.filter = "attributes.x = ".into()),
        &["filter"],
    );
    assert_invalid(
        &sub_error(|r| {
            r.dead_letter_policy = Some(v1::DeadLetterPolicy {
                dead_letter_topic: "nope".into(),
                max_delivery_attempts: 5,
            })
        }),
        &["dead_letter_policy.dead_letter_topic"],
    );
    assert_invalid(
        &sub_error(|r| {
            r.dead_letter_policy = Some(v1::DeadLetterPolicy {
                dead_letter_topic: "projects/p/topics/dead".into(),
                max_delivery_attempts: 4,
            })
        }),
        &["max_delivery_attempts"],
    );
    assert_invalid(
        &sub_error(|r| {
            r.retry_policy = Some(v1::RetryPolicy {
                minimum_backoff: Some(secs(60)),
                maximum_backoff: Some(secs(20)),
            })
        }),
        &["maximum backoff"],
    );
    assert_invalid(
        &sub_error(|r| r.labels = HashMap::from([("converge-retry-bogus".into(), "1".into())])),
        &["converge-retry-bogus"],
    );
}

#[test]
fn unimplemented_delivery_kinds_are_refused_not_ignored() {
    // Push is implemented; an endpoint that is not an http(s) URL is a bad argument.
    let push = sub_error(|r| {
        r.push_config = Some(v1::PushConfig {
            push_endpoint: "ftp://x".into(),
            ..Default::default()
        })
    });
    assert_eq!(push.code, Code::InvalidArgument, "{push}");
    assert_eq!(
        sub_error(|r| r.bigquery_config = Some(Default::default())).code,
        Code::Unimplemented
    );
    assert_eq!(
        sub_error(|r| r.cloud_storage_config = Some(Default::default())).code,
        Code::Unimplemented
    );
    // An empty push config is a pull subscription.
    let mut r = sub_resource();
    r.push_config = Some(v1::PushConfig::default());
    assert!(subscription_from_proto(&r, sub_name(), kept()).is_ok());
}

#[test]
fn a_resource_the_api_did_not_write_still_renders() {
    let sub = subscription_from_proto(&sub_resource(), sub_name(), kept()).unwrap();
    let bare = converge_core::Subscription {
        resource: Bytes::new(),
        ..sub.clone()
    };
    assert_eq!(
        convert::subscription_to_proto(&bare).unwrap().name,
        sub.name.to_string()
    );
    let corrupt = converge_core::Subscription {
        resource: Bytes::from_static(&[0xff, 0xff]),
        ..sub
    };
    assert_eq!(
        convert::subscription_to_proto(&corrupt).unwrap_err().code,
        Code::Internal
    );
}

// ----- errors and pages -----

#[test]
fn store_errors_are_worded_as_the_real_service_words_them() {
    let e = store_error("orders")(converge_core::Error::NotFound("x".into()));
    assert_eq!(
        (e.code, e.message.as_str()),
        (Code::NotFound, "Resource not found (resource=orders).")
    );
    let e = store_error("orders")(converge_core::Error::AlreadyExists("x".into()));
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            Code::AlreadyExists,
            "Resource already exists in the project (resource=orders)."
        )
    );
    let e = store_error("orders")(converge_core::Error::FailedPrecondition("detached".into()));
    assert_eq!(
        (e.code, e.message.as_str()),
        (Code::FailedPrecondition, "detached")
    );
}

#[test]
fn a_negative_page_size_is_rejected() {
    assert_invalid(
        &page_request(-1, String::new()).unwrap_err(),
        &["page_size"],
    );
    assert_eq!(
        page_request(5, "t".into()).unwrap(),
        converge_core::PageRequest {
            page_size: 5,
            page_token: "t".into()
        }
    );
}
