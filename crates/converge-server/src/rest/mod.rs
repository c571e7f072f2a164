//! The REST/JSON door: the public API's `/v1/…` paths, each mapped onto the same
//! [`crate::service::PubSub`] call as its gRPC method.
//!
//! Every `/v1/` request goes through one handler: [`route::resolve`] picks the operation from
//! the method and path (custom verbs such as `:publish` included), `handler` builds the
//! request (path names win over body names), calls the service and answers in proto3 JSON
//! ([`json`]); errors come in Google's shape. Unknown paths are 404 and known paths with the
//! wrong method 405, both in that shape too.

mod handler;
pub mod json;
mod reply;
pub mod route;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::Response;
use axum::routing::any;

use crate::http::Operation;
use crate::service::ApiError;
use crate::state::AppState;
use route::RouteError;

/// Largest REST request body: a 10 MB publish grows by a third in base64, plus JSON around it.
pub const MAX_BODY_BYTES: usize = 2 * crate::grpc::MAX_MESSAGE_SIZE;

/// The REST routes plus the server's fallback (404 in Google's shape, or `UNIMPLEMENTED` for a
/// gRPC call to a service converge does not serve), to merge into the server's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/{*path}", any(dispatch))
        .fallback(fallback)
        .with_state(state)
}

/// Resolves, reads the body, runs the operation, and names it for the request log.
async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let route = match route::resolve(&parts.method, parts.uri.path()) {
        Ok(route) => route,
        Err(RouteError::NotFound) => return reply::not_found(&parts.method, parts.uri.path()),
        Err(RouteError::MethodNotAllowed { allowed }) => {
            return reply::method_not_allowed(&parts.method, parts.uri.path(), &allowed);
        }
    };
    let op = route.op;
    let answer = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => handler::execute(&state, route, &parts.uri, &bytes).await,
        Err(e) => Err(ApiError::invalid(format!(
            "Request payload cannot be read (at most {MAX_BODY_BYTES} bytes): {e}"
        ))),
    };
    let mut response = match answer {
        Ok(body) => reply::json(body),
        Err(e) => reply::error(&e),
    };
    response.extensions_mut().insert(Operation(op.rpc_name()));
    response
}

/// Anything no route matched.
async fn fallback(request: Request) -> Response {
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if grpc {
        let status = tonic::Status::unimplemented(format!(
            "unknown service or method: {}",
            request.uri().path()
        ));
        return status.into_http::<Body>();
    }
    reply::not_found(request.method(), request.uri().path())
}
