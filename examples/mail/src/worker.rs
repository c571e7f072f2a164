//! The worker: the event bus of the mail service, with one handler per step of the cascade.
//!
//! - [`SendMail`]: calls the (unreliable) mail provider with the event's idempotency key, then
//!   emits [`MailSent`]. Any failure (an error answer, a timeout, a refused connection) is
//!   returned as an error, so the broker redelivers the event after its backoff. The provider
//!   honours the key, so the retry of a call that had in fact succeeded sends nothing new.
//! - [`MailSent`]: records the status. The table's primary key makes the insertion idempotent.
//!
//! A retried `SendMail` handler emits `MailSent` again under the same derived key, and the
//! broker drops the copy: the cascade stays free of duplicates end to end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use converge::Transport;
use converge::bus::{EventBus, HandlerContext, HandlerError, HandlerResult};
use converge::transport::RetryBackoff;
use serde::Serialize;
use sqlx::PgPool;

use crate::events::{MailSent, SendMail};
use crate::mail_service::{MailReceipt, MailRequest};

/// What the worker saw, counted as it happened.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Calls made to the mail provider.
    pub provider_calls: AtomicU64,
    /// Calls that failed (error answer, timeout, connection error) and were left to the
    /// broker's retry.
    pub provider_failures: AtomicU64,
    /// `MailSent` events handled.
    pub mail_sent_handled: AtomicU64,
    /// `MailSent` events whose status was already recorded (absorbed by the primary key).
    pub status_already_recorded: AtomicU64,
}

/// A snapshot of [`WorkerCounters`].
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WorkerStats {
    /// See [`WorkerCounters::provider_calls`].
    pub provider_calls: u64,
    /// See [`WorkerCounters::provider_failures`].
    pub provider_failures: u64,
    /// See [`WorkerCounters::mail_sent_handled`].
    pub mail_sent_handled: u64,
    /// See [`WorkerCounters::status_already_recorded`].
    pub status_already_recorded: u64,
}

impl WorkerCounters {
    /// The current values.
    pub fn snapshot(&self) -> WorkerStats {
        WorkerStats {
            provider_calls: self.provider_calls.load(Ordering::Relaxed),
            provider_failures: self.provider_failures.load(Ordering::Relaxed),
            mail_sent_handled: self.mail_sent_handled.load(Ordering::Relaxed),
            status_already_recorded: self.status_already_recorded.load(Ordering::Relaxed),
        }
    }
}

/// Where the worker reaches its dependencies.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The bus topic (full name).
    pub topic: String,
    /// The worker's subscription (full name).
    pub subscription: String,
    /// The provider's send URL.
    pub mail_url: String,
    /// How long a provider call may take before it counts as failed.
    pub call_timeout: Duration,
    /// The subscription's redelivery backoff.
    pub retry: RetryBackoff,
    /// Send the event's idempotency key to the provider. Only the demo's control run turns
    /// this off, to show what the key prevents.
    pub send_idempotency_key: bool,
}

/// Builds the worker's bus (creating its topic and subscription if missing).
pub async fn build(
    transport: Arc<dyn Transport>,
    pool: PgPool,
    config: &WorkerConfig,
    counters: Arc<WorkerCounters>,
) -> anyhow::Result<EventBus> {
    let http = reqwest::Client::builder()
        .timeout(config.call_timeout)
        .build()?;
    let mail_url = config.mail_url.clone();
    let send_key = config.send_idempotency_key;
    let send_counters = counters.clone();
    let retry = config.retry;
    let bus = EventBus::builder(transport, &config.topic, &config.subscription)
        .source("/mail-worker")
        .subscription_config(move |s| s.retry = Some(retry))
        .on(move |event: SendMail, ctx: HandlerContext| {
            let http = http.clone();
            let url = mail_url.clone();
            let counters = send_counters.clone();
            async move { send_mail(&http, &url, send_key, &counters, event, ctx).await }
        })
        .on(move |event: MailSent, _ctx: HandlerContext| {
            let pool = pool.clone();
            let counters = counters.clone();
            async move { record_status(&pool, &counters, event).await }
        })
        .build()
        .await?;
    Ok(bus)
}

async fn send_mail(
    http: &reqwest::Client,
    url: &str,
    send_key: bool,
    counters: &WorkerCounters,
    event: SendMail,
    ctx: HandlerContext,
) -> HandlerResult {
    counters.provider_calls.fetch_add(1, Ordering::Relaxed);
    let mail = MailRequest {
        to: event.email.clone(),
        subject: "Welcome!".into(),
    };
    // The key of the event that started the cascade (the outbox row's key): the same on every
    // redelivery, so the provider recognises a retry.
    let mut request = http.post(url).json(&mail);
    if send_key {
        request = request.header("Idempotency-Key", ctx.idempotency_key().as_str());
    }
    let answer = request
        .send()
        .await
        .and_then(reqwest::Response::error_for_status);
    let receipt: MailReceipt = match answer {
        Ok(response) => response.json().await.map_err(|e| {
            counters.provider_failures.fetch_add(1, Ordering::Relaxed);
            HandlerError::from(e)
        })?,
        Err(error) => {
            counters.provider_failures.fetch_add(1, Ordering::Relaxed);
            return Err(error.into());
        }
    };
    ctx.emit(&MailSent {
        user_id: event.user_id,
        provider_mail_id: receipt.id,
    })
    .await?;
    Ok(())
}

async fn record_status(pool: &PgPool, counters: &WorkerCounters, event: MailSent) -> HandlerResult {
    counters.mail_sent_handled.fetch_add(1, Ordering::Relaxed);
    let inserted = sqlx::query(
        "INSERT INTO mail_status (user_id, provider_mail_id) VALUES ($1, $2)
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(event.user_id)
    .bind(&event.provider_mail_id)
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 0 {
        counters
            .status_already_recorded
            .fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
