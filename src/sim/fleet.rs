//! The full stack of every simulated node ([`Stack`]: document, sync sessions, placement,
//! supervisor core) and the ground truth the invariants are judged against: which processes
//! run where, which writes were acknowledged. Sans-IO like the cores it drives: every method
//! takes the simulated time and returns [`Out`]s, which [`super::Simulation`] turns into
//! events over its network (latency, links, partitions) and clock.
//!
//! Processes are simulated the way the fake launcher does it in the agent's in-process tests:
//! a spawn answers `Spawned` after [`SPAWN_DELAY`], a health check passes after
//! [`CHECK_DELAY`], a signalled process exits after [`STOP_DELAY`]; a node that crashes takes
//! its processes with it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use automerge::{AutoCommit, ChangeHash};
use bytes::Bytes;
use libp2p::PeerId;

mod checks;

use super::report::ServiceFigures;
use super::scenario::Hardware;
use super::stack::{Asking, CONFIRM_RETRY, CONFIRM_TIMEOUT, Stack};
use crate::identity::{NodeId, NodeName};
use crate::membership::PeerState;
use crate::services::View;
use crate::services::ops::{self, Writer};
use crate::supervisor::spec::placement::Require;
use crate::supervisor::{
    ExitStatus, HealthOutcome, ServiceSpec, ServiceState, SupervisorAction, SupervisorEvent,
};
use crate::sync::SyncSessions;

/// A simulated spawn answers after this (fork and exec of a small program).
pub const SPAWN_DELAY: Duration = Duration::from_millis(5);
/// A simulated health check passes after this.
pub const CHECK_DELAY: Duration = Duration::from_millis(2);
/// A signalled process exits after this.
pub const STOP_DELAY: Duration = Duration::from_millis(50);
/// A document change is acted on this long after it arrives (the state actor publishing its
/// snapshot, the supervisor actor picking it up); changes within it are acted on together.
pub const ACT_DELAY: Duration = Duration::from_millis(1);
/// The size on the wire of a sync response without a message (its epoch and framing).
pub const DELIVERED_BYTES: usize = 40;
/// Most writes followed on their way to every node at once (a bound on the bookkeeping; the
/// oldest is given up and counted past it).
const MAX_SPREADING: usize = 10_000;

/// What the simulator must make happen.
#[derive(Clone, Debug)]
pub enum Out {
    /// A sync message over the link `from → to`: a request, or (`answer`) the response to a
    /// request of `to`'s, as `/mesh/sync/1` carries them.
    Sync {
        from: usize,
        to: usize,
        data: Bytes,
        answer: bool,
        /// A request of a push to every member (`SyncRequest::Sync::everyone`): not relayed.
        everyone: bool,
    },
    /// The response to a request of `to`'s that carries no message (the exchange completed).
    Delivered { from: usize, to: usize },
    /// A process event back to `node`'s supervisor after `after`.
    Launch {
        node: usize,
        incarnation: u64,
        after: Duration,
        event: SupervisorEvent,
    },
    /// Run `node`'s placement and supervisor on its document at `at`.
    Act { node: usize, at: Instant },
    /// Fire `node`'s supervisor timers at `at`.
    SupervisorWake { node: usize, at: Instant },
    /// A `Holders` question over the link `from → to`.
    Ask {
        from: usize,
        to: usize,
        service: String,
        about: Vec<NodeId>,
        qid: u64,
    },
    /// Its answer: whether `from` sees another node up with a copy.
    Answer {
        from: usize,
        to: usize,
        service: String,
        qid: u64,
        objects: bool,
    },
    /// The question `qid` of `node` times out at `at`.
    AskTimeout {
        node: usize,
        service: String,
        qid: u64,
        at: Instant,
    },
}

/// One simulated process.
#[derive(Clone, Debug)]
struct Proc {
    pid: u32,
    spawned: Duration,
    healthy: bool,
}

