//! One StreamingPull stream as the service sees it: the settings of its first request, the
//! requests that follow (acks, modacks, deadline changes, heartbeats) and its delivery batches.
//!
//! The transport (reading the request stream, sending responses, ending the stream on
//! shutdown) is the gRPC layer's; everything here is a rule of the API and is independent of it.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;

use converge_core::name::SubscriptionName;
use converge_core::{AckId, AckOutcome, PullOptions, limits};

use super::registry::{Registration, Usage};
use crate::proto as v1;
use crate::service::{ApiError, PubSub, convert, store_error};
use v1::streaming_pull_response::{
    AcknowledgeConfirmation, ModifyAckDeadlineConfirmation, SubscriptionProperties,
};

/// Most bytes of messages in one response (the first message is always sent, whatever its
/// size). Below the 4 MiB a gRPC client accepts by default, which the official Python client
/// keeps in emulator mode, so a batch never breaks a client that could take each message alone.
pub const MAX_BATCH_BYTES: usize = 3 * 1024 * 1024;

/// How often a stream whose flow control is full looks again, besides being woken by acks:
/// leases run out on the service's clock (which tests move), so expiry is noticed by looking.
pub const ROOM_RECHECK: Duration = Duration::from_secs(1);

/// The flow-control limits and identity a stream's first request fixes for its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// The subscription pulled from.
    pub subscription: SubscriptionName,
    /// Distinguishes client instances; a reconnect with the same id takes over the old stream.
    pub client_id: String,
    /// Outstanding messages at most; `None` for no limit (the request's `<= 0`).
    pub max_messages: Option<usize>,
    /// Outstanding bytes at most; `None` for no limit.
    pub max_bytes: Option<usize>,
    /// The raw values of the first request, which later requests may repeat but not change.
    first: (i64, i64, i64),
}

impl StreamSettings {
    /// Validates the first request of a stream: the subscription name and the stream ack
    /// deadline (10-600 s) are required; flow control `<= 0` means no limit.
    pub fn from_first_request(
        req: &v1::StreamingPullRequest,
    ) -> Result<(Self, Duration), ApiError> {
        if req.subscription.is_empty() {
            return Err(ApiError::invalid(
                "Invalid subscription: the first StreamingPullRequest must name a subscription",
            ));
        }
        let subscription = SubscriptionName::parse(&req.subscription)?;
        let deadline = stream_ack_deadline(req.stream_ack_deadline_seconds)?;
        let settings = Self {
            subscription,
            client_id: req.client_id.clone(),
            max_messages: limit(req.max_outstanding_messages),
            max_bytes: limit(req.max_outstanding_bytes),
            first: (
                req.max_outstanding_messages,
                req.max_outstanding_bytes,
                req.protocol_version,
            ),
        };
        Ok((settings, deadline))
    }

    /// Checks that a later request changes nothing the first one fixed.
    fn check_later_request(&self, req: &v1::StreamingPullRequest) -> Result<(), ApiError> {
        if !req.subscription.is_empty() && req.subscription != self.subscription.to_string() {
            return Err(ApiError::invalid(
                "Invalid subscription: only the first StreamingPullRequest of a stream may set \
                 the subscription",
            ));
        }
        let fixed = [
            (
                "max_outstanding_messages",
                req.max_outstanding_messages,
                self.first.0,
            ),
            (
                "max_outstanding_bytes",
                req.max_outstanding_bytes,
                self.first.1,
            ),
            ("protocol_version", req.protocol_version, self.first.2),
        ];
        if let Some((field, value, _)) = fixed.iter().find(|(_, v, first)| *v != 0 && v != first) {
            return Err(ApiError::invalid(format!(
                "Invalid {field} {value}: it can only be set on the first StreamingPullRequest \
                 of a stream"
            )));
        }
        Ok(())
    }

    /// How many more messages and bytes the stream may receive with `usage` out; `None` when
    /// flow control is full.
    fn room(&self, usage: Usage) -> Option<(usize, usize)> {
        let messages = match self.max_messages {
            None => limits::MAX_PULL_MESSAGES,
            Some(max) => max.checked_sub(usage.messages).filter(|&n| n > 0)?,
        };
        let bytes = match self.max_bytes {
            None => MAX_BATCH_BYTES,
            Some(max) => max.checked_sub(usage.bytes).filter(|&n| n > 0)?,
        };
        Some((
            messages.min(limits::MAX_PULL_MESSAGES),
            bytes.min(MAX_BATCH_BYTES),
        ))
    }
}

/// A flow-control limit of the wire: `<= 0` is no limit.
fn limit(value: i64) -> Option<usize> {
    usize::try_from(value).ok().filter(|&n| n > 0)
}

