//! converge started by the tool: `converge serve` on the embedded store (fsync or os-buffer)
//! or on PostgreSQL, driven over gRPC with the generated `google.pubsub.v1` stubs.
//!
//! The gRPC side ([`GrpcQueue`], [`GrpcPublisher`], [`GrpcConsumer`]) is shared with the
//! Pub/Sub emulator target, so both are measured through exactly the same client code: one
//! unary `Publish` of the whole batch per call, and `StreamingPull` with each message acked on
//! the stream as it arrives. The server process ([`Server`]) is shared too.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use bytes::Bytes;
use converge::client::{Client, Endpoint};
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::publisher_client::PublisherClient;
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::subscriber_client::SubscriberClient;
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{
    DeleteSubscriptionRequest, DeleteTopicRequest, PublishRequest, PubsubMessage,
    StreamingPullRequest, Subscription, Topic,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::process::{Probe, Server, ServerSpec, free_port, http_ok};
use crate::target::{Consumer, Durability, Publisher, Queue, QueueSpec, Target};
use crate::targets::postgres_server::PgServer;
use crate::targets::{Peer, TargetOptions};

/// The project every bench topic and subscription lives in.
const PROJECT: &str = "bench";
/// Messages per Publish call at most (the Pub/Sub API's limit).
const MAX_PUBLISH_MESSAGES: usize = 1000;
/// Messages a StreamingPull stream may have delivered and not yet acked (flow control).
const STREAM_OUTSTANDING: i64 = 1000;
/// Received messages buffered between the stream task and `receive`.
const CONSUMER_BUFFER: usize = 10_000;

/// Which store and durability the spawned server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Embedded store, `--durability fsync`.
    Fsync,
    /// Embedded store, `--durability os-buffer`.
    OsBuffer,
    /// PostgreSQL store.
    Postgres,
}

/// Spawns the server and waits until it is ready.
pub async fn start(flavour: Flavour, opts: &TargetOptions) -> anyhow::Result<Box<dyn Target>> {
    // With `--spawn postgres`, the store is a private cluster of its own, with the same stock
    // settings as the PostgreSQL queue's.
    let postgres = match flavour {
        Flavour::Postgres if opts.spawns(Peer::Postgres) => Some(PgServer::start(opts).await?),
        _ => None,
    };
    let pg_url = match &postgres {
        Some(server) => server.url.clone(),
        None => opts.pg_url.clone(),
    };
    let (name, durability) = match flavour {
        Flavour::Fsync => ("converge-fsync", Durability::AfterFsync),
        Flavour::OsBuffer => ("converge-os-buffer", Durability::AfterOsBuffer),
        Flavour::Postgres => ("converge-postgres", postgres_durability(&pg_url).await?),
    };
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut args: Vec<String> = [
        "serve",
        "--listen",
        &listen,
        "--log-format",
        "json",
        "--log-level",
        "warn",
        "--shutdown-grace",
        "5s",
    ]
    .map(str::to_owned)
    .into();
    let mut data_dir = None;
    let mut schema = None;
    match flavour {
        Flavour::Fsync | Flavour::OsBuffer => {
            let dir = opts.data_dir(name)?;
            args.push("--data-dir".into());
            args.push(dir.path().display().to_string());
            args.push("--durability".into());
            args.push(
                if flavour == Flavour::Fsync {
                    "fsync"
                } else {
                    "os-buffer"
                }
                .into(),
            );
            data_dir = Some(dir);
        }
        Flavour::Postgres => {
            let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
            let sep = if pg_url.contains('?') { '&' } else { '?' };
            args.push("--store".into());
            args.push(format!("{pg_url}{sep}schema={name}"));
            schema = Some(name);
        }
    }
    let log = opts.work_dir.join(format!("{name}-{port}.log"));
    let mut spec = ServerSpec::new(name, opts.converge_bin.clone(), args, log);
    spec.ready = http_ok(format!("http://{listen}/readyz"));
    spec.env_remove = [
        "CONVERGE_DATA_DIR",
        "CONVERGE_LISTEN",
        "CONVERGE_STORE_URL",
        "RUST_LOG",
    ]
    .map(str::to_owned)
    .into();
    let server = match Server::start(spec).await {
        Ok(server) => server,
        Err(e) => {
            if let Some(schema) = &schema {
                drop_schema(&pg_url, schema).await.ok();
            }
            return Err(e);
        }
    };
    Ok(Box::new(ConvergeTarget {
        name,
        durability,
        endpoint: listen,
        server,
        _data_dir: data_dir,
        schema,
        pg_url,
        postgres,
    }))
}

