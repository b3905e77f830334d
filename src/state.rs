//! Replicated mesh state: one Automerge document per mesh, its schema, and typed access.
//!
//! Owns the schema ([`MeshState`] and its records, spec: `protocol/state-schema.md`), the
//! deterministic genesis change every node starts from, lenient hydration (one bad entry written
//! by a buggy or hostile peer is skipped and counted, never fatal), and typed writes. The actor
//! that owns the live document, persistence and sync sessions is [`actor`]; the sync protocol
//! core is [`crate::sync`].
//!
//! What never goes in the document: liveness, RTT, load, battery level, health-check results
//! between transitions — anything that changes every few seconds. Automerge keeps every change
//! forever (until an epoch reset), so only slowly-changing state belongs here.

pub mod actor;
mod enums;
pub mod file;
pub mod incremental;

pub use enums::{Desired, InstanceState, OperatorRequest};

use std::collections::BTreeMap;

use automerge::transaction::CommitOptions;
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjType, ROOT, ReadDoc};
use autosurgeon::{Hydrate, Reconcile};
use serde::{Deserialize, Serialize};

pub use crate::identity::{NodeId, NodeName};
use crate::ports::LeaseState;
use crate::supervisor::spec::ServiceSpec;
pub use crate::wire::sync::EpochId;

/// Version of the document schema. Written once, in the genesis change. A later schema adds
/// fields with defaults (hydration tolerates missing fields) rather than a new genesis:
/// documents with different genesis changes cannot merge without conflicting root maps.
pub const SCHEMA_VERSION: u64 = 1;

/// Actor id of the genesis change. Every node creates the genesis change with this actor, time
/// 0 and the same operations, so every node's first change is byte-identical (same hash): two
/// nodes starting apart never create conflicting `nodes` maps (two `put_object(ROOT, "nodes", Map)` would).
pub const GENESIS_ACTOR: &[u8] = b"mesh-genesis-v1";

/// History length (changes) at which the compaction leader starts a new epoch. A few hundred
/// changes an hour in a 20-node mesh reaches it every few hours; at ~150 B a change the
/// history part of the document stays under ~200 KB, and loading stays in milliseconds
/// (measured: `load()` costs ~4.8 µs per change).
pub const COMPACT_AT_CHANGES: usize = 1000;
/// Bytes of history (the changes since the epoch began) at which the compaction leader starts
/// a new epoch even below [`COMPACT_AT_CHANGES`]: a few edits of big specs otherwise keep every
/// old version in everyone's memory and in every first sync. Twice [`MAX_DOCUMENT_BYTES`], so
/// history never dominates a document within its bound.
pub const COMPACT_AT_HISTORY_BYTES: u64 = 2 * MAX_DOCUMENT_BYTES;
/// Largest the document's value may grow through this node's API, in bytes, counted as
/// [`value_bytes`] (the JSON size of every entry and its key). Writes that would grow it past
/// this are refused with [`StateError::DocumentTooLarge`]; writes that shrink it always pass.
///
/// Why 2 MiB: every member holds the whole document in memory (Automerge's in-memory form is
/// several times the saved size, see BENCHMARKS.md) and loads it on every start, and a Pi Zero
/// 2 has 512 MB for everything it runs. 2 MiB is ~30 services at the per-spec field limits, or
/// several hundred typical (~1-4 KiB) specs, beside tags (at most 64 × 318 B per node) and the
/// small per-instance and per-lease records. It also fixes the sizes on the wire: an epoch
/// snapshot of a document within it is a few MiB at most and travels in parts of
/// `transport::SNAPSHOT_PART_BYTES`, each well under `transport::MAX_SYNC_MESSAGE`.
pub const MAX_DOCUMENT_BYTES: u64 = 2 * 1024 * 1024;
/// How long a removed service's tombstone is kept, in ms: compaction into a new epoch drops
/// older ones, and a node adopting that epoch does not carry back a service record older than
/// this bound that the epoch lacks (it was collected). A member offline for longer than this
/// that still holds the removed service in its old document would bring it back otherwise; a
/// week covers holidays, and a tombstone is ~100 bytes.
pub const TOMBSTONE_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// How long after a node left (gracefully) its instances and leases are kept, in ms: a node
/// that left for good leaves no records behind after the next epoch past this bound. A node
/// that returns writes its own records again.
pub const LEFT_RETENTION_MS: i64 = 3600 * 1000;
/// Longest tag key, in characters.
pub const MAX_TAG_KEY: usize = 63;
/// Longest tag value, in characters.
pub const MAX_TAG_VALUE: usize = 255;
/// Most tags per node. Tags steer placement; dozens are plenty, and the bound keeps one node
/// from bloating everyone's document.
pub const MAX_TAGS: usize = 64;

