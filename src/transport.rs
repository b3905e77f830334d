//! Transport: the libp2p swarm every mesh protocol runs on.
//!
//! Owns the swarm's construction (QUIC tuned for LAN liveness; for in-process tests, the memory
//! transport, whose links a test may cut to partition a mesh: [`TransportKind`], `memory`), the
//! composed [`MeshBehaviour`], the protocol ids and the size limits of the request-response
//! protocols (CBOR-encoded). Their messages are [`crate::wire`]'s, and it depends on nothing
//! else of the crate. It does not decide anything: the node actor drives the swarm and the
//! sans-IO cores decide what to send.
//!
//! No libp2p `identify` or `ping` behaviour runs: both would talk to a peer as soon as its
//! connection opens, before admission, and leak our addresses and version to non-members. The
//! handshake's [`crate::wire::auth::NodeInfo`] replaces identify, and membership round trips measure RTT.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, Swarm, SwarmBuilder};

use crate::wire::auth::{AuthRequest, AuthResponse, NodeInfo};
use crate::wire::join::{JoinRequest, JoinResponse};
use crate::wire::membership::{MembershipRequest, MembershipResponse};
use crate::wire::query::{QueryRequest, QueryResponse};
use crate::wire::sync::{SyncRequest, SyncResponse};

mod gate;
mod memory;
mod observed;
pub mod relay;

pub use gate::Gate;
pub use memory::MemoryLinks;
pub use observed::ObservedAddrs;
pub use relay::{AdmittedSet, is_relayed};

/// Seeds aws-lc's random generator, on a thread of its own, and returns at once. This
/// repository builds aws-lc without its CPU-jitter entropy source (`.cargo/config.toml`), so
/// the seeding is a `getrandom` call; a build without that setting seeds from CPU jitter at
/// first use, ~40 ms of CPU (perf in the lab: `jent_*`), and left alone that first use is this
/// agent's first QUIC handshake, which every peer that heard of us dials at the same moment.
/// Call it first thing at start: it then overlaps the rest of the start-up. A failure only
/// means the first handshake pays instead.
pub fn warm_up_crypto() {
    let spawned = std::thread::Builder::new()
        .name("crypto-warm-up".into())
        .spawn(|| {
            let mut seed = [0u8; 16];
            if aws_lc_rs::rand::fill(&mut seed).is_err() {
                tracing::debug!("aws-lc random warm-up failed");
            }
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "cannot start the crypto warm-up thread");
    }
}

/// The admission handshake (spec: `protocol/auth.md`).
pub const AUTH_PROTOCOL: StreamProtocol = StreamProtocol::new("/mesh/auth/1");
/// Membership datagrams and leave notices (spec: `protocol/membership.md`).
pub const MEMBERSHIP_PROTOCOL: StreamProtocol = StreamProtocol::new("/mesh/membership/1");
/// Membership datagrams as frames on one long-lived stream per peer and direction (spec:
/// `protocol/membership.md`); `/mesh/membership/1` stays for leave notices, RTT samples and
/// agents that do not speak this one.
pub const MEMBERSHIP_STREAM_PROTOCOL: StreamProtocol =
    StreamProtocol::new("/mesh/membership-stream/1");
/// Automerge sync of the mesh state document (spec: `protocol/sync.md`).
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/mesh/sync/1");
/// Questions one node answers about itself: logs, listening sockets, events (spec:
/// `protocol/query.md`).
pub const QUERY_PROTOCOL: StreamProtocol = StreamProtocol::new("/mesh/query/1");

/// Redeeming an invite ticket for the mesh key, before admission (spec: `protocol/join.md`).
pub const JOIN_PROTOCOL: StreamProtocol = StreamProtocol::new("/mesh/join/1");

/// Largest join message either way: a 32-byte secret or key, a 64-character name and CBOR
/// framing are under 400 bytes; 1 KiB keeps what an unadmitted peer can make us read tiny.
pub const MAX_JOIN_MESSAGE: u64 = 1024;
/// Concurrent join streams per connection: a joiner sends one request.
pub const MAX_JOIN_STREAMS: usize = 2;

