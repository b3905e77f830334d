//! The node: one actor that owns the libp2p swarm and wires the sans-IO cores to it.
//!
//! Inputs: swarm events (connections, auth and membership requests), discovery events (mDNS,
//! in-memory, static peers), the shutdown token, and its own deadlines (membership timers,
//! handshake timeouts, redials). Outputs: frames on the swarm, connection notices to the state
//! actor (never dropped: [`StateHandle::peer_up`]), and an immutable [`NodeSnapshot`]
//! published through a `watch` channel for readers (the API, tests).
//!
//! It decides nothing itself: [`Admission`] says who is in, [`Membership`] says who is alive,
//! the [`dial::DialPlanner`] says whom to dial and when. It owns the mapping between cores
//! and connections. The builder ([`NodeConfig`]) is where tests swap discovery and timing.
//!
//! Files: `node/dial.rs` (the dial planner), `node/requests.rs` (the request-response
//! protocols), `node/discovery_source.rs`, `node/snapshot.rs` (what readers see),
//! `node/handle.rs` (the handle), `node/children.rs` (the actors' lifecycles and shutdown
//! order), `node/advertise.rs` (the task that advertises this node's services on the LAN),
//! `node/addrs.rs` (multiaddr helpers), `node/join.rs` (answering `/mesh/join/1`: invites
//! redeemed by devices that do not hold the key yet), `node/start.rs` (building the actors),
//! `node/connections.rs` (open connections and the incarnations they belong to),
//! `node/datagrams.rs` (membership datagrams on one long-lived stream per peer).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, AdmissionAction, MeshKey};
use crate::discovery::mdns::{self, MdnsConfig, MdnsHandle};
use crate::discovery::memory::MemoryDiscovery;
use crate::discovery::{DiscoveredPeer, DiscoveryEvent};
use crate::hardware::HardwareInfo;
use crate::invite::{JoinLimiter, SharedInvites};
use crate::membership::{Membership, MembershipConfig, PeerState};
use crate::placement::MembershipSnapshot;
use crate::state::actor::{StateCommand, StateConfig, StateHandle, SyncOut, spawn_state};
use crate::state::{NodeHardware, NodeRecord};
use crate::supervisor::actor::{SupervisorConfig, SupervisorHandle, spawn_supervisor};
use crate::supervisor::query;
use crate::transport::{self, MeshBehaviour, MeshBehaviourEvent};
use crate::wire::auth::NodeInfo;
use crate::wire::join::JoinResponse;
use crate::wire::membership::{MembershipRequest, MembershipResponse};
use crate::wire::query::{MAX_REMOTE_WAIT, QueryRequest, QueryResponse};
use crate::wire::sync::{SyncRequest, SyncResponse};

mod addrs;
mod advertise;
mod children;
mod connections;
mod datagrams;
pub mod dial;
mod discovery_source;
mod error;
mod handle;
mod join;
pub mod nat;
mod publish;
mod rendezvous;
mod requests;
mod snapshot;
mod start;

use addrs::{is_loopback, is_unspecified, listen_error_reason};
use advertise::{AdvertiserConfig, spawn_advertiser};
use children::Children;
use dial::{Dial, DialPlanner};
pub use error::NodeError;
use handle::NodeCommand;
pub use handle::{KeyRotation, NodeHandle};
pub use snapshot::{LocalSnapshot, NodeSnapshot, NodeStats, PeerSnapshot};

