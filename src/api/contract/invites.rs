//! The contract of the invite and join routes (`/v1/invites`, `/v1/join`): request and
//! response bodies as they travel. Leaf of `contract`: imports nothing of it.

use serde::{Deserialize, Serialize};

/// Body of `POST /v1/invites`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteCreateRequest {
    /// Lifetime in seconds (default 3600, at most a week).
    pub ttl_secs: u64,
    /// Uses allowed (default 1).
    pub uses: u32,
    pub name: Option<String>,
}

/// One invite in `GET /v1/invites` (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteEntry {
    pub id: String,
    pub name: Option<String>,
    /// Unix seconds, by this node's clock.
    pub created: u64,
    pub expires: u64,
    pub uses: u32,
    pub used: u32,
    /// `open`, `used`, `expired` or `revoked`.
    pub status: String,
}

/// Answer of `POST /v1/invites`: the invite and its ticket (the only time the ticket, and so
/// the secret, is shown).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteCreated {
    pub invite: InviteEntry,
    pub ticket: String,
    /// The inviter (this node) and its mesh, as the ticket names them.
    pub inviter: String,
    pub mesh_id: String,
    /// The addresses the ticket carries.
    pub addrs: Vec<String>,
}

/// Body of `POST /v1/join`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinApiRequest {
    pub ticket: String,
}

/// Answer of `POST /v1/join`: the key was received and stored; the agent restarts with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinApiResponse {
    pub mesh_id: String,
    pub inviter: String,
    pub invite: String,
    /// Where the key was stored.
    pub key_file: String,
    /// Whether the agent restarts now to run with the key (it does whenever the join worked).
    pub restarting: bool,
}
