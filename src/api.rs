//! The local control API: one typed contract shared by the server (in the agent) and the client
//! (the CLI). HTTP/1.1 + JSON on loopback, versioned under `/v1`. Spec:
//! `protocol/control-api.md`.
//!
//! # Route table
//!
//! | method | path | response |
//! |---|---|---|
//! | GET | `/v1/status` | [`StatusResponse`] |
//! | GET | `/v1/peers` | array of [`PeerEntry`], self first; header `x-mesh-version` |
//! | GET | `/v1/peers?wait=V&timeout_ms=T` | long poll: answers when the snapshot version differs from `V`, or after `T` ms (max 30000) |
//! | GET | `/v1/state` | [`StateResponse`] |
//! | POST | `/v1/tags` | body [`TagRequest`]; sets one of this node's tags; [`TagResponse`] |
//! | DELETE | `/v1/tags/{key}` | removes one of this node's tags; [`TagResponse`] |
//!
//! Errors are `{"error": "..."}` with a 4xx/5xx status.
//!
//! Owns the wire types and their conversion from a [`NodeSnapshot`]. Does not own the HTTP
//! server ([`server`]) or client ([`client`]) mechanics.

pub mod client;
pub mod server;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::hardware::HardwareInfo;
use crate::identity::short_id;
use crate::node::NodeSnapshot;
use crate::state::actor::StateSnapshot;
use crate::sync::{SyncStats, SyncStatus};

/// Default address of the API: loopback only, so nothing off the machine can reach it.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7401";
/// Response header carrying the snapshot version, for long polling.
pub const VERSION_HEADER: &str = "x-mesh-version";
/// Longest long poll the server honours: clients re-poll; a cap keeps idle connections few.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// One row of `mesh peers`: a peer, or this node (`self: true`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// Full node id (base58 libp2p peer id).
    pub id: String,
    pub short_id: String,
    /// `null` for a peer known only through gossip, not yet connected to.
    pub name: Option<String>,
    #[serde(rename = "self")]
    pub is_self: bool,
    /// `alive`, `suspect`, `dead` or `left`.
    pub state: String,
    /// Milliseconds since `state` last changed.
    pub state_since_ms_ago: u64,
    pub connected: bool,
    /// Multiaddrs: of open connections, else the ones we would dial; for self, listen addrs.
    pub addrs: Vec<String>,
    pub rtt_ms: Option<f64>,
    pub last_seen_ms_ago: Option<u64>,
    pub os: Option<String>,
    pub arch: Option<String>,
    pub device_class: Option<String>,
    pub profile: Option<String>,
    pub score: Option<u8>,
    pub version: Option<String>,
    /// The node's tags, from the replicated document (empty until synced).
    pub tags: BTreeMap<String, String>,
}

/// Body of `POST /v1/tags`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TagRequest {
    pub key: String,
    pub value: String,
}

/// Answer of the tag routes: whether the document changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TagResponse {
    pub changed: bool,
}

/// Sync status of one peer in `GET /v1/state`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerSyncEntry {
    pub id: String,
    pub name: Option<String>,
    pub connected: bool,
    pub status: SyncStatus,
}

/// `GET /v1/state`: the replicated document at a glance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateResponse {
    /// `NUMBER/BASE`: the epoch number and the first 12 characters of its base change hash.
    pub epoch: String,
    /// Changes in the document's history.
    pub changes: usize,
    pub heads: Vec<String>,
    /// Size of the document file on disk.
    pub file_bytes: u64,
    pub nodes: usize,
    pub services: usize,
    pub instances: usize,
    pub leases: usize,
    pub peers: Vec<PeerSyncEntry>,
    pub sync: SyncStats,
    /// Entries written by peers that do not fit the schema (ignored).
    pub skipped_entries: u64,
    pub recovered_from_corruption: bool,
}

/// Peer counts by state, self excluded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerCounts {
    pub alive: usize,
    pub suspect: usize,
    pub dead: usize,
    pub left: usize,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub id: String,
    pub name: String,
    pub mesh_id: String,
    pub version: String,
    pub listen_addrs: Vec<String>,
    pub profile: String,
    pub score: u8,
    pub device_class: String,
    pub uptime_s: u64,
    pub peers: PeerCounts,
    pub hardware: HardwareInfo,
    pub counters: Counters,
}

/// Counters of dropped and refused traffic: what a hostile or misconfigured peer costs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub connections: usize,
    pub admitted: u64,
    pub admission_bad_proof: u64,
    pub admission_denied: u64,
    pub admission_timeout: u64,
    pub admission_protocol: u64,
    pub admission_transport: u64,
    pub admission_abandoned: u64,
    pub refused_in_backoff: u64,
    pub unadmitted_requests: u64,
    pub malformed_inbound: u64,
    pub mdns_foreign_mesh_ignored: u64,
    pub membership_datagrams_in: u64,
    pub membership_datagrams_out: u64,
    pub membership_datagrams_rejected: u64,
    pub membership_datagrams_dropped: u64,
}

