//! `converge relay`: publishes the rows of an application's transactional outbox table to the
//! broker, until SIGTERM or SIGINT.
//!
//! The relay is the SDK's [`OutboxRelay`]; this command only gives it a database URL, an
//! endpoint and a logger, for services that would rather not run the relay in process (or
//! are not written in Rust but fill the same table). Several can run on one PostgreSQL
//! outbox: one publishes, the others stand by.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use converge::client::{Client, Endpoint};
use converge::outbox::{DEFAULT_TABLE, Outbox, OutboxRelay, RelayConfig};

use crate::cli::{Global, LogFormat};
use crate::logging;
use crate::parse::{self, Limit};

/// `converge relay`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  converge relay --database-url postgres://app@db/app
  converge relay --database-url sqlite://app.db --poll-interval 200ms --retention never
  DATABASE_URL=postgres://app@db/app converge relay --table billing.outbox --migrate")]
pub struct RelayArgs {
    /// The application's database: postgres://user@host/db, postgresql://… or sqlite://path
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: String,
    /// The outbox table, name or schema.name
    #[arg(long, default_value = DEFAULT_TABLE, value_parser = outbox_table, value_name = "TABLE")]
    pub table: Outbox,
    /// How often to look for rows without a notification (PostgreSQL notifies at each commit;
    /// SQLite is polled); a standby relay tries to take over this often
    #[arg(long, default_value = "1s", value_parser = parse::duration, value_name = "DURATION")]
    pub poll_interval: Duration,
    /// Delete published rows this long after publishing, or `never`
    #[arg(long, default_value = "24h", value_parser = parse::limit, value_name = "DURATION|never")]
    pub retention: Limit,
    /// Most rows read and published per round
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..), value_name = "N")]
    pub batch_size: u16,
    /// Create the outbox table first if it is missing
    #[arg(long)]
    pub migrate: bool,
    /// Log format
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `info,converge::outbox=debug`
    #[arg(long, env = "RUST_LOG", default_value = "info", value_name = "FILTER")]
    pub log_level: String,
}

/// Parses `--table` into the outbox it names.
fn outbox_table(s: &str) -> Result<Outbox, String> {
    Outbox::with_table(s).map_err(|e| e.to_string())
}

/// Runs `converge relay`.
pub async fn run(global: Global, args: RelayArgs) -> anyhow::Result<()> {
    logging::init_server(args.log_format, &args.log_level)?;
    let endpoint = match global.endpoint {
        Some(endpoint) => endpoint,
        None => super::endpoint_from_env(|key| std::env::var(key).ok())?,
    };
    let shutdown =
        super::serve::shutdown_signal().context("cannot listen for SIGTERM and SIGINT")?;
    relay(&endpoint, args, shutdown).await
}

/// Connects to the database and (lazily) to the broker, and relays until `shutdown`. The
/// broker may be down at start: publishing is retried with backoff until it answers.
async fn relay(
    endpoint: &Endpoint,
    args: RelayArgs,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let client = Client::connect_lazy(endpoint.clone())?;
    let config = config(&args);
    let relay = OutboxRelay::connect(&args.database_url, args.table, Arc::new(client))
        .await
        .context("cannot open the outbox database")?
        .with_config(config);
    if args.migrate {
        relay
            .migrate()
            .await
            .context("cannot create the outbox table")?;
    }
    tracing::info!(endpoint = %endpoint, poll_interval = ?args.poll_interval, "relaying the outbox");
    relay
        .run_until(shutdown)
        .await
        .context("the relay stopped with an error")
}

