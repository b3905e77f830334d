//! The upper part of a simulated node, above membership: the replicated document and its sync
//! sessions ([`crate::state`], [`crate::sync`]), placement ([`crate::placement`]) and the
//! supervisor core ([`crate::supervisor`]), wired as the agent's actors wire them, minus the
//! I/O: [`super::Simulation`] carries sync messages, `Holders` questions and process
//! lifecycles over the simulated network and clock.
//!
//! What the agent's actors do here, and where the agent does it:
//! - a local write applies [`EntryWrite`]s with [`crate::state::apply_writes`] and commits one
//!   change (the state actor; no file, so every write is acknowledged once committed);
//! - after every document change the node hydrates the value ([`hydrate_lenient`], specs parsed
//!   once per version with [`ParsedSpecs::refresh`]), runs placement on it and its membership
//!   view ([`place_all`], [`decide_local`], the majority clock and the members' confirmations
//!   of an exclusive start), and lets the supervisor core follow it
//!   ([`Supervisor::follow_document`]), as `supervisor::actor`'s `on_document` and `place_here`
//!   do;
//! - a published status becomes an instance record with [`crate::supervisor::instance_record`]
//!   and the claim it runs under, a copy gone for good its [`last_claim`] (`publish.rs`).
//!
//! Left out, and why: compaction into new epochs (a long-run cost, not a correctness path of
//! these scenarios), port leases (no sockets), the audit trail (events are counted by the
//! simulator instead), dependency endpoints (no processes read them).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use automerge::{AutoCommit, ChangeHash};

use super::scenario::NodeKind;
use crate::identity::{NodeId, NodeName};
use crate::placement::{
    self, Confirmation, LocalRole, MajorityClock, MembershipSnapshot, PlacementInput, last_claim,
};
use crate::services::{View, instance_key};
use crate::state::{
    EntryWrite, InstanceRecord, MeshState, NodeHardware, NodeRecord, ParsedSpecs, apply_writes,
    genesis, hydrate_lenient, incremental, put_entry,
};
use crate::supervisor::accept::AcceptServices;
use crate::supervisor::{FollowRules, Followed, ServiceStatus, Supervisor};
use crate::sync::SyncSessions;

/// After members did not confirm an exclusive start, ask again this much later (the agent's
/// `CONFIRM_RETRY`).
pub const CONFIRM_RETRY: Duration = Duration::from_millis(500);
/// How long a member has to answer a `Holders` question (the agent's `CONFIRM_TIMEOUT`).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);
/// Most services one simulated node runs (the agent's default `--max-services`).
const MAX_SERVICES: usize = 64;

/// A `Holders` question out, for one exclusive service.
#[derive(Clone, Debug)]
pub struct Asking {
    pub qid: u64,
    pub waiting: usize,
    pub agree: usize,
    pub needed: usize,
}

/// What placement decided for this node.
#[derive(Debug, Default)]
pub struct Placed {
    /// The services this node runs (or keeps while handing over).
    pub runs: BTreeSet<String>,
    /// Confirmations to ask for now.
    pub ask: Vec<(String, Confirmation)>,
    /// When to run placement again even if nothing changes.
    pub recheck_at: Option<Instant>,
}

pub struct Stack {
    pub id: NodeId,
    pub doc: AutoCommit,
    pub sync: SyncSessions,
    pub state: MeshState,
    pub specs: ParsedSpecs,
    hydrated_at: Vec<ChangeHash>,
    pub supervisor: Supervisor,
    /// What membership shows, as the node publishes it for placement.
    pub liveness: MembershipSnapshot,
    /// The members membership believes alive or suspects (what `sync.set_alive` was told).
    pub alive: std::collections::BTreeSet<libp2p::PeerId>,
    majority_clock: MajorityClock,
    /// When a majority last confirmed an exclusive start, by service.
    pub confirmed: BTreeMap<String, Instant>,
    pub asking: BTreeMap<String, Asking>,
    pub retry_at: BTreeMap<String, Instant>,
    /// (epoch, generation) each copy this node runs was claimed under.
    pub claims: BTreeMap<String, (u64, u64)>,
    /// The earliest supervisor timer scheduled.
    pub supervisor_wake: Option<Instant>,
    /// The earliest placement recheck scheduled.
    pub recheck: Option<Instant>,
}

/// Simulated hardware of a node: equal capability everywhere unless the scenario says
/// otherwise.
pub fn hardware(score: u64) -> NodeHardware {
    NodeHardware {
        cores: 4,
        memory_bytes: 4 << 30,
        cpu_model: "simulated".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        device_class: "server".into(),
        profile: "full".into(),
        score,
    }
}

