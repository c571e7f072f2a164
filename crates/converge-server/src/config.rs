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
    /// Which storage engine serves the API.
    pub store: StoreChoice,
    /// Where the embedded store keeps its data; `None` keeps everything in memory (`--memory`).
    /// Only read with [`StoreChoice::Embedded`].
    pub data_dir: Option<PathBuf>,
    /// When a write of the embedded store counts as durable (fsync by default). Only read with
    /// [`StoreChoice::Embedded`]; PostgreSQL's durability is its own (`synchronous_commit`).
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
            store: StoreChoice::Embedded,
            data_dir: None,
            durability: Durability::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            test_clock: false,
        }
    }
}

/// The storage engine behind the API.
///
/// The embedded engine's settings stay in [`ServerConfig::data_dir`] and
/// [`ServerConfig::durability`], where they were before there was a choice, so that existing
/// configurations keep meaning what they meant.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum StoreChoice {
    /// The embedded engine, on [`ServerConfig::data_dir`] (or in memory).
    #[default]
    Embedded,
    /// The PostgreSQL engine (`converge serve --store postgres://...`): several nodes may share
    /// one schema.
    Postgres {
        /// `postgres://` or `postgresql://` URL; a `?schema=name` parameter picks the schema
        /// (default `converge`).
        url: String,
        /// Connections in the pool; `None` for the store's default (`max(4, 2 × cores)`).
        pool_size: Option<u32>,
    },
}

/// Debug output never shows the URL's password: configurations end up in logs.
impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded => f.write_str("Embedded"),
            Self::Postgres { url, pool_size } => f
                .debug_struct("Postgres")
                .field("url", &redact_url(url))
                .field("pool_size", pool_size)
                .finish(),
        }
    }
}

/// `url` without its password (replaced by `***`), for logs and error messages.
///
/// Only the userinfo part (`user:password@`, before the host) is touched: the password is what
/// lies between the first `:` and the last `@` of the authority, so passwords containing `@` or
/// `:` are hidden whole.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cr%40t@db:5432/app?schema=x"),
            "postgres://app:***@db:5432/app?schema=x"
        );
        // An unescaped '@' in the password: everything up to the last '@' is userinfo.
        assert_eq!(
            redact_url("postgresql://app:p@ss:w@db/app"),
            "postgresql://app:***@db/app"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        assert_eq!(redact_url("postgres://db/app"), "postgres://db/app");
        // '@' after the authority (in the query) is not userinfo.
        assert_eq!(
            redact_url("postgres://db/app?application_name=a@b"),
            "postgres://db/app?application_name=a@b"
        );
    }

    #[test]
    fn debug_output_hides_the_password() {
        let choice = StoreChoice::Postgres {
            url: "postgres://app:hunter2@db/app".to_owned(),
            pool_size: Some(8),
        };
        let text = format!("{choice:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("app:***@db/app"), "{text}");
    }
}
