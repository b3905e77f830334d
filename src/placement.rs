//! Placement, sans-IO: from the converged document and this node's membership view, which nodes
//! own each service's copies ([`place`]), and what this node does about the copies it owns or
//! holds ([`decide_local`]). No leader and no vote: every node that sees the same document and
//! the same liveness computes the same owners.
//!
//! # The rule
//!
//! For each active service with a valid spec:
//! 1. **Eligible** nodes: the document's nodes (this one included) that are not removed
//!    (`mesh remove`: not members at all, not counted for a majority either), drained or
//!    leaving (a stopping agent records its leave before it stops its services), are
//!    in the spec's eligible set (`nodes`, resolved to ids at add time) if it has one, meet
//!    its `require`ments (tags, arch, os, device class, profile, score, memory), and have not
//!    published `refused` for it. A `pinned` service's only eligible node is its home.
//! 2. **Alive** among them: this node; peers that membership shows `alive` or `suspect`
//!    (never moved on suspicion alone); nodes membership has not heard of yet, during
//!    [`UNKNOWN_GRACE`] after this node started (so a restart does not steal everything).
//!    `dead`, `left` and (past the grace) unknown nodes are not.
//! 3. **Rank**: the service's home first (the node it was added on, or its `node`); then
//!    weighted rendezvous hashing (highest random weight):
//!    `score = w / -ln(u)` with `w` the node's capability score (at least 1) and `u` a hash of
//!    (service, node id) in (0, 1). A node's departure only moves its own copies, and heavier
//!    nodes take proportionally more services. Ties (practically never) go to the smaller id.
//!    `ln` is computed with basic IEEE operations only ([`ln`]), so nodes of different
//!    architectures and C libraries rank alike.
//! 4. **Owners**: for a `sticky` service (the default), the alive eligible nodes already
//!    holding a copy claimed under the current `placement_generation` keep it (newest claim,
//!    the highest epoch, first, then best-ranked; up to `replicas`), and the rest of the
//!    copies go to the best-ranked others; otherwise simply the `replicas` best-ranked. Fewer
//!    than `replicas` alive eligible nodes: fewer copies; none: `unplaced`, with the reason.
//!
//! # What this node does ([`decide_local`])
//! - An owner runs its copy. For an `exclusive` service only while it sees a strict majority
//!   of the members (document nodes not left; dead ones count) as `alive` (else it is
//!   [`LocalRole::Fenced`], saying so). It starts one only when no other node that is up
//!   occupies a copy (that one stops first: break before make), and once [`fence_delay`] has
//!   passed since any other member went away and since this node began to see the majority
//!   (see `fence`): long enough for a node cut off to notice it lost the majority and stop.
//!   Then it asks the members it sees alive whether they see another node up with a copy,
//!   and starts once a strict majority (itself included) answers "none" ([`Confirmation`]):
//!   its own verdicts may be stale, but any two majorities share a member.
//! - A holder that is not an owner keeps a non-exclusive copy until every owner's copy is
//!   ready (`healthy`; see [`is_ready`]): make before break. It stops an exclusive copy at once.
//! - `MESH_EPOCH`: a new claim takes one more than the highest epoch any instance of the
//!   service carries, so the token grows with every change of owner.
//!
//! Does not own: membership (the node publishes [`LivenessView`]), running anything (the
//! supervisor actor applies [`LocalPlan`]), writing claims (instance records, published by the
//! supervisor actor). Spec: `protocol/service-spec.md` ("Placement").

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::identity::NodeId;
use crate::membership::PeerState;
use crate::services::{View, instance_key};
use crate::state::{InstanceRecord, InstanceState, MeshState, NodeRecord, ServiceRecord};
use crate::supervisor::spec::ServiceSpec;
use crate::supervisor::spec::placement::Require;

#[cfg(test)]
mod tests;

/// How long after this node starts a document node membership has not heard of still counts
/// as alive. Membership learns of every reachable member within about a second of start (one
/// gossip round after the first admission); 3 s leaves room for a slow first dial, and a node
/// restarting does not take over every service of nodes it has not met yet.
pub const UNKNOWN_GRACE: Duration = Duration::from_secs(3);

/// Added to a service's `stop_grace` in [`fence_delay`]. It covers the difference between when
/// the minority side sees the majority as not alive (it stops at `suspect`) and when the
/// majority sees the minority `dead` (suspicion timeout later), plus the time to signal.
pub const FENCE_MARGIN: Duration = Duration::from_millis(500);

