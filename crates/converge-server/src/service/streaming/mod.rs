//! StreamingPull in the service layer: stream sessions, the registry of what each stream has
//! out (server-side flow control), and the ack paths every door shares.
//!
//! Flow control choice: outstanding messages are tracked per stream in a registry owned by the
//! service ([`StreamRegistry`]), and every acknowledgement or deadline change, whether it
//! arrives on the stream or through the unary Acknowledge / ModifyAckDeadline RPCs (which the
//! official Python client uses), goes through [`PubSub::acknowledge_tracked`] or
//! [`PubSub::modify_ack_deadline_tracked`], which report to it. Leases that run out stop
//! counting by their expiry, so a forgotten message frees its room after one lease at most.

mod registry;
mod session;

use std::collections::BTreeMap;
use std::time::Duration;

use converge_core::name::SubscriptionName;
use converge_core::{AckId, AckOutcome};

pub use registry::{Registration, StreamRegistry, Usage};
pub use session::{MAX_BATCH_BYTES, ROOM_RECHECK, StreamSession, StreamSettings};

use super::error::ErrorInfo;
use super::{ApiError, PubSub, store_error};

/// `ErrorInfo.reason` of per-ack-id failures with exactly-once delivery, as the official
/// clients expect it.
pub const EXACTLY_ONCE_REASON: &str = "EXACTLY_ONCE_ACKID_FAILURE";

/// `ErrorInfo.domain` of Pub/Sub errors.
pub const PUBSUB_DOMAIN: &str = "pubsub.googleapis.com";

/// The metadata value of an ack id that can never succeed (unknown, stale, expired, acked).
pub const PERMANENT_FAILURE_INVALID_ACK_ID: &str = "PERMANENT_FAILURE_INVALID_ACK_ID";

/// The error an exactly-once Acknowledge or ModifyAckDeadline answers when some ack ids are
/// invalid: `INVALID_ARGUMENT` with an `ErrorInfo` naming each of them, which the official
/// clients turn into per-message `AcknowledgeError(INVALID_ACK_ID)` outcomes (the others in the
/// request succeeded).
pub fn invalid_ack_ids_error<'a>(invalid: impl IntoIterator<Item = &'a AckId>) -> ApiError {
    let metadata: BTreeMap<String, String> = invalid
        .into_iter()
        .map(|id| (id.0.clone(), PERMANENT_FAILURE_INVALID_ACK_ID.to_owned()))
        .collect();
    debug_assert!(
        !metadata.is_empty(),
        "an ack failure names at least one ack id"
    );
    ApiError::invalid(
        "Some acknowledgement ids in the request were invalid. This could be because the \
         acknowledgement ids have expired or the acknowledgement ids were malformed.",
    )
    .with_error_info(ErrorInfo {
        reason: EXACTLY_ONCE_REASON.to_owned(),
        domain: PUBSUB_DOMAIN.to_owned(),
        metadata,
    })
}

impl PubSub {
    /// The open StreamingPull streams, for flow control.
    pub fn streams(&self) -> &StreamRegistry {
        &self.inner.streams
    }

    /// Acknowledges in the store and frees the streams' flow-control room; one outcome per ack
    /// id. Every ack id stops counting, valid or not: an invalid one was not out any more.
    pub async fn acknowledge_tracked(
        &self,
        name: &SubscriptionName,
        ids: &[AckId],
    ) -> Result<Vec<AckOutcome>, ApiError> {
        let outcomes = self
            .store()
            .acknowledge(name, ids)
            .await
            .map_err(store_error(name.id()))?;
        self.streams().settled(name, ids);
        Ok(outcomes)
    }

    /// Changes lease deadlines in the store and tells the streams: a nack (zero) frees room,
    /// an extension keeps the messages counting until their new deadline.
    pub async fn modify_ack_deadline_tracked(
        &self,
        name: &SubscriptionName,
        ids: &[AckId],
        deadline: Duration,
    ) -> Result<Vec<AckOutcome>, ApiError> {
        let outcomes = self
            .store()
            .modify_ack_deadline(name, ids, deadline)
            .await
            .map_err(store_error(name.id()))?;
        if deadline.is_zero() {
            self.streams().settled(name, ids);
        } else {
            let extended: Vec<AckId> = ids
                .iter()
                .zip(&outcomes)
                .filter(|(_, o)| **o == AckOutcome::Applied)
                .map(|(id, _)| id.clone())
                .collect();
            self.streams()
                .extended(name, &extended, self.now() + deadline);
        }
        Ok(outcomes)
    }

    /// With exactly-once delivery on the subscription, the error naming the invalid ack ids of
    /// a unary Acknowledge or ModifyAckDeadline; without it invalid ack ids are silently fine.
    /// The subscription is read only when some ack id failed.
    pub async fn check_exactly_once(
        &self,
        name: &SubscriptionName,
        ids: &[AckId],
        outcomes: &[AckOutcome],
    ) -> Result<(), ApiError> {
        debug_assert_eq!(ids.len(), outcomes.len(), "one outcome per ack id");
        let invalid: Vec<&AckId> = ids
            .iter()
            .zip(outcomes)
            .filter(|(_, o)| **o == AckOutcome::Invalid)
            .map(|(id, _)| id)
            .collect();
        if invalid.is_empty() {
            return Ok(());
        }
        let sub = self
            .store()
            .get_subscription(name)
            .await
            .map_err(store_error(name.id()))?;
        if !sub.exactly_once {
            return Ok(());
        }
        tracing::debug!(subscription = %name, invalid = invalid.len(), "exactly-once: invalid ack ids");
        Err(invalid_ack_ids_error(invalid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_ack_ids_carry_one_permanent_failure_each() {
        let ids = [AckId("a".into()), AckId("b".into())];
        let e = invalid_ack_ids_error(&ids);
        assert_eq!(e.code, tonic::Code::InvalidArgument);
        let info = e.error_info.clone().expect("an ErrorInfo");
        assert_eq!(info.reason, EXACTLY_ONCE_REASON);
        assert_eq!(info.domain, PUBSUB_DOMAIN);
        assert_eq!(info.metadata.len(), 2);
        assert!(
            info.metadata
                .values()
                .all(|v| v == PERMANENT_FAILURE_INVALID_ACK_ID)
        );
    }

    #[test]
    fn the_grpc_status_carries_the_error_info_in_its_details() {
        use tonic_types::StatusExt as _;
        let status = invalid_ack_ids_error(&[AckId("ack-1".into())]).to_status();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let info = status
            .get_details_error_info()
            .expect("ErrorInfo in the details");
        assert_eq!(info.reason, EXACTLY_ONCE_REASON);
        assert_eq!(info.domain, PUBSUB_DOMAIN);
        assert_eq!(
            info.metadata.get("ack-1").map(String::as_str),
            Some(PERMANENT_FAILURE_INVALID_ACK_ID)
        );
    }

    #[test]
    fn the_rest_error_carries_the_error_info_in_its_details() {
        let json = invalid_ack_ids_error(&[AckId("ack-1".into())]).to_json();
        let detail = &json["error"]["details"][0];
        assert_eq!(detail["@type"], "type.googleapis.com/google.rpc.ErrorInfo");
        assert_eq!(detail["reason"], EXACTLY_ONCE_REASON);
        assert_eq!(
            detail["metadata"]["ack-1"],
            PERMANENT_FAILURE_INVALID_ACK_ID
        );
        assert_eq!(json["error"]["status"], "INVALID_ARGUMENT");
    }
}
