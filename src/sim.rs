//! `mesh sim`: whole meshes under a simulated clock and network, deterministically, made of the
//! agent's own cores. Each node is the agent's [`Membership`] core (foca's SWIM, the agent's
//! settings), fed and drained exactly as the node actor does (inputs, then `handle_timers`,
//! then `poll_transmit`), and the agent's dial planner (`dialing`), over links that behave
//! like the agent's QUIC links (a datagram is delivered after its sender's uplink and a one-way
//! latency, a lost packet arrives one retransmission later; a link to a node declared dead is
//! closed as the agent closes it, and one to a crashed or cut-off node closes after the QUIC
//! idle timeout at the latest). With services, the full stack above it
//! (`fleet`, `stack`): the document and its sync sessions, placement, the supervisor core.
//!
//! A discrete-event loop owns time: events are ordered by (time, sequence), every random choice
//! comes from one seeded generator, and nothing reads the wall clock, so the same scenario and
//! seed give the same report, byte for byte (`tests/sim.rs`). Wall time and memory are
//! reported apart ([`Perf`]) for that reason.
//!
//! Invariants checked while it runs, each violation reported with its simulated time and the
//! seed: no `dead` verdict about a node that is up and was never cut off from its observer
//! (false dead); every crash detected by every node linked to it; after a heal, every up node
//! sees every other up node alive.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use libp2p::PeerId;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::identity::NodeId;
use crate::membership::{Membership, MembershipConfig, PeerState};
use crate::supervisor::SupervisorEvent;
use fleet::Fleet;

mod dialing;
mod fleet;
mod judge;
pub mod report;
pub mod scenario;
mod stack;
mod timeline;
mod traffic;
mod wiring;

pub use report::{Perf, Report};
pub use scenario::{Action, Pick, Scenario, ScenarioError};

/// How long after a crash (or stop) the run must go on for the crash to count as
/// undetected: detection takes ~2 s; this leaves ample room.
const DETECTION_WINDOW: Duration = Duration::from_secs(30);
/// How long after a heal every up node must see every other alive.
const HEAL_SETTLE: Duration = Duration::from_secs(30);
/// How often, after a heal, the views are checked for the heal's convergence time.
const HEAL_PROBE: Duration = Duration::from_millis(100);
/// How long after a partition ends a `dead` verdict about a node that was on the other side
/// still counts as fair (the verdict may be in flight).
const CUT_GRACE: Duration = Duration::from_secs(10);
/// Violations kept in the report (the count is always exact).
const MAX_VIOLATIONS: usize = 100;
/// Nodes start over this span (a mesh coming up), not all in one instant.
const START_SPREAD: Duration = Duration::from_secs(2);
/// Connection setup (discovery answer plus QUIC handshake plus admission), uniform.
const CONNECT_MIN: Duration = Duration::from_millis(2);
const CONNECT_MAX: Duration = Duration::from_millis(20);
/// A QUIC link to a peer that went silent closes after this (`transport::QUIC_IDLE_TIMEOUT_MS`).
const IDLE_TIMEOUT: Duration = Duration::from_millis(crate::transport::QUIC_IDLE_TIMEOUT_MS as u64);

/// State codes of the views (what each node last saw of each other).
const UNKNOWN: u8 = 0;

fn code(s: PeerState) -> u8 {
    match s {
        PeerState::Alive => 1,
        PeerState::Suspect => 2,
        PeerState::Dead => 3,
        PeerState::Left => 4,
    }
}

