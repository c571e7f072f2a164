//! The server processes the tool starts itself: converge, the emulator, and, with `--spawn`,
//! private NATS, RabbitMQ and PostgreSQL servers on free ports with data of their own.
//!
//! One [`Server`] serves them all, because start-up is measured the same way for each: spawn,
//! then poll the target's own readiness probe (its health endpoint, or a real client
//! connection) every [`READY_POLL`] until it answers. What differs between servers is data, not
//! code: the program and its environment, the user it runs as, the signal that stops it
//! cleanly and the exit codes that count as clean ([`ServerSpec`]).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::future::BoxFuture;
use rustix::process::Signal;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

/// How long a server may take to become ready (a large backlog to recover, a JVM to start).
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How often readiness is polled while waiting; bounds the start-up time's resolution.
const READY_POLL: Duration = Duration::from_millis(5);
/// How long a stopped server may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Answers whether the server serves now; polled until it does.
pub(crate) type Probe = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// A probe that is ready when `url` answers a GET with a 2xx status (`/readyz`, `/healthz`).
pub(crate) fn http_ok(url: String) -> Probe {
    let http = reqwest::Client::new();
    Arc::new(move || {
        let request = http.get(&url).timeout(Duration::from_secs(1));
        Box::pin(async move { request.send().await.is_ok_and(|r| r.status().is_success()) })
    })
}

/// What [`Server`] runs and how it stops.
#[derive(Clone)]
pub(crate) struct ServerSpec {
    /// Names the server in errors.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Variables set for the process (on top of the tool's environment, minus `env_remove`).
    pub env: Vec<(String, String)>,
    /// Variables of the tool's environment the process must not see.
    pub env_remove: Vec<String>,
    /// Run as this user and group (PostgreSQL refuses to run as root).
    pub user: Option<(u32, u32)>,
    /// stdout and stderr go here (appended across restarts).
    pub log: PathBuf,
    pub ready: Probe,
    /// The signal of a clean, complete shutdown.
    pub stop_signal: Signal,
    /// Exit codes after `stop_signal` that count as clean besides 0 (a JVM ends with 143 on
    /// SIGTERM).
    pub clean_codes: Vec<i32>,
}

impl ServerSpec {
    /// A spec with no extra environment, run as the tool's user, stopped with SIGTERM.
    pub(crate) fn new(name: &str, program: PathBuf, args: Vec<String>, log: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            program,
            args,
            env: Vec::new(),
            env_remove: Vec::new(),
            user: None,
            log,
            ready: Arc::new(|| Box::pin(async { true })),
            stop_signal: Signal::TERM,
            clean_codes: Vec::new(),
        }
    }

    fn is_clean(&self, status: ExitStatus) -> bool {
        status.success() || status.code().is_some_and(|c| self.clean_codes.contains(&c))
    }
}

/// A server process the tool started; killed if dropped.
pub(crate) struct Server {
    spec: ServerSpec,
    child: Mutex<Option<Child>>,
    pid: std::sync::Mutex<Option<u32>>,
}

impl Server {
    /// Spawns it and waits until it is ready.
    pub(crate) async fn start(spec: ServerSpec) -> anyhow::Result<Self> {
        let server = Self {
            spec,
            child: Mutex::new(None),
            pid: std::sync::Mutex::new(None),
        };
        server.spawn_and_wait().await?;
        Ok(server)
    }

    /// Spawns the process and returns how long it took until it was ready.
    async fn spawn_and_wait(&self) -> anyhow::Result<Duration> {
        let spec = &self.spec;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("opening {}", spec.log.display()))?;
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for var in &spec.env_remove {
            command.env_remove(var);
        }
        if let Some((uid, gid)) = spec.user {
            command.uid(uid).gid(gid);
        }
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {}", spec.program.display()))?;
        *self.pid.lock().expect("pid lock") = child.id();
        loop {
            if (spec.ready)().await {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready; its log ends:\n{}",
                    spec.name,
                    log_tail(&spec.log)
                );
            }
            if started.elapsed() > READY_TIMEOUT {
                child.kill().await.ok();
                bail!(
                    "{} was not ready within {READY_TIMEOUT:?}; its log ends:\n{}",
                    spec.name,
                    log_tail(&spec.log)
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
        let took = started.elapsed();
        *self.child.lock().await = Some(child);
        Ok(took)
    }

    /// Memory (PSS) in bytes of the process and everything it started (a start script's JVM
    /// or Erlang VM, PostgreSQL's backends).
    pub(crate) fn memory(&self) -> Option<u64> {
        let pid = (*self.pid.lock().expect("pid lock"))?;
        tree_memory(pid)
    }

    /// Sends the stop signal and waits for the exit (kills it after [`STOP_TIMEOUT`]); errors
    /// if it did not exit cleanly.
    pub(crate) async fn stop(&self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.lock().await.take() else {
            return Ok(());
        };
        *self.pid.lock().expect("pid lock") = None;
        let spec = &self.spec;
        if let Some(pid) = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            rustix::process::kill_process(pid, spec.stop_signal)
                .with_context(|| format!("sending {:?}", spec.stop_signal))?;
        }
        let Ok(status) = tokio::time::timeout(STOP_TIMEOUT, child.wait()).await else {
            child.kill().await.ok();
            bail!(
                "{} did not exit within {STOP_TIMEOUT:?} of {:?}",
                spec.name,
                spec.stop_signal
            );
        };
        let status = status?;
        if !spec.is_clean(status) {
            bail!(
                "{} ended with {status} after {:?}; its log ends:\n{}",
                spec.name,
                spec.stop_signal,
                log_tail(&spec.log)
            );
        }
        Ok(())
    }

