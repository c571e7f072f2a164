//! Snapshots and Seek over the real binary: gRPC with the official stubs and REST with plain
//! HTTP, as Pub/Sub clients use them.

mod common;

use std::time::{Duration, SystemTime};

use common::{
    Broker, Grpc, PROJECT, ack_ids, data_of, new_subscription_name, new_topic_name, pubsub,
    subscription, unique_id,
};
use reqwest::Method;
use serde_json::{Value, json};
use tonic::Code;

/// The full name of snapshot `id`.
fn snapshot_name(id: &str) -> String {
    format!("projects/{PROJECT}/snapshots/{id}")
}

/// Pulls everything deliverable now, acknowledges it and returns the data.
async fn pull_and_ack(grpc: &Grpc, sub: &str) -> Vec<String> {
    let got = grpc.pull(sub, 100).await;
    if !got.is_empty() {
        grpc.ack(sub, ack_ids(&got)).await;
    }
    data_of(&got)
}

async fn create_snapshot(
    grpc: &Grpc,
    name: &str,
    sub: &str,
) -> Result<pubsub::Snapshot, tonic::Status> {
    let request = pubsub::CreateSnapshotRequest {
        name: name.to_owned(),
        subscription: sub.to_owned(),
        ..Default::default()
    };
    grpc.subscriber
        .clone()
        .create_snapshot(request)
        .await
        .map(tonic::Response::into_inner)
}

async fn seek_snapshot(grpc: &Grpc, sub: &str, snapshot: &str) -> Result<(), tonic::Status> {
    let request = pubsub::SeekRequest {
        subscription: sub.to_owned(),
        target: Some(pubsub::seek_request::Target::Snapshot(snapshot.to_owned())),
    };
    grpc.subscriber.clone().seek(request).await.map(|_| ())
}

