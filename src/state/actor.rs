//! The state actor: owns the live Automerge document, its file, and the sync sessions.
//!
//! Inputs ([`StateCommand`], from [`StateHandle`] and the node actor): local writes (tags, this
//! node's record), sync messages received and delivery failures. Peers coming up and down and
//! this node's listen addresses arrive apart, as [`Links`] on a `watch` that cannot drop them
//! and is read before any command: a full command queue loses sync data (counted, recovered by
//! anti-entropy), never a connection notice.
//! Outputs: sync messages for the node actor to send ([`SyncOut`]), and an immutable
//! [`StateSnapshot`] on a `watch` channel for readers.
//!
//! Persistence (file `state/doc.automerge` in the data dir, format and recovery in [`super::file`]):
//! a local write is committed, appended and fsynced before anyone sees it; if the disk refuses
//! it, the change is undone in memory and the caller gets [`StateError::NotDurable`]: nothing
//! unacknowledged is published or sent. A peer's change that cannot be saved stays in memory
//! (the next append retries it; peers hold it anyway).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use automerge::{ActorId, AutoCommit, ChangeHash};
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::file::DocFile;
use super::{
    COMPACT_AT_CHANGES, EpochId, HydrateStats, MeshState, NodeRecord, ParsedSpecs, StateError,
    compact, epoch_of, genesis, get_entry, hydrate_lenient, migrate_into, now_ms, put_entry,
    validate_tag,
};
use crate::sync::{SyncHealth, SyncSessions, SyncStats, SyncStatus};
use crate::transport::{MAX_SNAPSHOT_BYTES, MAX_SYNC_PAYLOAD, SNAPSHOT_PART_BYTES};
use crate::wire::sync::{SyncRequest, SyncResponse};

mod hydration;
mod local_writes;
mod persistence;
mod publish;
mod snapshots;
mod sync_sessions;

/// Changes in a document's history and their bytes (walks the history: at start and on an
/// epoch switch only).
fn history_of(doc: &mut AutoCommit) -> (usize, u64) {
    let changes = doc.get_changes(&[]);
    let bytes = changes.iter().map(|c| c.raw_bytes().len() as u64).sum();
    (changes.len(), bytes)
}

/// A snapshot being fetched from a peer, part by part.
struct SnapshotFetch {
    pub(super) peer: PeerId,
    /// The last progress (start or a part); the fetch is abandoned [`FETCH_TIMEOUT`] after it.
    pub(super) since: Instant,
    /// The snapshot's id, from its first part.
    pub(super) id: Option<u64>,
    pub(super) buf: Vec<u8>,
}

/// A snapshot we serve in parts.
struct ServedSnapshot {
    pub(super) id: u64,
    pub(super) heads: Vec<ChangeHash>,
    pub(super) bytes: Arc<Vec<u8>>,
}

/// Capacity of the command channel. Commands are small; the node actor never blocks on it
/// (`try_send`), and a dropped sync message is counted ([`StateHandle::dropped_commands`]) and
/// recovered by anti-entropy. Connection notices do not use it (see [`Links`]).
pub const COMMAND_CHANNEL: usize = 1024;
/// Capacity of the outbound sync channel to the node actor.
pub const OUT_CHANNEL: usize = 1024;
/// Anti-entropy period: every connected peer gets a sync message if either side is missing
/// anything. A backstop only — changes are pushed at once.
pub const ANTI_ENTROPY: Duration = Duration::from_secs(15);
/// How often per-peer sync states are written to disk (if changed), so a reconnect after a
/// restart only exchanges what is new.
pub const SAVE_SYNC_STATES: Duration = Duration::from_secs(30);
/// Least time between two compactions by this node: a burst of changes cannot make it compact
/// over and over, and peers have time to adopt one epoch before the next.
pub const MIN_COMPACT_INTERVAL: Duration = Duration::from_secs(60);
/// How long a snapshot fetch may go without receiving a part before another fetch (from the
/// same or another peer) may start.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node whose document lacks its own record (first start, or state lost) waits for
/// a peer to send the existing one before writing it. Writing first would create a second,
/// conflicting record object, and the mesh might keep the empty one (losing tags).
pub const SELF_RECORD_GRACE: Duration = Duration::from_secs(2);
/// How often peers' sync health is re-evaluated without another event (it changes with time
/// alone when a peer stays unsynced past `sync::NEVER_SYNCED_AFTER`).
pub const HEALTH_CHECK: Duration = Duration::from_secs(5);
/// Least time between two warnings about the same peer's failing sync: one line a minute
/// keeps a persistent split visible in the log without flooding it.
pub const HEALTH_WARN_INTERVAL: Duration = Duration::from_secs(60);
/// Directory in the data dir holding the state files.
pub const STATE_DIR: &str = "state";
const DOC_FILE: &str = "doc.automerge";
const SYNC_FILE: &str = "sync-states.json";

/// What the state actor is started with.
#[derive(Clone, Debug)]
pub struct StateConfig {
    pub local: PeerId,
    /// `None` keeps the document in memory only (tests).
    pub data_dir: Option<PathBuf>,
    /// This node's record as of start (name, addresses, hardware, version); tags and
    /// `joined_at_ms` are kept from the document.
    pub self_record: NodeRecord,
}

