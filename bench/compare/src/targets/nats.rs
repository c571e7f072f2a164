//! NATS JetStream (client `async-nats`): the server running at `TargetOptions::nats_url`, or one
//! the tool starts (see below).
//!
//! Per [`Queue`]: one file-storage stream with subjects `<name>.>` and interest retention (a
//! message is removed once every consumer acknowledged it, as a queue does), and one durable pull
//! consumer with explicit acks per subscription, created with the stream so that messages
//! published before a consumer connects are kept for it.
//!
//! Publishing sends every message of a batch without waiting and then awaits every PubAck: the
//! JetStream confirmation that the message is in the stream. Receiving uses the client's
//! continuous pull (`Consumer::stream`), which keeps pull requests outstanding and buffers what
//! arrives; each message handed out is acknowledged with a plain `ack()` (an AckAck published to
//! the reply subject, not confirmed by the server: `double_ack` would cost one round trip per
//! message).
//!
//! With `--spawn nats` the tool starts a `nats-server` of its own (from `PATH` or
//! `/usr/sbin`) on free ports, its store in a fresh directory under `--work-dir`: then its
//! resident memory is that process's, and the start-up workload restarts it (SIGINT, spawn)
//! and times it until `/healthz` answers, which the server does only after it restored its
//! streams from disk and listens for clients. Otherwise it connects to the server at the URL,
//! which it does not restart.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};

use crate::process::{
    Server, ServerSpec, free_port, http_ok, memory_of_process, restart_if_managed,
    shutdown_if_managed,
};
use crate::target::{Consumer, Durability, Publisher, Queue, QueueSpec, Target};
use crate::targets::{Peer, TargetOptions};
use rustix::process::Signal;

/// How long a publish or an API call may wait for JetStream's answer before it counts as failed.
/// Generous because 16 publishers share two cores with the server during a run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Messages per pull request of a consumer's continuous pull; the client asks for more when half
/// of them were handed out.
const PULL_BATCH: usize = 1000;
/// Unacknowledged messages the server lets one consumer hold (the default, 1,000, would stall a
/// consumer whose pull buffer and hand-out together exceed it).
const MAX_ACK_PENDING: i64 = 20_000;
/// Redelivery timeout of an unacknowledged message; longer than any hand-out takes, so a
/// benchmark never sees redeliveries.
const ACK_WAIT: Duration = Duration::from_secs(120);

/// A JetStream server: the one running at the URL, or one the tool started.
pub struct NatsTarget {
    url: String,
    jetstream: jetstream::Context,
    /// The server the tool started, with its store directory (removed on drop).
    managed: Option<NatsServer>,
}

/// Connects to the server at `opts.nats_url`, or starts one with `--spawn nats`.
pub async fn connect(opts: &TargetOptions) -> anyhow::Result<Box<dyn Target>> {
    Ok(Box::new(NatsTarget::connect(opts).await?))
}

impl NatsTarget {
    /// See [`connect`].
    async fn connect(opts: &TargetOptions) -> anyhow::Result<Self> {
        let (url, managed) = if opts.spawns(Peer::Nats) {
            let server = NatsServer::start(opts).await?;
            (server.url.clone(), Some(server))
        } else {
            (opts.nats_url.clone(), None)
        };
        // No JetStream check here: `query_account` cannot parse the answer of the 2.9 server on this
        // machine; a server without JetStream fails at the first `queue`.
        let jetstream = context(&url).await?;
        Ok(Self {
            url,
            jetstream,
            managed,
        })
    }
}