/// The root of the document.
#[derive(Debug, Clone, PartialEq, Default, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct MeshState {
    pub schema_version: u64,
    /// By node id (base58).
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Desired services by name (mesh-wide desired state, written by any member).
    pub services: BTreeMap<String, ServiceRecord>,
    /// Running instances by `service@node-id`; written only by the node that runs them, on
    /// lifecycle transitions.
    pub instances: BTreeMap<String, InstanceRecord>,
    /// Port leases by `node-id/proto/port`; written only by the node that holds them.
    pub leases: BTreeMap<String, LeaseRecord>,
}

/// What the mesh knows of one node. Written only by that node, except `removed_at_ms` and
/// `removed_by` (`mesh remove`), which any member writes.
#[derive(Debug, Clone, PartialEq, Default, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: NodeName,
    /// QUIC listen addresses (multiaddrs). Change with DHCP leases, rarely.
    pub addrs: Vec<String>,
    pub hardware: NodeHardware,
    pub tags: BTreeMap<String, String>,
    pub version: String,
    /// Wall-clock ms when this node first wrote its record.
    pub joined_at_ms: i64,
    /// Wall-clock ms of its last graceful stop; `None` while running.
    pub left_at_ms: Option<i64>,
    /// Drained (`mesh drain`): no service is placed on it until `mesh undrain`.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<bool>,
    /// Wall-clock ms when a member removed this node (`mesh remove`): every agent refuses its
    /// node id from then on, for good. Kept across epochs (never collected).
    #[autosurgeon(missing = "Default::default")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at_ms: Option<i64>,
    /// The node id of the member that removed it.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_by: Option<String>,
}

impl NodeRecord {
    /// Whether a member removed this node (`mesh remove`).
    pub fn is_removed(&self) -> bool {
        self.removed_at_ms.is_some()
    }
}

/// The stable part of a hardware profile. Battery level is volatile and stays out.
#[derive(Debug, Clone, PartialEq, Default, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct NodeHardware {
    pub cores: u64,
    pub memory_bytes: u64,
    pub cpu_model: String,
    pub os: String,
    pub arch: String,
    pub device_class: String,
    pub profile: String,
    pub score: u64,
}

impl From<&crate::hardware::HardwareInfo> for NodeHardware {
    fn from(h: &crate::hardware::HardwareInfo) -> Self {
        Self {
            cores: u64::from(h.cores),
            memory_bytes: h.memory_bytes,
            cpu_model: h.cpu_model.clone(),
            os: h.os.clone(),
            arch: h.arch.clone(),
            device_class: h.device_class.to_string(),
            profile: h.profile.to_string(),
            score: u64::from(h.score),
        }
    }
}

/// A desired service. The spec is replaced as a whole (last writer wins per service), so it is
/// stored as its canonical JSON text rather than field by field.
#[derive(Debug, Clone, PartialEq, Default, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub spec_json: String,
    pub desired: Desired,
    pub updated_by: NodeId,
    pub updated_at_ms: i64,
    /// The last operator request that is not a desired state. The node running the service
    /// acts on it once: when `(request_generation, request_at_ms)` differs from the last pair
    /// it handled (equality only; clocks of two machines are never compared).
    #[autosurgeon(missing = "Default::default")]
    pub request: Option<OperatorRequest>,
    /// Wall-clock ms of the request on the requesting node: for display, and the dedup key
    /// of requests written by agents older than `request_generation`.
    #[autosurgeon(missing = "Default::default")]
    pub request_at_ms: Option<i64>,
    /// Counts the operator requests of this service: every writer of a request bumps it.
    /// Absent in documents written before it existed.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_generation: Option<u64>,
    /// Node id whose API wrote the current spec (add or update; start/stop/remove keep it).
    /// Absent in documents written before it existed. A claim of the writer, not a proof.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_by: Option<NodeId>,
    /// The node the service is placed on, resolved from the spec's `node` (a name or an id)
    /// once, when it was added. Absent in documents written before it existed: then the
    /// spec's `node` is resolved by name, else it runs on `updated_by`
    /// ([`crate::services::placement`]).
    #[autosurgeon(missing = "Default::default")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    /// The spec's `nodes` (its eligible set), resolved to ids when it was added; absent: any
    /// node.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eligible: Option<Vec<NodeId>>,
    /// Counts `mesh service rebalance`s: copies claimed under an older generation are no
    /// longer sticky ([`crate::placement`]). Absent: 0.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_generation: Option<u64>,
}

