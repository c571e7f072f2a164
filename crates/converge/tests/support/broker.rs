//! A converge-server started in this process for one test: the one way every test file gets a
//! real broker, so that start-up, readiness, the test clock and shutdown are written once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use converge::client::{Client, Endpoint};
use converge_server::config::StoreChoice;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a starting broker may take to become ready, and a stopping one to stop (generous:
/// CI machines are slow and tests start brokers in parallel).
const READY: Duration = Duration::from_secs(30);

/// converge-server on a test clock (`--test-clock`), listening on a loopback port, reached
/// over real sockets. Dropping it signals shutdown without waiting; [`Broker::stop`] waits.
pub struct Broker {
    addr: SocketAddr,
    data_dir: Option<PathBuf>,
    store: StoreChoice,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Broker {
    /// A broker with its data in memory, on a free port, ready to answer API calls.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?, None).await
    }

    /// A broker on `listen`, keeping its data in `data_dir` when given (so that a broker
    /// started again on the same directory finds it), ready to answer API calls.
    pub async fn start_on(listen: SocketAddr, data_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::start_with(listen, data_dir, StoreChoice::Embedded).await
    }

    /// A broker on the PostgreSQL store, in `schema` of the test database (created by the
    /// caller, e.g. a [`super::PgSchema`]), on a free port. Its connections are named after the
    /// schema, so dropping the schema also ends them.
    pub async fn start_postgres(schema: &str) -> anyhow::Result<Self> {
        let store = StoreChoice::Postgres {
            url: format!(
                "{}?schema={schema}&application_name={schema}",
                super::DATABASE_URL
            ),
            pool_size: Some(4),
        };
        Self::start_with("127.0.0.1:0".parse()?, None, store).await
    }

    async fn start_with(
        listen: SocketAddr,
        data_dir: Option<PathBuf>,
        store: StoreChoice,
    ) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        let config = converge_server::ServerConfig {
            listen,
            data_dir: data_dir.clone(),
            store: store.clone(),
            test_clock: true,
            ..Default::default()
        };
        let (addr, task) =
            converge_server::run::start(config, async move { signal.cancelled().await }).await?;
        let broker = Self {
            addr,
            data_dir,
            store,
            http: reqwest::Client::new(),
            shutdown,
            task: Some(task),
        };
        broker.wait_ready().await?;
        Ok(broker)
    }

    /// Polls `/readyz` until the store is open (API calls answer UNAVAILABLE before).
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = self.url("/readyz");
        let give_up = tokio::time::Instant::now() + READY;
        loop {
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= give_up {
                bail!(
                    "the broker at {} did not become ready within {READY:?}",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address the broker listens on (gRPC and REST on one port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The broker as an SDK endpoint.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::parse(&self.addr.to_string()).expect("a socket address is an endpoint")
    }

    /// A new SDK client connected to the broker.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(self.endpoint()).await?)
    }

    /// `http://{addr}{path}`: a URL on the broker's REST side.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A token cancelled when the broker shuts down, for work that must end with it.
    pub fn child_token(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// Moves the broker's test clock forward by `by` and runs its maintenance (expired leases,
    /// due retries, dead-lettering) before returning: `POST /converge/test/clock:advance`.
    pub async fn advance(&self, by: Duration) -> anyhow::Result<()> {
        let response = self
            .http
            .post(self.url("/converge/test/clock:advance"))
            .json(&serde_json::json!({ "seconds": by.as_secs_f64() }))
            .send()
            .await
            .context("advancing the broker's clock")?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("advancing the broker's clock answered {status}: {body}");
        }
        Ok(())
    }

    /// Stops the broker and waits until it has closed its store and its port.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().context("the broker was stopped twice")?;
        tokio::time::timeout(READY, task)
            .await
            .context("the broker did not stop")?
            .context("the broker's task panicked")?
    }

    /// Stops the broker and starts a new one on the same address with the same data.
    pub async fn restart(mut self) -> anyhow::Result<Self> {
        self.stop().await?;
        Self::start_with(self.addr, self.data_dir.clone(), self.store.clone()).await
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
