//! `GET /converge/push/jwks.json`: the public keys of push tokens as a JWK Set (RFC 7517), so a
//! push receiver verifies converge's tokens with any JWT library, as it would fetch Google's
//! certificates for real push tokens.
//!
//! The set holds every stored signing key (normally one). Asking for it creates the key if no
//! push has needed one yet, so a receiver that fetches the set at startup finds the key that
//! later tokens are signed with.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use converge_core::Store;

use super::{PushAuthError, keys};
use crate::http::Operation;
use crate::service::ApiError;
use crate::state::AppState;

/// Where the JWK Set is served.
pub const JWKS_PATH: &str = "/converge/push/jwks.json";

/// How long receivers may cache the set: keys are long-lived, and a new one only appears after
/// a race at creation, when both are served.
const CACHE_CONTROL: &str = "public, max-age=300";

/// The JWKS route, to merge into the server's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(JWKS_PATH, get(serve_jwks))
        .with_state(state)
}

/// Answers the JWK Set, or `UNAVAILABLE` while the store opens, in Google's error shape.
async fn serve_jwks(State(state): State<AppState>) -> Response {
    let answer = match state.service() {
        Ok(service) => document(service.store().as_ref())
            .await
            .map_err(|e| internal(&e)),
        Err(e) => Err(e),
    };
    let mut response = match answer {
        Ok(set) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, CACHE_CONTROL),
            ],
            set.to_string(),
        )
            .into_response(),
        Err(e) => (
            e.http_status(),
            [(header::CONTENT_TYPE, "application/json")],
            e.to_json().to_string(),
        )
            .into_response(),
    };
    response.extensions_mut().insert(Operation("GetPushJwks"));
    response
}

/// The JWK Set of the keys in `store`, creating the first key if there is none.
pub async fn document(store: &dyn Store) -> Result<serde_json::Value, PushAuthError> {
    let mut stored = keys::load_all(store).await?;
    if stored.is_empty() {
        stored.push(keys::load_or_create(store).await?);
    }
    let keys: Vec<_> = stored.iter().map(keys::SigningKey::public_jwk).collect();
    Ok(serde_json::json!({ "keys": keys }))
}

/// A key failure as the API's internal error; the detail goes to the log, not the client.
fn internal(error: &PushAuthError) -> ApiError {
    tracing::error!(error = %error, "cannot serve the push JWKS");
    ApiError::new(tonic::Code::Internal, "cannot read the push signing keys")
}