/// An outage whose services are being watched for their failover.
#[derive(Clone, Debug)]
struct Failover {
    /// The nodes that ran a copy when it was lost: a copy that survived on one of them and
    /// restarts is not the failover (it was counted as one; no committed report had such a
    /// case).
    holders: BTreeSet<usize>,
    at: Duration,
}

pub struct Fleet {
    pub nodes: Vec<Option<Stack>>,
    /// The documents of nodes that are down (kept on their disks).
    kept: Vec<Option<AutoCommit>>,
    incarnation: Vec<u64>,
    act_pending: Vec<bool>,
    /// service → node → its process there.
    procs: BTreeMap<String, BTreeMap<usize, Proc>>,
    /// Exclusive services (from the specs added).
    exclusive: BTreeMap<String, u32>,
    /// Replicas wanted per service.
    pub replicas: BTreeMap<String, u32>,
    /// What a node must be to run a copy, per service with requirements.
    require: BTreeMap<String, Require>,
    /// Pinned services and the node they are pinned to (the node that added them).
    pinned: BTreeMap<String, usize>,
    /// The scenario's hardware groups.
    hardware: Hardware,
    next_pid: u32,
    next_qid: u64,
    /// Acknowledged writes: (change, writer, when).
    acked: Vec<(ChangeHash, usize, Duration)>,
    /// Writes on their way to every node: (change, when, the up nodes still lacking it).
    spreading: Vec<(ChangeHash, Duration, BTreeSet<usize>)>,
    /// service → the outage it lost a copy in, waiting for a new copy elsewhere.
    failovers: BTreeMap<String, Failover>,
    pub ignore_fence: bool,
    base: Instant,
    pub figures: ServiceFigures,
    /// Violations found, to report: (invariant, detail).
    pub violations: Vec<(&'static str, String)>,
}

/// Sync requests of node `i` for its linked peers (others are dropped: the link is gone).
fn to_links(
    i: usize,
    sync: &SyncSessions,
    msgs: Vec<(PeerId, Vec<u8>)>,
    links: &BTreeMap<PeerId, usize>,
) -> Vec<Out> {
    msgs.into_iter()
        .filter_map(|(p, data)| {
            Some(Out::Sync {
                from: i,
                to: *links.get(&p)?,
                data: Bytes::from(data),
                answer: false,
                everyone: sync.to_everyone(&p),
            })
        })
        .collect()
}

/// How a sync message travels: over the link `from → to`, as a request or (`answer`) a
/// response, and whether it is part of a push to every member (see [`Out::Sync`]).
#[derive(Clone, Copy, Debug)]
pub struct Hop {
    pub from: usize,
    pub to: usize,
    pub answer: bool,
    pub everyone: bool,
}

/// A sync message of `bytes` arrives at node `to`: counted, and the node's stack if it is up.
fn arrive<'a>(
    nodes: &'a mut [Option<Stack>],
    figures: &mut ServiceFigures,
    to: usize,
    bytes: usize,
) -> Option<&'a mut Stack> {
    let s = nodes[to].as_mut()?;
    figures.sync_messages += 1;
    figures.sync_bytes += bytes as u64;
    Some(s)
}

/// Wall-clock ms of a simulated moment on every node (their clocks agree).
pub fn wall_ms(now: Duration) -> i64 {
    1_700_000_000_000 + now.as_millis() as i64
}

impl Fleet {
    pub fn new(capacity: usize, base: Instant, ignore_fence: bool, hardware: Hardware) -> Fleet {
        Fleet {
            nodes: (0..capacity).map(|_| None).collect(),
            kept: (0..capacity).map(|_| None).collect(),
            incarnation: vec![0; capacity],
            act_pending: vec![false; capacity],
            procs: BTreeMap::new(),
            exclusive: BTreeMap::new(),
            replicas: BTreeMap::new(),
            require: BTreeMap::new(),
            pinned: BTreeMap::new(),
            hardware,
            next_pid: 1000,
            next_qid: 0,
            acked: Vec::new(),
            spreading: Vec::new(),
            failovers: BTreeMap::new(),
            ignore_fence,
            base,
            figures: ServiceFigures::default(),
            violations: Vec::new(),
        }
    }