#[derive(Clone, Debug)]
enum Ev {
    Deliver {
        from: usize,
        to: usize,
        data: Bytes,
    },
    Wake {
        node: usize,
    },
    Action(usize),
    Connect {
        a: usize,
        b: usize,
    },
    /// `a` notices its link to `b` is gone.
    Disconnect {
        a: usize,
        b: usize,
    },
    /// `a` closes its link to `b`, declared dead (`node::DEAD_CLOSE_GRACE` after the verdict),
    /// if `b` is still dead in its view.
    CloseDead {
        a: usize,
        b: usize,
    },
    LeaveNotice {
        from: usize,
        to: usize,
        leaver: usize,
        bump: u64,
    },
    Start {
        node: usize,
    },
    ChurnTick,
    Check {
        what: &'static str,
    },
    // The full stack (scenarios with services).
    /// A message of the fleet (sync, `Holders` question or answer) arriving over a link.
    Arrive(fleet::Out),
    Launch {
        node: usize,
        incarnation: u64,
        event: SupervisorEvent,
    },
    ActOn {
        node: usize,
    },
    SupervisorWake {
        node: usize,
    },
    AskTimeout {
        node: usize,
        service: String,
        qid: u64,
    },
    AntiEntropy {
        node: usize,
        bump: u64,
    },
    AddServices(usize),
    Sample,
    /// A traffic sample (every run).
    Traffic,
    /// Discovery: `node` finds `found` (its answer or announcement arrived).
    Discovered {
        node: usize,
        found: usize,
    },
    /// Discovery: `gone`'s goodbye reaches `node`.
    Goodbye {
        node: usize,
        gone: usize,
    },
    /// The dial planner's turn on `node`.
    DialWake {
        node: usize,
    },
    /// After a heal: do all up nodes see each other alive yet?
    HealProbe,
    Settled {
        what: &'static str,
    },
}

/// Anti-entropy interval of the state actor (`state::actor::ANTI_ENTROPY`).
const ANTI_ENTROPY: Duration = crate::state::actor::ANTI_ENTROPY;
/// Copies are sampled this often for the copies-over-time plot; the document size every
/// sixth sample.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

struct SimNode {
    peer: PeerId,
    membership: Option<Membership>,
    bump: u64,
    side: u32,
    segment: usize,
    /// Nodes this one holds a link to.
    links: Vec<bool>,
    /// The earliest wake-up scheduled.
    wake: Option<Duration>,
    /// What this node last saw of each other (state code).
    view: Vec<u8>,
    /// When the node was last cut off from anyone (end of that partition).
    cut_until: Option<Duration>,
    msgs_out: u64,
    bytes_out: u64,
    /// `msgs_out` and `bytes_out` at the last traffic sample.
    msgs_mark: u64,
    bytes_mark: u64,
    msgs_in: u64,
    bytes_in: u64,
    /// The agent's dial planner (while up), and its next turn.
    dial: Option<crate::node::dial::DialPlanner>,
    dial_wake: Option<Duration>,
    /// Uplink in bits per second (`None`: unlimited), and when it is next free.
    uplink_bps: Option<u64>,
    uplink_free: Duration,
}

/// A crash (or stop) being watched for detection.
struct Outage {
    node: usize,
    bump: u64,
    at: Duration,
    graceful: bool,
    /// Observers linked to the node when it went, not yet told.
    waiting: Vec<usize>,
}

/// When a pending event happens: its time in nanoseconds and the order it was scheduled in,
/// in one integer (one comparison per step of the heap; simulated times stay far under the
/// 2^64 ns, 584 years, that fit), and where the event is kept. Ordered by `key` (unique, as
/// the sequence is): `slot` never decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    key: u128,
    slot: u32,
}

impl Due {
    fn new(at: Duration, seq: u64, slot: u32) -> Self {
        Self {
            key: (at.as_nanos() << 64) | u128::from(seq),
            slot,
        }
    }

    fn at(&self) -> Duration {
        let nanos = self.key >> 64;
        Duration::new(
            (nanos / 1_000_000_000) as u64,
            (nanos % 1_000_000_000) as u32,
        )
    }
}

