//! StreamingPull against the real `converge` binary, driven the way the official clients drive
//! it: a bidirectional stream whose first request names the subscription, the stream deadline
//! and flow control, later requests carrying acks, modacks and heartbeats, with acks also sent
//! through the unary RPCs.
//!
//! Time-based behaviour (the stream's lease deadline, exactly-once expiry) is reached by moving
//! the broker's test clock. Waits on the stream are bounded by [`RECEIVE_TIMEOUT`], which only
//! turns a hang into a failure: no test asserts on how long something took.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::pubsub::{self, StreamingPullRequest, StreamingPullResponse};
use common::{Broker, Grpc, new_subscription_name, new_topic_name, subscription};
use futures::channel::mpsc;
use tonic::{Code, Streaming};

/// How long a test waits for something the broker must send before failing.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(15);

/// One open StreamingPull: the request side and the response side.
struct PullStream {
    requests: mpsc::UnboundedSender<StreamingPullRequest>,
    responses: Streaming<StreamingPullResponse>,
}

impl PullStream {
    /// Opens a stream with `first` as its first request; the call's error status if the broker
    /// refuses it.
    async fn open(grpc: &Grpc, first: StreamingPullRequest) -> Result<Self, tonic::Status> {
        let (requests, outgoing) = mpsc::unbounded();
        requests
            .unbounded_send(first)
            .expect("the request stream is open");
        let responses = grpc
            .subscriber
            .clone()
            .streaming_pull(outgoing)
            .await?
            .into_inner();
        Ok(Self {
            requests,
            responses,
        })
    }

    /// Sends a later request.
    fn send(&self, request: StreamingPullRequest) {
        self.requests
            .unbounded_send(request)
            .expect("the request stream is open");
    }

    /// Acknowledges on the stream.
    fn ack(&self, ack_ids: Vec<String>) {
        self.send(StreamingPullRequest {
            ack_ids,
            ..Default::default()
        });
    }

    /// Changes deadlines on the stream (0 is a nack).
    fn modack(&self, ack_ids: Vec<String>, seconds: i32) {
        self.send(StreamingPullRequest {
            modify_deadline_seconds: vec![seconds; ack_ids.len()],
            modify_deadline_ack_ids: ack_ids,
            ..Default::default()
        });
    }

    /// The next response, `Ok(None)` when the stream ended cleanly, or the stream's error.
    async fn next(&mut self) -> Result<Option<StreamingPullResponse>, tonic::Status> {
        tokio::time::timeout(RECEIVE_TIMEOUT, self.responses.message())
            .await
            .expect("the broker answered on the stream in time")
    }

    /// The next response, which must be there.
    async fn response(&mut self) -> StreamingPullResponse {
        self.next()
            .await
            .unwrap_or_else(|s| panic!("stream failed: {s:?}"))
            .expect("the stream is still open")
    }

    /// Messages from the next responses until at least `n` came.
    async fn receive(&mut self, n: usize) -> Vec<pubsub::ReceivedMessage> {
        let mut received = Vec::new();
        while received.len() < n {
            received.extend(self.response().await.received_messages);
        }
        received
    }

    /// Half-closes the stream and waits for the broker to end it: every request sent before
    /// has then been applied.
    async fn close(mut self) {
        self.requests.close_channel();
        loop {
            match self.next().await {
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(status) => panic!("the stream ended with {status:?}"),
            }
        }
    }
}

/// A first request for `subscription` with a stream deadline and outstanding-message limit.
fn first(subscription: &str, deadline_secs: i32, max_messages: i64) -> StreamingPullRequest {
    StreamingPullRequest {
        subscription: subscription.to_owned(),
        stream_ack_deadline_seconds: deadline_secs,
        max_outstanding_messages: max_messages,
        client_id: common::unique_id("client"),
        ..Default::default()
    }
}

/// A broker with one topic and one subscription built by `configure` from the default one.
async fn setup(
    configure: impl FnOnce(&mut pubsub::Subscription),
) -> (Broker, Grpc, String, String) {
    let broker = Broker::start();
    let grpc = broker.grpc().await;
    let topic = new_topic_name("topic");
    let sub = new_subscription_name("sub");
    grpc.create_topic(&topic).await;
    let mut resource = subscription(&sub, &topic);
    configure(&mut resource);
    grpc.create_subscription(resource).await;
    (broker, grpc, topic, sub)
}

