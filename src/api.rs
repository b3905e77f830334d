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
//! | GET | `/v1/services` | array of [`ServiceEntry`], mesh-wide, by name |
//! | POST | `/v1/services` | body [`ServiceAddRequest`]; [`ServiceAddResponse`] |
//! | DELETE | `/v1/services/{name}` | removes a service (stops it); [`ServiceActionResponse`] |
//! | POST | `/v1/services/{name}/start` | also `stop`, `restart`; [`ServiceActionResponse`] |
//! | GET | `/v1/services/{name}/logs?n=N&offset=O` | [`LogsResponse`], from the node running it |
//! | GET | `/v1/ports?node=NAME` | array of [`PortEntry`] (leases, mesh-wide or one node) |
//! | GET | `/v1/ports/listening?node=NAME` | [`ListeningResponse`], asked of that node |
//! | GET | `/v1/events?node=NAME&after=SEQ&limit=N&wait_ms=T` | [`EventsResponse`] |
//!
//! Errors are `{"error": "..."}` with a 4xx/5xx status.
//!
//! Reads (GET) are open to local users; every other method needs the API token
//! ([`auth`]), `Content-Type: application/json`, no foreign `Origin`, and every request a
//! `Host` naming the API (`server::guard`).
//!
//! Owns the wire types and their conversion from a [`NodeSnapshot`]. Does not own the HTTP
//! server ([`server`]) or client ([`client`]) mechanics.

pub mod auth;
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
pub use crate::state::now_ms;
use crate::state::{InstanceRecord, MeshState};
use crate::supervisor::ServiceSpec;
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
    /// `alive`, `suspect`, `dead` or `left`; `unknown` for a member known only from the
    /// replicated document (not seen since this node started: it may be down).
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
    /// Whether state sync with this peer works: `ok`, `syncing`, `failing: REASON`,
    /// `never-synced`, `epoch-mismatch: theirs EPOCH`, `disconnected`; `null` for self and
    /// for agents that predate it.
    #[serde(default)]
    pub sync: Option<String>,
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
    /// Whether sync with it works (see [`PeerEntry::sync`]).
    #[serde(default)]
    pub health: String,
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
    /// Size of the document's value (every entry's key and JSON), and the most this node's
    /// API lets it grow to.
    #[serde(default)]
    pub value_bytes: u64,
    #[serde(default)]
    pub max_value_bytes: u64,
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
    /// `--accept-services`: whose services this node runs (`all`, `own`, `none`); absent
    /// from agents without a supervisor or older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_services: Option<String>,
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
    /// Dials started; dials that reached another peer id at the address (that address is then
    /// dropped for the old id); peers this node may dial (absent from older agents).
    #[serde(default)]
    pub dials: u64,
    #[serde(default)]
    pub dial_wrong_peer_id: u64,
    #[serde(default)]
    pub dial_targets: usize,
    /// Second connections of a pair closed (both sides dialed at once).
    #[serde(default)]
    pub duplicate_connections_closed: u64,
    /// Sync messages dropped on the way to the state actor (its queue was full); anti-entropy
    /// recovers them. Connection notices are never dropped.
    #[serde(default)]
    pub sync_messages_dropped: u64,
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
        sync: None,
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
            sync: Some(
                state
                    .peers
                    .iter()
                    .find(|s| s.peer == p.peer_id)
                    .map_or(crate::sync::SyncHealth::Disconnected, |s| s.health.clone())
                    .to_string(),
            ),
        });
    }
    rows.extend(document_only_members(snap, state));
    rows
}

