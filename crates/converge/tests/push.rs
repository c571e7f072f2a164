//! The push receiver against a real converge broker in this process: push subscriptions signed
//! with an OIDC token and/or a Standard Webhooks secret push to an axum receiver on a local
//! port that uses `PushMessage`; verified messages are decoded and acknowledged, requests that
//! fail verification are refused (so the broker retries them), and a handler's error sends the
//! message back.

mod support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use base64::Engine as _;
use converge::client::Client;
use converge::push::{PushMessage, PushResponse, PushVerifier};
use converge::{OutgoingMessage, Transport};
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{
    PushConfig, Subscription, Topic, push_config,
};
use parking_lot::Mutex;
use support::WAIT;

/// How long a test watches for a redelivery that must not come. A nacked push is redelivered
/// at once (no retry policy), so one would show up well within this.
const QUIET: Duration = Duration::from_millis(1500);

/// The service account the tokens are minted for.
const EMAIL: &str = "pusher@test.iam.gserviceaccount.com";

/// The audience the tokens are minted for.
const AUDIENCE: &str = "https://receiver.test/push";

/// A converge broker in this process, with a client to create push subscriptions and publish.
struct Broker {
    server: support::Broker,
    client: Client,
}

impl Broker {
    async fn start() -> anyhow::Result<Self> {
        let server = support::Broker::start().await?;
        let client = server.client().await?;
        Ok(Self { server, client })
    }

    fn jwks_url(&self) -> String {
        self.server.url("/converge/push/jwks.json")
    }