impl Stack {
    /// A node starting at `now` (wall clock `wall_ms`), with the document it kept from its last
    /// run, if any; writes its own record.
    pub fn start(
        peer: &libp2p::PeerId,
        name: &str,
        kind: Option<&NodeKind>,
        doc: Option<AutoCommit>,
        now: Instant,
        wall_ms: i64,
        seed: u64,
    ) -> Stack {
        let id = NodeId::from(peer);
        let doc =
            doc.unwrap_or_else(|| genesis(automerge::ActorId::from(peer.to_bytes().as_slice())));
        let supervisor =
            Supervisor::new(Vec::new(), seed, now).expect("an empty set of specs is valid");
        let mut stack = Stack {
            id,
            doc,
            sync: SyncSessions::new(),
            state: MeshState::default(),
            specs: ParsedSpecs::default(),
            hydrated_at: Vec::new(),
            supervisor,
            liveness: MembershipSnapshot::new(now),
            alive: std::collections::BTreeSet::new(),
            majority_clock: MajorityClock::default(),
            confirmed: BTreeMap::new(),
            asking: BTreeMap::new(),
            retry_at: BTreeMap::new(),
            claims: BTreeMap::new(),
            supervisor_wake: None,
            recheck: None,
        };
        let record = NodeRecord {
            name: NodeName::new(name),
            addrs: Vec::new(),
            hardware: kind.map_or_else(|| hardware(100), |k| k.hardware.clone()),
            tags: kind.map(|k| k.tags.clone()).unwrap_or_default(),
            version: crate::AGENT_VERSION.to_string(),
            joined_at_ms: wall_ms,
            left_at_ms: None,
            ..NodeRecord::default()
        };
        stack.write_own(record);
        stack.hydrate();
        let view = View::new(&stack.state, &stack.specs);
        stack.supervisor.start_following(view, BTreeMap::new());
        stack
    }

    /// Writes this node's own record (start, graceful stop, drain, tags); returns the change.
    pub fn write_own(&mut self, record: NodeRecord) -> Option<ChangeHash> {
        put_entry(&mut self.doc, "nodes", self.id.as_str(), &record)
            .expect("a node record always reconciles");
        self.doc.commit()
    }

    /// This node's record as the document holds it, changed by `edit`, written back.
    pub fn edit_own(&mut self, edit: impl FnOnce(&mut NodeRecord)) -> Option<ChangeHash> {
        self.hydrate();
        let mut record = self
            .state
            .nodes
            .get(self.id.as_str())
            .cloned()
            .unwrap_or_default();
        edit(&mut record);
        self.write_own(record)
    }

    /// Marks this node left (a graceful stop writes it before it goes).
    pub fn mark_left(&mut self, wall_ms: i64) {
        self.edit_own(|r| r.left_at_ms = Some(wall_ms));
    }

    /// Applies `writes` as one change; returns its hash (the write is acknowledged: the
    /// simulated node has no disk that could refuse it).
    pub fn write(&mut self, writes: &[EntryWrite]) -> Option<ChangeHash> {
        if writes.is_empty() {
            return None;
        }
        if let Err(e) = apply_writes(&mut self.doc, writes) {
            self.doc.rollback();
            tracing::warn!(error = %e, "a simulated write failed");
            return None;
        }
        self.doc.commit()
    }

    /// Brings the value up to the document's heads: the entries changed since the last read
    /// (as the state actor does), everything on the first read.
    pub fn hydrate(&mut self) {
        let heads = self.doc.get_heads();
        if heads == self.hydrated_at {
            return;
        }
        // Specs are parsed again only where their text changed: the old services suffice.
        let old = MeshState {
            services: self.state.services.clone(),
            ..MeshState::default()
        };
        let mut stats = crate::state::HydrateStats::default();
        let incremental = !self.hydrated_at.is_empty()
            && incremental::update(
                &mut self.doc,
                &mut self.state,
                &mut stats,
                &self.hydrated_at,
                &heads,
            )
            .is_some();
        if !incremental {
            self.state = hydrate_lenient(&self.doc).0;
            incremental::mark_read(&mut self.doc, &heads);
        }
        self.specs = self.specs.refresh(&old, &self.state);
        self.hydrated_at = heads;
    }

