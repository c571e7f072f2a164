//! Logs of the CLI, on stderr so that stdout carries only results.
//!
//! `serve` logs at `info` by default, human-readable on a terminal and as JSON lines otherwise
//! (each event's fields at the top level beside `timestamp`, `level` and `message`, which log
//! collectors index without configuration). The client commands log only when `RUST_LOG` asks.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;
use crate::commands::UsageError;

/// The format chosen for `auto`: human on a terminal, JSON otherwise.
pub fn resolve(format: LogFormat, stderr_is_terminal: bool) -> LogFormat {
    match format {
        LogFormat::Auto if stderr_is_terminal => LogFormat::Human,
        LogFormat::Auto => LogFormat::Json,
        chosen => chosen,
    }
}

/// Installs the global subscriber of `serve`. `filter` uses the `RUST_LOG` syntax.
pub fn init_server(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| UsageError(format!("--log-level \"{filter}\": {e}")))?;
    let terminal = std::io::stderr().is_terminal();
    // Colours only for a terminal: escape codes in a file or a pipe are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(terminal);
    let installed = match resolve(format, terminal) {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .try_init(),
        _ => builder.try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// Installs the subscriber of the client commands: human lines, silent unless `RUST_LOG` is set.
pub fn init_client() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    // A second installation (only possible in tests) keeps the first; nothing to report.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_terminal() {
        assert_eq!(resolve(LogFormat::Auto, true), LogFormat::Human);
        assert_eq!(resolve(LogFormat::Auto, false), LogFormat::Json);
        assert_eq!(resolve(LogFormat::Json, true), LogFormat::Json);
        assert_eq!(resolve(LogFormat::Human, false), LogFormat::Human);
    }

    #[test]
    fn a_bad_filter_is_a_usage_error() {
        let err = init_server(LogFormat::Human, "info,=[").unwrap_err();
        assert!(err.downcast_ref::<UsageError>().is_some(), "{err}");
    }
}
