//! Snapshots and Seek: validation, names, field masks and conversions; the store captures and
//! applies acknowledgement states.
//!
//! Choices where the real service leaves room:
//! - A snapshot expires 7 days after the oldest message it marks unacknowledged (7 days after its
//!   creation when there is none), as the real service does; a backlog so old that this is less
//!   than an hour away is `FAILED_PRECONDITION`.
//! - UpdateSnapshot accepts an `expire_time` in the future and at most 7 days from now.
//! - Seek to a snapshot of another topic is `FAILED_PRECONDITION`.

use std::time::SystemTime;

use converge_core::name::{ProjectId, SnapshotName, SubscriptionName};
use converge_core::snapshot::MAX_SNAPSHOT_LIFETIME;
use converge_core::{SeekTarget, Snapshot, limits};

use super::convert::{self, timestamp};
use super::field_mask::{self, MaskEntry, mask_entry};
use super::{ApiError, PubSub, page_request, store_error};
use crate::proto as v1;

/// The paths UpdateSnapshot accepts, in snake_case.
const SNAPSHOT_MASK: &[MaskEntry<v1::Snapshot>] = &[
    mask_entry!("labels", labels),
    mask_entry!("expire_time", expire_time),
];

/// A snapshot as Get, Create, Update and List answer it.
pub(super) fn snapshot_to_proto(snapshot: &Snapshot) -> v1::Snapshot {
    v1::Snapshot {
        name: snapshot.name.to_string(),
        topic: snapshot.topic.to_string(),
        expire_time: Some(timestamp(snapshot.expire_time)),
        labels: snapshot.labels.clone(),
    }
}

/// A name for a snapshot created over gRPC without one: random, in the subscription's project,
/// and valid by the resource name rules (starts with a letter).
fn generated_name(subscription: &SubscriptionName) -> Result<SnapshotName, ApiError> {
    let id = format!("snapshot-{}", uuid::Uuid::new_v4().simple());
    Ok(SnapshotName::new(subscription.project().clone(), id)?)
}

/// A wire timestamp as a time; `INVALID_ARGUMENT` naming `field` when it is out of range.
fn time_from_proto(t: &prost_types::Timestamp, field: &str) -> Result<SystemTime, ApiError> {
    SystemTime::try_from(*t).map_err(|_| {
        ApiError::invalid(format!(
            "Invalid {field}: {}s {}ns is not a valid timestamp",
            t.seconds, t.nanos
        ))
    })
}

impl PubSub {
    /// GetSnapshot.
    pub async fn get_snapshot(
        &self,
        req: v1::GetSnapshotRequest,
    ) -> Result<v1::Snapshot, ApiError> {
        let name = SnapshotName::parse(&req.snapshot)?;
        let snapshot = self
            .store()
            .get_snapshot(&name)
            .await
            .map_err(store_error(name.id()))?;
        Ok(snapshot_to_proto(&snapshot))
    }

    /// ListSnapshots: one page of a project's snapshots, sorted by name.
    pub async fn list_snapshots(
        &self,
        req: v1::ListSnapshotsRequest,
    ) -> Result<v1::ListSnapshotsResponse, ApiError> {
        let project = ProjectId::parse(&req.project)?;
        let page = page_request(req.page_size, req.page_token)?;
        let page = self
            .store()
            .list_snapshots(&project, page)
            .await
            .map_err(ApiError::from)?;
        Ok(v1::ListSnapshotsResponse {
            snapshots: page.items.iter().map(snapshot_to_proto).collect(),
            next_page_token: page.next_page_token,
        })
    }

    /// CreateSnapshot: captures the subscription's acknowledgement state. Over gRPC an empty name
    /// lets the server pick one in the subscription's project (REST always names it in the path).
    pub async fn create_snapshot(
        &self,
        req: v1::CreateSnapshotRequest,
    ) -> Result<v1::Snapshot, ApiError> {
        let subscription = SubscriptionName::parse(&req.subscription)?;
        let name = if req.name.is_empty() {
            generated_name(&subscription)?
        } else {
            SnapshotName::parse(&req.name)?
        };
        limits::validate_labels(&req.labels)?;
        // The subscription's own error first, worded with its id; its topic names the snapshot's.
        let sub = self
            .store()
            .get_subscription(&subscription)
            .await
            .map_err(store_error(subscription.id()))?;
        let Some(topic) = sub.topic else {
            return Err(ApiError::new(
                tonic::Code::FailedPrecondition,
                format!("Subscription {subscription} has no topic: its topic was deleted"),
            ));
        };
        let requested = Snapshot {
            name: name.clone(),
            topic,
            expire_time: self.now(),
            labels: req.labels,
            resource: bytes::Bytes::new(),
        };
        let created = self
            .store()
            .create_snapshot(requested, &subscription)
            .await
            .map_err(store_error(name.id()))?;
        tracing::debug!(snapshot = %name, subscription = %subscription, "snapshot created");
        Ok(snapshot_to_proto(&created))
    }

