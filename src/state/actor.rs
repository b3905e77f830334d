//! The state actor: owns the live Automerge document, its file, and the sync sessions.
//!
//! Inputs ([`StateCommand`], from [`StateHandle`] and the node actor): local writes (tags, this
//! node's record), peers coming up and down, sync messages received and delivery failures.
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
    COMPACT_AT_CHANGES, EpochId, HydrateStats, InstanceRecord, LeaseRecord, MeshState, NodeRecord,
    ServiceRecord, StateError, compact, delete_entry, epoch_of, genesis, get_entry,
    hydrate_lenient, migrate_into, now_ms, put_entry, validate_tag,
};
use crate::sync::{SyncHealth, SyncSessions, SyncStats, SyncStatus};
use crate::transport::{MAX_SNAPSHOT_BYTES, MAX_SYNC_PAYLOAD, SNAPSHOT_PART_BYTES};
use crate::wire::sync::{SyncRequest, SyncResponse};

/// Capacity of the command channel. Commands are small; the node actor never blocks on it
/// (`try_send`), and a dropped sync message is recovered by anti-entropy.
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

/// One entry written by [`StateHandle::write`]. `None` deletes the entry.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryWrite {
    /// Shared desired state: any member may write any service (last writer wins per service).
    Service { name: String, record: ServiceRecord },
    /// Key `service@node-id`: only that node writes it (checked).
    Instance {
        key: String,
        record: Option<InstanceRecord>,
    },
    /// Key `node-id/proto/port`: only that node writes it (checked).
    Lease {
        key: String,
        record: Option<LeaseRecord>,
    },
}

impl EntryWrite {
    /// Whether this node may write the entry: instances and leases only its own.
    fn owned_by(&self, local: &str) -> bool {
        match self {
            EntryWrite::Service { .. } => true,
            EntryWrite::Instance { key, record } => {
                key.rsplit_once('@').is_some_and(|(_, node)| node == local)
                    && record.as_ref().is_none_or(|r| r.node == local)
            }
            EntryWrite::Lease { key, record } => {
                key.split_once('/').is_some_and(|(node, _)| node == local)
                    && record.as_ref().is_none_or(|r| r.node == local)
            }
        }
    }
}

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
    MarkLeft {
        reply: oneshot::Sender<()>,
    },
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

/// A cloneable handle to the state actor.
#[derive(Clone)]
pub struct StateHandle {
    commands: mpsc::Sender<StateCommand>,
    snapshot: watch::Receiver<Arc<StateSnapshot>>,
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

    /// For the node actor: never blocks; a full channel drops the command (counted by the
    /// caller), which anti-entropy recovers from.
    pub(crate) fn try_send(&self, cmd: StateCommand) -> bool {
        self.commands.try_send(cmd).is_ok()
    }

    pub(crate) async fn send(&self, cmd: StateCommand) -> bool {
        self.commands.send(cmd).await.is_ok()
    }
}

/// Most patches read one by one when bringing the hydrated value up to date; past it, the whole
/// document is read again (a big merge or an adopted epoch touch most entries anyway).
const MAX_INCREMENTAL_PATCHES: usize = 4096;

/// Reads entry `key` of root map `map` again into `into`; returns its old and new sizes (as
/// [`super::entry_bytes`] counts them). An entry that no longer fits the schema is dropped and
/// counted, as full hydration would.
fn reread<T: autosurgeon::Hydrate + serde::Serialize>(
    doc: &AutoCommit,
    into: &mut BTreeMap<String, T>,
    map: &str,
    key: &str,
    stats: &mut HydrateStats,
) -> (u64, u64) {
    use automerge::ReadDoc;
    let old = into.remove(key).map_or(0, |v| super::entry_bytes(key, &v));
    let present = match doc.get(automerge::ROOT, map) {
        Ok(Some((automerge::Value::Object(automerge::ObjType::Map), obj))) => {
            matches!(doc.get(&obj, key), Ok(Some(_)))
        }
        _ => false,
    };
    if !present {
        return (old, 0);
    }
    match get_entry::<T>(doc, map, key) {
        Some(v) => {
            let new = super::entry_bytes(key, &v);
            into.insert(key.to_string(), v);
            (old, new)
        }
        None => {
            stats.skipped_entries += 1;
            (old, 0)
        }
    }
}

/// Changes in a document's history and their bytes (walks the history: at start and on an
/// epoch switch only).
fn history_of(doc: &mut AutoCommit) -> (usize, u64) {
    let changes = doc.get_changes(&[]);
    let bytes = changes.iter().map(|c| c.raw_bytes().len() as u64).sum();
    (changes.len(), bytes)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => futures::future::pending().await,
    }
}

