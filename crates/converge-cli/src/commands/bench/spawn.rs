//! `--spawn`: a broker of the bench's own, `converge serve` run from this very executable on a
//! port the system picks and a fresh data directory, stopped with SIGTERM afterwards.
//!
//! The broker says where it listens in its "ready" log line (JSON on stderr, with the bound
//! address in `listen`), which also tells that its store is open, so no port is guessed and no
//! request is sent before the broker can answer it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};
use tokio::task::JoinHandle;

use super::SpawnMode;

/// The `message` of the broker's ready line (see `converge_server::run`).
const READY_MESSAGE: &str = "converge is ready";
/// The log target that emits the ready line, kept at `info` whatever filter the user picks.
const READY_TARGET: &str = "converge_server::run";
/// How long the broker may take to open its store and say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Grace the broker is given to drain on SIGTERM.
const SHUTDOWN_GRACE: &str = "5s";
/// How long to wait for the broker to exit after SIGTERM: its grace plus a margin.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Notable log lines kept to explain a broker that failed.
const LOG_TAIL_LINES: usize = 20;

/// Why the spawned broker could not be started or stopped cleanly.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The path of this executable is unknown.
    #[error("cannot find the converge executable to spawn: {0}")]
    Executable(#[source] std::io::Error),
    /// The temporary data directory could not be made or removed.
    #[error("temporary data directory {dir}: {source}")]
    DataDir {
        /// The directory, or its parent when making it failed.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The process could not be started, signalled or waited for.
    #[error("the spawned broker: {0}")]
    Process(#[source] std::io::Error),
    /// The broker exited before it said it was ready.
    #[error(
        "the spawned broker exited ({status}) before it was ready; its last notable log lines:\n{log}"
    )]
    Exited {
        /// How it exited.
        status: ExitStatus,
        /// Its last log lines.
        log: String,
    },
    /// The broker did not say it was ready in time.
    #[error("the spawned broker was not ready within {0:?}")]
    NotReady(Duration),
    /// The broker did not stop cleanly after SIGTERM.
    #[error("after SIGTERM, it ended with {status}; its last notable log lines:\n{log}")]
    Stopped {
        /// How it exited (or that it was killed after the timeout).
        status: String,
        /// Its last log lines.
        log: String,
    },
}

/// How to start the broker.
#[derive(Debug, Clone)]
pub struct Options {
    /// Durability, or in memory.
    pub mode: SpawnMode,
    /// Where the temporary data directory is made (the system's temporary directory if `None`).
    pub parent_dir: Option<PathBuf>,
    /// The broker's log filter (`--log-level`).
    pub log_filter: String,
}

/// A running broker; [`Broker::stop`] ends it. If dropped instead (a panic), the process is
/// killed and the data directory removed all the same.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    address: SocketAddr,
    data_dir: Option<TempDir>,
    log: JoinHandle<LogTail>,
}

