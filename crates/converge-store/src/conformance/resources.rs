//! Resources and their life cycle: retention, expiration, detaching, deleting, errors, lists,
//! API documents and restarts.

use std::time::Duration;

use bytes::Bytes;
use converge_core::{Error, ProjectId, Topic, TopicName};

use super::Harness;
use super::support::{data, msg, project, pull_now, sub_name, subscription, topic, topic_name};

/// Maintenance drops messages past the subscription's retention and subscriptions past their
/// expiration; a detached subscription has no backlog, refuses pulls, and leaves its topic's list.
pub async fn retention_expiration_and_detach(h: &mut Harness) {
    let s = &*h.store;
    s.create_topic(topic("top1")).await.unwrap();
    let mut short = subscription("short", "top1");
    short.message_retention = Duration::from_secs(600);
    s.create_subscription(short).await.unwrap();
    let mut expiring = subscription("expiring", "top1");
    expiring.expiration_ttl = Some(Duration::from_secs(86_400));
    s.create_subscription(expiring).await.unwrap();
    s.create_subscription(subscription("detached", "top1"))
        .await
        .unwrap();
    s.publish(&topic_name("top1"), vec![msg("old")])
        .await
        .unwrap();

    h.clock.advance(Duration::from_secs(601));
    s.maintain().await.unwrap();
    assert!(
        pull_now(s, "short").await.is_empty(),
        "messages older than the retention are gone"
    );

    h.clock.advance(Duration::from_secs(86_400));
    s.maintain().await.unwrap();
    assert!(matches!(
        s.get_subscription(&sub_name("expiring")).await,
        Err(Error::NotFound(_))
    ));

    s.detach_subscription(&sub_name("detached")).await.unwrap();
    s.publish(&topic_name("top1"), vec![msg("after-detach")])
        .await
        .unwrap();
    let stats = s.subscription_stats().await.unwrap();
    let detached = stats
        .iter()
        .find(|st| st.name == sub_name("detached"))
        .unwrap();
    assert_eq!(
        detached.backlog, 0,
        "a detached subscription has no backlog, even after new publishes"
    );
    let err = s
        .pull(&sub_name("detached"), 1, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    assert!(
        s.get_subscription(&sub_name("detached"))
            .await
            .unwrap()
            .detached
    );
    let page = s
        .list_topic_subscriptions(&topic_name("top1"), Default::default())
        .await
        .unwrap();
    assert_eq!(page.items, vec![sub_name("short")]);
}

/// Deleting a topic leaves its subscriptions and their backlog, with no topic; a new topic of the
/// same name does not feed them.
pub async fn deleting_a_topic_leaves_its_subscriptions_readable(h: &mut Harness) {
    let s = &*h.store;
    s.create_topic(topic("top1")).await.unwrap();
    s.create_subscription(subscription("sub1", "top1"))
        .await
        .unwrap();
    s.publish(&topic_name("top1"), vec![msg("kept")])
        .await
        .unwrap();
    s.delete_topic(&topic_name("top1")).await.unwrap();
    assert_eq!(
        s.get_subscription(&sub_name("sub1")).await.unwrap().topic,
        None
    );
    assert!(matches!(
        s.publish(&topic_name("top1"), vec![msg("x")]).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(data(&pull_now(s, "sub1").await), ["kept"]);
    // A new topic with the same name does not feed the old subscription.
    s.create_topic(topic("top1")).await.unwrap();
    s.publish(&topic_name("top1"), vec![msg("new")])
        .await
        .unwrap();
    h.clock.advance(Duration::from_secs(11));
    assert_eq!(data(&pull_now(s, "sub1").await), ["kept"]);
}

/// A topic's retention, when longer, keeps messages a subscription's retention would drop, and
/// then lets them go too.
pub async fn topic_retention_keeps_messages_longer_then_lets_them_go(h: &mut Harness) {
    let s = &*h.store;
    let mut t = topic("top1");
    t.message_retention = Some(Duration::from_secs(3600));
    s.create_topic(t).await.unwrap();
    let mut sub = subscription("sub1", "top1");
    sub.message_retention = Duration::from_secs(600);
    s.create_subscription(sub).await.unwrap();
    s.publish(&topic_name("top1"), vec![msg("kept")])
        .await
        .unwrap();

    h.clock.advance(Duration::from_secs(601));
    s.maintain().await.unwrap();
    assert_eq!(
        data(&pull_now(s, "sub1").await),
        ["kept"],
        "a longer topic retention keeps the subscription's backlog"
    );
    h.clock.advance(Duration::from_secs(3000));
    s.maintain().await.unwrap();
    assert!(
        pull_now(s, "sub1").await.is_empty(),
        "past the topic's retention the message is gone"
    );
    let stats = s.subscription_stats().await.unwrap();
    assert_eq!(stats[0].backlog, 0);
}

/// Errors carry Pub/Sub's codes (`NOT_FOUND` with the resource's name, `ALREADY_EXISTS`,
/// `INVALID_ARGUMENT` for a bad filter), since the API layer passes them on as they are.
pub async fn errors_name_the_resource(h: &mut Harness) {
    let s = &*h.store;
    let err = s.get_topic(&topic_name("nope")).await.unwrap_err();
    assert_eq!(
        err,
        Error::NotFound("Resource not found (resource=projects/p/topics/nope).".into())
    );
    s.create_topic(topic("top1")).await.unwrap();
    assert!(matches!(
        s.create_topic(topic("top1")).await,
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        s.create_subscription(subscription("sub1", "nope")).await,
        Err(Error::NotFound(_))
    ));
    let mut bad = subscription("sub1", "top1");
    bad.filter = "attributes.x = ".into();
    assert!(matches!(
        s.create_subscription(bad).await,
        Err(Error::InvalidArgument(_))
    ));
}

/// Lists page in name order within one project, with page tokens until the last page.
pub async fn lists_page_through_names(h: &mut Harness) {
    let s = &*h.store;
    for i in 0..5 {
        s.create_topic(topic(&format!("topic-{i}"))).await.unwrap();
    }
    let other = Topic {
        name: TopicName::new(ProjectId::new("other").unwrap(), "topic-x").unwrap(),
        ..topic("xxx")
    };
    s.create_topic(other).await.unwrap();
    let first = s
        .list_topics(
            &project(),
            converge_core::PageRequest {
                page_size: 2,
                page_token: String::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let mut all: Vec<String> = first
        .items
        .iter()
        .map(|t| t.name.id().to_string())
        .collect();
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let next = s
            .list_topics(
                &project(),
                converge_core::PageRequest {
                    page_size: 2,
                    page_token: token,
                },
            )
            .await
            .unwrap();
        all.extend(next.items.iter().map(|t| t.name.id().to_string()));
        token = next.next_page_token;
    }
    assert_eq!(all, ["topic-0", "topic-1", "topic-2", "topic-3", "topic-4"]);
}

/// API documents (IAM policies, schema revisions) are kept by kind and key: the last put wins,
/// a delete says whether there was something to delete, and a list sees one kind under a
/// prefix. On a durable backend all of it holds across a restart.
pub async fn documents_are_stored_listed_and_deleted(h: &mut Harness) {
    {
        let s = &*h.store;
        s.put_document(
            "iam",
            "projects/p/topics/a",
            Bytes::from_static(b"policy-a"),
        )
        .await
        .unwrap();
        s.put_document(
            "iam",
            "projects/p/topics/b",
            Bytes::from_static(b"policy-b"),
        )
        .await
        .unwrap();
        s.put_document("schema", "projects/p/schemas/s", Bytes::from_static(b"v1"))
            .await
            .unwrap();
        s.put_document(
            "iam",
            "projects/p/topics/a",
            Bytes::from_static(b"policy-a2"),
        )
        .await
        .unwrap();
        assert!(
            s.delete_document("iam", "projects/p/topics/b")
                .await
                .unwrap()
        );
        assert!(
            !s.delete_document("iam", "projects/p/topics/b")
                .await
                .unwrap()
        );
    }
    if h.durable() {
        h.restart().await;
    }
    let s = &*h.store;
    assert_eq!(
        s.get_document("iam", "projects/p/topics/a")
            .await
            .unwrap()
            .unwrap(),
        "policy-a2"
    );
    assert_eq!(
        s.get_document("iam", "projects/p/topics/b").await.unwrap(),
        None
    );
    let listed = s
        .list_documents("iam", "projects/p/", Default::default())
        .await
        .unwrap();
    assert_eq!(
        listed
            .items
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["projects/p/topics/a"]
    );
}

/// A restart keeps resources, acknowledgements and unacknowledged messages, and message ids
/// keep increasing. Whether leases survive is the engine's choice (the embedded engine forgets
/// them, PostgreSQL keeps them), so the scenario waits past the ack deadline before it expects
/// the unacknowledged message back.
pub async fn a_restart_keeps_acknowledgements_and_unacknowledged_messages(h: &mut Harness) {
    let (created, ids) = {
        let s = &*h.store;
        s.create_topic(topic("top1")).await.unwrap();
        let created = s
            .create_subscription(subscription("sub1", "top1"))
            .await
            .unwrap();
        let ids = s
            .publish(&topic_name("top1"), vec![msg("acked"), msg("pending")])
            .await
            .unwrap();
        let got = pull_now(s, "sub1").await;
        assert_eq!(data(&got), ["acked", "pending"]);
        s.acknowledge(&sub_name("sub1"), &[got[0].ack_id.clone()])
            .await
            .unwrap();
        (created, ids)
    };
    h.restart().await;
    let s = &*h.store;
    assert!(s.get_topic(&topic_name("top1")).await.is_ok());
    assert_eq!(
        s.get_subscription(&sub_name("sub1")).await.unwrap(),
        created
    );
    h.clock.advance(Duration::from_secs(11));
    assert_eq!(
        data(&pull_now(s, "sub1").await),
        ["pending"],
        "acks are kept, and the unacknowledged message comes back"
    );
    let next = s
        .publish(&topic_name("top1"), vec![msg("after")])
        .await
        .unwrap();
    assert_eq!(data(&pull_now(s, "sub1").await), ["after"]);
    assert!(
        next[0] > ids[1],
        "message ids keep increasing across restarts"
    );
}
