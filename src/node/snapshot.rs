//! What the node shows readers: an immutable [`NodeSnapshot`] published on a `watch` channel
//! on every change, and every [`VOLATILE_PUBLISH`] while only RTTs and last-seen times move.
//! Building it is the node actor's only output besides frames on the swarm.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

use crate::admission::{AdmissionStats, MeshId};
use crate::hardware::HardwareInfo;
use crate::membership::{MembershipStats, PeerState};
use crate::wire::auth::NodeInfo;

/// This node, as the snapshot shows it.
#[derive(Clone, Debug)]
pub struct LocalSnapshot {
    pub peer_id: PeerId,
    pub name: String,
    pub mesh_id: MeshId,
    pub listen_addrs: Vec<Multiaddr>,
    pub hardware: HardwareInfo,
    pub started_at: Instant,
    pub bump: u64,
    /// Whose services this node runs; `None` without a supervisor.
    pub accept_services: Option<crate::supervisor::accept::AcceptServices>,
    /// Serves a circuit relay for members (`--relay-server`).
    pub relay_server: bool,
}

/// One peer, as the snapshot shows it.
#[derive(Clone, Debug)]
pub struct PeerSnapshot {
    pub peer_id: PeerId,
    pub state: PeerState,
    /// When `state` last changed.
    pub since: Instant,
    /// What the peer told us in its handshake; `None` for peers known only through gossip.
    pub info: Option<NodeInfo>,
    /// Addresses of open connections, else the addresses we would dial.
    pub addrs: Vec<Multiaddr>,
    pub connected: bool,
    /// `direct`, `relayed` (every open connection goes through a relay) or `none`.
    pub link: &'static str,
    pub rtt: Option<Duration>,
    pub last_seen: Option<Instant>,
}

/// Counters, for `mesh status`.
#[derive(Clone, Debug, Default)]
pub struct NodeStats {
    pub admission: AdmissionStats,
    pub membership: MembershipStats,
    pub connections: usize,
    pub mdns_foreign_mesh_ignored: u64,
    /// Membership requests from peers we have not admitted (dropped).
    pub unadmitted_requests: u64,
    /// Malformed or oversized inbound messages (dropped).
    pub malformed_inbound: u64,
    /// Dials started, and what became of dial targets (see [`super::dial`]).
    pub dials: super::dial::DialStats,
    /// Second connections of a pair closed (both sides dialed at once).
    pub duplicate_connections_closed: u64,
    /// Sync messages and delivery reports dropped on the way to the state actor (its queue
    /// was full); anti-entropy recovers what they carried. Connection notices are never
    /// dropped.
    pub sync_messages_dropped: u64,
    /// Invites redeemed here (`/mesh/join/1`): the mesh key was handed out.
    pub joins_accepted: u64,
    /// Join requests refused here (forged, expired, used, revoked, busy).
    pub joins_refused: u64,
    /// Connections of removed nodes (`mesh remove`) closed on arrival.
    pub removed_refused: u64,
    /// The rendezvous points this node uses (`--rendezvous`).
    pub rendezvous: Vec<crate::discovery::rendezvous::PointStatus>,
    /// The rendezvous point this node serves (`--rendezvous-server`), if any.
    pub point: Option<PointStats>,
    /// Where a member saw this node when that address is not its own (behind NAT).
    pub behind_nat: Option<String>,
    /// The relay this node listens through, and whether the reservation is accepted.
    pub relayed_via: Option<(PeerId, bool)>,
    /// What the relay this node serves has done (`--relay-server`).
    pub relay: RelayStats,
    /// Hole punches (DCUtR) that made a relayed link direct, and that failed.
    pub hole_punches: u64,
    pub hole_punch_failures: u64,
}

/// What the relay this node serves has done.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayStats {
    /// Reservations accepted (renewals included).
    pub reservations: u64,
    /// Circuits opened.
    pub circuits: u64,
    /// Requests denied: not an admitted member, or past a limit.
    pub denied: u64,
}

/// What the rendezvous point this node serves has done.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PointStats {
    /// Serving anyone (`--rendezvous-open`), not only admitted members.
    pub open: bool,
    /// Registrations held now.
    pub registrations: usize,
    /// Registrations accepted since start (renewals included).
    pub registered: u64,
    /// Discovery requests answered.
    pub discoveries: u64,
    /// Registrations and discoveries refused by the point (limits, bad TTL or record).
    pub refused: u64,
    /// Requests dropped unanswered because the peer was not admitted (members-only point).
    pub not_admitted: u64,
}

/// An immutable view of the node for readers. Republished on every state change, and every
/// [`VOLATILE_PUBLISH`] while RTTs and last-seen times move.
#[derive(Clone, Debug)]
pub struct NodeSnapshot {
    /// Increases on every change of membership, peer info or listen addresses; not on RTT or
    /// last-seen updates. Clients long-poll on it.
    pub version: u64,
    pub taken_at: Instant,
    pub local: LocalSnapshot,
    /// Peers ordered by name, then id.
    pub peers: Vec<PeerSnapshot>,
    pub stats: NodeStats,
}