/// The stream ack deadline: 10 to 600 seconds, required (unlike a subscription's, 0 is not a
/// default here).
fn stream_ack_deadline(seconds: i32) -> Result<Duration, ApiError> {
    let (min, max) = (limits::MIN_ACK_DEADLINE, limits::MAX_ACK_DEADLINE);
    match u64::try_from(seconds) {
        Ok(s) if (min.as_secs()..=max.as_secs()).contains(&s) => Ok(Duration::from_secs(s)),
        _ => Err(ApiError::invalid(format!(
            "Invalid stream_ack_deadline_seconds {seconds}: must be between {} and {}",
            min.as_secs(),
            max.as_secs()
        ))),
    }
}

/// An open stream: its settings, its place in the service's stream registry and what the
/// subscription told it at opening.
#[derive(Debug)]
pub struct StreamSession {
    service: PubSub,
    settings: StreamSettings,
    /// The lease deadline of deliveries; later requests may change it.
    ack_deadline: Mutex<Duration>,
    /// Signalled when a later request changes the deadline, so a long poll begun with the old
    /// one starts over and the next delivery gets the new one.
    deadline_changed: tokio::sync::Notify,
    /// Exactly-once delivery and ordering as read when the stream opened. A client learns
    /// them from each response; a change by UpdateSubscription applies to the next stream.
    properties: SubscriptionProperties,
    registration: Registration,
}

impl PubSub {
    /// Opens a StreamingPull stream from its first request: validates it, checks that the
    /// subscription exists (`NOT_FOUND`) and is attached (`FAILED_PRECONDITION`), and registers
    /// the stream, superseding an older stream of the same client id.
    pub async fn open_stream(
        &self,
        first: &v1::StreamingPullRequest,
    ) -> Result<StreamSession, ApiError> {
        let (settings, deadline) = StreamSettings::from_first_request(first)?;
        let name = &settings.subscription;
        let sub = self
            .store()
            .get_subscription(name)
            .await
            .map_err(store_error(name.id()))?;
        if sub.detached {
            return Err(ApiError::new(
                tonic::Code::FailedPrecondition,
                format!("Subscription {name} is detached from its topic"),
            ));
        }
        let registration = self.streams().register(name, &settings.client_id);
        tracing::debug!(subscription = %name, client_id = %settings.client_id, deadline_secs = deadline.as_secs(), max_messages = ?settings.max_messages, max_bytes = ?settings.max_bytes, "stream opened");
        Ok(StreamSession {
            service: self.clone(),
            properties: SubscriptionProperties {
                exactly_once_delivery_enabled: sub.exactly_once,
                message_ordering_enabled: sub.enable_message_ordering,
            },
            settings,
            ack_deadline: Mutex::new(deadline),
            deadline_changed: tokio::sync::Notify::new(),
            registration,
        })
    }
}

impl StreamSession {
    /// The subscription the stream pulls from.
    pub fn subscription(&self) -> &SubscriptionName {
        &self.settings.subscription
    }

    /// Cancelled when a reconnect of the same client took this stream's place: end it.
    pub fn superseded(&self) -> &tokio_util::sync::CancellationToken {
        self.registration.superseded()
    }