    /// Stops it for good; its log is removed when it stopped cleanly (kept to explain a failure).
    pub(crate) async fn shutdown(&self) -> anyhow::Result<()> {
        self.stop().await?;
        std::fs::remove_file(&self.spec.log).ok();
        Ok(())
    }

    /// Stops it cleanly and starts it again on the same data; returns the time from spawn to
    /// ready.
    pub(crate) async fn restart(&self) -> anyhow::Result<Duration> {
        self.stop().await?;
        self.spawn_and_wait().await
    }
}

/// [`Target::restart`](crate::target::Target::restart) for a target whose server the tool may
/// have started (`Some`) or not (`None`: it cannot be restarted).
pub(crate) async fn restart_if_managed(
    server: Option<&Server>,
) -> anyhow::Result<Option<Duration>> {
    match server {
        Some(server) => server.restart().await.map(Some),
        None => Ok(None),
    }
}

/// [`Target::shutdown`](crate::target::Target::shutdown) for a target whose server the tool
/// may have started (`Some`) or not (`None`: it is left running).
pub(crate) async fn shutdown_if_managed(server: Option<&Server>) -> anyhow::Result<()> {
    match server {
        Some(server) => server.shutdown().await,
        None => Ok(()),
    }
}

/// The last lines of a server log, to explain a failure.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A port nobody listens on right now (the OS picks it; the server binds it a moment later).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The pids of every running process with the parent pid each has, from `/proc/<pid>/stat`.
fn processes() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The command name (field 2) may hold spaces and parentheses: the parent pid is the
            // second field after its last ')'.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect()
}

/// Memory (PSS) in bytes of `pid` and all its descendants.
pub(crate) fn tree_memory(pid: u32) -> Option<u64> {
    let all = processes();
    let mut tree = vec![pid];
    let mut i = 0;
    while let Some(&parent) = tree.get(i) {
        tree.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    let own = pss(Path::new(&format!("/proc/{pid}")))?;
    let children: u64 = tree[1..]
        .iter()
        .filter_map(|p| pss(Path::new(&format!("/proc/{p}"))))
        .sum();
    Some(own + children)
}

/// Memory (PSS) in bytes of the process named `comm` (as in `/proc/<pid>/comm`), preferring
/// one whose command line contains each of `hints` when several run; `None` when none runs or
/// `/proc` cannot be read. For the machine's servers, which the tool did not start.
pub(crate) fn memory_of_process(comm: &str, hints: &[&str]) -> Option<u64> {
    let mut candidates = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        let is_pid = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if name.trim_end() != comm {
            continue;
        }
        let cmdline = std::fs::read(path.join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        candidates.push((path, hints.iter().all(|h| cmdline.contains(h))));
    }
    let chosen = match candidates.iter().find(|(_, matches)| *matches) {
        Some((path, _)) => path,
        None if candidates.len() == 1 => &candidates[0].0,
        None => return None,
    };
    pss(chosen)
}

/// The memory in bytes of the process whose `/proc/<pid>` directory is `proc_dir`: its
/// proportional set size (PSS), where a page shared by several processes counts a share to
/// each. RSS would count PostgreSQL's shared buffers once per backend that touched them, so a
/// sum of RSS over a process tree overstates; a sum of PSS does not. Falls back to VmRSS where
/// `smaps_rollup` cannot be read (another user's process without privileges).
fn pss(proc_dir: &Path) -> Option<u64> {
    let kib = |file: &str, key: &str| -> Option<u64> {
        let text = std::fs::read_to_string(proc_dir.join(file)).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(key))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let kib = kib("smaps_rollup", "Pss:").or_else(|| kib("status", "VmRSS:"))?;
    Some(kib * 1024)
}

/// The uid and gid of system user `name`, from `/etc/passwd`.
pub(crate) fn system_user(name: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .with_context(|| format!("no user {name} in /etc/passwd"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell that starts a child: the tree's memory counts both, and a clean SIGTERM stop is
    /// told apart from a failed one.
    #[tokio::test]
    async fn tree_memory_and_clean_stop() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ready");
        let script = format!(
            "trap 'kill $!; exit 0' TERM; sleep 600 & touch {}; wait",
            marker.display()
        );
        let mut spec = ServerSpec::new(
            "sh",
            "/bin/sh".into(),
            vec!["-c".into(), script],
            dir.path().join("log"),
        );
        let probe_marker = marker.clone();
        spec.ready = Arc::new(move || {
            let exists = probe_marker.exists();
            Box::pin(async move { exists })
        });
        let server = Server::start(spec).await.unwrap();
        let pid = (*server.pid.lock().unwrap()).unwrap();
        let alone = pss(Path::new(&format!("/proc/{pid}"))).unwrap();
        let tree = server.memory().unwrap();
        assert!(tree > alone, "the child's memory counts: {tree} vs {alone}");
        std::fs::remove_file(&marker).unwrap();
        let took = server.restart().await.unwrap();
        assert!(took < READY_TIMEOUT);
        server.shutdown().await.unwrap();
        assert!(server.memory().is_none());
    }

    /// A server that dies before it is ready fails the start with its log.
    #[tokio::test]
    async fn early_exit_fails_with_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ServerSpec::new(
            "sh",
            "/bin/sh".into(),
            vec!["-c".into(), "echo boom-123; exit 3".into()],
            dir.path().join("log"),
        );
        spec.ready = Arc::new(|| Box::pin(async { false }));
        let err = Server::start(spec).await.err().unwrap();
        assert!(format!("{err:#}").contains("boom-123"), "{err:#}");
    }

    #[test]
    fn root_is_a_system_user() {
        assert_eq!(system_user("root").unwrap(), (0, 0));
        assert!(system_user("no-such-user-here").is_err());
    }
}
