//! The REST/JSON door of the broker, checked with plain HTTP against the real `converge` binary.
//!
//! The rules themselves (limits, leases, retries, filters, …) are covered over gRPC in
//! `grpc_semantics.rs`; gRPC and REST are two doors into one service layer. These tests prove
//! that the REST door reaches the same rules with the shapes of the public REST API: its paths
//! and custom verbs, proto3 JSON bodies (base64 bytes, `"10s"` durations, RFC 3339 timestamps,
//! camelCase on output and snake_case accepted on input), HTTP status codes and Google's error
//! body, plus what the transport adds around every call (h2c, request ids, request logs,
//! probes and metrics).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::pubsub;
use common::{
    Broker, Http, PROJECT, data_of, message_with, new_subscription_name, new_topic_name,
    subscription_name, topic_name, unique_id,
};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How long a test waits for a log event or a metrics sample that follows a response.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP answer: status, headers and the body parsed as JSON (`Value::Null` when the body is
/// not JSON, so that assertions on it fail with the body shown).
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    text: String,
}

/// A REST client of one broker.
#[derive(Debug, Clone)]
struct Rest {
    http: Http,
}

impl Rest {
    fn new(broker: &Broker) -> Self {
        Self {
            http: broker.http(),
        }
    }

    /// Sends `method path` with an optional JSON body.
    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        let mut request = self
            .http
            .client
            .request(method.clone(), self.http.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        read_answer(response).await
    }

    /// Sends `method path` and asserts a 200 JSON answer; returns its body.
    async fn ok(&self, method: Method, path: &str, body: Option<&Value>) -> Value {
        let answer = self.send(method.clone(), path, body).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{method} {path} answered {}: {}",
            answer.status,
            answer.text
        );
        assert_json_content_type(&answer);
        answer.body
    }

    /// Publishes `messages` (JSON objects) to `topic`; returns the message ids.
    async fn publish(&self, topic: &str, messages: Value) -> Vec<String> {
        let body = self
            .ok(
                Method::POST,
                &v1(topic, Some("publish")),
                Some(&json!({ "messages": messages })),
            )
            .await;
        strings(&body["messageIds"])
    }

    /// Pulls up to `max` messages without waiting; returns `receivedMessages` (empty when the
    /// answer omits it, as proto3 JSON omits an empty list).
    async fn pull(&self, subscription: &str, max: i32) -> Vec<Value> {
        let body = self
            .ok(
                Method::POST,
                &v1(subscription, Some("pull")),
                Some(&json!({ "maxMessages": max, "returnImmediately": true })),
            )
            .await;
        received(&body)
    }

    /// Acknowledges `ack_ids`; the answer is the empty message.
    async fn ack(&self, subscription: &str, ack_ids: &[&str]) {
        let body = self
            .ok(
                Method::POST,
                &v1(subscription, Some("acknowledge")),
                Some(&json!({ "ackIds": ack_ids })),
            )
            .await;
        assert_eq!(body, json!({}), "Acknowledge answers Empty");
    }
}

/// Reads a response into an [`Answer`].
async fn read_answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a readable body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        text,
    }
}

/// The REST path of a resource: `/v1/projects/p/topics/t`, with `:verb` when given.
fn v1(name: &str, verb: Option<&str>) -> String {
    match verb {
        Some(verb) => format!("/v1/{name}:{verb}"),
        None => format!("/v1/{name}"),
    }
}

/// The id (last segment) of a full resource name.
fn id_of(name: &str) -> &str {
    name.rsplit('/').next().expect("a name has segments")
}

/// The strings of a JSON array (panics on anything else).
fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {value}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("expected a string, got {v}"))
                .to_owned()
        })
        .collect()
}

/// The `receivedMessages` of a pull answer, or none.
fn received(body: &Value) -> Vec<Value> {
    match body.get("receivedMessages") {
        None => Vec::new(),
        Some(list) => list
            .as_array()
            .unwrap_or_else(|| panic!("receivedMessages is not an array: {body}"))
            .clone(),
    }
}

/// The decoded `message.data` of received messages, as text.
fn rest_data(received: &[Value]) -> Vec<String> {
    received
        .iter()
        .map(|r| {
            let data = r["message"]["data"].as_str().unwrap_or_default();
            let bytes = BASE64.decode(data).expect("data is standard base64");
            String::from_utf8(bytes).expect("test data is text")
        })
        .collect()
}

/// The `ackId`s of received messages.
fn rest_ack_ids(received: &[Value]) -> Vec<&str> {
    received
        .iter()
        .map(|r| r["ackId"].as_str().expect("an ackId"))
        .collect()
}