/// How long the majority waits after an exclusive copy's node went dead (or left) before it
/// starts a replacement: the old node stops its copy as soon as it does not see a majority
/// alive, and takes at most `stop_grace` (then SIGKILL) to do it.
pub fn fence_delay(spec: &ServiceSpec) -> Duration {
    spec.stop_grace + FENCE_MARGIN
}

/// How long a majority's answer that no other copy runs ([`Confirmation`]) allows an
/// exclusive copy to start. The node asks when everything else allows the start and starts
/// when the answers come, a round trip later; an older answer is asked again.
pub const CONFIRMATION_VALID: Duration = Duration::from_secs(2);

/// Before it starts an exclusive copy, this node asks the members it sees alive whether they
/// see any other node that is up occupy a copy (`/mesh/query/1` `Holders`, answered with
/// [`up_holders`]). It starts once `needed` of them answer "none" (with itself, a strict
/// majority of the members).
///
/// Its own view is not enough: back from a partition, it may still hold the verdict "dead"
/// about a node that the others see alive and running the copy, and the fence alone cannot
/// tell how long membership takes to set that right. Two majorities always share a member,
/// and that member sees the copy's node up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirmation {
    /// The members to ask (those membership shows `alive`).
    pub ask: Vec<NodeId>,
    /// The nodes this node's document shows occupying a copy (each asked about, besides what
    /// the answerer's own document shows).
    pub about: Vec<NodeId>,
    /// How many must answer "none".
    pub needed: usize,
}

/// At most this many nodes are asked about in one `Holders` question.
pub use crate::wire::query::MAX_HOLDERS_ASKED;

/// The answer to a `Holders` question about `service`: the nodes among `asked` and those this
/// node's document shows occupying a copy that this node sees up (this node itself when its
/// own copy occupies). The asker leaves itself out of the answer.
pub fn up_holders(input: PlacementInput<'_>, service: &str, asked: &[NodeId]) -> Vec<NodeId> {
    let state = input.view.state;
    let mut nodes: BTreeSet<NodeId> = asked.iter().take(MAX_HOLDERS_ASKED).cloned().collect();
    nodes.extend(
        state
            .instances
            .values()
            .filter(|i| i.service == service && occupies(i.state))
            .map(|i| i.node.clone()),
    );
    nodes
        .into_iter()
        .filter(|node| {
            if node == input.local {
                return state
                    .instances
                    .get(&instance_key(service, node.as_str()))
                    .is_some_and(|i| occupies(i.state));
            }
            input
                .liveness
                .of(input.local, node, state.nodes.get(node.as_str()))
                .is_up()
        })
        .collect()
}

/// A node as this node's membership sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Not answering probes; not moved on this alone.
    Suspect,
    /// Declared dead, this long ago.
    Dead {
        since: Duration,
    },
    /// Left gracefully, this long ago.
    Left {
        since: Duration,
    },
}

impl Liveness {
    /// Whether copies stay on (or may go to) a node in this state.
    pub fn is_up(self) -> bool {
        matches!(self, Liveness::Alive | Liveness::Suspect)
    }

    /// How long ago a node that is not up went away.
    pub fn gone_for(self) -> Option<Duration> {
        match self {
            Liveness::Dead { since } | Liveness::Left { since } => Some(since),
            _ => None,
        }
    }
}

/// This node's membership view, as placement reads it. Volatile: never in the document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LivenessView {
    /// Peers by node id (this node is always alive and not listed).
    pub peers: BTreeMap<NodeId, Liveness>,
    /// How long ago this node's membership started (see [`UNKNOWN_GRACE`]).
    pub running_for: Duration,
    /// How long this node has seen a strict majority of the members alive without a break
    /// (zero when it does not): an exclusive copy starts only once it is past the fence. The
    /// caller tracks it across calls ([`MajorityClock`]).
    pub majority_for: Duration,
    /// For each exclusive service, how long ago a strict majority of the members (this node
    /// included) last answered that no other node they see up occupies a copy (see
    /// [`Confirmation`]). An exclusive copy starts only with one younger than
    /// [`CONFIRMATION_VALID`]. The caller keeps them.
    pub confirmed: BTreeMap<String, Duration>,
}

/// Tracks since when this node has seen a strict majority (for
/// [`LivenessView::majority_for`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct MajorityClock {
    since: Option<Instant>,
}

impl MajorityClock {
    /// Updates the clock with whether this node sees a majority at `now`; returns for how long.
    pub fn observe(&mut self, has_majority: bool, now: Instant) -> Duration {
        if !has_majority {
            self.since = None;
            return Duration::ZERO;
        }
        now.saturating_duration_since(*self.since.get_or_insert(now))
    }
}