/// A snapshot being fetched from a peer, part by part.
struct SnapshotFetch {
    peer: PeerId,
    /// The last progress (start or a part); the fetch is abandoned [`FETCH_TIMEOUT`] after it.
    since: Instant,
    /// The snapshot's id, from its first part.
    id: Option<u64>,
    buf: Vec<u8>,
}

/// A snapshot we serve in parts.
struct ServedSnapshot {
    id: u64,
    heads: Vec<ChangeHash>,
    bytes: Arc<Vec<u8>>,
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
    let (out_tx, out_rx) = mpsc::channel(OUT_CHANNEL);
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(StateSnapshot {
        version: 0,
        state: Arc::new(MeshState::default()),
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
                    SyncRequest::Sync { epoch, message } if epoch == self.epoch => {
                        match self.receive(peer, &message).await {
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
            StateCommand::Response { peer, response } => match response {
                SyncResponse::Message {
                    epoch,
                    message: Some(bytes),
                } if epoch == self.epoch => {
                    if let Ok(Some(reply)) = self.receive(peer, &bytes).await {
                        self.send(peer, reply).await;
                    }
                }
                SyncResponse::Message { epoch, .. } => {
                    if epoch == self.epoch {
                        self.sessions.on_delivered(peer, now);
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
            },
            StateCommand::SendFailed { peer, reason } => {
                self.sessions.on_send_failed(peer, now, reason);
                self.publish();
            }
        }
    }

    async fn write_entries(&mut self, mut writes: Vec<EntryWrite>) -> Result<bool, StateError> {
        let local = self.local.to_base58();
        if let Some(w) = writes.iter().find(|w| !w.owned_by(&local)) {
            return Err(StateError::NotOwned(format!("{w:?}")));
        }
        let heads = self.doc.get_heads();
        self.ensure_hydrated(&heads);
        let mut growth: i64 = 0;
        for w in &mut writes {
            if let EntryWrite::Service { name, record } = w {
                // Every writer path (API, supervisor, tests) gets lean tombstones.
                record.strip_if_removed();
                let old = self.hydrated.1.services.get(name.as_str());
                growth += super::entry_bytes(name, record) as i64
                    - old.map_or(0, |o| super::entry_bytes(name, o) as i64);
            }
        }
        // Services are what an operator adds without limit; instances and leases follow from
        // them (bounded per service), so refusing those would only hide what runs.
        self.check_bound(growth)?;
        let before = self.doc.get_heads();
        if let Err(e) = Self::apply_writes(&mut self.doc, &writes) {
            self.doc.rollback();
            return Err(e);
        }
        if !self.commit_durably(&before)? {
            return Ok(false);
        }
        self.publish_and_push().await;
        Ok(true)
    }

    fn apply_writes(doc: &mut AutoCommit, writes: &[EntryWrite]) -> Result<(), StateError> {
        for write in writes {
            match write {
                EntryWrite::Service { name, record } => put_entry(doc, "services", name, record)?,
                EntryWrite::Instance {
                    key,
                    record: Some(r),
                } => put_entry(doc, "instances", key, r)?,
                EntryWrite::Lease {
                    key,
                    record: Some(r),
                } => put_entry(doc, "leases", key, r)?,
                EntryWrite::Instance { key, record: None } => delete_entry(doc, "instances", key)?,
                EntryWrite::Lease { key, record: None } => delete_entry(doc, "leases", key)?,
            }
        }
        Ok(())
    }

    fn has_own_record(&self) -> bool {
        get_entry::<NodeRecord>(&self.doc, "nodes", &self.local.to_base58()).is_some()
    }

    /// Writes the held-back record (see [`SELF_RECORD_GRACE`]), merged with whatever the mesh
    /// already holds for us.
    async fn flush_pending_self(&mut self) {
        let Some((record, _)) = self.pending_self.take() else {
            return;
        };
        if let Err(e) = self.write_self_record(record) {
            tracing::warn!(error = %e, "cannot write this node's record");
            return;
        }
        self.publish_and_push().await;
    }

    /// Applies a sync message; on news, persists it, republishes, and forwards to other peers.
    async fn receive(&mut self, peer: PeerId, bytes: &[u8]) -> Result<Option<Vec<u8>>, ()> {
        let before = self.doc.get_heads();
        let mine_before = self.own_record();
        let now = Instant::now().into_std();
        let reply = match self.sessions.on_message(peer, &mut self.doc, bytes, now) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "dropped a sync message");
                return Err(());
            }
        };
        let added_changes = self.doc.get_changes(&before);
        let added = added_changes.len();
        self.change_count += added;
        self.history_bytes += added_changes
            .iter()
            .map(|c| c.raw_bytes().len() as u64)
            .sum::<u64>();
        let repaired =
            added > 0 && self.pending_self.is_none() && self.repair_own_record(mine_before);
        if self.pending_self.is_some()
            && (self.has_own_record()
                || self.sessions.status(&peer, &self.doc.get_heads()) == SyncStatus::InSync)
        {
            self.flush_pending_self().await;
        }
        if added == 0 {
            // Their heads may have changed what `mesh state` shows.
            self.publish();
        } else {
            // Visible first (propagation latency), durable right after: a remote change lost
            // in a crash is fetched again from peers.
            self.publish();
            let others: Vec<(PeerId, Vec<u8>)> = self
                .sessions
                .generate_all(&mut self.doc, now)
                .into_iter()
                .filter(|(p, _)| repaired || *p != peer)
                .collect();
            self.send_all(others).await;
            self.persist_or_log();
        }
        Ok(reply)
    }

    async fn set_tag(&mut self, key: &str, value: Option<&str>) -> Result<bool, StateError> {
        let mut rec = self.own_record();
        let changed = match value {
            Some(v) => {
                validate_tag(key, v)?;
                if !rec.tags.contains_key(key) && rec.tags.len() >= super::MAX_TAGS {
                    return Err(StateError::TooManyTags);
                }
                rec.tags.insert(key.to_string(), v.to_string()) != Some(v.to_string())
            }
            None => rec.tags.remove(key).is_some(),
        };
        if changed {
            let id = self.local.to_base58();
            let heads = self.doc.get_heads();
            self.ensure_hydrated(&heads);
            let old = self.hydrated.1.nodes.get(&id);
            let growth = super::entry_bytes(&id, &rec) as i64
                - old.map_or(0, |o| super::entry_bytes(&id, o) as i64);
            self.check_bound(growth)?;
            self.write_own(rec).await?;
        }
        Ok(changed)
    }

    /// Repairs concurrent creations of our own record (a node that lost its state and wrote its
    /// record before a peer sent the old one): Automerge keeps one copy whole, so the winning
    /// copy is rewritten with the tags of every copy (ours win on a clash), the earliest join
    /// time, and every other field as this run has them. Idempotent: once merged, nothing is
    /// written. Returns whether it wrote.
    fn repair_own_record(&mut self, mine_before: NodeRecord) -> bool {
        use automerge::{ObjType, ROOT, ReadDoc, Value};
        use autosurgeon::Hydrate;
        let id = self.local.to_base58();
        let Ok(Some((Value::Object(ObjType::Map), nodes))) = self.doc.get(ROOT, "nodes") else {
            return false;
        };
        let Ok(all) = self.doc.get_all(&nodes, id.as_str()) else {
            return false;
        };
        if all.len() < 2 {
            return false;
        }
        let mine: Option<NodeRecord> = Some(mine_before);
        let mut tags = BTreeMap::new();
        let mut joined = i64::MAX;
        for (v, obj) in &all {
            if !matches!(v, Value::Object(ObjType::Map)) {
                continue;
            }
            let Ok(rec) = NodeRecord::hydrate_map(&self.doc, obj) else {
                continue;
            };
            if rec.joined_at_ms > 0 {
                joined = joined.min(rec.joined_at_ms);
            }
            tags.extend(rec.tags);
        }
        let Some(mut rec) = mine else { return false };
        tags.extend(std::mem::take(&mut rec.tags));
        rec.tags = tags;
        if joined != i64::MAX {
            rec.joined_at_ms = joined;
        }
        let ok =
            put_entry(&mut self.doc, "nodes", &id, &rec).is_ok() && self.doc.commit().is_some();
        if ok {
            self.note_local_change();
        }
        ok
    }

    fn own_record(&self) -> NodeRecord {
        if let Some((pending, _)) = &self.pending_self {
            return pending.clone();
        }
        self.snapshot_tx
            .borrow()
            .state
            .nodes
            .get(&self.local.to_base58())
            .cloned()
            .unwrap_or_default()
    }

    /// Writes this node's record, commits, pushes to peers, and fsyncs before returning.
    async fn write_own(&mut self, record: NodeRecord) -> Result<(), StateError> {
        if let Some((pending, deadline)) = self.pending_self.take() {
            // A local write before any peer answered: the record is written now after all.
            let mut merged = record;
            merged.joined_at_ms = pending.joined_at_ms;
            if let Err(e) = self.write_self_record_keep_tags(merged) {
                self.pending_self = Some((pending, deadline));
                return Err(e);
            }
            self.publish();
            let msgs = self
                .sessions
                .generate_all(&mut self.doc, Instant::now().into_std());
            self.send_all(msgs).await;
            return Ok(());
        }
        let before = self.doc.get_heads();
        if let Err(e) = put_entry(&mut self.doc, "nodes", &self.local.to_base58(), &record) {
            self.doc.rollback();
            return Err(e);
        }
        if self.commit_durably(&before)? {
            self.publish_and_push().await;
        }
        Ok(())
    }

    /// Like [`StateActor::write_self_record`], but with the tags of `record` itself.
    fn write_self_record_keep_tags(&mut self, mut record: NodeRecord) -> Result<(), StateError> {
        if record.joined_at_ms <= 0 {
            record.joined_at_ms = now_ms();
        }
        let before = self.doc.get_heads();
        if let Err(e) = put_entry(&mut self.doc, "nodes", &self.local.to_base58(), &record) {
            self.doc.rollback();
            return Err(e);
        }
        self.commit_durably(&before)?;
        Ok(())
    }

    /// At start: this node's record, keeping tags and first-join time from the document.
    fn write_self_record(&mut self, mut record: NodeRecord) -> Result<(), StateError> {
        let existing = get_entry::<NodeRecord>(&self.doc, "nodes", &self.local.to_base58());
        record.tags = existing
            .as_ref()
            .map(|r| r.tags.clone())
            .unwrap_or_default();
        record.joined_at_ms = existing
            .as_ref()
            .map(|r| r.joined_at_ms)
            .filter(|t| *t > 0)
            .unwrap_or_else(now_ms);
        record.left_at_ms = None;
        put_entry(&mut self.doc, "nodes", &self.local.to_base58(), &record)?;
        if self.doc.commit().is_some() {
            self.note_local_change();
            self.persist_or_log();
        }
        Ok(())
    }

    /// Republishes the snapshot and sends every connected peer what it is missing.
    async fn publish_and_push(&mut self) {
        self.publish();
        let msgs = self
            .sessions
            .generate_all(&mut self.doc, Instant::now().into_std());
        self.send_all(msgs).await;
    }

    /// Starts fetching `peer`'s snapshot in parts, unless a fetch is already under way.
    async fn fetch_snapshot(&mut self, peer: PeerId) {
        let now = Instant::now();
        if self
            .fetching
            .as_ref()
            .is_some_and(|f| now.duration_since(f.since) < FETCH_TIMEOUT)
        {
            return;
        }
        self.fetching = Some(SnapshotFetch {
            peer,
            since: now,
            id: None,
            buf: Vec::new(),
        });
        let _ = self
            .out
            .send(SyncOut::Request(
                peer,
                SyncRequest::FetchSnapshotPart {
                    offset: 0,
                    id: None,
                },
            ))
            .await;
    }

    /// Serves one part of our snapshot: a new snapshot for a first part (reused while our
    /// heads stay the same), else the one the requester started on.
    fn snapshot_part(&mut self, offset: u64, id: Option<u64>) -> SyncResponse {
        let heads = self.doc.get_heads();
        if id.is_none() && self.served.as_ref().is_none_or(|s| s.heads != heads) {
            let bytes = self.doc.save();
            self.served = Some(ServedSnapshot {
                id: self.next_snapshot_id,
                heads,
                bytes: Arc::new(bytes),
            });
            self.next_snapshot_id += 1;
        }
        let Some(served) = self
            .served
            .as_ref()
            .filter(|s| id.is_none_or(|id| id == s.id))
        else {
            // That snapshot is gone (our document changed): the requester starts over.
            return SyncResponse::Refused;
        };
        let total = served.bytes.len() as u64;
        if total > MAX_SNAPSHOT_BYTES || offset > total {
            return SyncResponse::Refused;
        }
        let start = offset as usize;
        let end = (start + SNAPSHOT_PART_BYTES).min(served.bytes.len());
        SyncResponse::SnapshotPart {
            epoch: self.epoch.clone(),
            id: served.id,
            total,
            offset,
            bytes: served.bytes[start..end].to_vec(),
        }
    }

    /// A part of the snapshot we are fetching: append it, ask for the next, or use the whole.
    async fn on_snapshot_part(
        &mut self,
        peer: PeerId,
        epoch: EpochId,
        id: u64,
        total: u64,
        offset: u64,
        bytes: Vec<u8>,
    ) {
        let now = Instant::now();
        let Some(fetch) = self.fetching.as_mut().filter(|f| f.peer == peer) else {
            return;
        };
        let fits = total <= MAX_SNAPSHOT_BYTES
            && offset == fetch.buf.len() as u64
            && fetch.id.is_none_or(|i| i == id)
            && !bytes.is_empty()
            && offset + bytes.len() as u64 <= total;
        if !fits {
            self.fetching = None;
            let why = if total > MAX_SNAPSHOT_BYTES {
                format!("its snapshot ({total} bytes) is larger than {MAX_SNAPSHOT_BYTES}")
            } else {
                "its snapshot changed or came out of order; retrying".to_string()
            };
            self.sessions
                .on_send_failed(peer, now.into_std(), why.clone());
            tracing::debug!(%peer, %why, "snapshot fetch abandoned");
            self.publish();
            return;
        }
        fetch.id = Some(id);
        fetch.since = now;
        fetch.buf.extend_from_slice(&bytes);
        if (fetch.buf.len() as u64) < total {
            let next = SyncRequest::FetchSnapshotPart {
                offset: fetch.buf.len() as u64,
                id: Some(id),
            };
            let _ = self.out.send(SyncOut::Request(peer, next)).await;
            return;
        }
        let Some(fetch) = self.fetching.take() else {
            return;
        };
        self.on_snapshot(peer, epoch, fetch.buf).await;
    }

    /// A whole snapshot from `peer`: adopted if its epoch supersedes ours, merged if it is ours.
    async fn on_snapshot(&mut self, peer: PeerId, epoch: EpochId, bytes: Vec<u8>) {
        let result = if epoch.supersedes(&self.epoch) {
            self.adopt(peer, &epoch, &bytes).await
        } else if epoch == self.epoch {
            self.merge_snapshot(peer, &bytes).await
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::warn!(%peer, error = %e, "cannot use the peer's state snapshot");
            self.sessions
                .on_send_failed(peer, Instant::now().into_std(), e.to_string());
            self.publish();
        }
    }

    /// Merges a snapshot of our own epoch (the peer had more for us than fits one message).
    async fn merge_snapshot(&mut self, peer: PeerId, bytes: &[u8]) -> Result<(), StateError> {
        let mut other = AutoCommit::load(bytes)
            .map_err(|e| StateError::Load(format!("snapshot from {peer}: {e}")))?;
        let theirs = epoch_of(&mut other);
        if theirs != self.epoch {
            return Err(StateError::Load(format!(
                "snapshot from {peer} is epoch {theirs}, not ours ({})",
                self.epoch
            )));
        }
        let before = self.doc.get_heads();
        self.doc.merge(&mut other)?;
        let added = self.doc.get_changes(&before);
        self.change_count += added.len();
        self.history_bytes += added
            .iter()
            .map(|c| c.raw_bytes().len() as u64)
            .sum::<u64>();
        tracing::info!(%peer, changes = added.len(), bytes = bytes.len(), "merged a peer's state snapshot");
        let now = Instant::now().into_std();
        self.sessions.on_delivered(peer, now);
        if !added.is_empty() {
            self.publish();
            self.persist_or_log();
        }
        // Everyone (the sender too) learns our new heads; what is left is small.
        let msgs = self.sessions.generate_all(&mut self.doc, now);
        self.send_all(msgs).await;
        self.publish();
        Ok(())
    }

    /// Switches to a newer epoch received from `peer`, carrying over what only we knew.
    async fn adopt(
        &mut self,
        peer: PeerId,
        epoch: &EpochId,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let mut new = AutoCommit::load(bytes)
            .map_err(|e| StateError::Load(format!("snapshot from {peer}: {e}")))?
            .with_actor(self.actor_id.clone());
        let actual = epoch_of(&mut new);
        if actual != *epoch || !actual.supersedes(&self.epoch) {
            return Err(StateError::Load(format!(
                "snapshot from {peer} is epoch {actual}, announced {epoch}"
            )));
        }
        let (old, _) = hydrate_lenient(&self.doc);
        migrate_into(&old, &mut new, &self.local.to_base58())?;
        tracing::info!(from = %self.epoch, to = %actual, via = %peer, "adopted a new state epoch");
        self.switch_epoch(new, actual).await;
        Ok(())
    }

    /// Compacts into a new epoch when due (or when forced): past [`COMPACT_AT_CHANGES`], at most
    /// every [`MIN_COMPACT_INTERVAL`], by the leader (lowest node id among this node and its
    /// connected peers), once every connected peer is in sync — so members rarely compact at
    /// once, and when they do the epoch order picks one winner.
    async fn maybe_compact(&mut self, force: bool) -> Result<bool, StateError> {
        let now = Instant::now();
        if !force {
            if (self.change_count < COMPACT_AT_CHANGES
                && self.history_bytes < super::COMPACT_AT_HISTORY_BYTES)
                || self
                    .last_compaction
                    .is_some_and(|t| now.duration_since(t) < MIN_COMPACT_INTERVAL)
            {
                return Ok(false);
            }
            let heads = self.doc.get_heads();
            let connected = self.sessions.connected_peers();
            let leader = connected.iter().all(|p| self.local < *p);
            let in_sync = connected
                .iter()
                .all(|p| self.sessions.status(p, &heads) == SyncStatus::InSync);
            if !leader || !in_sync {
                return Ok(false);
            }
        }
        let mut new = compact(&mut self.doc, self.actor_id.clone())?;
        let epoch = epoch_of(&mut new);
        tracing::info!(from = %self.epoch, to = %epoch, "compacted the state into a new epoch");
        self.last_compaction = Some(now);
        self.switch_epoch(new, epoch).await;
        Ok(true)
    }

    /// Replaces the document: new sync sessions (heads share nothing with the old epoch), the
    /// file rewritten, readers and peers told.
    async fn switch_epoch(&mut self, mut doc: AutoCommit, epoch: EpochId) {
        (self.change_count, self.history_bytes) = history_of(&mut doc);
        self.doc = doc;
        // The old heads mean nothing in the new document: read it whole.
        self.hydrated.0.clear();
        self.epoch = epoch;
        let connected = self.sessions.connected_peers();
        let stats = self.sessions.stats().clone();
        self.sessions = SyncSessions::with_stats(stats);
        self.rewrite_file();
        self.sync_states_dirty = true;
        self.publish();
        let now = Instant::now().into_std();
        for peer in connected {
            if let Some(msg) = self.sessions.on_peer_up(peer, &mut self.doc, now) {
                self.send(peer, msg).await;
            }
        }
    }

    async fn send(&mut self, peer: PeerId, message: Vec<u8>) {
        let req = if message.len() > MAX_SYNC_PAYLOAD {
            // Too much for one message: offer our snapshot, which travels in parts.
            self.sessions.forget_in_flight(peer);
            SyncRequest::SnapshotOffer {
                epoch: self.epoch.clone(),
            }
        } else {
            SyncRequest::Sync {
                epoch: self.epoch.clone(),
                message,
            }
        };
        let _ = self.out.send(SyncOut::Request(peer, req)).await;
    }

    async fn send_all(&mut self, msgs: Vec<(PeerId, Vec<u8>)>) {
        for (peer, msg) in msgs {
            self.send(peer, msg).await;
        }
    }

    /// Appends what the file lacks and fsyncs; compacts the file when due. On error the file
    /// is left without a torn chunk and the next call retries the same changes.
    fn persist(&mut self) -> Result<(), StateError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        if let Err(e) = file.append(&mut self.doc) {
            let path = file.path().display().to_string();
            tracing::error!(error = %e, %path, "cannot append to the state file");
            return Err(StateError::NotDurable(format!("{path}: {e}")));
        }
        if file.needs_compaction() {
            self.rewrite_file();
        }
        Ok(())
    }