/// Capacity of the discovery event channel. Discovery bursts are a handful of peers at start;
/// a full channel only delays a source (backpressure), nothing is lost for mDNS.
pub const DISCOVERY_CHANNEL: usize = 256;
/// How long a graceful shutdown waits for peers to acknowledge the leave notice. Peers mark
/// us `left` on receipt, so this bounds shutdown time, not correctness.
pub const LEAVE_FLUSH: Duration = Duration::from_millis(500);
/// How often the snapshot is republished when only volatile values (RTT, last seen) changed.
/// State changes are published at once.
/// Each one wakes every reader waiting on the snapshot (long polls of `mesh peers`, the
/// dashboard); 1 s is as often as a person reads a last-seen time.
pub const VOLATILE_PUBLISH: Duration = Duration::from_secs(1);
/// How long after a `dead` verdict the peer's connection is closed, if it is still `dead`
/// then. A leaving peer gossips its own `down` and sends its leave notice at about the same
/// time; the `down` may arrive first (shown `dead` for a moment), and closing at once would
/// lose the notice and leave the peer `dead` instead of `left`.
pub const DEAD_CLOSE_GRACE: Duration = LEAVE_FLUSH;
/// Most inbound sync requests awaiting the state actor's answer. Beyond it new requests are
/// dropped (the sender retries on anti-entropy).
pub const MAX_PENDING_SYNC: usize = 1024;
/// How long a graceful stop waits for the state actor to record that this node left.
pub const MARK_LEFT_TIMEOUT: Duration = Duration::from_millis(300);
/// Most inbound queries being answered at once (all peers together); beyond it new ones are
/// refused with an error answer. Each holds a task and a stream.
pub const MAX_PENDING_QUERIES: usize = 64;
/// Most join requests being decided at once (each holds a task and a durable write); beyond
/// it a request is refused as busy. Joins are rare and one by one.
pub const MAX_PENDING_JOINS: usize = 4;
/// Capacity of the node's command channel (queries from the API).
pub const NODE_COMMAND_CHANNEL: usize = 64;
/// Two connections of a pair established this close together are the two sides' crossing
/// dials (a round trip and a handshake apart), and one is closed; an older connection is left
/// alone (a stale one, from before the peer restarted, is closed when the new incarnation is
/// admitted).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(1);

/// How this node finds others.
#[derive(Clone)]
pub enum DiscoveryMode {
    /// DNS-SD on the LAN (the agent's default).
    Mdns { ip_check_interval: Duration },
    /// An in-process registry (tests, simulations).
    Memory(MemoryDiscovery),
    /// Static peers only.
    Off,
}

/// Everything a node needs to start. The agent builds it from flags and files; tests build it
/// directly.
#[derive(Clone)]
pub struct NodeConfig {
    pub keypair: Keypair,
    pub mesh_key: MeshKey,
    pub name: String,
    /// QUIC listen addresses; port 0 picks a free port (tests).
    pub listen: Vec<Multiaddr>,
    /// QUIC (the agent), or the in-process memory transport (tests; `listen` then holds
    /// `/memory/0`).
    pub transport: transport::TransportKind,
    /// Whether a listen address that fails to bind is fatal (explicit `--listen`) or only a
    /// warning (the default IPv6 listener on a host without IPv6).
    pub listen_required: Vec<bool>,
    /// Addresses dialed at start and redialed while unconnected (`--peer`).
    pub static_peers: Vec<Multiaddr>,
    /// Rendezvous points to register at and discover members through (`--rendezvous`), each
    /// ending in the point's `/p2p/ID`; dialed like static peers.
    pub rendezvous: Vec<Multiaddr>,
    /// Serve a rendezvous point (`--rendezvous-server`).
    pub rendezvous_point: Option<transport::PointConfig>,
    /// Serve a circuit relay for members behind NAT (`--relay-server`).
    pub relay_server: bool,
    /// Addresses peers can reach this node at that it cannot see itself (`--external-addr`:
    /// a port forward, a DNS name); registered at rendezvous points with the listen ones.
    pub external_addrs: Vec<Multiaddr>,
    pub hardware: HardwareInfo,
    pub discovery: DiscoveryMode,
    pub membership: MembershipConfig,
    /// Longest wait between redials of a known, unconnected peer (the profile's
    /// `redial_interval`). Dead peers are redialed within a budget per this interval for the
    /// whole mesh ([`dial::DEAD_DIALS_PER_MESH`]): a healed partition is noticed within this
    /// divided by the dials across plus a QUIC handshake. mDNS says nothing when a silent
    /// partition heals (its records live 4,500 s).
    pub redial_max: Duration,
    /// Where the state document lives; `None` keeps it in memory (tests).
    pub data_dir: Option<std::path::PathBuf>,
    /// Run this node's services; `None` runs none (its `node_id` and `node_name` are filled
    /// in by [`start_node`]).
    pub supervisor: Option<SupervisorConfig>,
}