impl LivenessView {
    /// A node's liveness; `record` tells a document node that left apart from one never heard of.
    pub fn of(&self, local: &NodeId, node: &NodeId, record: Option<&NodeRecord>) -> Liveness {
        if node == local {
            return Liveness::Alive;
        }
        if let Some(liveness) = self.peers.get(node) {
            return *liveness;
        }
        let past_grace = self.running_for.saturating_sub(UNKNOWN_GRACE);
        if record.is_some_and(|r| r.left_at_ms.is_some()) {
            Liveness::Left { since: past_grace }
        } else if self.running_for < UNKNOWN_GRACE {
            Liveness::Alive
        } else {
            Liveness::Dead { since: past_grace }
        }
    }
}

/// The membership states the node publishes for placement (on a `watch`, on every change of
/// state; not on RTT). [`MembershipSnapshot::at`] turns it into the [`LivenessView`] of a
/// moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipSnapshot {
    /// Each peer's state and when it entered it.
    pub peers: BTreeMap<NodeId, (PeerState, Instant)>,
    /// When this node's membership started.
    pub started: Instant,
}

impl MembershipSnapshot {
    pub fn new(started: Instant) -> Self {
        Self {
            peers: BTreeMap::new(),
            started,
        }
    }

    /// The liveness view at `now`.
    pub fn at(&self, now: Instant) -> LivenessView {
        let peers = self
            .peers
            .iter()
            .map(|(id, (state, since))| {
                let since = now.saturating_duration_since(*since);
                let liveness = match state {
                    PeerState::Alive => Liveness::Alive,
                    PeerState::Suspect => Liveness::Suspect,
                    PeerState::Dead => Liveness::Dead { since },
                    PeerState::Left => Liveness::Left { since },
                };
                (id.clone(), liveness)
            })
            .collect();
        LivenessView {
            peers,
            running_for: now.saturating_duration_since(self.started),
            // Set by the caller, who tracks it ([`MajorityClock`]).
            majority_for: Duration::ZERO,
            confirmed: BTreeMap::new(),
        }
    }
}

/// What placement reads: the document's value and parsed specs, this node, its liveness view.
#[derive(Clone, Copy, Debug)]
pub struct PlacementInput<'a> {
    pub view: View<'a>,
    pub local: &'a NodeId,
    pub liveness: &'a LivenessView,
}

/// Where one service's copies go, as this node computes it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePlacement {
    pub service: String,
    pub replicas: u32,
    pub exclusive: bool,
    /// Who should run the copies, best first; at most `replicas`.
    pub owners: Vec<NodeId>,
    /// Nodes that hold a copy (a live claim in the document) and are up, best-ranked first.
    pub holders: Vec<NodeId>,
    /// Nodes whose instance says a copy runs but that are not up (dead, left): their copy is
    /// lost as far as this node can tell.
    pub lost: Vec<NodeId>,
    /// Alive eligible nodes, the owners among them.
    pub eligible_alive: usize,
    /// Why there is no owner, when there is none.
    pub unplaced: Option<String>,
    /// The highest fencing token any of its instances carries.
    pub epoch: u64,
    /// The service's `placement_generation`.
    pub generation: u64,
}

impl ServicePlacement {
    /// Copies are being started or handed over: the holders are not exactly the owners.
    pub fn is_moving(&self) -> bool {
        let owners: BTreeSet<_> = self.owners.iter().collect();
        let holders: BTreeSet<_> = self.holders.iter().collect();
        owners != holders
    }
}

/// Whether an instance state is a live claim on a copy: its node runs it, is bringing it
/// up, or gave up on it after repeated failures (`failed` stays where it failed, as on one
/// node, until an operator starts it again; it does not wander the mesh).
pub fn holds(state: InstanceState) -> bool {
    runs(state) || state == InstanceState::Failed
}

/// Whether a copy is up or coming up (what `mesh services` counts as a copy).
pub fn runs(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Starting
            | InstanceState::Healthy
            | InstanceState::Unhealthy
            | InstanceState::Backoff
    )
}

/// Whether an instance may still have a process: a running copy, or one on its way down.
pub fn occupies(state: InstanceState) -> bool {
    runs(state) || state == InstanceState::Stopping
}

/// Whether a copy is ready to take traffic: `healthy`; without a health check, running
/// (its supervisor calls a running process without a check `healthy` too).
pub fn is_ready(instance: &InstanceRecord) -> bool {
    instance.state == InstanceState::Healthy
}

