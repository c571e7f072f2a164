//! The `Store` trait on PostgreSQL: resources answer from `resources.rs`, the data plane from
//! `publish.rs`, `delivery.rs` and `seek.rs`, periodic work from `maintenance.rs`.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use converge_core::store::SubscriptionStats;
use converge_core::{
    AckId, AckOutcome, MessageId, NewMessage, Page, PageRequest, ProjectId, PullOptions,
    ReceivedMessage, Result, SeekTarget, Snapshot, SnapshotName, Store, Subscription,
    SubscriptionName, Topic, TopicName,
};

use super::PostgresStore;

#[async_trait]
impl Store for PostgresStore {
    async fn create_topic(&self, topic: Topic) -> Result<Topic> {
        PostgresStore::create_topic(self, topic).await
    }

    async fn get_topic(&self, name: &TopicName) -> Result<Topic> {
        PostgresStore::get_topic(self, name).await
    }

    async fn update_topic(&self, topic: Topic) -> Result<Topic> {
        PostgresStore::update_topic(self, topic).await
    }

    async fn list_topics(&self, project: &ProjectId, page: PageRequest) -> Result<Page<Topic>> {
        PostgresStore::list_topics(self, project, page).await
    }

    async fn delete_topic(&self, name: &TopicName) -> Result<()> {
        PostgresStore::delete_topic(self, name).await
    }

    async fn list_topic_subscriptions(
        &self,
        topic: &TopicName,
        page: PageRequest,
    ) -> Result<Page<SubscriptionName>> {
        PostgresStore::list_topic_subscriptions(self, topic, page).await
    }

    async fn create_subscription(&self, subscription: Subscription) -> Result<Subscription> {
        PostgresStore::create_subscription(self, subscription).await
    }

    async fn get_subscription(&self, name: &SubscriptionName) -> Result<Subscription> {
        PostgresStore::get_subscription(self, name).await
    }

    async fn update_subscription(&self, subscription: Subscription) -> Result<Subscription> {
        let updated = PostgresStore::update_subscription(self, subscription).await?;
        self.forget_subscription(&updated.name);
        Ok(updated)
    }

    async fn list_subscriptions(
        &self,
        project: &ProjectId,
        page: PageRequest,
    ) -> Result<Page<Subscription>> {
        PostgresStore::list_subscriptions(self, project, page).await
    }

    async fn delete_subscription(&self, name: &SubscriptionName) -> Result<()> {
        PostgresStore::delete_subscription(self, name).await?;
        self.forget_subscription(name);
        Ok(())
    }

    async fn detach_subscription(&self, name: &SubscriptionName) -> Result<()> {
        PostgresStore::detach_subscription(self, name).await?;
        self.forget_subscription(name);
        Ok(())
    }

    async fn publish(
        &self,
        topic: &TopicName,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<MessageId>> {
        self.publish_batch(topic, messages).await
    }

    async fn pull_with(
        &self,
        subscription: &SubscriptionName,
        options: PullOptions,
    ) -> Result<Vec<ReceivedMessage>> {
        self.pull_leased(subscription, options).await
    }

    async fn acknowledge(
        &self,
        subscription: &SubscriptionName,
        ack_ids: &[AckId],
    ) -> Result<Vec<AckOutcome>> {
        self.ack(subscription, ack_ids).await
    }

    async fn modify_ack_deadline(
        &self,
        subscription: &SubscriptionName,
        ack_ids: &[AckId],
        deadline: Duration,
    ) -> Result<Vec<AckOutcome>> {
        self.modify_deadline(subscription, ack_ids, deadline).await
    }

    async fn create_snapshot(
        &self,
        snapshot: Snapshot,
        subscription: &SubscriptionName,
    ) -> Result<Snapshot> {
        PostgresStore::create_snapshot(self, snapshot, subscription).await
    }

    async fn get_snapshot(&self, name: &SnapshotName) -> Result<Snapshot> {
        PostgresStore::get_snapshot(self, name).await
    }

    async fn update_snapshot(&self, snapshot: Snapshot) -> Result<Snapshot> {
        PostgresStore::update_snapshot(self, snapshot).await
    }

    async fn list_snapshots(
        &self,
        project: &ProjectId,
        page: PageRequest,
    ) -> Result<Page<Snapshot>> {
        PostgresStore::list_snapshots(self, project, page).await
    }

    async fn list_topic_snapshots(
        &self,
        topic: &TopicName,
        page: PageRequest,
    ) -> Result<Page<SnapshotName>> {
        PostgresStore::list_topic_snapshots(self, topic, page).await
    }

    async fn delete_snapshot(&self, name: &SnapshotName) -> Result<()> {
        PostgresStore::delete_snapshot(self, name).await
    }

    async fn seek(&self, subscription: &SubscriptionName, target: SeekTarget) -> Result<()> {
        self.seek_subscription(subscription, target).await
    }

    async fn put_document(&self, kind: &str, key: &str, value: Bytes) -> Result<()> {
        PostgresStore::put_document(self, kind, key, value).await
    }

    async fn get_document(&self, kind: &str, key: &str) -> Result<Option<Bytes>> {
        PostgresStore::get_document(self, kind, key).await
    }

    async fn delete_document(&self, kind: &str, key: &str) -> Result<bool> {
        PostgresStore::delete_document(self, kind, key).await
    }

    async fn list_documents(
        &self,
        kind: &str,
        prefix: &str,
        page: PageRequest,
    ) -> Result<Page<(String, Bytes)>> {
        PostgresStore::list_documents(self, kind, prefix, page).await
    }

    async fn subscription_stats(&self) -> Result<Vec<SubscriptionStats>> {
        self.stats().await
    }

    async fn maintain(&self) -> Result<()> {
        self.maintain_tick().await
    }

    async fn check_ready(&self) -> Result<()> {
        self.ready().await
    }

    async fn close(&self) -> Result<()> {
        self.shut_down().await
    }
}
