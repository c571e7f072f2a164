//! The broker the demo talks to: one given by address, or converge started in this process on a
//! data directory, which the demo can restart mid-run.

use std::net::SocketAddr;

use anyhow::Context as _;
use converge_server::ServerConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A converge broker running in this process, on disk.
#[derive(Debug)]
pub struct LocalBroker {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl LocalBroker {
    /// Starts a broker on a free loopback port, storing in a fresh temporary directory.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("no temporary directory")?;
        let listen = "127.0.0.1:0".parse().expect("a valid address");
        let (addr, stop, task) = serve(listen, &dir).await?;
        Ok(Self {
            addr,
            dir,
            stop,
            task,
        })
    }

    /// `host:port` to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the broker (gracefully: what it acknowledged is on disk) and starts it again on
    /// the same port and data, as a rolling restart would.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        (&mut self.task)
            .await
            .context("the broker task panicked")?
            .context("the broker failed")?;
        let (addr, stop, task) = serve(self.addr, &self.dir).await?;
        debug_assert_eq!(addr, self.addr);
        self.stop = stop;
        self.task = task;
        Ok(())
    }

    /// Stops the broker.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("the broker task panicked")?
    }
}

async fn serve(
    listen: SocketAddr,
    dir: &tempfile::TempDir,
) -> anyhow::Result<(
    SocketAddr,
    CancellationToken,
    JoinHandle<anyhow::Result<()>>,
)> {
    let config = ServerConfig {
        listen,
        data_dir: Some(dir.path().to_owned()),
        ..ServerConfig::default()
    };
    let stop = CancellationToken::new();
    let (addr, task) = converge_server::run::start(config, stop.clone().cancelled_owned()).await?;
    Ok((addr, stop, task))
}