/// One run of a scenario.
pub struct Simulation {
    scenario: Scenario,
    seed: u64,
    config: MembershipConfig,
    base: Instant,
    now: Duration,
    rng: StdRng,
    /// Pending events in the order they happen: by time, then by the order they were
    /// scheduled in.
    queue: BinaryHeap<Reverse<Due>>,
    /// The pending events themselves, by slot (a free slot is reused).
    events: Vec<Option<Ev>>,
    free: Vec<u32>,
    seq: u64,
    nodes: Vec<SimNode>,
    index: HashMap<PeerId, usize>,
    outages: Vec<Outage>,
    /// (node, bump) → index in `outages`.
    outage_of: HashMap<(usize, u64), usize>,
    partitioned: bool,
    report: Report,
    processed: u64,
    /// The full stack of every node, when the scenario has services.
    fleet: Option<Fleet>,
    node_ids: std::collections::BTreeMap<NodeId, usize>,
    samples: u64,
    /// Sync messages and bytes at the last traffic sample.
    sync_mark: (u64, u64),
    /// The last heal, until every up node sees every other alive.
    healed_at: Option<Duration>,
}

/// A node id that is the same in every run: an Ed25519 key from the seed and the index.
fn peer_of(seed: u64, i: usize) -> PeerId {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    bytes[16] = 0x5a;
    libp2p::identity::Keypair::ed25519_from_bytes(bytes)
        .expect("32 bytes make a key")
        .public()
        .to_peer_id()
}

impl Simulation {
    /// A run of `scenario` with `seed` (the scenario's own, else 1, when `None`) and the
    /// agent's LAN membership settings.
    pub fn new(scenario: Scenario, seed: Option<u64>) -> Self {
        Self::with_config(scenario, seed, MembershipConfig::lan())
    }

    /// The same with other membership settings (to compare two settings, or to check that a
    /// broken one is caught).
    pub fn with_config(scenario: Scenario, seed: Option<u64>, config: MembershipConfig) -> Self {
        let seed = seed.or(scenario.seed).unwrap_or(1);
        let capacity = scenario.nodes
            + scenario
                .timeline
                .iter()
                .map(|t| match t.action {
                    Action::Add(n) => n,
                    _ => 0,
                })
                .sum::<usize>();
        let mut sim = Simulation {
            report: Report::new(&scenario, seed),
            seed,
            config,
            base: Instant::now(),
            now: Duration::ZERO,
            rng: StdRng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            events: Vec::new(),
            free: Vec::new(),
            seq: 0,
            nodes: Vec::with_capacity(capacity),
            index: HashMap::new(),
            outages: Vec::new(),
            outage_of: HashMap::new(),
            partitioned: false,
            processed: 0,
            fleet: None,
            node_ids: std::collections::BTreeMap::new(),
            samples: 0,
            sync_mark: (0, 0),
            healed_at: None,
            scenario,
        };
        let every = sim.traffic_every();
        sim.schedule(every, Ev::Traffic);
        if !sim.scenario.services.is_empty() {
            let fleet = Fleet::new(
                capacity,
                sim.base,
                sim.scenario.ignore_exclusive_fence,
                sim.scenario.hardware.clone(),
            );
            sim.fleet = Some(fleet);
            for g in 0..sim.scenario.services.len() {
                sim.schedule(sim.scenario.services[g].at, Ev::AddServices(g));
            }
            sim.schedule(SAMPLE_EVERY, Ev::Sample);
        }
        for i in 0..sim.scenario.nodes {
            sim.add_node(capacity);
            let at = START_SPREAD.mul_f64(i as f64 / sim.scenario.nodes as f64);
            sim.schedule(at, Ev::Start { node: i });
        }
        for i in 0..sim.scenario.timeline.len() {
            let at = sim.scenario.timeline[i].at;
            sim.schedule(at, Ev::Action(i));
        }
        if sim.scenario.churn.is_some() {
            sim.schedule(Duration::from_secs(10), Ev::ChurnTick);
        }
        sim
    }