    fn instant(&self, now: Duration) -> Instant {
        self.base + now
    }

    pub fn incarnation(&self, i: usize) -> u64 {
        self.incarnation[i]
    }

    pub fn up(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(Option::is_some)
    }

    /// Node `i` starts (or restarts with the document it kept).
    pub fn start(&mut self, i: usize, peer: &PeerId, now: Duration, seed: u64) -> Vec<Out> {
        self.incarnation[i] += 1;
        let doc = self.kept[i].take();
        let name = format!("n{i}");
        let kind = self.hardware.of(i);
        let stack = Stack::start(
            peer,
            &name,
            kind,
            doc,
            self.instant(now),
            wall_ms(now),
            seed,
        );
        self.nodes[i] = Some(stack);
        self.act_pending[i] = false;
        self.schedule_act(i, now)
    }

    /// Node `i` goes: a graceful stop first writes that it leaves and tells its peers.
    pub fn stop(
        &mut self,
        i: usize,
        graceful: bool,
        linked: &[(usize, PeerId)],
        now: Duration,
    ) -> Vec<Out> {
        let mut out = Vec::new();
        let Some(mut stack) = self.nodes[i].take() else {
            return out;
        };
        if graceful {
            stack.hydrate();
            stack.mark_left(wall_ms(now));
            let at = self.instant(now);
            for (peer, data) in stack.sync.generate_all(&mut stack.doc, at) {
                if let Some(&(to, _)) = linked.iter().find(|(_, p)| *p == peer) {
                    out.push(Out::Sync {
                        from: i,
                        to,
                        data: Bytes::from(data),
                        answer: false,
                        everyone: stack.sync.to_everyone(&peer),
                    });
                }
            }
        }
        // Its processes go with it.
        for (service, by_node) in &mut self.procs {
            if let Some(p) = by_node.remove(&i)
                && p.healthy
            {
                let f = self
                    .failovers
                    .entry(service.clone())
                    .or_insert_with(|| Failover {
                        holders: BTreeSet::new(),
                        at: now,
                    });
                f.holders.insert(i);
                f.holders.extend(by_node.keys());
            }
        }
        self.kept[i] = Some(stack.doc);
        // A node that went is no longer waited for.
        for (_, _, lacking) in &mut self.spreading {
            lacking.remove(&i);
        }
        self.spread_done(now);
        out
    }

    /// Node `i` committed `hash` at `now`: it is on its way to every other up node.
    fn written(&mut self, i: usize, hash: ChangeHash, now: Duration) {
        let lacking: BTreeSet<usize> = (0..self.nodes.len())
            .filter(|&n| n != i && self.up(n))
            .collect();
        if lacking.is_empty() {
            return;
        }
        if self.spreading.len() >= MAX_SPREADING {
            self.spreading.remove(0);
            self.figures.spread_unfinished += 1;
        }
        self.spreading.push((hash, now, lacking));
    }

    /// Node `i`'s document changed: the writes it now holds are no longer waited for there.
    fn arrived(&mut self, i: usize, now: Duration) {
        let Some(s) = self.nodes[i].as_mut() else {
            return;
        };
        for (hash, _, lacking) in &mut self.spreading {
            if lacking.contains(&i) && s.doc.get_change_by_hash(hash).is_some() {
                lacking.remove(&i);
            }
        }
        self.spread_done(now);
    }

    /// Records the writes that reached every node they waited for.
    fn spread_done(&mut self, now: Duration) {
        let figures = &mut self.figures;
        self.spreading.retain(|(_, at, lacking)| {
            if lacking.is_empty() {
                figures.spread_ms.push((now - *at).as_secs_f64() * 1000.0);
                false
            } else {
                true
            }
        });
    }

    fn schedule_act(&mut self, i: usize, now: Duration) -> Vec<Out> {
        if self.act_pending[i] || !self.up(i) {
            return Vec::new();
        }
        self.act_pending[i] = true;
        vec![Out::Act {
            node: i,
            at: self.instant(now + ACT_DELAY),
        }]
    }

