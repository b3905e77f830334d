//! The dial planner: who this node dials, and when. Sans-IO: it takes `now` and events, and
//! returns the dials to start; the node actor does the dialing.
//!
//! Inputs: discovery (found, lost), admission (a peer's listen addresses), connections (up,
//! down), dial failures (an address that answered with another peer id), membership (a peer
//! declared dead, or gone for good). Output: [`Dial`]s from [`DialPlanner::poll`], and
//! [`DialStats`] for `mesh status`. It does not own connections, admission or membership.
//!
//! The rules:
//! - A newly discovered peer is dialed at once, whichever id is lower: the side that learns
//!   first dials. When both dial at the same time, the pair briefly holds two connections, and
//!   [`duplicates_to_close`] keeps one (the one the lower id dialed) on both sides.
//! - A target that is not connected is redialed with a doubling backoff from [`REDIAL_MIN`] up
//!   to the profile's `redial_max`.
//! - A peer declared dead is redialed at a pace set by a budget, for [`DEAD_GRACE`] (a healed
//!   partition is noticed within a redial), then at most once per [`DEAD_REDIAL_MAX`]. The
//!   budget is for the whole mesh: [`DEAD_DIALS_PER_MESH`] dials of dead peers per redial
//!   interval, each node taking its share (divided among the members it is linked to, at most
//!   [`DEAD_DIALS_PER_INTERVAL`]), and the dead peers sharing it: many dead at once (a
//!   partition), or many observers of one dead peer (a big mesh), each dial that much slower.
//!   The first redial after the verdict comes at a point of that pace set by the pair of ids,
//!   so a mesh's observers do not all dial the dead peer at once.
//! - A peer that left, or that discovery lost, is not dialed until discovered again.
//! - Dead, left and lost peers are forgotten [`FORGET_AFTER`] after they went.
//! - An address that answers with another peer id means the old identity is gone from that
//!   host: the old identity's target is forgotten with all its addresses (its other ones are
//!   the same host's, often unreachable ones such as a link-local address). A reinstalled host
//!   or a reused DHCP lease otherwise gets a QUIC handshake from every agent every couple of
//!   seconds, for every identity it ever had. A live peer that only moved is found again by
//!   discovery, and dials us itself.
//! - Members the document lists (their recorded addresses: peer exchange) become targets
//!   too, so knowing one member is enough to reach all; an identity found gone or forgotten
//!   is not brought back by the document (only by discovery or a connection).
//! - A target never reached is dialed every [`DEAD_REDIAL_MAX`] after [`UNREACHED_DIALS`]
//!   failed dials, and forgotten [`FORGET_AFTER`] after it became a target: stale rendezvous
//!   registrations and records of crashed members cost one dial a minute, for an hour.
//! - QUIC first: the first dial of a series (after a connection, or a new target) takes the
//!   QUIC addresses alone, later ones every address (the swarm tries them at once, and TCP
//!   wins where UDP is blocked). While all of this node's links are TCP (UDP blocked here),
//!   every dial takes every address at once. A `--peer IP:PORT` is one static peer over QUIC
//!   and TCP.
//! - Static peers (`--peer`) are addresses: dialed until connected, never forgotten; the peer
//!   id they answer with is learned, and replaced when another answers there.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

use crate::membership::PeerState;

/// First redial delay after a failed dial; doubles up to the profile's `redial_max`.
pub const REDIAL_MIN: Duration = Duration::from_millis(250);
/// How long a peer declared dead is still redialed at the profile's pace: a partition shorter
/// than this is healed within one `redial_max` (the heal benchmark partitions for 30 s).
pub const DEAD_GRACE: Duration = Duration::from_secs(60);
/// Longest wait between redials of a peer dead for longer than [`DEAD_GRACE`]: one QUIC
/// initial a minute per dead identity costs nothing, and a longer partition still heals
/// within a minute (at once when discovery announces the peer again).
pub const DEAD_REDIAL_MAX: Duration = Duration::from_secs(60);
/// How long a dead, left or lost peer is remembered as a dial target. Discovery adds it back
/// if it returns; the bound keeps identity churn from growing the target list forever.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Most dial targets remembered (discovered or learned). Bounds memory against a LAN flooded
/// with fake advertisements; the target with the most failed dials is evicted first.
pub const MAX_DIAL_TARGETS: usize = 1024;

