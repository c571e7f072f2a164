//! How the server is started: address, storage, shutdown budget, test hooks.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use converge_store::embedded::Durability;

/// Where the server listens unless told otherwise: the official emulator's port on loopback, so
/// clients configured for the emulator (`PUBSUB_EMULATOR_HOST=localhost:8085`) work unchanged.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8085);

/// How long in-flight requests and the store's close may take after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything [`crate::run()`] needs to know. Built by the CLI from flags and environment.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The one port serving gRPC, REST, health and metrics (port 0 = any free port).
    pub listen: SocketAddr,
    /// Where the embedded store keeps its data; `None` keeps everything in memory (`--memory`).
    pub data_dir: Option<PathBuf>,
    /// When a write counts as durable (fsync by default).
    pub durability: Durability,
    /// Budget for draining requests and closing the store after a shutdown signal; past it
    /// [`crate::run()`] returns anyway so a supervisor is never kept waiting.
    pub shutdown_grace: Duration,
    /// Runs on an advanceable clock and mounts `POST /converge/test/clock:advance`, so tests can
    /// reach retry backoffs, retention and expiration without sleeping. Never in production.
    pub test_clock: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            data_dir: None,
            durability: Durability::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            test_clock: false,
        }
    }
}