    /// Commits the open transaction as one local change and makes it durable before anyone
    /// sees it. `Ok(false)`: nothing changed. When the change cannot be written to disk it is
    /// undone in memory as well — never published, never sent — and the error says so.
    /// Counts the change this node just committed.
    fn note_local_change(&mut self) {
        self.change_count += 1;
        if let Some(c) = self.doc.get_last_local_change() {
            self.history_bytes += c.raw_bytes().len() as u64;
        }
    }

    fn commit_durably(&mut self, before: &[ChangeHash]) -> Result<bool, StateError> {
        if self.doc.commit().is_none() {
            return Ok(false);
        }
        self.note_local_change();
        if let Err(e) = self.persist() {
            self.roll_back_to(before);
            return Err(e);
        }
        Ok(true)
    }

    /// Undoes this node's last local change (not yet sent anywhere): the document as of
    /// `heads`, with a fresh actor id so the undone change's sequence number is never reused
    /// for different content.
    fn roll_back_to(&mut self, heads: &[ChangeHash]) {
        match self.doc.fork_at(heads) {
            Ok(doc) => {
                self.actor_id = ActorId::random();
                self.doc = doc.with_actor(self.actor_id.clone());
                self.change_count = self.change_count.saturating_sub(1);
                self.hydrated.0.clear();
            }
            Err(e) => tracing::error!(error = %e, "cannot undo a change that was not saved"),
        }
    }