    /// UpdateSnapshot: applies `labels` and `expire_time` as the mask says.
    pub async fn update_snapshot(
        &self,
        req: v1::UpdateSnapshotRequest,
    ) -> Result<v1::Snapshot, ApiError> {
        const REQUEST: &str = "UpdateSnapshotRequest";
        let Some(patch) = req.snapshot else {
            return Err(ApiError::invalid(
                "Invalid snapshot: the UpdateSnapshotRequest must contain a snapshot",
            ));
        };
        let name = SnapshotName::parse(&patch.name)?;
        let paths = field_mask::normalized_paths(req.update_mask.as_ref(), REQUEST)?;
        let current = self
            .store()
            .get_snapshot(&name)
            .await
            .map_err(store_error(name.id()))?;
        let mut resource = snapshot_to_proto(&current);
        field_mask::apply(
            &mut resource,
            &patch,
            &paths,
            SNAPSHOT_MASK,
            REQUEST,
            "Snapshot",
        )?;
        limits::validate_labels(&resource.labels)?;
        let Some(expire) = resource.expire_time.as_ref() else {
            return Err(ApiError::invalid(
                "Invalid expire_time: a snapshot must have an expire time",
            ));
        };
        let expire_time = time_from_proto(expire, "expire_time")?;
        let now = self.now();
        if expire_time <= now {
            return Err(ApiError::invalid(
                "Invalid expire_time: it must be in the future",
            ));
        }
        if expire_time > now + MAX_SNAPSHOT_LIFETIME {
            return Err(ApiError::invalid(
                "Invalid expire_time: a snapshot lives at most 7 days",
            ));
        }
        let encoded = convert::encode(&resource);
        let updated = Snapshot {
            expire_time,
            labels: resource.labels,
            resource: encoded,
            ..current
        };
        let stored = self
            .store()
            .update_snapshot(updated)
            .await
            .map_err(store_error(name.id()))?;
        tracing::debug!(snapshot = %name, paths = ?paths, "snapshot updated");
        Ok(snapshot_to_proto(&stored))
    }

    /// DeleteSnapshot: the messages it kept may go.
    pub async fn delete_snapshot(&self, req: v1::DeleteSnapshotRequest) -> Result<(), ApiError> {
        let name = SnapshotName::parse(&req.snapshot)?;
        self.store()
            .delete_snapshot(&name)
            .await
            .map_err(store_error(name.id()))?;
        self.forget_iam_policy(&name.to_string()).await?;
        tracing::debug!(snapshot = %name, "snapshot deleted");
        Ok(())
    }