/// Places every active service whose spec parses.
pub fn place_all(input: PlacementInput<'_>) -> BTreeMap<String, ServicePlacement> {
    // What every service's placement reads, worked out once: the candidate nodes and each
    // service's instances (built per service, they were a third of placement's time in
    // `mesh sim`'s full-stack run).
    let state = input.view.state;
    let candidates = candidate_nodes(state, input.local);
    let mut instances: BTreeMap<&str, Instances<'_>> = BTreeMap::new();
    for i in state.instances.values() {
        instances
            .entry(i.service.as_str())
            .or_default()
            .insert(&i.node, i);
    }
    let none = Instances::new();
    input
        .view
        .active_specs()
        .map(|(name, record, spec)| {
            let of = instances.get(name).unwrap_or(&none);
            let placed = place(input, &candidates, of, name, record, spec);
            (name.to_string(), placed)
        })
        .collect()
}

/// A service's instances by node.
type Instances<'a> = BTreeMap<&'a NodeId, &'a InstanceRecord>;

/// Places one service (see the module doc for the rule) among `candidates`
/// ([`candidate_nodes`]); `instances` are the service's.
fn place(
    input: PlacementInput<'_>,
    candidates: &[(NodeId, Option<&NodeRecord>)],
    instances: &Instances<'_>,
    name: &str,
    record: &ServiceRecord,
    spec: &ServiceSpec,
) -> ServicePlacement {
    let state = input.view.state;
    let generation = record.placement_generation.unwrap_or(0);
    let home = crate::services::placement(input.view, name);
    let epoch = instances
        .values()
        .filter_map(|i| i.epoch)
        .max()
        .unwrap_or(0);
    let total = candidates.len();
    let mut reasons = Reasons::default();
    let mut eligible = 0;
    let mut ranked: Vec<(Rank, &NodeId)> = candidates
        .iter()
        .filter(|(id, node)| {
            let why_not = ineligible(spec, record, home.as_ref(), id, node, instances);
            match why_not {
                Some(why) => reasons.add(why),
                None => eligible += 1,
            }
            why_not.is_none()
        })
        .filter(|(id, node)| input.liveness.of(input.local, id, *node).is_up())
        .map(|(id, node)| {
            let weight = node.map_or(1, |n| n.hardware.score.max(1));
            let rank = Rank {
                home: home.as_ref() == Some(id),
                weight: hrw_score(name, id, weight),
            };
            (rank, id)
        })
        .collect();
    ranked.sort_by(|(a, a_id), (b, b_id)| b.cmp(a).then_with(|| a_id.cmp(b_id)));
    let replicas = spec.placement.replicas as usize;
    let holders: Vec<NodeId> = ranked
        .iter()
        .filter(|(_, id)| instances.get(*id).is_some_and(|i| holds(i.state)))
        .map(|(_, id)| (*id).clone())
        .collect();
    let mut owners: Vec<NodeId> = Vec::with_capacity(replicas);
    if spec.placement.sticky {
        // Newest claim first (then rank): an older claim is a copy from before a failover,
        // such as the record a crashed node left of the copy that died with it, which it
        // finds again when it returns; the copy that replaced it stays.
        let mut sticky: Vec<&NodeId> = holders
            .iter()
            .filter(|id| instances[*id].generation.unwrap_or(0) >= generation)
            .collect();
        sticky.sort_by_key(|id| std::cmp::Reverse(instances[*id].epoch.unwrap_or(0)));
        owners.extend(sticky.into_iter().take(replicas).cloned());
    }
    for (_, id) in &ranked {
        if owners.len() >= replicas {
            break;
        }
        if !owners.contains(id) {
            owners.push((*id).clone());
        }
    }
    let lost = instances
        .iter()
        .filter(|(id, i)| {
            occupies(i.state)
                && !input
                    .liveness
                    .of(input.local, id, state.nodes.get(id.as_str()))
                    .is_up()
        })
        .map(|(id, _)| (*id).clone())
        .collect();
    // Owners in rank order, so every node lists them alike.
    owners.sort_by_key(|id| ranked.iter().position(|(_, r)| *r == id));
    let unplaced = owners.is_empty().then(|| {
        if eligible == 0 {
            format!(
                "no node can take it ({} of {total} nodes: {})",
                reasons.count,
                reasons.summary()
            )
        } else {
            format!("none of the {eligible} eligible nodes is alive")
        }
    });
    ServicePlacement {
        service: name.to_string(),
        replicas: spec.placement.replicas,
        exclusive: spec.placement.exclusive,
        owners,
        holders,
        lost,
        eligible_alive: ranked.len(),
        unplaced,
        epoch,
        generation,
    }
}

