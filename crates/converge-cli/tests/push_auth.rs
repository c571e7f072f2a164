//! Push authentication as a receiver and a client see it, against the real `converge` binary:
//! the JWK Set of the push token keys over HTTP, and webhook secrets that are returned once and
//! never again. Tokens and signatures on real pushes are checked with the push receiver tests.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Broker, Http, PROJECT, new_subscription_name, new_topic_name};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Where the broker serves its push token keys.
const JWKS_PATH: &str = "/converge/push/jwks.json";
/// The push config attribute of webhook secrets.
const SECRET_ATTRIBUTE: &str = "converge-webhook-secret";

/// GETs the JWK Set, checking the status and content type.
async fn jwks(http: &Http) -> Value {
    let response = http
        .client
        .get(http.url(JWKS_PATH))
        .send()
        .await
        .expect("the JWKS request is answered");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    response.json().await.expect("a JSON body")
}

/// The `kid`s of a JWK Set, after checking each key is a P-256 public key a JWT library loads.
fn kids(set: &Value) -> Vec<String> {
    let keys = set["keys"].as_array().expect("a keys array");
    assert!(!keys.is_empty(), "at least one key: {set}");
    keys.iter()
        .map(|key| {
            assert_eq!(key["kty"], "EC", "{key}");
            assert_eq!(key["crv"], "P-256", "{key}");
            assert_eq!(key["alg"], "ES256", "{key}");
            assert_eq!(key["use"], "sig", "{key}");
            for coordinate in ["x", "y"] {
                let text = key[coordinate].as_str().expect("a coordinate");
                let bytes = URL_SAFE_NO_PAD.decode(text).expect("base64url");
                assert_eq!(bytes.len(), 32, "{coordinate} of {key}");
            }
            assert!(key.get("d").is_none(), "no private part: {key}");
            key["kid"].as_str().expect("a kid").to_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_jwks_is_served_and_stable_across_requests() {
    let broker = Broker::start();
    let http = broker.http();
    let first = kids(&jwks(&http).await);
    let again = kids(&jwks(&http).await);
    assert_eq!(first, again);
}

#[tokio::test]
async fn the_signing_key_survives_a_restart_on_disk() {
    let mut broker = Broker::start_on_disk();
    let before = kids(&jwks(&broker.http()).await);
    broker.restart().await;
    let after = kids(&jwks(&broker.http()).await);
    assert_eq!(before, after);
}

#[tokio::test]
async fn a_memory_broker_has_its_own_key() {
    let one = Broker::start();
    let other = Broker::start();
    let one = kids(&jwks(&one.http()).await);
    let other = kids(&jwks(&other.http()).await);
    assert_ne!(one, other);
}

#[tokio::test]
async fn a_generated_webhook_secret_is_returned_once_over_rest() {
    let broker = Broker::start();
    let http = broker.http();
    let topic = new_topic_name("signed");
    let sub = new_subscription_name("signed");
    let created = http
        .client
        .put(http.url(&format!("/v1/{topic}")))
        .json(&json!({}))
        .send()
        .await
        .expect("topic answered");
    assert_eq!(created.status(), StatusCode::OK);
    let body = json!({
        "topic": topic,
        "pushConfig": {
            "pushEndpoint": "http://127.0.0.1:9/push",
            "attributes": { SECRET_ATTRIBUTE: "generate" },
        },
    });
    let created = http
        .client
        .put(http.url(&format!("/v1/{sub}")))
        .json(&body)
        .send()
        .await
        .expect("subscription answered");
    assert_eq!(created.status(), StatusCode::OK);
    let created: Value = created.json().await.expect("JSON");
    let secret = created["pushConfig"]["attributes"][SECRET_ATTRIBUTE]
        .as_str()
        .expect("the secret in the create answer")
        .to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");

    let got = http
        .client
        .get(http.url(&format!("/v1/{sub}")))
        .send()
        .await
        .expect("get answered")
        .text()
        .await
        .expect("a body");
    assert!(!got.contains(&secret), "{got}");
    let got: Value = serde_json::from_str(&got).expect("JSON");
    assert_eq!(
        got["pushConfig"]["attributes"][SECRET_ATTRIBUTE],
        "configured"
    );

    let listed = http
        .client
        .get(http.url(&format!("/v1/projects/{PROJECT}/subscriptions")))
        .send()
        .await
        .expect("list answered")
        .text()
        .await
        .expect("a body");
    assert!(listed.contains(&sub), "{listed}");
    assert!(!listed.contains(&secret), "{listed}");
    assert!(
        broker.logs().iter().all(|line| !line.contains(&secret)),
        "the secret reached a log line"
    );
}