async fn get_snapshot(grpc: &Grpc, name: &str) -> Result<pubsub::Snapshot, tonic::Status> {
    let request = pubsub::GetSnapshotRequest {
        snapshot: name.to_owned(),
    };
    grpc.subscriber
        .clone()
        .get_snapshot(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Sends a REST request; the status and the JSON body.
async fn rest(broker: &Broker, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let http = broker.http();
    let mut request = http.client.request(method, http.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the broker answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, body)
}

/// RFC 3339 text of a time, as proto3 JSON writes timestamps.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// The publish time of a received message.
fn publish_time(r: &pubsub::ReceivedMessage) -> SystemTime {
    let t = r
        .message
        .as_ref()
        .and_then(|m| m.publish_time)
        .expect("a received message has a publish time");
    SystemTime::UNIX_EPOCH
        + Duration::new(
            u64::try_from(t.seconds).expect("after the epoch"),
            u32::try_from(t.nanos).expect("valid nanos"),
        )
}

#[tokio::test]
async fn grpc_snapshot_then_ack_everything_then_seek_brings_messages_back() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("orders");
    let sub = new_subscription_name("work");
    grpc.create_topic(&topic).await;
    grpc.create_subscription(subscription(&sub, &topic)).await;
    grpc.publish_data(&topic, &["a", "b"]).await;

    // An empty name over gRPC: the server picks one in the subscription's project.
    let snap = create_snapshot(&grpc, "", &sub)
        .await
        .expect("CreateSnapshot");
    assert!(
        snap.name
            .starts_with(&format!("projects/{PROJECT}/snapshots/")),
        "{}",
        snap.name
    );
    assert_eq!(snap.topic, topic);
    assert!(snap.expire_time.is_some());
    assert_eq!(get_snapshot(&grpc, &snap.name).await.unwrap(), snap);

    let mut first = pull_and_ack(&grpc, &sub).await;
    first.sort();
    assert_eq!(first, ["a", "b"]);
    assert!(grpc.pull(&sub, 10).await.is_empty());
    seek_snapshot(&grpc, &sub, &snap.name).await.expect("Seek");
    let mut again = pull_and_ack(&grpc, &sub).await;
    again.sort();
    assert_eq!(again, ["a", "b"], "the snapshot's unacknowledged messages");

    // A snapshot of another topic cannot be sought to.
    let other_topic = new_topic_name("refunds");
    let other_sub = new_subscription_name("refunds-work");
    grpc.create_topic(&other_topic).await;
    grpc.create_subscription(subscription(&other_sub, &other_topic))
        .await;
    let other = snapshot_name(&unique_id("other"));
    create_snapshot(&grpc, &other, &other_sub).await.unwrap();
    let status = seek_snapshot(&grpc, &sub, &other).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    let status = create_snapshot(&grpc, &other, &sub).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let status = create_snapshot(
        &grpc,
        &snapshot_name(&unique_id("x")),
        &new_subscription_name("nope"),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Lists, update, delete.
    let listed = grpc
        .subscriber
        .clone()
        .list_snapshots(pubsub::ListSnapshotsRequest {
            project: format!("projects/{PROJECT}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<_> = listed.snapshots.iter().map(|s| s.name.clone()).collect();
    names.sort();
    let mut expected = vec![snap.name.clone(), other.clone()];
    expected.sort();
    assert_eq!(names, expected);
    let on_topic = grpc
        .publisher
        .clone()
        .list_topic_snapshots(pubsub::ListTopicSnapshotsRequest {
            topic: topic.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on_topic.snapshots, std::slice::from_ref(&snap.name));
    let updated = grpc
        .subscriber
        .clone()
        .update_snapshot(pubsub::UpdateSnapshotRequest {
            snapshot: Some(pubsub::Snapshot {
                name: snap.name.clone(),
                labels: [("team".to_string(), "billing".to_string())].into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.labels["team"], "billing");
    assert_eq!(updated.expire_time, snap.expire_time);
    grpc.subscriber
        .clone()
        .delete_snapshot(pubsub::DeleteSnapshotRequest {
            snapshot: snap.name.clone(),
        })
        .await
        .unwrap();
    let status = get_snapshot(&grpc, &snap.name).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn rest_seek_to_a_time_replays_only_what_is_retained() {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("orders");
    let keep = new_subscription_name("keep");
    let plain = new_subscription_name("plain");
    grpc.create_topic(&topic).await;
    grpc.create_subscription(pubsub::Subscription {
        retain_acked_messages: true,
        ..subscription(&keep, &topic)
    })
    .await;
    grpc.create_subscription(subscription(&plain, &topic)).await;
    grpc.publish_data(&topic, &["a"]).await;
    grpc.publish_data(&topic, &["b"]).await;

    let got = grpc.pull(&keep, 10).await;
    assert_eq!(data_of(&got), ["a", "b"]);
    let start = publish_time(&got[0]);
    grpc.ack(&keep, ack_ids(&got)).await;
    // On the plain subscription only "a" is acknowledged; "b" stays leased.
    let plain_got = grpc.pull(&plain, 10).await;
    assert_eq!(data_of(&plain_got), ["a", "b"]);
    grpc.ack(&plain, vec![plain_got[0].ack_id.clone()]).await;

    let seek = |sub: &str, time: SystemTime| {
        let path = format!("/v1/{sub}:seek");
        let body = json!({ "time": rfc3339(time) });
        let broker = &broker;
        async move { rest(broker, Method::POST, &path, Some(body)).await }
    };
    for sub in [&keep, &plain] {
        let (status, body) = seek(sub, start).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({}));
    }
    assert_eq!(
        pull_and_ack(&grpc, &keep).await,
        ["a", "b"],
        "retained acknowledged messages come back"
    );
    assert_eq!(
        pull_and_ack(&grpc, &plain).await,
        ["b"],
        "without retain_acked_messages only the unacknowledged message comes back"
    );

    // A time in the future clears the backlog.
    grpc.publish_data(&topic, &["c"]).await;
    let (status, body) = seek(&plain, start + Duration::from_secs(24 * 3600)).await;
    assert_eq!(status, 200, "{body}");
    assert!(grpc.pull(&plain, 10).await.is_empty(), "backlog cleared");

    // The REST snapshot resource: create, get, patch, list, delete.
    let snap = snapshot_name(&unique_id("snap"));
    let path = format!("/v1/{snap}");
    let (status, created) = rest(
        &broker,
        Method::PUT,
        &path,
        Some(json!({ "subscription": keep, "labels": { "team": "billing" } })),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["name"], snap.as_str());
    assert_eq!(created["topic"], topic.as_str());
    assert_eq!(created["labels"]["team"], "billing");
    assert!(created["expireTime"].is_string(), "{created}");
    let (status, fetched) = rest(&broker, Method::GET, &path, None).await;
    assert_eq!((status, &fetched), (200, &created));
    let (status, patched) = rest(
        &broker,
        Method::PATCH,
        &path,
        Some(json!({ "snapshot": { "labels": { "env": "prod" } }, "updateMask": "labels" })),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["labels"], json!({ "env": "prod" }));
    let (status, listed) = rest(
        &broker,
        Method::GET,
        &format!("/v1/{topic}/snapshots"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["snapshots"], json!([snap]));
    let (status, err) = rest(
        &broker,
        Method::POST,
        &format!("/v1/{plain}:seek"),
        Some(json!({ "snapshot": snapshot_name("missing") })),
    )
    .await;
    assert_eq!(status, 404, "{err}");
    assert_eq!(err["error"]["status"], "NOT_FOUND");
    let (status, _) = rest(&broker, Method::DELETE, &path, None).await;
    assert_eq!(status, 200);
    let (status, _) = rest(&broker, Method::GET, &path, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn snapshots_survive_a_restart_and_expire() {
    let mut broker = Broker::start_on_disk();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("orders");
    let sub = new_subscription_name("work");
    grpc.create_topic(&topic).await;
    grpc.create_subscription(subscription(&sub, &topic)).await;
    grpc.publish_data(&topic, &["kept"]).await;
    let snap = snapshot_name(&unique_id("snap"));
    let created = create_snapshot(&grpc, &snap, &sub).await.unwrap();
    assert_eq!(pull_and_ack(&grpc, &sub).await, ["kept"]);

    broker.restart().await;
    let grpc = broker.grpc().await;
    assert_eq!(get_snapshot(&grpc, &snap).await.unwrap(), created);
    seek_snapshot(&grpc, &sub, &snap).await.unwrap();
    assert_eq!(
        pull_and_ack(&grpc, &sub).await,
        ["kept"],
        "the snapshot kept its message across the restart"
    );

    broker
        .advance_clock(Duration::from_secs(8 * 24 * 3600))
        .await;
    let status = get_snapshot(&grpc, &snap).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::NotFound,
        "an expired snapshot disappears"
    );
}
