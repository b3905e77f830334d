//! The control API's contract: route paths, the request and response types of every route,
//! the query strings, and the one error body. Shared by the server (in the agent) and the
//! client (the CLI), so both speak exactly this. The route table is in [`crate::api`] and
//! `protocol/control-api.md`.
//!
//! Owns: the types as they travel (serde), the route constants ([`routes`]), [`ApiError`] with
//! its stable [`ErrorCode`]s. Does not own how they are built from the node's state (the
//! server's `convert`) nor HTTP mechanics. Free of the node and the state actor: it imports
//! only the documented formats it carries (a service spec, a hardware profile) and the services
//! domain's action enum.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod invites;
pub use invites::{
    InviteCreateRequest, InviteCreated, InviteEntry, JoinApiRequest, JoinApiResponse,
};

use crate::hardware::HardwareInfo;
use crate::supervisor::spec::ServiceSpec;

/// Default address of the API: loopback only, so nothing off the machine can reach it.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7401";
/// Response header carrying the snapshot version, for long polling.
pub const VERSION_HEADER: &str = "x-mesh-version";
/// Longest long poll the server honours: clients re-poll; a cap keeps idle connections few.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Route paths, as the router registers them (`{param}` marks a path segment) and the client
/// fills them in ([`routes::path`]).
pub mod routes {
    pub const STATUS: &str = "/v1/status";
    /// Prometheus scrapes (unversioned, where scrapers look by default).
    pub const METRICS: &str = "/metrics";
    pub const PEERS: &str = "/v1/peers";
    pub const STATE: &str = "/v1/state";
    pub const TAGS: &str = "/v1/tags";
    pub const TAG: &str = "/v1/tags/{key}";
    pub const SERVICES: &str = "/v1/services";
    pub const SERVICE: &str = "/v1/services/{name}";
    pub const SERVICE_LOGS: &str = "/v1/services/{name}/logs";
    pub const SERVICE_ACTION: &str = "/v1/services/{name}/{action}";
    pub const SERVICE_ENDPOINTS: &str = "/v1/services/{name}/endpoints";
    pub const NODE_ACTION: &str = "/v1/nodes/{node}/{action}";
    pub const PORTS: &str = "/v1/ports";
    pub const PORTS_LISTENING: &str = "/v1/ports/listening";
    pub const EVENTS: &str = "/v1/events";
    pub const INVITES: &str = "/v1/invites";
    pub const INVITE: &str = "/v1/invites/{id}";
    pub const JOIN: &str = "/v1/join";
    pub const KEY_ROTATE: &str = "/v1/key/rotate";
    /// The dashboard (`/`) and its assets.
    pub const DASHBOARD: &str = "/";
    pub const DASHBOARD_ASSET: &str = "/ui/{file}";
    /// Live updates for the dashboard (server-sent events).
    pub const STREAM: &str = "/v1/stream";
    /// The charts' samples of the last hour.
    pub const HISTORY: &str = "/v1/history";
    /// The browser's login (a cookie standing for the API token).
    pub const SESSION: &str = "/v1/session";

    /// `route` with each `{param}` replaced by its percent-encoded value.
    pub fn path(route: &str, params: &[(&str, &str)]) -> String {
        params
            .iter()
            .fold(route.to_string(), |path, (param, value)| {
                path.replace(&format!("{{{param}}}"), &super::urlencode(value))
            })
    }
}

