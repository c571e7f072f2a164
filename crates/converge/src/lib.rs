//! # converge: eventual consistency as a library
//!
//! A call between two services can fail before, during or after the work it asks for. The
//! services stay in agreement only if every intent is recorded durably once and then retried,
//! idempotently, until it has been carried out. This crate gives a Rust service the pieces for
//! that, over any Pub/Sub-compatible broker (converge itself, the official emulator, Google
//! Cloud Pub/Sub):
//!
//! - [`client`]: a publisher (batching, ordering keys, retries) and a subscriber
//!   (StreamingPull, flow control, lease extension) over the gRPC API;
//! - [`event`] and [`cloudevents`]: typed events carried as CloudEvents on message attributes;
//! - [`bus`]: one topic and one subscription per service, handlers dispatched by event type,
//!   cascades of events with [`idempotency`] keys derived so that retries produce no duplicates;
//! - [`outbox`]: events written in the application's own database transaction and relayed to
//!   the broker;
//! - [`memory`]: the same semantics in process, with a controllable clock, for unit tests;
//! - [`idempotency::store`], [`idempotency::guard`] and [`http::idempotency`]: keys recorded
//!   with a lease and an outcome, for calls into systems without idempotency and for the
//!   `Idempotency-Key` header of your own HTTP API;
//! - [`http_client`]: an HTTP client that retries what is worth retrying, for as long as the
//!   caller can wait, with the current idempotency key;
//! - [`http::request_log`], [`health`] and [`push`]: request logs, readiness checks and the
//!   receiving end of push subscriptions.
//!
//! [`transport::Transport`] is the seam: everything above it runs unchanged on the gRPC
//! client and on the in-memory backend.
//!
//! # Quick start
//!
//! A service's event bus on a broker found through `CONVERGE_ENDPOINT` or
//! `PUBSUB_EMULATOR_HOST` (swap the client for [`memory::MemoryTransport`] in unit tests):
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use converge::bus::{EventBus, HandlerContext};
//! use converge::client::Client;
//! use converge::event::Event;
//! use serde::{Deserialize, Serialize};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderPaid { order: u64 }
//! impl Event for OrderPaid { const TYPE: &'static str = "com.example.order.paid"; }
//!
//! #[derive(Serialize, Deserialize)]
//! struct ReceiptSent { order: u64 }
//! impl Event for ReceiptSent { const TYPE: &'static str = "com.example.order.receipt-sent"; }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::from_env().await?;
//! let bus = EventBus::builder(
//!     Arc::new(client),
//!     "projects/shop/topics/orders",
//!     "projects/shop/subscriptions/orders",
//! )
//! .on(|paid: OrderPaid, ctx: HandlerContext| async move {
//!     // Call other services with ctx.idempotency_key(), then go on with the cascade: the
//!     // emitted event's key is derived from this one, so a retry emits no duplicate.
//!     ctx.emit(&ReceiptSent { order: paid.order }).await?;
//!     Ok(())
//! })
//! .on(|_sent: ReceiptSent, _ctx: HandlerContext| async move { Ok(()) })
//! .build()
//! .await?;
//! bus.publish(&OrderPaid { order: 42 }).await?;
//! bus.run(CancellationToken::new()).await?;
//! # Ok(()) }
//! ```

pub mod bus;
pub mod client;
pub mod cloudevents;
pub mod event;
pub mod health;
pub mod http;
pub mod http_client;
pub mod idempotency;
pub mod memory;
pub mod outbox;
pub mod push;
mod sql;
pub mod transport;

pub use transport::{
    Attributes, Disposition, IncomingMessage, OutgoingMessage, Transport, TransportError,
};
