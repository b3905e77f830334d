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
use libp2p::{StreamProtocol, Swarm, SwarmBuilder};

use crate::wire::auth::{AuthRequest, AuthResponse, NodeInfo};
use crate::wire::join::{JoinRequest, JoinResponse};
use crate::wire::membership::{MembershipRequest, MembershipResponse};
use crate::wire::query::{QueryRequest, QueryResponse};
use crate::wire::sync::{SyncRequest, SyncResponse};

mod memory;

pub use memory::MemoryLinks;

/// Seeds aws-lc's random generator, on a thread of its own, and returns at once. Its first use
/// seeds it from CPU jitter, ~40 ms of CPU (measured with perf in the lab: `jent_*`); left
/// alone, that first use is this agent's first QUIC handshake, which every peer that heard of
/// us dials at the same moment. Call it first thing at start: it then overlaps the rest of
/// the start-up. A failure only means the first handshake pays instead.
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
/// QUIC idle timeout: a peer that goes silent (crashed, partitioned) loses its connection after
/// this long. With a 1 s keep-alive, 3 s notices a silent partition in ~3.1 s (measured; the libp2p defaults, 10 s and 5 s, take ~12 s).
pub const QUIC_IDLE_TIMEOUT_MS: u32 = 3_000;
/// QUIC keep-alive interval (see [`QUIC_IDLE_TIMEOUT_MS`]).
pub const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(1);
/// QUIC handshake deadline. A LAN handshake takes ~1-40 ms even on a Pi (the first of a process
/// ~40 ms: aws-lc-rs's first random draw); 500 ms leaves a tenfold margin. A dial started just before a partition
/// heals has its first packets dropped and only ends at this deadline, so it bounds how long a
/// heal waits before the next redial (every 0.5 s) gets through.
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

/// The composed behaviour of a mesh node.
#[derive(NetworkBehaviour)]
pub struct MeshBehaviour {
    pub auth: AuthBehaviour,
    pub join: JoinBehaviour,
    pub membership: MembershipBehaviour,
    pub sync: SyncBehaviour,
    pub query: QueryBehaviour,
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
    /// QUIC over UDP with LAN timeouts: the agent's only transport.
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

/// The mesh behaviours, each with its protocol and codec limits.
fn behaviour() -> MeshBehaviour {
    let auth_codec = limited_codec(MAX_AUTH_MESSAGE, MAX_AUTH_MESSAGE);
    let membership_codec = limited_codec(MAX_MEMBERSHIP_MESSAGE, MAX_MEMBERSHIP_MESSAGE);
    MeshBehaviour {
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

/// Builds the swarm: the mesh behaviours on `kind` (QUIC with LAN timeouts for the agent).
pub fn build_swarm(
    keypair: Keypair,
    kind: TransportKind,
) -> Result<Swarm<MeshBehaviour>, TransportError> {
    let builder = SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let swarm = match kind {
        TransportKind::Quic => builder
            .with_quic_config(|mut c| {
                c.max_idle_timeout = QUIC_IDLE_TIMEOUT_MS;
                c.keep_alive_interval = QUIC_KEEP_ALIVE;
                c.handshake_timeout = QUIC_HANDSHAKE_TIMEOUT;
                c
            })
            .with_behaviour(|_| behaviour())
            .map_err(|e| TransportError::Build(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
            .build(),
        TransportKind::Memory(links) => builder
            .with_other_transport(|key| memory::transport(key, links))
            .map_err(|e| TransportError::Build(e.to_string()))?
            .with_behaviour(|_| behaviour())
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
        .with_quic_config(|mut c| {
            c.max_idle_timeout = QUIC_IDLE_TIMEOUT_MS;
            c.keep_alive_interval = QUIC_KEEP_ALIVE;
            c.handshake_timeout = QUIC_HANDSHAKE_TIMEOUT;
            c
        })
        .with_behaviour(|_| join_behaviour(ProtocolSupport::Outbound))
        .map_err(|e| TransportError::Build(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(REQUEST_TIMEOUT))
        .build())
}

/// Parses a listen or dial address: a QUIC multiaddr, or `IP:PORT` (`[::]:7400` for IPv6),
/// or a bare IP (port 7400).
pub fn parse_quic_addr(s: &str, default_port: u16) -> Result<libp2p::Multiaddr, String> {
    use std::net::{IpAddr, SocketAddr};
    if s.starts_with('/') {
        return s
            .parse()
            .map_err(|e| format!("{s:?} is not a multiaddr: {e}"));
    }
    let sock: SocketAddr = if let Ok(sock) = s.parse() {
        sock
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        SocketAddr::new(ip, default_port)
    } else {
        return Err(format!(
            "{s:?} is not an address; use IP:PORT (e.g. 0.0.0.0:7400 or [::]:7400) or a multiaddr \
             (/ip4/0.0.0.0/udp/7400/quic-v1)"
        ));
    };
    Ok(socket_to_quic(sock))
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

    #[test]
    fn addresses_parse_in_all_forms() {
        assert_eq!(
            parse_quic_addr("0.0.0.0:7400", 7400).unwrap().to_string(),
            "/ip4/0.0.0.0/udp/7400/quic-v1"
        );
        assert_eq!(
            parse_quic_addr("[::]:7402", 7400).unwrap().to_string(),
            "/ip6/::/udp/7402/quic-v1"
        );
        assert_eq!(
            parse_quic_addr("10.0.0.1", 7400).unwrap().to_string(),
            "/ip4/10.0.0.1/udp/7400/quic-v1"
        );
        assert!(
            parse_quic_addr("nonsense", 7400)
                .unwrap_err()
                .contains("IP:PORT")
        );
        assert_eq!(
            quic_port(&"/ip4/1.2.3.4/udp/9/quic-v1".parse().unwrap()),
            Some(9)
        );
    }
}