#[track_caller]
fn assert_json_content_type(answer: &Answer) {
    let content_type = answer
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?}: {}",
        answer.text
    );
}

/// Asserts an error in Google's shape, `{"error":{"code","message","status"}}` and nothing else,
/// with HTTP status `http`, canonical `status`, and a message containing every fragment.
#[track_caller]
fn assert_error(answer: &Answer, http: u16, status: &str, fragments: &[&str]) {
    assert_eq!(
        answer.status.as_u16(),
        http,
        "expected {http} {status}, got {}: {}",
        answer.status,
        answer.text
    );
    assert_json_content_type(answer);
    let object = answer
        .body
        .as_object()
        .unwrap_or_else(|| panic!("the error body is not a JSON object: {}", answer.text));
    assert_eq!(
        object.keys().collect::<Vec<_>>(),
        ["error"],
        "{}",
        answer.text
    );
    let error = &answer.body["error"];
    assert_eq!(error["code"], http, "{}", answer.text);
    assert_eq!(error["status"], status, "{}", answer.text);
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {}", answer.text));
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "{message:?} does not mention {fragment:?}"
        );
    }
}

/// A broker with one topic and one default subscription, both created over REST.
async fn broker_with_subscription() -> (Broker, Rest, String, String) {
    let broker = Broker::start();
    let rest = Rest::new(&broker);
    let topic = new_topic_name("topic");
    let sub = new_subscription_name("sub");
    rest.ok(Method::PUT, &v1(&topic, None), Some(&json!({})))
        .await;
    rest.ok(
        Method::PUT,
        &v1(&sub, None),
        Some(&json!({ "topic": topic })),
    )
    .await;
    (broker, rest, topic, sub)
}