    /// A link from `a` to `b` came up: a session starts.
    pub fn link_up(&mut self, a: usize, b: usize, peer: PeerId, now: Duration) -> Vec<Out> {
        let at = self.instant(now);
        let Some(s) = self.nodes[a].as_mut() else {
            return Vec::new();
        };
        s.sync
            .on_peer_up(peer, &mut s.doc, at)
            .map(|data| Out::Sync {
                from: a,
                to: b,
                data: Bytes::from(data),
                answer: false,
                everyone: false,
            })
            .into_iter()
            .collect()
    }

    pub fn link_down(&mut self, a: usize, peer: PeerId) {
        if let Some(s) = self.nodes[a].as_mut() {
            s.sync.on_peer_down(peer);
        }
    }

    /// A sync message `hop` from `from` (peer id `peer`) arrives at `to`. `links`: `to`'s
    /// linked nodes, to push what is new to the others.
    pub fn on_sync(
        &mut self,
        hop: Hop,
        peer: PeerId,
        data: &[u8],
        links: &BTreeMap<PeerId, usize>,
        now: Duration,
    ) -> Vec<Out> {
        let Hop {
            from,
            to,
            answer,
            everyone,
        } = hop;
        let at = self.instant(now);
        let Some(s) = arrive(&mut self.nodes, &mut self.figures, to, data.len()) else {
            return Vec::new();
        };
        let before = s.doc.get_heads();
        let applied = if answer {
            s.sync.on_response(peer, &mut s.doc, data, at)
        } else {
            s.sync.on_message(peer, &mut s.doc, data, at)
        };
        let reply = match applied {
            Ok(r) => r,
            Err(_) => return Vec::new(),
        };
        let mut out: Vec<Out> = match reply {
            // Our answer to their request, or our next request after their answer.
            Some(data) => vec![Out::Sync {
                from: to,
                to: from,
                data: Bytes::from(data),
                answer: !answer,
                everyone: answer && s.sync.to_everyone(&peer),
            }],
            // A request is always answered, if only to say it was applied.
            None if !answer => vec![Out::Delivered { from: to, to: from }],
            None => Vec::new(),
        };
        if s.doc.get_heads() != before {
            // A response is never part of a push to everyone: only requests say so.
            let relays = s.sync.relay(&mut s.doc, peer, everyone && !answer, at);
            out.extend(to_links(to, &s.sync, relays, links));
            out.extend(self.schedule_act(to, now));
            self.arrived(to, now);
        }
        out
    }

    /// `from` answered a request of `to`'s without a message.
    pub fn on_delivered(
        &mut self,
        from: usize,
        to: usize,
        peer: PeerId,
        now: Duration,
    ) -> Vec<Out> {
        let at = self.instant(now);
        let Some(s) = arrive(&mut self.nodes, &mut self.figures, to, DELIVERED_BYTES) else {
            return Vec::new();
        };
        s.sync
            .on_delivered(peer, &mut s.doc, at)
            .map(|data| Out::Sync {
                from: to,
                to: from,
                data: Bytes::from(data),
                answer: false,
                everyone: s.sync.to_everyone(&peer),
            })
            .into_iter()
            .collect()
    }

    /// Membership at `i` changed its verdict on `peer`.
    pub fn membership_changed(
        &mut self,
        i: usize,
        peer: &PeerId,
        state: PeerState,
        now: Duration,
    ) -> Vec<Out> {
        let at = self.instant(now);
        let Some(s) = self.nodes[i].as_mut() else {
            return Vec::new();
        };
        s.liveness.peers.insert(NodeId::from(peer), (state, at));
        // As the node actor tells the state actor (`StateHandle::set_alive`).
        let changed = if state.believed_alive() {
            s.alive.insert(*peer)
        } else {
            s.alive.remove(peer)
        };
        if changed {
            s.sync.set_alive(s.alive.clone());
        }
        self.schedule_act(i, now)
    }