/// Largest auth message. A [`NodeInfo`] is a few hundred bytes; 16 KiB leaves room for long
/// CPU model strings and many addresses while keeping a hostile peer's cost to us small.
pub const MAX_AUTH_MESSAGE: u64 = 16 * 1024;
/// Largest membership message: foca's packet limit (8 KiB) plus framing.
pub const MAX_MEMBERSHIP_MESSAGE: u64 = 9 * 1024;
/// Largest frame of `/mesh/sync/1` (request or response), the codec's limit: anything larger
/// is refused unread. It agrees with what is sent: an Automerge sync message is at most
/// [`MAX_SYNC_PAYLOAD`] and a snapshot part at most [`SNAPSHOT_PART_BYTES`], each plus a few
/// hundred bytes of CBOR and epoch id; both are checked against it at compile time. Documents
/// of any size within `state::MAX_DOCUMENT_BYTES` (2 MiB of value, plus history) therefore sync:
/// what does not fit one message travels as a snapshot in parts.
pub const MAX_SYNC_MESSAGE: u64 = 8 * 1024 * 1024;
/// Largest Automerge sync message a node sends. One that would be larger (a peer lacking much
/// history) is not sent; the peer is offered our snapshot instead ([`SyncRequest::SnapshotOffer`])
/// and fetches it in parts. 4 MiB keeps a message well under [`MAX_SYNC_MESSAGE`] and under a
/// second on a Pi's Wi-Fi.
pub const MAX_SYNC_PAYLOAD: usize = 4 * 1024 * 1024;
/// Bytes of a snapshot per [`SyncResponse::SnapshotPart`]. 1 MiB moves in ~0.1 s at Pi Wi-Fi
/// speeds (far inside [`REQUEST_TIMEOUT`]) and bounds what one response holds in memory.
pub const SNAPSHOT_PART_BYTES: usize = 1024 * 1024;
/// Largest snapshot a node serves or assembles (memory bound). A document at its 2 MiB value
/// bound saves to a few MiB; a history of one epoch adds at most the compaction threshold
/// (`state::COMPACT_AT_HISTORY_BYTES`, 4 MiB) before it is folded. 64 MiB leaves a wide margin
/// and still fits a Pi; past it, sync with that peer reports `failing`.
pub const MAX_SNAPSHOT_BYTES: u64 = 64 * 1024 * 1024;
/// CBOR framing, epoch id and snapshot id around a payload: generously bounded.
const SYNC_FRAMING: u64 = 64 * 1024;
const _: () = assert!(MAX_SYNC_PAYLOAD as u64 + SYNC_FRAMING <= MAX_SYNC_MESSAGE);
const _: () = assert!(SNAPSHOT_PART_BYTES as u64 + SYNC_FRAMING <= MAX_SYNC_MESSAGE);
/// Largest query request: a service name and a few numbers.
pub const MAX_QUERY_REQUEST: u64 = 4 * 1024;
/// Largest query answer: 5,000 log lines of up to 64 KiB each would be far more, so the
/// answering node keeps log text to a quarter of this (`wire::query::MAX_LOG_ANSWER_BYTES`); 4 MiB
/// holds a page of logs or the sockets of a busy server. An answer past it fails the request.
pub const MAX_QUERY_RESPONSE: u64 = 4 * 1024 * 1024;
/// A request without a response after this long has failed. Membership probes have their own,
/// shorter deadline inside foca; this only frees the stream.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent streams per connection per protocol. Membership sends a few datagrams per
/// probe period; 64 absorbs bursts without letting one peer open unbounded streams.
pub const MAX_CONCURRENT_STREAMS: usize = 64;
/// QUIC idle timeout: a connection that hears nothing for this long is closed. Only a
/// backstop: failure detection is membership's (foca), and the node closes the connections of
/// an incarnation membership declares `dead` (~1.6 s after a crash at 10 hosts), which is what
/// ends sync sessions and lets the redial heal a partition; connections of a restarted peer's
/// former incarnation are closed when the new one is admitted. Three keep-alive intervals, so
/// a lost PING (retransmitted within a PTO anyway) does not close a live link.
pub const QUIC_IDLE_TIMEOUT_MS: u32 = 15_000;
/// QUIC keep-alive interval. It was 1 s, with a 3 s idle timeout that detected a silent
/// partition (~3.1 s; the libp2p defaults, 10 s and 5 s, take ~12 s): those PINGs and their
/// ACKs were ~70 % of an idle agent's packets with 9 peers. 5 s keeps UDP conntrack and NAT
/// mappings (30 s on Linux) warm on quiet links.
pub const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// QUIC handshake deadline. A LAN handshake takes ~1-40 ms even on a Pi; 500 ms leaves a
/// tenfold margin. A dial started just before a partition heals has its first packets dropped
/// and only ends at this deadline, so it bounds how long a heal waits before the next redial
/// (every 0.5 s) gets through.
pub const QUIC_HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the swarm keeps a connection with no open stream. Membership traffic flows every
/// few hundred ms between members, so only dead or unadmitted connections ever reach this.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

