//! Snapshots and Seek: a later version of converge implements them. Until then every RPC answers
//! `UNIMPLEMENTED`, never a fake success, so clients fail loudly instead of believing a snapshot
//! exists.

use super::{ApiError, PubSub};
use crate::proto as v1;

impl PubSub {
    /// GetSnapshot: not implemented yet.
    pub async fn get_snapshot(
        &self,
        req: v1::GetSnapshotRequest,
    ) -> Result<v1::Snapshot, ApiError> {
        let _ = req;
        Err(ApiError::unimplemented("GetSnapshot"))
    }

    /// ListSnapshots: not implemented yet.
    pub async fn list_snapshots(
        &self,
        req: v1::ListSnapshotsRequest,
    ) -> Result<v1::ListSnapshotsResponse, ApiError> {
        let _ = req;
        Err(ApiError::unimplemented("ListSnapshots"))
    }

    /// CreateSnapshot: not implemented yet.
    pub async fn create_snapshot(
        &self,
        req: v1::CreateSnapshotRequest,
    ) -> Result<v1::Snapshot, ApiError> {
        let _ = req;
        Err(ApiError::unimplemented("CreateSnapshot"))
    }

    /// UpdateSnapshot: not implemented yet.
    pub async fn update_snapshot(
        &self,
        req: v1::UpdateSnapshotRequest,
    ) -> Result<v1::Snapshot, ApiError> {
        let _ = req;
        Err(ApiError::unimplemented("UpdateSnapshot"))
    }

    /// DeleteSnapshot: not implemented yet.
    pub async fn delete_snapshot(&self, req: v1::DeleteSnapshotRequest) -> Result<(), ApiError> {
        let _ = req;
        Err(ApiError::unimplemented("DeleteSnapshot"))
    }

    /// Seek: not implemented yet.
    pub async fn seek(&self, req: v1::SeekRequest) -> Result<v1::SeekResponse, ApiError> {
        let _ = req;
        Err(ApiError::unimplemented("Seek"))
    }
}
