//! The one error type of the domain and of every storage engine.
//!
//! Each variant corresponds to one gRPC status code; the server maps them once, in one place,
//! to gRPC `Status` and to Google's JSON error shape.

/// Errors of the domain rules and of storage engines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is malformed or violates a limit (gRPC `INVALID_ARGUMENT`).
    #[error("{0}")]
    InvalidArgument(String),
    /// The named resource does not exist (gRPC `NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// The resource to create exists already (gRPC `ALREADY_EXISTS`).
    #[error("{0}")]
    AlreadyExists(String),
    /// The resource is not in a state that allows the operation (gRPC `FAILED_PRECONDITION`).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The store cannot serve right now, for instance while shutting down (gRPC `UNAVAILABLE`).
    /// The client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a broken invariant, or an I/O failure that leaves the outcome unknown
    /// (gRPC `INTERNAL`).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// `INVALID_ARGUMENT` with the given message.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}

/// Result with the domain [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
