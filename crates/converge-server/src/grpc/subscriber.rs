//! `google.pubsub.v1.Subscriber` over [`crate::service::PubSub`].

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::stubs::subscriber_server::Subscriber;
use super::{Empty, unary};
use crate::proto as v1;
use crate::state::AppState;

/// The message stream StreamingPull answers with.
pub type StreamingPullStream =
    Pin<Box<dyn Stream<Item = Result<v1::StreamingPullResponse, Status>> + Send>>;

/// The Subscriber service: each RPC is one call into the service layer.
#[derive(Debug, Clone)]
pub struct SubscriberApi {
    state: AppState,
}

impl SubscriberApi {
    /// A Subscriber answering from `state`'s service.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Subscriber for SubscriberApi {
    type StreamingPullStream = StreamingPullStream;

    async fn create_subscription(
        &self,
        request: Request<v1::Subscription>,
    ) -> Result<Response<v1::Subscription>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.create_subscription(r).await
        })
        .await
    }

    async fn get_subscription(
        &self,
        request: Request<v1::GetSubscriptionRequest>,
    ) -> Result<Response<v1::Subscription>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.get_subscription(r).await
        })
        .await
    }

    async fn update_subscription(
        &self,
        request: Request<v1::UpdateSubscriptionRequest>,
    ) -> Result<Response<v1::Subscription>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.update_subscription(r).await
        })
        .await
    }

    async fn list_subscriptions(
        &self,
        request: Request<v1::ListSubscriptionsRequest>,
    ) -> Result<Response<v1::ListSubscriptionsResponse>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.list_subscriptions(r).await
        })
        .await
    }

    async fn delete_subscription(
        &self,
        request: Request<v1::DeleteSubscriptionRequest>,
    ) -> Result<Response<Empty>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.delete_subscription(r).await
        })
        .await
    }

    async fn modify_ack_deadline(
        &self,
        request: Request<v1::ModifyAckDeadlineRequest>,
    ) -> Result<Response<Empty>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.modify_ack_deadline(r).await
        })
        .await
    }

    async fn acknowledge(
        &self,
        request: Request<v1::AcknowledgeRequest>,
    ) -> Result<Response<Empty>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.acknowledge(r).await
        })
        .await
    }

    async fn pull(
        &self,
        request: Request<v1::PullRequest>,
    ) -> Result<Response<v1::PullResponse>, Status> {
        let state = self.state.clone();
        let client_deadline = super::grpc_timeout(request.metadata());
        unary(&self.state, request, |_, r| async move {
            state.pull_until_shutdown(r, client_deadline).await
        })
        .await
    }

    async fn streaming_pull(
        &self,
        request: Request<Streaming<v1::StreamingPullRequest>>,
    ) -> Result<Response<Self::StreamingPullStream>, Status> {
        super::streaming_pull::streaming_pull(&self.state, request).await
    }

    async fn modify_push_config(
        &self,
        request: Request<v1::ModifyPushConfigRequest>,
    ) -> Result<Response<Empty>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.modify_push_config(r).await
        })
        .await
    }

    async fn get_snapshot(
        &self,
        request: Request<v1::GetSnapshotRequest>,
    ) -> Result<Response<v1::Snapshot>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.get_snapshot(r).await
        })
        .await
    }

    async fn list_snapshots(
        &self,
        request: Request<v1::ListSnapshotsRequest>,
    ) -> Result<Response<v1::ListSnapshotsResponse>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.list_snapshots(r).await
        })
        .await
    }

    async fn create_snapshot(
        &self,
        request: Request<v1::CreateSnapshotRequest>,
    ) -> Result<Response<v1::Snapshot>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.create_snapshot(r).await
        })
        .await
    }

    async fn update_snapshot(
        &self,
        request: Request<v1::UpdateSnapshotRequest>,
    ) -> Result<Response<v1::Snapshot>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.update_snapshot(r).await
        })
        .await
    }

    async fn delete_snapshot(
        &self,
        request: Request<v1::DeleteSnapshotRequest>,
    ) -> Result<Response<Empty>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.delete_snapshot(r).await
        })
        .await
    }

    async fn seek(
        &self,
        request: Request<v1::SeekRequest>,
    ) -> Result<Response<v1::SeekResponse>, Status> {
        unary(&self.state, request, |s, r| async move { s.seek(r).await }).await
    }
}