/// Percent-encodes a path segment or query value (everything but RFC 3986's unreserved
/// characters).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `path?k=v&...` with the present parameters, values percent-encoded.
pub fn query_path(path: &str, params: &[(&str, Option<&str>)]) -> String {
    let query: Vec<String> = params
        .iter()
        .filter_map(|(key, value)| value.map(|v| format!("{key}={}", urlencode(v))))
        .collect();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// What went wrong, stable across versions: clients branch on it, humans read the message.
/// Each code has one HTTP status ([`ErrorCode::status`]). Spelled in snake_case on the wire;
/// a code this build does not know reads as [`ErrorCode::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: a malformed body or query string, a missing `Host`, or a value the rules refuse
    /// (an invalid tag, spec or set of specs).
    BadRequest,
    /// 401: a state change without the API token.
    Unauthorized,
    /// 403: a wrong token, a foreign `Host` or `Origin`.
    Forbidden,
    /// 404: no such route, service, node or action.
    NotFound,
    /// 405: the route exists but not with this method (the `Allow` header names those it has).
    MethodNotAllowed,
    /// 409: the change conflicts with the mesh's state (a service others depend on).
    Conflict,
    /// 413: the request body is larger than the API reads.
    PayloadTooLarge,
    /// 413: the change would grow the replicated document past its limit.
    DocumentTooLarge,
    /// 415: a state change without `Content-Type: application/json`.
    UnsupportedMediaType,
    /// 500: the agent failed in a way the request did not cause.
    Internal,
    /// 502: the node asked through the mesh could not answer.
    NodeFailed,
    /// 503: every long-poll slot is taken; retry after `Retry-After`.
    TooManyLongPolls,
    /// 503: the node or part of the agent needed is not reachable now.
    Unavailable,
    /// 507: the change could not be made durable (disk full, I/O error) and was not made.
    NotDurable,
    /// A code from a newer agent.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status that carries this code.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::PayloadTooLarge | Self::DocumentTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Internal | Self::Unknown => 500,
            Self::NodeFailed => 502,
            Self::TooManyLongPolls | Self::Unavailable => 503,
            Self::NotDurable => 507,
        }
    }

    /// The usual code of an HTTP status, for errors raised by status alone (a framework's
    /// rejection): 413 is [`Self::PayloadTooLarge`], 503 [`Self::Unavailable`].
    pub fn for_status(status: u16) -> Self {
        match status {
            400 | 422 => Self::BadRequest,
            401 => Self::Unauthorized,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            409 => Self::Conflict,
            413 => Self::PayloadTooLarge,
            415 => Self::UnsupportedMediaType,
            502 => Self::NodeFailed,
            503 => Self::Unavailable,
            507 => Self::NotDurable,
            _ => Self::Internal,
        }
    }

    /// The wire spelling (`not_found`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::DocumentTooLarge => "document_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Internal => "internal",
            Self::NodeFailed => "node_failed",
            Self::TooManyLongPolls => "too_many_long_polls",
            Self::Unavailable => "unavailable",
            Self::NotDurable => "not_durable",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error answer (4xx, 5xx), whatever refused the request: a handler, an
/// extractor (bad query string or body), the router (no route, wrong method) or the checks in
/// front of it: `{"code": "not_found", "message": "no service `web` (see `mesh services`)"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    /// For humans: what was refused and, where it helps, what to do.
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status of this error (its code's).
    pub fn status(&self) -> u16 {
        self.code.status()
    }
}

// ---------------------------------------------------------------------------------------------
// Query strings. The server decodes them (serde); the client writes them (`to_path`).

fn number<N: ToString>(value: Option<N>) -> Option<String> {
    value.map(|v| v.to_string())
}

/// `GET /v1/peers?wait=V&timeout_ms=T`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeersQuery {
    /// Long poll: answer once the snapshot version differs from this one.
    pub wait: Option<u64>,
    /// Longest wait in ms (default 1,000, at most [`MAX_WAIT`]).
    pub timeout_ms: Option<u64>,
}

impl PeersQuery {
    pub fn to_path(&self) -> String {
        let (wait, timeout_ms) = (number(self.wait), number(self.timeout_ms));
        query_path(
            routes::PEERS,
            &[
                ("wait", wait.as_deref()),
                ("timeout_ms", timeout_ms.as_deref()),
            ],
        )
    }
}

/// Log lines a logs request gets when it names no count (`n`), and what `mesh logs` asks
/// for by default (like `tail`, a screenful and a bit).
pub const DEFAULT_LOG_LINES: u32 = 50;

/// `GET /v1/services/{name}/logs?n=N&offset=O`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogsQuery {
    /// Lines wanted (default 50).
    pub n: Option<u32>,
    /// The `offset` of a previous answer: only lines written since.
    pub offset: Option<u64>,
}

impl LogsQuery {
    pub fn to_path(&self, service: &str) -> String {
        let (n, offset) = (number(self.n), number(self.offset));
        query_path(
            &routes::path(routes::SERVICE_LOGS, &[("name", service)]),
            &[("n", n.as_deref()), ("offset", offset.as_deref())],
        )
    }
}