pub type AuthBehaviour =
    request_response::cbor::Behaviour<AuthRequest<NodeInfo>, AuthResponse<NodeInfo>>;
pub type JoinBehaviour = request_response::cbor::Behaviour<JoinRequest, JoinResponse>;
pub type MembershipBehaviour =
    request_response::cbor::Behaviour<MembershipRequest, MembershipResponse>;
pub type SyncBehaviour = request_response::cbor::Behaviour<SyncRequest, SyncResponse>;
pub type QueryBehaviour = request_response::cbor::Behaviour<QueryRequest, QueryResponse>;

/// Most established inbound connections. A mesh node holds one per member; 512 is room for a
/// mesh of hundreds plus rendezvous clients of an open point, and bounds what strangers can
/// make us hold (each QUIC connection keeps buffers of some tens of KiB).
pub const MAX_INCOMING_CONNECTIONS: u32 = 512;
/// Most inbound connections in their handshake at once.
pub const MAX_PENDING_INCOMING: u32 = 64;
/// Most connections with one peer: one per transport, plus the crossing dials of two nodes
/// that dial each other at once (closed again within a round trip).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 4;

/// The composed behaviour of a mesh node.
#[derive(NetworkBehaviour)]
pub struct MeshBehaviour {
    /// Connection bounds, checked before any other behaviour sees a connection.
    pub limits: libp2p::connection_limits::Behaviour,
    pub auth: AuthBehaviour,
    pub join: JoinBehaviour,
    pub membership: MembershipBehaviour,
    /// Long-lived streams (membership datagrams, [`MEMBERSHIP_STREAM_PROTOCOL`]), driven by
    /// their own tasks through its control.
    pub streams: libp2p_stream::Behaviour,
    pub sync: SyncBehaviour,
    pub query: QueryBehaviour,
    /// Registering at rendezvous points and asking them for members (`--rendezvous`); sends
    /// nothing unless the node asks it to.
    pub rendezvous: libp2p::rendezvous::client::Behaviour,
    /// The rendezvous point this node serves (`--rendezvous-server`), behind its gate.
    pub rendezvous_point: Toggle<Gate<libp2p::rendezvous::server::Behaviour>>,
    /// Listening through a member's relay when behind NAT (absent on the memory transport).
    pub relay_client: Toggle<libp2p::relay::client::Behaviour>,
    /// The relay this node serves for members (`--relay-server`).
    pub relay: Toggle<libp2p::relay::Behaviour>,
    /// Hole punching over a relayed link (DCUtR), to turn it into a direct one.
    pub dcutr: Toggle<libp2p::dcutr::Behaviour>,
    /// Where members see us, as candidates for hole punching.
    pub observed: ObservedAddrs,
}

/// A rendezvous point's settings (`--rendezvous-server`; spec: `protocol/rendezvous.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointConfig {
    /// Serve anyone (`--rendezvous-open`), not only admitted members of this mesh.
    pub open: bool,
    /// Most registrations held in all.
    pub max_registrations: usize,
    /// Most registrations of one peer (one per namespace it registers in).
    pub max_registrations_per_peer: usize,
    /// Shortest and longest TTL granted, in seconds.
    pub min_ttl_s: u64,
    pub max_ttl_s: u64,
}

impl Default for PointConfig {
    /// Members only; 1,000 registrations (a mesh has tens of members; a Pi can hold this),
    /// 8 per peer (a mesh agent registers one namespace), and the spec's TTL bounds: 2 h to
    /// 72 h (the stock client and server default to 2 h).
    fn default() -> Self {
        Self {
            open: false,
            max_registrations: 1000,
            max_registrations_per_peer: 8,
            min_ttl_s: libp2p::rendezvous::MIN_TTL,
            max_ttl_s: libp2p::rendezvous::MAX_TTL,
        }
    }
}

