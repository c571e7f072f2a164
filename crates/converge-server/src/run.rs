//! Starting, serving and stopping the server.
//!
//! Order of events: install the metrics recorder (the store counts into it), bind the port,
//! answer `/healthz` at once and `/readyz` 503 while the store opens in the background (API calls
//! answer `UNAVAILABLE` meanwhile), then serve. On the shutdown signal: `/readyz` turns 503, long
//! polls answer with what they have, the listener stops accepting, in-flight requests finish,
//! push delivery and maintenance stop and the store is closed, all within `shutdown_grace`.
//!
//! A PostgreSQL store that cannot be reached yet is retried with backoff (1 s doubling to 10 s,
//! each failure logged) while `/readyz` stays 503, so that a node started before its database
//! comes up on its own; a bad URL, a schema too new or any other error that retrying cannot fix
//! stops the server. A shutdown signal ends the retries.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::serve::ListenerExt;
use converge_core::{Clock, OffsetClock, Store, SystemClock};
use converge_store::embedded::{EmbeddedOptions, EmbeddedStore};
use converge_store::postgres::{PostgresError, PostgresOptions, PostgresStore};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ServerConfig, StoreChoice, redact_url};
use crate::push::PushDispatcher;
use crate::push::auth::PushAuth;
use crate::service::PubSub;
use crate::state::AppState;

/// How often the store's periodic work (lease expiry, retention, …) runs.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

/// The first wait before connecting to PostgreSQL again after a failed attempt; it doubles up to
/// [`CONNECT_BACKOFF_MAX`].
const CONNECT_BACKOFF_MIN: Duration = Duration::from_secs(1);

/// The longest wait between two attempts to connect to PostgreSQL: how late, at most, a node
/// notices that its database has come up.
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Runs the server until `shutdown` completes, then shuts down gracefully.
///
/// Returns `Ok` after a clean shutdown (requests drained, store closed); an error if the port
/// cannot be bound, the store cannot be opened, or shutdown overran `shutdown_grace`.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (_addr, server) = start(config, shutdown).await?;
    server.await.context("the server task panicked")?
}

/// For tests and embedding: binds first and returns the bound address (port 0 = any free port)
/// with the task serving it, which ends as [`run`] returns.
pub async fn start(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    crate::metrics::handle();
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr().context("no local address")?;
    let state = AppState::new();
    let (clock, test_clock): (Arc<dyn Clock>, Option<OffsetClock>) = if config.test_clock {
        let clock = OffsetClock::new();
        (Arc::new(clock.clone()), Some(clock))
    } else {
        (Arc::new(SystemClock), None)
    };
    let app = app(state.clone(), test_clock);
    let token = state.shutdown().clone();
    tokio::spawn(async move {
        shutdown.await;
        token.cancel();
    });
    let server = tokio::spawn(serve(listener, addr, app, state, config, clock));
    Ok((addr, server))
}

/// The whole router: gRPC, REST, probes, metrics and (with a test clock) the admin hooks, under
/// the request-id and request-log layers.
pub fn app(state: AppState, test_clock: Option<OffsetClock>) -> Router {
    let mut router = Router::new()
        .merge(crate::grpc::router(state.clone()))
        .merge(crate::rest::router(state.clone()))
        .merge(crate::health::router(state.clone()))
        .merge(crate::metrics::router(state.clone()))
        .merge(crate::push::auth::jwks_router(state.clone()));
    if let Some(clock) = test_clock {
        router = router.merge(crate::admin::router(state, clock));
    }
    crate::http::instrument(router)
}

