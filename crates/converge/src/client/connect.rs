//! The connection to a broker: one h2c channel shared by the Publisher and Subscriber stubs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::publisher_client::PublisherClient;
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::subscriber_client::SubscriberClient;
use parking_lot::Mutex;
use tonic::transport::Channel;

use super::endpoint::{Endpoint, EndpointError};
use super::publisher::{Publisher, PublisherSettings};
use super::subscriber::{Subscriber, SubscriberSettings};
use crate::transport::{ReceiveOptions, TransportError};

/// Largest message sent or accepted: above the 10 MB publish limit, so that the broker, not
/// the client, decides what is too large.
pub const MAX_MESSAGE_BYTES: usize = 20 * 1024 * 1024;

/// How long to wait for the TCP connection before reporting the broker unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot connect to {endpoint}: {reason}")]
pub struct ConnectError {
    /// The address tried.
    pub endpoint: Endpoint,
    /// The innermost cause only, e.g. `Connection refused (os error 111)`: the layers above it
    /// (tonic, hyper) repeat "transport error" and "tcp connect error", which tell nobody
    /// anything.
    pub reason: String,
}

impl ConnectError {
    fn new(endpoint: &Endpoint, error: &tonic::transport::Error) -> Self {
        let mut cause: &dyn std::error::Error = error;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        Self {
            endpoint: endpoint.clone(),
            reason: cause.to_string(),
        }
    }
}

impl From<ConnectError> for TransportError {
    fn from(e: ConnectError) -> Self {
        Self::Connect {
            endpoint: e.endpoint.to_string(),
            reason: e.reason,
        }
    }
}

/// Why [`Client::from_env`] failed: the environment names no usable address, or nothing
/// answers there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FromEnvError {
    /// `CONVERGE_ENDPOINT` or `PUBSUB_EMULATOR_HOST` is malformed.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The broker could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

impl From<FromEnvError> for TransportError {
    fn from(e: FromEnvError) -> Self {
        match e {
            FromEnvError::Connect(e) => e.into(),
            FromEnvError::Endpoint(e) => Self::Status {
                code: tonic::Code::InvalidArgument,
                message: e.to_string(),
            },
        }
    }
}

/// A connection to a Pub/Sub-compatible broker (converge, the official emulator, or any
/// endpoint speaking the `google.pubsub.v1` gRPC API in plain text).
///
/// Cheap to clone: clones share one HTTP/2 connection, which tonic re-establishes by itself
/// after the broker restarts. It implements [`crate::Transport`], so the event bus and the
/// outbox relay run on it unchanged.
///
/// ```no_run
/// use converge::client::{Client, PublisherSettings};
/// use converge::OutgoingMessage;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Client::from_env().await?;
/// let publisher = client.publisher("projects/p/topics/orders", PublisherSettings::default());
/// let id = publisher
///     .publish(OutgoingMessage { data: "hello".into(), ..Default::default() })
///     .await?;
/// println!("stored as {id}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    publisher: PublisherClient<Channel>,
    subscriber: SubscriberClient<Channel>,
    /// One batching publisher per topic for [`crate::Transport::publish`], so concurrent
    /// callers share batches.
    pub(super) publishers: Arc<Mutex<HashMap<String, Publisher>>>,
    /// How the subscribers of [`crate::Transport::receive`] lease and settle.
    pub(super) subscriber_settings: SubscriberSettings,
}

impl Client {
    /// Connects eagerly, so that an unreachable address is reported as such rather than as
    /// the failure of the first call.
    pub async fn connect(endpoint: Endpoint) -> Result<Self, ConnectError> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.uri())
            .map_err(|e| ConnectError::new(&endpoint, &e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(|e| ConnectError::new(&endpoint, &e))?;
        tracing::debug!(endpoint = %endpoint, "connected");
        Ok(Self::with_channel(endpoint, channel))
    }

    /// Connects on first use instead: for a service that may start before its broker. Calls
    /// made while the broker is down fail with `UNAVAILABLE`, which the publisher and the
    /// subscriber retry. Must be called inside a tokio runtime.
    pub fn connect_lazy(endpoint: Endpoint) -> Result<Self, ConnectError> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.uri())
            .map_err(|e| ConnectError::new(&endpoint, &e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_lazy();
        Ok(Self::with_channel(endpoint, channel))
    }

    /// Connects to the endpoint of [`Endpoint::from_env`]: `CONVERGE_ENDPOINT`, then
    /// `PUBSUB_EMULATOR_HOST`, then `127.0.0.1:8085`.
    pub async fn from_env() -> Result<Self, FromEnvError> {
        Ok(Self::connect(Endpoint::from_env()?).await?)
    }

    fn with_channel(endpoint: Endpoint, channel: Channel) -> Self {
        Self {
            endpoint,
            publisher: PublisherClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            subscriber: SubscriberClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            publishers: Arc::default(),
            subscriber_settings: SubscriberSettings::default(),
        }
    }

    /// The same client, receiving through [`crate::Transport::receive`] with these settings
    /// (for instance shorter leases, so that the messages of a consumer that crashed go to
    /// another one sooner, at the price of more extension calls).
    #[must_use]
    pub fn with_subscriber_settings(mut self, settings: SubscriberSettings) -> Self {
        self.subscriber_settings = settings;
        self
    }

    /// The address this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The generated Publisher stub on this connection, for calls the SDK does not wrap
    /// (topic administration, the CLI).
    pub fn publisher_stub(&self) -> PublisherClient<Channel> {
        self.publisher.clone()
    }

    /// The generated Subscriber stub on this connection, for calls the SDK does not wrap
    /// (subscription administration, unary pull, seek).
    pub fn subscriber_stub(&self) -> SubscriberClient<Channel> {
        self.subscriber.clone()
    }

    /// A batching publisher to `topic` (full name, `projects/{project}/topics/{topic}`).
    /// Must be called inside a tokio runtime: batches are sent by background tasks.
    pub fn publisher(&self, topic: impl Into<String>, settings: PublisherSettings) -> Publisher {
        Publisher::new(self.publisher.clone(), topic.into(), settings)
    }

    /// A StreamingPull subscriber to `subscription` (full name,
    /// `projects/{project}/subscriptions/{subscription}`) with these flow-control limits.
    pub fn subscriber(
        &self,
        subscription: impl Into<String>,
        options: ReceiveOptions,
    ) -> Subscriber {
        Subscriber::new(self.subscriber.clone(), subscription.into(), options)
    }
}
