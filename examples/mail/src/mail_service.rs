//! A stand-in for a third-party mail provider that misbehaves on purpose.
//!
//! It fails in the three ways a remote call can fail, at configurable rates:
//!
//! - **before the work**: it answers `503` without sending anything;
//! - **slowly**: it sends the mail, but answers only after [`FaultRates::slow_delay`], longer
//!   than a sensible caller waits, so the caller sees a timeout for work that was done;
//! - **after the work**: it sends the mail, then answers `500`, as if the answer had been lost.
//!
//! The last two are why a blind retry sends a second mail. Like the providers that offer it,
//! this one accepts an `Idempotency-Key` header: a request whose key was already served is
//! answered with the first answer and sends nothing; a request whose key is still being served is
//! answered `409` (retry later). Without the header every request is a new mail.
//!
//! The counters in [`MailStats`] are the ground truth of the example: how many mails each
//! recipient really received.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// How often each kind of failure happens, as probabilities in `0.0..=1.0`, drawn once per
/// request in this order (so the rates add up, and must not exceed 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultRates {
    /// Answer `503` without sending.
    pub fail_before: f64,
    /// Send, then answer only after `slow_delay`.
    pub slow: f64,
    /// Send, then answer `500`.
    pub fail_after: f64,
    /// How long a slow answer takes.
    pub slow_delay: Duration,
}

impl FaultRates {
    /// A provider that never fails.
    pub const NONE: FaultRates = FaultRates {
        fail_before: 0.0,
        slow: 0.0,
        fail_after: 0.0,
        slow_delay: Duration::ZERO,
    };
}

/// A mail to send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MailRequest {
    /// The recipient's address.
    pub to: String,
    /// The subject line.
    pub subject: String,
}

/// The provider's answer for a sent mail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MailReceipt {
    /// The provider's id of the mail.
    pub id: String,
}

/// What the provider did, as counted by the provider itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MailStats {
    /// Requests received, of any outcome.
    pub requests: u64,
    /// Mails really sent.
    pub sent: u64,
    /// Requests answered from an earlier request with the same idempotency key (nothing sent).
    pub replayed: u64,
    /// Requests refused because the same key was still being served.
    pub conflicts: u64,
    /// Failures injected before the work.
    pub failed_before: u64,
    /// Mails sent and answered late.
    pub slow: u64,
    /// Mails sent and answered with an error.
    pub failed_after: u64,
    /// Mails really sent, per recipient.
    pub per_recipient: HashMap<String, u64>,
}

/// Where an idempotency key stands.
#[derive(Debug, Clone)]
enum KeyState {
    InFlight,
    Done(MailReceipt),
}

#[derive(Debug)]
struct Provider {
    rates: FaultRates,
    rng: Mutex<StdRng>,
    stats: Mutex<MailStats>,
    keys: Mutex<HashMap<String, KeyState>>,
}

/// A running mail service.
#[derive(Debug, Clone)]
pub struct MailService {
    addr: SocketAddr,
    provider: Arc<Provider>,
}

impl MailService {
    /// Starts the service on a free loopback port. `seed` makes the sequence of injected
    /// failures reproducible.
    pub async fn start(rates: FaultRates, seed: u64) -> std::io::Result<Self> {
        let total = rates.fail_before + rates.slow + rates.fail_after;
        assert!(
            (0.0..=1.0).contains(&total),
            "fault rates add up to {total}"
        );
        let provider = Arc::new(Provider {
            rates,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            stats: Mutex::new(MailStats::default()),
            keys: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .route("/v1/mails", post(send))
            .route("/v1/stats", get(stats))
            .with_state(provider.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "mail service stopped");
            }
        });
        Ok(Self { addr, provider })
    }

    /// The URL to post mails to.
    pub fn url(&self) -> String {
        format!("http://{}/v1/mails", self.addr)
    }

    /// A copy of the counters.
    pub fn stats(&self) -> MailStats {
        self.provider.stats.lock().clone()
    }
}

/// What the dice decided for one request.
enum Fate {
    FailBefore,
    Slow,
    FailAfter,
    Fine,
}

impl Provider {
    fn roll(&self) -> Fate {
        let x: f64 = self.rng.lock().random();
        let r = self.rates;
        if x < r.fail_before {
            Fate::FailBefore
        } else if x < r.fail_before + r.slow {
            Fate::Slow
        } else if x < r.fail_before + r.slow + r.fail_after {
            Fate::FailAfter
        } else {
            Fate::Fine
        }
    }

    /// Sends the mail: the side effect the whole example is about.
    fn deliver(&self, mail: &MailRequest) -> MailReceipt {
        let mut stats = self.stats.lock();
        stats.sent += 1;
        *stats.per_recipient.entry(mail.to.clone()).or_default() += 1;
        MailReceipt {
            id: format!("mail-{}", stats.sent),
        }
    }
}

async fn send(
    State(provider): State<Arc<Provider>>,
    headers: HeaderMap,
    Json(mail): Json<MailRequest>,
) -> Result<Json<MailReceipt>, (StatusCode, String)> {
    provider.stats.lock().requests += 1;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned());
    if let Some(key) = &key {
        let mut keys = provider.keys.lock();
        match keys.get(key) {
            Some(KeyState::Done(receipt)) => {
                provider.stats.lock().replayed += 1;
                return Ok(Json(receipt.clone()));
            }
            Some(KeyState::InFlight) => {
                provider.stats.lock().conflicts += 1;
                return Err((StatusCode::CONFLICT, "this key is being served".into()));
            }
            None => {
                keys.insert(key.clone(), KeyState::InFlight);
            }
        }
    }
    let fate = provider.roll();
    if let Fate::FailBefore = fate {
        provider.stats.lock().failed_before += 1;
        if let Some(key) = &key {
            provider.keys.lock().remove(key);
        }
        return Err((StatusCode::SERVICE_UNAVAILABLE, "try again later".into()));
    }
    let receipt = provider.deliver(&mail);
    if let Some(key) = &key {
        provider
            .keys
            .lock()
            .insert(key.clone(), KeyState::Done(receipt.clone()));
    }
    match fate {
        Fate::Slow => {
            provider.stats.lock().slow += 1;
            tokio::time::sleep(provider.rates.slow_delay).await;
            Ok(Json(receipt))
        }
        Fate::FailAfter => {
            provider.stats.lock().failed_after += 1;
            Err((StatusCode::INTERNAL_SERVER_ERROR, "internal error".into()))
        }
        Fate::Fine | Fate::FailBefore => Ok(Json(receipt)),
    }
}

async fn stats(State(provider): State<Arc<Provider>>) -> Json<MailStats> {
    Json(provider.stats.lock().clone())
}
