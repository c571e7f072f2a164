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
    /// A `google.rpc.ErrorInfo` detail, for errors that clients read per item (exactly-once
    /// acknowledgement failures); `None` for most errors.
    pub error_info: Option<ErrorInfo>,
}

/// A `google.rpc.ErrorInfo` status detail: why an error happened, in a form clients parse
/// rather than show (the official Pub/Sub clients read per-ack-id outcomes from its metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    /// The reason, UPPER_SNAKE_CASE, e.g. `EXACTLY_ONCE_ACKID_FAILURE`.
    pub reason: String,
    /// The service the reason belongs to, e.g. `pubsub.googleapis.com`.
    pub domain: String,
    /// Structured details, e.g. one entry per failed ack id.
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl ApiError {
    /// An error with the given code.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            error_info: None,
        }
    }

    /// The same error carrying `info` as a status detail.
    pub fn with_error_info(mut self, info: ErrorInfo) -> Self {
        self.error_info = Some(info);
        self
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
    /// The gRPC status; an [`ErrorInfo`] goes into the status details (`grpc-status-details-bin`,
    /// a `google.rpc.Status` with the same code and message), where Google's clients look.
    pub fn to_status(&self) -> tonic::Status {
        use tonic_types::{ErrorDetails, StatusExt as _};
        let Some(info) = &self.error_info else {
            return tonic::Status::new(self.code, self.message.clone());
        };
        let metadata: std::collections::HashMap<_, _> = info
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let details =
            ErrorDetails::with_error_info(info.reason.clone(), info.domain.clone(), metadata);
        tonic::Status::with_error_details(self.code, self.message.clone(), details)
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
    /// With an [`ErrorInfo`], `details` holds it as Google's REST errors do
    /// (`{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason", "domain", "metadata"}`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut error = serde_json::json!({
            "code": self.http_status().as_u16(),
            "message": self.message,
            "status": status_name(self.code),
        });
        if let Some(info) = &self.error_info {
            error["details"] = serde_json::json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": info.reason,
                "domain": info.domain,
                "metadata": info.metadata,
            }]);
        }
        serde_json::json!({ "error": error })
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
