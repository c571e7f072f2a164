//! Finds the push subscriptions and keeps one worker running for each.
//!
//! Every [`POLL_INTERVAL`] the dispatcher lists the subscriptions (`subscription_stats`), reads
//! each one and decodes its push config from the stored resource. A subscription with an endpoint
//! gets a worker (or its worker gets the new settings through a watch channel); one that turned
//! into a pull subscription, was detached or deleted loses its worker. Workers are independent
//! tasks, so one slow endpoint never delays another subscription.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use converge_core::{Store, Subscription, SubscriptionName};
use prost::Message as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::auth::PushAuth;
use super::worker::{self, Target};
use crate::proto as v1;

/// How often the dispatcher looks for push subscriptions and their changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A running worker and the channel that updates its settings.
struct Running {
    target: watch::Sender<Target>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// The running dispatcher; [`PushDispatcher::stop`] ends it and all workers.
pub struct PushDispatcher {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl PushDispatcher {
    /// Starts watching `store` for push subscriptions. Stops when `shutdown` fires or on
    /// [`PushDispatcher::stop`].
    pub fn start(store: Arc<dyn Store>, auth: PushAuth, shutdown: &CancellationToken) -> Self {
        let cancel = shutdown.child_token();
        let client = reqwest::Client::builder()
            .user_agent(concat!("converge-push/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot build the push HTTP client; using defaults");
                reqwest::Client::new()
            });
        let sender = worker::Sender { client, auth };
        let task = tokio::spawn(dispatch(store, sender, cancel.clone()));
        Self { cancel, task }
    }

    /// Stops the dispatcher and every worker, waiting for them to end. Deliveries in flight are
    /// abandoned; their leases expire and the messages are delivered again.
    pub async fn stop(self) {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the push dispatcher panicked");
        }
    }
}

/// The push config of a stored subscription, when it is a live push subscription.
pub fn push_target(sub: &Subscription) -> Option<Target> {
    if sub.detached || sub.topic.is_none() {
        return None;
    }
    let resource = v1::Subscription::decode(sub.resource.as_ref()).ok()?;
    let push_config = resource.push_config?;
    if push_config.push_endpoint.is_empty() {
        return None;
    }
    Some(Target {
        subscription: sub.clone(),
        push_config,
    })
}

/// The dispatcher loop.
async fn dispatch(store: Arc<dyn Store>, sender: worker::Sender, cancel: CancellationToken) {
    let mut running: HashMap<SubscriptionName, Running> = HashMap::new();
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let Some(targets) = scan(store.as_ref()).await else {
            continue;
        };
        running.retain(|name, worker| {
            let keep = targets.contains_key(name) && !worker.task.is_finished();
            if !keep {
                tracing::info!(subscription = %name, "push delivery ends for this subscription");
                worker.cancel.cancel();
                metrics::gauge!(worker::WINDOW_GAUGE, "subscription" => name.to_string()).set(0.0);
            }
            keep
        });
        for (name, target) in targets {
            match running.get(&name) {
                Some(worker) => {
                    worker.target.send_if_modified(|current| {
                        let changed = *current != target;
                        if changed {
                            *current = target;
                        }
                        changed
                    });
                }
                None => {
                    let (updates, receiver) = watch::channel(target);
                    let cancel = cancel.child_token();
                    let task =
                        worker::spawn(store.clone(), sender.clone(), receiver, cancel.clone());
                    running.insert(
                        name,
                        Running {
                            target: updates,
                            cancel,
                            task,
                        },
                    );
                }
            }
        }
    }
    for (_, worker) in running {
        worker.cancel.cancel();
        let _ = worker.task.await;
    }
}

/// Reads every subscription and keeps the push ones; `None` when the store cannot answer now.
async fn scan(store: &dyn Store) -> Option<HashMap<SubscriptionName, Target>> {
    let stats = match store.subscription_stats().await {
        Ok(stats) => stats,
        Err(e) => {
            tracing::debug!(error = %e, "push dispatcher cannot list subscriptions");
            return None;
        }
    };
    let mut targets = HashMap::new();
    for stat in stats {
        // A subscription deleted between the two calls is simply not a target.
        let Ok(sub) = store.get_subscription(&stat.name).await else {
            continue;
        };
        if let Some(target) = push_target(&sub) {
            targets.insert(stat.name, target);
        }
    }
    Some(targets)
}