/// A service instance on one node, updated on lifecycle transitions only.
#[derive(Debug, Clone, PartialEq, Default, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub service: String,
    /// The node running it (the node part of its key).
    pub node: NodeId,
    pub state: InstanceState,
    pub since_ms: i64,
    pub pid: Option<i64>,
    pub restarts: u64,
    pub ports: Vec<u64>,
    pub last_exit: Option<String>,
    /// Why it is in `state` ("dependency db failed", "exited with status 1").
    #[autosurgeon(missing = "Default::default")]
    pub reason: Option<String>,
    /// The last lines of its log, written only when it enters `failed` (bounded).
    #[autosurgeon(missing = "Default::default")]
    pub log_tail: Option<Vec<String>>,
    /// Whether a health check is configured (the HEALTH column says `none` otherwise).
    #[autosurgeon(missing = "Default::default")]
    pub health_check: Option<bool>,
    /// The service's fencing token when this copy was claimed (`MESH_EPOCH`): one more than
    /// the highest of the service's instances the claiming node saw. Absent in records
    /// written before placement.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The service's `placement_generation` when this copy was claimed.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// An anomaly flag of this copy (`crate::insight`: a measure far above its baseline on
    /// the node running it), in words; absent when none is up. Written on raise and clear only.
    #[autosurgeon(missing = "Default::default")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<String>,
}

/// A port lease held by one node.
#[derive(Debug, Clone, PartialEq, Default, Reconcile, Hydrate, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The node holding it (the node part of its key).
    pub node: NodeId,
    pub port: u64,
    /// `tcp` or `udp`.
    pub proto: String,
    /// The service holding it.
    pub owner: String,
    pub state: LeaseState,
    pub since_ms: i64,
    /// Which of the owner's ports (`PORT_<NAME>`); absent for a single unnamed port.
    #[autosurgeon(missing = "Default::default")]
    pub port_name: Option<String>,
    /// Asked for by number rather than drawn from a pool.
    #[autosurgeon(missing = "Default::default")]
    pub fixed: Option<bool>,
    /// Process group leader using the port, once spawned.
    #[autosurgeon(missing = "Default::default")]
    pub pid: Option<i64>,
}

/// Wall-clock milliseconds since the Unix epoch, the unit of every `*_ms` field.
pub fn now_ms() -> i64 {
    system_time_ms(std::time::SystemTime::now())
}

/// A wall-clock time as milliseconds since the Unix epoch (0 before it).
pub fn system_time_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl MeshState {
    /// A node's name from its record, else its id (for display).
    pub fn node_name(&self, node_id: &str) -> String {
        self.nodes
            .get(node_id)
            .map(|n| n.name.to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| node_id.to_string())
    }
}

/// The specs of the document's services (tombstones aside), parsed: every state snapshot
/// carries them, so no reader parses `spec_json` again. A spec is parsed once per change of its
/// text ([`ParsedSpecs::refresh`] reuses the others). A spec that does not parse, or names
/// another service than its key, is kept as the reason.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedSpecs {
    specs: BTreeMap<String, std::sync::Arc<Result<ServiceSpec, String>>>,
}

impl ParsedSpecs {
    /// Parses every active service of `state`.
    pub fn parse(state: &MeshState) -> Self {
        Self::default().refresh(&MeshState::default(), state)
    }

    /// The specs of `new`, reusing those of `self` (parsed from `old`) whose text is unchanged.
    pub fn refresh(&self, old: &MeshState, new: &MeshState) -> Self {
        let specs = new
            .services
            .iter()
            .filter(|(_, record)| !record.is_removed())
            .map(|(name, record)| {
                let kept = self.specs.get(name).filter(|_| {
                    old.services
                        .get(name)
                        .is_some_and(|o| !o.is_removed() && o.spec_json == record.spec_json)
                });
                let parsed = match kept {
                    Some(parsed) => parsed.clone(),
                    None => std::sync::Arc::new(parse_spec(name, &record.spec_json)),
                };
                (name.clone(), parsed)
            })
            .collect();
        Self { specs }
    }

    /// The spec of an active service, if it parses.
    pub fn get(&self, name: &str) -> Option<&ServiceSpec> {
        self.specs.get(name).and_then(|p| p.as_ref().as_ref().ok())
    }

    /// Why the spec of an active service is unusable, if it is.
    pub fn error(&self, name: &str) -> Option<&str> {
        self.specs
            .get(name)
            .and_then(|p| p.as_ref().as_ref().err())
            .map(String::as_str)
    }
}

fn parse_spec(name: &str, spec_json: &str) -> Result<ServiceSpec, String> {
    let spec: ServiceSpec = serde_json::from_str(spec_json).map_err(|e| e.to_string())?;
    if spec.name != name {
        return Err(format!(
            "the spec under `{name}` names another service, `{}`",
            spec.name
        ));
    }
    Ok(spec)
}