pub use super::EntryWrite;

/// Commands to the state actor.
pub enum StateCommand {
    /// Writes entries in one change; replies whether the document changed.
    Write {
        writes: Vec<EntryWrite>,
        reply: Option<oneshot::Sender<Result<bool, StateError>>>,
    },
    SetTag {
        key: String,
        value: Option<String>,
        reply: oneshot::Sender<Result<bool, StateError>>,
    },
    SetAddrs(Vec<String>),
    SetDrained {
        drained: bool,
        reply: oneshot::Sender<Result<bool, StateError>>,
    },
    MarkLeft {
        reply: oneshot::Sender<()>,
    },
    /// `mesh remove`: marks another node's record removed.
    RemoveNode {
        id: String,
        reply: oneshot::Sender<Result<bool, StateError>>,
    },
    /// The node actor sends these through [`StateHandle::peer_up`] and
    /// [`StateHandle::peer_down`] (never dropped); as commands they serve tests.
    PeerUp(PeerId),
    PeerDown(PeerId),
    /// Compact into a new epoch now if this node leads and everyone is in sync (tests,
    /// benchmarks); normally this happens on its own past [`COMPACT_AT_CHANGES`].
    CompactNow {
        force: bool,
        reply: oneshot::Sender<Result<bool, StateError>>,
    },
    /// A sync request arrived; answer with [`SyncOut::Respond`] carrying `token`.
    Inbound {
        peer: PeerId,
        token: u64,
        request: SyncRequest,
    },
    /// The answer to a sync request we sent.
    Response {
        peer: PeerId,
        response: SyncResponse,
    },
    /// A sync request to `peer` was not delivered, or got no answer.
    SendFailed {
        peer: PeerId,
        reason: String,
    },
}

/// Sync traffic for the node actor to move.
#[derive(Debug)]
pub enum SyncOut {
    Request(PeerId, SyncRequest),
    Respond(u64, SyncResponse),
}

/// Sync status of one peer, for `mesh state`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSyncView {
    pub peer: PeerId,
    pub connected: bool,
    pub status: SyncStatus,
    pub health: SyncHealth,
}

/// An immutable view of the document for readers.
#[derive(Debug, Clone)]
pub struct StateSnapshot {
    /// Increases on every document change.
    pub version: u64,
    /// Shared between snapshots while the document does not change.
    pub state: Arc<MeshState>,
    /// The specs of `state`'s services, parsed (each once per change of its text).
    pub specs: Arc<ParsedSpecs>,
    pub heads: Vec<String>,
    pub changes: usize,
    /// Bytes of the document file (0 in memory).
    pub file_bytes: u64,
    pub epoch: EpochId,
    pub peers: Vec<PeerSyncView>,
    pub sync: SyncStats,
    pub hydrate: HydrateStats,
    /// The document file was unreadable at start and was moved aside.
    pub recovered_from_corruption: bool,
    /// The document's value size, as [`super::MAX_DOCUMENT_BYTES`] bounds it.
    pub value_bytes: u64,
}

/// How a sync message reached the state actor (`sync_sessions::receive`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Received {
    /// A request of the peer's: our answer goes back as the response. `everyone`: part of
    /// a push of the peer's to every member, so not relayed.
    Request { everyone: bool },
    /// The response to a request of ours: what we say next is a new request.
    Response,
}

/// What the node actor tells the state actor about connections, as a value on a `watch`:
/// the latest value always arrives, so no notice can be dropped, and the actor reads it before
/// any queued command (a peer is up before its first sync message is handled).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Links {
    /// Admitted, connected peers, each with the number of the notice that brought it up: a
    /// peer that went down and up again between two reads shows a new number.
    pub peers: BTreeMap<PeerId, u64>,
    /// Numbers the next up notice.
    pub next_up: u64,
    /// This node's listen addresses (multiaddrs); `None` until the node reports a change.
    pub addrs: Option<Vec<String>>,
    /// The members membership believes alive or suspects; `None` until the node reports
    /// them (see [`crate::sync::SyncSessions::set_alive`]).
    pub alive: Option<std::collections::BTreeSet<PeerId>>,
}

/// A cloneable handle to the state actor.
#[derive(Clone)]
pub struct StateHandle {
    commands: mpsc::Sender<StateCommand>,
    snapshot: watch::Receiver<Arc<StateSnapshot>>,
    links: Arc<watch::Sender<Links>>,
    /// Commands refused by a full queue ([`StateHandle::try_send`]).
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl StateHandle {
    /// Sets (or with `None` removes) one of this node's tags. Returns once the change is on
    /// disk; `Ok(false)` when removing a tag that was not set.
    pub async fn set_tag(&self, key: &str, value: Option<&str>) -> Result<bool, StateError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(StateCommand::SetTag {
                key: key.to_string(),
                value: value.map(str::to_string),
                reply,
            })
            .await
            .map_err(|_| StateError::Stopped)?;
        rx.await.map_err(|_| StateError::Stopped)?
    }

