//! Liveness and readiness probes.
//!
//! `/healthz` says the process runs and answers (restart it if not); `/readyz` says it should get
//! traffic: the store is open and accepts a durable write, and shutdown has not begun (take it
//! out of the load balancer if not).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::state::AppState;

/// The probe routes, to merge into the server's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Always 200 `ok`: answering at all is the proof of life.
async fn healthz() -> &'static str {
    "ok"
}

/// 200 `ok` when ready for traffic, else 503 with the reason as text.
async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    match readiness(&state).await {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

/// Why the server is not ready, if it is not.
async fn readiness(state: &AppState) -> Result<(), String> {
    if state.is_shutting_down() {
        return Err("shutting down".to_owned());
    }
    let Some(service) = state.service_if_open() else {
        return Err("starting: the store is not open yet".to_owned());
    };
    service
        .store()
        .check_ready()
        .await
        .map_err(|e| format!("store not ready: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(state: &AppState, path: &str) -> (StatusCode, String) {
        let response = router(state.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn healthz_is_ok_even_while_starting() {
        let state = AppState::new();
        assert_eq!(
            get(&state, "/healthz").await,
            (StatusCode::OK, "ok".to_owned())
        );
    }

    #[tokio::test]
    async fn readyz_is_503_until_the_store_is_open() {
        let state = AppState::new();
        let (status, body) = get(&state, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("starting"), "{body}");
    }

    #[tokio::test]
    async fn readyz_is_503_once_shutdown_begins() {
        let state = AppState::new();
        state.shutdown().cancel();
        assert_eq!(
            get(&state, "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned())
        );
        assert_eq!(get(&state, "/healthz").await.0, StatusCode::OK);
    }
}