/// Dials of dead peers per redial interval, shared by all of them (see [`DialPlanner::poll`]).
/// Measured in `mesh sim` (`crash-partition-heal`, 100 nodes cut in two for a minute): every
/// dead peer at the profile's pace made each node dial its ~50 cut-off peers every 0.5 s,
/// 100 dials a second each holding a QUIC handshake until it timed out. With the budget the
/// run dials 5x less, and the heal (every node sees every other alive) takes 0.3-0.8 s
/// instead of 0.1 s: the first links across carry the gossip that brings the rest back.
pub const DEAD_DIALS_PER_INTERVAL: usize = 4;

/// Dials of dead peers per redial interval by all the members linked together: each node's
/// share is this divided by the number of members it is linked to (itself included), at most
/// [`DEAD_DIALS_PER_INTERVAL`]. Up to 4 members nothing changes; a side of a partition, however
/// big, dials across ~32 times a second at the full profile's pace, and one dial across is
/// enough to heal. Measured in `mesh sim` (`churn-1000`: 1,000 nodes, 5 % crashing a minute,
/// ~25 dead at any time): with the per-node budget alone each node started 12.5 dials a
/// second, most of them at dead peers (each dead address received ~300 QUIC initials a
/// second from the mesh); with this budget the run dials 1.7 M times instead of 7.5 M, most
/// of them the links of the mesh forming and of members coming back, with the same detection.
pub const DEAD_DIALS_PER_MESH: f64 = 16.0;

/// Failed dials after which a target never reached is dialed only every [`DEAD_REDIAL_MAX`]:
/// 8 dials at the doubling pace span ~12 s. A rendezvous point keeps dead nodes' registrations
/// for their TTL (2 h) and the document keeps records of members that crashed; without this
/// each would be dialed every couple of seconds.
pub const UNREACHED_DIALS: u32 = 8;
/// Most identities remembered as gone (answered for by another peer id at their address, or
/// forgotten): the document does not bring them back as dial targets. Discovery does.
pub const MAX_GONE: usize = 1024;

/// Most addresses remembered per target: a host has a few (IPv4 and IPv6, QUIC and TCP,
/// an observed public one); the bound keeps a peer from making us dial a long list.
pub const MAX_TARGET_ADDRS: usize = 16;

/// A dial for the node actor to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dial {
    /// Dial `peer` at any of `addrs` (the connection must prove it is `peer`).
    Peer { peer: PeerId, addrs: Vec<Multiaddr> },
    /// Dial a static address whose peer id is not known yet.
    Address(Multiaddr),
}

/// Counters for `mesh status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DialStats {
    /// Dials started (peers and static addresses).
    pub dials: u64,
    /// Dials that reached another peer id than the one dialed.
    pub wrong_peer_id: u64,
    /// Targets forgotten (dead, left or lost too long, or no address left).
    pub forgotten: u64,
    /// Targets remembered now.
    pub targets: usize,
}

/// Why a target is, or is not, dialed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Dialed while not connected.
    Active,
    /// Left, or lost by discovery: not dialed until discovered again.
    Paused { since: Instant },
    /// Declared dead by membership: dialed, slower after [`DEAD_GRACE`].
    Dead { since: Instant },
}

/// A peer we may dial, and when.
#[derive(Debug)]
struct Target {
    addrs: Vec<Multiaddr>,
    next_dial: Instant,
    failures: u32,
    standing: Standing,
    /// Whether a connection to it was ever up (since it became a target).
    reached: bool,
    /// Whether a connection to it is up (mirrors `DialPlanner::connected`, so the passes over
    /// every target need no lookup).
    connected: bool,
    /// When it became a target, or was last connected: a target never reached is forgotten
    /// [`FORGET_AFTER`] after this.
    since: Instant,
    /// Where it is filed in the planner's indexes (see [`DialPlanner::resettle`]).
    filed: Filed,
}

/// Where a target is filed in [`DialPlanner`]'s indexes. A target that is active and
/// connected (every target, in a formed mesh) is filed nowhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Filed {
    /// When it is next dialed, if it is dialed at all (not paused, connected or addressless).
    due: Option<Instant>,
    /// When it is forgotten, if ever.
    forget: Option<Instant>,
    /// Whether it counts against the dead peers' dial budget.
    dead: bool,
}

