//! A private PostgreSQL cluster for `--spawn postgres`: `initdb` into a fresh directory under
//! `--work-dir`, then `postgres` on a free port with the stock settings `initdb` writes.
//!
//! Why the tool starts its own: the start-up workload must restart the server, which it cannot
//! do to the machine's; and the machine's server may be configured for tests rather than as a
//! production server would be (the one this tool was written on runs with `autovacuum = off`,
//! which a queue that deletes every row it delivers does not survive for long). The stock
//! configuration keeps `fsync = on`, `synchronous_commit = on` and autovacuum.
//!
//! PostgreSQL refuses to run as root: when the tool runs as root, the cluster belongs to the
//! `postgres` system user and both `initdb` and the server run as that user.

use std::path::PathBuf;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustix::process::Signal;
use sqlx::ConnectOptions as _;
use sqlx::postgres::PgConnectOptions;

use crate::process::{Server, ServerSpec, free_port, system_user};
use crate::targets::TargetOptions;

/// A running private cluster; its directory is removed on drop (after the server, killed on
/// drop if it still runs).
pub struct PgServer {
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub url: String,
    /// The postmaster (its memory counts its backends).
    pub server: Server,
    _dir: tempfile::TempDir,
}

impl PgServer {
    /// `initdb`, start, and wait until it accepts a connection.
    pub async fn start(opts: &TargetOptions) -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let dir = opts.data_dir("postgres")?;
        let user = if rustix::process::geteuid().is_root() {
            let (uid, gid) = system_user("postgres")?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .context("giving the cluster directory to the postgres user")?;
            Some((uid, gid))
        } else {
            None
        };
        let data = dir.path().join("data");
        let mut initdb = tokio::process::Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdin(std::process::Stdio::null());
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().await.context("running initdb")?;
        anyhow::ensure!(
            out.status.success(),
            "initdb failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port()?;
        let args = vec![
            "-D".to_owned(),
            data.display().to_string(),
            "-p".to_owned(),
            port.to_string(),
            // The socket goes next to the data, not to /var/run/postgresql (the machine's).
            "-k".to_owned(),
            dir.path().display().to_string(),
            "-c".to_owned(),
            "listen_addresses=127.0.0.1".to_owned(),
        ];
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let mut spec = ServerSpec::new(
            "postgres",
            bin.join("postgres"),
            args,
            opts.work_dir.join(format!("postgres-{port}.log")),
        );
        spec.user = user;
        spec.ready = ready(&url)?;
        // SIGINT is PostgreSQL's "fast" shutdown: it checkpoints and exits 0.
        spec.stop_signal = Signal::INT;
        let server = Server::start(spec).await?;
        Ok(Self {
            url,
            server,
            _dir: dir,
        })
    }
}

/// A probe that is ready when a connection to `url` opens and answers a query.
fn ready(url: &str) -> anyhow::Result<crate::process::Probe> {
    let options = PgConnectOptions::from_str(url)?.disable_statement_logging();
    Ok(Arc::new(move || {
        let options = options.clone();
        Box::pin(async move {
            let connected = tokio::time::timeout(Duration::from_secs(2), async {
                let mut conn = options.connect().await?;
                sqlx::query("SELECT 1").execute(&mut conn).await?;
                anyhow::Ok(())
            })
            .await;
            matches!(connected, Ok(Ok(())))
        })
    }))
}

/// The newest installed PostgreSQL's binaries (`/usr/lib/postgresql/<version>/bin`, Debian's
/// layout).
fn bin_dir() -> anyhow::Result<PathBuf> {
    let root = std::path::Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .with_context(|| format!("PostgreSQL is not installed under {}", root.display()))?
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .with_context(|| format!("no PostgreSQL with initdb under {}", root.display()))?;
    Ok(newest.1)
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection as _, Executor as _};

    use super::*;

    /// The private cluster starts, keeps a committed row across its restart, runs with fsync
    /// and autovacuum on (what the durability claims rest on), and its memory is measured.
    #[tokio::test]
    async fn private_cluster_keeps_data_across_restart() {
        let work = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let opts = TargetOptions {
            pg_url: String::new(),
            nats_url: String::new(),
            amqp_url: String::new(),
            converge_bin: PathBuf::new(),
            emulator_bin: PathBuf::new(),
            work_dir: work.path().to_path_buf(),
            short: true,
            spawn: vec![crate::targets::Peer::Postgres],
        };
        let server = PgServer::start(&opts).await.unwrap();
        assert!(server.server.memory().is_some_and(|m| m > 0));
        let mut conn = sqlx::PgConnection::connect(&server.url).await.unwrap();
        for (setting, want) in [("fsync", "on"), ("autovacuum", "on")] {
            let got: String = sqlx::query_scalar(&format!("SHOW {setting}"))
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(got, want, "{setting}");
        }
        // Two statements: the simple query protocol runs them as one transaction.
        conn.execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')")
            .await
            .unwrap();
        conn.close().await.ok();
        let took = server.server.restart().await.unwrap();
        assert!(took > Duration::ZERO);
        let mut conn = sqlx::PgConnection::connect(&server.url).await.unwrap();
        let v: String = sqlx::query_scalar("SELECT v FROM t")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(v, "kept");
        conn.close().await.ok();
        server.server.shutdown().await.unwrap();
    }
}