fn message_id(r: &pubsub::ReceivedMessage) -> String {
    r.message
        .as_ref()
        .expect("a received message has a message")
        .message_id
        .clone()
}

fn ack_ids(received: &[pubsub::ReceivedMessage]) -> Vec<String> {
    received.iter().map(|r| r.ack_id.clone()).collect()
}

fn ids(received: &[pubsub::ReceivedMessage]) -> HashSet<String> {
    received.iter().map(message_id).collect()
}

#[tokio::test]
async fn messages_arrive_on_the_stream_and_acks_on_it_stick() {
    let (broker, grpc, topic, sub) = setup(|_| {}).await;
    let published: HashSet<String> = grpc
        .publish_data(&topic, &["a", "b", "c"])
        .await
        .into_iter()
        .collect();
    let mut stream = PullStream::open(&grpc, first(&sub, 10, 0))
        .await
        .expect("open");
    let response = stream.response().await;
    let properties = response
        .subscription_properties
        .expect("every response carries the subscription's properties");
    assert!(!properties.exactly_once_delivery_enabled);
    assert!(!properties.message_ordering_enabled);
    let mut received = response.received_messages;
    received.extend(stream.receive(3 - received.len().min(3)).await);
    assert_eq!(ids(&received), published);
    stream.ack(ack_ids(&received));
    stream.close().await;

    broker.advance_clock(Duration::from_secs(700)).await;
    assert!(
        grpc.pull(&sub, 10).await.is_empty(),
        "acknowledged on the stream, so never delivered again"
    );
}

#[tokio::test]
async fn flow_control_holds_back_messages_until_acks() {
    let (_broker, grpc, topic, sub) = setup(|_| {}).await;
    let data: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    let data: Vec<&str> = data.iter().map(String::as_str).collect();
    let published: HashSet<String> = grpc.publish_data(&topic, &data).await.into_iter().collect();
    let mut stream = PullStream::open(&grpc, first(&sub, 600, 2))
        .await
        .expect("open");
    let on_stream = stream.receive(2).await;
    assert_eq!(
        on_stream.len(),
        2,
        "never more than max_outstanding_messages"
    );

    // The stream is full: the other three are still in the backlog, for anyone.
    let rest = grpc.pull(&sub, 10).await;
    assert_eq!(
        rest.len(),
        3,
        "the stream leased only what flow control allowed"
    );
    assert!(ids(&rest).is_disjoint(&ids(&on_stream)));
    grpc.nack(&sub, ack_ids(&rest)).await;

    // Each ack on the stream makes room for more, never above the limit.
    let mut seen = ids(&on_stream);
    let mut outstanding = on_stream;
    while seen.len() < published.len() {
        stream.ack(ack_ids(&outstanding));
        outstanding = stream.receive(1).await;
        assert!(outstanding.len() <= 2, "at most 2 out at once");
        seen.extend(ids(&outstanding));
    }
    assert_eq!(seen, published);
}

#[tokio::test]
async fn a_unary_ack_frees_room_on_the_stream() {
    let (_broker, grpc, topic, sub) = setup(|_| {}).await;
    grpc.publish_data(&topic, &["one", "two"]).await;
    let mut stream = PullStream::open(&grpc, first(&sub, 600, 1))
        .await
        .expect("open");
    let one = stream.receive(1).await;
    assert_eq!(one.len(), 1);
    // The clock does not move, so only the ack (as the Python client sends it) makes room.
    grpc.ack(&sub, ack_ids(&one)).await;
    let two = stream.receive(1).await;
    assert_eq!(two.len(), 1);
    assert_ne!(message_id(&one[0]), message_id(&two[0]));
}

#[tokio::test]
async fn a_nack_on_the_stream_redelivers() {
    let (_broker, grpc, topic, sub) = setup(|_| {}).await;
    grpc.publish_data(&topic, &["again"]).await;
    let mut stream = PullStream::open(&grpc, first(&sub, 600, 0))
        .await
        .expect("open");
    let first_delivery = stream.receive(1).await;
    stream.modack(ack_ids(&first_delivery), 0);
    let second_delivery = stream.receive(1).await;
    assert_eq!(
        message_id(&first_delivery[0]),
        message_id(&second_delivery[0])
    );
    assert_ne!(
        first_delivery[0].ack_id, second_delivery[0].ack_id,
        "a new delivery has a new ack id"
    );
}