/// The document's nodes, and this node even before its record is written.
fn candidate_nodes<'a>(
    state: &'a MeshState,
    local: &NodeId,
) -> Vec<(NodeId, Option<&'a NodeRecord>)> {
    // A removed node (`mesh remove`) is no member: not eligible, not counted for a majority.
    let mut nodes: Vec<(NodeId, Option<&NodeRecord>)> = state
        .nodes
        .iter()
        .filter(|(_, record)| !record.is_removed())
        .map(|(id, record)| (NodeId::from(id.as_str()), Some(record)))
        .collect();
    if !state.nodes.contains_key(local.as_str()) {
        nodes.push((local.clone(), None));
    }
    nodes
}

/// Why `node` may not run the service, if it may not.
fn ineligible(
    spec: &ServiceSpec,
    record: &ServiceRecord,
    home: Option<&NodeId>,
    id: &NodeId,
    node: &Option<&NodeRecord>,
    instances: &Instances<'_>,
) -> Option<&'static str> {
    let placement = &spec.placement;
    if placement.pinned && home != Some(id) {
        return Some("pinned elsewhere");
    }
    if let Some(eligible) = &record.eligible
        && !eligible.contains(id)
    {
        return Some("not in `nodes`");
    }
    if instances
        .get(id)
        .is_some_and(|i| i.state == InstanceState::Refused)
    {
        return Some("refused it");
    }
    let Some(node) = node else {
        // This node before its record is written: nothing is known to check requirements
        // against, so only an unconstrained service may go here.
        return (!placement.require.is_empty()).then_some("record not yet written");
    };
    if node.drained == Some(true) {
        return Some("drained");
    }
    if node.left_at_ms.is_some() {
        // Leaving (it records the leave before stopping its services) or left.
        return Some("left");
    }
    unmet(&placement.require, node)
}

/// Why `node` does not meet `require`, or `None` when it does.
pub fn unmet(require: &Require, node: &NodeRecord) -> Option<&'static str> {
    if require
        .tags
        .iter()
        .any(|(k, v)| node.tags.get(k) != Some(v))
    {
        return Some("tags differ");
    }
    let hw = &node.hardware;
    for (wanted, has, why) in [
        (&require.arch, &hw.arch, "other arch"),
        (&require.os, &hw.os, "other os"),
        (
            &require.device_class,
            &hw.device_class,
            "other device class",
        ),
        (&require.profile, &hw.profile, "other profile"),
    ] {
        if wanted.as_ref().is_some_and(|w| w != has) {
            return Some(why);
        }
    }
    if require.min_score.is_some_and(|min| hw.score < min) {
        return Some("score too low");
    }
    if require
        .min_memory_mb
        .is_some_and(|min| hw.memory_bytes < min.saturating_mul(1024 * 1024))
    {
        return Some("too little memory");
    }
    None
}

/// Why nodes are ineligible, counted, for the `unplaced` reason.
#[derive(Default)]
struct Reasons {
    count: usize,
    by_reason: BTreeMap<&'static str, usize>,
}

impl Reasons {
    fn add(&mut self, why: &'static str) {
        self.count += 1;
        *self.by_reason.entry(why).or_default() += 1;
    }

    fn summary(&self) -> String {
        self.by_reason
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A node's rank for one service; greater is better.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rank {
    /// The node the service was added on (or named by `node`).
    home: bool,
    weight: f64,
}

impl Eq for Rank {}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.home
            .cmp(&other.home)
            .then_with(|| self.weight.total_cmp(&other.weight))
    }
}

/// The weighted rendezvous score of `node` for `service`: `weight / -ln(u)`, `u` in (0, 1)
/// from [`hash_unit`]. Greater wins.
pub fn hrw_score(service: &str, node: &NodeId, weight: u64) -> f64 {
    let u = hash_unit(service, node.as_str());
    weight as f64 / -ln(u)
}

