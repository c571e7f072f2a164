//! The official Pub/Sub emulator (Java), spawned by the tool on a free port and driven through
//! the very same gRPC code as converge. It keeps everything in memory, so it has no start-up
//! time with a backlog on disk (its restart would lose the backlog): [`Target::restart`] says
//! `None`.

use async_trait::async_trait;

use crate::process::{Server, ServerSpec, free_port};
use crate::target::{Durability, Queue, QueueSpec, Target};
use crate::targets::TargetOptions;
use crate::targets::converge::{GrpcQueue, grpc_ready};

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
    let mut spec = ServerSpec::new(
        "the emulator",
        opts.emulator_bin.clone(),
        vec!["--host=127.0.0.1".into(), format!("--port={port}")],
        opts.work_dir.join(format!("emulator-{port}.log")),
    );
    spec.ready = grpc_ready(endpoint.clone());
    // A JVM ends with 128 + 15 on SIGTERM.
    spec.clean_codes = vec![143];
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

    fn server_memory(&self) -> Option<u64> {
        self.server.memory()
    }

    async fn shutdown(&self) -> anyhow::Result<()> {
        self.server.shutdown().await
    }
}