    /// Anti-entropy of node `i` (every 15 s in the agent).
    pub fn anti_entropy(
        &mut self,
        i: usize,
        links: &BTreeMap<PeerId, usize>,
        now: Duration,
    ) -> Vec<Out> {
        let at = self.instant(now);
        let Some(s) = self.nodes[i].as_mut() else {
            return Vec::new();
        };
        let msgs = s.sync.anti_entropy(&mut s.doc, at);
        to_links(i, &s.sync, msgs, links)
    }

    /// The checker holds `service` to `require` (the scenario's, whatever the spec added says).
    pub fn expect_requirements(&mut self, service: &str, require: &Require) {
        if !require.is_empty() {
            self.require.insert(service.to_string(), require.clone());
        }
    }

    /// Node `i` adds `specs` as an operator would through its API.
    pub fn add_services(
        &mut self,
        i: usize,
        specs: Vec<ServiceSpec>,
        links: &BTreeMap<PeerId, usize>,
        now: Duration,
    ) -> Vec<Out> {
        let Some(s) = self.nodes[i].as_mut() else {
            return Vec::new();
        };
        for spec in &specs {
            self.replicas
                .insert(spec.name.clone(), spec.placement.replicas);
            if spec.placement.exclusive {
                self.exclusive
                    .insert(spec.name.clone(), spec.placement.replicas);
            }
            if spec.placement.pinned {
                self.pinned.insert(spec.name.clone(), i);
            }
        }
        s.hydrate();
        let writer = Writer {
            id: s.id.clone(),
            name: NodeName::new(format!("n{i}")),
            now_ms: wall_ms(now),
        };
        let plan = match ops::add(View::new(&s.state, &s.specs), &writer, specs, None, &[]) {
            Ok(plan) => plan,
            Err(e) => {
                self.violations
                    .push(("services added", format!("node {i} could not add: {e}")));
                return Vec::new();
            }
        };
        if let Some(hash) = s.write(&plan.writes) {
            self.acked.push((hash, i, now));
            self.written(i, hash, now);
        }
        self.push(i, links, now)
    }

    /// An operator's change to node `i`'s own record (`mesh drain`, `mesh tag set`): written,
    /// acknowledged, pushed.
    pub fn edit_node(
        &mut self,
        i: usize,
        edit: impl FnOnce(&mut crate::state::NodeRecord),
        links: &BTreeMap<PeerId, usize>,
        now: Duration,
    ) -> Vec<Out> {
        let Some(s) = self.nodes[i].as_mut() else {
            return Vec::new();
        };
        if let Some(hash) = s.edit_own(edit) {
            self.acked.push((hash, i, now));
            self.written(i, hash, now);
        }
        self.push(i, links, now)
    }

    /// Sends what node `i` has new to its links, and acts on it.
    fn push(&mut self, i: usize, links: &BTreeMap<PeerId, usize>, now: Duration) -> Vec<Out> {
        let at = self.instant(now);
        let Some(s) = self.nodes[i].as_mut() else {
            return Vec::new();
        };
        let msgs = s.sync.generate_all(&mut s.doc, at);
        let mut out = to_links(i, &s.sync, msgs, links);
        out.extend(self.schedule_act(i, now));
        out
    }