    /// Writes entries (services, this node's instances and leases) as one change. Returns
    /// once the change is on disk, with whether anything changed (`Ok(false)`: every entry
    /// already held these values).
    pub async fn write(&self, writes: Vec<EntryWrite>) -> Result<bool, StateError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(StateCommand::Write {
                writes,
                reply: Some(reply),
            })
            .await
            .map_err(|_| StateError::Stopped)?;
        rx.await.map_err(|_| StateError::Stopped)?
    }

    /// Like [`StateHandle::write`] without waiting for the answer (the supervisor publishing
    /// transitions: it must not stall on the disk). Waits only for room in the channel.
    pub async fn write_detached(&self, writes: Vec<EntryWrite>) -> Result<(), StateError> {
        self.commands
            .send(StateCommand::Write {
                writes,
                reply: None,
            })
            .await
            .map_err(|_| StateError::Stopped)
    }

    pub fn snapshot(&self) -> Arc<StateSnapshot> {
        self.snapshot.borrow().clone()
    }

    /// Compacts into a new epoch. Without `force`, only when this node is the compaction
    /// leader (lowest id among connected peers) and every connected peer is in sync. Returns
    /// whether a new epoch was made.
    pub async fn compact_now(&self, force: bool) -> Result<bool, StateError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(StateCommand::CompactNow { force, reply })
            .await
            .map_err(|_| StateError::Stopped)?;
        rx.await.map_err(|_| StateError::Stopped)?
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<StateSnapshot>> {
        self.snapshot.clone()
    }

    /// For the node actor: never blocks; a full channel drops the command (counted in
    /// [`StateHandle::dropped_commands`]), which anti-entropy recovers from. Only for sync
    /// data: connection notices go through [`StateHandle::peer_up`] and the like.
    pub(crate) fn try_send(&self, cmd: StateCommand) -> bool {
        let sent = self.commands.try_send(cmd).is_ok();
        if !sent {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        sent
    }

    /// Sync messages and delivery reports dropped because the state actor's queue was full.
    pub fn dropped_commands(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `peer` passed admission (a new connection): never dropped, never blocks.
    pub fn peer_up(&self, peer: PeerId) {
        self.links.send_modify(|l| {
            l.next_up += 1;
            l.peers.insert(peer, l.next_up);
        });
    }

    /// The last connection to `peer` closed: never dropped, never blocks.
    pub fn peer_down(&self, peer: PeerId) {
        self.links
            .send_if_modified(|l| l.peers.remove(&peer).is_some());
    }

    /// This node's listen addresses changed: never dropped, never blocks.
    pub fn set_addrs(&self, addrs: Vec<String>) {
        self.links.send_modify(|l| l.addrs = Some(addrs));
    }

    /// The members membership believes alive or suspects: never dropped, never blocks.
    pub fn set_alive(&self, alive: std::collections::BTreeSet<PeerId>) {
        self.links.send_if_modified(|l| {
            let changed = l.alive.as_ref() != Some(&alive);
            l.alive = Some(alive);
            changed
        });
    }

    /// Sets or clears this node's `drained` mark: placement moves every service off a drained
    /// node and places none on it. Answers whether it changed; returns once on disk.
    pub async fn set_drained(&self, drained: bool) -> Result<bool, StateError> {
        let (reply, rx) = oneshot::channel();
        if !self.send(StateCommand::SetDrained { drained, reply }).await {
            return Err(StateError::Stopped);
        }
        rx.await.map_err(|_| StateError::Stopped)?
    }

    /// Removes node `id` from the mesh (`mesh remove`): sets `removed_at_ms` in its record,
    /// durably. Answers whether it changed (false: it was removed already).
    pub async fn remove_node(&self, id: &str) -> Result<bool, StateError> {
        let (reply, rx) = oneshot::channel();
        let id = id.to_string();
        if !self.send(StateCommand::RemoveNode { id, reply }).await {
            return Err(StateError::Stopped);
        }
        rx.await.map_err(|_| StateError::Stopped)?
    }

    /// Records this node's leave (`left_at_ms`) in the document and waits until it is
    /// written. Placement moves services off a leaving node at once.
    pub async fn mark_left(&self) -> Result<(), StateError> {
        let (reply, done) = oneshot::channel();
        if !self.send(StateCommand::MarkLeft { reply }).await {
            return Err(StateError::Stopped);
        }
        done.await.map_err(|_| StateError::Stopped)
    }

    pub(crate) async fn send(&self, cmd: StateCommand) -> bool {
        self.commands.send(cmd).await.is_ok()
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => futures::future::pending().await,
    }
}

struct StateActor {
    local: PeerId,
    actor_id: ActorId,
    doc: AutoCommit,
    epoch: EpochId,
    /// Changes in the document's history, kept up to date without walking it.
    change_count: usize,
    /// The hydrated value and the heads it was read at.
    hydrated: (Vec<automerge::ChangeHash>, Arc<MeshState>, HydrateStats),
    /// The specs parsed from a hydrated value (that value, to tell when to refresh them).
    parsed: (Arc<MeshState>, Arc<ParsedSpecs>),
    /// [`super::value_bytes`] of `hydrated`.
    value_bytes: u64,
    /// The value is past [`super::MAX_DOCUMENT_BYTES`] (instance and lease reports and peers'
    /// changes are never refused, so it can be). Warned once per crossing.
    over_bound: bool,
    last_compaction: Option<Instant>,
    /// A snapshot fetch under way.
    fetching: Option<SnapshotFetch>,
    /// The snapshot we serve in parts, while our heads stay the same.
    served: Option<ServedSnapshot>,
    /// Names the next snapshot we serve.
    next_snapshot_id: u64,
    /// Bytes of the changes in the document's history (what a full sync would send), kept up
    /// to date without walking it; compaction folds it past [`super::COMPACT_AT_HISTORY_BYTES`].
    history_bytes: u64,
    /// This node's record, held back until a peer had a chance to send the existing one.
    pending_self: Option<(NodeRecord, Instant)>,
    file: Option<DocFile>,
    sync_file: Option<PathBuf>,
    sessions: SyncSessions,
    out: mpsc::Sender<SyncOut>,
    commands: mpsc::Receiver<StateCommand>,
    links: watch::Receiver<Links>,
    /// The [`Links`] acted on so far.
    seen_links: Links,
    snapshot_tx: watch::Sender<Arc<StateSnapshot>>,
    version: u64,
    recovered: bool,
    sync_states_dirty: bool,
    /// Per peer: whether its sync health was last seen bad, and when we last warned of it.
    health_warned: std::collections::HashMap<PeerId, (bool, Option<Instant>)>,
    shutdown: CancellationToken,
}

/// Starts the state actor. Returns its handle, the receiver of outbound sync traffic (for the
/// node actor) and its task.
pub fn spawn_state(
    config: StateConfig,
    shutdown: CancellationToken,
) -> Result<(StateHandle, mpsc::Receiver<SyncOut>, JoinHandle<()>), StateError> {
    // A fresh actor id per start: a node whose file was lost can never reuse a sequence number
    // it already used (which would corrupt the document everywhere).
    let actor = ActorId::random();
    let (mut doc, recovered, rewrite, file, sync_file, sessions) = match &config.data_dir {
        Some(dir) => {
            let dir = dir.join(STATE_DIR);
            std::fs::create_dir_all(&dir)
                .map_err(|e| StateError::Load(format!("{}: {e}", dir.display())))?;
            let path = dir.join(DOC_FILE);
            let loaded = super::file::load(&path, &actor);
            let (mut doc, recovered, rewrite) = (loaded.doc, loaded.damaged, loaded.rewrite);
            let file = DocFile::open(&path, doc.get_heads(), loaded.full_bytes as u64)
                .map_err(|e| StateError::Load(format!("{}: {e}", path.display())))?;
            let sync_path = dir.join(SYNC_FILE);
            let mut sessions = SyncSessions::new();
            if let Ok(text) = std::fs::read_to_string(&sync_path) {
                let saved: BTreeMap<String, String> =
                    serde_json::from_str(&text).unwrap_or_default();
                let saved = saved
                    .into_iter()
                    .filter_map(|(k, v)| hex::decode(v).ok().map(|v| (k, v)))
                    .collect();
                sessions.restore_states(&saved);
            }
            (
                doc,
                recovered,
                rewrite,
                Some(file),
                Some(sync_path),
                sessions,
            )
        }
        None => (
            genesis(actor.clone()),
            false,
            false,
            None,
            None,
            SyncSessions::new(),
        ),
    };
    let epoch = epoch_of(&mut doc);
    let (change_count, history_bytes) = history_of(&mut doc);
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CHANNEL);
    let (links_tx, links_rx) = watch::channel(Links::default());
    let (out_tx, out_rx) = mpsc::channel(OUT_CHANNEL);
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(StateSnapshot {
        version: 0,
        state: Arc::new(MeshState::default()),
        specs: Arc::new(ParsedSpecs::default()),
        heads: Vec::new(),
        changes: 0,
        file_bytes: 0,
        epoch: epoch.clone(),
        peers: Vec::new(),
        sync: SyncStats::default(),
        hydrate: HydrateStats::default(),
        recovered_from_corruption: recovered,
        value_bytes: 0,
    }));
    let mut actor = StateActor {
        local: config.local,
        actor_id: actor,
        doc,
        epoch,
        change_count,
        hydrated: (
            Vec::new(),
            Arc::new(MeshState::default()),
            HydrateStats::default(),
        ),
        parsed: (
            Arc::new(MeshState::default()),
            Arc::new(ParsedSpecs::default()),
        ),
        value_bytes: 0,
        over_bound: false,
        last_compaction: None,
        fetching: None,
        served: None,
        next_snapshot_id: 1,
        history_bytes,
        pending_self: None,
        file,
        sync_file,
        sessions,
        out: out_tx,
        commands: cmd_rx,
        links: links_rx,
        seen_links: Links::default(),
        snapshot_tx,
        version: 0,
        recovered,
        sync_states_dirty: false,
        health_warned: Default::default(),
        shutdown,
    };
    if rewrite {
        actor.rewrite_file();
    }
    if actor.has_own_record() {
        actor.write_self_record(config.self_record)?;
    } else {
        actor.pending_self = Some((config.self_record, Instant::now() + SELF_RECORD_GRACE));
    }
    actor.publish();
    let task = tokio::spawn(actor.run());
    Ok((
        StateHandle {
            commands: cmd_tx,
            links: Arc::new(links_tx),
            dropped: Default::default(),
            snapshot: snapshot_rx,
        },
        out_rx,
        task,
    ))
}