/// Serves until shutdown, opening the store on the way; then drains and closes.
async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    app: Router,
    state: AppState,
    config: ServerConfig,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<()> {
    let token = state.shutdown().clone();
    // Small answers (acks, publish ids) must leave at once: without TCP_NODELAY, Nagle's
    // algorithm meeting the client's delayed ACK holds some of them back ~40 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(token.clone().cancelled_owned())
    .into_future();
    let mut server = tokio::spawn(server);
    // Before the store opens, so that a client (or a test) can find the port and watch `/readyz`
    // while a PostgreSQL store is still out of reach.
    tracing::info!(
        listen = %addr,
        store = store_kind(&config.store),
        "listening; opening the store"
    );
    let mut opening = Some(open_store(&config, clock.clone(), token.clone()));
    let mut live = None;

    loop {
        tokio::select! {
            // Biased: on shutdown the server ends because the token was cancelled, so when both
            // are ready the token must win, or a clean stop would look like a crash.
            biased;
            () = token.cancelled() => break,
            served = &mut server => {
                token.cancel();
                served.context("the HTTP server panicked")?.context("the HTTP server failed")?;
                anyhow::bail!("the HTTP server stopped before shutdown was requested");
            }
            opened = finish_opening(&mut opening) => match opened {
                Ok(Some(store)) => {
                    live = Some(go_live(store, clock.clone(), &state, addr, &config));
                }
                // Shutdown came first; the loop ends on the token at its next turn.
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot open the store; stopping");
                    token.cancel();
                    let _ = tokio::time::timeout(config.shutdown_grace, server).await;
                    return Err(e);
                }
            },
        }
    }

    tracing::info!(grace = ?config.shutdown_grace, "shutting down: draining requests");
    let abort = server.abort_handle();
    let drained =
        tokio::time::timeout(config.shutdown_grace, drain(server, opening, live, &state)).await;
    match drained {
        Ok(result) => result,
        Err(_) => {
            abort.abort();
            anyhow::bail!("shutdown did not finish within {:?}", config.shutdown_grace)
        }
    }
}

/// A store that has finished opening, before it is shared as `Arc<dyn Store>`.
enum Opened {
    /// The embedded engine.
    Embedded(EmbeddedStore),
    /// The PostgreSQL engine.
    Postgres(PostgresStore),
}

impl Opened {
    fn into_store(self) -> Arc<dyn Store> {
        match self {
            Self::Embedded(store) => Arc::new(store),
            Self::Postgres(store) => Arc::new(store),
        }
    }
}

/// The engine's name in log lines.
fn store_kind(choice: &StoreChoice) -> &'static str {
    match choice {
        StoreChoice::Embedded => "embedded",
        StoreChoice::Postgres { .. } => "postgres",
    }
}

/// Opens the configured store in the background. The task answers `None` if `shutdown` came
/// before a PostgreSQL store could be reached; the embedded store always finishes opening, so
/// that it can be closed cleanly.
fn open_store(
    config: &ServerConfig,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Opening {
    match &config.store {
        StoreChoice::Embedded => {
            let options = EmbeddedOptions {
                dir: config.data_dir.clone(),
                durability: config.durability,
            };
            let opening = tokio::task::spawn_blocking(move || EmbeddedStore::open(options, clock));
            tokio::spawn(async move {
                let store = opening
                    .await
                    .context("opening the store panicked")?
                    .context("cannot open the store")?;
                Ok(Some(Opened::Embedded(store)))
            })
        }
        StoreChoice::Postgres { url, pool_size } => {
            let mut options = PostgresOptions {
                clock,
                ..PostgresOptions::default()
            };
            if let Some(size) = *pool_size {
                options.max_connections = size;
            }
            tokio::spawn(connect_postgres(url.clone(), options, shutdown))
        }
    }
}

/// Connects to PostgreSQL (and migrates the schema), retrying with backoff while the database
/// cannot be reached; gives up at once on errors that retrying cannot fix. `None` if `shutdown`
/// came first (an attempt in progress is abandoned: it holds nothing that outlives its
/// connections).
async fn connect_postgres(
    url: String,
    options: PostgresOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<Opened>> {
    let shown = redact_url(&url);
    let mut backoff = CONNECT_BACKOFF_MIN;
    let mut attempt: u32 = 1;
    loop {
        let connected = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(None),
            connected = PostgresStore::connect(&url, options.clone()) => connected,
        };
        match connected {
            Ok(store) => return Ok(Some(Opened::Postgres(store))),
            Err(e) if retry_connect(&e) => tracing::warn!(
                error = %e,
                url = %shown,
                attempt,
                retry_in = ?backoff,
                "cannot reach PostgreSQL; retrying"
            ),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot open the PostgreSQL store at {shown}")));
            }
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(CONNECT_BACKOFF_MAX);
        attempt = attempt.saturating_add(1);
    }
}

/// Whether connecting again may succeed: the database is unreachable, restarting, out of
/// connections or resources, or a migration lost a race. A bad URL or schema name, a schema too
/// new, a failed login or a missing database stay wrong however often they are tried.
fn retry_connect(e: &PostgresError) -> bool {
    match e {
        PostgresError::Database(e) | PostgresError::MigrationFailed { source: e, .. } => {
            transient(e)
        }
        _ => false,
    }
}

/// A sqlx error that says "not now" rather than "not like this".
fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exceptions; 53: insufficient resources (too many connections);
            // 57P01-03: shutting down or starting up; 40001/40P01: serialization, deadlock.
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
        }),
        _ => false,
    }
}

