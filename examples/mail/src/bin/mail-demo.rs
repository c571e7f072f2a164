//! Runs the mail example end to end under injected failures and prints what happened.
//!
//! `mail-demo --users 500 --fail-before 0.3` against an in-process broker (restarted mid-run), or
//! `mail-demo --endpoint 127.0.0.1:8085` against a running `converge serve`.

use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use converge::client::Endpoint;
use converge_example_mail::demo::{self, DemoConfig};
use converge_example_mail::mail_service::FaultRates;

/// Signs users up through an unreliable mail provider and checks that each got exactly one mail.
#[derive(Debug, Parser)]
struct Args {
    /// How many users sign up.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Signups in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Probability that the provider fails before sending.
    #[arg(long, default_value_t = 0.2)]
    fail_before: f64,
    /// Probability that the provider sends but answers after the caller's timeout.
    #[arg(long, default_value_t = 0.1)]
    slow: f64,
    /// Probability that the provider sends and then answers with an error.
    #[arg(long, default_value_t = 0.2)]
    fail_after: f64,
    /// Seed of the provider's failures.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// A running broker (`host:port`); without it converge is started in this process.
    #[arg(long, env = "CONVERGE_ENDPOINT")]
    endpoint: Option<String>,
    /// PostgreSQL; the demo works in a schema of its own and drops it.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    database_url: String,
    /// Do not crash the worker and the relay or restart the broker.
    #[arg(long)]
    no_chaos: bool,
    /// Call the provider without the idempotency key, to see the duplicate mails it prevents.
    #[arg(long)]
    without_idempotency_key: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error,converge_example_mail=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let endpoint = args.endpoint.as_deref().map(Endpoint::parse).transpose()?;
    let defaults = DemoConfig::default();
    let config = DemoConfig {
        users: args.users,
        concurrency: args.concurrency,
        rates: FaultRates {
            fail_before: args.fail_before,
            slow: args.slow,
            fail_after: args.fail_after,
            slow_delay: Duration::from_millis(700),
        },
        seed: args.seed,
        endpoint,
        database_url: args.database_url,
        chaos: !args.no_chaos,
        send_idempotency_key: !args.without_idempotency_key,
        ..defaults
    };
    let report = demo::run(config).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    if !report.converged() {
        bail!("the system did not converge to one mail and one status per user");
    }
    Ok(())
}