    /// Logs a failed write of a change that is kept anyway (a peer's change, or this node's
    /// record at start, both of which come back from peers or the next start).
    fn persist_or_log(&mut self) {
        if let Err(e) = self.persist() {
            tracing::warn!(error = %e, "a change is held in memory only until the disk accepts it");
        }
    }

    fn rewrite_file(&mut self) {
        if let Some(file) = self.file.as_mut()
            && let Err(e) = file.rewrite(&mut self.doc)
        {
            tracing::error!(error = %e, "cannot rewrite the state file; retried on the next write");
        }
    }

    fn save_sync_states(&mut self) {
        let (Some(path), true) = (&self.sync_file, self.sync_states_dirty) else {
            return;
        };
        let map: BTreeMap<String, String> = self
            .sessions
            .encode_states()
            .into_iter()
            .map(|(k, v)| (k, hex::encode(v)))
            .collect();
        let text = serde_json::to_vec(&map).expect("a string map always serializes");
        if let Err(e) = crate::identity::write_secret_file(path, &text) {
            tracing::warn!(error = %e, "cannot save sync states");
        }
        self.sync_states_dirty = false;
    }

    /// Brings the hydrated value (and its size) up to `heads`: only the entries the changes
    /// since the last hydration touched are read again (a write costs what it changed, not
    /// what the document holds); after an epoch switch, a rollback, or a change to the root
    /// itself, everything is.
    fn ensure_hydrated(&mut self, heads: &[ChangeHash]) {
        if self.hydrated.0 == heads {
            return;
        }
        let before = self.hydrated.0.clone();
        if !before.is_empty()
            && let Some(touched) = self.touched_entries(&before, heads)
        {
            let mut state = (*self.hydrated.1).clone();
            let mut stats = self.hydrated.2.clone();
            for (map, key) in touched {
                let (old, new) = match map.as_str() {
                    "nodes" => reread(&self.doc, &mut state.nodes, &map, &key, &mut stats),
                    "services" => reread(&self.doc, &mut state.services, &map, &key, &mut stats),
                    "instances" => reread(&self.doc, &mut state.instances, &map, &key, &mut stats),
                    "leases" => reread(&self.doc, &mut state.leases, &map, &key, &mut stats),
                    _ => (0, 0),
                };
                self.value_bytes = (self.value_bytes + new).saturating_sub(old);
            }
            self.hydrated = (heads.to_vec(), Arc::new(state), stats);
            self.note_bound();
            return;
        }
        let (state, stats) = hydrate_lenient(&self.doc);
        self.value_bytes = super::value_bytes(&state);
        self.hydrated = (heads.to_vec(), Arc::new(state), stats);
        self.note_bound();
    }