/// A hash of `(service, node)` as a number in (0, 1): 64-bit FNV-1a over both (a 0 byte
/// between) and the splitmix64 finaliser, top 53 bits. Fixed here (not `std`'s hasher, which
/// may change between Rust versions), because every node must compute the same value.
pub fn hash_unit(service: &str, node: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in service.bytes().chain([0]).chain(node.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // 53 bits, shifted off zero: (k + 0.5) / 2^53.
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Natural logarithm of `x` in (0, 1] with IEEE additions, multiplications and divisions only
/// (exact and alike on every platform, unlike the C library's `log`): `x = m · 2^e` with `m`
/// in [1, 2), `ln x = e · ln 2 + 2 · atanh((m − 1)/(m + 1))`, the series summed to 1e-17.
pub fn ln(x: f64) -> f64 {
    debug_assert!(x > 0.0 && x.is_finite());
    let bits = x.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mantissa = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    let t = (mantissa - 1.0) / (mantissa + 1.0);
    let t2 = t * t;
    let mut term = t;
    let mut sum = 0.0;
    let mut k = 1.0;
    // t ≤ 1/3, so t² ≤ 1/9 and 20 terms reach well below f64 precision.
    for _ in 0..20 {
        sum += term / k;
        term *= t2;
        k += 2.0;
    }
    exponent as f64 * std::f64::consts::LN_2 + 2.0 * sum
}

/// What this node does about one service it owns or holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalRole {
    /// Run (or keep running) its copy, with this fencing token and generation.
    Run { epoch: u64, generation: u64 },
    /// Not an owner, but keep the copy until the owners' copies are ready (make before break).
    HandOver,
    /// An exclusive owner that must not start: it sees no majority, or another node may
    /// still run it.
    Fenced,
}

/// This node's part of the placement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalPlan {
    /// The services this node runs or keeps, with why.
    pub roles: BTreeMap<String, (LocalRole, String)>,
    /// Look again after this long even if nothing changes (a fence ends).
    pub recheck_in: Option<Duration>,
    /// Whether this node sees a strict majority of the members alive.
    pub majority: bool,
    /// Exclusive services this node would start once the members confirm no other copy runs.
    pub confirm: BTreeMap<String, Confirmation>,
}

impl LocalPlan {
    /// The services this node should run now.
    pub fn runs(&self) -> impl Iterator<Item = &str> {
        self.roles.iter().filter_map(|(name, (role, _))| {
            matches!(role, LocalRole::Run { .. } | LocalRole::HandOver).then_some(name.as_str())
        })
    }
}

/// Whether this node sees a strict majority of the members (document nodes that have not
/// left; dead ones count) as `alive` (suspect does not count: the minority side must stop
/// exclusive copies early, see [`FENCE_MARGIN`]). Returns (seen, members).
pub fn majority(input: PlacementInput<'_>) -> (usize, usize) {
    let state = input.view.state;
    let mut members = 0;
    let mut seen = 0;
    for (node, _) in candidate_nodes(state, input.local) {
        let record = state.nodes.get(node.as_str());
        if node != *input.local && record.is_some_and(|r| r.left_at_ms.is_some()) {
            // Left for good unless membership sees it again.
            if input.liveness.peers.get(&node) != Some(&Liveness::Alive) {
                continue;
            }
        }
        members += 1;
        // Only what membership confirms: a node not heard of yet (just after start) does not
        // make a majority.
        if node == *input.local || input.liveness.peers.get(&node) == Some(&Liveness::Alive) {
            seen += 1;
        }
    }
    (seen, members)
}

