//! Test doubles around a real [`Transport`]: a type implements [`Intercept`], overriding only
//! the calls it is about, and [`Intercepted`] makes it a transport that passes the rest on.

use std::ops::Deref;
use std::sync::Arc;

use converge::transport::{
    MessageHandler, OutgoingMessage, ReceiveOptions, SubscriptionConfig, TopicConfig, Transport,
    TransportError,
};
use tokio_util::sync::CancellationToken;

/// What a wrapper around a transport changes: every call not overridden goes to
/// [`Intercept::inner`] unchanged.
#[async_trait::async_trait]
pub trait Intercept: Send + Sync + std::fmt::Debug + 'static {
    /// The transport calls are passed on to.
    fn inner(&self) -> &Arc<dyn Transport>;

    /// [`Transport::publish`]; passed on by default.
    async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<String>, TransportError> {
        self.inner().publish(topic, messages).await
    }

    /// [`Transport::receive`]; passed on by default.
    async fn receive(
        &self,
        subscription: &str,
        options: ReceiveOptions,
        handler: MessageHandler,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError> {
        self.inner()
            .receive(subscription, options, handler, shutdown)
            .await
    }
}

/// `T` as a [`Transport`]; derefs to `T` for the test to read what it recorded.
#[derive(Debug)]
pub struct Intercepted<T>(pub T);

impl<T> Deref for Intercepted<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

#[async_trait::async_trait]
impl<T: Intercept> Transport for Intercepted<T> {
    async fn ensure_topic(&self, topic: &TopicConfig) -> Result<(), TransportError> {
        self.0.inner().ensure_topic(topic).await
    }

    async fn ensure_subscription(
        &self,
        subscription: &SubscriptionConfig,
    ) -> Result<(), TransportError> {
        self.0.inner().ensure_subscription(subscription).await
    }

    async fn publish(
        &self,
        topic: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<String>, TransportError> {
        self.0.publish(topic, messages).await
    }

    async fn receive(
        &self,
        subscription: &str,
        options: ReceiveOptions,
        handler: MessageHandler,
        shutdown: CancellationToken,
    ) -> Result<(), TransportError> {
        self.0
            .receive(subscription, options, handler, shutdown)
            .await
    }
}
