//! The official Pub/Sub emulator (Java), spawned by the tool on a free port and driven through
//! the very same gRPC code as converge. It keeps everything in memory, so it has no start-up
//! time with a backlog on disk (its restart would lose the backlog): [`Target::restart`] says
//! `None`.

use async_trait::async_trait;

use crate::target::{Durability, Queue, QueueSpec, Target};
use crate::targets::TargetOptions;
use crate::targets::converge::{GrpcQueue, Ready, Server, ServerSpec, free_port};

/// Spawns the emulator on a free port and waits until it answers gRPC.
pub async fn start(opts: &TargetOptions) -> anyhow::Result<Box<dyn Target>> {
    if !opts.emulator_bin.exists() {
        anyhow::bail!(
            "the Pub/Sub emulator is not installed at {}",
            opts.emulator_bin.display()
        );
    }
    std::fs::create_dir_all(&opts.work_dir)?;
    let port = free_port()?;
    let endpoint = format!("127.0.0.1:{port}");
    let spec = ServerSpec {
        program: opts.emulator_bin.clone(),
        args: vec!["--host=127.0.0.1".into(), format!("--port={port}")],
        log: opts.work_dir.join(format!("emulator-{port}.log")),
        ready: Ready::Grpc(endpoint.clone()),
    };
    let server = Server::start(spec).await?;
    Ok(Box::new(Emulator { endpoint, server }))
}

/// The running emulator.
struct Emulator {
    endpoint: String,
    server: Server,
}

#[async_trait]
impl Target for Emulator {
    fn name(&self) -> String {
        "emulator".to_owned()
    }

    fn durability(&self) -> Durability {
        Durability::Memory
    }

    async fn queue(&self, spec: &QueueSpec) -> anyhow::Result<Box<dyn Queue>> {
        Ok(Box::new(GrpcQueue::create(&self.endpoint, spec).await?))
    }

    fn server_rss(&self) -> Option<u64> {
        self.server.rss()
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        self.server.shutdown().await
    }
}
