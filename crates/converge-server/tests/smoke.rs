//! Smoke tests of the transport over real sockets: one port, both protocols, the error shapes,
//! request ids, metrics and a clean shutdown. Full API behaviour is tested elsewhere.

use std::net::SocketAddr;
use std::time::Duration;

use converge_server::proto::publisher_client::PublisherClient;
use converge_server::proto::subscriber_client::SubscriberClient;
use converge_server::proto::{
    GetTopicRequest, PublishRequest, PubsubMessage, StreamingPullRequest, Topic,
};
use converge_server::{ServerConfig, start};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;

/// A server on a free port, in memory, stopped when `stop` is sent (or dropped).
struct Server {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(false).await
    }

    async fn start_with(test_clock: bool) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            shutdown_grace: Duration::from_secs(5),
            test_clock,
            ..ServerConfig::default()
        };
        let (addr, task) = start(config, async move {
            let _ = stopped.await;
        })
        .await
        .expect("server starts");
        Self { addr, stop, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits (bounded) until `/readyz` says 200.
    async fn wait_ready(&self) {
        for _ in 0..500 {
            let response = reqwest::get(self.url("/readyz")).await.unwrap();
            if response.status() == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never ready");
    }

    async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.expect("server task")
    }
}

/// An h2c gRPC channel to the server.
async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("gRPC connects")
}