/// `converge serve` as a target.
struct ConvergeTarget {
    name: &'static str,
    durability: Durability,
    endpoint: String,
    server: Server,
    /// Removed when the target is dropped.
    _data_dir: Option<tempfile::TempDir>,
    /// The PostgreSQL schema to drop at shutdown.
    schema: Option<String>,
    pg_url: String,
    /// The private cluster of `--spawn postgres`, stopped after the server.
    postgres: Option<PgServer>,
}

#[async_trait]
impl Target for ConvergeTarget {
    fn name(&self) -> String {
        self.name.to_owned()
    }

    fn durability(&self) -> Durability {
        self.durability
    }

    async fn queue(&self, spec: &QueueSpec) -> anyhow::Result<Box<dyn Queue>> {
        Ok(Box::new(GrpcQueue::create(&self.endpoint, spec).await?))
    }

    fn server_memory(&self) -> Option<u64> {
        self.server.memory()
    }

    async fn restart(&self) -> anyhow::Result<Option<Duration>> {
        self.server.restart().await.map(Some)
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        let stopped = self.server.shutdown().await;
        if let Some(postgres) = &self.postgres {
            // The whole cluster goes, schema and all.
            postgres.server.shutdown().await?;
        } else if let Some(schema) = &self.schema {
            drop_schema(&self.pg_url, schema).await?;
        }
        stopped
    }
}

/// How PostgreSQL confirms a commit: after fsync unless `fsync` or `synchronous_commit` is off.
async fn postgres_durability(url: &str) -> anyhow::Result<Durability> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let fsync: String = sqlx::query_scalar("SHOW fsync")
        .fetch_one(&mut conn)
        .await?;
    let sync_commit: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await.ok();
    Ok(if fsync == "on" && sync_commit != "off" {
        Durability::AfterFsync
    } else {
        Durability::AfterOsBuffer
    })
}

/// Drops the schema a PostgreSQL-backed server used.
async fn drop_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await
        .with_context(|| format!("dropping schema {schema}"))?;
    conn.close().await.ok();
    Ok(())
}

/// A probe that is ready when a gRPC `ListTopics` on `address` succeeds (the emulator has no
/// health endpoint).
pub(crate) fn grpc_ready(address: String) -> Probe {
    Arc::new(move || {
        let address = address.clone();
        Box::pin(async move {
            let Ok(endpoint) = Endpoint::parse(&address) else {
                return false;
            };
            let Ok(client) = Client::connect(endpoint).await else {
                return false;
            };
            let request =
                googleapis_tonic_google_pubsub_v1::google::pubsub::v1::ListTopicsRequest {
                    project: format!("projects/{PROJECT}"),
                    ..Default::default()
                };
            client.publisher_stub().list_topics(request).await.is_ok()
        })
    })
}

/// A topic with `subscriptions` subscriptions on a Pub/Sub-compatible gRPC server.
pub(crate) struct GrpcQueue {
    endpoint: String,
    topic: String,
    subscriptions: Vec<String>,
}

