//! Health endpoints against the real dependencies: the PostgreSQL at 127.0.0.1:5432 (database
//! `test`) and a converge broker started in this process, over real sockets. Ready when both
//! answer; `503` naming the failing check when the database URL points to a closed port or the
//! broker has been stopped.

mod support;

use std::time::Duration;

use anyhow::bail;
use converge::health::{BrokerCheck, FnCheck, Health, HttpCheck, PostgresCheck};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use support::{Broker, DATABASE_URL, WAIT, serve};

/// Polls `url` until it answers `status`; returns the JSON body.
async fn wait_for(url: &str, status: u16) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let give_up = tokio::time::Instant::now() + WAIT;
    loop {
        let last = match http.get(url).send().await {
            Ok(response) if response.status().as_u16() == status => {
                let text = response.text().await?;
                return Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)));
            }
            Ok(response) => format!("{}: {}", response.status(), response.text().await?),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= give_up {
            bail!("{url} did not answer {status} within {WAIT:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The entry of `name` in a `/readyz` body.
fn check<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {body}"))
}

/// A local port nobody listens on.
fn closed_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[tokio::test]
async fn ready_when_postgres_and_the_broker_answer_and_503_once_the_broker_stops()
-> anyhow::Result<()> {
    let mut broker = Broker::start().await?;
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .connect(DATABASE_URL)
        .await?;
    let health = Health::new()
        .timeout(Duration::from_secs(3))
        .check("postgres", PostgresCheck(pool))
        .check(
            "broker",
            BrokerCheck::project(broker.client().await?, "test"),
        )
        .check(
            "topic",
            BrokerCheck::topic(broker.client().await?, "projects/test/topics/not-there"),
        );
    let addr = serve(health.router()).await?;

    let live = wait_for(&format!("http://{addr}/healthz"), 200).await?;
    assert_eq!(live["status"], "ok");
    let body = wait_for(&format!("http://{addr}/readyz"), 200).await?;
    assert_eq!(body["status"], "ok", "{body}");
    for name in ["postgres", "broker", "topic"] {
        let entry = check(&body, name);
        assert_eq!(entry["status"], "ok", "{body}");
        assert!(
            entry["latencyMs"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{body}"
        );
        assert!(entry.get("error").is_none(), "{body}");
    }

    broker.stop().await?;
    let body = wait_for(&format!("http://{addr}/readyz"), 503).await?;
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(check(&body, "postgres")["status"], "ok", "{body}");
    for name in ["broker", "topic"] {
        let entry = check(&body, name);
        assert_eq!(entry["status"], "failed", "{body}");
        assert!(
            entry["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    // Liveness does not depend on the checks.
    wait_for(&format!("http://{addr}/healthz"), 200).await?;
    Ok(())
}

#[tokio::test]
async fn a_database_on_a_closed_port_fails_readiness_naming_it() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let url = format!("postgres://postgres@127.0.0.1:{}/test", closed_port()?);
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&url)?;
    let health = Health::new()
        .timeout(Duration::from_secs(5))
        .check("postgres", PostgresCheck(pool))
        .check(
            "broker",
            BrokerCheck::project(broker.client().await?, "test"),
        );
    let addr = serve(health.router()).await?;

    let body = wait_for(&format!("http://{addr}/readyz"), 503).await?;
    assert_eq!(body["status"], "unavailable", "{body}");
    let postgres = check(&body, "postgres");
    assert_eq!(postgres["status"], "failed", "{body}");
    assert!(
        postgres["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert_eq!(check(&body, "broker")["status"], "ok", "{body}");
    Ok(())
}

#[tokio::test]
async fn http_checks_want_a_2xx_and_a_hung_check_times_out() -> anyhow::Result<()> {
    let dependency = serve(
        axum::Router::new()
            .route("/ok", axum::routing::get(|| async { "fine" }))
            .route(
                "/broken",
                axum::routing::get(|| async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }),
            ),
    )
    .await?;
    let health = Health::new()
        .check("up", HttpCheck::new(format!("http://{dependency}/ok")))
        .check(
            "down",
            HttpCheck::new(format!("http://{dependency}/broken")),
        )
        .check(
            "refused",
            HttpCheck::new(format!("http://127.0.0.1:{}/", closed_port()?)),
        )
        .check_with_timeout(
            "hung",
            FnCheck(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }),
            Duration::from_millis(200),
        );

    let readiness = health.readiness().await;
    assert!(!readiness.is_ready());
    let status = |name: &str| {
        let entry = readiness.checks.iter().find(|c| c.name == name).unwrap();
        (format!("{:?}", entry.status), entry.error.clone())
    };
    assert_eq!(status("up"), ("Ok".into(), None));
    let (down, error) = status("down");
    assert_eq!(down, "Failed");
    assert!(error.unwrap().contains("500"));
    assert_eq!(status("refused").0, "Failed");
    let (hung, error) = status("hung");
    assert_eq!(hung, "Failed");
    assert!(error.unwrap().contains("timed out"));

    let only_up = Health::new().check("up", HttpCheck::new(format!("http://{dependency}/ok")));
    assert!(only_up.readiness().await.is_ready());
    Ok(())
}