impl NodeConfig {
    /// A node on loopback with a random key pair and port, for tests.
    pub fn for_test(name: &str, mesh_key: MeshKey, discovery: DiscoveryMode) -> Self {
        Self {
            keypair: Keypair::generate_ed25519(),
            mesh_key,
            name: name.to_string(),
            listen: vec![
                "/ip4/127.0.0.1/udp/0/quic-v1"
                    .parse()
                    .expect("literal multiaddr"),
            ],
            transport: transport::TransportKind::Quic,
            listen_required: vec![true],
            static_peers: Vec::new(),
            rendezvous: Vec::new(),
            rendezvous_point: None,
            relay_server: false,
            external_addrs: Vec::new(),
            hardware: crate::hardware::probe(),
            discovery,
            membership: MembershipConfig::lan(),
            redial_max: Duration::from_secs(2),
            data_dir: None,
            supervisor: None,
        }
    }
}

/// The running discovery source (started and stopped in [`discovery_source`]).
enum DiscoverySource {
    NotStarted,
    Mdns(MdnsHandle),
    Memory(MemoryDiscovery),
    Off,
}

/// One open connection.
#[derive(Clone, Debug)]
struct Connection {
    pub(super) id: ConnectionId,
    pub(super) remote: Multiaddr,
    /// Whether this node dialed it.
    pub(super) we_dialed: bool,
    /// Whether it goes through a relay (`/p2p-circuit`): an inbound relayed connection's
    /// remote address is only `/p2p/ID`, so this comes from the endpoint, not the address.
    pub(super) relayed: bool,
    pub(super) established: Instant,
    /// The peer's incarnation (bump) whose admission handshake ran on this connection; `None`
    /// for a duplicate or unadmitted connection.
    pub(super) incarnation: Option<u64>,
}

impl Connection {
    /// Whether this connection's handshake was the peer's incarnation `bump` or an older one
    /// (a `dead` verdict about `bump` closes it).
    fn of_incarnation_up_to(&self, bump: u64) -> bool {
        self.incarnation.is_some_and(|b| b <= bump)
    }
}