    /// Says so when the document's value crosses its bound (never silently): `mesh state`
    /// shows the size against the limit, and the log says who must act.
    fn note_bound(&mut self) {
        let over = self.value_bytes > super::MAX_DOCUMENT_BYTES;
        if over && !self.over_bound {
            tracing::warn!(
                value_bytes = self.value_bytes,
                limit = super::MAX_DOCUMENT_BYTES,
                "the replicated document is past its bound: services and tags that grow it are \
                 refused until it shrinks (what nodes report of their instances and leases, and \
                 changes from peers, are never refused); remove services or tags, and check for \
                 an older or misbehaving agent in the mesh"
            );
        } else if !over && self.over_bound {
            tracing::info!(
                value_bytes = self.value_bytes,
                "the replicated document is back within its bound"
            );
        }
        self.over_bound = over;
    }

    /// The `(root map, key)` entries the changes between `before` and `after` touched, from
    /// Automerge's diff; `None` when a change reaches past the entries (the root itself) or
    /// touches so many that reading everything is as cheap.
    fn touched_entries(
        &mut self,
        before: &[ChangeHash],
        after: &[ChangeHash],
    ) -> Option<std::collections::BTreeSet<(String, String)>> {
        use automerge::PatchAction;
        use automerge::Prop;
        let patches = self.doc.diff(before, after);
        if patches.len() > MAX_INCREMENTAL_PATCHES {
            return None;
        }
        let mut touched = std::collections::BTreeSet::new();
        for p in patches {
            let entry = match (p.path.as_slice(), &p.action) {
                ([(_, Prop::Map(map))], PatchAction::PutMap { key, .. })
                | ([(_, Prop::Map(map))], PatchAction::DeleteMap { key }) => {
                    (map.clone(), key.clone())
                }
                ([(_, Prop::Map(map)), (_, Prop::Map(key)), ..], _) => (map.clone(), key.clone()),
                _ => return None,
            };
            touched.insert(entry);
        }
        Some(touched)
    }