    /// The lease deadline deliveries currently get.
    pub fn ack_deadline(&self) -> Duration {
        *self
            .ack_deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives back the messages of a response that never reached the client (the stream ended
    /// before it could be sent): nacked, so they are delivered again at once rather than after
    /// their lease runs out. Failures are only logged: the lease expires anyway.
    pub async fn release(&self, response: v1::StreamingPullResponse) {
        let ack_ids: Vec<AckId> = response
            .received_messages
            .into_iter()
            .map(|m| AckId(m.ack_id))
            .collect();
        if ack_ids.is_empty() {
            return;
        }
        let count = ack_ids.len();
        match self
            .service
            .modify_ack_deadline_tracked(self.subscription(), &ack_ids, Duration::ZERO)
            .await
        {
            Ok(_) => {
                tracing::debug!(subscription = %self.subscription(), count, "released undelivered messages");
            }
            Err(e) => {
                tracing::debug!(subscription = %self.subscription(), count, error = %e, "cannot release undelivered messages");
            }
        }
    }

    /// Applies one request of the stream: for a later request (`first == false`) checks that it
    /// changes nothing fixed and takes a new stream deadline; then acks and modacks. With
    /// exactly-once delivery, answers with the confirmations to send; otherwise `None`.
    pub async fn apply(
        &self,
        req: v1::StreamingPullRequest,
        first: bool,
    ) -> Result<Option<v1::StreamingPullResponse>, ApiError> {
        if !first {
            self.settings.check_later_request(&req)?;
            if req.stream_ack_deadline_seconds != 0 {
                let deadline = stream_ack_deadline(req.stream_ack_deadline_seconds)?;
                *self
                    .ack_deadline
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = deadline;
                self.deadline_changed.notify_one();
            }
        }
        if req.modify_deadline_ack_ids.len() != req.modify_deadline_seconds.len() {
            return Err(ApiError::invalid(format!(
                "Invalid modify_deadline_seconds: {} deadlines for {} modify_deadline_ack_ids; \
                 both lists must have the same length",
                req.modify_deadline_seconds.len(),
                req.modify_deadline_ack_ids.len()
            )));
        }
        let acks = self.acknowledge(req.ack_ids).await?;
        let modacks = self
            .modify(req.modify_deadline_ack_ids, req.modify_deadline_seconds)
            .await?;
        if !self.properties.exactly_once_delivery_enabled || (acks.is_none() && modacks.is_none()) {
            return Ok(None);
        }
        Ok(Some(v1::StreamingPullResponse {
            acknowledge_confirmation: acks,
            modify_ack_deadline_confirmation: modacks,
            subscription_properties: Some(self.properties),
            ..Default::default()
        }))
    }

    /// Acknowledges the ack ids of a request; their confirmation, `None` when there were none.
    async fn acknowledge(
        &self,
        ack_ids: Vec<String>,
    ) -> Result<Option<AcknowledgeConfirmation>, ApiError> {
        if ack_ids.is_empty() {
            return Ok(None);
        }
        let ids = stream_ack_ids(ack_ids, "ack_ids")?;
        let outcomes = self
            .service
            .acknowledge_tracked(self.subscription(), &ids)
            .await?;
        let (ack_ids, invalid_ack_ids) = split(ids, &outcomes);
        Ok(Some(AcknowledgeConfirmation {
            ack_ids,
            invalid_ack_ids,
            ..Default::default()
        }))
    }

    /// Applies the deadline changes of a request, grouped by deadline (0 is a nack); their
    /// confirmation, `None` when there were none.
    async fn modify(
        &self,
        ack_ids: Vec<String>,
        seconds: Vec<i32>,
    ) -> Result<Option<ModifyAckDeadlineConfirmation>, ApiError> {
        if ack_ids.is_empty() {
            return Ok(None);
        }
        let ids = stream_ack_ids(ack_ids, "modify_deadline_ack_ids")?;
        let mut groups: Vec<(Duration, Vec<AckId>)> = Vec::new();
        for (id, s) in ids.into_iter().zip(seconds) {
            let deadline = limits::modify_ack_deadline(s.into()).map_err(|e| {
                ApiError::invalid(
                    e.to_string()
                        .replace("ack_deadline_seconds", "modify_deadline_seconds"),
                )
            })?;
            match groups.iter_mut().find(|(d, _)| *d == deadline) {
                Some((_, group)) => group.push(id),
                None => groups.push((deadline, vec![id])),
            }
        }
        let mut confirmation = ModifyAckDeadlineConfirmation::default();
        for (deadline, ids) in groups {
            let outcomes = self
                .service
                .modify_ack_deadline_tracked(self.subscription(), &ids, deadline)
                .await?;
            let (applied, invalid) = split(ids, &outcomes);
            confirmation.ack_ids.extend(applied);
            confirmation.invalid_ack_ids.extend(invalid);
        }
        Ok(Some(confirmation))
    }

    /// Waits up to `wait` for flow-control room and for messages, leases what fits with the
    /// stream's deadline and records it as outstanding; `None` when nothing came in time.
    pub async fn next_batch(
        &self,
        wait: Duration,
    ) -> Result<Option<v1::StreamingPullResponse>, ApiError> {
        let give_up_at = tokio::time::Instant::now() + wait;
        let (max_messages, max_bytes) = loop {
            let usage = self.registration.usage(self.service.now());
            if let Some(room) = self.settings.room(usage) {
                break room;
            }
            let left = give_up_at.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            tokio::select! {
                () = self.registration.changed() => {}
                () = tokio::time::sleep(ROOM_RECHECK.min(left)) => {}
            }
        };
        let deadline = self.ack_deadline();
        let options = PullOptions {
            max_messages,
            max_bytes: Some(max_bytes),
            wait: give_up_at.saturating_duration_since(tokio::time::Instant::now()),
            ack_deadline: Some(deadline),
        };
        let name = self.subscription();
        // A pull given up while waiting has leased nothing: the store leases only as it answers.
        let received = tokio::select! {
            biased;
            () = self.deadline_changed.notified() => return Ok(None),
            received = self.service.store().pull_with(name, options) => {
                received.map_err(store_error(name.id()))?
            }
        };
        if received.is_empty() {
            return Ok(None);
        }
        debug_assert!(
            received.len() <= max_messages,
            "the store leased more than asked"
        );
        let expires = self.service.now() + deadline;
        self.registration.delivered(
            received
                .iter()
                .map(|r| (r.ack_id.0.clone(), r.message.size())),
            expires,
        );
        tracing::debug!(subscription = %name, count = received.len(), "streamed");
        Ok(Some(v1::StreamingPullResponse {
            received_messages: received
                .into_iter()
                .map(convert::received_message)
                .collect(),
            subscription_properties: Some(self.properties),
            ..Default::default()
        }))
    }
}

/// The ack ids of a stream request; an empty one is malformed, which aborts the stream.
fn stream_ack_ids(ids: Vec<String>, field: &str) -> Result<Vec<AckId>, ApiError> {
    if ids.iter().any(String::is_empty) {
        return Err(ApiError::invalid(format!(
            "Invalid {field}: an ack id must not be empty"
        )));
    }
    Ok(ids.into_iter().map(AckId).collect())
}

/// Splits ack ids by outcome into (applied, invalid).
fn split(ids: Vec<AckId>, outcomes: &[AckOutcome]) -> (Vec<String>, Vec<String>) {
    debug_assert_eq!(ids.len(), outcomes.len(), "one outcome per ack id");
    let (applied, invalid): (Vec<_>, Vec<_>) = ids
        .into_iter()
        .zip(outcomes)
        .partition(|(_, o)| **o == AckOutcome::Applied);
    (
        applied.into_iter().map(|(id, _)| id.0).collect(),
        invalid.into_iter().map(|(id, _)| id.0).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(deadline: i32, messages: i64, bytes: i64) -> v1::StreamingPullRequest {
        v1::StreamingPullRequest {
            subscription: "projects/p/subscriptions/sub-1".into(),
            stream_ack_deadline_seconds: deadline,
            max_outstanding_messages: messages,
            max_outstanding_bytes: bytes,
            ..Default::default()
        }
    }

    #[test]
    fn the_stream_deadline_is_required_and_bounded() {
        for bad in [0, 9, 601, -1] {
            let e = StreamSettings::from_first_request(&first(bad, 0, 0)).expect_err("bad");
            assert_eq!(e.code, tonic::Code::InvalidArgument);
            assert!(e.message.contains("stream_ack_deadline_seconds"), "{e}");
        }
        for good in [10, 600] {
            let (_, d) = StreamSettings::from_first_request(&first(good, 0, 0)).expect("good");
            assert_eq!(d, Duration::from_secs(good.unsigned_abs().into()));
        }
    }

    #[test]
    fn a_subscription_is_required() {
        let mut req = first(10, 0, 0);
        req.subscription.clear();
        let e = StreamSettings::from_first_request(&req).expect_err("no subscription");
        assert_eq!(e.code, tonic::Code::InvalidArgument);
    }

    #[test]
    fn room_follows_both_limits_and_none_means_unlimited() {
        let (s, _) = StreamSettings::from_first_request(&first(10, 2, 100)).expect("valid");
        let usage = |messages, bytes| Usage { messages, bytes };
        assert_eq!(s.room(usage(0, 0)), Some((2, 100)));
        assert_eq!(s.room(usage(1, 40)), Some((1, 60)));
        assert_eq!(s.room(usage(2, 0)), None);
        assert_eq!(s.room(usage(0, 100)), None);
        let (unlimited, _) = StreamSettings::from_first_request(&first(10, -5, 0)).expect("valid");
        assert_eq!(
            unlimited.room(usage(5000, 1 << 40)),
            Some((limits::MAX_PULL_MESSAGES, MAX_BATCH_BYTES))
        );
    }

    #[test]
    fn later_requests_may_not_change_what_the_first_fixed() {
        let (s, _) = StreamSettings::from_first_request(&first(10, 2, 0)).expect("valid");
        let same = first(0, 2, 0);
        assert!(s.check_later_request(&same).is_ok(), "repeating is allowed");
        assert!(
            s.check_later_request(&v1::StreamingPullRequest::default())
                .is_ok()
        );
        let changed = v1::StreamingPullRequest {
            max_outstanding_messages: 3,
            ..Default::default()
        };
        let e = s.check_later_request(&changed).expect_err("changed");
        assert!(e.message.contains("max_outstanding_messages"), "{e}");
        let other = v1::StreamingPullRequest {
            subscription: "projects/p/subscriptions/other".into(),
            ..Default::default()
        };
        assert!(s.check_later_request(&other).is_err());
    }

    #[test]
    fn split_keeps_order_within_each_side() {
        let ids = ["a", "b", "c"].map(|s| AckId(s.into())).to_vec();
        let outcomes = [
            AckOutcome::Applied,
            AckOutcome::Invalid,
            AckOutcome::Applied,
        ];
        assert_eq!(
            split(ids, &outcomes),
            (vec!["a".to_owned(), "c".to_owned()], vec!["b".to_owned()])
        );
    }
}
