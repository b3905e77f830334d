//! An in-process mesh for tests: nodes started with [`start_node`] in the test's own runtime,
//! sharing one in-memory LAN ([`MemoryDiscovery`]) and one mesh key. The one helper every
//! in-process integration test builds its nodes with (include it with
//! `#[path = "support/cluster.rs"] mod cluster;`).
//!
//! Seams, each chosen per cluster or per node:
//! - transport: [`Cluster::new`] links the nodes over QUIC on loopback (real sockets: keep
//!   tokio time running); [`Cluster::in_memory`] over libp2p's memory transport
//!   ([`TransportKind::Memory`]), with admission and every protocol unchanged, whose links
//!   [`Cluster::partition`] cuts between groups of nodes and [`Cluster::heal`] restores;
//! - discovery: the cluster's [`MemoryDiscovery`] (`cluster.lan`), or any [`DiscoveryMode`] set
//!   on a config from [`Cluster::config`];
//! - launcher: [`supervisor_config`] takes the node's [`Launcher`], real
//!   ([`ProcessLauncher`]) or fake ([`FakeLauncher`]: no processes at all);
//! - clock: the nodes read tokio's clock, so an in-memory cluster with a fake launcher runs
//!   in paused time (`#[tokio::test(start_paused = true)]`): waits that would take seconds
//!   (restart delays, membership rounds) pass at once. Never pause time around QUIC: its idle
//!   and keep-alive timers fire spuriously when the clock jumps.
//!
//! Waits are on conditions (state and node snapshot changes), bounded by [`CEILING`] of tokio
//! time; in paused time a wait that cannot succeed fails as soon as nothing else can happen.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use mesh::admission::MeshKey;
use mesh::discovery::memory::MemoryDiscovery;
use mesh::membership::PeerState;
use mesh::node::{DiscoveryMode, NodeConfig, NodeHandle, NodeSnapshot, start_node};
use mesh::state::actor::StateSnapshot;
use mesh::supervisor::ShutdownMode;
use mesh::supervisor::actor::SupervisorConfig;
use mesh::supervisor::launcher::Launcher;
#[allow(unused_imports)]
pub use mesh::supervisor::launcher::{ProcessLauncher, fake::FakeLauncher};
use mesh::transport::{MemoryLinks, TransportKind};

/// Ceiling of every wait; CI is a loaded 2-core machine. Typical times are far lower.
pub const CEILING: Duration = Duration::from_secs(20);

/// Turns on the agent's logs when `RUST_LOG` is set (they show with `--nocapture`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        mesh::daemon::init_tracing(mesh::daemon::LogFormat::Human);
    }
}

/// The nodes of one test: one LAN, one mesh key, one transport.
#[derive(Clone)]
pub struct Cluster {
    pub lan: MemoryDiscovery,
    pub key: MeshKey,
    pub transport: TransportKind,
}

impl Cluster {
    /// Nodes on QUIC over loopback.
    pub fn new() -> Self {
        init_logs();
        Self {
            lan: MemoryDiscovery::new(),
            key: MeshKey::generate(),
            transport: TransportKind::Quic,
        }
    }

    /// Nodes on the in-process memory transport: no sockets, fit for paused time.
    pub fn in_memory() -> Self {
        Self {
            transport: TransportKind::Memory(MemoryLinks::default()),
            ..Self::new()
        }
    }

    /// Cuts every link between nodes of different `groups` (memory transport only): open
    /// connections close at once, new ones fail, until [`Cluster::heal`].
    pub fn partition(&self, groups: &[&[&NodeHandle]]) {
        let TransportKind::Memory(links) = &self.transport else {
            panic!("only a cluster on the memory transport can be partitioned");
        };
        let ids: Vec<Vec<PeerId>> = groups
            .iter()
            .map(|g| g.iter().map(|n| n.peer_id()).collect())
            .collect();
        let groups: Vec<&[PeerId]> = ids.iter().map(Vec::as_slice).collect();
        links.partition(&groups);
    }

    /// Restores every link [`Cluster::partition`] cut.
    pub fn heal(&self) {
        if let TransportKind::Memory(links) = &self.transport {
            links.heal();
        }
    }

    /// The config of a node named `name` on this cluster's LAN, key and transport, with its
    /// document in memory and no services.
    pub fn config(&self, name: &str) -> NodeConfig {
        let mut config = NodeConfig::for_test(
            name,
            self.key.clone(),
            DiscoveryMode::Memory(self.lan.clone()),
        );
        if let TransportKind::Memory(_) = &self.transport {
            config.transport = self.transport.clone();
            config.listen = vec!["/memory/0".parse().expect("literal multiaddr")];
        }
        config
    }

    /// [`Cluster::config`] with the document kept in `data_dir` (if given).
    pub fn config_in(&self, name: &str, data_dir: Option<&Path>) -> NodeConfig {
        let mut config = self.config(name);
        config.data_dir = data_dir.map(Path::to_path_buf);
        config
    }

    /// Starts a node from `config`.
    pub async fn start(&self, config: NodeConfig) -> NodeHandle {
        let name = config.name.clone();
        start_node(config)
            .await
            .unwrap_or_else(|e| panic!("node {name} does not start: {e}"))
    }

    /// Starts nodes `{prefix}0` ... `{prefix}{n-1}` and waits until each lists every other
    /// as alive.
    pub async fn start_linked(&self, prefix: &str, n: usize) -> Vec<NodeHandle> {
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(self.start(self.config(&format!("{prefix}{i}"))).await);
        }
        wait_all_alive(&nodes).await;
        nodes
    }
}

