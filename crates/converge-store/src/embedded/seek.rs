//! Snapshots of subscriptions and Seek. (Being written.)

use converge_core::{
    Error, Page, PageRequest, ProjectId, Result, SeekTarget, Snapshot, SnapshotName,
    SubscriptionName, TopicName,
};

use super::Inner;

fn not_yet<T>() -> Result<T> {
    Err(Error::FailedPrecondition(
        "snapshots and seek are not implemented yet".into(),
    ))
}

impl Inner {
    pub(super) async fn create_snapshot(
        &self,
        _snapshot: Snapshot,
        _subscription: &SubscriptionName,
    ) -> Result<Snapshot> {
        not_yet()
    }

    pub(super) fn get_snapshot(&self, _name: &SnapshotName) -> Result<Snapshot> {
        not_yet()
    }

    pub(super) async fn update_snapshot(&self, _snapshot: Snapshot) -> Result<Snapshot> {
        not_yet()
    }

    pub(super) fn list_snapshots(
        &self,
        _project: &ProjectId,
        _page: PageRequest,
    ) -> Result<Page<Snapshot>> {
        not_yet()
    }

    pub(super) fn list_topic_snapshots(
        &self,
        _topic: &TopicName,
        _page: PageRequest,
    ) -> Result<Page<SnapshotName>> {
        Ok(Page {
            items: Vec::new(),
            next_page_token: String::new(),
        })
    }

    pub(super) async fn delete_snapshot(&self, _name: &SnapshotName) -> Result<()> {
        not_yet()
    }

    pub(super) async fn seek(
        &self,
        _subscription: &SubscriptionName,
        _target: SeekTarget,
    ) -> Result<()> {
        not_yet()
    }
}