impl Target {
    fn filing(&self) -> Filed {
        if self.standing == Standing::Active && self.connected {
            return Filed::default();
        }
        let dialed = !matches!(self.standing, Standing::Paused { .. })
            && !self.addrs.is_empty()
            && !self.connected;
        Filed {
            due: dialed.then_some(self.next_dial),
            forget: match self.standing {
                Standing::Active if self.reached => None,
                Standing::Active => Some(self.since + FORGET_AFTER),
                Standing::Paused { since } | Standing::Dead { since } => Some(since + FORGET_AFTER),
            },
            dead: matches!(self.standing, Standing::Dead { .. }) && !self.connected,
        }
    }
}

impl Target {
    /// Adds addresses not yet known; past [`MAX_TARGET_ADDRS`] the oldest are forgotten
    /// (a host that changed address many times, or a peer that lists too many).
    fn add_addrs(&mut self, addrs: impl IntoIterator<Item = Multiaddr>) {
        for addr in addrs {
            if !self.addrs.contains(&addr) {
                self.addrs.push(addr);
            }
        }
        let excess = self.addrs.len().saturating_sub(MAX_TARGET_ADDRS);
        self.addrs.drain(..excess);
    }
}

/// A `--peer` (or `--rendezvous`) endpoint: its addresses, one per transport (QUIC first).
#[derive(Debug)]
struct StaticPeer {
    addrs: Vec<Multiaddr>,
    /// Which address the next dial by address tries: a dial whose peer id is unknown takes
    /// one address, and a failure moves on to the next (QUIC blocked: TCP next time).
    next_addr: usize,
    /// From the address's `/p2p/ID`, or learned on connection; replaced when another peer
    /// answers at the address.
    peer: Option<PeerId>,
    next_dial: Instant,
    failures: u32,
}

/// Who to dial and when (see the module doc for the rules).
#[derive(Debug)]
pub struct DialPlanner {
    local: PeerId,
    redial_max: Duration,
    /// Whether a series of dials starts with QUIC alone (see the module doc); off while this
    /// node's links are all TCP, a sign that UDP does not pass here.
    quic_first: bool,
    /// At most [`MAX_DIAL_TARGETS`]. Hashed, not ordered: nothing depends on its order (due
    /// dials come out in peer id order, [`DialPlanner::filed_until`], and eviction picks by
    /// failures, then peer id), and [`DialPlanner::poll`] looks up every due target; in a
    /// B-tree of 1,000 peer ids such lookups were a large part of a 1,000-node `mesh sim` run.
    targets: HashMap<PeerId, Target>,
    /// The targets to dial, by when they are due: [`DialPlanner::poll`] and
    /// [`DialPlanner::next_deadline`] read only the head. Passing over every target on each
    /// poll was a third of the wall time of a 1,000-node `mesh sim` run; passing over the
    /// targets not both active and connected (the ones down, ~25 per node in a 1,000-node mesh
    /// with 5 % churn a minute, each polled for at its own time) was still a quarter.
    due: BTreeSet<(Instant, PeerId)>,
    /// The targets to forget, by when.
    expiring: BTreeSet<(Instant, PeerId)>,
    /// Targets dead and not connected: they share [`DEAD_DIALS_PER_INTERVAL`].
    dead: usize,
    statics: Vec<StaticPeer>,
    connected: BTreeSet<PeerId>,
    /// Identities forgotten, oldest first (see [`MAX_GONE`]).
    gone: std::collections::VecDeque<PeerId>,
    stats: DialStats,
}

/// The wait before the next redial after `failures` failed dials, at most `max`.
fn backoff(failures: u32, max: Duration) -> Duration {
    REDIAL_MIN.saturating_mul(1u32 << failures.min(8)).min(max)
}

impl DialPlanner {
    /// A planner for `local`; static peers are dialed at the first [`DialPlanner::poll`].
    pub fn new(
        local: PeerId,
        static_peers: &[Multiaddr],
        redial_max: Duration,
        now: Instant,
    ) -> Self {
        Self {
            local,
            redial_max,
            quic_first: true,
            targets: HashMap::new(),
            due: BTreeSet::new(),
            expiring: BTreeSet::new(),
            dead: 0,
            statics: group_endpoints(static_peers)
                .into_iter()
                .map(|addrs| StaticPeer {
                    peer: addrs.iter().find_map(peer_of),
                    addrs,
                    next_addr: 0,
                    next_dial: now,
                    failures: 0,
                })
                .collect(),
            connected: BTreeSet::new(),
            gone: std::collections::VecDeque::new(),
            stats: DialStats::default(),
        }
    }