    fn add_node(&mut self, capacity: usize) -> usize {
        let i = self.nodes.len();
        let peer = peer_of(self.seed, i);
        self.index.insert(peer, i);
        self.node_ids.insert(NodeId::from(&peer), i);
        let segment = i % self.scenario.network.segments;
        self.nodes.push(SimNode {
            peer,
            membership: None,
            bump: 0,
            side: 0,
            segment,
            links: vec![false; capacity],
            wake: None,
            view: vec![UNKNOWN; capacity],
            cut_until: None,
            msgs_out: 0,
            bytes_out: 0,
            msgs_mark: 0,
            bytes_mark: 0,
            msgs_in: 0,
            bytes_in: 0,
            uplink_bps: self
                .scenario
                .hardware
                .of(i)
                .and_then(|k| k.bandwidth)
                .or(self.scenario.network.bandwidth),
            uplink_free: Duration::ZERO,
            dial: None,
            dial_wake: None,
        });
        i
    }

    fn schedule(&mut self, at: Duration, ev: Ev) {
        let seq = self.seq;
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.events[slot as usize] = Some(ev);
                slot
            }
            None => {
                self.events.push(Some(ev));
                u32::try_from(self.events.len() - 1).expect("fewer than 2^32 pending events")
            }
        };
        self.queue.push(Reverse(Due::new(at, seq, slot)));
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].membership.is_some()
    }

    /// One-way latency of a datagram from `a` to `b`.
    fn latency(&mut self, a: usize, b: usize) -> Duration {
        let n = &self.scenario.network;
        let (lo, hi) = (
            n.latency_min.as_nanos() as u64,
            n.latency_max.as_nanos() as u64,
        );
        let mut d = Duration::from_nanos(if hi > lo {
            self.rng.random_range(lo..=hi)
        } else {
            lo
        });
        if self.nodes[a].segment != self.nodes[b].segment {
            d += n.cross_segment;
        }
        if n.loss > 0.0 && self.rng.random_bool(n.loss) {
            // QUIC's retransmission after a loss: about three round trips, 10 ms at least.
            d += (d * 6).max(Duration::from_millis(10));
        }
        d
    }

    fn violation(&mut self, invariant: &str, detail: String) {
        self.report.violations_total += 1;
        if self.report.violations.len() < MAX_VIOLATIONS {
            self.report.violations.push(report::Violation {
                at_ms: self.now.as_millis() as u64,
                invariant: invariant.to_string(),
                detail,
                replay: format!("mesh sim SCENARIO --seed {}", self.seed),
            });
        }
    }

    /// Runs to the end; returns the report and the run's costs.
    pub fn run(self) -> (Report, Perf) {
        self.run_with_progress(|_, _| {})
    }

    /// The same, calling `progress(simulated so far, events)` about every 5 s of wall time
    /// (the CLI prints it: a big run takes minutes).
    pub fn run_with_progress(mut self, mut progress: impl FnMut(Duration, u64)) -> (Report, Perf) {
        let wall = Instant::now();
        let mut told = wall;
        let end = self.scenario.duration;
        while let Some(Reverse(due)) = self.queue.pop() {
            let at = due.at();
            if at > end {
                break;
            }
            if self.processed.is_multiple_of(4096) && told.elapsed() >= Duration::from_secs(5) {
                told = Instant::now();
                progress(at, self.processed);
            }
            let Some(ev) = self.events[due.slot as usize].take() else {
                continue;
            };
            self.free.push(due.slot);
            self.now = at;
            self.processed += 1;
            self.handle(ev);
        }
        self.now = end;
        self.finish();
        let wall = wall.elapsed();
        let perf = Perf {
            wall_s: wall.as_secs_f64(),
            simulated_s: end.as_secs_f64(),
            events: self.processed,
            wall_per_simulated_s: wall.as_secs_f64() / end.as_secs_f64().max(1e-9),
            peak_rss_mib: report::peak_rss_mib(),
        };
        (self.report, perf)
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Start { node } => self.start(node),
            Ev::Traffic => self.sample_traffic(),
            Ev::Discovered { node, found } => self.on_discovered(node, found),
            Ev::Goodbye { node, gone } => self.on_goodbye(node, gone),
            Ev::DialWake { node } => self.dial_wake(node),
            Ev::HealProbe => self.heal_probe(),
            Ev::Deliver { from, to, data } => {
                if !self.reaches(from, to) {
                    return;
                }
                let now = self.instant();
                let n = &mut self.nodes[to];
                n.msgs_in += 1;
                n.bytes_in += data.len() as u64;
                let from_peer = self.nodes[from].peer;
                if let Some(m) = self.nodes[to].membership.as_mut() {
                    m.on_datagram(from_peer, &data, now);
                }
                self.after_input(to);
            }
            Ev::Wake { node } => {
                if self.nodes[node].wake != Some(self.now) || !self.up(node) {
                    return;
                }
                self.nodes[node].wake = None;
                self.after_input(node);
            }
            Ev::Connect { a, b } => self.connect(a, b),
            Ev::Disconnect { a, b } => {
                // Still unreachable? (A heal or restart in between reconnects instead.)
                let gone = !self.up(b) || !self.same_side(a, b) || !self.nodes[b].links[a];
                if self.up(a) && self.nodes[a].links[b] && gone {
                    self.drop_link(a, b);
                    self.after_input(a);
                }
            }
            Ev::CloseDead { a, b } => {
                let peer = self.nodes[b].peer;
                let still_dead = self.nodes[a].membership.as_ref().is_some_and(|m| {
                    m.peer(&peer).is_some_and(|r| {
                        r.state == PeerState::Dead && r.bump >= self.current_bump(b)
                    })
                });
                if self.up(a) && self.nodes[a].links[b] && still_dead {
                    self.drop_link(a, b);
                    self.after_input(a);
                    // The other side hears the close one latency later, if it can.
                    if self.up(b) && self.same_side(a, b) {
                        let d = self.latency(a, b);
                        self.schedule(self.now + d, Ev::Disconnect { a: b, b: a });
                    }
                }
            }
            Ev::LeaveNotice {
                from,
                to,
                leaver,
                bump,
            } => {
                if !self.up(to) || !self.same_side(from, to) {
                    return;
                }
                let now = self.instant();
                let (from_peer, leaver_peer) = (self.nodes[from].peer, self.nodes[leaver].peer);
                let news = self.nodes[to]
                    .membership
                    .as_mut()
                    .is_some_and(|m| m.on_leave_notice(from_peer, leaver_peer, bump, now));
                self.after_input(to);
                if news {
                    // Relayed once to its own links, as the node actor does.
                    let targets: Vec<usize> = (0..self.nodes.len())
                        .filter(|&p| p != leaver && self.nodes[to].links[p])
                        .collect();
                    for p in targets {
                        let d = self.latency(to, p);
                        self.schedule(
                            self.now + d,
                            Ev::LeaveNotice {
                                from: to,
                                to: p,
                                leaver,
                                bump,
                            },
                        );
                    }
                }
            }
            Ev::Action(i) => {
                let action = self.scenario.timeline[i].action.clone();
                self.act(action);
            }
            Ev::ChurnTick => self.churn_tick(),
            Ev::Check { what } => self.check(what),
            other => self.handle_stack(other),
        }
    }

    /// The incarnation node `i` goes by now: its membership renews it (one more) when it learns
    /// that others declared it dead, as after a partition.
    pub(crate) fn current_bump(&self, i: usize) -> u64 {
        self.nodes[i]
            .membership
            .as_ref()
            .map_or(self.nodes[i].bump, |m| m.local_member().bump)
    }

    /// Whether a message from `from` reaches `to` now: `to` is up, linked to `from`, on its
    /// side of any partition.
    fn reaches(&self, from: usize, to: usize) -> bool {
        self.up(to) && self.nodes[to].links[from] && self.same_side(from, to)
    }

    fn same_side(&self, a: usize, b: usize) -> bool {
        self.nodes[a].side == self.nodes[b].side
    }

    /// Starts (or restarts) node `i` as a new incarnation, and connects it to every up node it
    /// can reach (discovery finds them at once on a LAN).
    fn start(&mut self, i: usize) {
        if self.up(i) {
            return;
        }
        // The agent's bump is the wall clock at start; here a time base plus simulated ms.
        let bump = 1_700_000_000_000 + self.now.as_millis() as u64 + 1;
        let bump = bump.max(self.nodes[i].bump + 1);
        let seed = self.rng.random::<u64>();
        let peer = self.nodes[i].peer;
        let n = &mut self.nodes[i];
        n.bump = bump;
        let mut membership = Membership::new(peer, bump, &self.config, seed);
        membership.track_changed_peers();
        n.membership = Some(membership);
        n.view.iter_mut().for_each(|v| *v = UNKNOWN);
        n.links.iter_mut().for_each(|l| *l = false);
        n.wake = None;
        self.start_dialing(i);
        self.after_input(i);
        if let Some(fleet) = self.fleet.as_mut() {
            let outs = fleet.start(i, &peer, self.now, seed ^ 0x5eed);
            // Spread over the interval without a random draw (membership-only runs draw none).
            let offset = Duration::from_millis((i as u64 * 137) % ANTI_ENTROPY.as_millis() as u64);
            self.schedule(self.now + offset, Ev::AntiEntropy { node: i, bump });
            self.apply(outs);
        }
    }

    fn connect_delay(&mut self) -> Duration {
        let (lo, hi) = (
            CONNECT_MIN.as_micros() as u64,
            CONNECT_MAX.as_micros() as u64,
        );
        Duration::from_micros(self.rng.random_range(lo..=hi))
    }

    /// A link that `a` dialed to `b` comes up: both admit the other.
    fn connect(&mut self, a: usize, b: usize) {
        if !self.up(a) || !self.up(b) || !self.same_side(a, b) {
            return;
        }
        if self.nodes[a].links[b] && self.nodes[b].links[a] {
            return;
        }
        self.dial_connected(a, b);
        let now = self.instant();
        for (x, y) in [(a, b), (b, a)] {
            self.nodes[x].links[y] = true;
            let (peer, bump) = (self.nodes[y].peer, self.current_bump(y));
            if let Some(m) = self.nodes[x].membership.as_mut() {
                m.on_admitted(peer, bump, now);
            }
            self.after_input(x);
            if let Some(fleet) = self.fleet.as_mut() {
                let outs = fleet.link_up(x, y, peer, self.now);
                self.apply(outs);
            }
        }
    }

    /// What the node actor does after every input: run due timers, send what the core wants
    /// sent, note what changed, and sleep until the core's next deadline.
    fn after_input(&mut self, i: usize) {
        let now = self.instant();
        let Some(m) = self.nodes[i].membership.as_mut() else {
            return;
        };
        m.handle_timers(now);
        let out: Vec<(PeerId, Bytes)> = m.poll_transmit().collect();
        let changed = m.take_changed();
        let deadline = m.next_deadline();
        for (peer, data) in out {
            let Some(&to) = self.index.get(&peer) else {
                continue;
            };
            let n = &mut self.nodes[i];
            if !n.links[to] {
                if let Some(m) = n.membership.as_mut() {
                    m.count_undeliverable();
                }
                continue;
            }
            n.msgs_out += 1;
            n.bytes_out += data.len() as u64;
            let d = self.transmit(i, to, data.len());
            self.schedule(self.now + d, Ev::Deliver { from: i, to, data });
        }
        if changed {
            self.note_changes(i);
        }
        if let Some(at) = deadline {
            let at = at.saturating_duration_since(self.base).max(self.now);
            if self.nodes[i].wake.is_none_or(|w| at < w) {
                self.nodes[i].wake = Some(at);
                self.schedule(at, Ev::Wake { node: i });
            }
        }
    }

    /// Compares node `i`'s membership with what it last saw, and judges each new verdict.
    fn note_changes(&mut self, i: usize) {
        let Some(m) = self.nodes[i].membership.as_mut() else {
            return;
        };
        // Only the peers that changed: a full pass per change was O(N) per link of a forming
        // mesh, most of the simulator's own time at 1,000 nodes.
        let changed = m.take_changed_peers();
        let m = &*m;
        let seen: Vec<(usize, PeerState, u64)> = changed
            .into_iter()
            .filter_map(|peer| {
                let r = m.peer(&peer)?;
                Some((*self.index.get(&peer)?, r.state, r.bump))
            })
            .collect();
        for (x, state, bump) in seen {
            let c = code(state);
            let before = self.nodes[i].view[x];
            if before == c {
                continue;
            }
            self.nodes[i].view[x] = c;
            let was_down = before == code(PeerState::Dead) || before == code(PeerState::Left);
            self.dial_verdict(i, x, state, was_down);
            if let Some(fleet) = self.fleet.as_mut() {
                let peer = self.nodes[x].peer;
                let outs = fleet.membership_changed(i, &peer, state, self.now);
                self.apply(outs);
            }
            if state == PeerState::Dead && self.nodes[i].links[x] && bump >= self.current_bump(x) {
                // The agent closes the connection of an incarnation declared dead, shortly
                // after the verdict (the QUIC idle timeout is only a backstop).
                self.schedule(
                    self.now + crate::node::DEAD_CLOSE_GRACE,
                    Ev::CloseDead { a: i, b: x },
                );
            }
            match state {
                PeerState::Dead | PeerState::Left => self.on_verdict(i, x, bump, state),
                PeerState::Suspect => self.report.membership.suspicions += 1,
                PeerState::Alive => {}
            }
        }
    }

    /// Node `a` loses its link to `b`: the planner, membership and the fleet hear of it. The
    /// caller polls `a`'s membership core afterwards.
    fn drop_link(&mut self, a: usize, b: usize) {
        self.nodes[a].links[b] = false;
        self.dial_disconnected(a, b);
        let peer = self.nodes[b].peer;
        if let Some(m) = self.nodes[a].membership.as_mut() {
            m.on_disconnected(&peer);
        }
        if let Some(fleet) = self.fleet.as_mut() {
            fleet.link_down(a, peer);
        }
    }

    fn on_verdict(&mut self, observer: usize, x: usize, bump: u64, state: PeerState) {
        if let Some(&o) = self.outage_of.get(&(x, bump)) {
            let outage = &mut self.outages[o];
            if let Some(pos) = outage.waiting.iter().position(|w| *w == observer) {
                outage.waiting.swap_remove(pos);
                let took = (self.now - outage.at).as_secs_f64() * 1000.0;
                if outage.graceful {
                    self.report.membership.leave_ms.push(took);
                } else {
                    self.report.membership.detection_ms.push(took);
                }
                if outage.waiting.is_empty() {
                    let all = took;
                    if outage.graceful {
                        self.report.membership.leave_all_ms.push(all);
                    } else {
                        self.report.membership.detection_all_ms.push(all);
                    }
                }
            }
            return;
        }
        // A verdict about a node that is up, in that incarnation, reachable from the observer,
        // and not recently cut off: false.
        let x_node = &self.nodes[x];
        let fair_cut = [x_node.cut_until, self.nodes[observer].cut_until]
            .into_iter()
            .flatten()
            .any(|until| self.now <= until + CUT_GRACE);
        if self.up(x) && self.current_bump(x) == bump && self.same_side(observer, x) && !fair_cut {
            self.report.membership.false_dead += 1;
            let (o, v) = (observer, x);
            self.violation(
                "no false dead",
                format!("node {o} declared node {v} {state} while it was up and reachable"),
            );
        }
    }
}
