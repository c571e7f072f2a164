//! proto3 JSON of snapshots and seek: `Snapshot`, its create/update/list bodies, and
//! `SeekRequest` whose oneof target is either a time or a snapshot name.

use super::codec::{Map, Msg, Opt, Repeated, Str};
use super::object::proto_message;
use super::wkt::{Mask, Ts};
use crate::proto::{
    CreateSnapshotRequest, ListSnapshotsResponse, SeekRequest, SeekResponse, Snapshot,
    UpdateSnapshotRequest, seek_request,
};

proto_message! {
    Snapshot = "google.pubsub.v1.Snapshot" {
        name: Str,
        topic: Str,
        expire_time: Opt<Ts>,
        labels: Map<Str>,
    }
}

proto_message! {
    CreateSnapshotRequest = "google.pubsub.v1.CreateSnapshotRequest" {
        name: Str,
        subscription: Str,
        labels: Map<Str>,
        tags: Map<Str>,
    }
}

proto_message! {
    UpdateSnapshotRequest = "google.pubsub.v1.UpdateSnapshotRequest" {
        snapshot: Opt<Msg<Snapshot>>,
        update_mask: Opt<Mask>,
    }
}

proto_message! {
    ListSnapshotsResponse = "google.pubsub.v1.ListSnapshotsResponse" {
        snapshots: Repeated<Msg<Snapshot>>,
        next_page_token: Str,
    }
}

proto_message! {
    SeekRequest = "google.pubsub.v1.SeekRequest" {
        subscription: Str,
    }
    oneof target {
        time => seek_request::Target::Time: Ts,
        snapshot => seek_request::Target::Snapshot: Str,
    }
}

proto_message! {
    SeekResponse = "google.pubsub.v1.SeekResponse" {}
}