    /// Whether to start a series of dials with QUIC alone. The node turns it off while it has
    /// links and all of them are TCP: UDP most likely does not pass here, and waiting for a
    /// QUIC handshake to time out first would only delay every link by half a second.
    pub fn set_quic_first(&mut self, on: bool) {
        self.quic_first = on;
    }

    /// Discovery found `peer` at `addrs`: dialed at once if new, or back from being gone.
    pub fn on_discovered(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, now: Instant) {
        if peer == self.local {
            return;
        }
        let target = self.target_entry(peer, now);
        target.add_addrs(addrs);
        if target.standing != Standing::Active {
            target.standing = Standing::Active;
            target.failures = 0;
            target.next_dial = now;
        }
        self.resettle(&peer);
    }

    /// Files `peer` afresh in the indexes after a change to its target. Every change to a
    /// target's standing, connection, addresses, dial time or age is followed by this.
    fn resettle(&mut self, peer: &PeerId) {
        let Some(t) = self.targets.get_mut(peer) else {
            return;
        };
        let new = t.filing();
        let old = std::mem::replace(&mut t.filed, new);
        if old != new {
            self.unfile(peer, old);
            self.file(peer, new);
        }
    }

    fn file(&mut self, peer: &PeerId, f: Filed) {
        if let Some(at) = f.due {
            self.due.insert((at, *peer));
        }
        if let Some(at) = f.forget {
            self.expiring.insert((at, *peer));
        }
        self.dead += usize::from(f.dead);
    }

    fn unfile(&mut self, peer: &PeerId, f: Filed) {
        if let Some(at) = f.due {
            self.due.remove(&(at, *peer));
        }
        if let Some(at) = f.forget {
            self.expiring.remove(&(at, *peer));
        }
        self.dead -= usize::from(f.dead);
    }