/// Error body of every non-2xx response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// The `mesh peers` rows for a snapshot: self first, then peers by name.
pub fn peer_entries(snap: &NodeSnapshot, state: &StateSnapshot, now: Instant) -> Vec<PeerEntry> {
    let tags = |id: &str| {
        state
            .state
            .nodes
            .get(id)
            .map(|n| n.tags.clone())
            .unwrap_or_default()
    };
    let l = &snap.local;
    let hw = &l.hardware;
    let mut rows = vec![PeerEntry {
        id: l.peer_id.to_base58(),
        short_id: short_id(&l.peer_id),
        name: Some(l.name.clone()),
        is_self: true,
        state: "alive".into(),
        state_since_ms_ago: ms(now.saturating_duration_since(l.started_at)),
        connected: true,
        addrs: l.listen_addrs.iter().map(|a| a.to_string()).collect(),
        rtt_ms: None,
        last_seen_ms_ago: Some(0),
        os: Some(hw.os.clone()),
        arch: Some(hw.arch.clone()),
        device_class: Some(hw.device_class.to_string()),
        profile: Some(hw.profile.to_string()),
        score: Some(hw.score),
        version: Some(crate::AGENT_VERSION.to_string()),
        tags: tags(&l.peer_id.to_base58()),
    }];
    for p in &snap.peers {
        let info = p.info.as_ref();
        rows.push(PeerEntry {
            id: p.peer_id.to_base58(),
            short_id: short_id(&p.peer_id),
            name: info.map(|i| i.name.clone()),
            is_self: false,
            state: p.state.to_string(),
            state_since_ms_ago: ms(now.saturating_duration_since(p.since)),
            connected: p.connected,
            addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
            rtt_ms: p.rtt.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
            last_seen_ms_ago: p.last_seen.map(|t| ms(now.saturating_duration_since(t))),
            os: info.map(|i| i.hardware.os.clone()),
            arch: info.map(|i| i.hardware.arch.clone()),
            device_class: info.map(|i| i.hardware.device_class.to_string()),
            profile: info.map(|i| i.hardware.profile.to_string()),
            score: info.map(|i| i.hardware.score),
            version: info.map(|i| i.agent_version.clone()),
            tags: tags(&p.peer_id.to_base58()),
        });
    }
    rows
}

/// The status of a snapshot.
pub fn status(snap: &NodeSnapshot, now: Instant) -> StatusResponse {
    use crate::membership::PeerState;
    let l = &snap.local;
    let mut counts = PeerCounts::default();
    for p in &snap.peers {
        match p.state {
            PeerState::Alive => counts.alive += 1,
            PeerState::Suspect => counts.suspect += 1,
            PeerState::Dead => counts.dead += 1,
            PeerState::Left => counts.left += 1,
        }
    }
    let s = &snap.stats;
    StatusResponse {
        id: l.peer_id.to_base58(),
        name: l.name.clone(),
        mesh_id: l.mesh_id.to_string(),
        version: crate::AGENT_VERSION.to_string(),
        listen_addrs: l.listen_addrs.iter().map(|a| a.to_string()).collect(),
        profile: l.hardware.profile.to_string(),
        score: l.hardware.score,
        device_class: l.hardware.device_class.to_string(),
        uptime_s: now.saturating_duration_since(l.started_at).as_secs(),
        peers: counts,
        hardware: l.hardware.clone(),
        counters: Counters {
            connections: s.connections,
            admitted: s.admission.admitted,
            admission_bad_proof: s.admission.bad_proof,
            admission_denied: s.admission.denied,
            admission_timeout: s.admission.timeout,
            admission_protocol: s.admission.protocol,
            admission_transport: s.admission.transport,
            admission_abandoned: s.admission.abandoned,
            refused_in_backoff: s.admission.refused_in_backoff,
            unadmitted_requests: s.unadmitted_requests,
            malformed_inbound: s.malformed_inbound,
            mdns_foreign_mesh_ignored: s.mdns_foreign_mesh_ignored,
            membership_datagrams_in: s.membership.datagrams_in,
            membership_datagrams_out: s.membership.datagrams_out,
            membership_datagrams_rejected: s.membership.datagrams_rejected,
            membership_datagrams_dropped: s.membership.datagrams_dropped,
        },
    }
}

/// The state summary of a snapshot.
pub fn state_summary(state: &StateSnapshot) -> StateResponse {
    StateResponse {
        epoch: state.epoch.to_string(),
        changes: state.changes,
        heads: state.heads.clone(),
        file_bytes: state.file_bytes,
        nodes: state.state.nodes.len(),
        services: state.state.services.len(),
        instances: state.state.instances.len(),
        leases: state.state.leases.len(),
        peers: state
            .peers
            .iter()
            .map(|p| PeerSyncEntry {
                id: p.peer.to_base58(),
                name: state
                    .state
                    .nodes
                    .get(&p.peer.to_base58())
                    .map(|n| n.name.clone()),
                connected: p.connected,
                status: p.status,
            })
            .collect(),
        sync: state.sync.clone(),
        skipped_entries: state.hydrate.skipped_entries,
        recovered_from_corruption: state.recovered_from_corruption,
    }
}
