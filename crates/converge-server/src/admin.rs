//! Test hooks, mounted only when the server runs with `test_clock`.
//!
//! `POST /converge/test/clock:advance` with `{"seconds": N}` moves the broker's clock forward by
//! N seconds and runs the store's maintenance at once, so a test can reach an ack deadline, a
//! retry backoff, retention or expiration without sleeping. **For tests only**: it lets any
//! caller move time, which would expire leases and messages early in production.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use converge_core::{Clock, OffsetClock};
use serde::Deserialize;

use crate::http::Operation;
use crate::service::ApiError;
use crate::state::AppState;

/// The path of the clock hook.
pub const ADVANCE_CLOCK_PATH: &str = "/converge/test/clock:advance";

/// What the admin routes share.
#[derive(Debug, Clone)]
struct AdminState {
    app: AppState,
    clock: OffsetClock,
}

/// The body of a clock advance.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    /// How far to move the clock; fractional seconds allowed, never negative.
    seconds: f64,
}

/// The test routes, advancing `clock` (the one the store reads). Merge only with `test_clock`.
pub fn router(app: AppState, clock: OffsetClock) -> Router {
    Router::new()
        .route(ADVANCE_CLOCK_PATH, post(advance_clock))
        .with_state(AdminState { app, clock })
}

/// Advances the clock, runs maintenance, and answers `{"now": "<RFC 3339>"}`.
async fn advance_clock(State(state): State<AdminState>, body: Bytes) -> Response {
    let mut response = match advance(&state, &body).await {
        Ok(now) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "now": humantime::format_rfc3339_millis(now).to_string() })
                .to_string(),
        )
            .into_response(),
        Err(e) => error_response(&e),
    };
    response.extensions_mut().insert(Operation("AdvanceClock"));
    response
}

/// The work of [`advance_clock`]: returns the clock's new time.
async fn advance(state: &AdminState, body: &[u8]) -> Result<std::time::SystemTime, ApiError> {
    let request: Advance =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("bad body: {e}")))?;
    let by = Duration::try_from_secs_f64(request.seconds).map_err(|_| {
        ApiError::invalid(format!(
            "seconds must be a finite number >= 0, got {}",
            request.seconds
        ))
    })?;
    let store = state.app.service()?.store().clone();
    state.clock.advance(by);
    store.maintain().await.map_err(ApiError::from)?;
    tracing::info!(advanced_seconds = request.seconds, "test clock advanced");
    Ok(state.clock.now())
}

/// Google's error shape with its HTTP status.
fn error_response(error: &ApiError) -> Response {
    (
        error.http_status(),
        [(header::CONTENT_TYPE, "application/json")],
        error.to_json().to_string(),
    )
        .into_response()
}
