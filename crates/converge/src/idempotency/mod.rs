//! Idempotency keys: one key per intent, carried along everything the intent causes.
//!
//! A broker redelivers, a handler is retried, a relay publishes again after a crash: every step
//! of a cascade may run more than once. Each step stays harmless if everything it does carries a
//! key naming *the intent*, not the attempt, so that whoever receives it twice can tell. converge
//! deduplicates publishes on the [`IDEMPOTENCY_KEY_ATTRIBUTE`] attribute (within the topic's
//! window); the event bus puts an [`IdempotencyKey`] on every event and derives the keys of the
//! events a handler emits from the key of the event it handles, so a retried handler emits the
//! same keys again and the broker drops the copies. (Google Cloud Pub/Sub does not deduplicate
//! on this attribute; there the keys still let every consumer recognise repeats itself.)
//!
//! # Derivation scheme
//!
//! [`IdempotencyKey::derive`] is a UUID version 5 (SHA-1, RFC 9562) in the namespace
//! [`DERIVATION_NAMESPACE`] over the bytes of the parent key, one zero byte, and the position as
//! four big-endian bytes. The zero byte cannot occur in a key, so distinct (parent, position)
//! pairs never share a name; any implementation, in any language, can reproduce the keys.
//!
//! # The current key
//!
//! While the bus runs a handler, the key of the event being handled is also available as
//! [`IdempotencyKey::current`] (a tokio task-local), so code deep in the call stack (an HTTP
//! client sending an `Idempotency-Key` header, a database write keyed for upserts) can pick it up
//! without every function passing it along. Task-locals do not cross `tokio::spawn`: a spawned
//! task must be wrapped in [`IdempotencyKey::scope`] again.
//!
//! # Remembering what was done: the store, the guard, the middleware
//!
//! A key only helps if whoever receives it remembers what it already did for it.
//! [`store::IdempotencyStore`] is that memory (PostgreSQL and SQLite through sqlx, or in
//! memory for tests): a key is recorded with a fingerprint of the request, leased while the
//! work runs, and holds the outcome once done, until its retention period ends. Two users sit on
//! top of it:
//!
//! - [`guard::IdempotencyGuard`], for calls into systems that know nothing of idempotency (a
//!   mail provider, a printer): check, lease, run, mark done;
//! - [`crate::http::idempotency`], the `Idempotency-Key` middleware for axum and tower, which
//!   replays a completed request's response to a client's retry.

pub mod guard;
mod key;
pub mod store;

pub use key::{
    DERIVATION_NAMESPACE, IDEMPOTENCY_KEY_ATTRIBUTE, IdempotencyKey, InvalidIdempotencyKey,
    MAX_IDEMPOTENCY_KEY_BYTES,
};