/// Members the replicated document knows that membership has not seen since this node
/// started (one that died while this node was down): listed with what the document says, its
/// state `left` (with when) if it stopped gracefully, else `unknown`.
fn document_only_members(snap: &NodeSnapshot, state: &StateSnapshot) -> Vec<PeerEntry> {
    let local = snap.local.peer_id.to_base58();
    let seen: std::collections::HashSet<String> =
        snap.peers.iter().map(|p| p.peer_id.to_base58()).collect();
    let now_ms = crate::state::now_ms();
    let mut rows: Vec<PeerEntry> = state
        .state
        .nodes
        .iter()
        .filter(|(id, _)| **id != local && !seen.contains(*id))
        .filter_map(|(id, rec)| {
            let peer: libp2p::PeerId = id.parse().ok()?;
            let since_ms = |t: i64| u64::try_from(now_ms.saturating_sub(t)).unwrap_or(0);
            Some(PeerEntry {
                id: id.clone(),
                short_id: short_id(&peer),
                name: Some(rec.name.clone()),
                is_self: false,
                state: if rec.left_at_ms.is_some() {
                    "left".into()
                } else {
                    "unknown".into()
                },
                state_since_ms_ago: rec.left_at_ms.map_or(0, since_ms),
                connected: false,
                addrs: rec.addrs.clone(),
                rtt_ms: None,
                last_seen_ms_ago: rec.left_at_ms.map(since_ms),
                os: Some(rec.hardware.os.clone()),
                arch: Some(rec.hardware.arch.clone()),
                device_class: Some(rec.hardware.device_class.clone()),
                profile: Some(rec.hardware.profile.clone()),
                score: u8::try_from(rec.hardware.score).ok(),
                version: Some(rec.version.clone()),
                tags: rec.tags.clone(),
                sync: Some(crate::sync::SyncHealth::Disconnected.to_string()),
            })
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
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
        accept_services: l.accept_services.map(|a| a.to_string()),
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
            dials: s.dials.dials,
            dial_wrong_peer_id: s.dials.wrong_peer_id,
            dial_targets: s.dials.targets,
            duplicate_connections_closed: s.duplicate_connections_closed,
            sync_messages_dropped: s.sync_messages_dropped,
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
        value_bytes: state.value_bytes,
        max_value_bytes: crate::state::MAX_DOCUMENT_BYTES,
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
                health: p.health.to_string(),
            })
            .collect(),
        sync: state.sync.clone(),
        skipped_entries: state.hydrate.skipped_entries,
        recovered_from_corruption: state.recovered_from_corruption,
    }
}

// ---------------------------------------------------------------------------------------------
// Services, ports, logs, events (issue 4). The CLI renders these; the server builds them from
// the replicated document (mesh-wide) or asks the node concerned through the mesh.

/// Body of `POST /v1/services`: specs to add or replace, validated as a set together with the
/// services already in the mesh. A spec without `node` is placed on the node that receives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceAddRequest {
    pub services: Vec<crate::supervisor::ServiceSpec>,
}

/// Answer of `POST /v1/services`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceAddResponse {
    /// One per spec, in request order.
    pub services: Vec<ServiceAdded>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceAdded {
    pub name: String,
    /// The node it is placed on.
    pub node: String,
    /// `added`, `updated` or `unchanged`.
    pub outcome: String,
}

/// Answer of `DELETE /v1/services/{name}` and `POST /v1/services/{name}/{start|stop|restart}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceActionResponse {
    pub name: String,
    pub node: String,
    /// `removed`, `start`, `stop` or `restart`.
    pub action: String,
    /// Whether the desired state changed (false: it already was so).
    pub changed: bool,
}

/// One row of `mesh services` (`GET /v1/services`): a service of the desired state with the
/// instance published by the node it is placed on, or an instance still winding down elsewhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub name: String,
    /// Node name the service is placed on (or the instance's node).
    pub node: String,
    /// Node id of that node, when known.
    pub node_id: Option<String>,
    /// `running` or `stopped`: what the operator asked for.
    pub desired: String,
    /// `starting`, `healthy`, `unhealthy`, `stopping`, `backoff`, `failed`, `stopped`, or
    /// `pending` while the node has published nothing yet.
    pub state: String,
    pub pid: Option<u32>,
    pub ports: Vec<u16>,
    pub restarts: u64,
    /// Seconds in the current state while a process runs.
    pub uptime_s: Option<u64>,
    /// `healthy`, `unhealthy`, `starting` while a process runs and a check is configured;
    /// `none` with no check; `-` with no process.
    pub health: String,
    pub last_exit: Option<String>,
    /// Why the service is in its state ("dependency db failed", "exited with status 1").
    pub reason: Option<String>,
    /// The last log lines, published when the service is `failed`.
    pub log_tail: Vec<String>,
    pub after: Vec<String>,
    pub command: Vec<String>,
}

