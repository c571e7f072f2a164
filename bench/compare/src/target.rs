//! The one interface every system under test implements, so that every workload drives every
//! target the same way and measures it on the client side, with the same clock.
//!
//! A [`Target`] is a running system (started by the tool or already running). For each workload
//! run it sets up a fresh [`Queue`]: a topic/stream/exchange with `subscriptions` independent
//! consumer groups, each of which gets every message once (fan-out when there are several).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// When a target answers a publish, relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// The publish is confirmed after the data reached stable storage (fsync / fdatasync).
    AfterFsync,
    /// The publish is confirmed after the data reached the OS (page cache): lost on power loss,
    /// kept on a process crash.
    AfterOsBuffer,
    /// Kept in memory only.
    Memory,
}

impl Durability {
    /// How tables print it.
    pub fn label(self) -> &'static str {
        match self {
            Self::AfterFsync => "fsync",
            Self::AfterOsBuffer => "os-buffer",
            Self::Memory => "memory",
        }
    }
}

/// What a workload asks a target to set up.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// A name unique to this run (letters, digits, `-`), usable as topic/stream/queue name.
    pub name: String,
    /// Independent consumer groups; each receives every message.
    pub subscriptions: usize,
    /// Largest message the workload sends, in bytes.
    pub message_size: usize,
}

/// A system under test.
#[async_trait]
pub trait Target: Send + Sync {
    /// Short name for tables and charts (`converge-embedded`, `nats-jetstream`, ...).
    fn name(&self) -> String;
    /// When it confirms a publish.
    fn durability(&self) -> Durability;
    /// A fresh queue for one workload run.
    async fn queue(&self, spec: &QueueSpec) -> anyhow::Result<Box<dyn Queue>>;
    /// Resident memory of the server process in bytes, when the tool knows its pid.
    fn server_memory(&self) -> Option<u64> {
        None
    }
    /// Stops and starts the server again on the same data and returns how long it took until
    /// it served again; `None` when the tool does not manage the process (start-up workload).
    async fn restart(&self) -> anyhow::Result<Option<Duration>> {
        Ok(None)
    }
    /// Stops the server if the tool started it.
    async fn shutdown(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// One workload's topic and its consumer groups on a target.
#[async_trait]
pub trait Queue: Send + Sync {
    /// A publisher with a connection of its own where the system allows it.
    async fn publisher(&self) -> anyhow::Result<Box<dyn Publisher>>;
    /// A consumer in consumer group `subscription` (0-based, below `QueueSpec::subscriptions`),
    /// with a connection of its own.
    async fn consumer(&self, subscription: usize) -> anyhow::Result<Box<dyn Consumer>>;
    /// Deletes what [`Target::queue`] created.
    async fn delete(&self) -> anyhow::Result<()>;
}

/// Publishes durably, as the target's best client path allows.
#[async_trait]
pub trait Publisher: Send {
    /// Publishes `messages` and returns once the system confirmed every one of them (with the
    /// target's [`Durability`]).
    async fn publish(&mut self, messages: Vec<Bytes>) -> anyhow::Result<()>;
}

/// Receives with explicit acknowledgement.
#[async_trait]
pub trait Consumer: Send {
    /// Returns up to `max` messages, waiting up to `wait` when none is there; every message
    /// returned has been acknowledged (the ack sent; a target may confirm acks asynchronously).
    async fn receive(&mut self, max: usize, wait: Duration) -> anyhow::Result<Vec<Bytes>>;
}
