//! The publishers of `converge bench publish`: N tasks, each on its own connection, each sending
//! one Publish call at a time and waiting for its answer.
//!
//! Every task follows the same clock: it publishes from the start, counts what completes between
//! the end of the warm-up and the end of the run, and sends nothing once the run is over (a call
//! in flight then is awaited but not counted). Counting completions inside a fixed window makes
//! the rates exact: completions divided by the window's length.

use std::sync::Arc;
use std::time::{Duration, Instant};

use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::publisher_client::PublisherClient;
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{PublishRequest, PubsubMessage};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::client::{self, ClientError};
use crate::parse::Endpoint;

/// Slowest latency the histogram tells apart (longer calls are recorded as this).
const MAX_LATENCY_MICROS: u64 = 60_000_000;
/// Significant decimal digits the histogram keeps (0.1 % resolution).
const SIGNIFICANT_DIGITS: u8 = 3;
/// Random bytes each publisher draws its payloads from, beyond one message's size: enough for
/// the payloads to differ without generating fresh random data on the measured path.
const PAYLOAD_POOL_EXTRA: usize = 64 * 1024;

/// What every publisher does.
#[derive(Debug)]
pub struct Plan {
    /// Full topic name.
    pub topic: String,
    /// Bytes of data per message.
    pub size: usize,
    /// Messages per Publish call.
    pub batch: usize,
    /// Time publishing before counting.
    pub warmup: Duration,
    /// Time counting.
    pub duration: Duration,
}

/// The counting window of a run, shared by every publisher.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Calls completing from here on are counted.
    from: Instant,
    /// No call starts from here on, and calls completing later are not counted.
    until: Instant,
}

impl Window {
    /// The window of a run starting at `start`.
    fn after(start: Instant, plan: &Plan) -> Self {
        let from = start + plan.warmup;
        Self {
            from,
            until: from + plan.duration,
        }
    }

    /// Whether a call completing at `t` counts.
    fn counts(&self, t: Instant) -> bool {
        t >= self.from && t < self.until
    }
}

/// Counts of one publisher, or of all of them once merged.
#[derive(Debug, Clone)]
pub struct Totals {
    /// Latency of each counted successful call, in microseconds.
    pub latency: Histogram<u64>,
    /// Successful calls counted.
    pub calls: u64,
    /// Messages in them.
    pub messages: u64,
    /// Failed calls, warm-up included: every failure matters.
    pub failures: u64,
    /// The first failure's error, to report.
    pub first_error: Option<String>,
    /// The counting window's length.
    pub window: Duration,
}

impl Totals {
    /// No calls yet, over a window of this length.
    pub fn new(window: Duration) -> Self {
        let latency = Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        Self {
            latency,
            calls: 0,
            messages: 0,
            failures: 0,
            first_error: None,
            window,
        }
    }

    /// Counts a successful call of `messages` messages that took `latency`.
    pub fn success(&mut self, messages: usize, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(micros.max(1));
        self.calls += 1;
        self.messages += messages as u64;
    }

    /// Counts a failed call.
    pub fn failure(&mut self, error: String) {
        tracing::debug!(error = %error, "publish failed");
        self.failures += 1;
        self.first_error.get_or_insert(error);
    }

