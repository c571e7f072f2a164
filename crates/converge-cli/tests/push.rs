//! Push delivery against real HTTP receivers started inside the tests.
//!
//! Each receiver is a small HTTP/1.1 server on `127.0.0.1:0` that records every request (arrival
//! time, headers, body) and answers as the test's script says, so the tests see exactly what an
//! endpoint would see. Push runs on real time: the retry backoffs used are short.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Broker, message_with, new_subscription_name, new_topic_name, pubsub, subscription};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// How long a test waits for something the broker should do soon.
const PATIENCE: Duration = Duration::from_secs(20);

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Seen {
    /// The body as JSON (wrapped deliveries).
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the wrapped body is JSON")
    }

    /// The message id: from the envelope, or from the metadata header when unwrapped.
    fn message_id(&self) -> String {
        if let Some(id) = self.headers.get("x-goog-pubsub-message-id") {
            return id.clone();
        }
        self.json()["message"]["messageId"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// How the receiver answers: status, extra headers, and a delay before answering.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    delay: Duration,
}

impl Reply {
    fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }
}

/// A reply "status" that makes the receiver close the connection without answering.
const RESET: u16 = 0;

/// The receiver's script: given the request and how many requests with the same message id came
/// before it (0 for the first), the reply.
type Script = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

/// A local push endpoint.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver on a free port.
    async fn start(script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, Arc::new(script))
    }

    /// Starts a receiver on `addr` (to bring a receiver up where one was expected).
    async fn start_at(
        addr: SocketAddr,
        script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, Arc::new(script))
    }

    fn serve(listener: TcpListener, script: Script) -> Self {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(connection(
                    stream,
                    script.clone(),
                    log.clone(),
                    counts.clone(),
                ));
            }
        });
        Self { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}/push", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests seen for `message_id`.
    fn attempts(&self, message_id: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.message_id() == message_id)
            .collect()
    }

    /// Waits until `check` holds on the requests seen.
    async fn wait_until(&self, what: &str, check: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let start = Instant::now();
        loop {
            let seen = self.seen();
            if check(&seen) {
                return seen;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "timed out waiting for {what}; seen {} requests",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one keep-alive HTTP/1.1 connection.
async fn connection(
    stream: tokio::net::TcpStream,
    script: Script,
    log: Arc<Mutex<Vec<Seen>>>,
    counts: Arc<Mutex<HashMap<String, usize>>>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let seen = Seen {
            at: Instant::now(),
            headers,
            body,
        };
        let before = {
            let mut counts = counts.lock().unwrap();
            let count = counts.entry(seen.message_id()).or_insert(0);
            *count += 1;
            *count - 1
        };
        let reply = script(&seen, before);
        log.lock().unwrap().push(seen);
        tokio::time::sleep(reply.delay).await;
        if reply.status == RESET {
            // Drop the connection mid-exchange: the broker sees a reset, not an answer.
            return;
        }
        let mut response = format!("HTTP/1.1 {} X\r\ncontent-length: 0\r\n", reply.status);
        for (k, v) in &reply.headers {
            response.push_str(&format!("{k}: {v}\r\n"));
        }
        response.push_str("\r\n");
        if write.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Waits until the subscription's backlog gauge reads `want`.
async fn wait_for_backlog(broker: &Broker, subscription: &str, want: u64) {
    let start = Instant::now();
    loop {
        let backlog = broker.backlog(subscription).await.unwrap_or(0);
        if backlog == want {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "backlog of {subscription} is {backlog}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A push subscription resource.
fn push_subscription(name: &str, topic: &str, endpoint: &str) -> pubsub::Subscription {
    pubsub::Subscription {
        push_config: Some(pubsub::PushConfig {
            push_endpoint: endpoint.to_owned(),
            ..Default::default()
        }),
        ..subscription(name, topic)
    }
}

fn retry(min: Duration, max: Duration) -> Option<pubsub::RetryPolicy> {
    Some(pubsub::RetryPolicy {
        minimum_backoff: Some(min.try_into().unwrap()),
        maximum_backoff: Some(max.try_into().unwrap()),
    })
}

/// A broker with a topic: (broker, grpc, topic).
async fn setup() -> (Broker, common::Grpc, String) {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("push");
    grpc.create_topic(&topic).await;
    (broker, grpc, topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_and_unwrapped_bodies_and_acks() {
    let (broker, grpc, topic) = setup().await;
    let receiver = Receiver::start(|_, _| Reply::status(204)).await;
    let wrapped = new_subscription_name("wrapped");
    grpc.create_subscription(push_subscription(
        &wrapped,
        &topic,
        &format!("{}?w=1", receiver.url()),
    ))
    .await;
    let mut raw = push_subscription(
        &new_subscription_name("raw"),
        &topic,
        &format!("{}?w=0", receiver.url()),
    );
    raw.push_config.as_mut().unwrap().wrapper = Some(pubsub::push_config::Wrapper::NoWrapper(
        pubsub::push_config::NoWrapper {
            write_metadata: true,
        },
    ));
    let raw = grpc.create_subscription(raw).await.name;

    let ids = grpc
        .publish(&topic, vec![message_with("hello", &[("kind", "greeting")])])
        .await
        .unwrap();
    let seen = receiver
        .wait_until("both deliveries", |s| s.len() >= 2)
        .await;
    let (json_req, raw_req): (Vec<_>, Vec<_>) = seen.iter().partition(|s| {
        s.headers
            .get("content-type")
            .is_some_and(|c| c.contains("json"))
    });
    let body = json_req[0].json();
    assert_eq!(body["subscription"], wrapped.as_str());
    assert_eq!(body["message"]["messageId"], ids[0].as_str());
    assert_eq!(body["message"]["message_id"], ids[0].as_str());
    assert_eq!(
        body["message"]["publishTime"],
        body["message"]["publish_time"]
    );
    assert_eq!(body["message"]["attributes"]["kind"], "greeting");
    let data = base64::engine::general_purpose::STANDARD
        .decode(body["message"]["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(data, b"hello");
    assert!(
        body.get("deliveryAttempt").is_none(),
        "no dead-letter policy: no attempt count"
    );

    assert_eq!(raw_req[0].body, b"hello");
    assert_eq!(raw_req[0].headers["x-goog-pubsub-message-id"], ids[0]);
    assert_eq!(raw_req[0].headers["x-goog-pubsub-subscription-name"], raw);
    assert_eq!(raw_req[0].headers["kind"], "greeting");
    assert!(
        raw_req[0]
            .headers
            .contains_key("x-goog-pubsub-publish-time")
    );

    // Acknowledged: a later message arrives and the first was not sent again.
    let later = grpc.publish_data(&topic, &["later"]).await;
    receiver
        .wait_until("the later message twice", |s| {
            s.iter().filter(|s| s.message_id() == later[0]).count() == 2
        })
        .await;
    assert_eq!(
        receiver.attempts(&ids[0]).len(),
        2,
        "one per subscription, no redelivery"
    );
    // The ack follows the receiver's answer: wait for it rather than race it.
    wait_for_backlog(&broker, &wrapped, 0).await;
    let logged = broker.wait_for_log(PATIENCE, |l| {
        l["logType"] == "REQUEST_OUTBOUND" && l["messageId"] == later[0].as_str()
    });
    assert_eq!(logged["status"], 204);
    assert_eq!(logged["endpointHost"], "127.0.0.1");
    assert!(logged["duration"].is_u64());
    assert_eq!(
        logged["attempt"], 1,
        "attempts are counted even without a dead-letter policy"
    );
}

/// A receiver checks a push the way a real one would: the bearer token against the broker's
/// JWKS, and the Standard Webhooks signature against the secret it was given once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_carry_a_verifiable_token_and_webhook_signature() {
    use hmac::{Hmac, Mac};
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};

    let (broker, grpc, topic) = setup().await;
    let receiver = Receiver::start(|_, _| Reply::status(204)).await;
    let mut sub = push_subscription(&new_subscription_name("signed"), &topic, &receiver.url());
    let config = sub.push_config.as_mut().unwrap();
    config.authentication_method = Some(pubsub::push_config::AuthenticationMethod::OidcToken(
        pubsub::push_config::OidcToken {
            service_account_email: "pusher@p.iam.gserviceaccount.com".into(),
            audience: "https://billing.example".into(),
        },
    ));
    config
        .attributes
        .insert("converge-webhook-secret".into(), "generate".into());
    let created = grpc.create_subscription(sub).await;
    let secret =
        created.push_config.as_ref().unwrap().attributes["converge-webhook-secret"].clone();
    assert!(
        secret.starts_with("whsec_"),
        "the generated secret is returned once: {secret}"
    );
    let shown = grpc.get_subscription(&created.name).await.unwrap();
    assert_eq!(
        shown.push_config.unwrap().attributes["converge-webhook-secret"],
        "configured",
        "and never shown again"
    );

    let ids = grpc.publish_data(&topic, &["signed"]).await;
    let seen = receiver
        .wait_until("the signed push", |s| !s.is_empty())
        .await;
    let push = &seen[0];

    // The bearer token verifies with the key the JWKS publishes under its kid.
    let token = push.headers["authorization"]
        .strip_prefix("Bearer ")
        .expect("a bearer token");
    let kid = decode_header(token).unwrap().kid.expect("a kid");
    let http = broker.http();
    let jwks: Value = http
        .client
        .get(http.url("/converge/push/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the token's key is published");
    let key =
        DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
            .unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["https://billing.example"]);
    validation.set_issuer(&["https://accounts.google.com"]);
    let claims = decode::<Value>(token, &key, &validation)
        .expect("the token verifies")
        .claims;
    assert_eq!(claims["email"], "pusher@p.iam.gserviceaccount.com");
    assert_eq!(claims["email_verified"], true);

    // The webhook signature is HMAC-SHA256 over "{id}.{timestamp}.{body}" with the secret.
    let id = &push.headers["webhook-id"];
    assert_eq!(id, &ids[0]);
    let timestamp = &push.headers["webhook-timestamp"];
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&push.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(push.headers["webhook-signature"], format!("v1,{expected}"));
    assert!(
        broker.logs().iter().all(|line| !line.contains(&secret)),
        "the secret never reaches the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_retried_on_the_retry_schedule_then_succeed() {
    let (_broker, grpc, topic) = setup().await;
    let receiver =
        Receiver::start(|_, before| Reply::status(if before < 3 { 500 } else { 200 })).await;
    let mut sub = push_subscription(&new_subscription_name("retry"), &topic, &receiver.url());
    sub.retry_policy = retry(Duration::from_secs(1), Duration::from_secs(8));
    grpc.create_subscription(sub).await;
    let ids = grpc.publish_data(&topic, &["x"]).await;
    let seen = receiver.wait_until("four attempts", |s| s.len() >= 4).await;
    let gaps: Vec<f64> = seen
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs_f64())
        .collect();
    // Retry n waits min * 2^(n-1) with equal jitter, kept >= min: [1, 1], [1, 2], [2, 4]; the
    // upper bounds get slack for the worker's pull and the HTTP round trip.
    let bounds = [(1.0, 1.0), (1.0, 2.0), (2.0, 4.0)];
    for (gap, (low, high)) in gaps.iter().zip(bounds) {
        assert!(
            *gap >= low - 0.05 && *gap <= high + 1.5,
            "gap {gap:.3}s outside [{low}, {high}] (gaps {gaps:?})"
        );
    }
    // The success was acknowledged: a new message arrives, the old one does not come again.
    let next = grpc.publish_data(&topic, &["y"]).await;
    receiver
        .wait_until("the next message", |s| {
            s.iter().any(|s| s.message_id() == next[0])
        })
        .await;
    assert_eq!(receiver.attempts(&ids[0]).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_is_a_failure_that_is_retried() {
    let (broker, grpc, topic) = setup().await;
    // The first two attempts of every message lose their connection; the third succeeds.
    let receiver = Receiver::start(|_, before| {
        if before < 2 {
            Reply::status(RESET)
        } else {
            Reply::status(204)
        }
    })
    .await;
    let mut sub = push_subscription(&new_subscription_name("reset"), &topic, &receiver.url());
    sub.retry_policy = retry(Duration::from_millis(100), Duration::from_millis(400));
    let sub = grpc.create_subscription(sub).await.name;
    let ids = grpc.publish_data(&topic, &["flaky"]).await;
    receiver
        .wait_until("three attempts", |s| s.len() >= 3)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.attempts(&ids[0]).len(),
        3,
        "nothing is sent after the success"
    );
    let failed = broker.wait_for_log(PATIENCE, |l| {
        l["logType"] == "REQUEST_OUTBOUND" && l["messageId"] == ids[0].as_str() && l["attempt"] == 1
    });
    assert_ne!(
        failed["outcome"], "success",
        "a reset is not a success: {failed}"
    );
    wait_for_backlog(&broker, &sub, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_is_honoured() {
    let (_broker, grpc, topic) = setup().await;
    let receiver = Receiver::start(|_, before| {
        if before == 0 {
            Reply {
                headers: vec![("retry-after".into(), "2".into())],
                ..Reply::status(429)
            }
        } else {
            Reply::status(200)
        }
    })
    .await;
    let mut sub = push_subscription(&new_subscription_name("ra"), &topic, &receiver.url());
    sub.retry_policy = retry(Duration::ZERO, Duration::ZERO);
    grpc.create_subscription(sub).await;
    grpc.publish_data(&topic, &["x"]).await;
    let seen = receiver.wait_until("the retry", |s| s.len() >= 2).await;
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_millis(1950),
        "retried after {gap:?}, before Retry-After"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_at_the_ack_deadline_is_retried() {
    let (_broker, grpc, topic) = setup().await;
    let receiver = Receiver::start(|_, before| Reply {
        delay: if before == 0 {
            Duration::from_secs(12)
        } else {
            Duration::ZERO
        },
        ..Reply::status(200)
    })
    .await;
    let mut sub = push_subscription(&new_subscription_name("slow"), &topic, &receiver.url());
    sub.ack_deadline_seconds = 10;
    sub.retry_policy = retry(Duration::ZERO, Duration::ZERO);
    grpc.create_subscription(sub).await;
    grpc.publish_data(&topic, &["x"]).await;
    let seen = receiver.wait_until("the retry", |s| s.len() >= 2).await;
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_secs(10) && gap < Duration::from_secs(12),
        "retried after {gap:?}: not at the 10 s ack deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_arrives_once_a_refusing_receiver_comes_up() {
    let (broker, grpc, topic) = setup().await;
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut sub = push_subscription(
        &new_subscription_name("down"),
        &topic,
        &format!("http://{addr}/push"),
    );
    sub.retry_policy = retry(Duration::from_millis(100), Duration::from_secs(1));
    grpc.create_subscription(sub).await;
    let ids = grpc.publish_data(&topic, &["a", "b", "c"]).await;
    broker.wait_for_log(PATIENCE, |l| {
        l["logType"] == "REQUEST_OUTBOUND" && l["outcome"] == "connect"
    });
    let receiver = Receiver::start_at(addr, |_, _| Reply::status(204)).await;
    receiver
        .wait_until("every message", |s| {
            ids.iter().all(|id| s.iter().any(|s| &s.message_id() == id))
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_messages_are_dead_lettered_with_their_attempt_count() {
    let (_broker, grpc, topic) = setup().await;
    let dead = new_topic_name("dead");
    grpc.create_topic(&dead).await;
    let graveyard = grpc
        .create_subscription(subscription(&new_subscription_name("grave"), &dead))
        .await
        .name;
    let receiver = Receiver::start(|_, _| Reply::status(500)).await;
    let mut sub = push_subscription(&new_subscription_name("dl"), &topic, &receiver.url());
    sub.retry_policy = retry(Duration::ZERO, Duration::ZERO);
    sub.dead_letter_policy = Some(pubsub::DeadLetterPolicy {
        dead_letter_topic: dead.clone(),
        max_delivery_attempts: 5,
    });
    grpc.create_subscription(sub).await;
    grpc.publish_data(&topic, &["doomed"]).await;
    let start = Instant::now();
    let moved = loop {
        let got = grpc.pull(&graveyard, 10).await;
        if !got.is_empty() {
            break got;
        }
        assert!(start.elapsed() < PATIENCE, "nothing dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(moved[0].message.as_ref().unwrap().data, b"doomed");
    let attempts: Vec<u64> = receiver
        .seen()
        .iter()
        .map(|s| s.json()["deliveryAttempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_endpoint_does_not_delay_other_subscriptions() {
    let (_broker, grpc, topic) = setup().await;
    let stuck = Receiver::start(|_, _| Reply {
        delay: Duration::from_secs(8),
        ..Reply::status(200)
    })
    .await;
    let healthy = Receiver::start(|_, _| Reply::status(200)).await;
    grpc.create_subscription(push_subscription(
        &new_subscription_name("stuck"),
        &topic,
        &stuck.url(),
    ))
    .await;
    grpc.create_subscription(push_subscription(
        &new_subscription_name("healthy"),
        &topic,
        &healthy.url(),
    ))
    .await;
    let first = grpc.publish_data(&topic, &["one"]).await;
    stuck
        .wait_until("the stuck request", |s| !s.is_empty())
        .await;
    let started = Instant::now();
    let second = grpc.publish_data(&topic, &["two"]).await;
    healthy
        .wait_until("both messages", |s| {
            [&first[0], &second[0]]
                .iter()
                .all(|id| s.iter().any(|s| &&s.message_id() == id))
        })
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "the healthy subscription waited for the stuck one ({:?})",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_pull_to_push_and_back() {
    let (broker, grpc, topic) = setup().await;
    let receiver = Receiver::start(|_, _| Reply::status(200)).await;
    let sub = grpc
        .create_subscription(subscription(&new_subscription_name("switch"), &topic))
        .await
        .name;
    let modify = |endpoint: String| pubsub::ModifyPushConfigRequest {
        subscription: sub.clone(),
        push_config: Some(pubsub::PushConfig {
            push_endpoint: endpoint,
            ..Default::default()
        }),
    };
    let first = grpc.publish_data(&topic, &["pulled"]).await;
    let got = grpc.pull_wait(&sub, 10).await;
    assert_eq!(got[0].message.as_ref().unwrap().message_id, first[0]);
    grpc.ack(&sub, vec![got[0].ack_id.clone()]).await;

    grpc.subscriber
        .clone()
        .modify_push_config(modify(receiver.url()))
        .await
        .unwrap();
    let pushed = grpc.publish_data(&topic, &["pushed"]).await;
    receiver
        .wait_until("the pushed message", |s| {
            s.iter().any(|s| s.message_id() == pushed[0])
        })
        .await;

    grpc.subscriber
        .clone()
        .modify_push_config(modify(String::new()))
        .await
        .unwrap();
    broker.wait_for_log(PATIENCE, |l| {
        l.to_string().contains("push worker stopped") && l.to_string().contains(&sub)
    });
    let last = grpc.publish_data(&topic, &["pulled again"]).await;
    let got = grpc.pull_wait(&sub, 10).await;
    assert_eq!(got[0].message.as_ref().unwrap().message_id, last[0]);
    assert!(
        receiver.attempts(&last[0]).is_empty(),
        "pushed after switching back to pull"
    );
    assert!(receiver.attempts(&first[0]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_push_backlog_loses_nothing() {
    let mut broker = Broker::start_on_disk();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("backlog");
    grpc.create_topic(&topic).await;
    let receiver = Receiver::start(|_, _| Reply {
        delay: Duration::from_millis(20),
        ..Reply::status(204)
    })
    .await;
    let mut sub = push_subscription(&new_subscription_name("bl"), &topic, &receiver.url());
    sub.retry_policy = retry(Duration::from_millis(100), Duration::from_secs(1));
    grpc.create_subscription(sub).await;
    let data: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    let data: Vec<&str> = data.iter().map(String::as_str).collect();
    let ids = grpc.publish_data(&topic, &data).await;
    receiver
        .wait_until("a part of the backlog", |s| s.len() >= 30)
        .await;
    broker.restart().await;
    receiver
        .wait_until("the whole backlog", |s| {
            let got: std::collections::HashSet<String> = s.iter().map(Seen::message_id).collect();
            ids.iter().all(|id| got.contains(id))
        })
        .await;
}

/// Not a check but a measurement (run with `--ignored --nocapture`): deliveries per second to an
/// endpoint that always answers 204, then the window while the endpoint turns to failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, prints numbers"]
async fn measure_push_throughput_and_window() {
    let (broker, grpc, topic) = setup().await;
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = failing.clone();
    let receiver = Receiver::start(move |_, _| {
        Reply::status(if flag.load(std::sync::atomic::Ordering::Relaxed) {
            500
        } else {
            204
        })
    })
    .await;
    let total = 5000;
    for chunk in 0..total / 500 {
        let data: Vec<String> = (0..500).map(|i| format!("m{chunk}-{i}")).collect();
        let data: Vec<&str> = data.iter().map(String::as_str).collect();
        grpc.publish_data(&topic, &data).await;
    }
    let mut sub = push_subscription(&new_subscription_name("tp"), &topic, &receiver.url());
    sub.retry_policy = retry(Duration::from_millis(100), Duration::from_secs(1));
    let sub = grpc.create_subscription(sub).await.name;
    // The subscription only sees messages published after it exists: publish again.
    let start = Instant::now();
    for chunk in 0..total / 500 {
        let data: Vec<String> = (0..500).map(|i| format!("n{chunk}-{i}")).collect();
        let data: Vec<&str> = data.iter().map(String::as_str).collect();
        grpc.publish_data(&topic, &data).await;
    }
    let published = start.elapsed();
    receiver
        .wait_until("everything", |s| s.len() >= total)
        .await;
    let took = start.elapsed();
    println!(
        "{total} messages (publish took {published:?}) delivered in {took:?}: {:.0}/s",
        total as f64 / took.as_secs_f64()
    );
    let http = broker.http();
    let gauge = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("converge_push_window{") && l.contains(&sub))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
            .unwrap_or_default()
    };
    let publisher = {
        let grpc = broker.grpc().await;
        let topic = topic.clone();
        tokio::spawn(async move {
            for i in 0..600 {
                grpc.publish_data(&topic, &[&format!("w{i}")]).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let t0 = Instant::now();
    for step in 0..50 {
        if step == 10 {
            failing.store(true, std::sync::atomic::Ordering::Relaxed);
            println!("-- endpoint now answers 500");
        }
        if step == 25 {
            failing.store(false, std::sync::atomic::Ordering::Relaxed);
            println!("-- endpoint answers 204 again");
        }
        let text = http
            .client
            .get(http.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        println!(
            "t={:>5}ms window={}",
            t0.elapsed().as_millis(),
            gauge(&text)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publisher.abort();
}
