//! The gRPC connection to a broker, through the SDK's [`converge::client::Client`] (one h2c
//! channel shared by the Publisher and Subscriber stubs), and the translation of a gRPC status
//! into the one-line error the CLI prints.

use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::publisher_client::PublisherClient;
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::subscriber_client::SubscriberClient;
use tonic::transport::Channel;

use crate::parse::Endpoint;

/// Why talking to the broker failed. Each variant prints as one self-contained line, so none
/// exposes a `source` (anyhow would append the chain again).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker could not be reached.
    #[error("cannot connect to {endpoint}: {reason} (is `converge serve` running there?)")]
    Connect {
        /// The address tried.
        endpoint: Endpoint,
        /// The innermost cause, e.g. `Connection refused (os error 111)`.
        reason: String,
    },
    /// The broker answered with an error status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(tonic::Status),
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        Self::Rpc(status)
    }
}

/// The SDK reports the innermost cause only; the CLI adds its hint.
impl From<converge::client::ConnectError> for ClientError {
    fn from(e: converge::client::ConnectError) -> Self {
        Self::Connect {
            endpoint: e.endpoint,
            reason: e.reason,
        }
    }
}

/// Clients of both services over one connection.
#[derive(Debug, Clone)]
pub struct Clients {
    /// Topics and publishing.
    pub publisher: PublisherClient<Channel>,
    /// Subscriptions, pull and acknowledgement.
    pub subscriber: SubscriberClient<Channel>,
}

/// Connects to the broker eagerly, so that an unreachable address is reported as such rather
/// than as the failure of the first call.
pub async fn connect(endpoint: &Endpoint) -> Result<Clients, ClientError> {
    let client = converge::client::Client::connect(endpoint.clone()).await?;
    Ok(Clients {
        publisher: client.publisher_stub(),
        subscriber: client.subscriber_stub(),
    })
}

/// The canonical name of a gRPC code (`NOT_FOUND`), as Google's tools print it: the same
/// table the server uses for its REST errors.
pub use converge_server::service::error::status_name as code_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_errors_print_code_and_message_on_one_line() {
        let status = tonic::Status::not_found("Resource not found (resource=orders).");
        let err = anyhow::Error::from(ClientError::from(status));
        // `{:#}` is how main prints errors: it must not repeat the status through a source chain.
        assert_eq!(
            format!("{err:#}"),
            "NOT_FOUND: Resource not found (resource=orders)."
        );
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_reported_with_its_address() {
        // Bind and drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = crate::parse::endpoint(&format!("127.0.0.1:{port}")).unwrap();
        let err = connect(&endpoint).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot connect to http://127.0.0.1:{port}")),
            "{err}"
        );
    }
}
