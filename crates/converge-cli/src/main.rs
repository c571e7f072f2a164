//! The `converge` command: runs the broker (`serve`) and talks to a running one (topics,
//! subscriptions, publish, pull) over its gRPC API.

mod cli;
mod client;
mod commands;
mod logging;
mod output;
mod parse;

use std::process::ExitCode;

use clap::Parser;

/// Parses the command line (clap exits with 2 on a usage error), runs the command and turns an
/// error into one line on stderr: exit 2 for usage errors found later, 1 for everything else.
#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.is::<commands::UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