    /// Refuses a local write that would grow the document's value past
    /// [`super::MAX_DOCUMENT_BYTES`] (`growth` bytes; shrinking always passes).
    fn check_bound(&self, growth: i64) -> Result<(), StateError> {
        let size = self.value_bytes.saturating_add_signed(growth);
        if growth > 0 && size > super::MAX_DOCUMENT_BYTES {
            return Err(StateError::DocumentTooLarge {
                size,
                limit: super::MAX_DOCUMENT_BYTES,
            });
        }
        Ok(())
    }

    fn peer_views(&self, heads: &[ChangeHash]) -> Vec<PeerSyncView> {
        let now = Instant::now().into_std();
        let mut views: Vec<PeerSyncView> = self
            .sessions
            .peers()
            .map(|(p, connected)| PeerSyncView {
                peer: *p,
                connected,
                status: self.sessions.status(p, heads),
                health: self.sessions.health(p, heads, now),
            })
            .collect();
        views.sort_by_key(|v| v.peer);
        views
    }

    /// Republishes if a peer's sync health changed with time alone (`never-synced` past its
    /// deadline), so `mesh peers` and the log tell without any other event.
    fn recheck_health(&mut self) {
        let heads = self.doc.get_heads();
        let views = self.peer_views(&heads);
        if self.snapshot_tx.borrow().peers != views {
            self.publish();
        }
    }