    /// Placement and the supervisor act on node `i`'s document (`on_document` in the agent).
    pub fn act(
        &mut self,
        i: usize,
        index: &BTreeMap<NodeId, usize>,
        links: &BTreeMap<PeerId, usize>,
        now: Duration,
    ) -> Vec<Out> {
        self.act_pending[i] = false;
        let at = self.instant(now);
        let ignore_fence = self.ignore_fence;
        let Some(s) = self.nodes[i].as_mut() else {
            return Vec::new();
        };
        s.hydrate();
        let placed = s.place(at, ignore_fence);
        let mut out = Vec::new();
        for (service, confirmation) in placed.ask {
            let qid = self.next_qid;
            self.next_qid += 1;
            let mut asked = 0;
            for node in &confirmation.ask {
                let Some(&to) = index.get(node) else { continue };
                asked += 1;
                out.push(Out::Ask {
                    from: i,
                    to,
                    service: service.clone(),
                    about: confirmation.about.clone(),
                    qid,
                });
            }
            s.asking.insert(
                service.clone(),
                Asking {
                    qid,
                    waiting: asked,
                    agree: 0,
                    needed: confirmation.needed,
                },
            );
            out.push(Out::AskTimeout {
                node: i,
                service,
                qid,
                at: at + CONFIRM_TIMEOUT,
            });
        }
        if let Some(recheck) = placed.recheck_at
            && s.recheck.is_none_or(|r| r <= at || recheck < r)
        {
            s.recheck = Some(recheck);
            out.push(Out::Act {
                node: i,
                at: recheck,
            });
        }
        let followed = s.follow(at, &placed.runs);
        out.extend(self.carry_out(i, followed.actions, links, now));
        let Some(s) = self.nodes[i].as_mut() else {
            return out;
        };
        s.hydrate();
        let stale = s.stale_instances();
        if let Some(hash) = s.write(&stale) {
            self.written(i, hash, now);
            out.extend(self.push(i, links, now));
        }
        out
    }

    /// A process event (or a timer) for node `i`'s supervisor.
    pub fn on_launch(
        &mut self,
        i: usize,
        incarnation: u64,
        event: SupervisorEvent,
        links: &BTreeMap<PeerId, usize>,
        now: Duration,
    ) -> Vec<Out> {
        if self.incarnation[i] != incarnation || !self.up(i) {
            return Vec::new();
        }
        if let SupervisorEvent::Exited { service, pid, .. } = &event
            && let Some(by_node) = self.procs.get_mut(service)
            && by_node.get(&i).is_some_and(|p| p.pid == *pid)
        {
            by_node.remove(&i);
        }
        let at = self.instant(now);
        let Some(s) = self.nodes[i].as_mut() else {
            return Vec::new();
        };
        if matches!(event, SupervisorEvent::TimerFired) {
            if s.supervisor_wake.is_some_and(|w| w > at) {
                return Vec::new();
            }
            s.supervisor_wake = None;
        }
        let actions = s.supervisor.on_event(at, event).unwrap_or_default();
        self.carry_out(i, actions, links, now)
    }

    fn carry_out(
        &mut self,
        i: usize,
        actions: Vec<SupervisorAction>,
        links: &BTreeMap<PeerId, usize>,
        now: Duration,
    ) -> Vec<Out> {
        let at = self.instant(now);
        let incarnation = self.incarnation[i];
        let mut out = Vec::new();
        let mut statuses = Vec::new();
        for action in actions {
            match action {
                SupervisorAction::Spawn { service } => {
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    self.spawned(i, &service, pid, now);
                    out.push(Out::Launch {
                        node: i,
                        incarnation,
                        after: SPAWN_DELAY,
                        event: SupervisorEvent::Spawned { service, pid },
                    });
                }
                SupervisorAction::Signal { service, pid, .. } => out.push(Out::Launch {
                    node: i,
                    incarnation,
                    after: STOP_DELAY,
                    event: SupervisorEvent::Exited {
                        service,
                        pid,
                        status: ExitStatus::Signal(15),
                    },
                }),
                SupervisorAction::RunHealthCheck { service, pid } => out.push(Out::Launch {
                    node: i,
                    incarnation,
                    after: CHECK_DELAY,
                    event: SupervisorEvent::HealthChecked {
                        service,
                        pid,
                        outcome: HealthOutcome::Passed,
                    },
                }),
                SupervisorAction::ScheduleTimer { at: when, .. } => {
                    let Some(s) = self.nodes[i].as_mut() else {
                        continue;
                    };
                    if s.supervisor_wake.is_none_or(|w| w <= at || when < w) {
                        s.supervisor_wake = Some(when);
                        out.push(Out::SupervisorWake { node: i, at: when });
                    }
                }
                SupervisorAction::Audit(_) => self.figures.audit_events += 1,
                SupervisorAction::Publish(status) => {
                    self.observe(i, &status.service, status.state, status.pid, now);
                    statuses.push(status);
                }
            }
        }
        if !statuses.is_empty()
            && let Some(s) = self.nodes[i].as_mut()
        {
            s.hydrate();
            let writes = s.publish(&statuses, at, wall_ms(now));
            if let Some(hash) = s.write(&writes) {
                self.figures.instance_writes += 1;
                self.written(i, hash, now);
                out.extend(self.push(i, links, now));
            }
        }
        out
    }

