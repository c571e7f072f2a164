//! Settling leases in batches: acks, nacks (a deadline of 0) and lease extensions, sent as unary
//! `Acknowledge` / `ModifyAckDeadline` calls like the official clients do.
//!
//! Unary calls rather than requests on the stream, because a lease outlives the stream it came
//! from: a message received on a stream that broke is still acked or extended while the stream
//! reconnects. Requests are gathered for a short delay (or up to [`MAX_IDS_PER_REQUEST`]) so a
//! busy subscriber sends a few large calls instead of one per message, and sent one at a time,
//! so a lease extension queued before an ack of the same message reaches the broker first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::subscriber_client::SubscriberClient;
use googleapis_tonic_google_pubsub_v1::google::pubsub::v1::{
    AcknowledgeRequest, ModifyAckDeadlineRequest,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::retry::{RetrySettings, retry, with_timeout};
use super::subscriber::Counters;

/// Most ack ids in one request (the official clients' batch size, well below the API's
/// request size limit for ack ids of any realistic length).
pub const MAX_IDS_PER_REQUEST: usize = 1_000;

/// What to do with one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Processed: remove the message.
    Ack(String),
    /// Set the lease to end this many seconds from now; 0 is a nack (redeliver at once, or
    /// after the subscription's retry backoff).
    Modify {
        /// The lease.
        ack_id: String,
        /// The new deadline, 0 to 600 s.
        seconds: i32,
    },
}

/// The sending side; dropping every clone lets the task send what is queued and end.
#[derive(Debug, Clone)]
pub struct Acker {
    tx: mpsc::UnboundedSender<Settle>,
}

impl Acker {
    /// Starts the task that sends settlements for `subscription`.
    pub fn spawn(
        stub: SubscriberClient<Channel>,
        subscription: String,
        delay: Duration,
        retry: RetrySettings,
        counters: Arc<Counters>,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            stub,
            subscription,
            delay,
            retry,
            counters,
        };
        (Self { tx }, tokio::spawn(task.run(rx)))
    }

    /// Queues a settlement. Never waits: settling must not hold up the receive loop.
    pub fn send(&self, settle: Settle) {
        // The task ends only after every sender is gone, so this cannot fail.
        let _ = self.tx.send(settle);
    }

    /// Queues a nack of each lease.
    pub fn nack_all(&self, ack_ids: impl IntoIterator<Item = String>) {
        for ack_id in ack_ids {
            self.send(Settle::Modify { ack_id, seconds: 0 });
        }
    }
}

struct Task {
    stub: SubscriberClient<Channel>,
    subscription: String,
    delay: Duration,
    retry: RetrySettings,
    counters: Arc<Counters>,
}

/// Settlements gathered for one round of calls.
#[derive(Default)]
struct Round {
    acks: Vec<String>,
    /// Ack ids by new deadline: one ModifyAckDeadline call carries one deadline.
    modify: BTreeMap<i32, Vec<String>>,
    count: usize,
}

impl Round {
    fn add(&mut self, settle: Settle) {
        match settle {
            Settle::Ack(id) => self.acks.push(id),
            Settle::Modify { ack_id, seconds } => {
                self.modify.entry(seconds).or_default().push(ack_id);
            }
        }
        self.count += 1;
    }
}

impl Task {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Settle>) {
        let mut open = true;
        while open {
            let Some(first) = rx.recv().await else {
                break;
            };
            let mut round = Round::default();
            round.add(first);
            let send_at = Instant::now() + self.delay;
            while round.count < MAX_IDS_PER_REQUEST {
                tokio::select! {
                    item = rx.recv() => match item {
                        Some(settle) => round.add(settle),
                        None => {
                            open = false;
                            break;
                        }
                    },
                    () = tokio::time::sleep_until(send_at) => break,
                }
            }
            self.send(round).await;
        }
        tracing::debug!(subscription = %self.subscription, "acks flushed");
    }

    /// Sends a round: deadline changes first, then acks.
    async fn send(&self, round: Round) {
        for (seconds, ids) in round.modify {
            for chunk in ids.chunks(MAX_IDS_PER_REQUEST) {
                if self.modify(chunk, seconds).await {
                    let counter = if seconds == 0 {
                        &self.counters.nacked
                    } else {
                        &self.counters.lease_extensions
                    };
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
        }
        for chunk in round.acks.chunks(MAX_IDS_PER_REQUEST) {
            if self.ack(chunk).await {
                self.counters
                    .acked
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    }

    async fn modify(&self, ack_ids: &[String], seconds: i32) -> bool {
        let result = retry(&self.retry, "modify_ack_deadline", |left| {
            let mut stub = self.stub.clone();
            let request = with_timeout(
                ModifyAckDeadlineRequest {
                    subscription: self.subscription.clone(),
                    ack_ids: ack_ids.to_vec(),
                    ack_deadline_seconds: seconds,
                },
                left,
            );
            async move { stub.modify_ack_deadline(request).await.map(drop) }
        })
        .await;
        self.outcome(result, "modify_ack_deadline", ack_ids.len())
    }

    async fn ack(&self, ack_ids: &[String]) -> bool {
        let result = retry(&self.retry, "acknowledge", |left| {
            let mut stub = self.stub.clone();
            let request = with_timeout(
                AcknowledgeRequest {
                    subscription: self.subscription.clone(),
                    ack_ids: ack_ids.to_vec(),
                },
                left,
            );
            async move { stub.acknowledge(request).await.map(drop) }
        })
        .await;
        self.outcome(result, "acknowledge", ack_ids.len())
    }

    /// Logs a failed call: the leases concerned simply run out and the broker redelivers
    /// their messages, which at-least-once delivery allows.
    fn outcome(&self, result: Result<(), tonic::Status>, call: &str, count: usize) -> bool {
        match result {
            Ok(()) => true,
            Err(status) => {
                tracing::warn!(subscription = %self.subscription, call, count, code = ?status.code(), error = %status.message(), "settling leases failed; their messages will be redelivered");
                false
            }
        }
    }
}
