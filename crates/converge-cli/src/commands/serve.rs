//! `converge serve`: runs the broker until SIGTERM or SIGINT.

use std::future::Future;

use anyhow::Context as _;
use converge_server::ServerConfig;
use converge_server::config::StoreChoice;
use converge_store::embedded::Durability;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{DurabilityArg, ServeArgs};
use crate::logging;

/// Runs `converge serve`.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    logging::init_server(args.log_format, &args.log_level)?;
    let config = config(args);
    tracing::debug!(
        listen = %config.listen,
        store = ?config.store,
        data_dir = ?config.data_dir,
        durability = ?config.durability,
        "starting"
    );
    let shutdown = shutdown_signal().context("cannot listen for SIGTERM and SIGINT")?;
    converge_server::run(config, shutdown)
        .await
        .context("the broker stopped with an error")
}

/// The server's configuration from the flags.
fn config(args: ServeArgs) -> ServerConfig {
    let store = match args.store {
        Some(url) => StoreChoice::Postgres {
            url,
            pool_size: args.store_pool,
        },
        None => StoreChoice::Embedded,
    };
    ServerConfig {
        listen: args.listen,
        data_dir: (!args.memory && store == StoreChoice::Embedded).then_some(args.data_dir),
        store,
        durability: match args.durability {
            DurabilityArg::Fsync => Durability::Fsync,
            DurabilityArg::OsBuffer => Durability::OsBuffer,
        },
        shutdown_grace: args.shutdown_grace,
        test_clock: args.test_clock,
    }
}

/// A future that resolves on the first SIGTERM or SIGINT. The handlers are installed before it
/// is returned, so that a signal arriving while the server starts is not lost.
pub(super) fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn serve_config(args: &[&str]) -> ServerConfig {
        let argv = ["converge", "serve"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(args) => config(args),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn memory_means_no_data_dir() {
        let config = serve_config(&[
            "--memory",
            "--durability",
            "os-buffer",
            "--listen",
            "127.0.0.1:0",
        ]);
        assert_eq!(config.data_dir, None);
        assert_eq!(config.durability, Durability::OsBuffer);
        assert_eq!(config.listen.port(), 0);
    }

    #[test]
    fn flags_reach_the_server_config() {
        let config = serve_config(&[
            "--data-dir",
            "/var/lib/converge",
            "--shutdown-grace",
            "2s",
            "--test-clock",
        ]);
        assert_eq!(
            config.data_dir.as_deref(),
            Some(std::path::Path::new("/var/lib/converge"))
        );
        assert_eq!(config.durability, Durability::Fsync);
        assert_eq!(config.shutdown_grace, std::time::Duration::from_secs(2));
        assert!(config.test_clock);
    }

    #[test]
    fn store_url_selects_postgres() {
        let config = serve_config(&[
            "--store",
            "postgresql://app@db/app?schema=orders",
            "--store-pool",
            "7",
        ]);
        assert_eq!(
            config.store,
            StoreChoice::Postgres {
                url: "postgresql://app@db/app?schema=orders".to_owned(),
                pool_size: Some(7),
            }
        );
        // No data directory is created or locked for a PostgreSQL store.
        assert_eq!(config.data_dir, None);
        assert_eq!(serve_config(&[]).store, StoreChoice::Embedded);
    }

    fn usage_error(args: &[&str]) -> String {
        let argv = ["converge", "serve"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => panic!("{args:?} parsed: {:?}", cli.command),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_store_url_must_be_postgresql() {
        let message = usage_error(&["--store", "mysql://x"]);
        assert!(message.contains("PostgreSQL URL"), "{message}");
        let message = usage_error(&["--store", "/var/lib/converge"]);
        assert!(message.contains("PostgreSQL URL"), "{message}");
    }

    #[test]
    fn a_store_url_conflicts_with_the_embedded_flags() {
        for other in [
            &["--memory"][..],
            &["--data-dir", "/tmp/x"],
            &["--durability", "os-buffer"],
        ] {
            let mut args = vec!["--store", "postgres://db/app"];
            args.extend_from_slice(other);
            let message = usage_error(&args);
            assert!(
                message.contains("cannot be used with"),
                "{other:?}: {message}"
            );
        }
        // The pool size means nothing without a store URL.
        let message = usage_error(&["--store-pool", "4"]);
        assert!(message.contains("--store"), "{message}");
        let message = usage_error(&["--store", "postgres://db/app", "--store-pool", "0"]);
        assert!(message.contains("--store-pool"), "{message}");
    }
}
