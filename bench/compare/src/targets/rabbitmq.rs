//! RabbitMQ (client `lapin` on tokio): the running broker at `TargetOptions::amqp_url`, or,
//! with `--spawn rabbitmq`, a node the tool starts on free ports with data of its own. Only
//! that one can be restarted, so only it has a start-up time and its own memory figure
//! (otherwise the memory is the machine broker's, whatever else it holds).
//!
//! Per [`Queue`]: a durable fanout exchange named after the queue and one durable quorum queue
//! (`x-queue-type: quorum`) per subscription, `<name>.<i>`, bound to it, all declared up front so
//! that messages published before a consumer connects are kept for it.
//!
//! Publishing uses a channel in confirm mode: every message of a batch is published as persistent
//! (delivery mode 2), then every publisher confirm is awaited and must be an ack. Consuming uses
//! `basic.consume` with a prefetch of [`PREFETCH`] feeding the client's buffer, manual acks: each
//! hand-out is acknowledged with one `basic.ack` of its last delivery tag with `multiple` set,
//! which acknowledges every delivery of the hand-out (AMQP acks are not confirmed by the broker).

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::process::{
    Server, ServerSpec, free_port, memory_of_process, restart_if_managed, shutdown_if_managed,
};
use crate::target::{Consumer, Durability, Publisher, Queue, QueueSpec, Target};
use crate::targets::{Peer, TargetOptions};

/// Deliveries the broker sends a consumer ahead of its acks.
const PREFETCH: u16 = 1000;
/// AMQP delivery mode of a persistent message.
const PERSISTENT: u8 = 2;

/// A RabbitMQ broker: the one running at `TargetOptions::amqp_url`, or a node the tool started.
pub struct RabbitTarget {
    url: String,
    /// The node the tool started, with its data directory (removed on drop).
    managed: Option<RabbitServer>,
}

/// Connects to the broker at `opts.amqp_url`, or starts a node of its own with `--spawn
/// rabbitmq`.
pub async fn connect(opts: &TargetOptions) -> anyhow::Result<Box<dyn Target>> {
    let (url, managed) = if opts.spawns(Peer::Rabbitmq) {
        let server = RabbitServer::start(opts).await?;
        (server.url.clone(), Some(server))
    } else {
        (opts.amqp_url.clone(), None)
    };
    // Fail now, not at the first workload, when the broker is not there.
    open(&url).await?.close(200, "checked").await.ok();
    Ok(Box::new(RabbitTarget { url, managed }))
}

/// A connection of its own, driven by the current tokio runtime.
async fn open(url: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    Connection::connect(url, properties)
        .await
        .with_context(|| format!("connecting to RabbitMQ at {url}"))
}