/// A supervisor for a test node: services logged under `dir/logs`, run in `dir/services`,
/// through `launcher`; no run file, no cgroups, no startup sync wait. `start_node` fills in
/// the node's id and name.
pub fn supervisor_config(dir: &Path, launcher: Arc<dyn Launcher>) -> SupervisorConfig {
    SupervisorConfig {
        node_id: String::new(),
        node_name: String::new(),
        log_dir: dir.join("logs"),
        work_dir: dir.join("services"),
        log_limits: Default::default(),
        pools: Default::default(),
        leases: Default::default(),
        event_capacity: 100,
        shutdown_mode: ShutdownMode::StopServices,
        run_file: None,
        accept_services: Default::default(),
        max_services: 16,
        startup_sync_wait: Duration::ZERO,
        use_cgroups: false,
        launcher,
    }
}

/// `peer`'s membership state as `snap` shows it.
pub fn peer_state(snap: &NodeSnapshot, peer: PeerId) -> Option<PeerState> {
    snap.peers
        .iter()
        .find(|p| p.peer_id == peer)
        .map(|p| p.state)
}

/// Waits until `observer` lists `peer` as `state`.
pub async fn wait_peer_state(observer: &NodeHandle, peer: PeerId, state: PeerState) {
    let ok = observer
        .wait_for(CEILING, |s| peer_state(s, peer) == Some(state))
        .await;
    assert!(
        ok.is_some(),
        "{} never saw {peer} as {state}: {:?}",
        observer.peer_id(),
        observer
            .snapshot()
            .peers
            .iter()
            .map(|p| (p.peer_id, p.state))
            .collect::<Vec<_>>()
    );
}

/// Waits until every node lists every other as alive.
pub async fn wait_all_alive(nodes: &[NodeHandle]) {
    for a in nodes {
        for b in nodes {
            if a.peer_id() != b.peer_id() {
                wait_peer_state(a, b.peer_id(), PeerState::Alive).await;
            }
        }
    }
}

/// Waits until `observer` lists `peer` as alive and connected (admitted, so queries and
/// sync flow).
pub async fn wait_connected(observer: &NodeHandle, peer: PeerId) {
    observer
        .wait_for(CEILING, |s| {
            s.peers
                .iter()
                .any(|p| p.peer_id == peer && p.connected && p.state == PeerState::Alive)
        })
        .await
        .expect("the nodes admit each other");
}

/// The last characters of a node id, enough to tell nodes apart in a failure message.
pub fn short(id: &str) -> String {
    // Node ids are base58, hence ASCII: byte slicing is safe.
    id[id.len().saturating_sub(6)..].to_string()
}

/// Waits until `pred` holds for the state snapshots of all `nodes` (taken together), waking on
/// every state change of any of them. Panics after [`CEILING`] with `what` and each node's
/// view: epoch, head count, services, node records (tags, addrs, left), peers' sync health.
pub async fn wait_states(
    nodes: &[&NodeHandle],
    what: &str,
    pred: impl FnMut(&[Arc<StateSnapshot>]) -> bool,
) -> Vec<Arc<StateSnapshot>> {
    wait_states_within(CEILING, nodes, what, pred).await
}

/// [`wait_states`] with another ceiling (documents of several MiB take seconds to sync in a
/// debug build).
pub async fn wait_states_within(
    ceiling: Duration,
    nodes: &[&NodeHandle],
    what: &str,
    mut pred: impl FnMut(&[Arc<StateSnapshot>]) -> bool,
) -> Vec<Arc<StateSnapshot>> {
    let mut rxs: Vec<_> = nodes.iter().map(|n| n.state().subscribe()).collect();
    let result = tokio::time::timeout(ceiling, async {
        loop {
            let snaps: Vec<Arc<StateSnapshot>> = rxs
                .iter_mut()
                .map(|rx| rx.borrow_and_update().clone())
                .collect();
            if pred(&snaps) {
                return snaps;
            }
            let changed = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
            let (res, _, _) = futures::future::select_all(changed).await;
            res.expect("a state actor stopped while a test waited on it");
        }
    })
    .await;
    result.unwrap_or_else(|_| {
        let view: Vec<_> = nodes
            .iter()
            .map(|n| {
                let s = n.state().snapshot();
                let records: BTreeMap<_, _> = s
                    .state
                    .nodes
                    .iter()
                    .map(|(id, r)| (short(id), (r.tags.clone(), r.addrs.clone(), r.left_at_ms)))
                    .collect();
                (
                    short(&n.peer_id().to_base58()),
                    s.epoch.to_string(),
                    s.heads.len(),
                    s.state.services.keys().cloned().collect::<Vec<_>>(),
                    records,
                    s.peers
                        .iter()
                        .map(|p| p.health.to_string())
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        panic!(
            "timed out after {ceiling:?} waiting for {what}; per node: (id, epoch, heads, \
             services, records as (tags, addrs, left_at_ms) by id, peer sync health): {view:?}"
        )
    })
}

/// Waits until one node's state satisfies `pred`.
pub async fn wait_state_of(
    node: &NodeHandle,
    what: &str,
    mut pred: impl FnMut(&StateSnapshot) -> bool,
) -> Arc<StateSnapshot> {
    wait_states(&[node], what, |s| pred(&s[0])).await.remove(0)
}

/// Stops every node gracefully.
pub async fn shutdown_all(nodes: &[&NodeHandle]) {
    for n in nodes {
        n.shutdown().await;
    }
}

/// Largest API answer [`api`] reads.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// One API call through the node's router, as the CLI would make it over HTTP.
pub async fn api(
    node: &NodeHandle,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    use tower_service::Service as _;
    let mut router = mesh::api::server::router(node.clone());
    let request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.map_or_else(axum::body::Body::empty, |b| {
            axum::body::Body::from(b.to_string())
        }))
        .expect("a valid request");
    let response = router
        .call(request)
        .await
        .expect("the router is infallible");
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
        .await
        .expect("the answer body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}
