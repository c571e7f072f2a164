//! The systems under test and how to reach them: [`build`] turns a target name from the
//! command line into a running [`Target`].

use std::path::PathBuf;

use crate::target::Target;

pub mod converge;
pub mod emulator;
pub mod nats;
pub mod pgqueue;
pub mod postgres_server;
pub mod rabbitmq;

/// Every target name [`build`] knows, in the order they run by default.
pub const ALL: &[&str] = &[
    "converge-fsync",
    "converge-os-buffer",
    "converge-postgres",
    "emulator",
    "nats",
    "rabbitmq",
    "pgqueue",
];

/// A peer the tool can start privately instead of using the machine's server (`--spawn`): on
/// free ports, with a fresh data directory under `work_dir` and the server's stock settings.
/// Only a server the tool started can be restarted, which the start-up workload needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// `nats-server -js`, for `nats`.
    Nats,
    /// A RabbitMQ node, for `rabbitmq`.
    Rabbitmq,
    /// A PostgreSQL cluster made with `initdb`, one for `pgqueue` and one for
    /// `converge-postgres` (so both run on the same stock configuration).
    Postgres,
}

/// Where the peers run and how the tool starts the servers it manages.
#[derive(Debug, Clone)]
pub struct TargetOptions {
    /// PostgreSQL URL (database `test`); targets use a schema of their own in it.
    pub pg_url: String,
    /// NATS server URL (JetStream enabled).
    pub nats_url: String,
    /// AMQP URL of RabbitMQ, with credentials.
    pub amqp_url: String,
    /// The `converge` binary the converge targets spawn.
    pub converge_bin: PathBuf,
    /// The Pub/Sub emulator's start script.
    pub emulator_bin: PathBuf,
    /// A directory on a real disk (not tmpfs) for data directories of spawned servers.
    pub work_dir: PathBuf,
    /// `--short`: tiny runs; targets may size their setup down (none needs to yet).
    #[allow(dead_code, reason = "offered to every target; none sizes down yet")]
    pub short: bool,
    /// The peers the tool starts itself rather than connect to the machine's.
    pub spawn: Vec<Peer>,
}

impl TargetOptions {
    /// Whether the tool starts its own `peer`.
    pub fn spawns(&self, peer: Peer) -> bool {
        self.spawn.contains(&peer)
    }

    /// A fresh directory `<prefix>-XXXX` under `work_dir` (created if missing) for the data of
    /// a server the tool starts; removed when dropped.
    pub fn data_dir(&self, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
        use anyhow::Context as _;
        std::fs::create_dir_all(&self.work_dir)
            .with_context(|| format!("creating {}", self.work_dir.display()))?;
        tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir_in(&self.work_dir)
            .with_context(|| format!("making a {prefix} data directory"))
    }
}

/// Starts or connects to target `name` (one of [`ALL`]).
pub async fn build(name: &str, opts: &TargetOptions) -> anyhow::Result<Box<dyn Target>> {
    match name {
        "converge-fsync" => converge::start(converge::Flavour::Fsync, opts).await,
        "converge-os-buffer" => converge::start(converge::Flavour::OsBuffer, opts).await,
        "converge-postgres" => converge::start(converge::Flavour::Postgres, opts).await,
        "emulator" => emulator::start(opts).await,
        "nats" => nats::connect(opts).await,
        "rabbitmq" => rabbitmq::connect(opts).await,
        "pgqueue" => pgqueue::connect(opts).await,
        other => anyhow::bail!("unknown target {other:?}; known: {}", ALL.join(", ")),
    }
}

/// What the targets' own tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use std::time::Duration;

    use bytes::Bytes;

    use crate::target::Consumer;

    /// Drains `n` messages from `consumer`, failing if it stalls for 10 s.
    pub(crate) async fn drain(consumer: &mut dyn Consumer, n: usize) -> Vec<Bytes> {
        let mut got = Vec::new();
        while got.len() < n {
            let batch = consumer
                .receive(300, Duration::from_secs(10))
                .await
                .unwrap();
            assert!(!batch.is_empty(), "stalled after {} of {n}", got.len());
            assert!(batch.len() <= 300);
            got.extend(batch);
        }
        got
    }
}
