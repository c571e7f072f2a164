//! The two halves of idempotent HTTP together: many clients retrying one request through
//! [`RetryClient`] against a server guarded by [`IdempotencyLayer`]. While the first request
//! runs the others are told `409` with `Retry-After` and `x-should-retry: true`; the retrying
//! client waits and asks again, and gets the recorded answer. The work runs once and every
//! caller ends with the same answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use converge::http::idempotency::IdempotencyLayer;
use converge::http_client::RetryClient;
use converge::idempotency::store::MemoryIdempotencyStore;

/// Creates an order, slowly enough that the concurrent duplicates arrive while it runs.
async fn create_order(State(runs): State<Arc<AtomicUsize>>) -> (StatusCode, String) {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(300)).await;
    (StatusCode::CREATED, format!("{{\"order\":{run}}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retried_duplicates_run_the_work_once_and_all_get_its_answer() {
    let runs = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route("/orders", post(create_order))
        .with_state(runs.clone())
        .layer(IdempotencyLayer::new(Arc::new(MemoryIdempotencyStore::new())).required(true));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/orders", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let client = RetryClient::builder()
        .deadline(Duration::from_secs(30))
        .build();
    let callers = (0..50).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let response = client
                .post(&url)
                .header("Idempotency-Key", "\"order-7\"")
                .body("{\"item\":\"book\"}")
                .send()
                .await
                .expect("the call succeeds within its deadline");
            (response.status(), response.text().await.unwrap())
        })
    });
    let answers = futures::future::join_all(callers).await;

    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the work ran more than once"
    );
    for answer in answers {
        let (status, body) = answer.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body, "{\"order\":1}");
    }
    server.abort();
}