/// This node's roles: runs what it owns (exclusive ones behind the fence), hands over what it
/// holds but no longer owns. `placements` from [`place_all`] on the same input.
pub fn decide_local(
    input: PlacementInput<'_>,
    placements: &BTreeMap<String, ServicePlacement>,
) -> LocalPlan {
    let state = input.view.state;
    let local = input.local;
    let (seen, members) = majority(input);
    let has_majority = seen * 2 > members;
    let mut plan = LocalPlan {
        majority: has_majority,
        ..LocalPlan::default()
    };
    for (name, placement) in placements {
        let Some(spec) = input.view.spec(name) else {
            continue;
        };
        let mine = state.instances.get(&instance_key(name, local.as_str()));
        let owner_rank = placement.owners.iter().position(|o| o == local);
        if let Some(rank) = owner_rank {
            let epoch = match mine.filter(|i| holds(i.state)).and_then(|i| i.epoch) {
                Some(epoch) => epoch,
                None => placement.epoch + 1,
            };
            let run = LocalRole::Run {
                epoch,
                generation: placement.generation,
            };
            let why = format!(
                "ranks {} of {} eligible alive nodes",
                ordinal(rank + 1),
                placement.eligible_alive
            );
            if !placement.exclusive {
                plan.roles.insert(name.clone(), (run, why));
                continue;
            }
            if !has_majority {
                // It must not run; the role says why (the audit trail tells it).
                let why = format!(
                    "no majority: sees {seen} of {members} members alive (an exclusive service \
                     runs only where a strict majority is seen; a two-node mesh needs a third \
                     node to fail one over)"
                );
                plan.roles.insert(name.clone(), (LocalRole::Fenced, why));
                continue;
            }
            // The fence guards starting a copy; one already running here keeps running while
            // the majority holds.
            let running_here = mine.is_some_and(|i| runs(i.state));
            let fenced = if running_here {
                Fence::Clear
            } else {
                fence(input, name, spec)
            };
            let confirmed = input
                .liveness
                .confirmed
                .get(name)
                .is_some_and(|age| *age < CONFIRMATION_VALID);
            match fenced {
                Fence::Clear if running_here || members <= 1 || confirmed => {
                    plan.roles.insert(name.clone(), (run, why));
                }
                Fence::Clear => {
                    let confirmation = confirmation(input, name, members);
                    let why = format!(
                        "fenced: asking {} whether another copy runs",
                        names(state, &confirmation.ask)
                    );
                    plan.confirm.insert(name.clone(), confirmation);
                    plan.roles.insert(name.clone(), (LocalRole::Fenced, why));
                }
                Fence::Wait { for_, why } => {
                    if let Some(wait) = for_ {
                        plan.recheck_in = Some(plan.recheck_in.map_or(wait, |r| r.min(wait)));
                    }
                    plan.roles.insert(name.clone(), (LocalRole::Fenced, why));
                }
            }
        } else if mine.is_some_and(|i| holds(i.state)) && !placement.exclusive {
            let waiting: Vec<&NodeId> = placement
                .owners
                .iter()
                .filter(|o| {
                    !state
                        .instances
                        .get(&instance_key(name, o.as_str()))
                        .is_some_and(is_ready)
                })
                .collect();
            if !waiting.is_empty() {
                let names: Vec<String> = waiting.iter().map(|o| state.node_name(o)).collect();
                plan.roles.insert(
                    name.clone(),
                    (
                        LocalRole::HandOver,
                        format!("handing over to {}: kept until ready", names.join(", ")),
                    ),
                );
            }
        }
    }
    plan
}

/// What to ask before starting `service` here (see [`Confirmation`]).
fn confirmation(input: PlacementInput<'_>, service: &str, members: usize) -> Confirmation {
    let state = input.view.state;
    let ask = input
        .liveness
        .peers
        .iter()
        .filter(|(id, liveness)| {
            **liveness == Liveness::Alive
                && *id != input.local
                && state
                    .nodes
                    .get(id.as_str())
                    .is_some_and(|n| !n.is_removed())
        })
        .map(|(id, _)| id.clone())
        .collect();
    let about = state
        .instances
        .values()
        .filter(|i| i.service == service && i.node != *input.local && occupies(i.state))
        .map(|i| i.node.clone())
        .take(MAX_HOLDERS_ASKED)
        .collect();
    Confirmation {
        ask,
        about,
        // With this node, a strict majority.
        needed: members / 2,
    }
}

/// "n2, n3" (names as the document has them).
fn names(state: &MeshState, nodes: &[NodeId]) -> String {
    if nodes.is_empty() {
        return "no one".to_string();
    }
    nodes
        .iter()
        .map(|n| state.node_name(n))
        .collect::<Vec<_>>()
        .join(", ")
}

enum Fence {
    Clear,
    /// Another node may run it: wait (`for_`: at most this long, else until the document or
    /// membership changes).
    Wait {
        for_: Option<Duration>,
        why: String,
    },
}

/// Whether an exclusive service may start here. It may not while another node that is up
/// occupies a copy (it stops first: break before make). Otherwise it waits until the fence
/// ([`fence_delay`]) has passed since each of these, so that whatever ran on the other side of
/// a cut has stopped:
/// - a node that occupied a copy went away;
/// - any other member went away (its claim may not have reached this node before it was cut
///   off);
/// - this node began to see the majority (back from the minority side of a partition, its
///   verdicts of "dead" were reached while it could not know better, and the document may not
///   have caught up yet).
fn fence(input: PlacementInput<'_>, name: &str, spec: &ServiceSpec) -> Fence {
    let state = input.view.state;
    let delay = fence_delay(spec);
    for instance in state.instances.values() {
        if instance.service != name || instance.node == *input.local || !occupies(instance.state) {
            continue;
        }
        let liveness = input.liveness.of(
            input.local,
            &instance.node,
            state.nodes.get(instance.node.as_str()),
        );
        if liveness.gone_for().is_none() {
            let who = state.node_name(&instance.node);
            return Fence::Wait {
                for_: None,
                why: format!("waiting for {who} to stop its copy"),
            };
        }
    }
    let mut wait: Option<(Duration, String)> = None;
    let mut consider = |left: Duration, why: String| {
        if !left.is_zero() && wait.as_ref().is_none_or(|(w, _)| left > *w) {
            wait = Some((left, why));
        }
    };
    consider(
        delay.saturating_sub(input.liveness.majority_for),
        "this node sees the majority only since".to_string(),
    );
    for (id, record) in &state.nodes {
        let node = NodeId::from(id.as_str());
        if node == *input.local {
            continue;
        }
        if let Some(gone) = input
            .liveness
            .of(input.local, &node, Some(record))
            .gone_for()
        {
            consider(
                delay.saturating_sub(gone),
                format!("{} went away", state.node_name(&node)),
            );
        }
    }
    match wait {
        None => Fence::Clear,
        Some((wait, why)) => Fence::Wait {
            for_: Some(wait),
            why: format!(
                "fenced: {why} less than {} ms ago; starting after {} ms more",
                delay.as_millis(),
                wait.as_millis()
            ),
        },
    }
}

