//! Messages of `/mesh/join/1` (spec: `protocol/join.md`): a device holding an invite ticket
//! redeems its one-time secret with the inviter and receives the mesh key.
//!
//! Owns the two messages and the refusal reasons. Does not own the ticket (`crate::invite`),
//! the decision (`crate::invite::InviteStore::redeem`) or the codec and its size limits
//! (`crate::transport`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Length of an invite's one-time secret: 256 bits cannot be guessed, so rate limits only
/// protect the inviter's CPU and disk, never the secret.
pub const JOIN_SECRET_LEN: usize = 32;
/// Longest name a joiner may announce (for the inviter's audit trail only): the node name
/// rule's bound (`wire::auth::MAX_NAME_LEN`).
pub const MAX_JOINER_NAME_LEN: usize = super::auth::MAX_NAME_LEN;

/// The joiner's request: the ticket's secret, and the name it will run under (informational).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The ticket's secret ([`JOIN_SECRET_LEN`] bytes; any other length is refused as unknown).
    #[serde(with = "serde_bytes")]
    pub secret: Vec<u8>,
    /// The joiner's node name, for the inviter's audit trail; never trusted for anything else.
    pub name: String,
}

impl fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "JoinRequest(name={:?})", self.name)
    }
}

/// The inviter's answer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinResponse {
    /// The secret was good: the mesh key (32 bytes), and the id of the invite it used.
    Accepted {
        #[serde(with = "serde_bytes")]
        mesh_key: Vec<u8>,
        invite: String,
    },
    /// The secret was not accepted; no key.
    Refused(JoinRefusal),
}

impl fmt::Debug for JoinResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Never print the key.
            JoinResponse::Accepted { invite, .. } => write!(f, "Accepted(invite={invite})"),
            JoinResponse::Refused(why) => write!(f, "Refused({why:?})"),
        }
    }
}

/// Why an inviter refused a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinRefusal {
    /// No invite of this node has this secret (forged, or from another node, or pruned).
    Unknown,
    /// The invite expired (by the inviter's clock).
    Expired,
    /// The invite was already used as many times as it allowed.
    UsedUp,
    /// The invite was revoked (`mesh invite --revoke`).
    Revoked,
    /// Too many join attempts at once or in a short time; retry later.
    Busy,
    /// The inviter could not record the use durably, so it did not hand out the key.
    Failed,
}

impl JoinRefusal {
    /// A sentence for the joining user.
    pub fn explain(self) -> &'static str {
        match self {
            JoinRefusal::Unknown => {
                "the inviter knows no invite with this secret (a forged or mistyped ticket, or \
                 one made by another node)"
            }
            JoinRefusal::Expired => "the ticket expired; ask for a new one with `mesh invite`",
            JoinRefusal::UsedUp => {
                "the ticket was already used; ask for a new one with `mesh invite`"
            }
            JoinRefusal::Revoked => "the ticket was revoked on the inviter",
            JoinRefusal::Busy => "the inviter is busy with other join attempts; retry shortly",
            JoinRefusal::Failed => {
                "the inviter could not record the ticket's use on its disk; retry, or ask for a \
                 new ticket"
            }
        }
    }

    /// The short name used in audit events and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            JoinRefusal::Unknown => "unknown",
            JoinRefusal::Expired => "expired",
            JoinRefusal::UsedUp => "used_up",
            JoinRefusal::Revoked => "revoked",
            JoinRefusal::Busy => "busy",
            JoinRefusal::Failed => "failed",
        }
    }
}