/// A channel on a connection of its own, to declare or delete with. Opened per use rather than
/// kept, so that it never outlives a restart of the broker.
async fn admin(url: &str) -> anyhow::Result<(Connection, Channel)> {
    let connection = open(url).await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

/// A RabbitMQ node the tool started on free ports, with a data directory of its own, its own
/// configuration (one TCP listener, no plugins) and none of the machine's (`rabbitmq-env.conf`
/// would give it the machine node's name).
struct RabbitServer {
    url: String,
    server: Server,
    _dir: tempfile::TempDir,
}

impl RabbitServer {
    /// Where Debian installs the node's start script (`/usr/sbin/rabbitmq-server` wraps it to
    /// switch users).
    const PROGRAM: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

    /// Spawns the node and waits until it accepts an AMQP connection.
    async fn start(opts: &TargetOptions) -> anyhow::Result<Self> {
        let program = std::path::PathBuf::from(Self::PROGRAM);
        anyhow::ensure!(
            program.is_file(),
            "RabbitMQ is not installed at {}",
            program.display()
        );
        let dir = opts.data_dir("rabbitmq")?;
        let (port, dist_port) = (free_port()?, free_port()?);
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(path("rabbitmq-env.conf"), "")?;
        std::fs::write(
            path("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\n"),
        )?;
        std::fs::write(path("enabled_plugins"), "[].\n")?;
        let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        let mut spec = ServerSpec::new(
            "rabbitmq-server",
            program,
            Vec::new(),
            opts.work_dir.join(format!("rabbitmq-{port}.log")),
        );
        spec.env = [
            ("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf")),
            ("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins")),
            ("RABBITMQ_NODENAME", format!("bench{port}@localhost")),
            ("RABBITMQ_NODE_PORT", port.to_string()),
            ("RABBITMQ_DIST_PORT", dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", path("mnesia")),
            ("RABBITMQ_LOG_BASE", path("log")),
            // The Erlang cookie goes to $HOME.
            ("HOME", dir.path().display().to_string()),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into();
        let probe_url = url.clone();
        spec.ready = std::sync::Arc::new(move || {
            let url = probe_url.clone();
            Box::pin(async move {
                let connected = tokio::time::timeout(Duration::from_secs(2), open(&url)).await;
                match connected {
                    Ok(Ok(connection)) => {
                        connection.close(200, "ready").await.ok();
                        true
                    }
                    _ => false,
                }
            })
        });
        // The start script stops the node on SIGTERM and exits 0 once it is down.
        Ok(Self {
            url,
            server: Server::start(spec).await?,
            _dir: dir,
        })
    }
}

/// The quorum queue of subscription `i`.
fn queue_name(exchange: &str, i: usize) -> String {
    format!("{exchange}.{i}")
}

#[async_trait]
impl Target for RabbitTarget {
    fn name(&self) -> String {
        "rabbitmq-quorum".into()
    }

    /// A quorum queue confirms a publish once its Raft log entry is written and fsynced (the
    /// write-ahead log is synced before the confirm goes out), so a confirm means stable storage.
    fn durability(&self) -> Durability {
        Durability::AfterFsync
    }

    async fn queue(&self, spec: &QueueSpec) -> anyhow::Result<Box<dyn Queue>> {
        Ok(Box::new(self.declare(spec).await?))
    }

    fn server_memory(&self) -> Option<u64> {
        match &self.managed {
            Some(managed) => managed.server.memory(),
            None => memory_of_process("beam.smp", &["rabbit"]),
        }
    }

    async fn restart(&self) -> anyhow::Result<Option<Duration>> {
        restart_if_managed(self.managed.as_ref().map(|m| &m.server)).await
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        shutdown_if_managed(self.managed.as_ref().map(|m| &m.server)).await
    }
}

impl RabbitTarget {
    /// Declares the exchange and the quorum queues of `spec`.
    async fn declare(&self, spec: &QueueSpec) -> anyhow::Result<RabbitQueue> {
        let exchange = spec.name.clone();
        let (connection, admin) = admin(&self.url).await?;
        admin
            .exchange_declare(
                &exchange,
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring exchange {exchange}"))?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        for i in 0..spec.subscriptions {
            let queue = queue_name(&exchange, i);
            // A leftover of an interrupted run with the same name would carry old messages.
            let _ = admin
                .queue_delete(&queue, QueueDeleteOptions::default())
                .await;
            admin
                .queue_declare(
                    &queue,
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    arguments.clone(),
                )
                .await
                .with_context(|| format!("declaring quorum queue {queue}"))?;
            admin
                .queue_bind(
                    &queue,
                    &exchange,
                    "",
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("binding {queue} to {exchange}"))?;
        }
        connection.close(200, "declared").await.ok();
        Ok(RabbitQueue {
            url: self.url.clone(),
            exchange,
            subscriptions: spec.subscriptions,
        })
    }
}

/// One fanout exchange and its quorum queues.
struct RabbitQueue {
    url: String,
    exchange: String,
    subscriptions: usize,
}

#[async_trait]
impl Queue for RabbitQueue {
    async fn publisher(&self) -> anyhow::Result<Box<dyn Publisher>> {
        let connection = open(&self.url).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        Ok(Box::new(RabbitPublisher {
            channel,
            exchange: self.exchange.clone(),
            _connection: connection,
        }))
    }

    async fn consumer(&self, subscription: usize) -> anyhow::Result<Box<dyn Consumer>> {
        Ok(Box::new(self.open_consumer(subscription).await?))
    }

    async fn delete(&self) -> anyhow::Result<()> {
        let (connection, admin) = admin(&self.url).await?;
        for i in 0..self.subscriptions {
            let queue = queue_name(&self.exchange, i);
            admin
                .queue_delete(&queue, QueueDeleteOptions::default())
                .await
                .with_context(|| format!("deleting queue {queue}"))?;
        }
        admin
            .exchange_delete(&self.exchange, ExchangeDeleteOptions::default())
            .await
            .with_context(|| format!("deleting exchange {}", self.exchange))?;
        connection.close(200, "deleted").await.ok();
        Ok(())
    }
}

impl RabbitQueue {
    /// A consumer of subscription `subscription` on a connection of its own.
    async fn open_consumer(&self, subscription: usize) -> anyhow::Result<RabbitConsumer> {
        anyhow::ensure!(
            subscription < self.subscriptions,
            "subscription {subscription} of {}",
            self.subscriptions
        );
        let connection = open(&self.url).await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .context("setting the prefetch")?;
        let queue = queue_name(&self.exchange, subscription);
        let deliveries = channel
            .basic_consume(
                &queue,
                &format!("bench-{subscription}"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming from {queue}"))?;
        Ok(RabbitConsumer {
            deliveries,
            channel,
            connection,
        })
    }
}

/// A publisher on its own connection, its channel in confirm mode.
struct RabbitPublisher {
    channel: Channel,
    exchange: String,
    _connection: Connection,
}

#[async_trait]
impl Publisher for RabbitPublisher {
    async fn publish(&mut self, messages: Vec<Bytes>) -> anyhow::Result<()> {
        let mut confirms = Vec::with_capacity(messages.len());
        for payload in &messages {
            confirms.push(
                self.channel
                    .basic_publish(
                        &self.exchange,
                        "",
                        BasicPublishOptions::default(),
                        payload,
                        BasicProperties::default().with_delivery_mode(PERSISTENT),
                    )
                    .await
                    .context("publishing")?,
            );
        }
        for confirm in confirms {
            let confirmation = confirm.await.context("waiting for a publisher confirm")?;
            anyhow::ensure!(
                confirmation.is_ack(),
                "RabbitMQ did not confirm a publish: {confirmation:?}"
            );
        }
        Ok(())
    }
}

/// A consumer on its own connection, with manual acks.
struct RabbitConsumer {
    deliveries: lapin::Consumer,
    channel: Channel,
    #[cfg_attr(not(test), allow(dead_code, reason = "kept open; dropping closes it"))]
    connection: Connection,
}

impl RabbitConsumer {
    /// Closes the connection and waits for the broker's close-ok; the broker then returns any
    /// unacknowledged delivery to the queue. (Dropping closes too, without waiting.)
    #[cfg(test)]
    async fn close(self) -> anyhow::Result<()> {
        self.connection.close(200, "done").await?;
        Ok(())
    }
}

#[async_trait]
impl Consumer for RabbitConsumer {
    async fn receive(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<Bytes>> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let mut last_tag = match tokio::time::timeout(wait, self.deliveries.next()).await {
            Err(_) => return Ok(out),
            Ok(None) => anyhow::bail!("the RabbitMQ consumer was cancelled"),
            Ok(Some(delivery)) => {
                let delivery = delivery.context("receiving from RabbitMQ")?;
                out.push(Bytes::from(delivery.data));
                delivery.delivery_tag
            }
        };
        // Then whatever the prefetch already buffered, without waiting for more.
        while out.len() < max {
            match self.deliveries.next().now_or_never() {
                Some(Some(delivery)) => {
                    let delivery = delivery.context("receiving from RabbitMQ")?;
                    out.push(Bytes::from(delivery.data));
                    last_tag = delivery.delivery_tag;
                }
                Some(None) => anyhow::bail!("the RabbitMQ consumer was cancelled"),
                None => break,
            }
        }
        self.channel
            .basic_ack(last_tag, BasicAckOptions { multiple: true })
            .await
            .context("acknowledging")?;
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
            nats_url: String::new(),
            amqp_url: std::env::var("AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            converge_bin: Default::default(),
            emulator_bin: Default::default(),
            work_dir: std::env::temp_dir(),
            short: true,
            spawn: Vec::new(),
        }
    }

    /// Every published message reaches each of two subscriptions once, with its payload intact;
    /// the multiple-ack covers every delivery handed out, so a new consumer on the same queue
    /// (after the first one's connection closed, which returns unacked deliveries to the queue)
    /// finds nothing; and delete removes the queues. (Checked without the ack, this test fails.)
    #[tokio::test]
    async fn fan_out_round_trip_and_acks() {
        let target = RabbitTarget {
            url: options().amqp_url,
            managed: None,
        };
        assert_eq!(target.durability(), Durability::AfterFsync);
        assert!(target.server_memory().is_some_and(|rss| rss > 0));
        let name = format!("h-rabbit-test-{}", uuid::Uuid::new_v4().simple());
        let queue = std::sync::Arc::new(
            target
                .declare(&QueueSpec {
                    name: name.clone(),
                    subscriptions: 2,
                    message_size: 128,
                })
                .await
                .unwrap(),
        );
        // The checks run in a task so that the queue is deleted whatever they find.
        let checks = tokio::spawn({
            let queue = queue.clone();
            async move {
                let mut publisher = queue.publisher().await.unwrap();
                let sent: Vec<Bytes> = (0..1000u32)
                    .map(|i| Bytes::from(format!("message {i:04} {}", "x".repeat(100))))
                    .collect();
                for chunk in sent.chunks(250) {
                    publisher.publish(chunk.to_vec()).await.unwrap();
                }
                for sub in 0..2 {
                    let mut consumer = queue.open_consumer(sub).await.unwrap();
                    let mut got = drain(&mut consumer, sent.len()).await;
                    got.sort();
                    assert_eq!(got, sent, "subscription {sub}");
                    // Once its connection is closed, anything it left unacked goes back to the
                    // queue and to the next consumer.
                    consumer.close().await.unwrap();
                    let mut again = queue.open_consumer(sub).await.unwrap();
                    let extra = again.receive(10, Duration::from_secs(2)).await.unwrap();
                    assert!(extra.is_empty(), "redelivered {} messages", extra.len());
                }
            }
        })
        .await;
        queue.delete().await.unwrap();
        if let Err(failed) = checks {
            std::panic::resume_unwind(failed.into_panic());
        }
        let probe = open(&options().amqp_url)
            .await
            .unwrap()
            .create_channel()
            .await
            .unwrap();
        let passive = probe
            .queue_declare(
                &queue_name(&name, 0),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        assert!(passive.is_err(), "queue still there after delete");
    }

    /// `--spawn rabbitmq`: the tool's own node keeps a backlog across its restart (quorum
    /// queues are on disk), reports a start-up time and its memory, and stops with `shutdown`.
    #[tokio::test]
    async fn spawned_node_restarts_with_its_queues() {
        let work = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let opts = TargetOptions {
            work_dir: work.path().to_path_buf(),
            spawn: vec![Peer::Rabbitmq],
            ..options()
        };
        let target = connect(&opts).await.unwrap();
        assert!(target.server_memory().is_some_and(|m| m > 0));
        let queue = target
            .queue(&QueueSpec {
                name: format!("restart-{}", uuid::Uuid::new_v4().simple()),
                subscriptions: 1,
                message_size: 16,
            })
            .await
            .unwrap();
        let sent: Vec<Bytes> = (0..1000u32)
            .map(|i| Bytes::from(format!("m{i:05}")))
            .collect();
        let mut publisher = queue.publisher().await.unwrap();
        publisher.publish(sent.clone()).await.unwrap();
        drop(publisher);
        let took = target
            .restart()
            .await
            .unwrap()
            .expect("a spawned node restarts");
        assert!(took > Duration::ZERO);
        let mut consumer = queue.consumer(0).await.unwrap();
        let mut got = drain(consumer.as_mut(), sent.len()).await;
        got.sort();
        assert_eq!(got, sent);
        drop(consumer);
        queue.delete().await.unwrap();
        target.shutdown().await.unwrap();
        assert!(target.server_memory().is_none());
    }
}
