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
//! - [`memory`]: the same semantics in process, with a controllable clock, for unit tests.
//!
//! [`transport::Transport`] is the seam: everything above it runs unchanged on the gRPC
//! client and on the in-memory backend.

pub mod bus;
pub mod client;
pub mod cloudevents;
pub mod event;
pub mod idempotency;
pub mod memory;
pub mod outbox;
pub mod transport;

pub use transport::{
    Attributes, Disposition, IncomingMessage, OutgoingMessage, Transport, TransportError,
};
