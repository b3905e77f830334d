//! Messages of `/mesh/sync/1` (spec: `protocol/sync.md`): Automerge sync messages, snapshot
//! offers and snapshot parts, each tagged with the sender's state epoch ([`EpochId`]).
//!
//! Owns the types only. The size limits of the protocol live with its codec
//! (`transport::MAX_SYNC_MESSAGE`, `MAX_SYNC_PAYLOAD`, `SNAPSHOT_PART_BYTES`); sync sessions are
//! [`crate::sync`]'s, the document and its epochs [`crate::state`]'s.

use serde::{Deserialize, Serialize};

/// Identifies a state epoch: its number and the hash of its base change (hex). Epoch 0's base
/// is the genesis change.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EpochId {
    pub number: u64,
    pub base: String,
}

impl EpochId {
    /// Whether `self` replaces `other`: a higher number, or the same number with a lower base
    /// hash (two members that compacted concurrently from different heads agree on the
    /// winner without talking).
    pub fn supersedes(&self, other: &EpochId) -> bool {
        self.number > other.number || (self.number == other.number && self.base < other.base)
    }
}

impl std::fmt::Display for EpochId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.number,
            &self.base[..self.base.len().min(12)]
        )
    }
}

/// Requests of `/mesh/sync/1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// One Automerge sync message, for the sender's state epoch.
    Sync {
        epoch: EpochId,
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
        /// Set when this exchange is part of a push of the sender's to every member it
        /// believes alive, all of them linked: the receiver does not relay what it brings.
        /// Absent (false) from older agents, which are then relayed for as before; older
        /// agents ignore it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        everyone: bool,
    },
    /// Asks for the receiver's whole document in one response (first release; answered only
    /// while it fits `transport::MAX_SYNC_PAYLOAD`). Current nodes use [`SyncRequest::FetchSnapshotPart`].
    FetchSnapshot,
    /// Asks for part of the receiver's snapshot (`save()` format): from `offset`, of the
    /// snapshot `id` (`None` for the first part: the receiver takes a snapshot and names it).
    FetchSnapshotPart { offset: u64, id: Option<u64> },
    /// The sender has changes for the receiver that do not fit one sync message: fetch its
    /// snapshot (in parts) and merge it.
    SnapshotOffer { epoch: EpochId },
}

/// Responses of `/mesh/sync/1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SyncResponse {
    /// The receiver's next sync message, if it has one.
    Message {
        epoch: EpochId,
        #[serde(default, with = "serde_bytes")]
        message: Option<Vec<u8>>,
    },
    /// The receiver is on another state epoch (the side on the older one fetches a snapshot).
    EpochMismatch { epoch: EpochId },
    /// The receiver's whole document (`save()` format).
    Snapshot {
        epoch: EpochId,
        #[serde(with = "serde_bytes")]
        doc: Vec<u8>,
    },
    /// One part of the receiver's snapshot: bytes `offset..offset + bytes.len()` of `total`.
    /// Every part of one snapshot carries the same `id`.
    SnapshotPart {
        epoch: EpochId,
        id: u64,
        total: u64,
        offset: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The receiver's answer does not fit one sync message: fetch its snapshot and merge it.
    SnapshotOffer { epoch: EpochId },
    /// The message was malformed, or the sender is in backoff for sending one.
    Refused,
    /// The receiver has not admitted the sender.
    NotAdmitted,
}