/// One row of `mesh ports` (`GET /v1/ports[?node=NAME]`): a port lease from the document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortEntry {
    pub node: String,
    pub node_id: String,
    pub port: u16,
    pub proto: String,
    pub service: String,
    /// `allocated`, `in-use` or `released`.
    pub state: String,
    /// Wall-clock milliseconds since the epoch when `state` was entered.
    pub since_ms: i64,
    pub pid: Option<u32>,
}

/// `GET /v1/ports/listening[?node=NAME]`: every listening socket of one node, asked of that
/// node (not replicated).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListeningResponse {
    pub node: String,
    pub sockets: Vec<ListeningEntry>,
    /// False when some processes could not be read (not root): their sockets have no pid.
    pub complete: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListeningEntry {
    pub port: u16,
    pub proto: String,
    pub addr: String,
    pub pid: Option<u32>,
    pub process: Option<String>,
    /// The mesh service holding a lease on this port, if any.
    pub service: Option<String>,
}

/// `GET /v1/services/{name}/logs?n=N[&offset=O]`: log lines of a service, from the node that
/// runs it. With `offset` (from a previous answer): only lines written since (`mesh logs -f`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogsResponse {
    pub service: String,
    pub node: String,
    pub lines: Vec<String>,
    /// Pass back as `offset` to get what follows.
    pub offset: u64,
    /// Older lines were left out to keep the answer within `query::MAX_LOG_ANSWER_BYTES`
    /// (absent, read as false, from older agents).
    #[serde(default)]
    pub truncated: bool,
}

/// One entry of the audit trail (`mesh events`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventEntry {
    /// Increases by one per event on its node; `after=SEQ` pages on it.
    pub seq: u64,
    /// Wall-clock milliseconds since the epoch.
    pub at_ms: i64,
    pub node: String,
    pub service: String,
    /// `start`, `restart`, `exited`, `backoff`, `give-up`, `dependency-stopped`,
    /// `port-allocated`, `port-reclaimed`, ... (see protocol/service-spec.md).
    pub kind: String,
    pub reason: String,
}

/// `GET /v1/events[?node=NAME][&after=SEQ][&limit=N][&wait_ms=T]`: a node's audit trail,
/// oldest first. With `wait_ms`, waits up to that long (at most 30 s) for an event past
/// `after` (`mesh events -f`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventsResponse {
    pub node: String,
    pub events: Vec<EventEntry>,
    /// The highest sequence number the node has given out; pass as `after` to follow.
    pub last_seq: u64,
    /// Events that fell out of the bounded ring before they could be read.
    pub dropped: u64,
}

