//! The handle to a running node: what the API, the daemon and tests hold. It asks the node
//! actor questions through a bounded command channel and reads its snapshot; the lifecycles of
//! the node's actors (start order, shutdown order, abort) belong to [`super::children`].

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot, watch};

use super::children::Children;
use super::error::NodeError;
use super::snapshot::NodeSnapshot;
use crate::state::actor::StateHandle;
use crate::supervisor::actor::SupervisorHandle;
use crate::wire::query::{QueryRequest, QueryResponse};

/// Commands to the node actor.
pub(super) enum NodeCommand {
    Query {
        peer: PeerId,
        request: QueryRequest,
        reply: oneshot::Sender<Result<QueryResponse, NodeError>>,
    },
    /// `mesh key rotate`.
    RotateKey {
        reply: oneshot::Sender<Result<KeyRotation, NodeError>>,
    },
}

/// What `mesh key rotate` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRotation {
    /// The new key's mesh id and generation.
    pub mesh_id: String,
    pub generation: u64,
    /// The members it was handed to at once (the others get it when they next connect).
    pub told: Vec<PeerId>,
}

/// A cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    snapshot: watch::Receiver<Arc<NodeSnapshot>>,
    peer_id: PeerId,
    state: StateHandle,
    supervisor: Option<SupervisorHandle>,
    commands: mpsc::Sender<NodeCommand>,
    invites: crate::invite::SharedInvites,
    /// The running actors; taken by the first [`NodeHandle::shutdown`] or
    /// [`NodeHandle::abort`].
    children: Arc<std::sync::Mutex<Option<Children>>>,
    /// The swarm's metrics (libp2p-metrics), updated by the node actor.
    swarm_registry: Arc<prometheus_client::registry::Registry>,
}

impl NodeHandle {
    // One argument per field of the handle, set once by `start_node`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        snapshot: watch::Receiver<Arc<NodeSnapshot>>,
        peer_id: PeerId,
        state: StateHandle,
        supervisor: Option<SupervisorHandle>,
        commands: mpsc::Sender<NodeCommand>,
        invites: crate::invite::SharedInvites,
        children: Children,
        swarm_registry: Arc<prometheus_client::registry::Registry>,
    ) -> Self {
        Self {
            snapshot,
            peer_id,
            state,
            supervisor,
            commands,
            invites,
            children: Arc::new(std::sync::Mutex::new(Some(children))),
            swarm_registry,
        }
    }

    /// This node's invites (`mesh invite`): create, list, revoke. Redeeming is the node
    /// actor's, on `/mesh/join/1`.
    pub fn invites(&self) -> &crate::invite::SharedInvites {
        &self.invites
    }

    /// Creates an invite and its ticket: this node's id, mesh id and listen addresses, and a
    /// fresh secret whose hash alone is kept (on disk before this returns).
    pub async fn create_invite(
        &self,
        ttl_secs: u64,
        uses: u32,
        name: Option<String>,
    ) -> Result<(crate::invite::InviteRecord, crate::invite::Ticket), NodeError> {
        let snapshot = self.snapshot.borrow().clone();
        let addrs = crate::invite::ticket_addrs(&snapshot.local.listen_addrs);
        if addrs.is_empty() {
            return Err(NodeError::NoListener);
        }
        let invites = self.invites.clone();
        let (record, secret) = tokio::task::spawn_blocking(move || {
            invites.create(crate::invite::unix_now(), ttl_secs, uses, name)
        })
        .await
        .map_err(|_| NodeError::Stopped)??;
        let ticket = crate::invite::Ticket {
            mesh_id: snapshot.local.mesh_id,
            inviter: self.peer_id,
            addrs,
            secret,
            expires: record.expires,
            name: record.name.clone(),
        };
        Ok((record, ticket))
    }

    fn take_children(&self) -> Option<Children> {
        self.children
            .lock()
            .expect("the lock is never held across a panic")
            .take()
    }

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

    /// Gives the mesh a new key (`mesh key rotate`): stored here, handed to every connected
    /// member, and to the others when they next connect (with the old key, accepted from
    /// members only).
    pub async fn rotate_key(&self) -> Result<KeyRotation, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(NodeCommand::RotateKey { reply })
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// The swarm's own metrics (`libp2p_*` families), for `/metrics`.
    pub fn swarm_registry(&self) -> &prometheus_client::registry::Registry {
        &self.swarm_registry
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

    /// Graceful stop: services first, then tells peers we leave and sends mDNS goodbyes, then
    /// stops the state actor (see [`Children::shutdown`]). Later calls return at once.
    pub async fn shutdown(&self) {
        if let Some(children) = self.take_children() {
            children.shutdown().await;
        }
    }

    /// Stops the actors at once, telling no one: what peers see of a crash (`kill -9`),
    /// for tests. Services keep running, as they would after a real crash.
    pub fn abort(&self) {
        if let Some(children) = self.take_children() {
            children.abort();
        }
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