/// A `nats-server` the tool started, with JetStream, on free ports and a store of its own.
struct NatsServer {
    url: String,
    server: Server,
    /// Removed on drop, after the process (killed on drop) is gone.
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Spawns it on a fresh store under `opts.work_dir` and waits until it serves: `/healthz`
    /// answers only once the server restored its streams from disk and listens for clients.
    async fn start(opts: &TargetOptions) -> anyhow::Result<Self> {
        let program = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .chain([std::path::PathBuf::from("/usr/sbin")])
            .map(|dir| dir.join("nats-server"))
            .find(|path| path.is_file())
            .context("nats-server is not installed (looked in PATH and /usr/sbin)")?;
        let store = opts.data_dir("nats")?;
        let port = free_port()?;
        let monitor = free_port()?;
        let args = vec![
            "-a".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
            "-m".to_owned(),
            monitor.to_string(),
            "-js".to_owned(),
            "-sd".to_owned(),
            store.path().display().to_string(),
        ];
        let mut spec = ServerSpec::new(
            "nats-server",
            program,
            args,
            opts.work_dir.join(format!("nats-{port}.log")),
        );
        spec.ready = http_ok(format!("http://127.0.0.1:{monitor}/healthz"));
        // nats-server ends a SIGINT shutdown with status 0 (and a clean SIGTERM one with 1).
        spec.stop_signal = Signal::INT;
        Ok(Self {
            url: format!("nats://127.0.0.1:{port}"),
            server: Server::start(spec).await?,
            _store: store,
        })
    }
}

/// A JetStream context on a connection of its own.
async fn context(url: &str) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(REQUEST_TIMEOUT))
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))?;
    let mut jetstream = jetstream::new(client);
    jetstream.set_timeout(REQUEST_TIMEOUT);
    Ok(jetstream)
}

/// The durable consumer name of subscription `i`.
fn consumer_name(i: usize) -> String {
    format!("sub-{i}")
}

#[async_trait]
impl Target for NatsTarget {
    fn name(&self) -> String {
        "nats-jetstream".into()
    }

    /// JetStream acknowledges a publish once the message is written to its file store, without
    /// an fsync per message: the server syncs its files on an interval (two minutes by default),
    /// and the Debian build here (2.9.10) rejects the `sync_interval` option of later versions
    /// (`unknown field`) that could make it sync on every write (`always`). So the data is in
    /// the OS buffer when the PubAck comes.
    fn durability(&self) -> Durability {
        Durability::AfterOsBuffer
    }