struct NodeActor {
    swarm: Swarm<MeshBehaviour>,
    /// The swarm's own metrics (libp2p-metrics: connections, their durations and errors by
    /// protocol stack, relay and hole-punch events), recorded from every event; their registry
    /// is in the handle, for `/metrics`.
    swarm_metrics: libp2p::metrics::Metrics,
    admission: Admission,
    membership: Membership,
    local_peer: PeerId,
    name: String,
    hardware: HardwareInfo,
    bump: u64,
    started_at: Instant,
    accept_services: Option<crate::supervisor::accept::AcceptServices>,
    listen_addrs: Vec<Multiaddr>,
    discovery_mode: DiscoveryMode,
    discovery: DiscoverySource,
    discovery_tx: mpsc::Sender<DiscoveryEvent>,
    /// Bumped when a listener reports an address added or gone (netlink, through the swarm):
    /// the mDNS daemons rescan interfaces then (`discovery::mdns::rescan`).
    interfaces_tx: watch::Sender<u64>,
    discovery_rx: mpsc::Receiver<DiscoveryEvent>,
    /// Handshake info of admitted peers (kept after disconnect, for `mesh peers`).
    infos: HashMap<PeerId, NodeInfo>,
    /// Open connections per peer, in the order they were established.
    connections: HashMap<PeerId, Vec<Connection>>,
    dials: DialPlanner,
    /// The connection of each peer's latest admission message (request or response).
    auth_connection: HashMap<PeerId, ConnectionId>,
    /// Set once this node is leaving: its last datagrams go as requests (see `leave`).
    leaving: bool,
    /// Peers declared `dead` whose connections close at the given time, if still `dead` then
    /// (see [`DEAD_CLOSE_GRACE`]).
    dead_closing: Vec<(PeerId, Instant)>,
    /// Membership datagrams on long-lived streams.
    datagrams: datagrams::DatagramLinks,
    leave_pending: HashSet<OutboundRequestId>,
    state: StateHandle,
    sync_out: mpsc::Receiver<SyncOut>,
    sync_pending: HashMap<u64, request_response::ResponseChannel<SyncResponse>>,
    sync_requests: HashMap<OutboundRequestId, PeerId>,
    next_sync_token: u64,
    supervisor: Option<SupervisorHandle>,
    commands: mpsc::Receiver<NodeCommand>,
    /// Inbound queries being answered: token → where the answer goes.
    query_pending: HashMap<u64, request_response::ResponseChannel<QueryResponse>>,
    next_query_token: u64,
    query_answers_tx: mpsc::Sender<(u64, QueryResponse)>,
    query_answers: mpsc::Receiver<(u64, QueryResponse)>,
    /// Outbound queries: request → who waits for the answer.
    query_requests: HashMap<OutboundRequestId, requests::OutboundQuery>,
    /// This node's invites (redeemed here; created and listed through the handle).
    invites: SharedInvites,
    join_limiter: JoinLimiter,
    /// Inbound join requests being decided: token → where the answer goes.
    join_pending: HashMap<u64, request_response::ResponseChannel<JoinResponse>>,
    next_join_token: u64,
    join_answers_tx: mpsc::Sender<(u64, JoinResponse)>,
    join_answers: mpsc::Receiver<(u64, JoinResponse)>,
    stats: NodeStats,
    snapshot_tx: watch::Sender<Arc<NodeSnapshot>>,
    /// Peers' membership states for placement (the supervisor), sent only when one changes.
    membership_tx: watch::Sender<MembershipSnapshot>,
    /// The document, for the nodes members removed (`mesh remove`).
    documents: watch::Receiver<Arc<crate::state::actor::StateSnapshot>>,
    /// Where the keyring is stored (`mesh key rotate`, a key handed over by a member).
    data_dir: Option<std::path::PathBuf>,
    /// Removed nodes: never admitted, never dialed, disconnected (see [`REMOVAL_NOTICE`]).
    removed: HashSet<PeerId>,
    /// Removed nodes still connected, and when their connections are closed.
    cut_off: Vec<(PeerId, Instant)>,
    /// When to register at and ask the rendezvous points (`--rendezvous`).
    rendezvous: crate::discovery::rendezvous::RendezvousClient,
    /// `--external-addr`.
    external_addrs: Vec<Multiaddr>,
    /// Registrations the point we serve holds (peer, namespace), for `mesh status`; bounded
    /// by the point's own limits.
    point_registrations: HashSet<(PeerId, String)>,
    /// Behind NAT or not, and the relay we listen through.
    nat: nat::NatState,
    /// Admitted peers, read by the relay we serve (members only).
    admitted_set: transport::AdmittedSet,
    /// `--relay-server`.
    relay_server: bool,
    version: u64,
    last_publish: Instant,
    dirty: bool,
    shutdown: CancellationToken,
}

/// How long a removed node's open links stay after the removal arrives, so that the document
/// carrying it reaches the node (which then stops its services) before it is cut off. One sync
/// push on a LAN takes milliseconds.
const REMOVAL_NOTICE: Duration = Duration::from_millis(500);

/// Starts a node: binds its listeners (reporting bind errors), then runs the actor (see
/// `node/start.rs`).
pub async fn start_node(config: NodeConfig) -> Result<NodeHandle, NodeError> {
    start::start(config).await
}