    /// Seek: to a time (messages published before it count as acknowledged) or to a snapshot of
    /// the subscription's topic. Outstanding leases are dropped.
    pub async fn seek(&self, req: v1::SeekRequest) -> Result<v1::SeekResponse, ApiError> {
        use v1::seek_request::Target;
        let subscription = SubscriptionName::parse(&req.subscription)?;
        let (target, missing_id) = match &req.target {
            None => {
                return Err(ApiError::invalid(
                    "Invalid SeekRequest: exactly one of time or snapshot must be set",
                ));
            }
            Some(Target::Time(t)) => (
                SeekTarget::Time(time_from_proto(t, "time")?),
                subscription.id().to_string(),
            ),
            Some(Target::Snapshot(s)) => {
                let name = SnapshotName::parse(s)?;
                let id = name.id().to_string();
                (SeekTarget::Snapshot(name), id)
            }
        };
        // A missing subscription is reported with its own id, a missing snapshot with its id.
        self.store()
            .get_subscription(&subscription)
            .await
            .map_err(store_error(subscription.id()))?;
        self.store()
            .seek(&subscription, target)
            .await
            .map_err(store_error(&missing_id))?;
        tracing::debug!(subscription = %subscription, "seek");
        Ok(v1::SeekResponse {})
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use converge_core::{Clock as _, ManualClock};
    use converge_store::embedded::{EmbeddedOptions, EmbeddedStore};
    use tonic::Code;

    use super::*;

    const TOPIC: &str = "projects/p/topics/orders";
    const OTHER_TOPIC: &str = "projects/p/topics/refunds";
    const SUB: &str = "projects/p/subscriptions/work";
    const OTHER_SUB: &str = "projects/p/subscriptions/refunds-work";
    const SNAP: &str = "projects/p/snapshots/before";

    async fn service() -> (PubSub, ManualClock) {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let store = EmbeddedStore::open(EmbeddedOptions::default(), Arc::new(clock.clone()))
            .expect("the in-memory engine opens");
        let svc = PubSub::new(Arc::new(store), Arc::new(clock.clone()));
        for (sub, topic) in [(SUB, TOPIC), (OTHER_SUB, OTHER_TOPIC)] {
            svc.create_topic(v1::Topic {
                name: topic.into(),
                ..Default::default()
            })
            .await
            .unwrap();
            svc.create_subscription(v1::Subscription {
                name: sub.into(),
                topic: topic.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        (svc, clock)
    }

    fn create(name: &str, subscription: &str) -> v1::CreateSnapshotRequest {
        v1::CreateSnapshotRequest {
            name: name.into(),
            subscription: subscription.into(),
            labels: [("team".to_string(), "billing".to_string())].into(),
            tags: Default::default(),
        }
    }

    async fn publish(svc: &PubSub, data: &str) {
        svc.publish(v1::PublishRequest {
            topic: TOPIC.into(),
            messages: vec![v1::PubsubMessage {
                data: data.as_bytes().to_vec(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    }

    async fn pull_and_ack(svc: &PubSub) -> Vec<String> {
        #[allow(deprecated)]
        let got = svc
            .pull(v1::PullRequest {
                subscription: SUB.into(),
                return_immediately: true,
                max_messages: 100,
            })
            .await
            .unwrap()
            .received_messages;
        if !got.is_empty() {
            svc.acknowledge(v1::AcknowledgeRequest {
                subscription: SUB.into(),
                ack_ids: got.iter().map(|r| r.ack_id.clone()).collect(),
            })
            .await
            .unwrap();
        }
        got.iter()
            .map(|r| String::from_utf8_lossy(&r.message.as_ref().unwrap().data).into_owned())
            .collect()
    }

    fn seek_to(snapshot: &str) -> v1::SeekRequest {
        v1::SeekRequest {
            subscription: SUB.into(),
            target: Some(v1::seek_request::Target::Snapshot(snapshot.into())),
        }
    }

    #[tokio::test]
    async fn create_get_list_and_seek_back() {
        let (svc, clock) = service().await;
        publish(&svc, "one").await;
        let created = svc.create_snapshot(create(SNAP, SUB)).await.unwrap();
        assert_eq!(created.name, SNAP);
        assert_eq!(created.topic, TOPIC);
        assert_eq!(
            created.expire_time,
            Some(timestamp(clock.now() + MAX_SNAPSHOT_LIFETIME))
        );
        assert_eq!(created.labels["team"], "billing");
        let got = svc
            .get_snapshot(v1::GetSnapshotRequest {
                snapshot: SNAP.into(),
            })
            .await
            .unwrap();
        assert_eq!(got, created);

        assert_eq!(pull_and_ack(&svc).await, ["one"]);
        assert!(pull_and_ack(&svc).await.is_empty());
        svc.seek(seek_to(SNAP)).await.unwrap();
        assert_eq!(pull_and_ack(&svc).await, ["one"]);

        let listed = svc
            .list_snapshots(v1::ListSnapshotsRequest {
                project: "projects/p".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.snapshots, [created]);
        let on_topic = svc
            .list_topic_snapshots(v1::ListTopicSnapshotsRequest {
                topic: TOPIC.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(on_topic.snapshots, [SNAP]);
        let on_other = svc
            .list_topic_snapshots(v1::ListTopicSnapshotsRequest {
                topic: OTHER_TOPIC.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(on_other.snapshots.is_empty());
    }

    #[tokio::test]
    async fn an_empty_name_gets_one_in_the_subscription_project() {
        let (svc, _) = service().await;
        let created = svc.create_snapshot(create("", SUB)).await.unwrap();
        let name = SnapshotName::parse(&created.name).unwrap();
        assert_eq!(name.project().as_str(), "p");
        let second = svc.create_snapshot(create("", SUB)).await.unwrap();
        assert_ne!(created.name, second.name, "generated names are unique");
    }

    #[tokio::test]
    async fn errors_carry_the_real_codes_and_words() {
        let (svc, _) = service().await;
        svc.create_snapshot(create(SNAP, SUB)).await.unwrap();
        let e = svc.create_snapshot(create(SNAP, SUB)).await.unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                Code::AlreadyExists,
                "Resource already exists in the project (resource=before)."
            )
        );
        let e = svc
            .create_snapshot(create(
                "projects/p/snapshots/x1x",
                "projects/p/subscriptions/nope",
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (Code::NotFound, "Resource not found (resource=nope).")
        );
        let e = svc
            .create_snapshot(create("projects/p/topics/wrong", SUB))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        let e = svc
            .get_snapshot(v1::GetSnapshotRequest {
                snapshot: "projects/p/snapshots/missing".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (Code::NotFound, "Resource not found (resource=missing).")
        );
        let e = svc
            .seek(seek_to("projects/p/snapshots/missing"))
            .await
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (Code::NotFound, "Resource not found (resource=missing).")
        );
        let other = svc
            .create_snapshot(create("projects/p/snapshots/other", OTHER_SUB))
            .await
            .unwrap();
        let e = svc.seek(seek_to(&other.name)).await.unwrap_err();
        assert_eq!(e.code, Code::FailedPrecondition, "{e:?}");
        let e = svc
            .seek(v1::SeekRequest {
                subscription: SUB.into(),
                target: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        let e = svc
            .seek(v1::SeekRequest {
                subscription: "projects/p/subscriptions/nope".into(),
                target: Some(v1::seek_request::Target::Snapshot(SNAP.into())),
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (Code::NotFound, "Resource not found (resource=nope).")
        );
    }

    #[tokio::test]
    async fn update_applies_the_mask_and_checks_the_expire_time() {
        let (svc, clock) = service().await;
        svc.create_snapshot(create(SNAP, SUB)).await.unwrap();
        let update = |labels: &[(&str, &str)], expire: SystemTime, paths: &[&str]| {
            v1::UpdateSnapshotRequest {
                snapshot: Some(v1::Snapshot {
                    name: SNAP.into(),
                    topic: "ignored".into(),
                    expire_time: Some(timestamp(expire)),
                    labels: labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
            }
        };
        let soon = clock.now() + Duration::from_secs(3600);
        let updated = svc
            .update_snapshot(update(&[("env", "prod")], soon, &["labels"]))
            .await
            .unwrap();
        assert_eq!(updated.labels.len(), 1);
        assert_eq!(updated.labels["env"], "prod");
        assert_eq!(updated.topic, TOPIC, "only masked fields change");
        assert_ne!(updated.expire_time, Some(timestamp(soon)));
        let updated = svc
            .update_snapshot(update(&[], soon, &["expireTime"]))
            .await
            .unwrap();
        assert_eq!(updated.expire_time, Some(timestamp(soon)));
        assert_eq!(updated.labels["env"], "prod");

        let past = clock.now() - Duration::from_secs(1);
        let too_far = clock.now() + MAX_SNAPSHOT_LIFETIME + Duration::from_secs(1);
        for bad in [
            update(&[], past, &["expire_time"]),
            update(&[], too_far, &["expire_time"]),
            update(&[], soon, &["topic"]),
            update(&[], soon, &[]),
        ] {
            let e = svc.update_snapshot(bad).await.unwrap_err();
            assert_eq!(e.code, Code::InvalidArgument, "{e:?}");
        }

        svc.delete_snapshot(v1::DeleteSnapshotRequest {
            snapshot: SNAP.into(),
        })
        .await
        .unwrap();
        let e = svc
            .delete_snapshot(v1::DeleteSnapshotRequest {
                snapshot: SNAP.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::NotFound);
    }
}