    /// The peers filed in `index` up to `now`, in peer id order (the order dials and
    /// forgetting take, as when they came from a scan of the targets in peer id order).
    fn filed_until(index: &BTreeSet<(Instant, PeerId)>, now: Instant) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = index
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, p)| *p)
            .collect();
        peers.sort_unstable();
        peers
    }

    /// `peer`'s target, made (active, due at `now`) if it is new; room is made for it first.
    fn target_entry(&mut self, peer: PeerId, now: Instant) -> &mut Target {
        self.make_room(&peer);
        self.gone.retain(|p| *p != peer);
        let connected = self.connected.contains(&peer);
        self.targets.entry(peer).or_insert(Target {
            connected,
            addrs: Vec::new(),
            next_dial: now,
            failures: 0,
            standing: Standing::Active,
            reached: false,
            since: now,
            filed: Filed::default(),
        })
    }

    /// The document lists `peer` as a member at `addrs` (peer exchange: knowing one member is
    /// enough to reach all). A new target is dialed at once; a known one only gains the
    /// addresses (its standing is membership's and discovery's to set). An identity found
    /// gone, or that left, is not brought back.
    pub fn on_member_addrs(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, now: Instant) {
        if peer == self.local || addrs.is_empty() {
            return;
        }
        if let Some(t) = self.targets.get_mut(&peer) {
            t.add_addrs(addrs);
            self.resettle(&peer);
            return;
        }
        if self.gone.contains(&peer) {
            return;
        }
        self.target_entry(peer, now).add_addrs(addrs);
        self.resettle(&peer);
    }

    /// `peer` is forgotten as a target and remembered as gone.
    fn forget(&mut self, peer: PeerId) {
        if let Some(t) = self.targets.remove(&peer) {
            self.stats.forgotten += 1;
            self.unfile(&peer, t.filed);
        }
        if !self.gone.contains(&peer) {
            if self.gone.len() >= MAX_GONE {
                self.gone.pop_front();
            }
            self.gone.push_back(peer);
        }
    }

    /// Discovery says `peer` withdrew (goodbye, or its record expired): stop dialing it.
    pub fn on_discovery_lost(&mut self, peer: &PeerId, now: Instant) {
        self.pause(peer, now);
    }

    /// An admitted peer told us its listen addresses: remember them, so it is redialed after a
    /// disconnect even when discovery stays silent.
    pub fn on_listen_addrs(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, now: Instant) {
        if peer == self.local {
            return;
        }
        let target = self.target_entry(peer, now);
        target.standing = Standing::Active;
        target.add_addrs(addrs);
        self.resettle(&peer);
    }

    /// A connection to `peer` is up. `dialed` is the address we dialed it at (`None` when it
    /// dialed us).
    pub fn on_connected(&mut self, peer: PeerId, dialed: Option<&Multiaddr>, now: Instant) {
        self.connected.insert(peer);
        if let Some(t) = self.targets.get_mut(&peer) {
            t.connected = true;
            t.standing = Standing::Active;
            t.reached = true;
            t.since = now;
            if dialed.is_some() {
                t.failures = 0;
            }
            t.next_dial = t.next_dial.max(now);
        }
        self.resettle(&peer);
        if let Some(addr) = dialed
            && let Some(s) = self
                .statics
                .iter_mut()
                .find(|s| s.addrs.iter().any(|a| same_endpoint(a, addr)) || s.peer == Some(peer))
        {
            s.peer = Some(peer);
            s.failures = 0;
        }
    }

    /// The last connection to `peer` closed: redialed soon, unless it is gone.
    pub fn on_disconnected(&mut self, peer: &PeerId, now: Instant) {
        self.connected.remove(peer);
        let first_dead = self.first_dead_dial(peer, now);
        if let Some(t) = self.targets.get_mut(peer) {
            t.connected = false;
            t.next_dial = match t.standing {
                // Declared dead while the link lingered: its first redial is spread.
                Standing::Dead { .. } if t.reached => first_dead,
                _ => t.next_dial.min(now + REDIAL_MIN),
            };
        }
        self.resettle(peer);
    }

    /// A dial of `expected` at `addr` reached `obtained` instead: `expected` is gone from that
    /// host, and its target is forgotten (unless it is connected anyway). A static peer at
    /// that address is `obtained` from now on.
    pub fn on_wrong_peer_id(
        &mut self,
        expected: &PeerId,
        obtained: PeerId,
        addr: &Multiaddr,
        _now: Instant,
    ) {
        self.stats.wrong_peer_id += 1;
        if !self.connected.contains(expected) {
            self.forget(*expected);
        }
        for s in &mut self.statics {
            if s.addrs.iter().any(|a| same_endpoint(a, addr)) && s.peer == Some(*expected) {
                s.peer = Some(obtained);
            }
        }
    }

    /// Membership's verdict on `peer` changed: dead peers are redialed slower, peers that left
    /// are not redialed until discovered again, and a live one is dialed normally.
    pub fn on_membership(&mut self, peer: &PeerId, state: PeerState, now: Instant) {
        match state {
            PeerState::Dead => {
                let first_dead = self.first_dead_dial(peer, now);
                if let Some(t) = self.targets.get_mut(peer)
                    && t.standing == Standing::Active
                    && !self.connected.contains(peer)
                {
                    t.standing = Standing::Dead { since: now };
                    // A peer we were linked to: every member saw it die at the same moment.
                    if t.reached {
                        t.next_dial = first_dead;
                    }
                }
            }
            PeerState::Left => self.pause(peer, now),
            PeerState::Alive | PeerState::Suspect => {
                if let Some(t) = self.targets.get_mut(peer)
                    && matches!(t.standing, Standing::Dead { .. })
                {
                    // Back: dialed at once, with a fresh backoff.
                    t.standing = Standing::Active;
                    t.failures = 0;
                    t.next_dial = now;
                }
            }
        }
        self.resettle(peer);
    }

    /// The dials due at `now`; targets whose peer is in admission backoff (`in_backoff`) wait.
    /// Forgets targets gone longer than [`FORGET_AFTER`].
    pub fn poll(&mut self, now: Instant, in_backoff: impl Fn(&PeerId) -> bool) -> Vec<Dial> {
        for peer in Self::filed_until(&self.expiring, now) {
            self.forget(peer);
        }
        // One link across a healed partition is enough: the gossip it carries brings the rest
        // back alive, and a peer back alive is dialed at once.
        let dead_pace = self.dead_pace();
        let mut dials = Vec::new();
        for peer in Self::filed_until(&self.due, now) {
            if in_backoff(&peer) {
                continue;
            }
            let t = self
                .targets
                .get_mut(&peer)
                .expect("every filed peer has a target");
            // A dead peer is dialed at the budget's pace, without the doubling from
            // REDIAL_MIN: membership's verdict already took several failed probes.
            let wait = match t.standing {
                Standing::Dead { since } if now.saturating_duration_since(since) >= DEAD_GRACE => {
                    DEAD_REDIAL_MAX.max(dead_pace)
                }
                Standing::Dead { .. } => dead_pace,
                _ if !t.reached && t.failures >= UNREACHED_DIALS => {
                    backoff(t.failures, DEAD_REDIAL_MAX)
                }
                _ => backoff(t.failures, self.redial_max),
            };
            // Set the next attempt now; a connection resets it.
            t.next_dial = now + wait;
            t.failures = t.failures.saturating_add(1);
            let mut addrs = t.addrs.clone();
            crate::transport::quic_first(&mut addrs);
            // The first dial of a series tries QUIC alone, so a host that speaks both links
            // over QUIC; the next ones add TCP (UDP blocked: linked ~0.75 s later).
            if self.quic_first && t.failures == 1 && addrs.iter().any(crate::transport::is_quic) {
                addrs.retain(crate::transport::is_quic);
            }
            self.resettle(&peer);
            dials.push(Dial::Peer { peer, addrs });
        }
        for s in &mut self.statics {
            if s.next_dial > now
                || s.peer
                    .is_some_and(|p| self.connected.contains(&p) || in_backoff(&p))
            {
                continue;
            }
            s.next_dial = now + backoff(s.failures, self.redial_max);
            s.failures = s.failures.saturating_add(1);
            dials.push(match s.peer {
                Some(peer) => {
                    let mut addrs = s.addrs.clone();
                    if self.quic_first
                        && s.failures == 1
                        && addrs.iter().any(crate::transport::is_quic)
                    {
                        addrs.retain(crate::transport::is_quic);
                    }
                    Dial::Peer { peer, addrs }
                }
                None => {
                    let addr = s.addrs[s.next_addr % s.addrs.len()].clone();
                    s.next_addr = s.next_addr.wrapping_add(1);
                    Dial::Address(addr)
                }
            });
        }
        self.stats.dials += dials.len() as u64;
        dials
    }

    /// The wait between dials of each dead peer: this node's share of
    /// [`DEAD_DIALS_PER_MESH`] (at most [`DEAD_DIALS_PER_INTERVAL`]) per redial interval,
    /// shared by the dead peers, and never shorter than the redial interval.
    fn dead_pace(&self) -> Duration {
        let linked = (self.connected.len() + 1) as f64;
        let share = (DEAD_DIALS_PER_MESH / linked).min(DEAD_DIALS_PER_INTERVAL as f64);
        // At most FORGET_AFTER (a dead peer is forgotten by then anyway); bounds the product.
        self.redial_max
            .mul_f64((self.dead.max(1) as f64 / share).max(1.0))
            .min(FORGET_AFTER)
    }

    /// When a peer just declared dead is first redialed: at a point of the dead pace set by
    /// the pair of ids (at least [`REDIAL_MIN`] away), so the members of a big mesh spread
    /// their dials of it over the pace instead of all dialing it at once.
    fn first_dead_dial(&self, peer: &PeerId, now: Instant) -> Instant {
        use std::hash::{Hash, Hasher};
        // SipHash with fixed keys: the same pair gives the same point on every run.
        let mut h = std::hash::DefaultHasher::new();
        self.local.hash(&mut h);
        peer.hash(&mut h);
        let point = h.finish() as f64 / u64::MAX as f64;
        now + REDIAL_MIN.max(self.dead_pace().mul_f64(point))
    }

    /// When [`DialPlanner::poll`] next has something to do, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let due = self.due.first().map(|(at, _)| *at);
        let forget = self.expiring.first().map(|(at, _)| *at);
        let statics = self
            .statics
            .iter()
            .filter(|s| s.peer.is_none_or(|p| !self.connected.contains(&p)))
            .map(|s| s.next_dial);
        due.into_iter().chain(forget).chain(statics).min()
    }

    /// The addresses we would dial `peer` at.
    pub fn addrs_of(&self, peer: &PeerId) -> &[Multiaddr] {
        self.targets.get(peer).map_or(&[], |t| t.addrs.as_slice())
    }

    pub fn stats(&self) -> DialStats {
        DialStats {
            targets: self.targets.len(),
            ..self.stats.clone()
        }
    }

    fn pause(&mut self, peer: &PeerId, now: Instant) {
        if let Some(t) = self.targets.get_mut(peer)
            && !matches!(t.standing, Standing::Paused { .. })
        {
            t.standing = Standing::Paused { since: now };
        }
        self.resettle(peer);
    }

    /// Makes room for a target for `incoming` past [`MAX_DIAL_TARGETS`]: evicts the
    /// unconnected target with the most failed dials (of those, the highest peer id).
    fn make_room(&mut self, incoming: &PeerId) {
        if self.targets.len() < MAX_DIAL_TARGETS || self.targets.contains_key(incoming) {
            return;
        }
        if let Some(worst) = self
            .targets
            .iter()
            .filter(|(_, t)| !t.connected)
            .max_by(|(p, t), (q, u)| t.failures.cmp(&u.failures).then(p.cmp(q)))
            .map(|(p, _)| *p)
        {
            self.forget(worst);
        }
    }
}