/// `?node=NAME` of `GET /v1/ports` and `GET /v1/ports/listening`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeQuery {
    /// A node name, id or id suffix; absent: every node (ports) or this node (listening).
    pub node: Option<String>,
}

impl NodeQuery {
    pub fn to_path(&self, route: &str) -> String {
        query_path(route, &[("node", self.node.as_deref())])
    }
}

/// `GET /v1/events?node=NAME&after=SEQ&limit=N&wait_ms=T`; without `node`, every reachable
/// node's trail merged (`cursors=ID:SEQ,...` instead of `after`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventsQuery {
    pub node: Option<String>,
    /// Only events past this sequence number.
    pub after: Option<u64>,
    /// The merged trail: only events past these per-node sequence numbers
    /// (`NODE_ID:SEQ,NODE_ID:SEQ`, as the last answer's `cursors`).
    pub cursors: Option<String>,
    /// At most this many (default 100).
    pub limit: Option<u32>,
    /// Long poll: wait up to this long for an event past `after`.
    pub wait_ms: Option<u64>,
    /// Only the events of this service (or node subject), among those read.
    pub service: Option<String>,
}

impl EventsQuery {
    pub fn to_path(&self) -> String {
        let (limit, after, wait_ms) =
            (number(self.limit), number(self.after), number(self.wait_ms));
        query_path(
            routes::EVENTS,
            &[
                ("limit", limit.as_deref()),
                ("after", after.as_deref()),
                ("wait_ms", wait_ms.as_deref()),
                ("node", self.node.as_deref()),
                ("cursors", self.cursors.as_deref()),
                ("service", self.service.as_deref()),
            ],
        )
    }
}

/// What `POST /v1/services/{name}/{action}` asks: the services domain's action (one enum for
/// the route, the client and the domain).
pub use crate::services::ServiceAction;

// ---------------------------------------------------------------------------------------------
// Membership, status, state, tags.

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
    /// How this node is linked to the peer: `direct`, `relayed` (every open connection goes
    /// through a member's relay) or `none`; `direct` for self. Absent from older agents.
    #[serde(default)]
    pub link: String,
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
    pub status: PeerSyncStatus,
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
    pub sync: SyncCounters,
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
    /// The rendezvous points this node uses (`--rendezvous`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rendezvous: Vec<RendezvousPointEntry>,
    /// The rendezvous point this node serves (`--rendezvous-server`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendezvous_point: Option<ServedPoint>,
    /// Reachability: behind NAT or not, the relay this node listens through, the relay it
    /// serves, hole punches (absent from older agents).
    #[serde(default)]
    pub reachability: Reachability,
}

/// How this node can be reached (`mesh status`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reachability {
    /// Where a member saw this node, when that is not one of its own addresses: it is behind
    /// NAT. `null` when no member saw it so.
    pub behind_nat: Option<String>,
    /// The member whose relay this node listens through, and whether the reservation is
    /// accepted.
    pub relayed_via: Option<String>,
    pub relay_reserved: bool,
    /// `--relay-server`: what this node's relay did (reservations, circuits, requests denied).
    pub relay_server: Option<RelayServed>,
    /// Relayed links made direct by hole punching (DCUtR), and failed attempts.
    pub hole_punches: u64,
    pub hole_punch_failures: u64,
}

/// What the relay this node serves has done.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RelayServed {
    pub reservations: u64,
    pub circuits: u64,
    pub denied: u64,
}

/// A rendezvous point this node uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RendezvousPointEntry {
    /// The point's peer id.
    pub peer: String,
    pub connected: bool,
    /// Seconds left of this node's registration there, when registered.
    pub registered_for_s: Option<u64>,
    /// Registrations discovered there since start.
    pub discovered: u64,
    /// The last failure, until a success.
    pub last_error: Option<String>,
}

/// The rendezvous point this node serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServedPoint {
    /// Serving anyone, not only admitted members.
    pub open: bool,
    /// What to give other agents as `--rendezvous` (listen addresses with this node's id).
    pub addrs: Vec<String>,
    pub registrations: usize,
    pub registered: u64,
    pub discoveries: u64,
    pub refused: u64,
    /// Requests dropped because the peer was not admitted (members-only point).
    pub not_admitted: u64,
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
    /// Invites redeemed here (the mesh key handed out) and join requests refused here
    /// (`/mesh/join/1`; absent from older agents).
    #[serde(default)]
    pub joins_accepted: u64,
    #[serde(default)]
    pub joins_refused: u64,
    /// Connections of removed nodes (`mesh remove`) closed on arrival (absent from older
    /// agents).
    #[serde(default)]
    pub removed_refused: u64,
}