/// Errors of typed document access.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid tag {0}")]
    InvalidTag(String),
    #[error("too many tags (at most {MAX_TAGS})")]
    TooManyTags,
    #[error(
        "the mesh state would grow to {size} bytes, past its limit of {limit} bytes: remove \
         services (or shrink their specs) first"
    )]
    DocumentTooLarge { size: u64, limit: u64 },
    #[error("document error: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    #[error("document write failed: {0}")]
    Reconcile(#[from] autosurgeon::ReconcileError),
    #[error("cannot load the document: {0}")]
    Load(String),
    #[error("the state actor stopped")]
    Stopped,
    #[error("this node may not write another node's entry: {0}")]
    NotOwned(String),
    /// The change could not be made durable (disk full, I/O error): it was not applied.
    #[error(
        "the change was not made: cannot write the state file ({0}); free space in the data dir \
         and retry"
    )]
    NotDurable(String),
}

/// Bytes an entry counts for against [`MAX_DOCUMENT_BYTES`]: its key plus its JSON encoding.
/// Proportional to what it adds to a snapshot and to everyone's memory, and cheap to compute
/// for one entry.
pub fn entry_bytes<T: Serialize>(key: &str, value: &T) -> u64 {
    let json = serde_json::to_vec(value).map_or(0, |v| v.len());
    (key.len() + json) as u64
}

/// The size of the document's value, as [`MAX_DOCUMENT_BYTES`] counts it.
pub fn value_bytes(state: &MeshState) -> u64 {
    fn sum<T: Serialize>(map: &BTreeMap<String, T>) -> u64 {
        map.iter().map(|(k, v)| entry_bytes(k, v)).sum()
    }
    sum(&state.nodes) + sum(&state.services) + sum(&state.instances) + sum(&state.leases)
}

impl ServiceRecord {
    /// Whether this is a tombstone (`desired = "removed"`).
    pub fn is_removed(&self) -> bool {
        self.desired == Desired::Removed
    }

    /// Drops what a tombstone does not need: its spec and pending request. Removal only needs
    /// the name (the map key), `desired`, and who removed it when (`updated_by`,
    /// `updated_at_ms`, which epoch migration compares); the supervisor stops what it runs
    /// from its own record of it, never from the tombstone's spec.
    pub fn strip_if_removed(&mut self) {
        if self.is_removed() {
            self.spec_json.clear();
            self.request = None;
            self.request_at_ms = None;
        }
    }
}

/// Checks a tag key and value: keys are `[a-z0-9._-]`, 1-63 characters, starting with a letter
/// or digit; values are printable, at most 255 characters.
pub fn validate_tag(key: &str, value: &str) -> Result<(), StateError> {
    let key_ok = !key.is_empty()
        && key.chars().count() <= MAX_TAG_KEY
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        && key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !key_ok {
        return Err(StateError::InvalidTag(format!(
            "key {key:?}: use 1-{MAX_TAG_KEY} characters of a-z, 0-9, '.', '_', '-', starting \
             with a letter or digit"
        )));
    }
    if value.chars().count() > MAX_TAG_VALUE || value.chars().any(char::is_control) {
        return Err(StateError::InvalidTag(format!(
            "value for {key:?}: at most {MAX_TAG_VALUE} printable characters"
        )));
    }
    Ok(())
}

/// The epoch of a document: the number in its `epoch` root map (0 when absent) and the hash of
/// its first change (the one without dependencies).
pub fn epoch_of(doc: &mut AutoCommit) -> EpochId {
    let number = match doc.get(ROOT, "epoch") {
        Ok(Some((automerge::Value::Object(ObjType::Map), obj))) => match doc.get(&obj, "number") {
            Ok(Some((automerge::Value::Scalar(s), _))) => s.as_u64().unwrap_or(0),
            _ => 0,
        },
        _ => 0,
    };
    let base = doc
        .get_changes(&[])
        .iter()
        .find(|c| c.deps().is_empty())
        .map(|c| c.hash().to_string())
        .unwrap_or_default();
    EpochId { number, base }
}

/// Wall-clock ms of the state an epoch was built from (0 for epoch 0).
pub fn epoch_compacted_at(doc: &AutoCommit) -> i64 {
    match doc.get(ROOT, "epoch") {
        Ok(Some((automerge::Value::Object(ObjType::Map), obj))) => {
            match doc.get(&obj, "compacted_at_ms") {
                Ok(Some((automerge::Value::Scalar(s), _))) => s.as_i64().unwrap_or(0),
                _ => 0,
            }
        }
        _ => 0,
    }
}