    async fn queue(&self, spec: &QueueSpec) -> anyhow::Result<Box<dyn Queue>> {
        // A leftover of an interrupted run with the same name would carry old messages.
        let _ = self.jetstream.delete_stream(&spec.name).await;
        let stream = self
            .jetstream
            .create_stream(stream::Config {
                name: spec.name.clone(),
                subjects: vec![format!("{}.>", spec.name)],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Interest,
                num_replicas: 1,
                max_message_size: i32::try_from(spec.message_size + 1024).unwrap_or(i32::MAX),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating stream {}", spec.name))?;
        for i in 0..spec.subscriptions {
            let name = consumer_name(i);
            stream
                .create_consumer(pull::Config {
                    durable_name: Some(name.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("creating consumer {name} on stream {}", spec.name))?;
        }
        Ok(Box::new(NatsQueue {
            url: self.url.clone(),
            jetstream: self.jetstream.clone(),
            stream: spec.name.clone(),
            subject: format!("{}.m", spec.name),
            subscriptions: spec.subscriptions,
        }))
    }

    fn server_memory(&self) -> Option<u64> {
        if let Some(managed) = &self.managed {
            return managed.server.memory();
        }
        let port = self.url.rsplit(':').next().unwrap_or("4222");
        memory_of_process("nats-server", &[port])
    }

    async fn restart(&self) -> anyhow::Result<Option<Duration>> {
        restart_if_managed(self.managed.as_ref().map(|m| &m.server)).await
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        shutdown_if_managed(self.managed.as_ref().map(|m| &m.server)).await
    }
}

/// One stream and its durable consumers.
struct NatsQueue {
    url: String,
    jetstream: jetstream::Context,
    stream: String,
    subject: String,
    subscriptions: usize,
}

#[async_trait]
impl Queue for NatsQueue {
    async fn publisher(&self) -> anyhow::Result<Box<dyn Publisher>> {
        Ok(Box::new(NatsPublisher {
            jetstream: context(&self.url).await?,
            subject: self.subject.clone(),
        }))
    }

    async fn consumer(&self, subscription: usize) -> anyhow::Result<Box<dyn Consumer>> {
        anyhow::ensure!(
            subscription < self.subscriptions,
            "subscription {subscription} of {}",
            self.subscriptions
        );
        let jetstream = context(&self.url).await?;
        let consumer: jetstream::consumer::PullConsumer = jetstream
            .get_consumer_from_stream(consumer_name(subscription), &self.stream)
            .await
            .with_context(|| format!("consumer {subscription} of stream {}", self.stream))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .messages()
            .await
            .context("starting the pull")?;
        Ok(Box::new(NatsConsumer {
            messages,
            _jetstream: jetstream,
        }))
    }

    async fn delete(&self) -> anyhow::Result<()> {
        self.jetstream
            .delete_stream(&self.stream)
            .await
            .with_context(|| format!("deleting stream {}", self.stream))?;
        Ok(())
    }
}

/// A publisher on its own connection.
struct NatsPublisher {
    jetstream: jetstream::Context,
    subject: String,
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn publish(&mut self, messages: Vec<Bytes>) -> anyhow::Result<()> {
        let mut acks = Vec::with_capacity(messages.len());
        for payload in messages {
            acks.push(
                self.jetstream
                    .publish(self.subject.clone(), payload)
                    .await
                    .context("sending a publish")?,
            );
        }
        for ack in acks {
            ack.await.context("JetStream did not confirm a publish")?;
        }
        Ok(())
    }
}

/// A durable pull consumer on its own connection.
struct NatsConsumer {
    messages: pull::Stream,
    /// Keeps the connection's context alive with the pull.
    _jetstream: jetstream::Context,
}

impl NatsConsumer {
    /// Acknowledges `message` and adds its payload to `out`.
    async fn take(
        out: &mut Vec<Bytes>,
        message: Result<jetstream::Message, pull::MessagesError>,
    ) -> anyhow::Result<()> {
        let message = message.context("pulling from JetStream")?;
        message
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("acknowledging: {e}"))?;
        out.push(message.payload.clone());
        Ok(())
    }
}

#[async_trait]
impl Consumer for NatsConsumer {
    async fn receive(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<Bytes>> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        match tokio::time::timeout(wait, self.messages.next()).await {
            Err(_) => return Ok(out),
            Ok(None) => anyhow::bail!("the JetStream pull ended"),
            Ok(Some(message)) => Self::take(&mut out, message).await?,
        }
        // Then whatever the pull already buffered, without waiting for more.
        while out.len() < max {
            match self.messages.next().now_or_never() {
                Some(Some(message)) => Self::take(&mut out, message).await?,
                Some(None) => anyhow::bail!("the JetStream pull ended"),
                None => break,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::test_support::drain;

    fn options() -> TargetOptions {
        TargetOptions {
            pg_url: String::new(),
            nats_url: std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".into()),
            amqp_url: String::new(),
            converge_bin: Default::default(),
            emulator_bin: Default::default(),
            work_dir: std::env::temp_dir(),
            short: true,
            spawn: Vec::new(),
        }
    }

    /// Every published message reaches each of two subscriptions once, with its payload intact;
    /// acked messages are not delivered again; an empty queue returns nothing within `wait`; and
    /// with interest retention the stream is empty once both consumers acked (checked without
    /// the ack, this test fails here).
    #[tokio::test]
    async fn fan_out_round_trip_and_acks() {
        let target = connect(&options()).await.unwrap();
        assert_eq!(target.durability(), Durability::AfterOsBuffer);
        assert!(target.server_memory().is_some_and(|rss| rss > 0));
        let name = format!("h-nats-test-{}", uuid::Uuid::new_v4().simple());
        let queue: std::sync::Arc<dyn Queue> = target
            .queue(&QueueSpec {
                name: name.clone(),
                subscriptions: 2,
                message_size: 128,
            })
            .await
            .unwrap()
            .into();
        // The checks run in a task so that the stream is deleted whatever they find.
        let checks = tokio::spawn({
            let queue = queue.clone();
            let name = name.clone();
            async move {
                let mut publisher = queue.publisher().await.unwrap();
                let sent: Vec<Bytes> = (0..1000u32)
                    .map(|i| Bytes::from(format!("message {i:04} {}", "x".repeat(100))))
                    .collect();
                for chunk in sent.chunks(250) {
                    publisher.publish(chunk.to_vec()).await.unwrap();
                }
                for sub in 0..2 {
                    let mut consumer = queue.consumer(sub).await.unwrap();
                    let mut got = drain(consumer.as_mut(), sent.len()).await;
                    got.sort();
                    assert_eq!(got, sent, "subscription {sub}");
                    let extra = consumer
                        .receive(10, Duration::from_millis(300))
                        .await
                        .unwrap();
                    assert!(extra.is_empty(), "redelivered {} messages", extra.len());
                }
                // Acks are not confirmed one by one: wait (bounded) until the server applied
                // them all.
                let stream = context(&options().nats_url)
                    .await
                    .unwrap()
                    .get_stream(&name)
                    .await
                    .unwrap();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    let messages = stream.get_info().await.unwrap().state.messages;
                    if messages == 0 {
                        break;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{messages} messages left after both subscriptions acked all"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
        .await;
        queue.delete().await.unwrap();
        if let Err(failed) = checks {
            std::panic::resume_unwind(failed.into_panic());
        }
        assert!(
            context(&options().nats_url)
                .await
                .unwrap()
                .get_stream(&name)
                .await
                .is_err()
        );
    }

    /// `spawn`: the tool's own server keeps a backlog across its restart (the messages come
    /// back from its file store, acknowledged ones do not), reports a start-up time and its
    /// memory, and is stopped by `shutdown`.
    #[tokio::test]
    async fn spawned_server_restarts_on_its_store() {
        let work = tempfile::tempdir().unwrap();
        let opts = TargetOptions {
            spawn: vec![Peer::Nats],
            work_dir: work.path().to_path_buf(),
            ..options()
        };
        let target = NatsTarget::connect(&opts).await.unwrap();
        assert!(target.server_memory().is_some_and(|rss| rss > 0));
        let queue = target
            .queue(&QueueSpec {
                name: "restart".into(),
                subscriptions: 1,
                message_size: 16,
            })
            .await
            .unwrap();
        let sent: Vec<Bytes> = (0..2000u32)
            .map(|i| Bytes::from(format!("m{i:05}")))
            .collect();
        queue
            .publisher()
            .await
            .unwrap()
            .publish(sent.clone())
            .await
            .unwrap();
        {
            // Ack the first 500 before the restart (double-acked, so they are gone for sure).
            let consumer: jetstream::consumer::PullConsumer = context(&target.url)
                .await
                .unwrap()
                .get_consumer_from_stream(consumer_name(0), "restart")
                .await
                .unwrap();
            let mut batch = consumer.fetch().max_messages(500).messages().await.unwrap();
            let mut acked = 0;
            while let Some(message) = batch.next().await {
                message.unwrap().double_ack().await.unwrap();
                acked += 1;
            }
            assert_eq!(acked, 500);
        }
        let took = target
            .restart()
            .await
            .unwrap()
            .expect("a spawned server restarts");
        assert!(took > Duration::ZERO);
        let mut consumer = queue.consumer(0).await.unwrap();
        let mut got = drain(consumer.as_mut(), 1500).await;
        got.sort();
        assert_eq!(got, sent[500..]);
        queue.delete().await.unwrap();
        target.shutdown().await.unwrap();
        assert!(target.server_memory().is_none());
    }
}