/// `MESH_ENDPOINT_<DEP>=host:port` for each dependency of `spec` with a ready copy: one on
/// this node as `127.0.0.1:port`, else one on another node at that node's address; its first
/// port either way. So the variable is there wherever the dependency runs, and changes when
/// it moves (also onto this node, or off it).
pub fn dependency_endpoints(
    input: PlacementInput<'_>,
    spec: &ServiceSpec,
) -> BTreeMap<String, String> {
    let state = input.view.state;
    let mut env = BTreeMap::new();
    for dependency in &spec.after {
        let here = state
            .instances
            .get(&instance_key(dependency, input.local.as_str()))
            .filter(|i| is_ready(i))
            .and_then(|i| i.ports.first());
        if let Some(port) = here {
            env.insert(endpoint_variable(dependency), format!("127.0.0.1:{port}"));
            continue;
        }
        let found = state
            .instances
            .values()
            .filter(|i| i.service == *dependency && is_ready(i))
            .find_map(|i| {
                let record = state.nodes.get(i.node.as_str())?;
                if !input
                    .liveness
                    .of(input.local, &i.node, Some(record))
                    .is_up()
                {
                    return None;
                }
                let host = node_host(record)?;
                let port = i.ports.first()?;
                Some(format!("{host}:{port}"))
            });
        if let Some(endpoint) = found {
            env.insert(endpoint_variable(dependency), endpoint);
        }
    }
    env
}

/// `MESH_ENDPOINT_` and the service name in upper case, `-` as `_`.
pub fn endpoint_variable(service: &str) -> String {
    format!(
        "MESH_ENDPOINT_{}",
        service.to_ascii_uppercase().replace('-', "_")
    )
}

/// The address other nodes reach `node` at: the first IP of its listen addresses that is not
/// loopback or unspecified (IPv6 in brackets).
pub fn node_host(node: &NodeRecord) -> Option<String> {
    node.addrs.iter().find_map(|addr| {
        let addr: libp2p::Multiaddr = addr.parse().ok()?;
        addr.iter().find_map(|part| match part {
            libp2p::multiaddr::Protocol::Ip4(ip) if !ip.is_loopback() && !ip.is_unspecified() => {
                Some(ip.to_string())
            }
            libp2p::multiaddr::Protocol::Ip6(ip) if !ip.is_loopback() && !ip.is_unspecified() => {
                Some(format!("[{ip}]"))
            }
            _ => None,
        })
    })
}

/// `1st`, `2nd`, `3rd`, `4th`…
pub fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// What a node's instance record `key` becomes once its copy is gone for good: `None`
/// (deleted), or, when it carries the highest fencing token of a service that still exists, a
/// `stopped` record keeping that `epoch`. A new claim takes one more than the highest epoch of
/// any instance, so `MESH_EPOCH` keeps growing across a hand-over (drain, rebalance) even
/// when the copy that had it is gone. It is deleted once another node's claim carries an
/// epoch as high, or the service is removed.
pub fn last_claim(view: View<'_>, key: &str) -> Option<InstanceRecord> {
    let record = view.state.instances.get(key)?;
    let epoch = record.epoch?;
    view.spec(&record.service)?;
    let superseded = view.state.instances.iter().any(|(other, i)| {
        other != key && i.service == record.service && i.epoch.is_some_and(|e| e >= epoch)
    });
    if superseded {
        return None;
    }
    Some(InstanceRecord {
        state: InstanceState::Stopped,
        pid: None,
        reason: Some("handed over; kept as the service's last claim (MESH_EPOCH)".to_string()),
        log_tail: None,
        ..record.clone()
    })
}