impl StateActor {
    async fn run(mut self) {
        let mut anti_entropy = tokio::time::interval(ANTI_ENTROPY);
        let mut save_states = tokio::time::interval(SAVE_SYNC_STATES);
        let mut health = tokio::time::interval(HEALTH_CHECK);
        loop {
            let self_deadline = self.pending_self.as_ref().map(|(_, t)| *t);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = sleep_until_opt(self_deadline) => self.flush_pending_self().await,
                Ok(()) = self.links.changed() => self.apply_links().await,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                _ = anti_entropy.tick() => {
                    let msgs = self.sessions.anti_entropy(&mut self.doc, Instant::now().into_std());
                    self.send_all(msgs).await;
                    if let Err(e) = self.maybe_compact(false).await {
                        tracing::warn!(error = %e, "compaction failed");
                    }
                }
                _ = save_states.tick() => self.save_sync_states(),
                _ = health.tick() => self.recheck_health(),
            }
        }
        self.sync_states_dirty = true;
        self.save_sync_states();
    }

    /// Acts on what changed in [`Links`] since the last read: peers down (or down and up
    /// again), peers up, new listen addresses.
    async fn apply_links(&mut self) {
        let links = self.links.borrow_and_update().clone();
        let old = std::mem::replace(&mut self.seen_links, links.clone());
        for (peer, n) in &old.peers {
            if links.peers.get(peer) != Some(n) {
                self.handle(StateCommand::PeerDown(*peer)).await;
            }
        }
        for (peer, n) in &links.peers {
            if old.peers.get(peer) != Some(n) {
                self.handle(StateCommand::PeerUp(*peer)).await;
            }
        }
        if links.alive != old.alive
            && let Some(alive) = links.alive.clone()
        {
            self.sessions.set_alive(alive);
        }
        if links.addrs != old.addrs
            && let Some(addrs) = links.addrs
        {
            self.handle(StateCommand::SetAddrs(addrs)).await;
        }
    }

    async fn handle(&mut self, cmd: StateCommand) {
        let now = Instant::now().into_std();
        match cmd {
            StateCommand::Write { writes, reply } => {
                let result = self.write_entries(writes).await;
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "cannot write to the state document");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            StateCommand::SetDrained { drained, reply } => {
                let _ = reply.send(self.set_drained(drained).await);
            }
            StateCommand::RemoveNode { id, reply } => {
                let _ = reply.send(self.remove_node(&id).await);
            }
            StateCommand::SetTag { key, value, reply } => {
                let result = self.set_tag(&key, value.as_deref()).await;
                let _ = reply.send(result);
            }
            StateCommand::SetAddrs(addrs) => {
                if let Some((pending, _)) = self.pending_self.as_mut() {
                    // Still waiting for the mesh's copy of our record: amend what we will write.
                    pending.addrs = addrs;
                    return;
                }
                let mut rec = self.own_record();
                if rec.addrs != addrs {
                    rec.addrs = addrs;
                    let _ = self.write_own(rec).await;
                }
            }
            StateCommand::MarkLeft { reply } => {
                if self.pending_self.take().is_some() {
                    // Leaving before our record was ever written: nothing to mark.
                    let _ = reply.send(());
                    return;
                }
                let mut rec = self.own_record();
                rec.left_at_ms = Some(now_ms());
                let _ = self.write_own(rec).await;
                let _ = reply.send(());
            }
            StateCommand::PeerUp(peer) => {
                if let Some(msg) = self.sessions.on_peer_up(peer, &mut self.doc, now) {
                    self.send(peer, msg).await;
                }
                self.sync_states_dirty = true;
                self.publish();
            }
            StateCommand::PeerDown(peer) => {
                self.sessions.on_peer_down(peer);
                if self.fetching.as_ref().is_some_and(|f| f.peer == peer) {
                    self.fetching = None;
                }
                self.publish();
            }
            StateCommand::CompactNow { force, reply } => {
                let _ = reply.send(self.maybe_compact(force).await);
            }
            StateCommand::Inbound {
                peer,
                token,
                request,
            } => {
                let response = match request {
                    SyncRequest::FetchSnapshot => {
                        let doc = self.doc.save();
                        if doc.len() <= MAX_SYNC_PAYLOAD {
                            SyncResponse::Snapshot {
                                epoch: self.epoch.clone(),
                                doc,
                            }
                        } else {
                            SyncResponse::Refused
                        }
                    }
                    SyncRequest::FetchSnapshotPart { offset, id } => self.snapshot_part(offset, id),
                    SyncRequest::SnapshotOffer { epoch } => {
                        if epoch == self.epoch || epoch.supersedes(&self.epoch) {
                            self.fetch_snapshot(peer).await;
                        }
                        SyncResponse::Message {
                            epoch: self.epoch.clone(),
                            message: None,
                        }
                    }
                    SyncRequest::Sync {
                        epoch,
                        message,
                        everyone,
                    } if epoch == self.epoch => {
                        match self
                            .receive(peer, &message, Received::Request { everyone })
                            .await
                        {
                            Ok(Some(reply)) if reply.len() > MAX_SYNC_PAYLOAD => {
                                // Too much for one message: they fetch our snapshot instead.
                                self.sessions.forget_in_flight(peer);
                                SyncResponse::SnapshotOffer {
                                    epoch: self.epoch.clone(),
                                }
                            }
                            Ok(reply) => SyncResponse::Message {
                                epoch: self.epoch.clone(),
                                message: reply,
                            },
                            Err(()) => SyncResponse::Refused,
                        }
                    }
                    SyncRequest::Sync { epoch, .. } => {
                        self.sessions.on_epoch_mismatch(peer, epoch.to_string());
                        if epoch.supersedes(&self.epoch) {
                            self.fetch_snapshot(peer).await;
                        }
                        SyncResponse::EpochMismatch {
                            epoch: self.epoch.clone(),
                        }
                    }
                };
                let _ = self.out.send(SyncOut::Respond(token, response)).await;
            }
            StateCommand::Response { peer, response } => {
                // Whatever it says, the peer answered: our next request may go.
                self.sessions.on_answered(peer);
                self.on_response(peer, response, now).await;
            }
            StateCommand::SendFailed { peer, reason } => {
                self.sessions.on_send_failed(peer, now, reason);
                self.publish();
            }
        }
    }

    async fn on_response(&mut self, peer: PeerId, response: SyncResponse, now: std::time::Instant) {
        match response {
            SyncResponse::Message {
                epoch,
                message: Some(bytes),
            } if epoch == self.epoch => {
                if let Ok(Some(next)) = self.receive(peer, &bytes, Received::Response).await {
                    self.send(peer, next).await;
                }
            }
            SyncResponse::Message { epoch, .. } => {
                if epoch == self.epoch {
                    let next = self.sessions.on_delivered(peer, &mut self.doc, now);
                    if let Some(next) = next {
                        self.send(peer, next).await;
                    }
                    self.publish();
                }
            }
            SyncResponse::EpochMismatch { epoch } => {
                self.sessions.on_epoch_mismatch(peer, epoch.to_string());
                if epoch.supersedes(&self.epoch) {
                    self.fetch_snapshot(peer).await;
                } else {
                    // The peer is behind; it fetches from us. Nothing was delivered.
                    self.sessions.on_send_failed(
                        peer,
                        now,
                        format!("it is on the older epoch {epoch}"),
                    );
                }
                self.publish();
            }
            SyncResponse::Snapshot { epoch, doc } => {
                if self.fetching.as_ref().is_some_and(|f| f.peer == peer) {
                    self.fetching = None;
                }
                self.on_snapshot(peer, epoch, doc).await;
            }
            SyncResponse::SnapshotPart {
                epoch,
                id,
                total,
                offset,
                bytes,
            } => {
                self.on_snapshot_part(peer, epoch, id, total, offset, bytes)
                    .await
            }
            SyncResponse::SnapshotOffer { epoch } => {
                if epoch == self.epoch || epoch.supersedes(&self.epoch) {
                    self.fetch_snapshot(peer).await;
                }
            }
            SyncResponse::Refused => {
                if self.fetching.as_ref().is_some_and(|f| f.peer == peer) {
                    self.fetching = None;
                }
                self.sessions.on_send_failed(
                    peer,
                    now,
                    "it refused our message (malformed, or we are in backoff)".into(),
                );
                self.publish();
            }
            SyncResponse::NotAdmitted => {
                self.sessions
                    .on_send_failed(peer, now, "it has not admitted us".into());
                self.publish();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ServiceRecord;

    fn in_memory() -> (StateHandle, CancellationToken) {
        let shutdown = CancellationToken::new();
        let local = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let (handle, _out, _task) = spawn_state(
            StateConfig {
                local,
                data_dir: None,
                self_record: NodeRecord::default(),
            },
            shutdown.clone(),
        )
        .unwrap();
        (handle, shutdown)
    }

    fn service(spec_bytes: usize, desired: &str) -> ServiceRecord {
        ServiceRecord {
            spec_json: format!("{{\"args\":\"{}\"}}", "a".repeat(spec_bytes)),
            desired: super::super::Desired::parse(desired).expect("a desired state"),
            updated_by: "me".into(),
            updated_at_ms: now_ms(),
            request: Some(super::super::OperatorRequest::Restart),
            request_at_ms: Some(1),
            request_generation: Some(1),
            added_by: None,
            node_id: None,
            eligible: None,
            placement_generation: None,
        }
    }

    fn write(name: &str, record: ServiceRecord) -> Vec<EntryWrite> {
        vec![EntryWrite::Service {
            name: name.into(),
            record,
        }]
    }

    #[tokio::test]
    async fn a_peer_up_arrives_while_the_sync_queue_is_full_and_the_drops_are_counted() {
        let shutdown = CancellationToken::new();
        let local = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let (a, mut out, _task) = spawn_state(
            StateConfig {
                local,
                data_dir: None,
                self_record: NodeRecord::default(),
            },
            shutdown.clone(),
        )
        .unwrap();
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        // Nobody reads the answers: the actor blocks once its outbound queue is full, and then
        // its command queue fills too.
        let mut token = 0;
        let mut dropped_at = None;
        for _ in 0..(OUT_CHANNEL + COMMAND_CHANNEL) * 4 {
            token += 1;
            let sent = a.try_send(StateCommand::Inbound {
                peer,
                token,
                request: SyncRequest::FetchSnapshotPart {
                    offset: 0,
                    id: None,
                },
            });
            if !sent {
                dropped_at = Some(token);
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(dropped_at.is_some(), "the command queue never filled");
        assert!(a.dropped_commands() >= 1);
        assert!(!a.try_send(StateCommand::SendFailed {
            peer,
            reason: "x".into()
        }));
        assert_eq!(a.dropped_commands(), 2);
        // The notice cannot be refused, and is handled before the queued data.
        a.peer_up(peer);
        let drain = tokio::spawn(async move { while out.recv().await.is_some() {} });
        let mut rx = a.subscribe();
        let up = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if rx
                    .borrow_and_update()
                    .peers
                    .iter()
                    .any(|p| p.peer == peer && p.connected)
                {
                    return;
                }
                rx.changed().await.expect("the state actor runs");
            }
        })
        .await;
        assert!(up.is_ok(), "the peer never came up in the state actor");
        shutdown.cancel();
        drain.abort();
    }

    #[tokio::test]
    async fn a_peer_that_went_down_and_up_between_two_reads_gets_a_fresh_session() {
        let (a, shutdown) = in_memory();
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        a.peer_up(peer);
        a.peer_down(peer);
        a.peer_up(peer);
        let mut rx = a.subscribe();
        let up = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if rx
                    .borrow_and_update()
                    .peers
                    .iter()
                    .any(|p| p.peer == peer && p.connected)
                {
                    return;
                }
                rx.changed().await.expect("the state actor runs");
            }
        })
        .await;
        assert!(up.is_ok());
        a.peer_down(peer);
        let down = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if rx
                    .borrow_and_update()
                    .peers
                    .iter()
                    .any(|p| p.peer == peer && !p.connected)
                {
                    return;
                }
                rx.changed().await.expect("the state actor runs");
            }
        })
        .await;
        assert!(down.is_ok());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_peer_whose_messages_cannot_be_applied_is_shown_failing_not_in_sync() {
        let (a, shutdown) = in_memory();
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        assert!(a.send(StateCommand::PeerUp(peer)).await);
        assert!(
            a.send(StateCommand::Inbound {
                peer,
                token: 1,
                request: SyncRequest::Sync {
                    epoch: a.snapshot().epoch.clone(),
                    message: b"not an automerge sync message".to_vec(),
                    everyone: false,
                },
            })
            .await
        );
        let mut rx = a.subscribe();
        let health = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let view = rx
                    .borrow_and_update()
                    .peers
                    .iter()
                    .find(|p| p.peer == peer)
                    .map(|p| p.health.clone());
                if let Some(health @ SyncHealth::Failing(_)) = view {
                    return health;
                }
                rx.changed().await.expect("the state actor runs");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the peer is not shown failing: {:?}", a.snapshot().peers));
        assert!(health.to_string().contains("bad message"), "{health}");
        assert!(health.is_bad());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_removed_service_keeps_no_spec_whoever_writes_it() {
        let (state, _stop) = in_memory();
        state
            .write(write("big", service(100_000, "running")))
            .await
            .unwrap();
        let before = state.snapshot().value_bytes;
        assert!(before > 100_000);
        state
            .write(write("big", service(100_000, "removed")))
            .await
            .unwrap();
        let snap = state.snapshot();
        let tomb = &snap.state.services["big"];
        assert_eq!(tomb.desired, super::super::Desired::Removed);
        assert_eq!(tomb.spec_json, "");
        assert_eq!((tomb.request, tomb.request_at_ms), (None, None));
        assert!(snap.value_bytes < 1_000, "{} bytes left", snap.value_bytes);
    }

    #[tokio::test]
    async fn writes_past_the_document_bound_are_refused_with_the_limit_named() {
        let (state, _stop) = in_memory();
        let spec = 256 * 1024;
        let mut accepted = 0;
        let err = loop {
            match state
                .write(write(&format!("s{accepted}"), service(spec, "running")))
                .await
            {
                Ok(_) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted < 100, "never refused");
        };
        assert_eq!(
            accepted as u64,
            super::super::MAX_DOCUMENT_BYTES / spec as u64 - 1
        );
        let msg = err.to_string();
        assert!(
            matches!(err, StateError::DocumentTooLarge { limit, .. } if limit == super::super::MAX_DOCUMENT_BYTES),
            "{msg}"
        );
        assert!(
            msg.contains(&super::super::MAX_DOCUMENT_BYTES.to_string()),
            "{msg}"
        );
        assert_eq!(state.snapshot().state.services.len(), accepted);
        // Shrinking always passes, and makes room again.
        state
            .write(write("s0", service(10, "removed")))
            .await
            .unwrap();
        state
            .write(write(&format!("s{accepted}"), service(spec, "running")))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_value_read_change_by_change_matches_a_full_read() {
        let (state, _stop) = in_memory();
        for i in 0..20 {
            state
                .write(write(&format!("s{i}"), service(100 + i, "running")))
                .await
                .unwrap();
        }
        for i in 0..5 {
            state
                .write(write(&format!("s{i}"), service(10, "removed")))
                .await
                .unwrap();
        }
        state.set_tag("role", Some("nas")).await.unwrap();
        state.set_tag("zone", Some("attic")).await.unwrap();
        state.set_tag("role", None).await.unwrap();
        let incremental = state.snapshot();
        assert_eq!(
            incremental.value_bytes,
            super::super::value_bytes(&incremental.state)
        );
        // A new epoch is read whole: the same value.
        assert!(state.compact_now(true).await.unwrap());
        let full = state.snapshot();
        assert_eq!(*full.state, *incremental.state);
        assert_eq!(full.value_bytes, incremental.value_bytes);
    }

    /// Incompressible text of `n` characters (xorshift over an alphanumeric alphabet).
    fn noise(seed: u64, n: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
            })
            .collect()
    }

    /// Moves one actor's sync traffic to the other, as the node actor would (two peers only,
    /// so every response goes back to the one other peer).
    fn wire(from: PeerId, mut out: mpsc::Receiver<SyncOut>, to: StateHandle) {
        tokio::spawn(async move {
            let mut token = 0;
            while let Some(msg) = out.recv().await {
                let cmd = match msg {
                    SyncOut::Request(_, request) => {
                        token += 1;
                        StateCommand::Inbound {
                            peer: from,
                            token,
                            request,
                        }
                    }
                    SyncOut::Respond(_, response) => StateCommand::Response {
                        peer: from,
                        response,
                    },
                };
                if !to.send(cmd).await {
                    break;
                }
            }
        });
    }

    #[tokio::test]
    async fn a_peer_lacking_more_than_one_message_gets_the_snapshot_in_parts() {
        let id = || {
            libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id()
        };
        let (ida, idb) = (id(), id());
        let start = |local| {
            spawn_state(
                StateConfig {
                    local,
                    data_dir: None,
                    self_record: NodeRecord::default(),
                },
                CancellationToken::new(),
            )
            .unwrap()
        };
        let (a, mut out_a, _) = start(ida);
        let (b, out_b, _) = start(idb);
        // b counts as connected to a but hears nothing: a never compacts (a connected peer is
        // not in sync), so b really lacks more than one sync message can carry.
        assert!(a.send(StateCommand::PeerUp(idb)).await);
        // ~7 MB of history (~5.3 MB as changes: more than MAX_SYNC_PAYLOAD), a small value.
        for i in 0..10u64 {
            let mut record = service(0, "running");
            record.spec_json = format!("{{\"blob\":\"{}\"}}", noise(i, 700 * 1024));
            a.write(write(&format!("s{i}"), record)).await.unwrap();
            a.write(write(&format!("s{i}"), service(0, "removed")))
                .await
                .unwrap();
        }
        a.write(write("kept", service(1000, "running")))
            .await
            .unwrap();
        assert!(a.send(StateCommand::PeerDown(idb)).await);
        // What a sent while b was deaf is lost, as on a dropped connection.
        a.write(Vec::new()).await.unwrap(); // a barrier: PeerDown was handled
        while out_a.try_recv().is_ok() {}
        wire(ida, out_a, b.clone());
        wire(idb, out_b, a.clone());
        assert!(b.send(StateCommand::PeerUp(ida)).await);
        assert!(a.send(StateCommand::PeerUp(idb)).await);
        let mut rx = b.subscribe();
        // A ceiling, not a wait: ~7 MB through debug-build Automerge takes seconds alone and
        // over a minute on a loaded 2-core machine.
        tokio::time::timeout(Duration::from_secs(240), async {
            loop {
                let mut heads = rx.borrow_and_update().heads.clone();
                let mut want = a.snapshot().heads.clone();
                heads.sort();
                want.sort();
                if heads == want && b.snapshot().state.services.contains_key("kept") {
                    return;
                }
                // a's heads may move too (b's own record reaching it): poll both.
                let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            let (sa, sb) = (a.snapshot(), b.snapshot());
            panic!(
                "b does not hold a's document: a {} {:?} {:?}, b {} {:?} {:?}",
                sa.epoch, sa.peers, sa.sync, sb.epoch, sb.peers, sb.sync
            )
        });
        let (sa, sb) = (a.snapshot(), b.snapshot());
        assert_eq!(sa.epoch, sb.epoch, "merged, not compacted");
        assert_eq!(sb.state.services["kept"], sa.state.services["kept"]);
        assert!(
            sb.sync.bytes_in < MAX_SYNC_PAYLOAD as u64,
            "the history came as a snapshot, not as sync messages ({} B)",
            sb.sync.bytes_in
        );
    }
}
