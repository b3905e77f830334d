//! The node: one actor that owns the libp2p swarm and wires the sans-IO cores to it.
//!
//! Inputs: swarm events (connections, auth and membership requests), discovery events (mDNS,
//! in-memory, static peers), the shutdown token, and its own deadlines (membership timers,
//! handshake timeouts, redials). Outputs: frames on the swarm, and an immutable
//! [`NodeSnapshot`] published through a `watch` channel for readers (the API, tests).
//!
//! It decides nothing itself: [`Admission`] says who is in, [`Membership`] says who is alive.
//! It owns the dial policy (who to dial, when to retry) and the mapping between cores and
//! connections. The builder ([`NodeConfig`]) is where tests swap discovery and timing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, AdmissionAction, AdmissionStats, MeshId, MeshKey};
use crate::discovery::mdns::{self, MdnsConfig, MdnsHandle};
use crate::discovery::memory::MemoryDiscovery;
use crate::discovery::{DiscoveredPeer, DiscoveryEvent};
use crate::hardware::HardwareInfo;
use crate::membership::{Membership, MembershipConfig, MembershipStats, PeerState};
use crate::state::actor::{StateCommand, StateConfig, StateHandle, SyncOut, spawn_state};
use crate::state::{NodeHardware, NodeRecord};
use crate::supervisor::actor::{SupervisorConfig, SupervisorHandle, spawn_supervisor};
use crate::supervisor::query;
use crate::transport::{self, MeshBehaviour, MeshBehaviourEvent};
use crate::wire::auth::NodeInfo;
use crate::wire::membership::{MembershipRequest, MembershipResponse};
use crate::wire::query::{MAX_REMOTE_WAIT, QueryRequest, QueryResponse};
use crate::wire::sync::{SyncRequest, SyncResponse};

/// Capacity of the discovery event channel. Discovery bursts are a handful of peers at start;
/// a full channel only delays a source (backpressure), nothing is lost for mDNS.
pub const DISCOVERY_CHANNEL: usize = 256;
/// Delay before the node with the *higher* id dials a newly discovered peer. The lower id dials
/// at once; waiting lets its connection arrive first, so a pair ends up with one connection
/// instead of two (measured: both sides dialing at once gives ~2 connections per pair).
pub const DIAL_TIE_BREAK: Duration = Duration::from_millis(250);
/// First redial delay after a failed dial; doubles up to [`NodeConfig::redial_max`].
pub const REDIAL_MIN: Duration = Duration::from_millis(250);
/// How long a graceful shutdown waits for peers to acknowledge the leave notice. Peers mark
/// us `left` on receipt, so this bounds shutdown time, not correctness.
pub const LEAVE_FLUSH: Duration = Duration::from_millis(500);
/// How often the snapshot is republished when only volatile values (RTT, last seen) changed.
/// State changes are published at once.
pub const VOLATILE_PUBLISH: Duration = Duration::from_millis(500);
/// Most in-flight membership requests tracked for RTT; beyond it samples are skipped.
pub const MAX_RTT_PENDING: usize = 4096;
/// Most inbound sync requests awaiting the state actor's answer. Beyond it new requests are
/// dropped (the sender retries on anti-entropy).
pub const MAX_PENDING_SYNC: usize = 1024;
/// How long a graceful stop waits for the state actor to record that this node left.
pub const MARK_LEFT_TIMEOUT: Duration = Duration::from_millis(300);
/// Most inbound queries being answered at once (all peers together); beyond it new ones are
/// refused with an error answer. Each holds a task and a stream.
pub const MAX_PENDING_QUERIES: usize = 64;
/// Capacity of the node's command channel (queries from the API).
pub const NODE_COMMAND_CHANNEL: usize = 64;
/// Most dial targets remembered (discovered or static). Bounds memory against a LAN flooded
/// with fake advertisements; the oldest-failing target is evicted first.
pub const MAX_DIAL_TARGETS: usize = 1024;

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
    /// Whether a listen address that fails to bind is fatal (explicit `--listen`) or only a
    /// warning (the default IPv6 listener on a host without IPv6).
    pub listen_required: Vec<bool>,
    /// Addresses dialed at start and redialed while unconnected (`--peer`).
    pub static_peers: Vec<Multiaddr>,
    pub hardware: HardwareInfo,
    pub discovery: DiscoveryMode,
    pub membership: MembershipConfig,
    /// Longest wait between redials of a known, unconnected peer (the profile's
    /// `redial_interval`). A healed partition is noticed within this plus a QUIC handshake;
    /// mDNS says nothing when a silent partition heals (its records live 4,500 s).
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
            listen_required: vec![true],
            static_peers: Vec::new(),
            hardware: crate::hardware::probe(),
            discovery,
            membership: MembershipConfig::lan(),
            redial_max: Duration::from_secs(2),
            data_dir: None,
            supervisor: None,
        }
    }
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("no listen address could be bound")]
    NoListener,
    #[error("cannot start mDNS discovery: {0}")]
    Discovery(String),
    #[error("cannot open the state document: {0}")]
    State(#[from] crate::state::StateError),
    #[error("the node actor stopped")]
    Stopped,
    #[error("node {peer} is not connected")]
    NotConnected { peer: PeerId },
    #[error("asking node {peer} failed: {reason}")]
    QueryFailed { peer: PeerId, reason: String },
}

