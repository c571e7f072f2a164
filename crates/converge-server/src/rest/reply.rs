//! REST answers: proto3 JSON bodies and Google's error shape.

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::service::ApiError;

/// A 200 answer with a JSON body.
pub fn json(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// An error in Google's shape (`{"error":{"code","message","status"}}`) with its HTTP status.
pub fn error(error: &ApiError) -> Response {
    let body = error.to_json().to_string();
    (
        error.http_status(),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// 404 for a path that names no operation, in Google's error shape.
pub fn not_found(method: &Method, path: &str) -> Response {
    error(&ApiError::not_found(format!(
        "The requested URL {method} {path} was not found on this server."
    )))
}

/// 405 for a known path with the wrong HTTP method, listing the right ones in `Allow`.
///
/// There is no gRPC code for "wrong HTTP method"; like gRPC-HTTP transcoders, the error names
/// `UNIMPLEMENTED` (this method is not implemented for this path) while the HTTP status is 405.
pub fn method_not_allowed(method: &Method, path: &str, allowed: &[Method]) -> Response {
    let allow = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let body = serde_json::json!({
        "error": {
            "code": StatusCode::METHOD_NOT_ALLOWED.as_u16(),
            "message": format!("Method {method} is not allowed for {path}; allowed: {allow}."),
            "status": "UNIMPLEMENTED",
        }
    });
    let mut response = (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}
