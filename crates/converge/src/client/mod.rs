//! The gRPC client: publish and subscribe over the `google.pubsub.v1` API, against converge or
//! any Pub/Sub-compatible endpoint (the official emulator; Google Cloud Pub/Sub behind a
//! plain-text proxy).
//!
//! - [`Endpoint`]: where the broker is, from an explicit `host:port` / `http://host:port` or
//!   from `CONVERGE_ENDPOINT` / `PUBSUB_EMULATOR_HOST`.
//! - [`Client`]: one connection, the generated stubs on it, and [`crate::Transport`].
//! - [`Publisher`]: batching by count, bytes and delay; ordering keys; retries of transient
//!   failures with backoff; a [`PublishHandle`] per message resolving to its id.
//! - [`Subscriber`]: StreamingPull with flow control, lease extension while a handler runs,
//!   ack or nack by the handler's [`crate::Disposition`], reconnects, graceful shutdown.
//!
//! It behaves like the official clients (see `/work/shared/pubsub-notes.md` in the project):
//! the same batching defaults and retryable codes, acks and lease extensions as unary calls,
//! a client id kept across reconnects.

mod acker;
mod connect;
mod dispatch;
mod endpoint;
mod grpc_transport;
mod publisher;
mod retry;
mod stream;
mod subscriber;

pub use connect::{Client, ConnectError, FromEnvError, MAX_MESSAGE_BYTES};
pub use endpoint::{DEFAULT_ENDPOINT, ENDPOINT_ENV_VARS, Endpoint, EndpointError};
pub use publisher::{
    MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, PublishError, PublishHandle, Publisher, PublisherSettings,
};
pub use retry::{RetrySettings, is_transient};
pub use subscriber::{Subscriber, SubscriberSettings, SubscriberStats};