impl Broker {
    /// Starts the broker and waits until it is ready.
    pub async fn start(options: &Options) -> Result<Self, SpawnError> {
        let exe = std::env::current_exe().map_err(SpawnError::Executable)?;
        let data_dir = match options.mode {
            SpawnMode::Memory => None,
            SpawnMode::Fsync | SpawnMode::OsBuffer => Some(make_data_dir(options)?),
        };
        let args = serve_args(
            options.mode,
            data_dir.as_ref().map(TempDir::path),
            &options.log_filter,
        );
        tracing::debug!(exe = %exe.display(), ?args, "spawning the broker");
        let mut child = Command::new(exe)
            .args(&args)
            // Flags win over these, but `--memory` conflicts with a data dir even from the
            // environment.
            .env_remove("CONVERGE_DATA_DIR")
            .env_remove("CONVERGE_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(SpawnError::Process)?;
        let Some(stderr) = child.stderr.take() else {
            return Err(SpawnError::Process(std::io::Error::other(
                "stderr was not captured",
            )));
        };
        let mut lines = BufReader::new(stderr).lines();
        let mut tail = LogTail::default();
        let ready = tokio::time::timeout(READY_TIMEOUT, wait_ready(&mut lines, &mut tail)).await;
        let address = match ready {
            Ok(Some(address)) => address,
            Ok(None) => {
                let status = child.wait().await.map_err(SpawnError::Process)?;
                return Err(SpawnError::Exited {
                    status,
                    log: tail.text(),
                });
            }
            Err(_) => return Err(SpawnError::NotReady(READY_TIMEOUT)),
        };
        tracing::debug!(%address, "the spawned broker is ready");
        // Keep reading its logs, else a full pipe would block the broker.
        let log = tokio::spawn(drain(lines, tail));
        Ok(Self {
            child,
            address,
            data_dir,
            log,
        })
    }

    /// The address the broker listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops the broker with SIGTERM (killing it if it does not exit in time) and removes its
    /// data directory.
    pub async fn stop(mut self) -> Result<(), SpawnError> {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw)
        {
            kill_process(pid, Signal::TERM)
                .map_err(|e| SpawnError::Process(std::io::Error::from(e)))?;
        }
        let status = match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => Some(status.map_err(SpawnError::Process)?),
            Err(_) => {
                self.child.kill().await.map_err(SpawnError::Process)?;
                None
            }
        };
        let log = self.log.await.unwrap_or_default();
        if let Some(dir) = self.data_dir {
            let path = dir.path().to_owned();
            dir.close()
                .map_err(|source| SpawnError::DataDir { dir: path, source })?;
        }
        match status {
            Some(status) if status.success() => Ok(()),
            other => Err(SpawnError::Stopped {
                status: other.map_or_else(
                    || format!("a kill after {STOP_TIMEOUT:?}"),
                    |s| s.to_string(),
                ),
                log: log.text(),
            }),
        }
    }
}

/// A fresh directory for the broker's store.
fn make_data_dir(options: &Options) -> Result<TempDir, SpawnError> {
    let parent = options
        .parent_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("converge-bench-")
        .tempdir_in(&parent)
        .map_err(|source| SpawnError::DataDir {
            dir: parent,
            source,
        })
}

/// The arguments of `converge serve` for this mode: any free port on loopback, JSON logs (to
/// find the ready line), a short shutdown grace, and the store.
fn serve_args(mode: SpawnMode, data_dir: Option<&Path>, log_filter: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--shutdown-grace",
        SHUTDOWN_GRACE,
        "--log-level",
    ]
    .map(OsString::from)
    .into();
    args.push(format!("{log_filter},{READY_TARGET}=info").into());
    match (mode, data_dir) {
        (SpawnMode::Memory, _) | (_, None) => args.push("--memory".into()),
        (SpawnMode::Fsync | SpawnMode::OsBuffer, Some(dir)) => {
            let durability = if mode == SpawnMode::Fsync {
                "fsync"
            } else {
                "os-buffer"
            };
            args.extend([
                "--data-dir".into(),
                dir.as_os_str().to_owned(),
                "--durability".into(),
                durability.into(),
            ]);
        }
    }
    args
}

/// Reads log lines until the ready line; `None` if the log ends first (the broker exited).
async fn wait_ready(
    lines: &mut Lines<BufReader<ChildStderr>>,
    tail: &mut LogTail,
) -> Option<SocketAddr> {
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(address) = ready_address(&line) {
            return Some(address);
        }
        tail.push(line);
    }
    None
}

/// Reads the rest of the log, keeping its tail, until the broker closes stderr.
async fn drain(mut lines: Lines<BufReader<ChildStderr>>, mut tail: LogTail) -> LogTail {
    while let Ok(Some(line)) = lines.next_line().await {
        tail.push(line);
    }
    tail
}

/// The bound address in the broker's ready line, `None` for any other line.
fn ready_address(line: &str) -> Option<SocketAddr> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    if event.get("message")?.as_str()? != READY_MESSAGE {
        return None;
    }
    event.get("listen")?.as_str()?.parse().ok()
}