/// Builds epoch `number` from `state` (the value of the previous epoch at `from_heads`) as one
/// change whose bytes depend only on its inputs: actor derived from the number and heads, time
/// 0, entries in key order. Members that compact the same heads build the same change, hence
/// the same epoch. `actor` is set for this node's later changes.
pub fn build_epoch(
    state: &MeshState,
    number: u64,
    from_heads: &[automerge::ChangeHash],
    compacted_at_ms: i64,
    actor: ActorId,
) -> Result<AutoCommit, StateError> {
    use sha2::Digest;
    let mut heads: Vec<String> = from_heads.iter().map(|h| h.to_string()).collect();
    heads.sort();
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"mesh-epoch/v1");
    hasher.update(number.to_be_bytes());
    for h in &heads {
        hasher.update(h.as_bytes());
    }
    let digest = hasher.finalize();
    let mut doc = AutoCommit::new().with_actor(ActorId::from(&digest[..16]));
    for key in ["nodes", "services", "instances", "leases"] {
        doc.put_object(ROOT, key, ObjType::Map)?;
    }
    doc.put(ROOT, "schema_version", SCHEMA_VERSION)?;
    let epoch = doc.put_object(ROOT, "epoch", ObjType::Map)?;
    doc.put(&epoch, "number", number)?;
    doc.put(&epoch, "compacted_at_ms", compacted_at_ms)?;
    let list = doc.put_object(&epoch, "from_heads", ObjType::List)?;
    for (i, h) in heads.iter().enumerate() {
        doc.insert(&list, i, h.as_str())?;
    }
    for (k, v) in &state.nodes {
        put_entry(&mut doc, "nodes", k, v)?;
    }
    for (k, v) in &state.services {
        // Tombstones written by older agents still carry their spec: not into the new epoch.
        let mut v = v.clone();
        v.strip_if_removed();
        put_entry(&mut doc, "services", k, &v)?;
    }
    for (k, v) in &state.instances {
        put_entry(&mut doc, "instances", k, v)?;
    }
    for (k, v) in &state.leases {
        put_entry(&mut doc, "leases", k, v)?;
    }
    doc.commit_with(
        CommitOptions::default()
            .with_time(0)
            .with_message(format!("epoch {number}")),
    );
    doc.set_actor(actor);
    Ok(doc)
}

/// Compacts `doc` into the next epoch: its current value as one deterministic change.
pub fn compact(doc: &mut AutoCommit, actor: ActorId) -> Result<AutoCommit, StateError> {
    let (mut state, _) = hydrate_lenient(doc);
    let heads = doc.get_heads();
    let number = epoch_of(doc).number + 1;
    // Deterministic "when": the newest time the value holds (writers stamp their records with
    // their wall clock; Automerge's own change times are 0 unless set), or the newest change
    // time among the heads if later.
    let compacted_at_ms = heads
        .iter()
        .filter_map(|h| doc.get_change_by_hash(h).map(|c| c.timestamp()))
        .max()
        .unwrap_or(0)
        .max(newest_time(&state));
    collect_garbage(&mut state, compacted_at_ms);
    build_epoch(&state, number, &heads, compacted_at_ms, actor)
}

/// The newest wall-clock time written in `state`'s records (ms).
fn newest_time(state: &MeshState) -> i64 {
    let nodes = state
        .nodes
        .values()
        .flat_map(|n| [Some(n.joined_at_ms), n.left_at_ms].into_iter().flatten());
    let services = state.services.values().map(|s| s.updated_at_ms);
    let instances = state.instances.values().map(|i| i.since_ms);
    let leases = state.leases.values().map(|l| l.since_ms);
    nodes
        .chain(services)
        .chain(instances)
        .chain(leases)
        .max()
        .unwrap_or(0)
}

/// What a new epoch leaves out, judged at `at_ms` (its deterministic compaction time):
/// tombstones older than [`TOMBSTONE_RETENTION_MS`], and the instances and leases of nodes
/// that left more than [`LEFT_RETENTION_MS`] before. Returns how many entries went.
pub fn collect_garbage(state: &mut MeshState, at_ms: i64) -> usize {
    let before = state.services.len() + state.instances.len() + state.leases.len();
    state
        .services
        .retain(|_, r| !(r.is_removed() && r.updated_at_ms < at_ms - TOMBSTONE_RETENTION_MS));
    let gone: std::collections::BTreeSet<String> = state
        .nodes
        .iter()
        .filter(|(_, n)| {
            n.left_at_ms
                .or(n.removed_at_ms)
                .is_some_and(|t| t < at_ms - LEFT_RETENTION_MS)
        })
        .map(|(id, _)| id.clone())
        .collect();
    state
        .instances
        .retain(|_, i| !gone.contains(i.node.as_str()));
    state.leases.retain(|_, l| !gone.contains(l.node.as_str()));
    before - (state.services.len() + state.instances.len() + state.leases.len())
}

