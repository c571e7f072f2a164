//! Starting, serving and stopping the server.
//!
//! Order of events: install the metrics recorder (the store counts into it), bind the port,
//! answer `/healthz` at once and `/readyz` 503 while the store opens in the background (API calls
//! answer `UNAVAILABLE` meanwhile), then serve. On the shutdown signal: `/readyz` turns 503, long
//! polls answer with what they have, the listener stops accepting, in-flight requests finish,
//! push delivery and maintenance stop and the store is closed, all within `shutdown_grace`.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::serve::ListenerExt;
use converge_core::{Clock, OffsetClock, Store, SystemClock};
use converge_store::embedded::{EmbeddedOptions, EmbeddedStore};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::push::PushDispatcher;
use crate::push::auth::PushAuth;
use crate::service::PubSub;
use crate::state::AppState;

/// How often the store's periodic work (lease expiry, retention, …) runs.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

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
    let options = EmbeddedOptions {
        dir: config.data_dir.clone(),
        durability: config.durability,
    };
    let store_clock = clock.clone();
    let mut opening = Some(tokio::task::spawn_blocking(move || {
        EmbeddedStore::open(options, store_clock)
    }));
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
                Ok(store) => live = Some(go_live(store, clock.clone(), &state, addr, &config)),
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

/// Waits for the store to open (forever once it has, so `select!` stops polling it).
async fn finish_opening(opening: &mut Option<Opening>) -> anyhow::Result<EmbeddedStore> {
    let Some(task) = opening.as_mut() else {
        return std::future::pending().await;
    };
    let opened = task.await;
    *opening = None;
    opened
        .context("opening the store panicked")?
        .context("cannot open the store")
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
    store: EmbeddedStore,
    clock: Arc<dyn Clock>,
    state: &AppState,
    addr: SocketAddr,
    config: &ServerConfig,
) -> Live {
    let store: Arc<dyn Store> = Arc::new(store);
    let maintenance = tokio::spawn(maintain(store.clone(), state.shutdown().clone()));
    let auth = PushAuth::new(store.clone(), config.data_dir.as_deref());
    let push = PushDispatcher::start(store.clone(), auth, state.shutdown());
    state.set_service(PubSub::new(store, clock));
    let data_dir = config
        .data_dir
        .as_ref()
        .map_or_else(|| "(memory)".to_owned(), |d| d.display().to_string());
    tracing::info!(listen = %addr, store = "embedded", data_dir = %data_dir, "converge is ready");
    Live { maintenance, push }
}

/// The server task's answer.
type Served = JoinHandle<std::io::Result<()>>;
/// The store-opening task's answer.
type Opening = JoinHandle<converge_core::Result<EmbeddedStore>>;

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
        (None, Some(opening)) => Arc::new(
            opening
                .await
                .context("opening the store panicked")?
                .context("cannot open the store")?,
        ),
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