    /// Creates a topic and a push subscription on it; returns their names and the subscription
    /// as created (with a generated webhook secret, if asked for, in its attributes).
    async fn push_subscription(
        &self,
        name: &str,
        push_config: PushConfig,
    ) -> anyhow::Result<(String, String, Subscription)> {
        let topic = format!("projects/test/topics/{name}");
        let subscription = format!("projects/test/subscriptions/{name}");
        self.client
            .publisher_stub()
            .create_topic(Topic {
                name: topic.clone(),
                ..Default::default()
            })
            .await?;
        let created = self
            .client
            .subscriber_stub()
            .create_subscription(Subscription {
                name: subscription.clone(),
                topic: topic.clone(),
                push_config: Some(push_config),
                ack_deadline_seconds: 10,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok((topic, subscription, created))
    }

    async fn publish(&self, topic: &str, data: &'static [u8]) -> anyhow::Result<String> {
        let message = OutgoingMessage {
            data: bytes::Bytes::from_static(data),
            attributes: [("kind".to_owned(), "test".to_owned())].into(),
            ordering_key: String::new(),
        };
        let ids = self.client.publish(topic, vec![message]).await?;
        ids.into_iter().next().context("one id")
    }
}

/// A push config to `endpoint`, signed as asked.
fn config(endpoint: &str, oidc: bool, webhook: bool) -> PushConfig {
    PushConfig {
        push_endpoint: endpoint.to_owned(),
        attributes: if webhook {
            [("converge-webhook-secret".to_owned(), "generate".to_owned())].into()
        } else {
            Default::default()
        },
        authentication_method: oidc.then(|| {
            push_config::AuthenticationMethod::OidcToken(push_config::OidcToken {
                service_account_email: EMAIL.to_owned(),
                audience: AUDIENCE.to_owned(),
            })
        }),
        wrapper: None,
    }
}

/// What the receiver saw: every answered status, and the messages handed to the handler.
#[derive(Default)]
struct Seen {
    statuses: Mutex<Vec<u16>>,
    messages: Mutex<Vec<PushMessage>>,
}

impl Seen {
    fn statuses(&self) -> Vec<u16> {
        self.statuses.lock().clone()
    }

    fn messages(&self) -> Vec<PushMessage> {
        self.messages.lock().clone()
    }

    /// Waits until `done` holds for what was seen.
    async fn wait_until(&self, what: &str, done: impl Fn(&[u16], &[PushMessage]) -> bool) {
        let give_up = tokio::time::Instant::now() + WAIT;
        loop {
            let (statuses, messages) = (self.statuses(), self.messages());
            if done(&statuses, &messages) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "{what}: not within {WAIT:?}; statuses {statuses:?}, messages {messages:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Records the status of every answer.
async fn record_status(State(seen): State<Arc<Seen>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    seen.statuses.lock().push(response.status().as_u16());
    response
}

/// A receiver at `POST /push` verifying with `verifier`; the handler records each message and
/// answers what `verdict` says for its delivery number (1 for the first it sees).
async fn receiver(
    verifier: PushVerifier,
    verdict: fn(usize) -> PushResponse,
) -> anyhow::Result<(String, Arc<Seen>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = serve_on(listener, verifier, verdict);
    Ok((format!("http://{addr}/push"), seen))
}

/// A `whsec_` secret the broker does not know.
fn other_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The secret the broker generated, from the CreateSubscription answer.
fn generated_secret(created: &Subscription) -> anyhow::Result<String> {
    created
        .push_config
        .as_ref()
        .and_then(|c| c.attributes.get("converge-webhook-secret"))
        .cloned()
        .filter(|s| s.starts_with("whsec_"))
        .context("a generated secret in the create answer")
}

/// Checks a delivered message against what was published, then that no further request comes
/// (the 204 acknowledged it).
async fn assert_delivered_once(
    seen: &Seen,
    subscription: &str,
    id: &str,
    data: &[u8],
) -> anyhow::Result<()> {
    seen.wait_until("one delivery acknowledged", |statuses, _| {
        statuses.contains(&204)
    })
    .await;
    let messages = seen.messages();
    let push = &messages[0];
    assert_eq!(push.subscription, subscription);
    assert_eq!(push.message.message_id, id);
    assert_eq!(push.message.data.as_ref(), data);
    assert_eq!(push.message.attributes["kind"], "test");
    assert!(push.message.publish_time > std::time::UNIX_EPOCH);
    tokio::time::sleep(QUIET).await;
    assert_eq!(seen.statuses(), vec![204], "acknowledged, not redelivered");
    Ok(())
}

#[tokio::test]
async fn a_jwt_signed_push_is_verified_decoded_and_acknowledged() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let verifier = PushVerifier::jwt(broker.jwks_url(), AUDIENCE)?.with_email(EMAIL);
    let (endpoint, seen) = receiver(verifier, |_| PushResponse::Ack).await?;
    let (topic, subscription, _) = broker
        .push_subscription("jwt", config(&endpoint, true, false))
        .await?;
    let id = broker.publish(&topic, b"signed by jwt").await?;
    assert_delivered_once(&seen, &subscription, &id, b"signed by jwt").await
}

#[tokio::test]
async fn a_webhook_signed_push_is_verified_decoded_and_acknowledged() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    // The secret is known only once the subscription exists, so the receiver starts after it:
    // create the subscription on a port reserved now, then serve that port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}/push", listener.local_addr()?);
    let (topic, subscription, created) = broker
        .push_subscription("webhook", config(&endpoint, false, true))
        .await?;
    let secret = generated_secret(&created)?;
    let seen = serve_on(listener, PushVerifier::webhook(&secret)?, |_| {
        PushResponse::Ack
    });
    let id = broker.publish(&topic, b"signed by webhook").await?;
    assert_delivered_once(&seen, &subscription, &id, b"signed by webhook").await
}

/// Serves the receiver on an already bound listener.
fn serve_on(
    listener: tokio::net::TcpListener,
    verifier: PushVerifier,
    verdict: fn(usize) -> PushResponse,
) -> Arc<Seen> {
    let seen = Arc::new(Seen::default());
    let handler_seen = seen.clone();
    let app = Router::new()
        .route(
            "/push",
            post(move |push: PushMessage| async move {
                let mut messages = handler_seen.messages.lock();
                messages.push(push);
                verdict(messages.len())
            }),
        )
        .layer(Extension(verifier))
        .layer(axum::middleware::from_fn_with_state(
            seen.clone(),
            record_status,
        ));
    support::serve_on(listener, app);
    seen
}

#[tokio::test]
async fn a_wrong_webhook_secret_is_refused_with_401_and_the_broker_retries() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let verifier = PushVerifier::webhook(&other_secret())?;
    let (endpoint, seen) = receiver(verifier, |_| PushResponse::Ack).await?;
    let (topic, _, _) = broker
        .push_subscription("wrong-secret", config(&endpoint, false, true))
        .await?;
    broker.publish(&topic, b"not for you").await?;
    seen.wait_until("three refused attempts", |statuses, _| statuses.len() >= 3)
        .await;
    assert!(
        seen.statuses().iter().all(|s| *s == 401),
        "{:?}",
        seen.statuses()
    );
    assert!(seen.messages().is_empty(), "the handler never ran");
    Ok(())
}

#[tokio::test]
async fn a_token_for_another_audience_is_forbidden_and_unsigned_requests_unauthorized()
-> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let verifier = PushVerifier::jwt(broker.jwks_url(), "https://someone-else.test/push")?;
    let (endpoint, seen) = receiver(verifier, |_| PushResponse::Ack).await?;
    let (topic, _, _) = broker
        .push_subscription("other-audience", config(&endpoint, true, false))
        .await?;
    broker.publish(&topic, b"not for you").await?;
    seen.wait_until("two refused attempts", |statuses, _| statuses.len() >= 2)
        .await;
    assert!(
        seen.statuses().iter().all(|s| *s == 403),
        "{:?}",
        seen.statuses()
    );
    assert!(seen.messages().is_empty(), "the handler never ran");

    // The right audience, but a token minted for another service account.
    let verifier = PushVerifier::jwt(broker.jwks_url(), AUDIENCE)?.with_email("someone@else.test");
    let (other_endpoint, other_seen) = receiver(verifier, |_| PushResponse::Ack).await?;
    let (other_topic, _, _) = broker
        .push_subscription("other-email", config(&other_endpoint, true, false))
        .await?;
    broker.publish(&other_topic, b"not for you either").await?;
    other_seen
        .wait_until("two refused attempts", |statuses, _| statuses.len() >= 2)
        .await;
    assert!(
        other_seen.statuses().iter().all(|s| *s == 403),
        "{:?}",
        other_seen.statuses()
    );
    assert!(other_seen.messages().is_empty(), "the handler never ran");

    // A request without a token, as anyone on the network could send.
    let forged = reqwest::Client::new()
        .post(&endpoint)
        .json(&serde_json::json!({
            "message": { "data": "aGk=", "messageId": "1" },
            "subscription": "projects/test/subscriptions/other-audience",
        }))
        .send()
        .await?;
    assert_eq!(forged.status(), 401);
    assert!(forged.text().await?.contains("bearer"));
    Ok(())
}

#[tokio::test]
async fn a_handler_error_is_a_non_2xx_and_the_message_is_redelivered() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let verifier = PushVerifier::jwt(broker.jwks_url(), AUDIENCE)?;
    let (endpoint, seen) = receiver(verifier, |delivery| {
        if delivery == 1 {
            PushResponse::from_result(Err::<(), _>("the database is down"))
        } else {
            PushResponse::Ack
        }
    })
    .await?;
    let (topic, subscription, _) = broker
        .push_subscription("handler-error", config(&endpoint, true, false))
        .await?;
    let id = broker.publish(&topic, b"try again").await?;
    seen.wait_until("failed, then acknowledged", |statuses, _| {
        statuses.contains(&204)
    })
    .await;
    assert_eq!(seen.statuses(), vec![500, 204]);
    let messages = seen.messages();
    assert_eq!(messages.len(), 2);
    for push in &messages {
        assert_eq!(push.message.message_id, id);
        assert_eq!(push.subscription, subscription);
        assert_eq!(push.message.data.as_ref(), b"try again");
    }
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        seen.statuses(),
        vec![500, 204],
        "acknowledged the second time"
    );
    Ok(())
}

#[tokio::test]
async fn an_unwrapped_push_with_metadata_decodes_from_headers() -> anyhow::Result<()> {
    let broker = Broker::start().await?;
    let (endpoint, seen) = receiver(PushVerifier::none(), |_| PushResponse::Ack).await?;
    let mut push_config = config(&endpoint, false, false);
    push_config.wrapper = Some(push_config::Wrapper::NoWrapper(push_config::NoWrapper {
        write_metadata: true,
    }));
    let (topic, subscription, _) = broker.push_subscription("unwrapped", push_config).await?;
    let id = broker.publish(&topic, b"raw bytes").await?;
    assert_delivered_once(&seen, &subscription, &id, b"raw bytes").await
}