fn service_row(
    name: &str,
    node: String,
    desired: &str,
    spec: Option<&ServiceSpec>,
    instance: Option<(&str, &InstanceRecord)>,
    now_ms: i64,
) -> ServiceEntry {
    let running = instance.is_some_and(|(_, i)| {
        matches!(
            i.state.as_str(),
            "starting" | "healthy" | "unhealthy" | "stopping"
        )
    });
    let health = match instance {
        Some((_, i)) if running => match (i.health_check, i.state.as_str()) {
            (Some(false), _) => "none".to_string(),
            (_, "stopping") => "-".to_string(),
            (_, state) => state.to_string(),
        },
        _ => "-".to_string(),
    };
    ServiceEntry {
        name: name.to_string(),
        node,
        node_id: instance.map(|(id, _)| id.to_string()),
        desired: desired.to_string(),
        state: instance.map_or_else(|| "pending".to_string(), |(_, i)| i.state.clone()),
        pid: instance
            .and_then(|(_, i)| i.pid)
            .and_then(|p| u32::try_from(p).ok()),
        ports: instance
            .map(|(_, i)| {
                i.ports
                    .iter()
                    .filter_map(|p| u16::try_from(*p).ok())
                    .collect()
            })
            .unwrap_or_default(),
        restarts: instance.map_or(0, |(_, i)| i.restarts),
        uptime_s: instance
            .filter(|_| running)
            .map(|(_, i)| (now_ms.saturating_sub(i.since_ms).max(0) / 1000) as u64),
        health,
        last_exit: instance.and_then(|(_, i)| i.last_exit.clone()),
        reason: instance.and_then(|(_, i)| i.reason.clone()),
        log_tail: instance
            .and_then(|(_, i)| i.log_tail.clone())
            .unwrap_or_default(),
        after: spec.map(|s| s.after.clone()).unwrap_or_default(),
        command: spec
            .map(|s| {
                std::iter::once(s.command.clone())
                    .chain(s.args.clone())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The `mesh services` rows: every service of the desired state with the instance of the node
/// it is placed on, then instances still running elsewhere (removed or moved services
/// winding down). By name.
pub fn service_entries(state: &MeshState, now_ms: i64) -> Vec<ServiceEntry> {
    let mut rows = Vec::new();
    let mut shown: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for (name, record) in &state.services {
        if record.desired == "removed" {
            continue;
        }
        let spec: Option<ServiceSpec> = serde_json::from_str(&record.spec_json).ok();
        let placed = spec
            .as_ref()
            .and_then(|s| s.node.clone())
            .unwrap_or_else(|| record.updated_by.clone());
        let ids = state.nodes_named(&placed);
        let instance = ids.iter().find_map(|id| {
            let key = format!("{name}@{id}");
            state
                .instances
                .get_key_value(&key)
                .map(|(k, i)| (k.as_str(), *id, i))
        });
        if let Some((key, _, _)) = instance {
            shown.insert(key);
        }
        let node = instance.map_or(placed.clone(), |(_, id, _)| state.node_name(id));
        let mut row = service_row(
            name,
            node,
            &record.desired,
            spec.as_ref(),
            instance.map(|(_, id, i)| (id, i)),
            now_ms,
        );
        if spec.is_none() {
            row.state = "invalid".to_string();
            row.reason = Some("the spec in the document does not parse".to_string());
        }
        rows.push(row);
    }
    for (key, instance) in &state.instances {
        if shown.contains(key.as_str()) || instance.state == "stopped" {
            continue;
        }
        let desired = state
            .services
            .get(&instance.service)
            .map_or("removed", |r| r.desired.as_str());
        rows.push(service_row(
            &instance.service,
            state.node_name(&instance.node),
            desired,
            None,
            Some((instance.node.as_str(), instance)),
            now_ms,
        ));
    }
    rows.sort_by(|a, b| (&a.name, &a.node).cmp(&(&b.name, &b.node)));
    rows
}

/// The `mesh ports` rows: leases from the document, optionally of one node (by name or id),
/// by node then port.
pub fn port_entries(state: &MeshState, node: Option<&str>) -> Vec<PortEntry> {
    let mut rows: Vec<PortEntry> = state
        .leases
        .values()
        .filter(|l| {
            node.is_none_or(|n| {
                l.node == n || state.nodes.get(&l.node).is_some_and(|r| r.name == n)
            })
        })
        .filter_map(|l| {
            Some(PortEntry {
                node: state.node_name(&l.node),
                node_id: l.node.clone(),
                port: u16::try_from(l.port).ok()?,
                proto: l.proto.clone(),
                service: l.owner.clone(),
                state: l.state.clone(),
                since_ms: l.since_ms,
                pid: l.pid.and_then(|p| u32::try_from(p).ok()),
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.node, a.port, &a.proto).cmp(&(&b.node, b.port, &b.proto)));
    rows
}
