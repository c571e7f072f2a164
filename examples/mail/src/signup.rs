//! The signup service: creates the user and records the intent to send the welcome mail, both in
//! one database transaction.
//!
//! This is the *source* event of the cascade. Sending the mail directly from here would be two
//! network calls that can each fail on their own (the user saved, the mail never sent, or the
//! other way round); publishing to the broker from here would be the same problem with another
//! remote. The outbox row commits or rolls back with the user, and the relay takes it from there.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use converge::outbox::Outbox;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::events::SendMail;

/// A signup request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignupRequest {
    /// The new user's address.
    pub email: String,
}

/// The created user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignupResponse {
    /// The new user's id.
    pub user_id: i64,
}

#[derive(Debug, Clone)]
struct Signup {
    pool: PgPool,
    outbox: Outbox,
    topic: String,
}

/// Serves `POST /signup` on a free loopback port until `shutdown`, returning the address.
pub async fn start(
    pool: PgPool,
    outbox: Outbox,
    topic: String,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/signup", post(signup))
        .with_state(Signup {
            pool,
            outbox,
            topic,
        });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "signup service stopped");
        }
    });
    Ok(addr)
}

async fn signup(
    State(service): State<Signup>,
    Json(request): Json<SignupRequest>,
) -> Result<(StatusCode, Json<SignupResponse>), (StatusCode, String)> {
    let internal = |e: &dyn std::fmt::Display| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut tx = service.pool.begin().await.map_err(|e| internal(&e))?;
    let user_id: i64 = sqlx::query_scalar("INSERT INTO users (email) VALUES ($1) RETURNING id")
        .bind(&request.email)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| internal(&e))?;
    let event = SendMail {
        user_id,
        email: request.email,
    };
    service
        .outbox
        .enqueue(&mut tx, &service.topic, &event)
        .await
        .map_err(|e| internal(&e))?;
    tx.commit().await.map_err(|e| internal(&e))?;
    Ok((StatusCode::CREATED, Json(SignupResponse { user_id })))
}