    /// Logs a peer whose sync is failing (at most every [`HEALTH_WARN_INTERVAL`] per peer),
    /// and when it works again.
    fn warn_on_bad_health(&mut self, views: &[PeerSyncView]) {
        let now = Instant::now();
        for v in views {
            let entry = self.health_warned.entry(v.peer).or_insert((false, None));
            if v.health.is_bad() {
                if entry
                    .1
                    .is_none_or(|t| now.duration_since(t) >= HEALTH_WARN_INTERVAL)
                {
                    tracing::warn!(
                        peer = %v.peer,
                        health = %v.health,
                        "cannot sync the mesh state with this peer: our documents may differ \
                         until this is fixed"
                    );
                    entry.1 = Some(now);
                }
                entry.0 = true;
            } else if entry.0 && v.health == SyncHealth::Ok {
                tracing::info!(peer = %v.peer, "state sync with this peer works again");
                *entry = (false, None);
            }
        }
        if self.health_warned.len() > crate::sync::MAX_SAVED_STATES {
            let known: std::collections::HashSet<PeerId> = views.iter().map(|v| v.peer).collect();
            self.health_warned.retain(|p, _| known.contains(p));
        }
    }

    fn publish(&mut self) {
        let heads = self.doc.get_heads();
        self.ensure_hydrated(&heads);
        let (state, hydrate) = (self.hydrated.1.clone(), self.hydrated.2.clone());
        let peers = self.peer_views(&heads);
        self.warn_on_bad_health(&peers);
        self.version += 1;
        let snapshot = StateSnapshot {
            version: self.version,
            state,
            heads: heads.iter().map(|h| h.to_string()).collect(),
            changes: self.change_count,
            file_bytes: self.file.as_ref().map_or(0, DocFile::bytes),
            epoch: self.epoch.clone(),
            peers,
            sync: self.sessions.stats().clone(),
            hydrate,
            recovered_from_corruption: self.recovered,
            value_bytes: self.value_bytes,
        };
        self.snapshot_tx.send_replace(Arc::new(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            desired: desired.into(),
            updated_by: "me".into(),
            updated_at_ms: now_ms(),
            request: Some("restart".into()),
            request_at_ms: Some(1),
            added_by: None,
        }
    }

    fn write(name: &str, record: ServiceRecord) -> Vec<EntryWrite> {
        vec![EntryWrite::Service {
            name: name.into(),
            record,
        }]
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
        assert_eq!(tomb.desired, "removed");
        assert_eq!(tomb.spec_json, "");
        assert_eq!((tomb.request.as_deref(), tomb.request_at_ms), (None, None));
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
        tokio::time::timeout(Duration::from_secs(60), async {
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