impl PointConfig {
    /// Refuses settings that would make the point useless.
    pub fn check(&self) -> Result<(), String> {
        if self.max_registrations == 0 || self.max_registrations_per_peer == 0 {
            return Err("a rendezvous point needs room for at least one registration".into());
        }
        if self.min_ttl_s < 60 || self.min_ttl_s > self.max_ttl_s {
            return Err(format!(
                "rendezvous TTL bounds {}s-{}s: the minimum must be at least 60 s and at most the maximum",
                self.min_ttl_s, self.max_ttl_s
            ));
        }
        Ok(())
    }
}

/// Parses a `--rendezvous` address: a multiaddr over `/ip4`, `/ip6`, `/dns4`, `/dns6` or
/// `/dns`, then `/tcp/P` or `/udp/P/quic-v1`, ending in the point's `/p2p/ID` (a point is
/// dialed by identity: what answers at the address must prove it is that point).
pub fn parse_rendezvous_addr(s: &str) -> Result<libp2p::Multiaddr, String> {
    use libp2p::multiaddr::Protocol;
    let addr: libp2p::Multiaddr = s
        .parse()
        .map_err(|e| format!("{s:?} is not a multiaddr: {e}"))?;
    let parts: Vec<Protocol> = addr.iter().collect();
    let host_ok = matches!(
        parts.first(),
        Some(
            Protocol::Ip4(_)
                | Protocol::Ip6(_)
                | Protocol::Dns4(_)
                | Protocol::Dns6(_)
                | Protocol::Dns(_)
        )
    );
    let transport_ok = matches!(
        &parts[1.min(parts.len())..],
        [Protocol::Tcp(_), Protocol::P2p(_)]
            | [Protocol::Udp(_), Protocol::QuicV1, Protocol::P2p(_)]
    );
    if !host_ok || !transport_ok {
        return Err(format!(
            "{s:?}: expected /ip4|ip6|dns4|dns6/HOST/tcp/PORT/p2p/ID or \
             /ip4|ip6|dns4|dns6/HOST/udp/PORT/quic-v1/p2p/ID (the point's id is printed by \
             `mesh status` on the agent that serves it)"
        ));
    }
    Ok(addr)
}

/// What a swarm serves beyond the mesh protocols.
#[derive(Clone, Debug, Default)]
pub struct SwarmOptions {
    /// Serve a rendezvous point.
    pub rendezvous_point: Option<PointConfig>,
    /// Serve a circuit relay to the members in this set (`--relay-server`).
    pub relay: Option<AdmittedSet>,
}

/// Errors building the swarm.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot build the libp2p swarm: {0}")]
    Build(String),
}

fn rr_config() -> request_response::Config {
    request_response::Config::default()
        .with_request_timeout(REQUEST_TIMEOUT)
        .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS)
}

/// The CBOR codec of one protocol with its size limits: what decodes every message a peer
/// sends (also driven directly by the fuzz targets).
pub fn limited_codec<Req, Resp>(
    max_request: u64,
    max_response: u64,
) -> request_response::cbor::codec::Codec<Req, Resp> {
    request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(max_request)
        .set_response_size_maximum(max_response)
}

/// Which transport a swarm runs on: one constructor choice, everything above it is the same
/// (admission, membership, sync and query run unchanged on either).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TransportKind {
    /// QUIC over UDP with LAN timeouts, and TCP with Noise and Yamux next to it (same port
    /// number by default) for networks that block UDP and for rendezvous points that speak
    /// only TCP; `/dns4` and `/dns6` addresses resolve through the system resolver. The
    /// agent's transport.
    #[default]
    Quic,
    /// libp2p's in-process memory transport (`/memory/N` addresses), upgraded with plaintext
    /// (peer ids, no encryption) and yamux: for meshes of nodes inside one test process. It
    /// has no sockets and no timers of its own, so tests may run it in paused tokio time, which
    /// QUIC's idle and keep-alive timers do not survive. The [`MemoryLinks`] shared by the
    /// nodes of one such mesh let a test partition it and heal it. Never for real traffic.
    Memory(MemoryLinks),
}

