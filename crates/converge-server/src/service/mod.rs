//! The service layer: one async function per `google.pubsub.v1` RPC, shared by gRPC and REST.
//!
//! gRPC and REST are two doors into one service. Every rule that the API applies (validation,
//! limits, defaults, field masks, error messages) lives here once, so that both surfaces answer
//! every request identically. The [`Store`] applies the delivery semantics; this layer
//! translates between the wire types and the domain types and validates requests.

mod convert;
pub mod error;
mod field_mask;
mod iam;
mod publisher;
pub mod schema_validation;
mod schemas;
mod snapshots;
pub mod streaming;
mod subscriber;
#[cfg(test)]
mod tests;

pub use error::ApiError;
pub use subscriber::PULL_LONG_POLL;

use std::sync::Arc;
use std::time::SystemTime;

use converge_core::{Clock, PageRequest, Store};

/// The Pub/Sub service: cheap to clone (an `Arc` inside), shared by every request handler.
#[derive(Clone)]
pub struct PubSub {
    inner: Arc<Inner>,
}

/// What every clone of a [`PubSub`] shares.
struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// What each open StreamingPull stream has out (see [`streaming`]).
    streams: streaming::StreamRegistry,
}

impl std::fmt::Debug for PubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSub")
            .field("clock", &self.inner.clock)
            .finish_non_exhaustive()
    }
}

impl PubSub {
    /// A service over `store`, reading the time from `clock` (so tests can move time).
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                clock,
                streams: streaming::StreamRegistry::default(),
            }),
        }
    }

    /// The store, for the server's maintenance loop, readiness checks and metrics.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The current time, from the service's clock.
    fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }
}

/// Maps a store error about the resource `id` (the short id, as the real service words it) to the
/// API error: `NOT_FOUND` and `ALREADY_EXISTS` get the real service's exact wording, whatever
/// words the engine chose; every other error keeps its code and message.
fn store_error(id: &str) -> impl FnOnce(converge_core::Error) -> ApiError + '_ {
    move |e| match e {
        converge_core::Error::NotFound(_) => not_found(id),
        converge_core::Error::AlreadyExists(_) => already_exists(id),
        other => ApiError::from(other),
    }
}

/// `NOT_FOUND` worded as the real service words it.
fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Resource not found (resource={id})."))
}

/// `ALREADY_EXISTS` worded as the real service words it.
fn already_exists(id: &str) -> ApiError {
    ApiError::new(
        tonic::Code::AlreadyExists,
        format!("Resource already exists in the project (resource={id})."),
    )
}

/// The store's page request of a List RPC; a negative page size is `INVALID_ARGUMENT`, zero means
/// the engine's default.
fn page_request(page_size: i32, page_token: String) -> Result<PageRequest, ApiError> {
    let page_size = usize::try_from(page_size).map_err(|_| {
        ApiError::invalid(format!(
            "Invalid page_size {page_size}: must not be negative"
        ))
    })?;
    Ok(PageRequest {
        page_size,
        page_token,
    })
}