/// Whether two multiaddrs name the same transport endpoint (a `/p2p/ID` suffix aside: libp2p
/// reports the dialed address with it).
fn same_endpoint(a: &Multiaddr, b: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    let strip = |m: &Multiaddr| -> Multiaddr {
        m.iter()
            .filter(|p| !matches!(p, Protocol::P2p(_)))
            .collect()
    };
    strip(a) == strip(b)
}

/// The peer id an address names (`/p2p/ID` at its end), if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// Groups addresses by endpoint: the same host and port number over QUIC and over TCP (what
/// `--peer IP:PORT` expands to) are one peer, dialed QUIC first. Order of first appearance
/// is kept; no group is empty.
fn group_endpoints(addrs: &[Multiaddr]) -> Vec<Vec<Multiaddr>> {
    use libp2p::multiaddr::Protocol;
    // Host and port number, without the transport: `/ip4/A` + 7400 for both
    // `/ip4/A/udp/7400/quic-v1` and `/ip4/A/tcp/7400`.
    let key = |m: &Multiaddr| -> (Multiaddr, Option<u16>) {
        let mut host = Multiaddr::empty();
        let mut port = None;
        for p in m.iter() {
            match p {
                Protocol::Udp(n) | Protocol::Tcp(n) => port = Some(n),
                Protocol::QuicV1 | Protocol::P2p(_) => {}
                other => host.push(other),
            }
        }
        (host, port)
    };
    type Endpoint = (Multiaddr, Option<u16>);
    let mut groups: Vec<(Endpoint, Vec<Multiaddr>)> = Vec::new();
    for addr in addrs {
        let k = key(addr);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, members)) if !members.contains(addr) => members.push(addr.clone()),
            Some(_) => {}
            None => groups.push((k, vec![addr.clone()])),
        }
    }
    groups
        .into_iter()
        .map(|(_, mut members)| {
            crate::transport::quic_first(&mut members);
            members
        })
        .collect()
}

/// Which connections of a pair to close when it holds more than one (both sides dialed at
/// once). Both sides keep the same one: the first that the lower id dialed, else the first;
/// the others are closed. `connections` are in the order they were established, each with
/// whether this node dialed it; `local_is_lower` says whether this node has the lower id.
pub fn duplicates_to_close<C: Copy>(local_is_lower: bool, connections: &[(C, bool)]) -> Vec<C> {
    if connections.len() < 2 {
        return Vec::new();
    }
    let keep = connections
        .iter()
        .position(|(_, we_dialed)| *we_dialed == local_is_lower)
        .unwrap_or(0);
    connections
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != keep)
        .map(|(_, (c, _))| *c)
        .collect()
}

#[cfg(test)]
#[path = "dial/tests.rs"]
mod tests;