/// Where a peer's document stands relative to ours (`PeerSyncEntry::status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerSyncStatus {
    /// Its heads equal ours.
    InSync,
    /// Its heads differ from ours (either side may be missing changes).
    Behind,
    /// No exchange with it has completed yet.
    NeverSynced,
}

/// State sync traffic of this node, for `mesh state`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncCounters {
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub malformed: u64,
}

// ---------------------------------------------------------------------------------------------
// Services, ports, logs, events. The CLI renders these; the server builds them from the
// replicated document (mesh-wide) or asks the node concerned through the mesh.

/// Body of `POST /v1/services`: specs to add or replace, validated as a set together with the
/// services already in the mesh. A spec without `node` is placed on the node that receives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceAddRequest {
    pub services: Vec<ServiceSpec>,
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
    /// Copies running mesh-wide out of those wanted (`1/2`).
    #[serde(default)]
    pub copies: String,
    /// Copies wanted (`replicas`).
    #[serde(default)]
    pub replicas: u32,
    /// The nodes that should run the copies, as this node computes it.
    #[serde(default)]
    pub owners: Vec<OwnerEntry>,
    #[serde(default)]
    pub exclusive: bool,
    /// The fencing token of this copy (`MESH_EPOCH`), else the service's highest.
    #[serde(default)]
    pub epoch: u64,
    /// `placed`, `moving` (copies starting or being handed over) or `unplaced`.
    #[serde(default)]
    pub placement: String,
    /// An anomaly flag of this copy, in words (a measure far above its baseline on the node
    /// running it; see `mesh events` for the figures); absent when none is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<String>,
}

/// One ready copy of a service (`GET /v1/services/{name}/endpoints`, `mesh resolve`): where
/// to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointEntry {
    pub node: String,
    pub node_id: String,
    /// The node's address (IPv6 in brackets).
    pub host: String,
    /// The copy's first port (`$PORT`).
    pub port: u16,
    /// `host:port`.
    pub endpoint: String,
    pub state: String,
}

/// Answer of `POST /v1/nodes/{node}/{drain|undrain}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainResponse {
    pub node: String,
    pub drained: bool,
    /// Whether the mark changed (false: it already was so).
    pub changed: bool,
}

/// Answer of `POST /v1/key/rotate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotateResponse {
    /// The new key's mesh id, and how many rotations led to it.
    pub mesh_id: String,
    pub generation: u64,
    /// The members handed the key at once (names); the others get it when they next connect.
    pub told: Vec<String>,
}

/// Answer of `POST /v1/nodes/{node}/remove`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveResponse {
    pub node: String,
    pub id: String,
    /// Whether this call removed it (false: it was removed already).
    pub changed: bool,
}

/// A node that should run a copy of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerEntry {
    pub id: String,
    pub name: String,
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
    /// Older lines were left out to keep the answer within `wire::query::MAX_LOG_ANSWER_BYTES`
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

/// Body of `POST /v1/session`: the API token, typed into the dashboard's login form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    pub token: String,
}

/// Answer of `GET`/`POST`/`DELETE /v1/session`: whether this browser holds a valid session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionResponse {
    pub logged_in: bool,
    /// Seconds the session lasts, on a login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<u64>,
}

/// Answer of `GET /v1/history`: this node's samples of the last hour, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub node: String,
    pub interval_ms: u64,
    pub samples: Vec<crate::insight::Sample>,
}

/// The dashboard's picture of the mesh, as this node sees it: the `overview` event of
/// `GET /v1/stream`, sent at connect and on every change (at most every 500 ms).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    pub status: StatusResponse,
    pub peers: Vec<PeerEntry>,
    pub services: Vec<ServiceEntry>,
    pub ports: Vec<PortEntry>,
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
    /// The merged trail (no `node` asked): the last sequence number read from each node, by
    /// node id; pass back as `cursors` to follow. Nodes that did not answer keep theirs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cursors: BTreeMap<String, u64>,
}