    /// Adds another publisher's counts (same window).
    pub fn merge(&mut self, other: Self) {
        debug_assert_eq!(self.window, other.window, "one window per run");
        self.latency
            .add(&other.latency)
            .expect("histograms of one run have the same bounds");
        self.calls += other.calls;
        self.messages += other.messages;
        self.failures += other.failures;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Connects `publishers` publishers (a connection each, so that they do not queue behind one
/// another on one HTTP/2 connection), runs them and merges their counts.
pub async fn run(
    endpoint: &Endpoint,
    publishers: u32,
    plan: Arc<Plan>,
) -> Result<Totals, ClientError> {
    let mut clients = Vec::new();
    for _ in 0..publishers {
        clients.push(client::connect(endpoint).await?.publisher);
    }
    tracing::debug!(publishers, topic = %plan.topic, "publishing");
    let window = Window::after(Instant::now(), &plan);
    let mut tasks = JoinSet::new();
    for client in clients {
        tasks.spawn(publish_loop(client, plan.clone(), window));
    }
    let mut totals = Totals::new(plan.duration);
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(counts) => totals.merge(counts),
            Err(e) => totals.failure(format!("a publisher task ended abnormally: {e}")),
        }
    }
    Ok(totals)
}

/// One publisher: Publish, wait for the answer, repeat until the window closes.
async fn publish_loop(
    mut client: PublisherClient<Channel>,
    plan: Arc<Plan>,
    window: Window,
) -> Totals {
    let mut payloads = Payloads::new(plan.size);
    let mut totals = Totals::new(plan.duration);
    loop {
        let sent = Instant::now();
        if sent >= window.until {
            break;
        }
        let request = PublishRequest {
            topic: plan.topic.clone(),
            messages: (0..plan.batch)
                .map(|_| PubsubMessage {
                    data: payloads.next(),
                    ..PubsubMessage::default()
                })
                .collect(),
        };
        let answer = client.publish(request).await;
        let done = Instant::now();
        match answer {
            Ok(response) => {
                let ids = response.into_inner().message_ids.len();
                if ids != plan.batch {
                    totals.failure(format!("{ids} message id(s) for {} message(s)", plan.batch));
                } else if window.counts(done) {
                    totals.success(plan.batch, done - sent);
                }
            }
            Err(status) => totals.failure(ClientError::from(status).to_string()),
        }
    }
    totals
}

/// Random payloads of one size, cut at random places from a pool filled once.
struct Payloads {
    pool: Vec<u8>,
    size: usize,
    rng: SmallRng,
}

impl Payloads {
    fn new(size: usize) -> Self {
        let mut rng = SmallRng::from_rng(&mut rand::rng());
        let mut pool = vec![0; size + PAYLOAD_POOL_EXTRA];
        rng.fill_bytes(&mut pool);
        Self { pool, size, rng }
    }

    /// The next payload.
    fn next(&mut self) -> Vec<u8> {
        let start = self.rng.random_range(0..=self.pool.len() - self.size);
        self.pool[start..start + self.size].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(warmup: u64, duration: u64) -> Plan {
        Plan {
            topic: String::new(),
            size: 1,
            batch: 1,
            warmup: Duration::from_secs(warmup),
            duration: Duration::from_secs(duration),
        }
    }

    #[test]
    fn only_completions_between_warmup_and_end_count() {
        let start = Instant::now();
        let window = Window::after(start, &plan(2, 10));
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(!window.counts(at(1)));
        assert!(window.counts(at(2)));
        assert!(window.counts(at(11)));
        assert!(!window.counts(at(12)));
        assert_eq!(window.until - window.from, Duration::from_secs(10));
    }

    #[test]
    fn merged_totals_add_up_and_keep_the_first_error() {
        let window = Duration::from_secs(1);
        let mut a = Totals::new(window);
        a.success(10, Duration::from_micros(100));
        a.success(10, Duration::from_micros(300));
        let mut b = Totals::new(window);
        b.success(5, Duration::from_nanos(10));
        b.failure("first".into());
        b.failure("second".into());
        a.merge(b);
        assert_eq!((a.calls, a.messages, a.failures), (3, 25, 2));
        assert_eq!(a.first_error.as_deref(), Some("first"));
        assert_eq!(a.latency.len(), 3);
        assert_eq!(a.latency.max(), 300);
        assert_eq!(a.latency.min(), 1, "sub-microsecond calls count as 1 µs");
    }

    #[test]
    fn payloads_have_the_size_asked_and_differ() {
        let mut payloads = Payloads::new(1024);
        let first = payloads.next();
        let others: Vec<_> = (0..8).map(|_| payloads.next()).collect();
        assert!(others.iter().chain([&first]).all(|p| p.len() == 1024));
        assert!(others.iter().any(|p| *p != first));
        assert_eq!(Payloads::new(1).next().len(), 1);
    }
}
