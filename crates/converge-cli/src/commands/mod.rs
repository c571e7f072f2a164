//! One module per command group. Each command takes typed arguments from [`crate::cli`], talks
//! to the broker through [`crate::client`] and prints through [`crate::output`].

mod bench;
mod publish;
mod pull;
mod relay;
mod serve;
mod subscriptions;
mod topics;

use converge_core::ProjectId;

pub use bench::BenchCommand;
pub use relay::RelayArgs;

use crate::cli::{Cli, Command, Global};
use crate::client::{self, Clients};
use crate::output::Output;
use crate::parse::Endpoint;

/// A mistake in how the command was called, found after clap parsed it (for example no message
/// to publish). It exits with status 2, like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// What every client command needs: the connection, the project of short names and the output.
#[derive(Debug)]
pub struct Context {
    /// The broker's services.
    pub clients: Clients,
    /// Project of short names.
    pub project: ProjectId,
    /// Tables or JSON.
    pub output: Output,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { global, command } = cli;
    match command {
        Command::Serve(args) => serve::run(args).await,
        Command::Topics(cmd) => topics::run(&context(global).await?, cmd).await,
        Command::Subscriptions(cmd) => subscriptions::run(&context(global).await?, cmd).await,
        Command::Publish(args) => publish::run(&context(global).await?, args).await,
        Command::Pull(args) => pull::run(&context(global).await?, args).await,
        Command::Bench(cmd) => bench::run(global, cmd).await,
        Command::Relay(args) => relay::run(global, args).await,
    }
}

/// Connects to the endpoint chosen by flag, `CONVERGE_ENDPOINT`, `PUBSUB_EMULATOR_HOST` or the
/// default, in that order.
async fn context(global: Global) -> anyhow::Result<Context> {
    crate::logging::init_client();
    let endpoint = match global.endpoint {
        Some(endpoint) => endpoint,
        None => endpoint_from_env(|key| std::env::var(key).ok())?,
    };
    Ok(Context {
        clients: client::connect(&endpoint).await?,
        project: global.project,
        output: Output::new(global.json),
    })
}

/// The endpoint when no `--endpoint` flag was given: the SDK's rule (`CONVERGE_ENDPOINT`, then
/// `PUBSUB_EMULATOR_HOST`, then the default), with a bad value reported as a usage error.
pub(crate) fn endpoint_from_env(
    var: impl Fn(&str) -> Option<String>,
) -> Result<Endpoint, UsageError> {
    Endpoint::from_env_with(var).map_err(|e| UsageError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn a_bad_environment_value_names_its_variable() {
        let err = endpoint_from_env(env(&[("PUBSUB_EMULATOR_HOST", "nohost")])).unwrap_err();
        assert!(
            err.to_string().starts_with("PUBSUB_EMULATOR_HOST: "),
            "{err}"
        );
    }
}
