//! What every request handler shares: the service once the store is open, and the shutdown
//! signal.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use crate::proto as v1;
use crate::service::{ApiError, PubSub};

/// Shared by the gRPC adapters, the REST handlers, health, metrics and admin routes.
///
/// The server binds and answers `/healthz` before the store has finished opening (replaying a
/// large log can take a while), so the service is filled in later; until then API calls answer
/// `UNAVAILABLE`, which every client retries.
#[derive(Clone, Debug, Default)]
pub struct AppState {
    service: Arc<OnceLock<PubSub>>,
    shutdown: CancellationToken,
}

impl AppState {
    /// A state with no service yet and shutdown not begun.
    pub fn new() -> Self {
        Self::default()
    }

    /// The service, or `UNAVAILABLE` while the store is still opening.
    pub fn service(&self) -> Result<&PubSub, ApiError> {
        self.service.get().ok_or_else(|| {
            ApiError::new(
                tonic::Code::Unavailable,
                "the server is starting: the store is not open yet",
            )
        })
    }

    /// The service if the store is open, without building an error (readiness, metrics).
    pub fn service_if_open(&self) -> Option<&PubSub> {
        self.service.get()
    }

    /// Makes the service available once the store is open. Called once; a second call is a bug.
    pub fn set_service(&self, service: PubSub) {
        let fresh = self.service.set(service).is_ok();
        debug_assert!(fresh, "the service was set twice");
    }

    /// Cancelled when shutdown begins: readiness turns 503, long polls answer with what they
    /// have, and the listener stops accepting.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Pull, cut short by shutdown: a long poll in flight when shutdown begins answers at once
    /// with what it has (nothing yet), so draining does not wait out its timeout. A pull that
    /// already has messages is answered with them.
    pub async fn pull_until_shutdown(
        &self,
        request: v1::PullRequest,
        client_deadline: Option<std::time::Duration>,
    ) -> Result<v1::PullResponse, ApiError> {
        let service = self.service()?.clone();
        tokio::select! {
            biased;
            answer = service.pull_within(request, client_deadline) => answer,
            () = self.shutdown.cancelled() => Ok(v1::PullResponse::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use converge_core::{Clock, SystemClock};
    use converge_store::embedded::{EmbeddedOptions, EmbeddedStore};

    use crate::service::PULL_LONG_POLL;

    const TOPIC: &str = "projects/p/topics/topic-1";
    const SUBSCRIPTION: &str = "projects/p/subscriptions/sub-1";

    async fn open_state() -> AppState {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = EmbeddedStore::open(EmbeddedOptions::default(), clock.clone())
            .expect("in-memory store");
        let service = PubSub::new(Arc::new(store), clock);
        let topic = v1::Topic {
            name: TOPIC.into(),
            ..Default::default()
        };
        service.create_topic(topic).await.expect("topic");
        let subscription = v1::Subscription {
            name: SUBSCRIPTION.into(),
            topic: TOPIC.into(),
            ..Default::default()
        };
        service
            .create_subscription(subscription)
            .await
            .expect("subscription");
        let state = AppState::new();
        state.set_service(service);
        state
    }

    #[tokio::test]
    async fn api_calls_are_unavailable_until_the_store_is_open() {
        let state = AppState::new();
        let error = state.service().expect_err("no service yet");
        assert_eq!(error.code, tonic::Code::Unavailable);
    }

    /// Time is paused: if the long poll were not cut short, the runtime would jump to the
    /// timeout below (before the long poll's end) and the test would fail, without sleeping.
    #[tokio::test(start_paused = true)]
    async fn shutdown_cuts_a_long_poll_short() {
        let state = open_state().await;
        let request = v1::PullRequest {
            subscription: SUBSCRIPTION.into(),
            max_messages: 10,
            ..Default::default()
        };
        let pulling = tokio::spawn({
            let state = state.clone();
            async move { state.pull_until_shutdown(request, None).await }
        });
        tokio::task::yield_now().await;
        state.shutdown().cancel();
        let answer = tokio::time::timeout(PULL_LONG_POLL / 2, pulling)
            .await
            .expect("the long poll ended at shutdown")
            .expect("no panic")
            .expect("an answer, not an error");
        assert!(answer.received_messages.is_empty());
    }
}