    /// A process of `service` starts on `i`: the exclusive invariant is judged here.
    fn spawned(&mut self, i: usize, service: &str, pid: u32, now: Duration) {
        let by_node = self.procs.entry(service.to_string()).or_default();
        by_node.insert(
            i,
            Proc {
                pid,
                spawned: now,
                healthy: false,
            },
        );
        if let Some(why) = self.unfit(i, service) {
            self.violations.push((
                "copies only on nodes that may run them",
                format!("{service} started on node {i}, which may not run it: {why}"),
            ));
        }
        let by_node = &self.procs[service];
        if let Some(&replicas) = self.exclusive.get(service)
            && by_node.len() > replicas as usize
        {
            let nodes: Vec<String> = by_node.keys().map(|n| format!("node {n}")).collect();
            self.violations.push((
                "no exclusive service running twice",
                format!(
                    "{service} (exclusive, {replicas} cop{}) has processes on {} at once",
                    if replicas == 1 { "y" } else { "ies" },
                    nodes.join(", ")
                ),
            ));
        }
    }

    /// A published state of `service` on `i`: readiness and failover times.
    fn observe(
        &mut self,
        i: usize,
        service: &str,
        state: ServiceState,
        pid: Option<u32>,
        now: Duration,
    ) {
        let Some(p) = self.procs.get_mut(service).and_then(|m| m.get_mut(&i)) else {
            return;
        };
        if Some(p.pid) != pid {
            return;
        }
        p.healthy = state == ServiceState::Healthy;
        if p.healthy
            && let Some(f) = self.failovers.get(service)
            && !f.holders.contains(&i)
            && p.spawned >= f.at
        {
            let took = (now - f.at).as_secs_f64() * 1000.0;
            self.figures.failover_ms.push(took);
            self.failovers.remove(service);
        }
    }

    /// A `Holders` question arrives at `to`.
    pub fn on_ask(
        &mut self,
        from: usize,
        to: usize,
        service: String,
        about: &[NodeId],
        qid: u64,
        now: Duration,
    ) -> Vec<Out> {
        let at = self.instant(now);
        let Some(s) = self.nodes[to].as_ref() else {
            return Vec::new();
        };
        let asker = self.nodes[from].as_ref().map(|a| a.id.clone());
        let up = s.holders(&service, about, at);
        let objects = up.iter().any(|n| Some(n) != asker.as_ref());
        vec![Out::Answer {
            from: to,
            to: from,
            service,
            qid,
            objects,
        }]
    }

    /// An answer (or, with `None`, the timeout) of question `qid` at `i`.
    pub fn on_answer(
        &mut self,
        i: usize,
        service: &str,
        qid: u64,
        objects: Option<bool>,
        now: Duration,
    ) -> Vec<Out> {
        let at = self.instant(now);
        let Some(s) = self.nodes[i].as_mut() else {
            return Vec::new();
        };
        let Some(a) = s.asking.get_mut(service).filter(|a| a.qid == qid) else {
            return Vec::new();
        };
        // The agent waits for every answer (each bounded by the timeout), then counts.
        if let Some(objects) = objects {
            a.waiting = a.waiting.saturating_sub(1);
            if !objects {
                a.agree += 1;
            }
            if a.waiting > 0 {
                return Vec::new();
            }
        }
        let confirmed = a.agree >= a.needed;
        s.asking.remove(service);
        if confirmed {
            s.confirmed.insert(service.to_string(), at);
            self.schedule_act(i, now)
        } else {
            let retry = at + CONFIRM_RETRY;
            s.retry_at.insert(service.to_string(), retry);
            self.figures.fenced_retries += 1;
            vec![Out::Act { node: i, at: retry }]
        }
    }
}