/// Waits for the store to open (forever once it has, so `select!` stops polling it).
async fn finish_opening(opening: &mut Option<Opening>) -> anyhow::Result<Option<Opened>> {
    let Some(task) = opening.as_mut() else {
        return std::future::pending().await;
    };
    let opened = task.await;
    *opening = None;
    opened.context("opening the store panicked")?
}

/// The background work that runs once the store is open.
struct Live {
    /// The store's periodic work.
    maintenance: JoinHandle<()>,
    /// Push delivery.
    push: PushDispatcher,
}

/// The store is open: serve the API from it, start its maintenance and push delivery, and say
/// so.
fn go_live(
    opened: Opened,
    clock: Arc<dyn Clock>,
    state: &AppState,
    addr: SocketAddr,
    config: &ServerConfig,
) -> Live {
    // What the ready line says about the store, taken before the store becomes `dyn Store`.
    let schema = match &opened {
        Opened::Embedded(_) => None,
        Opened::Postgres(pg) => Some((pg.schema().to_owned(), pg.schema_version())),
    };
    let store = opened.into_store();
    let maintenance = tokio::spawn(maintain(store.clone(), state.shutdown().clone()));
    let auth = PushAuth::new(store.clone(), config.data_dir.as_deref());
    let push = PushDispatcher::start(store.clone(), auth, state.shutdown());
    state.set_service(PubSub::new(store, clock));
    // Only now: whoever reads this line (an operator, a test) may call the API at once.
    match (schema, &config.store) {
        (Some((schema, version)), StoreChoice::Postgres { url, .. }) => tracing::info!(
            listen = %addr,
            store = "postgres",
            schema = %schema,
            schema_version = version,
            url = %redact_url(url),
            "converge is ready"
        ),
        _ => {
            let data_dir = config
                .data_dir
                .as_ref()
                .map_or_else(|| "(memory)".to_owned(), |d| d.display().to_string());
            tracing::info!(
                listen = %addr,
                store = "embedded",
                data_dir = %data_dir,
                "converge is ready"
            );
        }
    }
    Live { maintenance, push }
}

/// The server task's answer.
type Served = JoinHandle<std::io::Result<()>>;
/// The store-opening task's answer: `None` if shutdown came before a PostgreSQL store opened.
type Opening = JoinHandle<anyhow::Result<Option<Opened>>>;

/// After the shutdown signal: stops push delivery, waits for in-flight requests and maintenance
/// to finish, then closes the store (waiting for it to finish opening first, if shutdown came
/// that early).
async fn drain(
    server: Served,
    opening: Option<Opening>,
    live: Option<Live>,
    state: &AppState,
) -> anyhow::Result<()> {
    let maintenance = match live {
        Some(Live { maintenance, push }) => {
            push.stop().await;
            Some(maintenance)
        }
        None => None,
    };
    server
        .await
        .context("the HTTP server panicked")?
        .context("the HTTP server failed while draining")?;
    if let Some(maintenance) = maintenance {
        maintenance.await.context("the maintenance task panicked")?;
    }
    let store: Arc<dyn Store> = match (state.service_if_open(), opening) {
        (Some(service), _) => service.store().clone(),
        (None, Some(opening)) => match opening.await.context("opening the store panicked")?? {
            Some(opened) => opened.into_store(),
            None => {
                tracing::info!("the store was never opened; shutdown complete");
                return Ok(());
            }
        },
        (None, None) => return Ok(()),
    };
    store.close().await.context("cannot close the store")?;
    tracing::info!("store closed; shutdown complete");
    Ok(())
}

/// Runs the store's periodic work about once a second until shutdown, and the metrics
/// registry's upkeep with it.
async fn maintain(store: Arc<dyn Store>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(MAINTENANCE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(e) = store.maintain().await {
            tracing::warn!(error = %e, "store maintenance failed");
        }
        crate::metrics::handle().run_upkeep();
    }
}