/// `/mesh/join/1` with its limits; `support` is `Inbound` on members, `Outbound` on a joiner.
fn join_behaviour(support: ProtocolSupport) -> JoinBehaviour {
    request_response::Behaviour::with_codec(
        limited_codec(MAX_JOIN_MESSAGE, MAX_JOIN_MESSAGE),
        [(JOIN_PROTOCOL, support)],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(MAX_JOIN_STREAMS),
    )
}

/// The mesh behaviours, each with its protocol and codec limits; `relay_client` when the
/// transport has one (not the memory transport).
fn behaviour(
    key: &Keypair,
    relay_client: Option<libp2p::relay::client::Behaviour>,
    options: &SwarmOptions,
) -> MeshBehaviour {
    let local = key.public().to_peer_id();
    let auth_codec = limited_codec(MAX_AUTH_MESSAGE, MAX_AUTH_MESSAGE);
    let membership_codec = limited_codec(MAX_MEMBERSHIP_MESSAGE, MAX_MEMBERSHIP_MESSAGE);
    let point = options.rendezvous_point.as_ref().map(|p| {
        let config = libp2p::rendezvous::server::Config::default()
            .with_min_ttl(p.min_ttl_s)
            .with_max_ttl(p.max_ttl_s)
            .with_max_registration_total(p.max_registrations)
            .with_max_registration_per_peer(p.max_registrations_per_peer);
        Gate::new(libp2p::rendezvous::server::Behaviour::new(config), p.open)
    });
    MeshBehaviour {
        limits: libp2p::connection_limits::Behaviour::new(
            libp2p::connection_limits::ConnectionLimits::default()
                .with_max_established_incoming(Some(MAX_INCOMING_CONNECTIONS))
                .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
        ),
        rendezvous: libp2p::rendezvous::client::Behaviour::new(key.clone()),
        rendezvous_point: Toggle::from(point),
        dcutr: Toggle::from(
            relay_client
                .is_some()
                .then(|| libp2p::dcutr::Behaviour::new(local)),
        ),
        relay_client: Toggle::from(relay_client),
        relay: Toggle::from(
            options
                .relay
                .as_ref()
                .map(|members| libp2p::relay::Behaviour::new(local, relay::relay_config(members))),
        ),
        observed: ObservedAddrs::default(),
        auth: request_response::Behaviour::with_codec(
            auth_codec,
            [(AUTH_PROTOCOL, ProtocolSupport::Full)],
            rr_config(),
        ),
        join: join_behaviour(ProtocolSupport::Inbound),
        membership: request_response::Behaviour::with_codec(
            membership_codec,
            [(MEMBERSHIP_PROTOCOL, ProtocolSupport::Full)],
            rr_config(),
        ),
        streams: libp2p_stream::Behaviour::new(),
        sync: request_response::Behaviour::with_codec(
            limited_codec(MAX_SYNC_MESSAGE, MAX_SYNC_MESSAGE),
            [(SYNC_PROTOCOL, ProtocolSupport::Full)],
            rr_config(),
        ),
        query: request_response::Behaviour::with_codec(
            limited_codec(MAX_QUERY_REQUEST, MAX_QUERY_RESPONSE),
            [(QUERY_PROTOCOL, ProtocolSupport::Full)],
            rr_config(),
        ),
    }
}

/// QUIC with the agent's LAN timeouts.
fn quic_config(mut c: libp2p::quic::Config) -> libp2p::quic::Config {
    c.max_idle_timeout = QUIC_IDLE_TIMEOUT_MS;
    c.keep_alive_interval = QUIC_KEEP_ALIVE;
    c.handshake_timeout = QUIC_HANDSHAKE_TIMEOUT;
    c
}

/// TCP without Nagle's delay: membership datagrams are small and time-critical.
fn tcp_config() -> libp2p::tcp::Config {
    libp2p::tcp::Config::new().nodelay(true)
}

