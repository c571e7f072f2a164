//! `google.pubsub.v1.Publisher` over [`crate::service::PubSub`].

use tonic::{Request, Response, Status};

use super::stubs::publisher_server::Publisher;
use super::{Empty, unary};
use crate::proto as v1;
use crate::state::AppState;

/// The Publisher service: each RPC is one call into the service layer.
#[derive(Debug, Clone)]
pub struct PublisherApi {
    state: AppState,
}

impl PublisherApi {
    /// A Publisher answering from `state`'s service.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Publisher for PublisherApi {
    async fn create_topic(
        &self,
        request: Request<v1::Topic>,
    ) -> Result<Response<v1::Topic>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.create_topic(r).await
        })
        .await
    }

    async fn update_topic(
        &self,
        request: Request<v1::UpdateTopicRequest>,
    ) -> Result<Response<v1::Topic>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.update_topic(r).await
        })
        .await
    }

    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        unary(
            &self.state,
            request,
            |s, r| async move { s.publish(r).await },
        )
        .await
    }

    async fn get_topic(
        &self,
        request: Request<v1::GetTopicRequest>,
    ) -> Result<Response<v1::Topic>, Status> {
        unary(
            &self.state,
            request,
            |s, r| async move { s.get_topic(r).await },
        )
        .await
    }

    async fn list_topics(
        &self,
        request: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.list_topics(r).await
        })
        .await
    }

    async fn list_topic_subscriptions(
        &self,
        request: Request<v1::ListTopicSubscriptionsRequest>,
    ) -> Result<Response<v1::ListTopicSubscriptionsResponse>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.list_topic_subscriptions(r).await
        })
        .await
    }

    async fn list_topic_snapshots(
        &self,
        request: Request<v1::ListTopicSnapshotsRequest>,
    ) -> Result<Response<v1::ListTopicSnapshotsResponse>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.list_topic_snapshots(r).await
        })
        .await
    }

    async fn delete_topic(
        &self,
        request: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<Empty>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.delete_topic(r).await
        })
        .await
    }

    async fn detach_subscription(
        &self,
        request: Request<v1::DetachSubscriptionRequest>,
    ) -> Result<Response<v1::DetachSubscriptionResponse>, Status> {
        unary(&self.state, request, |s, r| async move {
            s.detach_subscription(r).await
        })
        .await
    }
}