/// The last notable lines of the broker's log: warnings, errors, and anything not a JSON event
/// (such as the error `converge serve` prints as it exits). The request log would push them out.
#[derive(Debug, Default)]
struct LogTail(VecDeque<String>);

impl LogTail {
    fn push(&mut self, line: String) {
        if !notable(&line) {
            return;
        }
        if self.0.len() == LOG_TAIL_LINES {
            self.0.pop_front();
        }
        self.0.push_back(line);
    }

    fn text(&self) -> String {
        Vec::from(self.0.clone()).join("\n")
    }
}

/// Whether a log line helps explain a failure: not an event at `info` level or below.
fn notable(line: &str) -> bool {
    let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
        return !line.trim().is_empty();
    };
    !matches!(
        event.get("level").and_then(serde_json::Value::as_str),
        Some("INFO" | "DEBUG" | "TRACE")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command as CliCommand, DurabilityArg};
    use clap::Parser;

    fn strings(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn the_ready_line_gives_the_bound_address() {
        let line = r#"{"timestamp":"2025-01-01T00:00:00Z","level":"INFO","message":"converge is ready","listen":"127.0.0.1:40123","store":"embedded","data_dir":"(memory)","target":"converge_server::run"}"#;
        assert_eq!(
            ready_address(line),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        let other = r#"{"level":"INFO","message":"request","listen":"127.0.0.1:1"}"#;
        assert_eq!(ready_address(other), None);
        assert_eq!(ready_address("converge is ready on 127.0.0.1:1"), None);
        assert_eq!(
            ready_address(r#"{"message":"converge is ready","listen":"nowhere"}"#),
            None
        );
    }

    #[test]
    fn serve_arguments_parse_as_the_intended_broker() {
        let dir = Path::new("/tmp/converge-bench-x");
        for (mode, durability) in [
            (SpawnMode::Fsync, DurabilityArg::Fsync),
            (SpawnMode::OsBuffer, DurabilityArg::OsBuffer),
        ] {
            let args = serve_args(mode, Some(dir), "warn");
            let cli = Cli::try_parse_from(
                std::iter::once(OsString::from("converge")).chain(args.iter().cloned()),
            )
            .unwrap();
            let CliCommand::Serve(serve) = cli.command else {
                panic!("expected serve: {:?}", strings(&args));
            };
            assert_eq!(serve.data_dir, dir);
            assert!(!serve.memory);
            assert_eq!(serve.durability, durability);
            assert_eq!(serve.listen.port(), 0);
            assert_eq!(serve.log_level, "warn,converge_server::run=info");
        }
        let args = serve_args(SpawnMode::Memory, None, "info");
        let cli =
            Cli::try_parse_from(std::iter::once(OsString::from("converge")).chain(args)).unwrap();
        let CliCommand::Serve(serve) = cli.command else {
            panic!("expected serve");
        };
        assert!(serve.memory);
    }

    #[test]
    fn the_log_tail_keeps_warnings_errors_and_plain_text_only() {
        let mut tail = LogTail::default();
        for line in [
            r#"{"level":"INFO","message":"inbound request"}"#,
            r#"{"level":"WARN","message":"slow"}"#,
            r#"{"level":"DEBUG","message":"detail"}"#,
            "",
            "error: the broker stopped with an error",
        ] {
            tail.push(line.to_owned());
        }
        assert_eq!(
            tail.text(),
            "{\"level\":\"WARN\",\"message\":\"slow\"}\nerror: the broker stopped with an error"
        );
    }

    #[test]
    fn the_log_tail_keeps_the_last_lines() {
        let mut tail = LogTail::default();
        for i in 0..LOG_TAIL_LINES + 5 {
            tail.push(i.to_string());
        }
        let text = tail.text();
        assert_eq!(text.lines().count(), LOG_TAIL_LINES);
        assert!(text.starts_with("5\n"), "{text}");
        assert!(text.ends_with(&(LOG_TAIL_LINES + 4).to_string()), "{text}");
    }
}