/// Carries into `new` (a newer epoch) what only this node can know: its own records
/// (`nodes[local]`, its instances and leases, exactly as `old` has them), and shared entries
/// (`services`) that `new` lacks or holds in an older version (by `updated_at_ms`; deletions
/// are tombstones, so this covers them too). Commits if anything changed.
pub fn migrate_into(
    old: &MeshState,
    new: &mut AutoCommit,
    local: &str,
) -> Result<bool, StateError> {
    let (current, _) = hydrate_lenient(new);
    if let Some(mine) = old.nodes.get(local)
        && current.nodes.get(local) != Some(mine)
    {
        put_entry(new, "nodes", local, mine)?;
    }
    let old_instances = owned(&old.instances, local, |r| &r.node);
    let new_instances = owned(&current.instances, local, |r| &r.node);
    sync_owned(new, "instances", &old_instances, &new_instances)?;
    let old_leases = owned(&old.leases, local, |r| &r.node);
    let new_leases = owned(&current.leases, local, |r| &r.node);
    sync_owned(new, "leases", &old_leases, &new_leases)?;
    // A record the new epoch lacks and that is older than its collection bound was collected
    // (a tombstone, or a service removed and then collected): not brought back.
    let collected_before = epoch_compacted_at(new) - TOMBSTONE_RETENTION_MS;
    for (name, svc) in &old.services {
        let newer = match current.services.get(name) {
            None => svc.updated_at_ms >= collected_before,
            Some(n) => svc.updated_at_ms > n.updated_at_ms,
        };
        if newer {
            put_entry(new, "services", name, svc)?;
        }
    }
    Ok(new.commit().is_some())
}

fn owned<T: Clone>(
    map: &BTreeMap<String, T>,
    local: &str,
    node_of: impl Fn(&T) -> &NodeId,
) -> BTreeMap<String, T> {
    map.iter()
        .filter(|(_, v)| node_of(v) == local)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn sync_owned<T: Reconcile + PartialEq>(
    doc: &mut AutoCommit,
    map: &str,
    ours: &BTreeMap<String, T>,
    theirs: &BTreeMap<String, T>,
) -> Result<(), StateError> {
    for (k, v) in ours {
        if theirs.get(k) != Some(v) {
            put_entry(doc, map, k, v)?;
        }
    }
    for k in theirs.keys() {
        if !ours.contains_key(k) {
            delete_entry(doc, map, k)?;
        }
    }
    Ok(())
}

/// A fresh document holding only the genesis change (identical on every node), with `actor`
/// set for this node's own changes afterwards.
pub fn genesis(actor: ActorId) -> AutoCommit {
    let mut doc = AutoCommit::new().with_actor(ActorId::from(GENESIS_ACTOR));
    for key in ["nodes", "services", "instances", "leases"] {
        doc.put_object(ROOT, key, ObjType::Map)
            .expect("putting a map on a fresh root cannot fail");
    }
    doc.put(ROOT, "schema_version", SCHEMA_VERSION)
        .expect("putting a scalar on a fresh root cannot fail");
    doc.commit_with(
        CommitOptions::default()
            .with_time(0)
            .with_message("genesis"),
    );
    doc.set_actor(actor);
    doc
}

/// Counters of what hydration had to skip.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HydrateStats {
    pub skipped_entries: u64,
}

/// Reads the whole state, skipping (and counting) entries that do not fit the schema, so a
/// single bad write from a peer cannot hide everyone else's records.
pub fn hydrate_lenient(doc: &AutoCommit) -> (MeshState, HydrateStats) {
    let mut stats = HydrateStats::default();
    let mut state = MeshState {
        schema_version: match doc.get(ROOT, "schema_version") {
            Ok(Some((automerge::Value::Scalar(s), _))) => s.as_u64().unwrap_or(0),
            _ => 0,
        },
        ..Default::default()
    };
    state.nodes = hydrate_map(doc, "nodes", &mut stats);
    state.services = hydrate_map(doc, "services", &mut stats);
    state.instances = hydrate_map(doc, "instances", &mut stats);
    state.leases = hydrate_map(doc, "leases", &mut stats);
    (state, stats)
}

fn hydrate_map<T: Hydrate>(
    doc: &AutoCommit,
    key: &str,
    stats: &mut HydrateStats,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    let Ok(Some((automerge::Value::Object(ObjType::Map), obj))) = doc.get(ROOT, key) else {
        return out;
    };
    for k in doc.keys(&obj) {
        match autosurgeon::hydrate_prop::<_, T, _, _>(doc, &obj, k.as_str()) {
            Ok(v) => {
                out.insert(k, v);
            }
            Err(e) => {
                stats.skipped_entries += 1;
                tracing::debug!(map = key, entry = %k, error = %e, "skipped malformed entry");
            }
        }
    }
    out
}

/// Reads one entry of a root map; `None` when absent or not of the schema's shape.
pub fn get_entry<T: Hydrate>(doc: &AutoCommit, map: &str, key: &str) -> Option<T> {
    let Ok(Some((automerge::Value::Object(ObjType::Map), obj))) = doc.get(ROOT, map) else {
        return None;
    };
    match doc.get(&obj, key) {
        Ok(Some(_)) => autosurgeon::hydrate_prop(doc, &obj, key).ok(),
        _ => None,
    }
}