/// Calls GetTopic until the store is open (the server answers UNAVAILABLE "starting" before).
async fn get_topic_once_open(addr: SocketAddr, topic: &str) -> tonic::Status {
    let mut client = PublisherClient::new(channel(addr).await);
    for _ in 0..500 {
        let status = client
            .get_topic(GetTopicRequest {
                topic: topic.to_owned(),
            })
            .await
            .expect_err("this topic name is invalid");
        if !status.message().contains("starting") {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the store never opened");
}

#[tokio::test]
async fn healthz_answers_ok() {
    let server = Server::start().await;
    let response = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn unknown_rest_path_is_404_in_googles_shape() {
    let server = Server::start().await;
    let response = reqwest::get(server.url("/v1/projects/p/queues/q"))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], 404);
    assert_eq!(body["error"]["status"], "NOT_FOUND");
    let response = reqwest::get(server.url("/nothing/here")).await.unwrap();
    assert_eq!(response.status(), 404);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn wrong_rest_method_is_405_with_allow() {
    let server = Server::start().await;
    let response = reqwest::get(server.url("/v1/projects/p/topics/t:publish"))
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn grpc_streaming_pull_reaches_the_service() {
    let server = Server::start().await;
    server.wait_ready().await;
    let mut client = SubscriberClient::new(channel(server.addr).await);
    let first = StreamingPullRequest {
        subscription: "projects/p/subscriptions/missing".into(),
        stream_ack_deadline_seconds: 10,
        ..Default::default()
    };
    let status = client
        .streaming_pull(tokio_stream::iter(vec![first]))
        .await
        .expect_err("no such subscription");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn grpc_calls_reach_the_service() {
    let server = Server::start().await;
    let status = get_topic_once_open(server.addr, "projects/p/topics/x").await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn rest_calls_reach_the_service_over_http1_and_h2c() {
    let server = Server::start().await;
    get_topic_once_open(server.addr, "projects/p/topics/x").await;
    let url = server.url("/v1/projects/p/topics/x");
    for client in [
        reqwest::Client::new(),
        reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap(),
    ] {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 400);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["status"], "INVALID_ARGUMENT", "{body}");
    }
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn malformed_rest_body_is_invalid_argument() {
    let server = Server::start().await;
    get_topic_once_open(server.addr, "projects/p/topics/x").await;
    let response = reqwest::Client::new()
        .post(server.url("/v1/projects/p/topics/topic-1:publish"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn ten_megabyte_publishes_pass_the_size_limits() {
    let server = Server::start().await;
    get_topic_once_open(server.addr, "projects/p/topics/x").await;
    let data = vec![b'x'; 10_000_000 - 100];

    let mut client = PublisherClient::new(channel(server.addr).await);
    let request = PublishRequest {
        topic: "projects/p/topics/big-topic".into(),
        messages: vec![PubsubMessage {
            data: data.clone(),
            ..Default::default()
        }],
    };
    let status = client
        .publish(request)
        .await
        .expect_err("the topic does not exist");
    assert!(
        !matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );

    use base64::Engine as _;
    let body = serde_json::json!({ "messages": [{ "data": base64::engine::general_purpose::STANDARD.encode(&data) }] });
    let response = reqwest::Client::new()
        .post(server.url("/v1/projects/p/topics/big-topic:publish"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("payload"), "{body}");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let server = Server::start().await;
    let client = reqwest::Client::new();
    let response = client
        .get(server.url("/healthz"))
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let response = client.get(server.url("/healthz")).send().await.unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn metrics_count_requests() {
    let server = Server::start().await;
    get_topic_once_open(server.addr, "projects/p/topics/x").await;
    let response = reqwest::get(server.url("/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("converge_requests_total{")
                && l.contains("service=\"Publisher\"")
                && l.contains("method=\"GetTopic\"")
                && l.contains("status=\"INVALID_ARGUMENT\"")
        })
        .unwrap_or_else(|| panic!("no GetTopic counter in:\n{text}"));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{line}");
    assert!(
        text.contains("converge_request_duration_seconds_bucket{"),
        "{text}"
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_returns_ok() {
    let server = Server::start().await;
    let addr = server.addr;
    server.shutdown().await.expect("clean shutdown");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn readyz_turns_200_once_the_store_is_open() {
    let server = Server::start().await;
    server.wait_ready().await;
    let response = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(response.text().await.unwrap(), "ok");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn both_doors_reach_the_same_service_and_the_path_name_wins() {
    let server = Server::start().await;
    server.wait_ready().await;
    let mut publisher = PublisherClient::new(channel(server.addr).await);
    let topic = Topic {
        name: "projects/p/topics/from-grpc".into(),
        ..Default::default()
    };
    publisher
        .create_topic(topic)
        .await
        .expect("created over gRPC");

    let client = reqwest::Client::new();
    let response = client
        .get(server.url("/v1/projects/p/topics/from-grpc"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["name"], "projects/p/topics/from-grpc");

    let response = client
        .put(server.url("/v1/projects/p/topics/from-rest"))
        .json(&serde_json::json!({ "name": "projects/p/topics/elsewhere" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["name"], "projects/p/topics/from-rest");
    let topic = publisher
        .get_topic(GetTopicRequest {
            topic: "projects/p/topics/from-rest".into(),
        })
        .await
        .expect("created over REST, read over gRPC");
    assert_eq!(topic.into_inner().name, "projects/p/topics/from-rest");
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn metrics_show_subscription_backlog() {
    let server = Server::start().await;
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let put = |path: &str, body: serde_json::Value| client.put(server.url(path)).json(&body).send();
    assert_eq!(
        put("/v1/projects/p/topics/metered", serde_json::json!({}))
            .await
            .unwrap()
            .status(),
        200
    );
    let subscription = serde_json::json!({ "topic": "projects/p/topics/metered" });
    assert_eq!(
        put("/v1/projects/p/subscriptions/metered-sub", subscription)
            .await
            .unwrap()
            .status(),
        200
    );
    let publish = serde_json::json!({ "messages": [{ "data": "aGk=" }, { "data": "aG8=" }] });
    let response = client
        .post(server.url("/v1/projects/p/topics/metered:publish"))
        .json(&publish)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let backlog = "converge_subscription_backlog_messages{subscription=\"projects/p/subscriptions/metered-sub\"} 2";
    assert!(text.lines().any(|l| l == backlog), "{text}");
    assert!(text.contains("converge_subscription_oldest_unacked_age_seconds{subscription=\"projects/p/subscriptions/metered-sub\"}"));
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn the_test_clock_route_exists_only_with_a_test_clock() {
    let server = Server::start_with(true).await;
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let response = client
        .post(server.url("/converge/test/clock:advance"))
        .json(&serde_json::json!({ "seconds": 3600 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let now = humantime::parse_rfc3339(body["now"].as_str().unwrap()).unwrap();
    assert!(
        now > std::time::SystemTime::now() + Duration::from_secs(3000),
        "{body}"
    );
    let response = client
        .post(server.url("/converge/test/clock:advance"))
        .json(&serde_json::json!({ "seconds": -1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    server.shutdown().await.expect("clean shutdown");

    let server = Server::start().await;
    let response = client
        .post(server.url("/converge/test/clock:advance"))
        .json(&serde_json::json!({ "seconds": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    server.shutdown().await.expect("clean shutdown");
}
