//! Messages of `/mesh/membership/1` (spec: `protocol/membership.md`): foca datagrams and
//! leave notices. Owns the types only; membership decisions are [`crate::membership`]'s.

use serde::{Deserialize, Serialize};

/// Requests of `/mesh/membership/1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MembershipRequest {
    /// One foca datagram.
    Datagram(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A node is shutting down gracefully: the sender itself when `peer` is `None`, else a
    /// node whose notice the sender received first-hand and relays once. `bump` is the leaving
    /// node's incarnation.
    Leave {
        #[serde(default, with = "serde_bytes")]
        peer: Option<Vec<u8>>,
        bump: u64,
    },
}

/// Responses of `/mesh/membership/1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MembershipResponse {
    Ack,
    /// The receiver has not admitted the sender; nothing was processed.
    NotAdmitted,
}