/// Commands to the node actor.
enum NodeCommand {
    Query {
        peer: PeerId,
        request: QueryRequest,
        reply: oneshot::Sender<Result<QueryResponse, NodeError>>,
    },
}

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

/// A cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    snapshot: watch::Receiver<Arc<NodeSnapshot>>,
    shutdown: CancellationToken,
    task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    state_abort: tokio::task::AbortHandle,
    peer_id: PeerId,
    state: StateHandle,
    supervisor: Option<SupervisorHandle>,
    supervisor_shutdown: CancellationToken,
    supervisor_task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    commands: mpsc::Sender<NodeCommand>,
}

impl NodeHandle {
    /// This node's supervisor, if it runs services.
    pub fn supervisor(&self) -> Option<&SupervisorHandle> {
        self.supervisor.as_ref()
    }

    /// Asks another node a question through the mesh (`/mesh/query/1`).
    pub async fn query(
        &self,
        peer: PeerId,
        request: QueryRequest,
    ) -> Result<QueryResponse, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(NodeCommand::Query {
                peer,
                request,
                reply,
            })
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The replicated state document.
    pub fn state(&self) -> &StateHandle {
        &self.state
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<NodeSnapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that wakes on every republished snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<NodeSnapshot>> {
        self.snapshot.clone()
    }

    /// Graceful stop: tells peers we leave, sends mDNS goodbyes, waits for the actor to end.
    pub async fn shutdown(&self) {
        // Services first (reverse dependency order), while the mesh can still hear their
        // final states.
        self.supervisor_shutdown.cancel();
        let supervisor = self
            .supervisor_task
            .lock()
            .expect("lock is never poisoned")
            .take();
        if let Some(task) = supervisor {
            let _ = task.await;
        }
        self.shutdown.cancel();
        let task = self.task.lock().expect("lock is never poisoned").take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Stops the actor at once, telling no one: what peers see of a crash (`kill -9`),
    /// for tests.
    pub fn abort(&self) {
        if let Some(task) = self.task.lock().expect("lock is never poisoned").take() {
            task.abort();
        }
        // Its services keep running, as they would after a real crash.
        if let Some(task) = self
            .supervisor_task
            .lock()
            .expect("lock is never poisoned")
            .take()
        {
            task.abort();
        }
        self.state_abort.abort();
    }

    /// Waits until `pred` holds for a snapshot, or `timeout` passes. Returns the snapshot that
    /// satisfied it.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&NodeSnapshot) -> bool,
    ) -> Option<Arc<NodeSnapshot>> {
        let mut rx = self.snapshot.clone();
        tokio::time::timeout(timeout, async {
            loop {
                let snap = rx.borrow_and_update().clone();
                if pred(&snap) {
                    return Some(snap);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten()
    }
}

/// A peer we may dial, and when.
#[derive(Debug)]
struct DialTarget {
    addrs: Vec<Multiaddr>,
    next_dial: Instant,
    failures: u32,
    /// The peer left gracefully or sent a goodbye: wait for it to be discovered again.
    paused: bool,
}

#[derive(Debug)]
struct StaticPeer {
    addr: Multiaddr,
    /// Learned on first connection.
    peer: Option<PeerId>,
    next_dial: Instant,
    failures: u32,
}

enum DiscoverySource {
    NotStarted,
    Mdns(MdnsHandle),
    Memory(MemoryDiscovery),
    Off,
}

struct NodeActor {
    swarm: Swarm<MeshBehaviour>,
    admission: Admission,
    membership: Membership,
    local_peer: PeerId,
    name: String,
    mesh_id: MeshId,
    hardware: HardwareInfo,
    bump: u64,
    started_at: Instant,
    accept_services: Option<crate::supervisor::accept::AcceptServices>,
    listen_addrs: Vec<Multiaddr>,
    discovery_mode: DiscoveryMode,
    discovery: DiscoverySource,
    discovery_tx: mpsc::Sender<DiscoveryEvent>,
    discovery_rx: mpsc::Receiver<DiscoveryEvent>,
    /// Handshake info of admitted peers (kept after disconnect, for `mesh peers`).
    infos: HashMap<PeerId, NodeInfo>,
    connections: HashMap<PeerId, Vec<(ConnectionId, Multiaddr)>>,
    targets: HashMap<PeerId, DialTarget>,
    static_peers: Vec<StaticPeer>,
    redial_max: Duration,
    rtt_pending: HashMap<OutboundRequestId, (PeerId, Instant)>,
    leave_pending: HashSet<OutboundRequestId>,
    state: StateHandle,
    sync_out: mpsc::Receiver<SyncOut>,
    sync_pending: HashMap<u64, request_response::ResponseChannel<SyncResponse>>,
    sync_requests: HashMap<OutboundRequestId, PeerId>,
    next_sync_token: u64,
    state_shutdown: CancellationToken,
    state_task: Option<JoinHandle<()>>,
    supervisor: Option<SupervisorHandle>,
    commands: mpsc::Receiver<NodeCommand>,
    /// Inbound queries being answered: token → where the answer goes.
    query_pending: HashMap<u64, request_response::ResponseChannel<QueryResponse>>,
    next_query_token: u64,
    query_answers_tx: mpsc::Sender<(u64, QueryResponse)>,
    query_answers: mpsc::Receiver<(u64, QueryResponse)>,
    /// Outbound queries: request → who waits for the answer.
    query_requests: HashMap<OutboundRequestId, oneshot::Sender<Result<QueryResponse, NodeError>>>,
    stats: NodeStats,
    snapshot_tx: watch::Sender<Arc<NodeSnapshot>>,
    version: u64,
    last_publish: Instant,
    dirty: bool,
    shutdown: CancellationToken,
}

/// Why a listener could not be bound, in words a user can act on. libp2p's transport error
/// prints nothing of its cause by itself and wraps the socket error in types that cannot be
/// downcast from outside, so the text comes from its source chain, and a port in use is
/// recognised by binding the same UDP address again: the kernel's answer, not a guess from
/// error text. A busy port is named, with who may hold it and how to pick another.
fn listen_error_reason(addr: &Multiaddr, err: &(dyn std::error::Error + 'static)) -> String {
    let mut causes: Vec<String> = Vec::new();
    // Bounded: error chains are a handful of links deep.
    let mut next = Some(err);
    while let Some(e) = next.take() {
        let text = e.to_string();
        if !text.is_empty() && !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        if causes.len() < 16 {
            next = e.source();
        }
    }
    if let Some(socket) = udp_socket_addr(addr)
        && std::net::UdpSocket::bind(socket)
            .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
    {
        let port = socket.port();
        return format!(
            "UDP port {port} is in use by another mesh agent or another program (see `ss -ulpn \
             'sport = :{port}'`); stop it, or choose another port with --listen IP:PORT"
        );
    }
    if causes.is_empty() {
        "the transport gave no reason".to_string()
    } else {
        causes.join(": ")
    }
}

/// The UDP socket address of a QUIC multiaddr (`/ip4|ip6/A/udp/P/...`).
fn udp_socket_addr(addr: &Multiaddr) -> Option<std::net::SocketAddr> {
    use libp2p::multiaddr::Protocol;
    let mut parts = addr.iter();
    let ip: std::net::IpAddr = match parts.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    match parts.next()? {
        Protocol::Udp(port) => Some(std::net::SocketAddr::new(ip, port)),
        _ => None,
    }
}

/// Starts a node: binds its listeners (reporting bind errors), then runs the actor.
pub async fn start_node(config: NodeConfig) -> Result<NodeHandle, NodeError> {
    let local_peer = config.keypair.public().to_peer_id();
    let mut swarm = transport::build_swarm(config.keypair.clone())?;
    let mut bound = 0;
    for (i, addr) in config.listen.iter().enumerate() {
        match swarm.listen_on(addr.clone()) {
            Ok(_) => bound += 1,
            Err(e) => {
                let reason = listen_error_reason(addr, &e);
                if config.listen_required.get(i).copied().unwrap_or(true) {
                    return Err(NodeError::Listen {
                        addr: addr.clone(),
                        reason,
                    });
                }
                tracing::warn!(%addr, error = %reason, "optional listener not bound");
            }
        }
    }
    if bound == 0 {
        return Err(NodeError::NoListener);
    }
    let now = Instant::now();
    let bump = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1);
    let mesh_id = config.mesh_key.mesh_id();
    let (discovery_tx, discovery_rx) = mpsc::channel(DISCOVERY_CHANNEL);
    let shutdown = CancellationToken::new();
    let local = LocalSnapshot {
        peer_id: local_peer,
        name: config.name.clone(),
        mesh_id,
        listen_addrs: Vec::new(),
        hardware: config.hardware.clone(),
        started_at: now,
        bump,
        accept_services: config.supervisor.as_ref().map(|s| s.accept_services),
    };
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(NodeSnapshot {
        version: 0,
        taken_at: now,
        local,
        peers: Vec::new(),
        stats: NodeStats::default(),
    }));
    let static_peers = config
        .static_peers
        .iter()
        .map(|addr| StaticPeer {
            addr: addr.clone(),
            peer: None,
            next_dial: now,
            failures: 0,
        })
        .collect();
    // Wait for the listeners to report their concrete addresses (port 0 resolved), so this
    // node's record, its first snapshot and its discovery announcement carry them. Any other
    // event (an early incoming connection) is kept and handed to the actor once it exists.
    let deadline = now + Duration::from_secs(5);
    let mut listen_addrs: Vec<Multiaddr> = Vec::new();
    let mut early_events = Vec::new();
    while listen_addrs.is_empty() {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { address, .. } => {
                    tracing::info!(%address, "listening");
                    listen_addrs.push(address);
                }
                other => early_events.push(other),
            },
            _ = tokio::time::sleep_until(deadline) => return Err(NodeError::NoListener),
        }
    }
    let state_shutdown = CancellationToken::new();
    let (state, sync_out, state_task) = spawn_state(
        StateConfig {
            local: local_peer,
            data_dir: config.data_dir.clone(),
            self_record: NodeRecord {
                name: config.name.clone(),
                addrs: listen_addrs.iter().map(|a| a.to_string()).collect(),
                hardware: NodeHardware::from(&config.hardware),
                version: crate::AGENT_VERSION.to_string(),
                ..Default::default()
            },
        },
        state_shutdown.clone(),
    )?;
    let supervisor_shutdown = CancellationToken::new();
    let (supervisor, supervisor_task) = match config.supervisor.clone() {
        Some(mut sup) => {
            sup.node_id = local_peer.to_base58();
            sup.node_name = config.name.clone();
            let (handle, task) = spawn_supervisor(sup, state.clone(), supervisor_shutdown.clone());
            (Some(handle), Some(task))
        }
        None => (None, None),
    };
    let (commands_tx, commands) = mpsc::channel(NODE_COMMAND_CHANNEL);
    let (query_answers_tx, query_answers) = mpsc::channel(MAX_PENDING_QUERIES);
    let mut actor = NodeActor {
        swarm,
        admission: Admission::new(config.mesh_key.clone(), local_peer),
        membership: Membership::new(local_peer, bump, &config.membership, rand::random()),
        local_peer,
        name: config.name.clone(),
        mesh_id,
        hardware: config.hardware.clone(),
        bump,
        started_at: now,
        accept_services: config.supervisor.as_ref().map(|s| s.accept_services),
        listen_addrs,
        discovery_mode: config.discovery.clone(),
        discovery: DiscoverySource::NotStarted,
        discovery_tx,
        discovery_rx,
        infos: HashMap::new(),
        connections: HashMap::new(),
        targets: HashMap::new(),
        static_peers,
        redial_max: config.redial_max,
        rtt_pending: HashMap::new(),
        leave_pending: HashSet::new(),
        state: state.clone(),
        sync_out,
        sync_pending: HashMap::new(),
        sync_requests: HashMap::new(),
        next_sync_token: 0,
        state_shutdown,
        state_task: None,
        supervisor: supervisor.clone(),
        commands,
        query_pending: HashMap::new(),
        next_query_token: 0,
        query_answers_tx,
        query_answers,
        query_requests: HashMap::new(),
        stats: NodeStats::default(),
        snapshot_tx,
        version: 0,
        last_publish: now,
        dirty: true,
        shutdown: shutdown.clone(),
    };
    for ev in early_events {
        actor.on_swarm_event(ev).await;
    }
    actor.start_discovery().await?;
    actor.publish(Instant::now());
    // The actor awaits the state task on a graceful stop; the handle keeps an abort handle.
    let state_abort = state_task.abort_handle();
    actor.state_task = Some(state_task);
    let task = tokio::spawn(actor.run());
    Ok(NodeHandle {
        snapshot: snapshot_rx,
        shutdown,
        task: Arc::new(std::sync::Mutex::new(Some(task))),
        state_abort,
        peer_id: local_peer,
        state,
        supervisor,
        supervisor_shutdown,
        supervisor_task: Arc::new(std::sync::Mutex::new(supervisor_task)),
        commands: commands_tx,
    })
}

fn backoff(failures: u32, max: Duration) -> Duration {
    REDIAL_MIN.saturating_mul(1u32 << failures.min(8)).min(max)
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
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
                Some(ev) = self.discovery_rx.recv() => self.on_discovery(ev),
                Some(out) = self.sync_out.recv() => self.on_sync_out(out),
                Some((token, answer)) = self.query_answers.recv() => {
                    if let Some(channel) = self.query_pending.remove(&token) {
                        let _ = self.swarm.behaviour_mut().query.send_response(channel, answer);
                    }
                }
                Some(command) = self.commands.recv() => self.on_command(command),
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev).await,
                _ = tokio::time::sleep_until(deadline) => {}
            }
            self.tick(Instant::now());
        }
        self.state_shutdown.cancel();
        if let Some(task) = self.state_task.take() {
            let _ = task.await;
        }
    }

    fn on_sync_out(&mut self, out: SyncOut) {
        match out {
            SyncOut::Request(peer, request) => {
                if !self.admission.is_admitted(&peer) || !self.connections.contains_key(&peer) {
                    self.state.try_send(StateCommand::SendFailed {
                        peer,
                        reason: "not connected and admitted".into(),
                    });
                    return;
                }
                let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
                self.sync_requests.insert(id, peer);
            }
            SyncOut::Respond(token, response) => {
                if let Some(channel) = self.sync_pending.remove(&token) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_response(channel, response);
                }
            }
        }
    }

    fn on_command(&mut self, command: NodeCommand) {
        match command {
            NodeCommand::Query {
                peer,
                request,
                reply,
            } => {
                if !self.admission.is_admitted(&peer) || !self.connections.contains_key(&peer) {
                    let _ = reply.send(Err(NodeError::NotConnected { peer }));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .query
                    .send_request(&peer, request);
                self.query_requests.insert(id, reply);
            }
        }
    }

    fn on_query_event(&mut self, ev: request_response::Event<QueryRequest, QueryResponse>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let behaviour = &mut self.swarm.behaviour_mut().query;
                    if !self.admission.is_admitted(&peer) {
                        self.stats.unadmitted_requests += 1;
                        let _ = behaviour.send_response(channel, QueryResponse::NotAdmitted);
                        return;
                    }
                    if self.query_pending.len() >= MAX_PENDING_QUERIES {
                        let _ = behaviour.send_response(
                            channel,
                            QueryResponse::Error("too many queries at once; retry".into()),
                        );
                        return;
                    }
                    let token = self.next_query_token;
                    self.next_query_token += 1;
                    self.query_pending.insert(token, channel);
                    let supervisor = self.supervisor.clone();
                    let answers = self.query_answers_tx.clone();
                    tokio::spawn(async move {
                        let answer =
                            query::answer(supervisor.as_ref(), request, MAX_REMOTE_WAIT).await;
                        let _ = answers.send((token, answer)).await;
                    });
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.query_requests.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.query_requests.remove(&request_id) {
                    let _ = reply.send(Err(NodeError::QueryFailed {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure { error, .. } => {
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    self.stats.malformed_inbound += 1;
                }
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_sync_event(&mut self, ev: request_response::Event<SyncRequest, SyncResponse>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    if !self.admission.is_admitted(&peer) {
                        self.stats.unadmitted_requests += 1;
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .sync
                            .send_response(channel, SyncResponse::NotAdmitted);
                        return;
                    }
                    if self.sync_pending.len() >= MAX_PENDING_SYNC {
                        // Dropping the channel fails the peer's request; it retries later.
                        return;
                    }
                    let token = self.next_sync_token;
                    self.next_sync_token += 1;
                    if self.state.try_send(StateCommand::Inbound {
                        peer,
                        token,
                        request,
                    }) {
                        self.sync_pending.insert(token, channel);
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.sync_requests.remove(&request_id);
                    self.state
                        .try_send(StateCommand::Response { peer, response });
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.sync_requests.remove(&request_id);
                tracing::debug!(%peer, %error, "sync request failed");
                self.state.try_send(StateCommand::SendFailed {
                    peer,
                    reason: format!("request failed: {error}"),
                });
            }
            request_response::Event::InboundFailure { error, .. } => {
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    self.stats.malformed_inbound += 1;
                }
            }
            request_response::Event::ResponseSent { .. } => {}
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
        consider(
            self.targets
                .iter()
                .filter(|(p, t)| !t.paused && !self.connections.contains_key(p))
                .map(|(_, t)| t.next_dial)
                .min(),
        );
        consider(
            self.static_peers
                .iter()
                .filter(|s| s.peer.is_none_or(|p| !self.connections.contains_key(&p)))
                .map(|s| s.next_dial)
                .min(),
        );
        consider(Some(self.last_publish + VOLATILE_PUBLISH));
        next.max(now)
    }

    fn tick(&mut self, now: Instant) {
        let std_now = now.into_std();
        self.membership.handle_timers(std_now);
        let actions = self.admission.poll_timeouts(std_now);
        self.apply_admission(actions, now);
        self.flush_membership(now);
        self.redial(now);
        if self.membership.take_changed() {
            self.dirty = true;
        }
        if self.dirty || now >= self.last_publish + VOLATILE_PUBLISH {
            self.publish(now);
        }
    }

    async fn start_discovery(&mut self) -> Result<(), NodeError> {
        let port = self
            .listen_addrs
            .iter()
            .find_map(transport::quic_port)
            .unwrap_or(0);
        self.discovery = match self.discovery_mode.clone() {
            DiscoveryMode::Mdns { ip_check_interval } => {
                let handle = mdns::spawn_mdns(
                    MdnsConfig {
                        node_name: self.name.clone(),
                        peer_id: self.local_peer,
                        mesh_id: self.mesh_id.to_string(),
                        protocol_version: crate::PROTOCOL_VERSION,
                        agent_version: crate::AGENT_VERSION.to_string(),
                        quic_port: port,
                        ip_check_interval,
                    },
                    self.discovery_tx.clone(),
                    self.shutdown.child_token(),
                )
                .map_err(|e| NodeError::Discovery(e.to_string()))?;
                DiscoverySource::Mdns(handle)
            }
            DiscoveryMode::Memory(registry) => {
                registry.announce(
                    self.mesh_id,
                    DiscoveredPeer {
                        peer_id: self.local_peer,
                        name: self.name.clone(),
                        addrs: self.listen_addrs.clone(),
                        version: crate::AGENT_VERSION.to_string(),
                    },
                    self.discovery_tx.clone(),
                );
                DiscoverySource::Memory(registry)
            }
            DiscoveryMode::Off => DiscoverySource::Off,
        };
        Ok(())
    }

    async fn stop_discovery(&mut self) {
        match std::mem::replace(&mut self.discovery, DiscoverySource::Off) {
            DiscoverySource::Mdns(handle) => handle.stop().await,
            DiscoverySource::Memory(registry) => registry.withdraw(&self.local_peer),
            DiscoverySource::NotStarted | DiscoverySource::Off => {}
        }
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
        }
    }

    fn on_discovery(&mut self, ev: DiscoveryEvent) {
        let now = Instant::now();
        match ev {
            DiscoveryEvent::Found(peer) => {
                if peer.peer_id == self.local_peer {
                    return;
                }
                let delay = if self.local_peer < peer.peer_id {
                    Duration::ZERO
                } else {
                    DIAL_TIE_BREAK
                };
                self.make_target_room(&peer.peer_id);
                let target = self
                    .targets
                    .entry(peer.peer_id)
                    .or_insert_with(|| DialTarget {
                        addrs: Vec::new(),
                        next_dial: now + delay,
                        failures: 0,
                        paused: false,
                    });
                for addr in peer.addrs {
                    if !target.addrs.contains(&addr) {
                        target.addrs.push(addr);
                    }
                }
                if target.paused {
                    target.paused = false;
                    target.failures = 0;
                    target.next_dial = now + delay;
                }
                tracing::debug!(peer = %peer.peer_id, name = %peer.name, "discovered");
            }
            DiscoveryEvent::Lost(peer) => {
                if let Some(t) = self.targets.get_mut(&peer) {
                    t.paused = true;
                }
            }
        }
    }

    fn make_target_room(&mut self, incoming: &PeerId) {
        if self.targets.len() < MAX_DIAL_TARGETS || self.targets.contains_key(incoming) {
            return;
        }
        if let Some(worst) = self
            .targets
            .iter()
            .filter(|(p, _)| !self.connections.contains_key(p))
            .max_by_key(|(_, t)| t.failures)
            .map(|(p, _)| *p)
        {
            self.targets.remove(&worst);
        }
    }

    fn redial(&mut self, now: Instant) {
        let mut dials: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
        let std_now = now.into_std();
        for (peer, t) in self.targets.iter_mut() {
            if t.paused
                || t.next_dial > now
                || t.addrs.is_empty()
                || self.connections.contains_key(peer)
                || self.admission.in_backoff(peer, std_now)
            {
                continue;
            }
            // Set the next attempt now; a success resets it on connection.
            t.next_dial = now + backoff(t.failures, self.redial_max);
            t.failures = t.failures.saturating_add(1);
            dials.push((*peer, t.addrs.clone()));
        }
        for (peer, addrs) in dials {
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::trace!(%peer, error = %e, "dial not started");
            }
        }
        for s in self.static_peers.iter_mut() {
            if s.next_dial > now || s.peer.is_some_and(|p| self.connections.contains_key(&p)) {
                continue;
            }
            if s.peer
                .is_some_and(|p| self.admission.in_backoff(&p, std_now))
            {
                continue;
            }
            s.next_dial = now + backoff(s.failures, self.redial_max);
            s.failures = s.failures.saturating_add(1);
            let opts = match s.peer {
                Some(p) => DialOpts::peer_id(p)
                    .addresses(vec![s.addr.clone()])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
                None => DialOpts::unknown_peer_id().address(s.addr.clone()).build(),
            };
            if let Err(e) = self.swarm.dial(opts) {
                tracing::trace!(addr = %s.addr, error = %e, "static dial not started");
            }
        }
    }

    async fn on_swarm_event(&mut self, event: SwarmEvent<MeshBehaviourEvent>) {
        let now = Instant::now();
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address);
                    self.dirty = true;
                    self.state.try_send(StateCommand::SetAddrs(
                        self.listen_addrs.iter().map(|a| a.to_string()).collect(),
                    ));
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
                self.dirty = true;
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(error = %error, "listener error");
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
            } => {
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.retain(|(id, _)| *id != connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
                if num_established == 0 {
                    self.connections.remove(&peer_id);
                    if self.admission.is_admitted(&peer_id) {
                        self.state.try_send(StateCommand::PeerDown(peer_id));
                    }
                    self.membership.on_disconnected(&peer_id);
                    let actions = self.admission.on_disconnected(&peer_id, now.into_std());
                    self.apply_admission(actions, now);
                    if let Some(t) = self.targets.get_mut(&peer_id) {
                        t.next_dial = t.next_dial.min(now + REDIAL_MIN);
                    }
                    self.dirty = true;
                    tracing::debug!(peer = %peer_id, cause = ?cause, "disconnected");
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, error = %error, "dial failed");
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
            _ => {}
        }
    }

    fn on_connection_established(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        endpoint: ConnectedPoint,
        now: Instant,
    ) {
        let std_now = now.into_std();
        if peer == self.local_peer {
            let _ = self.swarm.close_connection(connection_id);
            return;
        }
        if self.admission.in_backoff(&peer, std_now) {
            self.admission.count_refused();
            let _ = self.swarm.close_connection(connection_id);
            tracing::debug!(%peer, "refused connection from peer in admission backoff");
            return;
        }
        let we_dialed = endpoint.is_dialer();
        let remote = endpoint.get_remote_address().clone();
        self.connections
            .entry(peer)
            .or_default()
            .push((connection_id, remote.clone()));
        if we_dialed {
            if let Some(s) = self
                .static_peers
                .iter_mut()
                .find(|s| s.addr == remote || s.peer == Some(peer))
            {
                s.peer = Some(peer);
                s.failures = 0;
            }
            if let Some(t) = self.targets.get_mut(&peer) {
                t.failures = 0;
            }
        }
        self.dirty = true;
        let actions = self.admission.on_connected(peer, we_dialed, std_now);
        self.apply_admission(actions, now);
    }

    fn on_auth_event(
        &mut self,
        ev: request_response::Event<
            crate::wire::auth::AuthRequest<NodeInfo>,
            crate::wire::auth::AuthResponse<NodeInfo>,
        >,
        now: Instant,
    ) {
        let std_now = now.into_std();
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let info = self.local_info();
                    let (response, actions) =
                        self.admission
                            .on_request(peer, request, move || info, std_now);
                    if let Some(response) = response {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .auth
                            .send_response(channel, response);
                    }
                    self.apply_admission(actions, now);
                }
                request_response::Message::Response { response, .. } => {
                    let info = self.local_info();
                    let actions = self
                        .admission
                        .on_response(peer, response, move || info, std_now);
                    self.apply_admission(actions, now);
                }
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "auth request failed");
                let unsupported = matches!(
                    error,
                    request_response::OutboundFailure::UnsupportedProtocols
                );
                let still_connected = self.connections.contains_key(&peer);
                let actions = self.admission.on_transport_failure(
                    peer,
                    unsupported,
                    still_connected,
                    std_now,
                );
                self.apply_admission(actions, now);
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    self.stats.malformed_inbound += 1;
                }
                tracing::debug!(%peer, %error, "inbound auth failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn apply_admission(&mut self, actions: Vec<AdmissionAction<NodeInfo>>, now: Instant) {
        for action in actions {
            match action {
                AdmissionAction::Send(peer, req) => {
                    self.swarm.behaviour_mut().auth.send_request(&peer, req);
                }
                AdmissionAction::Admitted { peer, info } => {
                    let info = info.sanitized();
                    tracing::info!(%peer, name = %info.name, "peer admitted");
                    self.learn_addrs(peer, &info);
                    self.membership.on_admitted(peer, info.bump, now.into_std());
                    self.state.try_send(StateCommand::PeerUp(peer));
                    self.infos.insert(peer, info);
                    self.dirty = true;
                }
                AdmissionAction::Reject {
                    peer,
                    reason,
                    backoff,
                } => {
                    tracing::warn!(
                        %peer,
                        %reason,
                        backoff_s = backoff.as_secs(),
                        "peer failed admission; disconnecting and refusing it for a while"
                    );
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
        }
    }

    /// Remembers an admitted peer's listen addresses as dial targets, so it is redialed after a
    /// disconnect even when discovery stays silent. Loopback addresses are kept only when we
    /// reach the peer over loopback (same host); unspecified ones never.
    fn learn_addrs(&mut self, peer: PeerId, info: &NodeInfo) {
        let via_loopback = self
            .connections
            .get(&peer)
            .is_some_and(|c| c.iter().any(|(_, a)| is_loopback(a)));
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .filter(|a| !is_unspecified(a) && (via_loopback || !is_loopback(a)))
            .collect();
        self.make_target_room(&peer);
        let target = self.targets.entry(peer).or_insert_with(|| DialTarget {
            addrs: Vec::new(),
            next_dial: Instant::now(),
            failures: 0,
            paused: false,
        });
        target.paused = false;
        for a in addrs {
            if !target.addrs.contains(&a) {
                target.addrs.push(a);
            }
        }
    }

    fn on_membership_event(
        &mut self,
        ev: request_response::Event<MembershipRequest, MembershipResponse>,
        now: Instant,
    ) {
        let std_now = now.into_std();
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let response = if !self.admission.is_admitted(&peer) {
                        self.stats.unadmitted_requests += 1;
                        MembershipResponse::NotAdmitted
                    } else {
                        match request {
                            MembershipRequest::Datagram(data) => {
                                self.membership.on_datagram(peer, &data, std_now)
                            }
                            MembershipRequest::Leave {
                                peer: relayed,
                                bump,
                            } => self.on_leave_notice(peer, relayed, bump, now),
                        }
                        MembershipResponse::Ack
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .membership
                        .send_response(channel, response);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.leave_pending.remove(&request_id);
                    if let Some((peer, sent)) = self.rtt_pending.remove(&request_id)
                        && response == MembershipResponse::Ack
                    {
                        self.membership.on_rtt(peer, now - sent, std_now);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                self.leave_pending.remove(&request_id);
                self.rtt_pending.remove(&request_id);
                tracing::trace!(%error, "membership request failed");
            }
            request_response::Event::InboundFailure { error, .. } => {
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    self.stats.malformed_inbound += 1;
                }
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// A leave notice, first-hand (`relayed` is `None`) or relayed by a member. News is
    /// relayed once to every other admitted peer.
    fn on_leave_notice(&mut self, from: PeerId, relayed: Option<Vec<u8>>, bump: u64, now: Instant) {
        let leaver = match relayed {
            None => from,
            Some(bytes) => match PeerId::from_bytes(&bytes) {
                Ok(p) => p,
                Err(_) => {
                    self.stats.malformed_inbound += 1;
                    return;
                }
            },
        };
        if !self
            .membership
            .on_leave_notice(from, leaver, bump, now.into_std())
        {
            return;
        }
        tracing::info!(peer = %leaver, via = %from, "peer is leaving");
        if let Some(t) = self.targets.get_mut(&leaver) {
            t.paused = true;
        }
        let others: Vec<PeerId> = self
            .connections
            .keys()
            .filter(|p| **p != from && **p != leaver && self.admission.is_admitted(p))
            .copied()
            .collect();
        for p in others {
            self.swarm.behaviour_mut().membership.send_request(
                &p,
                MembershipRequest::Leave {
                    peer: Some(leaver.to_bytes()),
                    bump,
                },
            );
        }
    }

    fn flush_membership(&mut self, now: Instant) {
        let sends: Vec<_> = self.membership.poll_transmit().collect();
        for (peer, data) in sends {
            if !self.admission.is_admitted(&peer) || !self.connections.contains_key(&peer) {
                self.membership.count_undeliverable();
                continue;
            }
            let id = self
                .swarm
                .behaviour_mut()
                .membership
                .send_request(&peer, MembershipRequest::Datagram(data.to_vec()));
            if self.rtt_pending.len() < MAX_RTT_PENDING {
                self.rtt_pending.insert(id, (peer, now));
            }
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
        self.membership.leave(now.into_std());
        self.flush_membership(now);
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

    fn publish(&mut self, now: Instant) {
        if self.dirty {
            self.version += 1;
        }
        self.dirty = false;
        self.last_publish = now;
        let mut peers: Vec<PeerSnapshot> = self
            .membership
            .peers()
            .map(|rec| {
                let conns = self.connections.get(&rec.peer);
                let addrs = match conns {
                    Some(c) => c.iter().map(|(_, a)| a.clone()).collect(),
                    None => self
                        .targets
                        .get(&rec.peer)
                        .map(|t| t.addrs.clone())
                        .unwrap_or_default(),
                };
                PeerSnapshot {
                    peer_id: rec.peer,
                    state: rec.state,
                    since: Instant::from_std(rec.since),
                    info: self.infos.get(&rec.peer).cloned(),
                    addrs,
                    connected: conns.is_some(),
                    rtt: rec.rtt,
                    last_seen: rec.last_seen.map(Instant::from_std),
                }
            })
            .collect();
        peers.sort_by(|a, b| {
            let an = a.info.as_ref().map(|i| i.name.as_str()).unwrap_or("");
            let bn = b.info.as_ref().map(|i| i.name.as_str()).unwrap_or("");
            an.cmp(bn).then(a.peer_id.cmp(&b.peer_id))
        });
        let mut stats = self.stats.clone();
        stats.admission = self.admission.stats().clone();
        stats.membership = self.membership.stats().clone();
        stats.connections = self.connections.values().map(Vec::len).sum();
        if let DiscoverySource::Mdns(h) = &self.discovery {
            stats.mdns_foreign_mesh_ignored = h.stats().foreign_mesh_ignored;
        }
        let snapshot = NodeSnapshot {
            version: self.version,
            taken_at: now,
            local: LocalSnapshot {
                peer_id: self.local_peer,
                name: self.name.clone(),
                mesh_id: self.mesh_id,
                listen_addrs: self.listen_addrs.clone(),
                hardware: self.hardware.clone(),
                started_at: self.started_at,
                bump: self.bump,
                accept_services: self.accept_services,
            },
            peers,
            stats,
        };
        self.snapshot_tx.send_replace(Arc::new(snapshot));
    }
}
