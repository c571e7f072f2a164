//! HTTP pieces for the services around the broker (axum and tower):
//!
//! - [`idempotency`]: the `Idempotency-Key` middleware, so that a client's retry of a request
//!   that was already served gets the first answer instead of doing the work twice;
//! - [`request_log`]: one structured line per inbound and outbound request
//!   (`REQUEST_INBOUND`, `REQUEST_OUTBOUND`) and `x-request-id` propagation.

pub mod idempotency;
pub mod request_log;