/// Writes one entry of a root map (`nodes`, `services`, ...): only the fields that differ
/// become operations. Does not commit.
pub fn put_entry<T: Reconcile>(
    doc: &mut AutoCommit,
    map: &str,
    key: &str,
    value: &T,
) -> Result<(), StateError> {
    let obj = match doc.get(ROOT, map)? {
        Some((automerge::Value::Object(ObjType::Map), obj)) => obj,
        _ => doc.put_object(ROOT, map, ObjType::Map)?,
    };
    autosurgeon::reconcile_prop(doc, &obj, key, value)?;
    Ok(())
}

/// Deletes one entry of a root map. Does not commit.
pub fn delete_entry(doc: &mut AutoCommit, map: &str, key: &str) -> Result<(), StateError> {
    if let Some((automerge::Value::Object(ObjType::Map), obj)) = doc.get(ROOT, map)? {
        doc.delete(&obj, key)?;
    }
    Ok(())
}

/// One entry written by [`actor::StateHandle::write`]. `None` deletes the entry.
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
    pub fn owned_by(&self, local: &str) -> bool {
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

/// Applies `writes` to `doc` (uncommitted: the caller commits, durably in the agent). The
/// caller checks ownership ([`EntryWrite::owned_by`]) and the document bound first.
pub fn apply_writes(doc: &mut AutoCommit, writes: &[EntryWrite]) -> Result<(), StateError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn actor() -> ActorId {
        ActorId::random()
    }

    #[test]
    fn genesis_is_identical_everywhere() {
        let mut a = genesis(actor());
        let mut b = genesis(actor());
        assert_eq!(a.get_heads(), b.get_heads());
        // Concurrent writes to the same map merge instead of conflicting maps.
        put_entry(
            &mut a,
            "nodes",
            "a",
            &NodeRecord {
                name: "a".into(),
                ..Default::default()
            },
        )
        .unwrap();
        a.commit();
        put_entry(
            &mut b,
            "nodes",
            "b",
            &NodeRecord {
                name: "b".into(),
                ..Default::default()
            },
        )
        .unwrap();
        b.commit();
        a.merge(&mut b).unwrap();
        let (state, stats) = hydrate_lenient(&a);
        assert_eq!(state.schema_version, SCHEMA_VERSION);
        assert_eq!(state.nodes.len(), 2);
        assert_eq!(stats.skipped_entries, 0);
    }

    #[test]
    fn records_written_before_the_optional_fields_existed_still_read() {
        // A peer running the first schema writes services and leases without the fields added
        // since (`request`, `port_name`, ...): they read as `None`, not as malformed.
        let mut doc = genesis(actor());
        let services = match doc.get(ROOT, "services").unwrap() {
            Some((automerge::Value::Object(ObjType::Map), obj)) => obj,
            other => panic!("services is not a map: {other:?}"),
        };
        let web = doc.put_object(&services, "web", ObjType::Map).unwrap();
        doc.put(&web, "spec_json", "{}").unwrap();
        doc.put(&web, "desired", "running").unwrap();
        doc.put(&web, "updated_by", "me").unwrap();
        doc.put(&web, "updated_at_ms", 5i64).unwrap();
        doc.commit();
        let (state, stats) = hydrate_lenient(&doc);
        assert_eq!(stats.skipped_entries, 0);
        assert_eq!(state.services["web"].request, None);
        assert_eq!(state.services["web"].desired, Desired::Running);
    }

    #[test]
    fn a_malformed_entry_is_skipped_not_fatal() {
        let mut doc = genesis(actor());
        put_entry(
            &mut doc,
            "nodes",
            "good",
            &NodeRecord {
                name: "g".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let (_, nodes) = doc.get(ROOT, "nodes").unwrap().unwrap();
        doc.put(&nodes, "bad", "not a record").unwrap();
        doc.commit();
        let (state, stats) = hydrate_lenient(&doc);
        assert_eq!(state.nodes.keys().collect::<Vec<_>>(), vec!["good"]);
        assert_eq!(stats.skipped_entries, 1);
    }

    fn rec(name: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn compaction_is_deterministic_and_keeps_the_value() {
        let mut doc = genesis(actor());
        for i in 0..50 {
            put_entry(
                &mut doc,
                "nodes",
                &format!("n{}", i % 5),
                &rec(&format!("v{i}")),
            )
            .unwrap();
            doc.commit();
        }
        let mut a = compact(&mut doc, actor()).unwrap();
        let mut b = compact(&mut doc, actor()).unwrap();
        assert_eq!(a.get_heads(), b.get_heads(), "same heads, same epoch");
        assert_eq!(hydrate_lenient(&a).0, hydrate_lenient(&doc).0);
        assert_eq!(a.get_changes(&[]).len(), 1);
        let (ea, eb) = (epoch_of(&mut a), epoch_of(&mut b));
        assert_eq!(ea, eb);
        assert_eq!(ea.number, 1);
        assert!(ea.supersedes(&epoch_of(&mut doc)));
        assert!(a.save().len() < doc.save().len());
    }

    #[test]
    fn migration_keeps_what_only_the_old_side_knew() {
        let mut doc = genesis(actor());
        put_entry(&mut doc, "nodes", "me", &rec("me")).unwrap();
        put_entry(&mut doc, "nodes", "other", &rec("other")).unwrap();
        doc.commit();
        // A member compacts; meanwhile "me" (on the old epoch) renames itself and adds a service.
        let mut new = compact(&mut doc, actor()).unwrap();
        put_entry(&mut doc, "nodes", "me", &rec("me-renamed")).unwrap();
        let svc = ServiceRecord {
            spec_json: "{}".into(),
            desired: Desired::Running,
            updated_by: "me".into(),
            updated_at_ms: 5,
            ..Default::default()
        };
        put_entry(&mut doc, "services", "web", &svc).unwrap();
        doc.commit();
        let old = hydrate_lenient(&doc).0;
        assert!(migrate_into(&old, &mut new, "me").unwrap());
        let merged = hydrate_lenient(&new).0;
        assert_eq!(merged.nodes["me"].name, "me-renamed");
        assert_eq!(merged.nodes["other"].name, "other");
        assert_eq!(merged.services["web"], svc);
        // Nothing to carry: no change.
        assert!(!migrate_into(&merged, &mut new, "me").unwrap());
    }

    #[test]
    fn a_new_epoch_drops_old_tombstones_and_the_records_of_nodes_gone_for_good() {
        let day = 24 * 3600 * 1000;
        let now = 100 * day;
        let mut state = MeshState::default();
        let tomb = |at| ServiceRecord {
            desired: Desired::Removed,
            updated_by: "me".into(),
            updated_at_ms: at,
            ..Default::default()
        };
        state.services.insert("old".into(), tomb(now - 8 * day));
        state.services.insert("recent".into(), tomb(now - day));
        let mut gone = rec("gone");
        gone.left_at_ms = Some(now - 2 * 3600 * 1000);
        let mut back_soon = rec("back-soon");
        back_soon.left_at_ms = Some(now - 60_000);
        state.nodes.insert("gone".into(), gone);
        state.nodes.insert("back-soon".into(), back_soon);
        for node in ["gone", "back-soon"] {
            state.instances.insert(
                format!("web@{node}"),
                InstanceRecord {
                    service: "web".into(),
                    node: node.into(),
                    ..Default::default()
                },
            );
        }
        assert_eq!(collect_garbage(&mut state, now), 2);
        assert!(!state.services.contains_key("old"));
        assert!(state.services.contains_key("recent"));
        assert!(!state.instances.contains_key("web@gone"));
        assert!(state.instances.contains_key("web@back-soon"));
        assert!(
            state.nodes.contains_key("gone"),
            "node records stay (names in history)"
        );

        // A member that was away keeps the collected tombstone's service, in an older
        // version: adopting the epoch does not bring it back; a recent one it lacks does.
        let mut doc = genesis(actor());
        put_entry(&mut doc, "services", "old", &tomb(now - 8 * day)).unwrap();
        let mut me = rec("me");
        me.joined_at_ms = now;
        put_entry(&mut doc, "nodes", "me", &me).unwrap();
        doc.commit();
        let mut new = compact(&mut doc, actor()).unwrap();
        let compacted = epoch_compacted_at(&new);
        let mut old = MeshState::default();
        let live = |at| ServiceRecord {
            spec_json: "{}".into(),
            desired: Desired::Running,
            updated_by: "away".into(),
            updated_at_ms: at,
            ..Default::default()
        };
        old.services
            .insert("old".into(), live(compacted - TOMBSTONE_RETENTION_MS - 1));
        old.services.insert("fresh".into(), live(compacted));
        migrate_into(&old, &mut new, "away").unwrap();
        let merged = hydrate_lenient(&new).0;
        assert!(
            !merged.services.contains_key("old"),
            "collected, not resurrected"
        );
        assert!(merged.services.contains_key("fresh"));
    }

    #[test]
    fn epoch_order_is_total() {
        let e = |n, b: &str| EpochId {
            number: n,
            base: b.into(),
        };
        assert!(e(2, "ff").supersedes(&e(1, "00")));
        assert!(e(1, "00").supersedes(&e(1, "ff")));
        assert!(!e(1, "ff").supersedes(&e(1, "00")));
        assert!(!e(1, "00").supersedes(&e(1, "00")));
    }

    #[test]
    fn tags_are_validated() {
        validate_tag("role", "nas").unwrap();
        validate_tag("zone.floor-2", "").unwrap();
        assert!(validate_tag("Role", "x").is_err());
        assert!(validate_tag("", "x").is_err());
        assert!(validate_tag("-x", "x").is_err());
        assert!(validate_tag("k", "a\nb").is_err());
        assert!(validate_tag(&"k".repeat(64), "x").is_err());
    }
}