/// The relay's configuration from the flags.
fn config(args: &RelayArgs) -> RelayConfig {
    RelayConfig {
        poll_interval: args.poll_interval,
        batch_size: usize::from(args.batch_size),
        retention: match args.retention {
            Limit::After(retention) => Some(retention),
            Limit::Never => None,
        },
        ..RelayConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use converge::OutgoingMessage;
    use converge::outbox::sqlx::{self, Connection as _, Executor as _};
    use converge::transport::{SubscriptionConfig, TopicConfig, Transport as _};
    use converge_server::ServerConfig;
    use tokio::sync::oneshot;

    use super::*;
    use crate::cli::{Cli, Command};

    fn relay_args(args: &[&str]) -> Result<RelayArgs, clap::Error> {
        let argv = ["converge", "relay"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(argv)?.command {
            Command::Relay(args) => Ok(args),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_and_flags() {
        let args = relay_args(&["--database-url", "postgres://app@db/app"]).unwrap();
        assert_eq!(args.table.table(), "converge_outbox");
        assert_eq!(config(&args), RelayConfig::default());

        let args = relay_args(&[
            "--database-url",
            "sqlite://x.db",
            "--table",
            "billing.outbox",
            "--poll-interval",
            "200ms",
            "--retention",
            "never",
            "--batch-size",
            "10",
            "--migrate",
        ])
        .unwrap();
        assert_eq!(args.table.table(), "billing.outbox");
        let config = config(&args);
        assert_eq!(config.poll_interval, Duration::from_millis(200));
        assert_eq!(config.retention, None);
        assert_eq!(config.batch_size, 10);
        assert!(args.migrate);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["--database-url", "postgres://x", "--table", "Bad-Name"][..],
            &["--database-url", "postgres://x", "--retention", "soon"],
            &["--database-url", "postgres://x", "--batch-size", "0"],
        ] {
            assert!(relay_args(args).is_err(), "{args:?} should be rejected");
        }
    }

    /// A shutdown future and the sender that completes it.
    fn stopper() -> (
        oneshot::Sender<()>,
        impl Future<Output = ()> + Send + 'static,
    ) {
        let (sender, receiver) = oneshot::channel();
        (sender, async move {
            let _ = receiver.await;
        })
    }

    /// The command against the real PostgreSQL and a broker in process: it creates the table
    /// (`--migrate`), publishes a committed row and marks it, and stops on its shutdown signal.
    #[tokio::test]
    async fn relays_a_postgres_outbox_to_the_broker() -> anyhow::Result<()> {
        const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
        const TOPIC: &str = "projects/test/topics/relayed";
        let (broker_stop, broker_stopped) = stopper();
        let (addr, _server) = converge_server::start(
            ServerConfig {
                listen: "127.0.0.1:0".parse()?,
                test_clock: true,
                ..Default::default()
            },
            broker_stopped,
        )
        .await?;
        let endpoint = Endpoint::parse(&addr.to_string())?;
        let client = Client::connect(endpoint.clone()).await?;
        client
            .ensure_topic(&TopicConfig {
                name: TOPIC.to_owned(),
                ..Default::default()
            })
            .await?;
        client
            .ensure_subscription(&SubscriptionConfig::new(
                "projects/test/subscriptions/relayed",
                TOPIC,
            ))
            .await?;

        let schema = format!("relay_{:016x}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(URL).await?;
        admin
            .execute(
                format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}").as_str(),
            )
            .await?;
        let table = format!("{schema}.outbox");
        let args = relay_args(&[
            "--database-url",
            URL,
            "--table",
            &table,
            "--poll-interval",
            "100ms",
            "--migrate",
        ])?;
        let outbox = args.table.clone();
        let (relay_stop, relay_stopped) = stopper();
        let running = tokio::spawn(async move { relay(&endpoint, args, relay_stopped).await });

        // The relay creates the table; then a committed row is published.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let pool = sqlx::PgPool::connect(URL).await?;
        loop {
            let exists: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::bigint")
                .bind(&table)
                .fetch_one(&pool)
                .await?;
            if exists.is_some() {
                break;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "no table created");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut tx = pool.begin().await?;
        let message = OutgoingMessage {
            data: "relayed".into(),
            ..Default::default()
        };
        outbox
            .enqueue_message(&mut tx, TOPIC, message, "relayed-1")
            .await?;
        tx.commit().await?;
        let sql = format!("SELECT message_id FROM {table} WHERE idempotency_key = 'relayed-1'");
        let message_id = loop {
            let id: Option<String> = sqlx::query_scalar(&sql).fetch_one(&pool).await?;
            if let Some(id) = id {
                break id;
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "row not published");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(!message_id.is_empty());

        let _ = relay_stop.send(());
        running.await??;
        let _ = broker_stop.send(());
        admin
            .execute(format!("DROP SCHEMA {schema} CASCADE").as_str())
            .await?;
        Ok(())
    }
}