/// Builds the swarm: the mesh behaviours on `kind` (QUIC and TCP for the agent).
pub fn build_swarm(
    keypair: Keypair,
    kind: TransportKind,
    options: &SwarmOptions,
) -> Result<Swarm<MeshBehaviour>, TransportError> {
    let builder = SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let swarm = match kind {
        TransportKind::Quic => builder
            .with_tcp(
                tcp_config(),
                libp2p::noise::Config::new,
                libp2p::yamux::Config::default,
            )
            .map_err(|e| TransportError::Build(e.to_string()))?
            .with_quic_config(quic_config)
            .with_dns()
            .map_err(|e| {
                TransportError::Build(format!(
                    "cannot read the DNS resolver configuration (/etc/resolv.conf): {e}"
                ))
            })?
            .with_relay_client(libp2p::noise::Config::new, libp2p::yamux::Config::default)
            .map_err(|e| TransportError::Build(e.to_string()))?
            .with_behaviour(|key, relay_client| behaviour(key, Some(relay_client), options))
            .map_err(|e| TransportError::Build(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
            .build(),
        TransportKind::Memory(links) => builder
            .with_other_transport(|key| memory::transport(key, links))
            .map_err(|e| TransportError::Build(e.to_string()))?
            .with_behaviour(|key| behaviour(key, None, options))
            .map_err(|e| TransportError::Build(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
            .build(),
    };
    Ok(swarm)
}

/// A swarm that only redeems an invite (`/mesh/join/1`, outbound): the joiner's side, with a
/// key pair of its own, on QUIC with the agent's timeouts. It listens nowhere; dialing binds
/// an ephemeral UDP port.
pub fn build_join_swarm(keypair: Keypair) -> Result<Swarm<JoinBehaviour>, TransportError> {
    Ok(SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp_config(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .map_err(|e| TransportError::Build(e.to_string()))?
        .with_quic_config(quic_config)
        .with_behaviour(|_| join_behaviour(ProtocolSupport::Outbound))
        .map_err(|e| TransportError::Build(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(REQUEST_TIMEOUT))
        .build())
}

/// Parses a listen or dial address: a multiaddr (used as given), or `IP:PORT` (`[::]:7400` for
/// IPv6) or a bare IP (port `default_port`), which mean QUIC on that UDP port and TCP on the
/// same TCP port, QUIC first.
pub fn parse_addrs(s: &str, default_port: u16) -> Result<Vec<libp2p::Multiaddr>, String> {
    use std::net::{IpAddr, SocketAddr};
    if s.starts_with('/') {
        return s
            .parse()
            .map(|a| vec![a])
            .map_err(|e| format!("{s:?} is not a multiaddr: {e}"));
    }
    let sock: SocketAddr = if let Ok(sock) = s.parse() {
        sock
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        SocketAddr::new(ip, default_port)
    } else {
        return Err(format!(
            "{s:?} is not an address; use IP:PORT (e.g. 0.0.0.0:7400 or [::]:7400) or a multiaddr \
             (/ip4/0.0.0.0/udp/7400/quic-v1, /ip4/0.0.0.0/tcp/7400)"
        ));
    };
    Ok(vec![socket_to_quic(sock), socket_to_tcp(sock)])
}

/// `/ip4/A/tcp/P` (or ip6) for a socket address.
pub fn socket_to_tcp(sock: std::net::SocketAddr) -> libp2p::Multiaddr {
    match sock.ip() {
        std::net::IpAddr::V4(ip) => format!("/ip4/{ip}/tcp/{}", sock.port()),
        std::net::IpAddr::V6(ip) => format!("/ip6/{ip}/tcp/{}", sock.port()),
    }
    .parse()
    .expect("a formatted TCP multiaddr always parses")
}

/// Whether a multiaddr is a QUIC one (`/udp/P/quic-v1`).
pub fn is_quic(addr: &libp2p::Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1))
}

/// Puts QUIC addresses first, keeping the order within each kind. The swarm dials a peer's
/// addresses concurrently and keeps the first connection up; QUIC's handshake is one round
/// trip against TCP+Noise+Yamux's three or four, so where UDP passes QUIC wins, and TCP
/// carries the link where it does not.
pub fn quic_first(addrs: &mut [libp2p::Multiaddr]) {
    addrs.sort_by_key(|a| !is_quic(a));
}

/// `/ip4/A/udp/P/quic-v1` (or ip6) for a socket address.
pub fn socket_to_quic(sock: std::net::SocketAddr) -> libp2p::Multiaddr {
    match sock.ip() {
        std::net::IpAddr::V4(ip) => format!("/ip4/{ip}/udp/{}/quic-v1", sock.port()),
        std::net::IpAddr::V6(ip) => format!("/ip6/{ip}/udp/{}/quic-v1", sock.port()),
    }
    .parse()
    .expect("a formatted QUIC multiaddr always parses")
}

/// The UDP port of a QUIC multiaddr.
pub fn quic_port(addr: &libp2p::Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Udp(port) => Some(port),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(addrs: Vec<libp2p::Multiaddr>) -> Vec<String> {
        addrs.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn addresses_parse_in_all_forms() {
        assert_eq!(
            strings(parse_addrs("0.0.0.0:7400", 7400).unwrap()),
            ["/ip4/0.0.0.0/udp/7400/quic-v1", "/ip4/0.0.0.0/tcp/7400"]
        );
        assert_eq!(
            strings(parse_addrs("[::]:7402", 7400).unwrap()),
            ["/ip6/::/udp/7402/quic-v1", "/ip6/::/tcp/7402"]
        );
        assert_eq!(
            strings(parse_addrs("10.0.0.1", 7400).unwrap()),
            ["/ip4/10.0.0.1/udp/7400/quic-v1", "/ip4/10.0.0.1/tcp/7400"]
        );
        assert_eq!(
            strings(parse_addrs("/ip4/10.0.0.1/tcp/9", 7400).unwrap()),
            ["/ip4/10.0.0.1/tcp/9"]
        );
        assert!(
            parse_addrs("nonsense", 7400)
                .unwrap_err()
                .contains("IP:PORT")
        );
        assert_eq!(
            quic_port(&"/ip4/1.2.3.4/udp/9/quic-v1".parse().unwrap()),
            Some(9)
        );
    }

    #[test]
    fn quic_addresses_are_dialed_first() {
        let mut addrs: Vec<libp2p::Multiaddr> = [
            "/ip4/10.0.0.1/tcp/7400",
            "/ip4/10.0.0.1/udp/7400/quic-v1",
            "/ip6/fd00::1/tcp/7400",
            "/ip6/fd00::1/udp/7400/quic-v1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        quic_first(&mut addrs);
        assert_eq!(
            strings(addrs),
            [
                "/ip4/10.0.0.1/udp/7400/quic-v1",
                "/ip6/fd00::1/udp/7400/quic-v1",
                "/ip4/10.0.0.1/tcp/7400",
                "/ip6/fd00::1/tcp/7400"
            ]
        );
    }

    /// `SyncRequest::Sync` as agents before the `everyone` flag had it.
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    enum OlderSyncRequest {
        Sync {
            epoch: crate::wire::sync::EpochId,
            #[serde(with = "serde_bytes")]
            message: Vec<u8>,
        },
    }

    fn through_codec<A, B>(value: A) -> B
    where
        A: serde::Serialize + serde::de::DeserializeOwned + Send,
        B: serde::Serialize + serde::de::DeserializeOwned + Send,
    {
        use libp2p::request_response::Codec;
        let mut bytes = futures::io::Cursor::new(Vec::new());
        let mut write = limited_codec::<A, ()>(MAX_SYNC_MESSAGE, MAX_SYNC_MESSAGE);
        futures::executor::block_on(write.write_request(&SYNC_PROTOCOL, &mut bytes, value))
            .expect("encodes");
        let mut read = limited_codec::<B, ()>(MAX_SYNC_MESSAGE, MAX_SYNC_MESSAGE);
        let mut input = futures::io::Cursor::new(bytes.into_inner());
        futures::executor::block_on(read.read_request(&SYNC_PROTOCOL, &mut input)).expect("decodes")
    }

    #[test]
    fn the_everyone_flag_and_older_agents_understand_each_other() {
        use crate::wire::sync::{EpochId, SyncRequest};
        let epoch = EpochId {
            number: 3,
            base: "ab".into(),
        };
        // Ours, flag set, read by an older agent: the flag is ignored.
        let older: OlderSyncRequest = through_codec(SyncRequest::Sync {
            epoch: epoch.clone(),
            message: vec![1, 2, 3],
            everyone: true,
        });
        assert_eq!(
            older,
            OlderSyncRequest::Sync {
                epoch: epoch.clone(),
                message: vec![1, 2, 3]
            }
        );
        // An older agent's, read by us: not a push to everyone (we relay, as before).
        let ours: SyncRequest = through_codec(OlderSyncRequest::Sync {
            epoch: epoch.clone(),
            message: vec![4],
        });
        assert_eq!(
            ours,
            SyncRequest::Sync {
                epoch,
                message: vec![4],
                everyone: false
            }
        );
    }
}
