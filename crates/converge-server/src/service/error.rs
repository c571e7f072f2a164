//! The error every RPC answers with, mapped once to gRPC and to Google's REST error shape.

use converge_core::Error;
use tonic::Code;

/// An RPC failure: a gRPC code and a message meant for the API user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    /// The gRPC status code.
    pub code: Code,
    /// What went wrong, naming the field or resource concerned.
    pub message: String,
}

impl ApiError {
    /// An error with the given code.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `INVALID_ARGUMENT`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// `UNIMPLEMENTED`, for RPCs that a later version of converge implements.
    pub fn unimplemented(method: &str) -> Self {
        Self::new(
            Code::Unimplemented,
            format!("{method} is not implemented by this version of converge"),
        )
    }

    /// The gRPC status.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.code, self.message.clone())
    }

    /// The HTTP status Google's REST API uses for this code.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self.code {
            Code::Ok => S::OK,
            Code::Cancelled => S::from_u16(499).unwrap_or(S::BAD_REQUEST),
            Code::Unknown | Code::Internal | Code::DataLoss => S::INTERNAL_SERVER_ERROR,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => S::BAD_REQUEST,
            Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
            Code::NotFound => S::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => S::CONFLICT,
            Code::PermissionDenied => S::FORBIDDEN,
            Code::Unauthenticated => S::UNAUTHORIZED,
            Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
            Code::Unimplemented => S::NOT_IMPLEMENTED,
            Code::Unavailable => S::SERVICE_UNAVAILABLE,
        }
    }

    /// Google's JSON error body: `{"error":{"code":404,"message":"…","status":"NOT_FOUND"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "code": self.http_status().as_u16(),
                "message": self.message,
                "status": status_name(self.code),
            }
        })
    }
}

/// The canonical upper-snake name of a gRPC code, as Google's REST errors spell it.
pub fn status_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        };
        Self::new(code, e.to_string())
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_distinct_screaming_name() {
        let names: std::collections::HashSet<_> =
            (0..=16).map(|i| status_name(Code::from_i32(i))).collect();
        assert_eq!(names.len(), 17);
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        );
    }

    #[test]
    fn rest_errors_use_google_shape() {
        let e = ApiError::not_found("Resource not found (resource=t).");
        assert_eq!(e.http_status(), http::StatusCode::NOT_FOUND);
        assert_eq!(
            e.to_json(),
            serde_json::json!({"error": {"code": 404, "message": "Resource not found (resource=t).", "status": "NOT_FOUND"}})
        );
    }
}