    /// Placement on the current value and membership view (`place_here` in the agent, without
    /// the audit trail and the endpoints). `ignore_fence`: the deliberately broken rule that a
    /// test turns on to see the checker catch it.
    pub fn place(&mut self, now: Instant, ignore_fence: bool) -> Placed {
        let mut liveness = self.liveness.at(now);
        let view = View::new(&self.state, &self.specs);
        let (seen, members) = placement::majority(PlacementInput {
            view,
            local: &self.id,
            liveness: &liveness,
        });
        liveness.majority_for = self.majority_clock.observe(seen * 2 > members, now);
        self.confirmed
            .retain(|_, at| now.duration_since(*at) < placement::CONFIRMATION_VALID);
        liveness.confirmed = self
            .confirmed
            .iter()
            .map(|(s, at)| (s.clone(), now.duration_since(*at)))
            .collect();
        let input = PlacementInput {
            view,
            local: &self.id,
            liveness: &liveness,
        };
        let placements = placement::place_all(input);
        let plan = placement::decide_local(input, &placements);
        let mut placed = Placed::default();
        self.retry_at
            .retain(|service, at| *at > now && plan.confirm.contains_key(service));
        for (service, confirmation) in &plan.confirm {
            if self.retry_at.contains_key(service) || self.asking.contains_key(service) {
                continue;
            }
            placed.ask.push((service.clone(), confirmation.clone()));
        }
        let retry = self.retry_at.values().min().copied();
        let recheck = plan.recheck_in.map(|d| now + d);
        placed.recheck_at = match (recheck, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for (name, (role, _)) in &plan.roles {
            let claim = match role {
                LocalRole::Run { epoch, generation } => (*epoch, *generation),
                LocalRole::HandOver => match self.claims.get(name) {
                    Some(claim) => *claim,
                    None => continue,
                },
                LocalRole::Fenced if ignore_fence => {
                    let p = &placements[name];
                    (p.epoch + 1, p.generation)
                }
                LocalRole::Fenced => continue,
            };
            self.claims.entry(name.clone()).or_insert(claim);
            placed.runs.insert(name.clone());
        }
        if ignore_fence {
            // The broken rule also keeps a copy that lost its majority running.
            for (name, p) in &placements {
                if p.exclusive
                    && p.holders.contains(&self.id)
                    && self
                        .supervisor
                        .status(name)
                        .is_some_and(|s| s.pid.is_some())
                {
                    placed.runs.insert(name.clone());
                }
            }
        }
        self.claims.retain(|name, _| placed.runs.contains(name));
        placed
    }

    /// The supervisor core follows the current value with `runs` placed here.
    pub fn follow(&mut self, now: Instant, runs: &BTreeSet<String>) -> Followed {
        let account_ok = |_: &crate::supervisor::ServiceSpec| None;
        let rules = FollowRules {
            node_id: &self.id,
            runs_here: runs,
            accept_services: AcceptServices::All,
            max_services: MAX_SERVICES,
            account_error: &account_ok,
        };
        let view = View::new(&self.state, &self.specs);
        self.supervisor.follow_document(now, view, &rules)
    }

    /// The instance writes for published statuses (`publish` in the agent).
    pub fn publish(
        &self,
        statuses: &[ServiceStatus],
        now: Instant,
        wall_ms: i64,
    ) -> Vec<EntryWrite> {
        let view = View::new(&self.state, &self.specs);
        statuses
            .iter()
            .map(|status| {
                let key = instance_key(&status.service, self.id.as_str());
                let placed_here = self.supervisor.spec(&status.service).is_some();
                if !placed_here && status.pid.is_none() {
                    return EntryWrite::Instance {
                        record: last_claim(view, &key),
                        key,
                    };
                }
                let claimed = self.claims.get(&status.service).copied().or_else(|| {
                    let i = self.state.instances.get(&key)?;
                    Some((i.epoch?, i.generation.unwrap_or(0)))
                });
                let health_check = self
                    .supervisor
                    .spec(&status.service)
                    .map(|spec| spec.health.is_some());
                EntryWrite::Instance {
                    key,
                    record: Some(InstanceRecord {
                        health_check,
                        epoch: claimed.map(|(epoch, _)| epoch),
                        generation: claimed.map(|(_, generation)| generation),
                        ..crate::supervisor::instance_record(status, self.id.clone(), now, wall_ms)
                    }),
                }
            })
            .collect()
    }

    /// Instances this node published for services no longer placed here and not running: each
    /// becomes its last claim or goes (the end of `on_document` in the agent).
    pub fn stale_instances(&self) -> Vec<EntryWrite> {
        let view = View::new(&self.state, &self.specs);
        self.state
            .instances
            .iter()
            .filter(|(_, i)| i.node == self.id && self.supervisor.status(&i.service).is_none())
            .filter_map(|(key, current)| {
                let record = last_claim(view, key);
                (record.as_ref() != Some(current)).then(|| EntryWrite::Instance {
                    key: key.clone(),
                    record,
                })
            })
            .collect()
    }

    /// The answer to a `Holders` question from this node's view (`supervisor::query`).
    pub fn holders(&self, service: &str, about: &[NodeId], now: Instant) -> Vec<NodeId> {
        let liveness = self.liveness.at(now);
        let input = PlacementInput {
            view: View::new(&self.state, &self.specs),
            local: &self.id,
            liveness: &liveness,
        };
        placement::up_holders(input, service, about)
    }

    /// The document's size when saved, bytes.
    pub fn saved_bytes(&mut self) -> usize {
        self.doc.save().len()
    }
}