impl NodeActor {
    async fn run(mut self) {
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    self.leave().await;
                    break;
                }
                Some(inbound) = self.datagrams.recv() => self.on_stream_datagram(inbound),
                Some(ev) = self.discovery_rx.recv() => self.on_discovery(ev),
                Some(out) = self.sync_out.recv() => self.on_sync_out(out),
                Some((token, answer)) = self.query_answers.recv() => {
                    if let Some(channel) = self.query_pending.remove(&token) {
                        let _ = self.swarm.behaviour_mut().query.send_response(channel, answer);
                    }
                }
                Some((token, answer)) = self.join_answers.recv() => self.on_join_answer(token, answer),
                Some(command) = self.commands.recv() => self.on_command(command),
                Ok(()) = self.documents.changed() => self.on_document(),
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev).await,
                _ = tokio::time::sleep_until(deadline) => {}
            }
            self.tick(Instant::now());
        }
    }

    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut next = now + Duration::from_secs(1);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = next.min(t);
            }
        };
        consider(self.membership.next_deadline().map(Instant::from_std));
        consider(self.admission.next_deadline().map(Instant::from_std));
        consider(self.dials.next_deadline().map(Instant::from_std));
        consider(self.rendezvous.next_deadline().map(Instant::from_std));
        consider(self.nat.next_deadline().map(Instant::from_std));
        consider(Some(self.last_publish + VOLATILE_PUBLISH));
        consider(self.cut_off.iter().map(|(_, at)| *at).min());
        consider(self.dead_closing.iter().map(|(_, at)| *at).min());
        next.max(now)
    }

    fn tick(&mut self, now: Instant) {
        let std_now = now.into_std();
        let swarm = &mut self.swarm;
        self.cut_off.retain(|(peer, at)| {
            if *at > now {
                return true;
            }
            let _ = swarm.disconnect_peer_id(*peer);
            false
        });
        self.membership.handle_timers(std_now);
        let actions = self.admission.poll_timeouts(std_now);
        self.apply_admission(actions, now);
        self.flush_membership();
        self.close_dead_connections(now);
        if self.membership.take_changed() {
            self.dirty = true;
            self.schedule_dead_closes(now);
            let mut alive = std::collections::BTreeSet::new();
            for rec in self.membership.peers() {
                self.dials.on_membership(&rec.peer, rec.state, std_now);
                if rec.state.believed_alive() {
                    alive.insert(rec.peer);
                }
            }
            self.state.set_alive(alive);
        }
        self.dial(now);
        self.rendezvous_tick(now);
        self.reserve_if_due(now);
        if self.dirty || now >= self.last_publish + VOLATILE_PUBLISH {
            self.publish(now);
        }
    }

    /// The document changed: nodes newly removed by a member (`mesh remove`) are cut off
    /// (disconnected, `left` in membership) and refused from now on.
    fn on_document(&mut self) {
        let snap = self.documents.borrow_and_update().clone();
        // Members (who may still use the previous mesh key) and removed nodes, in one pass.
        let mut members = HashSet::new();
        let mut removed = HashSet::new();
        let std_now = Instant::now().into_std();
        for (id, node) in &snap.state.nodes {
            let Ok(peer) = id.parse::<PeerId>() else {
                continue;
            };
            if node.is_removed() {
                removed.insert(peer);
            } else if !self.removed.contains(&peer) {
                members.insert(peer);
                // Peer exchange: a member still running (not stopped gracefully) is dialed at
                // the addresses it recorded, unless linked already.
                if node.left_at_ms.is_none() && !self.connections.contains_key(&peer) {
                    self.dials
                        .on_member_addrs(peer, member_addrs(&node.addrs), std_now);
                }
            }
        }
        self.admission.set_members(members);
        // Once removed, refused for as long as this agent runs, even if a later change
        // (a removed node writing its own entry before it was cut off) clears the mark.
        if removed.is_subset(&self.removed) {
            return;
        }
        let now = Instant::now();
        for peer in removed.difference(&self.removed) {
            let record = &snap.state.nodes[&peer.to_base58()];
            let by = record
                .removed_by
                .as_deref()
                .map_or_else(|| "a member".to_string(), |id| snap.state.node_name(id));
            if *peer == self.local_peer {
                tracing::error!(
                    by = %by,
                    "this node was removed from the mesh: every member refuses it; to join again, \
                     stop the agent, delete its identity and mesh key, and join with a new ticket"
                );
                continue;
            }
            tracing::info!(%peer, name = %record.name, by = %by, "node removed from the mesh");
            // Its links stay a moment, so that the removal reaches it and it stops its
            // services; nothing new is admitted or dialed meanwhile.
            if self.connections.contains_key(peer) {
                self.cut_off.push((*peer, now + REMOVAL_NOTICE));
            }
            if self.membership.on_removed(*peer, now.into_std()) {
                self.dirty = true;
            }
        }
        self.removed.extend(removed);
    }

    fn local_info(&self) -> NodeInfo {
        NodeInfo {
            name: self.name.clone(),
            agent_version: crate::AGENT_VERSION.to_string(),
            protocol_version: crate::PROTOCOL_VERSION,
            // The current incarnation: foca renews it after being declared down, and peers
            // must greet the identity we have now.
            bump: self.membership.local_member().bump,
            listen_addrs: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
            hardware: self.hardware.clone(),
            observed: None,
            relay: self.relay_server,
        }
    }

    /// Starts the dials the planner says are due.
    fn dial(&mut self, now: Instant) {
        let std_now = now.into_std();
        let admission = &self.admission;
        let removed = &self.removed;
        // All links TCP (none relayed, none QUIC): UDP likely does not pass here.
        let mut links = self
            .connections
            .values()
            .flatten()
            .filter(|c| !c.relayed)
            .peekable();
        let all_tcp = links.peek().is_some() && links.all(|c| !transport::is_quic(&c.remote));
        self.dials.set_quic_first(!all_tcp);
        let dials = self.dials.poll(std_now, |p| {
            removed.contains(p) || admission.in_backoff(p, std_now)
        });
        for dial in dials {
            let opts = match dial {
                // Linked through a relay only: try its direct addresses, next to the relayed
                // link (which a direct connection then replaces).
                Dial::Peer { peer, mut addrs }
                    if self
                        .connections
                        .get(&peer)
                        .is_some_and(|c| c.iter().all(|c| c.relayed)) =>
                {
                    addrs.retain(|a| !transport::is_relayed(a));
                    if addrs.is_empty() {
                        continue;
                    }
                    DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::NotDialing)
                        .build()
                }
                Dial::Peer { peer, addrs } => DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
                Dial::Address(addr) => DialOpts::unknown_peer_id().address(addr).build(),
            };
            if let Err(e) = self.swarm.dial(opts) {
                tracing::trace!(error = %e, "dial not started");
            }
        }
    }

    async fn on_swarm_event(&mut self, event: SwarmEvent<MeshBehaviourEvent>) {
        {
            use libp2p::metrics::Recorder;
            self.swarm_metrics.record(&event);
            match &event {
                SwarmEvent::Behaviour(MeshBehaviourEvent::Relay(ev)) => {
                    self.swarm_metrics.record(ev)
                }
                SwarmEvent::Behaviour(MeshBehaviourEvent::Dcutr(ev)) => {
                    self.swarm_metrics.record(ev)
                }
                _ => {}
            }
        }
        let now = Instant::now();
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.interfaces_tx.send_modify(|n| *n += 1);
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address);
                    self.dirty = true;
                    self.state
                        .set_addrs(recorded_addrs(&self.listen_addrs, &self.external_addrs));
                    self.sync_external_addrs(now);
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.interfaces_tx.send_modify(|n| *n += 1);
                self.listen_addrs.retain(|a| a != &address);
                self.dirty = true;
                self.state
                    .set_addrs(recorded_addrs(&self.listen_addrs, &self.external_addrs));
                self.sync_external_addrs(now);
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(error = %error, "listener error");
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } if self.nat.on_listener_closed(listener_id, now.into_std()) => {
                tracing::warn!(
                    reason = ?reason,
                    "the relay reservation ended; trying again shortly"
                );
                self.dirty = true;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connection_established(peer_id, connection_id, endpoint, now),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => self.on_connection_closed(peer_id, connection_id, num_established, cause, now),
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if let (Some(expected), DialError::WrongPeerId { obtained, address }) =
                    (peer_id, &error)
                {
                    tracing::debug!(
                        %expected, %obtained, %address,
                        "another node answers at this address now; no longer dialing it there"
                    );
                    self.dials
                        .on_wrong_peer_id(&expected, *obtained, address, now.into_std());
                } else {
                    tracing::debug!(peer = ?peer_id, error = %error, "dial failed");
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(error = %error, "incoming connection failed");
            }
            SwarmEvent::Behaviour(MeshBehaviourEvent::Auth(ev)) => self.on_auth_event(ev, now),
            SwarmEvent::Behaviour(MeshBehaviourEvent::Membership(ev)) => {
                self.on_membership_event(ev, now)
            }
            SwarmEvent::Behaviour(MeshBehaviourEvent::Sync(ev)) => self.on_sync_event(ev),
            SwarmEvent::Behaviour(MeshBehaviourEvent::Query(ev)) => self.on_query_event(ev),
            SwarmEvent::Behaviour(MeshBehaviourEvent::Join(ev)) => self.on_join_event(ev),
            SwarmEvent::Behaviour(MeshBehaviourEvent::Rendezvous(ev)) => {
                self.on_rendezvous_event(ev, now)
            }
            SwarmEvent::Behaviour(MeshBehaviourEvent::RendezvousPoint(ev)) => {
                self.on_point_event(ev)
            }
            SwarmEvent::Behaviour(MeshBehaviourEvent::RelayClient(ev)) => {
                self.on_relay_client_event(ev)
            }
            SwarmEvent::Behaviour(MeshBehaviourEvent::Relay(ev)) => self.on_relay_event(ev),
            SwarmEvent::Behaviour(MeshBehaviourEvent::Dcutr(ev)) => self.on_dcutr_event(ev),
            _ => {}
        }
    }

    /// Graceful leave: gossip our departure, tell every admitted peer directly, wait briefly
    /// for their acks, then withdraw from discovery (mDNS goodbye).
    async fn leave(&mut self) {
        // Record the departure in the document first, so peers receive it before we go.
        let (reply, done) = tokio::sync::oneshot::channel();
        if self.state.send(StateCommand::MarkLeft { reply }).await {
            let _ = tokio::time::timeout(MARK_LEFT_TIMEOUT, done).await;
        }
        while let Ok(out) = self.sync_out.try_recv() {
            self.on_sync_out(out);
        }
        let now = Instant::now();
        // The current incarnation: foca may have renewed it since start (after being declared
        // down during a partition), and peers match the notice against it.
        let bump = self.membership.local_member().bump;
        // The notice first, then foca's own `down` for us, both as requests: on the faster
        // membership stream, foca's `down` would overtake the notice and show us `dead`
        // (until the notice arrives) instead of `left`.
        let admitted: Vec<PeerId> = self
            .connections
            .keys()
            .filter(|p| self.admission.is_admitted(p))
            .copied()
            .collect();
        for peer in admitted {
            let id = self
                .swarm
                .behaviour_mut()
                .membership
                .send_request(&peer, MembershipRequest::Leave { peer: None, bump });
            self.leave_pending.insert(id);
        }
        self.leaving = true;
        self.membership.leave(now.into_std());
        self.flush_membership();
        let deadline = now + LEAVE_FLUSH;
        while !self.leave_pending.is_empty() || !self.sync_requests.is_empty() {
            tokio::select! {
                Some(out) = self.sync_out.recv() => self.on_sync_out(out),
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev).await,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        self.stop_discovery().await;
        tracing::info!("left the mesh");
    }
}