/// Encodes merged-trail cursors for [`EventsQuery::cursors`].
pub fn encode_cursors(cursors: &BTreeMap<String, u64>) -> String {
    cursors
        .iter()
        .map(|(id, seq)| format!("{id}:{seq}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Decodes [`EventsQuery::cursors`]; malformed entries are skipped, at most
/// [`MAX_CURSORS`] kept.
pub fn decode_cursors(text: &str) -> BTreeMap<String, u64> {
    text.split(',')
        .filter_map(|part| {
            let (id, seq) = part.split_once(':')?;
            Some((id.to_string(), seq.parse().ok()?))
        })
        .take(MAX_CURSORS)
        .collect()
}

/// Most cursors read from a query: a mesh has tens of nodes; this bounds the work a query
/// string can ask for.
pub const MAX_CURSORS: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_use_the_route_table_paths() {
        assert_eq!(query_path("/v1/ports", &[("node", None)]), "/v1/ports");
        assert_eq!(
            query_path("/v1/ports/listening", &[("node", Some("pi 4"))]),
            "/v1/ports/listening?node=pi%204"
        );
        assert_eq!(
            query_path(
                "/v1/events",
                &[
                    ("after", Some("7")),
                    ("wait_ms", Some("25000")),
                    ("node", Some("pi"))
                ]
            ),
            "/v1/events?after=7&wait_ms=25000&node=pi"
        );
        assert_eq!(
            routes::path(
                routes::SERVICE_ACTION,
                &[("name", "web"), ("action", ServiceAction::Stop.as_str())]
            ),
            "/v1/services/web/stop"
        );
        assert_eq!(
            routes::path(routes::TAG, &[("key", "a/b")]),
            "/v1/tags/a%2Fb"
        );
        let follow = EventsQuery {
            node: Some("pi".into()),
            after: Some(7),
            limit: None,
            wait_ms: Some(25_000),
            cursors: None,
            service: Some("web".into()),
        };
        assert_eq!(
            follow.to_path(),
            "/v1/events?after=7&wait_ms=25000&node=pi&service=web"
        );
        let merged: BTreeMap<String, u64> = [("12D3a".to_string(), 4), ("12D3b".to_string(), 9)]
            .into_iter()
            .collect();
        let encoded = encode_cursors(&merged);
        assert_eq!(encoded, "12D3a:4,12D3b:9");
        assert_eq!(decode_cursors(&encoded), merged);
        assert_eq!(decode_cursors("x,12D3a:nope,12D3b:2").len(), 1);
        assert_eq!(
            EventsQuery {
                cursors: Some(encoded),
                wait_ms: Some(1000),
                ..EventsQuery::default()
            }
            .to_path(),
            "/v1/events?wait_ms=1000&cursors=12D3a%3A4%2C12D3b%3A9"
        );
        assert_eq!(
            LogsQuery {
                n: Some(50),
                offset: None
            }
            .to_path("web"),
            "/v1/services/web/logs?n=50"
        );
        assert_eq!(PeersQuery::default().to_path(), "/v1/peers");
        for action in [
            ServiceAction::Start,
            ServiceAction::Stop,
            ServiceAction::Restart,
        ] {
            assert_eq!(ServiceAction::parse(action.as_str()).ok(), Some(action));
        }
        assert!(ServiceAction::parse("explode").is_err());
    }

    #[test]
    fn error_codes_are_snake_case_and_carry_one_status() {
        let all = [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Conflict,
            ErrorCode::PayloadTooLarge,
            ErrorCode::DocumentTooLarge,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::Internal,
            ErrorCode::NodeFailed,
            ErrorCode::TooManyLongPolls,
            ErrorCode::Unavailable,
            ErrorCode::NotDurable,
        ];
        for code in all {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
            // A status maps back to a code of that status.
            assert_eq!(ErrorCode::for_status(code.status()).status(), code.status());
        }
        let body =
            serde_json::to_value(ApiError::new(ErrorCode::NotFound, "no service `x`")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"code": "not_found", "message": "no service `x`"})
        );
        let newer: ApiError =
            serde_json::from_str(r#"{"code": "quota_exceeded", "message": "m"}"#).unwrap();
        assert_eq!(newer.code, ErrorCode::Unknown);
    }
}