#[tokio::test]
async fn deliveries_are_leased_for_the_stream_deadline() {
    // The subscription's own deadline is the default 10 s; the stream asks for 60 s.
    let (broker, grpc, topic, sub) = setup(|_| {}).await;
    grpc.publish_data(&topic, &["slow"]).await;
    let mut stream = PullStream::open(&grpc, first(&sub, 60, 0))
        .await
        .expect("open");
    let delivered = stream.receive(1).await;

    broker.advance_clock(Duration::from_secs(30)).await;
    assert!(
        grpc.pull(&sub, 10).await.is_empty(),
        "30 s in, the 60 s stream lease still holds (a 10 s lease would have expired)"
    );
    broker.advance_clock(Duration::from_secs(31)).await;
    let redelivered = stream.receive(1).await;
    assert_eq!(message_id(&delivered[0]), message_id(&redelivered[0]));
}

#[tokio::test]
async fn a_later_request_may_not_change_flow_control() {
    let (_broker, grpc, _topic, sub) = setup(|_| {}).await;
    let mut stream = PullStream::open(&grpc, first(&sub, 10, 2))
        .await
        .expect("open");
    stream.send(StreamingPullRequest {
        max_outstanding_messages: 5,
        ..Default::default()
    });
    let status = loop {
        match stream.next().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("max_outstanding_messages"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_heartbeat_and_a_new_stream_deadline_are_accepted() {
    // As the Python client does with exactly-once: a later request raises the stream deadline.
    let (broker, grpc, topic, sub) = setup(|s| s.enable_exactly_once_delivery = true).await;
    let mut stream = PullStream::open(&grpc, first(&sub, 10, 0))
        .await
        .expect("open");
    stream.send(StreamingPullRequest::default());
    stream.send(StreamingPullRequest {
        stream_ack_deadline_seconds: 60,
        ..Default::default()
    });
    // Requests are applied in order: once a later modack is confirmed, the new deadline holds.
    stream.modack(vec!["unknown-ack-id".into()], 20);
    let confirmation = next_confirmation(&mut stream)
        .await
        .modify_ack_deadline_confirmation
        .expect("a modack confirmation");
    assert_eq!(confirmation.invalid_ack_ids, ["unknown-ack-id"]);

    grpc.publish_data(&topic, &["after"]).await;
    stream.receive(1).await;
    broker.advance_clock(Duration::from_secs(30)).await;
    assert!(
        grpc.pull(&sub, 10).await.is_empty(),
        "leased for the new 60 s deadline"
    );
}

#[tokio::test]
async fn the_first_request_is_validated() {
    let (_broker, grpc, _topic, sub) = setup(|_| {}).await;
    for deadline in [0, 5, 601] {
        let status = PullStream::open(&grpc, first(&sub, deadline, 0))
            .await
            .err()
            .expect("a bad stream deadline is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("stream_ack_deadline_seconds"),
            "{status:?}"
        );
    }
    let missing = new_subscription_name("missing");
    let status = PullStream::open(&grpc, first(&missing, 10, 0))
        .await
        .err()
        .expect("a missing subscription is refused");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn a_detached_subscription_cannot_be_streamed() {
    let (_broker, grpc, _topic, sub) = setup(|_| {}).await;
    grpc.publisher
        .clone()
        .detach_subscription(pubsub::DetachSubscriptionRequest {
            subscription: sub.clone(),
        })
        .await
        .expect("detach");
    let status = PullStream::open(&grpc, first(&sub, 10, 0))
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
}

#[tokio::test]
async fn concurrent_streams_share_the_backlog_without_duplicates() {
    let (_broker, grpc, topic, sub) = setup(|_| {}).await;
    let data: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    let data: Vec<&str> = data.iter().map(String::as_str).collect();
    let published: HashSet<String> = grpc.publish_data(&topic, &data).await.into_iter().collect();
    assert_eq!(published.len(), 200);
    let mut a = PullStream::open(&grpc, first(&sub, 600, 20))
        .await
        .expect("open a");
    let mut b = PullStream::open(&grpc, first(&sub, 600, 20))
        .await
        .expect("open b");

    let mut deliveries: HashMap<String, usize> = HashMap::new();
    let mut total = 0;
    while deliveries.len() < published.len() {
        let (received, stream) = tokio::select! {
            r = a.response() => (r.received_messages, &a),
            r = b.response() => (r.received_messages, &b),
        };
        for r in &received {
            *deliveries.entry(message_id(r)).or_default() += 1;
        }
        total += received.len();
        stream.ack(ack_ids(&received));
    }
    let twice: Vec<_> = deliveries.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered to both streams: {twice:?}");
    assert_eq!(total, 200);
    assert_eq!(
        deliveries.keys().cloned().collect::<HashSet<_>>(),
        published
    );
}

#[tokio::test]
async fn a_reconnect_with_the_same_client_id_takes_over() {
    let (_broker, grpc, topic, sub) = setup(|_| {}).await;
    grpc.publish_data(&topic, &["one", "two"]).await;
    let request = first(&sub, 600, 1);
    let mut old = PullStream::open(&grpc, request.clone())
        .await
        .expect("open");
    let one = old.receive(1).await;

    let mut new = PullStream::open(&grpc, request).await.expect("reconnect");
    assert!(
        matches!(old.next().await, Ok(None)),
        "the superseded stream ends cleanly"
    );
    // The new stream took over the one message out: it is full, so "two" stays available.
    let two = grpc.pull(&sub, 10).await;
    assert_eq!(
        two.len(),
        1,
        "the new stream inherited the old one's outstanding message"
    );
    assert_ne!(message_id(&two[0]), message_id(&one[0]));
    grpc.nack(&sub, ack_ids(&two)).await;
    // Acking what the old stream delivered makes room on the new one.
    grpc.ack(&sub, ack_ids(&one)).await;
    let delivered = new.receive(1).await;
    assert_eq!(message_id(&delivered[0]), message_id(&two[0]));
}

/// `google.rpc.Status`, to read the details of an error as the official clients do.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `google.rpc.ErrorInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct ErrorInfo {
    #[prost(string, tag = "1")]
    reason: String,
    #[prost(string, tag = "2")]
    domain: String,
    #[prost(map = "string, string", tag = "3")]
    metadata: HashMap<String, String>,
}

/// The `ErrorInfo` in a status's details (`grpc-status-details-bin`), checking that the
/// embedded status agrees with the call's, as the Python client's `rpc_status.from_call` does.
fn error_info(status: &tonic::Status) -> ErrorInfo {
    use prost::Message as _;
    let rpc = RpcStatus::decode(status.details()).expect("details are a google.rpc.Status");
    assert_eq!(rpc.code, status.code() as i32);
    assert_eq!(rpc.message, status.message());
    let any = rpc
        .details
        .iter()
        .find(|a| a.type_url == "type.googleapis.com/google.rpc.ErrorInfo")
        .expect("an ErrorInfo detail");
    ErrorInfo::decode(any.value.as_slice()).expect("a valid ErrorInfo")
}

/// The next response that carries a confirmation, skipping message deliveries.
async fn next_confirmation(stream: &mut PullStream) -> StreamingPullResponse {
    loop {
        let response = stream.response().await;
        if response.acknowledge_confirmation.is_some()
            || response.modify_ack_deadline_confirmation.is_some()
        {
            return response;
        }
    }
}

#[tokio::test]
async fn exactly_once_confirms_on_the_stream_and_reports_invalid_unary_acks() {
    let (broker, grpc, topic, sub) = setup(|s| s.enable_exactly_once_delivery = true).await;
    grpc.publish_data(&topic, &["m1", "m2"]).await;
    let mut stream = PullStream::open(&grpc, first(&sub, 10, 0))
        .await
        .expect("open");
    let response = stream.response().await;
    assert!(
        response
            .subscription_properties
            .expect("properties")
            .exactly_once_delivery_enabled
    );
    let mut received = response.received_messages;
    if received.len() < 2 {
        received.extend(stream.receive(1).await);
    }
    let (m1, m2) = (received[0].ack_id.clone(), received[1].ack_id.clone());

    stream.ack(vec![m1.clone()]);
    let confirmation = next_confirmation(&mut stream)
        .await
        .acknowledge_confirmation
        .expect("an ack confirmation");
    assert_eq!(confirmation.ack_ids, std::slice::from_ref(&m1));
    assert!(confirmation.invalid_ack_ids.is_empty());

    stream.ack(vec![m1.clone()]);
    let again = next_confirmation(&mut stream)
        .await
        .acknowledge_confirmation
        .expect("an ack confirmation");
    assert!(again.ack_ids.is_empty());
    assert_eq!(
        again.invalid_ack_ids,
        std::slice::from_ref(&m1),
        "acked already"
    );

    stream.modack(vec![m2.clone()], 30);
    let modack = next_confirmation(&mut stream)
        .await
        .modify_ack_deadline_confirmation
        .expect("a modack confirmation");
    assert_eq!(modack.ack_ids, std::slice::from_ref(&m2));

    // The extended lease runs out; acking it afterwards is a permanent failure.
    broker.advance_clock(Duration::from_secs(31)).await;
    let status = grpc
        .subscriber
        .clone()
        .acknowledge(pubsub::AcknowledgeRequest {
            subscription: sub.clone(),
            ack_ids: vec![m2.clone()],
        })
        .await
        .expect_err("an expired lease cannot be acked with exactly-once");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "EXACTLY_ONCE_ACKID_FAILURE");
    assert_eq!(info.domain, "pubsub.googleapis.com");
    assert_eq!(
        info.metadata,
        HashMap::from([(m2.clone(), "PERMANENT_FAILURE_INVALID_ACK_ID".to_owned())])
    );
}

#[tokio::test]
async fn without_exactly_once_invalid_unary_acks_stay_silent() {
    let (_broker, grpc, _topic, sub) = setup(|_| {}).await;
    grpc.ack(&sub, vec!["not-an-ack-id".into()]).await;
    grpc.nack(&sub, vec!["not-an-ack-id".into()]).await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    let (mut broker, grpc, topic, sub) = setup(|_| {}).await;
    grpc.publish_data(&topic, &["x"]).await;
    let mut stream = PullStream::open(&grpc, first(&sub, 10, 0))
        .await
        .expect("open");
    stream.receive(1).await;
    let (exit, ended) = tokio::join!(broker.stop(), async {
        loop {
            match stream.next().await {
                Ok(Some(_)) => {}
                other => break other,
            }
        }
    });
    let status = ended.expect_err("the stream ends with an error status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(exit.success(), "the broker stopped cleanly: {exit}");
}

#[tokio::test]
async fn messages_a_closed_stream_never_got_are_released_at_once() {
    // Large messages and a client that stops reading: HTTP/2 flow control stops the transport,
    // so the broker's delivery queue fills with leased messages that never leave it. When the
    // client goes away they must be released, not kept until the 600 s stream deadline.
    let (_broker, grpc, topic, sub) = setup(|_| {}).await;
    let payload = "x".repeat(900_000);
    for _ in 0..24 {
        grpc.publish_data(&topic, &[payload.as_str()]).await;
    }
    // Flow control wide enough that the broker leases all 24 to the stream.
    let mut stream = PullStream::open(
        &grpc,
        StreamingPullRequest {
            max_outstanding_bytes: 1 << 30,
            ..first(&sub, 600, 0)
        },
    )
    .await
    .expect("open");
    let first_delivery = stream.receive(1).await;
    // Stop reading and give the broker time to fill its queue; take (and ack) whatever the
    // stream did not lease, so that anything that comes back later was leased to the stream.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut never_leased = Vec::new();
    loop {
        let batch = grpc.pull(&sub, 100).await;
        if batch.is_empty() {
            break;
        }
        grpc.ack(&sub, ack_ids(&batch)).await;
        never_leased.extend(batch);
    }
    drop(stream);
    let mut released = grpc.pull_wait(&sub, 100).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        released.extend(grpc.pull(&sub, 100).await);
    }
    assert!(
        !released.is_empty(),
        "nothing came back before the 600 s deadline"
    );
    let delivered = ids(&first_delivery);
    let taken = ids(&never_leased);
    assert!(
        released
            .iter()
            .all(|r| !delivered.contains(&message_id(r)) && !taken.contains(&message_id(r))),
        "a message the client did receive, or one already acked, came back"
    );
}