/// The addresses this node records in the document for members to dial it at (peer
/// exchange): its `--external-addr`s first (a port forward, a DNS name: reachable where its
/// own may not be), then its listen addresses.
fn recorded_addrs(listen: &[Multiaddr], external: &[Multiaddr]) -> Vec<String> {
    let mut out: Vec<String> = external.iter().map(|a| a.to_string()).collect();
    for a in listen {
        let a = a.to_string();
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// The dialable addresses of a member's record: loopback ones only when the record has
/// nothing else (a mesh on one host), never unspecified ones, at most
/// [`dial::MAX_TARGET_ADDRS`].
fn member_addrs(recorded: &[String]) -> Vec<Multiaddr> {
    let parsed: Vec<Multiaddr> = recorded
        .iter()
        .take(dial::MAX_TARGET_ADDRS)
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .filter(|a| !is_unspecified(a))
        .collect();
    if parsed.iter().all(is_loopback) {
        parsed
    } else {
        parsed.into_iter().filter(|a| !is_loopback(a)).collect()
    }
}

/// The supervisor's way to ask members questions (before an exclusive start): the node's own
/// query path, as `NodeHandle::query`.
fn peer_ask(commands: mpsc::Sender<NodeCommand>) -> crate::supervisor::actor::PeerAsk {
    std::sync::Arc::new(move |node, request| {
        let commands = commands.clone();
        Box::pin(async move {
            let peer: PeerId = node.as_str().parse().ok()?;
            let (reply, rx) = oneshot::channel();
            commands
                .send(NodeCommand::Query {
                    peer,
                    request,
                    reply,
                })
                .await
                .ok()?;
            rx.await.ok()?.ok()
        })
    })
}
