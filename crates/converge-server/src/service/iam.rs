//! The IAM mixin (`google.iam.v1.IAMPolicy`) on topics, subscriptions, snapshots and schemas.
//!
//! Policies are stored and returned, **not enforced**: converge has no authentication yet, so
//! every caller may do everything, and TestIamPermissions answers every permission asked for.
//! Storing them lets tools that manage policies (Terraform, `gcloud ... set-iam-policy`, the
//! client libraries) run against converge unchanged.
//!
//! A policy is one store document of kind [`POLICY_KIND`] keyed by the resource name. Its `etag`
//! is an 8-byte version counter bumped on every SetIamPolicy; a SetIamPolicy carrying an etag
//! other than the current one is `ABORTED`, as the real service answers a concurrent change
//! (read-modify-write clients retry). A resource without a policy answers an empty policy with
//! the real service's etag for it (`ACAB`).

use bytes::Bytes;
use converge_core::name::{SnapshotName, SubscriptionName, TopicName};
use prost::Message as _;

use super::schemas::SchemaName;
use super::{ApiError, PubSub, store_error};
use crate::grpc::iam::proto as iam;

/// The document kind of IAM policies.
const POLICY_KIND: &str = "iam-policy";

/// The etag of a resource that has no policy yet (base64 `ACAB`, what the real service shows).
const EMPTY_POLICY_ETAG: &[u8] = &[0x00, 0x20, 0x01];

/// Serializes SetIamPolicy so that the etag check and the write are one step.
static POLICY_WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The etag following `etag`: the next value of the 8-byte version counter.
fn next_etag(etag: &[u8]) -> Vec<u8> {
    let version = <[u8; 8]>::try_from(etag).map_or(0, u64::from_be_bytes);
    version.wrapping_add(1).to_be_bytes().to_vec()
}

impl PubSub {
    /// `NOT_FOUND` unless `resource` names an existing topic, subscription, snapshot or schema;
    /// `INVALID_ARGUMENT` for a name of no such kind.
    async fn check_iam_resource(&self, resource: &str) -> Result<(), ApiError> {
        let kind = resource.split('/').nth(2).unwrap_or_default();
        match kind {
            "topics" => {
                let name = TopicName::parse(resource)?;
                self.store()
                    .get_topic(&name)
                    .await
                    .map_err(store_error(name.id()))?;
            }
            "subscriptions" => {
                let name = SubscriptionName::parse(resource)?;
                self.store()
                    .get_subscription(&name)
                    .await
                    .map_err(store_error(name.id()))?;
            }
            "snapshots" => {
                let name = SnapshotName::parse(resource)?;
                self.store()
                    .get_snapshot(&name)
                    .await
                    .map_err(store_error(name.id()))?;
            }
            "schemas" => {
                let name = SchemaName::parse(resource)?;
                if name.revision.is_some() {
                    return Err(ApiError::invalid(format!(
                        "Invalid resource \"{resource}\": IAM policies apply to a schema, not \
                         to one of its revisions"
                    )));
                }
                self.schema_head(&name).await?;
            }
            _ => {
                return Err(ApiError::invalid(format!(
                    "Invalid resource \"{resource}\": expected a topic, subscription, snapshot \
                     or schema name"
                )));
            }
        }
        Ok(())
    }

    /// The stored policy of `resource`, or the empty one.
    async fn stored_policy(&self, resource: &str) -> Result<iam::Policy, ApiError> {
        let stored = self
            .store()
            .get_document(POLICY_KIND, resource)
            .await
            .map_err(ApiError::from)?;
        let Some(bytes) = stored else {
            return Ok(iam::Policy {
                etag: EMPTY_POLICY_ETAG.to_vec(),
                ..Default::default()
            });
        };
        iam::Policy::decode(bytes).map_err(|e| {
            ApiError::new(
                tonic::Code::Internal,
                format!("a stored IAM policy cannot be decoded: {e}"),
            )
        })
    }

    /// Drops the policy of a deleted resource, so a resource created again under the same name
    /// starts without one.
    pub(super) async fn forget_iam_policy(&self, resource: &str) -> Result<(), ApiError> {
        self.store()
            .delete_document(POLICY_KIND, resource)
            .await
            .map(drop)
            .map_err(ApiError::from)
    }

    /// GetIamPolicy: the resource's policy (stored, not enforced).
    pub async fn get_iam_policy(
        &self,
        req: iam::GetIamPolicyRequest,
    ) -> Result<iam::Policy, ApiError> {
        if let Some(options) = &req.options
            && ![0, 1, 3].contains(&options.requested_policy_version)
        {
            return Err(ApiError::invalid(format!(
                "Invalid requested_policy_version {}: valid values are 0, 1 and 3",
                options.requested_policy_version
            )));
        }
        self.check_iam_resource(&req.resource).await?;
        self.stored_policy(&req.resource).await
    }

    /// SetIamPolicy: replaces the resource's policy and bumps its etag; `ABORTED` when the
    /// request's etag is set and is not the current one.
    pub async fn set_iam_policy(
        &self,
        req: iam::SetIamPolicyRequest,
    ) -> Result<iam::Policy, ApiError> {
        let Some(mut policy) = req.policy else {
            return Err(ApiError::invalid(
                "Invalid SetIamPolicyRequest: the policy is required",
            ));
        };
        if ![0, 1, 3].contains(&policy.version) {
            return Err(ApiError::invalid(format!(
                "Invalid policy version {}: valid values are 0, 1 and 3",
                policy.version
            )));
        }
        if let Some(binding) = policy.bindings.iter().find(|b| b.role.is_empty()) {
            return Err(ApiError::invalid(format!(
                "Invalid policy: a binding has no role (members {:?})",
                binding.members
            )));
        }
        self.check_iam_resource(&req.resource).await?;
        let _guard = POLICY_WRITES.lock().await;
        let current = self.stored_policy(&req.resource).await?;
        if !policy.etag.is_empty() && policy.etag != current.etag {
            return Err(ApiError::new(
                tonic::Code::Aborted,
                "There were concurrent policy changes. Please retry the whole read-modify-write \
                 with exponential backoff.",
            ));
        }
        policy.etag = next_etag(&current.etag);
        if policy.version == 0 {
            policy.version = 1;
        }
        let bytes = Bytes::from(policy.encode_to_vec());
        self.store()
            .put_document(POLICY_KIND, &req.resource, bytes)
            .await
            .map_err(ApiError::from)?;
        tracing::debug!(resource = %req.resource, bindings = policy.bindings.len(), "IAM policy set");
        Ok(policy)
    }

    /// TestIamPermissions: every permission asked for, as no authentication restricts callers.
    pub async fn test_iam_permissions(
        &self,
        req: iam::TestIamPermissionsRequest,
    ) -> Result<iam::TestIamPermissionsResponse, ApiError> {
        if let Some(bad) = req.permissions.iter().find(|p| p.contains('*')) {
            return Err(ApiError::invalid(format!(
                "Invalid permission \"{bad}\": permissions with wildcards (*) are not allowed"
            )));
        }
        self.check_iam_resource(&req.resource).await?;
        Ok(iam::TestIamPermissionsResponse {
            permissions: req.permissions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_count_up_from_the_empty_policy() {
        let first = next_etag(EMPTY_POLICY_ETAG);
        assert_eq!(first, 1u64.to_be_bytes());
        let second = next_etag(&first);
        assert_eq!(second, 2u64.to_be_bytes());
        assert_ne!(second, first);
    }
}