impl GrpcQueue {
    /// Creates the topic and its subscriptions.
    pub(crate) async fn create(endpoint: &str, spec: &QueueSpec) -> anyhow::Result<Self> {
        let client = connect(endpoint).await?;
        let topic = format!("projects/{PROJECT}/topics/{}", spec.name);
        client
            .publisher_stub()
            .create_topic(Topic {
                name: topic.clone(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating {topic}"))?;
        let mut subscriptions = Vec::with_capacity(spec.subscriptions);
        for i in 0..spec.subscriptions {
            let name = format!("projects/{PROJECT}/subscriptions/{}-{i}", spec.name);
            client
                .subscriber_stub()
                .create_subscription(Subscription {
                    name: name.clone(),
                    topic: topic.clone(),
                    ack_deadline_seconds: 60,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("creating {name}"))?;
            subscriptions.push(name);
        }
        Ok(Self {
            endpoint: endpoint.to_owned(),
            topic,
            subscriptions,
        })
    }
}

/// A client with a connection of its own.
async fn connect(endpoint: &str) -> anyhow::Result<Client> {
    let endpoint = Endpoint::parse(endpoint)?;
    Ok(Client::connect(endpoint).await?)
}

#[async_trait]
impl Queue for GrpcQueue {
    async fn publisher(&self) -> anyhow::Result<Box<dyn Publisher>> {
        let client = connect(&self.endpoint).await?;
        Ok(Box::new(GrpcPublisher {
            stub: client.publisher_stub(),
            topic: self.topic.clone(),
        }))
    }

    async fn consumer(&self, subscription: usize) -> anyhow::Result<Box<dyn Consumer>> {
        let name = self
            .subscriptions
            .get(subscription)
            .with_context(|| format!("no subscription {subscription}"))?
            .clone();
        let client = connect(&self.endpoint).await?;
        Ok(Box::new(GrpcConsumer::start(
            client.subscriber_stub(),
            name,
        )))
    }

    async fn delete(&self) -> anyhow::Result<()> {
        let client = connect(&self.endpoint).await?;
        for name in &self.subscriptions {
            client
                .subscriber_stub()
                .delete_subscription(DeleteSubscriptionRequest {
                    subscription: name.clone(),
                })
                .await
                .with_context(|| format!("deleting {name}"))?;
        }
        client
            .publisher_stub()
            .delete_topic(DeleteTopicRequest {
                topic: self.topic.clone(),
            })
            .await
            .with_context(|| format!("deleting {}", self.topic))?;
        Ok(())
    }
}

/// Unary Publish of the whole batch.
pub(crate) struct GrpcPublisher {
    stub: PublisherClient<Channel>,
    topic: String,
}

#[async_trait]
impl Publisher for GrpcPublisher {
    async fn publish(&mut self, messages: Vec<Bytes>) -> anyhow::Result<()> {
        for chunk in messages.chunks(MAX_PUBLISH_MESSAGES) {
            let request = PublishRequest {
                topic: self.topic.clone(),
                messages: chunk
                    .iter()
                    .map(|data| PubsubMessage {
                        data: data.to_vec(),
                        ..Default::default()
                    })
                    .collect(),
            };
            let response = self.stub.publish(request).await?.into_inner();
            if response.message_ids.len() != chunk.len() {
                bail!(
                    "published {} messages, got {} ids",
                    chunk.len(),
                    response.message_ids.len()
                );
            }
        }
        Ok(())
    }
}

/// A StreamingPull stream whose task acks every message on the stream, then hands its data to
/// `receive` through a channel.
pub(crate) struct GrpcConsumer {
    received: mpsc::Receiver<anyhow::Result<Bytes>>,
    task: JoinHandle<()>,
}

impl GrpcConsumer {
    fn start(stub: SubscriberClient<Channel>, subscription: String) -> Self {
        let (tx, rx) = mpsc::channel(CONSUMER_BUFFER);
        let task = tokio::spawn(async move {
            if let Err(e) = stream(stub, subscription, &tx).await {
                tx.send(Err(e)).await.ok();
            }
        });
        Self { received: rx, task }
    }
}

impl Drop for GrpcConsumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs one StreamingPull stream until the consumer is dropped or the stream fails.
async fn stream(
    mut stub: SubscriberClient<Channel>,
    subscription: String,
    out: &mpsc::Sender<anyhow::Result<Bytes>>,
) -> anyhow::Result<()> {
    let (requests, rx) = mpsc::unbounded_channel();
    requests
        .send(StreamingPullRequest {
            subscription,
            stream_ack_deadline_seconds: 60,
            max_outstanding_messages: STREAM_OUTSTANDING,
            client_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .ok();
    let mut responses = stub
        .streaming_pull(tokio_stream_from(rx))
        .await
        .context("opening StreamingPull")?
        .into_inner();
    while let Some(response) = responses.message().await? {
        let mut ack_ids = Vec::with_capacity(response.received_messages.len());
        let mut data = Vec::with_capacity(response.received_messages.len());
        for received in response.received_messages {
            ack_ids.push(received.ack_id);
            data.push(Bytes::from(received.message.unwrap_or_default().data));
        }
        requests
            .send(StreamingPullRequest {
                ack_ids,
                ..Default::default()
            })
            .ok();
        for d in data {
            if out.send(Ok(d)).await.is_err() {
                return Ok(());
            }
        }
    }
    bail!("the server ended the StreamingPull stream")
}

/// An unbounded receiver as a request stream.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[async_trait]
impl Consumer for GrpcConsumer {
    async fn receive(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<Bytes>> {
        let mut out = Vec::new();
        let first = match tokio::time::timeout(wait, self.received.recv()).await {
            Err(_) => return Ok(out),
            Ok(None) => bail!("the StreamingPull task ended"),
            Ok(Some(first)) => first?,
        };
        out.push(first);
        while out.len() < max {
            match self.received.try_recv() {
                Ok(Ok(data)) => out.push(data),
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
        }
        Ok(out)
    }
}