/// Scrapes `/metrics` until a line starts with `prefix` and returns that line's value; panics
/// after [`EVENT_TIMEOUT`]. A request is counted as its response body ends, which may be a
/// moment after the client has read the whole body, so a single scrape could miss it.
async fn wait_for_sample(rest: &Rest, prefix: &str, expected: f64) -> String {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let text = rest
            .http
            .client
            .get(rest.http.url("/metrics"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("/metrics answers")
            .text()
            .await
            .expect("a text body");
        let value = text
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if value == Some(expected) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no sample {prefix}{expected} within {EVENT_TIMEOUT:?} (last: {value:?})\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Topics

#[tokio::test]
async fn topics_are_created_read_patched_listed_in_pages_and_deleted() {
    let broker = Broker::start();
    let rest = Rest::new(&broker);
    let name = new_topic_name("orders");
    let path = v1(&name, None);

    let created = rest
        .ok(
            Method::PUT,
            &path,
            Some(&json!({ "labels": { "team": "a" } })),
        )
        .await;
    assert_eq!(created["name"], name.as_str(), "the path names the topic");
    assert_eq!(created["labels"], json!({ "team": "a" }));
    assert!(
        created.get("messageRetentionDuration").is_none(),
        "unset fields are omitted: {created}"
    );
    assert_eq!(rest.ok(Method::GET, &path, None).await, created);

    let again = rest.send(Method::PUT, &path, Some(&json!({}))).await;
    assert_error(&again, 409, "ALREADY_EXISTS", &[id_of(&name)]);

    let patch = json!({
        "topic": { "labels": { "team": "b" }, "messageRetentionDuration": "3600s" },
        "updateMask": "labels",
    });
    let updated = rest.ok(Method::PATCH, &path, Some(&patch)).await;
    assert_eq!(updated["labels"], json!({ "team": "b" }));
    assert!(
        updated.get("messageRetentionDuration").is_none(),
        "fields outside the mask are unchanged: {updated}"
    );
    // snake_case keys are accepted on input, and the mask may name fields in snake_case too.
    let patch = json!({
        "topic": { "message_retention_duration": "3600s" },
        "update_mask": "message_retention_duration",
    });
    let updated = rest.ok(Method::PATCH, &path, Some(&patch)).await;
    assert_eq!(updated["messageRetentionDuration"], "3600s");
    assert_eq!(updated["labels"], json!({ "team": "b" }));
    assert_eq!(rest.ok(Method::GET, &path, None).await, updated);

    let mut names = vec![name.clone()];
    for _ in 0..4 {
        let other = new_topic_name("more");
        rest.ok(Method::PUT, &v1(&other, None), None).await;
        names.push(other);
    }
    names.sort();
    let mut listed = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let query = format!("/v1/projects/{PROJECT}/topics?pageSize=2&pageToken={page_token}");
        let page = rest.ok(Method::GET, &query, None).await;
        let topics = page["topics"].as_array().expect("a topics list").clone();
        assert!(topics.len() <= 2, "at most pageSize topics: {page}");
        listed.extend(
            topics
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        match page.get("nextPageToken").and_then(Value::as_str) {
            Some(token) if !token.is_empty() => page_token = token.to_owned(),
            _ => break,
        }
    }
    assert_eq!(listed, names, "every topic once, sorted by name");
    assert_eq!(pages, 3);

    assert_eq!(rest.ok(Method::DELETE, &path, None).await, json!({}));
    let gone = rest.send(Method::GET, &path, None).await;
    assert_error(&gone, 404, "NOT_FOUND", &[id_of(&name)]);
    let again = rest.send(Method::DELETE, &path, None).await;
    assert_error(&again, 404, "NOT_FOUND", &[id_of(&name)]);
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

#[tokio::test]
async fn a_subscription_gets_the_services_defaults() {
    let (_broker, rest, topic, sub) = broker_with_subscription().await;
    let got = rest.ok(Method::GET, &v1(&sub, None), None).await;
    assert_eq!(
        got,
        json!({
            "name": sub,
            "topic": topic,
            "pushConfig": {},
            "ackDeadlineSeconds": 10,
            "messageRetentionDuration": "604800s",
            "expirationPolicy": { "ttl": "2678400s" },
            "state": "ACTIVE",
        }),
        "defaults of the real service, in proto3 JSON"
    );
}

#[tokio::test]
async fn subscription_policies_round_trip_and_list() {
    let broker = Broker::start();
    let rest = Rest::new(&broker);
    let topic = new_topic_name("topic");
    let dead_letters = new_topic_name("dlq");
    rest.ok(Method::PUT, &v1(&topic, None), None).await;
    rest.ok(Method::PUT, &v1(&dead_letters, None), None).await;
    let sub = new_subscription_name("policies");
    let filter = r#"attributes.kind = "order""#;
    let request = json!({
        "topic": topic,
        // snake_case is accepted on input.
        "ack_deadline_seconds": 30,
        "enable_message_ordering": true,
        "retryPolicy": { "minimumBackoff": "5s" },
        "deadLetterPolicy": { "deadLetterTopic": dead_letters },
        "filter": filter,
        "labels": { "team": "core" },
        "messageRetentionDuration": "86400s",
    });
    let created = rest.ok(Method::PUT, &v1(&sub, None), Some(&request)).await;
    assert_eq!(created["name"], sub.as_str());
    assert_eq!(created["topic"], topic.as_str());
    assert_eq!(created["ackDeadlineSeconds"], 30);
    assert_eq!(created["enableMessageOrdering"], true);
    assert_eq!(
        created["retryPolicy"],
        json!({ "minimumBackoff": "5s", "maximumBackoff": "600s" }),
        "the unset maximum backoff shows its default"
    );
    assert_eq!(
        created["deadLetterPolicy"],
        json!({ "deadLetterTopic": dead_letters, "maxDeliveryAttempts": 5 }),
        "unset delivery attempts mean 5"
    );
    assert_eq!(created["filter"], filter);
    assert_eq!(created["labels"], json!({ "team": "core" }));
    assert_eq!(created["messageRetentionDuration"], "86400s");
    assert!(
        created.get("ack_deadline_seconds").is_none(),
        "output is camelCase only: {created}"
    );
    assert_eq!(rest.ok(Method::GET, &v1(&sub, None), None).await, created);

    let plain = new_subscription_name("plain");
    rest.ok(
        Method::PUT,
        &v1(&plain, None),
        Some(&json!({ "topic": topic })),
    )
    .await;
    let mut expected = vec![sub.clone(), plain.clone()];
    expected.sort();

    let listed = rest
        .ok(Method::GET, &format!("/v1/{topic}/subscriptions"), None)
        .await;
    let mut names = strings(&listed["subscriptions"]);
    names.sort();
    assert_eq!(names, expected, "the topic's subscriptions, as names");

    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        // The query also accepts snake_case parameters.
        let query =
            format!("/v1/projects/{PROJECT}/subscriptions?page_size=1&page_token={page_token}");
        let page = rest.ok(Method::GET, &query, None).await;
        let subs = page["subscriptions"].as_array().expect("a list").clone();
        assert_eq!(subs.len(), 1, "pageSize 1: {page}");
        names.push(subs[0]["name"].as_str().unwrap().to_owned());
        match page.get("nextPageToken").and_then(Value::as_str) {
            Some(token) if !token.is_empty() => page_token = token.to_owned(),
            _ => break,
        }
    }
    assert_eq!(names, expected, "full subscriptions, one per page");

    // A PATCH changes exactly the fields of its mask.
    let patch = json!({
        "subscription": { "ackDeadlineSeconds": 60, "labels": { "team": "other" } },
        "updateMask": "ackDeadlineSeconds",
    });
    let updated = rest.ok(Method::PATCH, &v1(&sub, None), Some(&patch)).await;
    let mut expected = created.clone();
    expected["ackDeadlineSeconds"] = json!(60);
    assert_eq!(updated, expected);
    assert_eq!(rest.ok(Method::GET, &v1(&sub, None), None).await, expected);

    assert_eq!(
        rest.ok(Method::DELETE, &v1(&plain, None), None).await,
        json!({})
    );
    let gone = rest.send(Method::GET, &v1(&plain, None), None).await;
    assert_error(&gone, 404, "NOT_FOUND", &[id_of(&plain)]);
}

#[tokio::test]
async fn push_config_and_detach_have_their_verbs() {
    let (_broker, rest, topic, sub) = broker_with_subscription().await;
    let answer = rest
        .ok(
            Method::POST,
            &v1(&sub, Some("modifyPushConfig")),
            Some(&json!({ "pushConfig": {} })),
        )
        .await;
    assert_eq!(answer, json!({}));
    rest.publish(&topic, json!([{ "data": BASE64.encode("lost") }]))
        .await;

    let answer = rest.ok(Method::POST, &v1(&sub, Some("detach")), None).await;
    assert_eq!(answer, json!({}));
    let got = rest.ok(Method::GET, &v1(&sub, None), None).await;
    assert_eq!(got["detached"], true, "{got}");
    let pulled = rest
        .send(
            Method::POST,
            &v1(&sub, Some("pull")),
            Some(&json!({ "maxMessages": 1, "returnImmediately": true })),
        )
        .await;
    assert_error(&pulled, 400, "FAILED_PRECONDITION", &[]);
}

// ---------------------------------------------------------------------------------------------
// Messages

#[tokio::test]
async fn publish_pull_ack_and_modify_ack_deadline() {
    let (broker, rest, topic, sub) = broker_with_subscription().await;
    let ids = rest
        .publish(
            &topic,
            json!([
                { "data": BASE64.encode("first"), "attributes": { "kind": "a", "n": "1" } },
                { "data": BASE64.encode("second") },
            ]),
        )
        .await;
    assert_eq!(ids.len(), 2);
    assert!(
        ids.iter().all(|id| id.parse::<u64>().is_ok()),
        "ids: {ids:?}"
    );

    let received = rest.pull(&sub, 10).await;
    assert_eq!(rest_data(&received), ["first", "second"]);
    let first = &received[0];
    assert_eq!(first["message"]["messageId"], ids[0].as_str());
    assert_eq!(
        first["message"]["attributes"],
        json!({ "kind": "a", "n": "1" })
    );
    let publish_time = first["message"]["publishTime"]
        .as_str()
        .expect("a publish time");
    assert!(
        humantime::parse_rfc3339(publish_time).is_ok(),
        "RFC 3339: {publish_time}"
    );
    assert!(
        first.get("deliveryAttempt").is_none(),
        "no delivery attempt without a dead-letter policy: {first}"
    );
    assert!(
        received[1]["message"].get("attributes").is_none(),
        "an empty map is omitted: {}",
        received[1]
    );
    assert!(
        rest.pull(&sub, 10).await.is_empty(),
        "leased messages are not delivered twice"
    );

    let ack_ids = rest_ack_ids(&received);
    rest.ack(&sub, &ack_ids[..1]).await;
    let nack = rest
        .ok(
            Method::POST,
            &v1(&sub, Some("modifyAckDeadline")),
            Some(&json!({ "ackIds": [ack_ids[1]], "ackDeadlineSeconds": 0 })),
        )
        .await;
    assert_eq!(nack, json!({}));
    let again = rest.pull(&sub, 10).await;
    assert_eq!(rest_data(&again), ["second"], "a modack of 0 redelivers");
    assert_eq!(again[0]["message"]["messageId"], ids[1].as_str());
    assert_ne!(
        again[0]["ackId"], ack_ids[1],
        "a new delivery, a new ack id"
    );

    let out_of_range = rest
        .send(
            Method::POST,
            &v1(&sub, Some("modifyAckDeadline")),
            Some(&json!({ "ackIds": rest_ack_ids(&again), "ackDeadlineSeconds": 601 })),
        )
        .await;
    assert_error(&out_of_range, 400, "INVALID_ARGUMENT", &["601"]);

    rest.ack(&sub, &rest_ack_ids(&again)).await;
    broker.advance_clock(Duration::from_secs(11)).await;
    assert!(
        rest.pull(&sub, 10).await.is_empty(),
        "acknowledged messages never come back"
    );
}

#[tokio::test]
async fn a_dead_letter_policy_shows_delivery_attempts() {
    let broker = Broker::start();
    let rest = Rest::new(&broker);
    let topic = new_topic_name("topic");
    let dlq = new_topic_name("dlq");
    let sub = new_subscription_name("sub");
    rest.ok(Method::PUT, &v1(&topic, None), None).await;
    rest.ok(Method::PUT, &v1(&dlq, None), None).await;
    let request = json!({ "topic": topic, "deadLetterPolicy": { "deadLetterTopic": dlq } });
    rest.ok(Method::PUT, &v1(&sub, None), Some(&request)).await;
    rest.publish(&topic, json!([{ "data": BASE64.encode("m") }]))
        .await;
    let received = rest.pull(&sub, 1).await;
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0]["deliveryAttempt"], 1,
        "an int32 is a JSON number"
    );
}

#[tokio::test]
async fn a_long_poll_is_answered_when_a_message_is_published() {
    let (_broker, rest, topic, sub) = broker_with_subscription().await;
    let waiting = tokio::spawn({
        let rest = rest.clone();
        let sub = sub.clone();
        async move {
            rest.ok(
                Method::POST,
                &v1(&sub, Some("pull")),
                Some(&json!({ "maxMessages": 10, "returnImmediately": false })),
            )
            .await
        }
    });
    // Gives the pull time to reach the broker before the publish; if it arrives later it finds
    // the message at once, so the assertion below holds either way and cannot flake.
    tokio::time::sleep(Duration::from_millis(200)).await;
    rest.publish(&topic, json!([{ "data": BASE64.encode("wake") }]))
        .await;
    // The broker's long poll lasts 10 s; an answer only at its end would hold no message.
    let body = tokio::time::timeout(Duration::from_secs(8), waiting)
        .await
        .expect("the waiting pull answered as the message arrived")
        .expect("the pull task");
    assert_eq!(rest_data(&received(&body)), ["wake"]);
}

#[tokio::test]
async fn an_attributes_only_message_is_accepted() {
    // The official emulator's REST publish rejects this; the real service and gRPC accept it.
    let (_broker, rest, topic, sub) = broker_with_subscription().await;
    let ids = rest
        .publish(&topic, json!([{ "attributes": { "only": "attributes" } }]))
        .await;
    let received = rest.pull(&sub, 10).await;
    assert_eq!(received.len(), 1);
    let message = &received[0]["message"];
    assert_eq!(message["messageId"], ids[0].as_str());
    assert_eq!(message["attributes"], json!({ "only": "attributes" }));
    assert!(
        message.get("data").is_none(),
        "empty data is omitted: {message}"
    );
}

#[tokio::test]
async fn rest_and_grpc_exchange_identical_messages() {
    let (broker, rest, topic, sub) = broker_with_subscription().await;
    let grpc = broker.grpc().await;
    // Bytes that are not UTF-8 and need base64 padding, so the encoding is really exercised.
    let binary: Vec<u8> = vec![0x00, 0xff, 0xfe, 0x10, 0x80];

    let ids = rest
        .publish(
            &topic,
            json!([{
                "data": BASE64.encode(&binary),
                "attributes": { "from": "rest" },
                "orderingKey": "key-1",
            }]),
        )
        .await;
    let via_grpc = grpc.pull(&sub, 10).await;
    assert_eq!(via_grpc.len(), 1);
    let message = via_grpc[0].message.as_ref().expect("a message");
    assert_eq!(message.data, binary);
    assert_eq!(
        message.attributes,
        HashMap::from([("from".to_owned(), "rest".to_owned())])
    );
    assert_eq!(message.message_id, ids[0]);
    assert_eq!(message.ordering_key, "key-1");
    grpc.ack(&sub, vec![via_grpc[0].ack_id.clone()]).await;

    let sent = pubsub::PubsubMessage {
        data: binary.clone(),
        ordering_key: "key-2".into(),
        ..message_with("", &[("from", "grpc")])
    };
    let grpc_ids = grpc
        .publish(&topic, vec![sent])
        .await
        .expect("gRPC publish");
    let via_rest = rest.pull(&sub, 10).await;
    assert_eq!(via_rest.len(), 1, "{via_rest:?}");
    let message = &via_rest[0]["message"];
    assert_eq!(message["data"], BASE64.encode(&binary));
    assert_eq!(message["attributes"], json!({ "from": "grpc" }));
    assert_eq!(message["messageId"], grpc_ids[0].as_str());
    assert_eq!(message["orderingKey"], "key-2");
    rest.ack(&sub, &rest_ack_ids(&via_rest)).await;

    // The same message read through both doors: same id, same publish time.
    let both = new_subscription_name("both");
    rest.ok(
        Method::PUT,
        &v1(&both, None),
        Some(&json!({ "topic": topic, "ackDeadlineSeconds": 10 })),
    )
    .await;
    let ids = rest
        .publish(&topic, json!([{ "data": BASE64.encode("shared") }]))
        .await;
    let via_rest = rest.pull(&both, 1).await;
    rest.ok(
        Method::POST,
        &v1(&both, Some("modifyAckDeadline")),
        Some(&json!({ "ackIds": rest_ack_ids(&via_rest), "ackDeadlineSeconds": 0 })),
    )
    .await;
    let via_grpc = grpc.pull(&both, 1).await;
    assert_eq!(data_of(&via_grpc), ["shared"]);
    let message = via_grpc[0].message.as_ref().unwrap();
    assert_eq!(message.message_id, ids[0]);
    assert_eq!(via_rest[0]["message"]["messageId"], ids[0].as_str());
    let grpc_time = message.publish_time.expect("a publish time");
    let rest_time = via_rest[0]["message"]["publishTime"].as_str().unwrap();
    let rest_time: prost_types::Timestamp = rest_time.parse().expect("an RFC 3339 timestamp");
    assert_eq!(rest_time, grpc_time);
}

// ---------------------------------------------------------------------------------------------
// Errors

#[tokio::test]
async fn unknown_resources_are_404_and_duplicates_409() {
    let (_broker, rest, topic, sub) = broker_with_subscription().await;
    let missing_topic = new_topic_name("missing");
    let missing_sub = new_subscription_name("missing");

    let answer = rest
        .send(Method::GET, &v1(&missing_topic, None), None)
        .await;
    assert_error(&answer, 404, "NOT_FOUND", &[id_of(&missing_topic)]);
    let answer = rest
        .send(
            Method::POST,
            &v1(&missing_topic, Some("publish")),
            Some(&json!({ "messages": [{ "data": "eA==" }] })),
        )
        .await;
    assert_error(&answer, 404, "NOT_FOUND", &[id_of(&missing_topic)]);
    let answer = rest
        .send(
            Method::GET,
            &format!("/v1/{missing_topic}/subscriptions"),
            None,
        )
        .await;
    assert_error(&answer, 404, "NOT_FOUND", &[id_of(&missing_topic)]);
    let answer = rest
        .send(
            Method::PUT,
            &v1(&new_subscription_name("orphan"), None),
            Some(&json!({ "topic": missing_topic })),
        )
        .await;
    assert_error(&answer, 404, "NOT_FOUND", &[id_of(&missing_topic)]);
    let answer = rest
        .send(
            Method::POST,
            &v1(&missing_sub, Some("pull")),
            Some(&json!({ "maxMessages": 1 })),
        )
        .await;
    assert_error(&answer, 404, "NOT_FOUND", &[id_of(&missing_sub)]);
    let answer = rest
        .send(
            Method::POST,
            &v1(&missing_sub, Some("acknowledge")),
            Some(&json!({ "ackIds": ["1-2-3"] })),
        )
        .await;
    assert_error(&answer, 404, "NOT_FOUND", &[id_of(&missing_sub)]);

    let answer = rest.send(Method::PUT, &v1(&topic, None), None).await;
    assert_error(&answer, 409, "ALREADY_EXISTS", &[id_of(&topic)]);
    let answer = rest
        .send(
            Method::PUT,
            &v1(&sub, None),
            Some(&json!({ "topic": topic })),
        )
        .await;
    assert_error(&answer, 409, "ALREADY_EXISTS", &[id_of(&sub)]);
}

#[tokio::test]
async fn bad_names_are_400() {
    let broker = Broker::start();
    let rest = Rest::new(&broker);
    for (id, why) in [
        ("ab", "between 3 and 255"),
        ("bad*char", "'*'"),
        ("1starts-with-digit", "start with a letter"),
        ("goog-reserved", "goog"),
    ] {
        let answer = rest
            .send(Method::PUT, &v1(&topic_name(id), None), None)
            .await;
        assert_error(&answer, 400, "INVALID_ARGUMENT", &["topic", why]);
        let answer = rest
            .send(Method::GET, &v1(&subscription_name(id), None), None)
            .await;
        assert_error(&answer, 400, "INVALID_ARGUMENT", &["subscription", why]);
    }
}

#[tokio::test]
async fn invalid_messages_and_bodies_are_400_naming_the_problem() {
    let (_broker, rest, topic, sub) = broker_with_subscription().await;
    let publish = v1(&topic, Some("publish"));

    let answer = rest
        .send(
            Method::POST,
            &publish,
            Some(&json!({ "messages": [{ "data": "!!!not base64" }] })),
        )
        .await;
    assert_error(
        &answer,
        400,
        "INVALID_ARGUMENT",
        &["messages[0].data", "Base64", "!!!not base64"],
    );

    let answer = rest
        .send(
            Method::POST,
            &publish,
            Some(&json!({ "messages": [{ "data": "eA==", "colour": "red" }] })),
        )
        .await;
    assert_error(
        &answer,
        400,
        "INVALID_ARGUMENT",
        &["Unknown name \"colour\"", "messages[0]"],
    );
    let answer = rest
        .send(
            Method::PUT,
            &v1(&new_subscription_name("typo"), None),
            Some(&json!({ "topic": topic, "ackDeadline": 30 })),
        )
        .await;
    assert_error(
        &answer,
        400,
        "INVALID_ARGUMENT",
        &["Unknown name \"ackDeadline\""],
    );

    let answer = rest
        .send(Method::POST, &publish, Some(&json!({ "messages": [{}] })))
        .await;
    assert_error(
        &answer,
        400,
        "INVALID_ARGUMENT",
        &["messages[0]", "attribute"],
    );
    let answer = rest
        .send(Method::POST, &publish, Some(&json!({ "messages": [] })))
        .await;
    assert_error(&answer, 400, "INVALID_ARGUMENT", &[]);

    let too_big = BASE64.encode(vec![b'x'; 10_000_001]);
    let answer = rest
        .send(
            Method::POST,
            &publish,
            Some(&json!({ "messages": [{ "data": too_big }] })),
        )
        .await;
    assert_error(&answer, 400, "INVALID_ARGUMENT", &["10000000"]);

    let answer = rest
        .send(
            Method::PUT,
            &v1(&new_subscription_name("filtered"), None),
            Some(&json!({ "topic": topic, "filter": "attributes.x = " })),
        )
        .await;
    assert_error(&answer, 400, "INVALID_ARGUMENT", &["filter", "position"]);

    let response = rest
        .http
        .client
        .put(rest.http.url(&v1(&new_topic_name("malformed"), None)))
        .header(header::CONTENT_TYPE, "application/json")
        .body("{not json")
        .send()
        .await
        .expect("a response");
    assert_error(
        &read_answer(response).await,
        400,
        "INVALID_ARGUMENT",
        &["Invalid JSON payload"],
    );

    let answer = rest
        .send(
            Method::GET,
            &format!("/v1/projects/{PROJECT}/topics?pageSize=many"),
            None,
        )
        .await;
    assert_error(&answer, 400, "INVALID_ARGUMENT", &["many"]);

    assert!(
        rest.pull(&sub, 10).await.is_empty(),
        "nothing rejected was published"
    );
}

#[tokio::test]
async fn wrong_methods_are_405_and_unknown_paths_404() {
    let (_broker, rest, topic, sub) = broker_with_subscription().await;

    let answer = rest
        .send(Method::GET, &v1(&topic, Some("publish")), None)
        .await;
    assert_error(&answer, 405, "UNIMPLEMENTED", &["GET"]);
    assert_eq!(
        answer
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let answer = rest.send(Method::POST, &v1(&sub, None), None).await;
    assert_error(&answer, 405, "UNIMPLEMENTED", &["POST"]);
    assert_eq!(
        answer
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok()),
        Some("PUT, GET, PATCH, DELETE")
    );
    let answer = rest
        .send(
            Method::DELETE,
            &format!("/v1/projects/{PROJECT}/topics"),
            None,
        )
        .await;
    assert_error(&answer, 405, "UNIMPLEMENTED", &["DELETE"]);

    for path in [
        "/nope".to_owned(),
        format!("/v1/projects/{PROJECT}/queues"),
        format!("/v1/{sub}:nope"),
        format!("/v1/{topic}:pull"),
        format!("/v2/{topic}"),
    ] {
        let answer = rest.send(Method::GET, &path, None).await;
        assert_error(&answer, 404, "NOT_FOUND", &[]);
    }
    let answer = rest
        .send(Method::POST, &format!("/v1/{sub}:nope"), Some(&json!({})))
        .await;
    assert_error(&answer, 404, "NOT_FOUND", &[":nope"]);
}

// ---------------------------------------------------------------------------------------------
// Transport

#[tokio::test]
async fn http2_prior_knowledge_requests_are_served() {
    let (_broker, rest, topic, sub) = broker_with_subscription().await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("an h2c client");
    let response = client
        .post(rest.http.url(&v1(&topic, Some("publish"))))
        .json(&json!({ "messages": [{ "data": BASE64.encode("over h2c") }] }))
        .send()
        .await
        .expect("an h2c publish");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let published = read_answer(response).await;
    assert_eq!(published.status, StatusCode::OK, "{}", published.text);
    let ids = strings(&published.body["messageIds"]);

    let response = client
        .get(rest.http.url(&v1(&sub, None)))
        .send()
        .await
        .expect("an h2c get");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let got = read_answer(response).await;
    assert_eq!(got.body["name"], sub.as_str(), "{}", got.text);

    let missing = client
        .get(rest.http.url(&v1(&new_topic_name("missing"), None)))
        .send()
        .await
        .expect("an h2c get");
    assert_error(&read_answer(missing).await, 404, "NOT_FOUND", &[]);

    let received = rest.pull(&sub, 10).await;
    assert_eq!(rest_data(&received), ["over h2c"]);
    assert_eq!(received[0]["message"]["messageId"], ids[0].as_str());
}

#[tokio::test]
async fn a_request_id_is_echoed_and_the_call_logged() {
    let (broker, rest, topic, _sub) = broker_with_subscription().await;
    let request_id = unique_id("rest-request");
    let path = v1(&topic, Some("publish"));
    let response = rest
        .http
        .client
        .post(rest.http.url(&path))
        .header("x-request-id", &request_id)
        .json(&json!({ "messages": [{ "data": "eA==" }] }))
        .send()
        .await
        .expect("publish");
    assert_eq!(
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(request_id.as_str())
    );
    assert_eq!(read_answer(response).await.status, StatusCode::OK);

    let event = broker.wait_for_log(EVENT_TIMEOUT, |e| {
        e["logType"] == "REQUEST_INBOUND" && e["requestId"] == request_id.as_str()
    });
    assert_eq!(event["service"], "rest", "{event}");
    assert_eq!(event["method"], "Publish", "{event}");
    assert_eq!(event["path"], path.as_str(), "{event}");
    assert_eq!(event["status"], "200", "{event}");
    assert_eq!(event["httpStatus"], 200, "{event}");
    assert_eq!(event["sourceIp"], "127.0.0.1", "{event}");
    assert!(
        event["duration"].as_f64().is_some_and(|d| d >= 0.0),
        "{event}"
    );

    let failing_id = unique_id("rest-missing");
    let missing = v1(&new_topic_name("missing"), None);
    let response = rest
        .http
        .client
        .get(rest.http.url(&missing))
        .header("x-request-id", &failing_id)
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let event = broker.wait_for_log(EVENT_TIMEOUT, |e| {
        e["logType"] == "REQUEST_INBOUND" && e["requestId"] == failing_id.as_str()
    });
    assert_eq!(event["method"], "GetTopic", "{event}");
    assert_eq!(event["status"], "404", "{event}");
    assert_eq!(event["path"], missing.as_str(), "{event}");

    let response = rest
        .http
        .client
        .get(rest.http.url(&v1(&topic, None)))
        .send()
        .await
        .expect("get");
    let generated = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("a generated request id");
    assert!(!generated.is_empty() && generated != request_id);
}

#[tokio::test]
async fn probes_and_metrics_answer() {
    let (broker, rest, topic, sub) = broker_with_subscription().await;
    for probe in ["/healthz", "/readyz"] {
        let response = rest
            .http
            .client
            .get(rest.http.url(probe))
            .send()
            .await
            .expect("probe");
        assert_eq!(response.status(), StatusCode::OK, "{probe}");
        assert_eq!(response.text().await.unwrap(), "ok", "{probe}");
    }

    rest.publish(
        &topic,
        json!([
            { "data": BASE64.encode("a") },
            { "data": BASE64.encode("b") },
            { "data": BASE64.encode("c") },
        ]),
    )
    .await;
    let received = rest.pull(&sub, 1).await;
    rest.ack(&sub, &rest_ack_ids(&received)).await;
    let idle = new_subscription_name("idle");
    rest.ok(
        Method::PUT,
        &v1(&idle, None),
        Some(&json!({ "topic": topic })),
    )
    .await;

    // One Publish over REST so far, answered 200; counted as its response ended.
    let text = wait_for_sample(
        &rest,
        r#"converge_requests_total{service="rest",method="Publish",status="200"} "#,
        1.0,
    )
    .await;
    let backlog =
        |name: &str| format!("converge_subscription_backlog_messages{{subscription=\"{name}\"}} ");
    let sample = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&backlog(name)))
            .map(str::to_owned)
    };
    assert_eq!(
        sample(&sub).as_deref(),
        Some("2"),
        "three published, one acknowledged\n{text}"
    );
    assert_eq!(
        sample(&idle).as_deref(),
        Some("0"),
        "created after the publish\n{text}"
    );
    assert_eq!(broker.backlog(&sub).await, Some(2));
    assert!(
        text.contains("# TYPE converge_request_duration_seconds histogram"),
        "{text}"
    );
}
