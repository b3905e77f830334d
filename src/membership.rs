//! Membership: which nodes of the mesh are `alive`, `suspect`, `dead` or `left`.
//!
//! A sans-IO core around [foca](https://docs.rs/foca) (SWIM with indirect probes, suspicion
//! and incarnation refutation, piggybacked gossip). It owns foca, foca's timers and the peer
//! table with per-peer liveness (RTT, last seen). It does no I/O and reads no clock: the node
//! actor feeds it received datagrams, leave notices, RTT samples and `now`, and drains
//! [`Membership::poll_transmit`] for datagrams to send to admitted peers over
//! `/mesh/membership/1` (spec: `protocol/membership.md`).
//!
//! It does not own: who may talk to us (see [`crate::admission`]), node names and hardware
//! (the node actor keeps those from the handshake), or addresses (discovery).
//!
//! Foca has no notion of a graceful leave distinct from failure, so a leaving node also sends a
//! direct leave notice to every connected peer; a `Down` member whose identity was announced as
//! leaving is shown as `left`, any other `Down` member as `dead`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{
    Codec, Foca, Identity, NoCustomBroadcast, OwnedNotification, PostcardCodec, ProbeNumber,
    Runtime, Timer,
};
use libp2p::PeerId;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// Most datagrams waiting to be sent. Foca emits a handful per probe period; a backlog this
/// large means the node actor is stuck, and dropping is what SWIM expects of a lossy network.
pub const MAX_OUTBOX: usize = 1024;

/// How long `dead` and `left` peers stay listed before they are forgotten. Like Consul's
/// reap interval: long enough for a person to notice a machine is gone.
pub const REAP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A node announces itself on each admitted link while it knows fewer members than this
/// (see [`Membership::on_admitted`]).
const ANNOUNCE_WHILE_FEWER_THAN: usize = 4;

/// Weight of a new RTT sample in the moving average (EWMA, as TCP's SRTT uses 1/8).
const RTT_ALPHA: f64 = 0.125;

/// A member's identity as foca sees it: the node id plus a `bump` that orders incarnations of
/// the same node across restarts and rejoins. Each agent start takes the wall-clock
/// milliseconds as its bump, so a restarted node always wins over its previous, dead self.
///
/// The id's bytes are held inline in its [`MemberAddr`] (no heap): foca keeps one per member
/// and compares, clones and drops one for every update it receives, so at 1,000 members a
/// `Vec` here made allocation and cache misses on comparing its bytes a fifth of the
/// membership CPU (`perf` on `mesh sim`). On the wire it is `(peer bytes, bump)` as before.
#[derive(Clone, Copy, Debug)]
pub struct MemberId {
    addr: MemberAddr,
    pub bump: u64,
}

impl PartialEq for MemberId {
    fn eq(&self, other: &Self) -> bool {
        self.bump == other.bump && self.addr == other.addr
    }
}

impl Eq for MemberId {}

impl std::hash::Hash for MemberId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.addr.hash(state);
        self.bump.hash(state);
    }
}

// On the wire a `MemberId` is `(peer, bump)`: the id's bytes (`PeerId::to_bytes()`, as bytes
// rather than a `PeerId` so that a hostile peer's garbage is a decode-time value we can reject,
// not a panic) and the bump, the serde shape of the `{ peer: Vec<u8>, bump: u64 }` it was. The
// bytes go through `serialize_bytes`/`deserialize_bytes`: the same encoding as a sequence of
// `u8` in postcard (a length, then the bytes) and in JSON (an array of numbers), without a call
// per byte or an allocation (they were a tenth of the simulator's time at 1,000 nodes).
impl Serialize for MemberId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Bytes<'a>(&'a [u8]);
        impl Serialize for Bytes<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(self.0)
            }
        }
        let mut s = serializer.serialize_struct("MemberId", 2)?;
        s.serialize_field("peer", &Bytes(self.addr.bytes()))?;
        s.serialize_field("bump", &self.bump)?;
        s.end()
    }
}

/// A node id's bytes as decoded: at most [`MemberAddr::BYTES`], longer is refused.
struct PeerBytes(MemberAddr);

impl<'de> Deserialize<'de> for PeerBytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PeerBytes;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a node id of at most {} bytes", MemberAddr::BYTES)
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<PeerBytes, E> {
                if v.len() > MemberAddr::BYTES {
                    return Err(E::invalid_length(v.len(), &self));
                }
                Ok(PeerBytes(MemberAddr::of(v)))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<PeerBytes, A::Error> {
                let mut bytes = [0u8; MemberAddr::BYTES];
                let mut len = 0;
                while let Some(b) = seq.next_element::<u8>()? {
                    if len == MemberAddr::BYTES {
                        return Err(serde::de::Error::invalid_length(len + 1, &self));
                    }
                    bytes[len] = b;
                    len += 1;
                }
                Ok(PeerBytes(MemberAddr::of(&bytes[..len])))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(rename = "MemberId")]
struct MemberIdIn {
    peer: PeerBytes,
    bump: u64,
}

impl<'de> Deserialize<'de> for MemberId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = MemberIdIn::deserialize(deserializer)?;
        Ok(Self {
            addr: wire.peer.0,
            bump: wire.bump,
        })
    }
}

impl MemberId {
    pub fn new(peer: PeerId, bump: u64) -> Self {
        Self {
            addr: MemberAddr::of(&peer.to_bytes()),
            bump,
        }
    }

    /// The node id; `None` for bytes that do not parse as one (a hostile peer's).
    pub fn peer_id(&self) -> Option<PeerId> {
        PeerId::from_bytes(self.addr.bytes()).ok()
    }

    /// The id's bytes (`PeerId::to_bytes()`).
    pub fn peer_bytes(&self) -> &[u8] {
        self.addr.bytes()
    }
}

/// A member's address as foca compares it: the node id's bytes in a fixed array, so comparing
/// allocates nothing (cloning the `Vec` for each comparison of upstream foca's linear scan was
/// most of the membership CPU time at 100 nodes: malloc, memmove, free; `perf` on `mesh sim`).
/// The patched foca finds members through a hash map of it.
#[derive(Clone, Copy, Eq, Debug)]
pub struct MemberAddr {
    /// The last 8 bytes of the id (a key's or a digest's: as good as random), first so that
    /// comparing two different addresses ends on one integer; also the hash.
    tail: u64,
    /// The length of the id bytes.
    len: u8,
    bytes: [u8; MemberAddr::BYTES],
}

// By hand: a derived one compiles to one `memcmp` of the whole struct, and the tail exists to
// end most comparisons before that.
impl PartialEq for MemberAddr {
    fn eq(&self, other: &Self) -> bool {
        self.tail == other.tail && self.len == other.len && self.bytes == other.bytes
    }
}

// The patched foca finds members through a hash map by address: the tail alone (equal
// addresses have equal tails) is a key's or a digest's last 8 bytes, as good as random.
impl std::hash::Hash for MemberAddr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.tail.hash(state);
    }
}

impl MemberAddr {
    /// The longest `PeerId::to_bytes()`: a multihash of at most 64 bytes of digest, behind one
    /// byte of code and one of length.
    const BYTES: usize = 66;

    /// `peer` is at most [`MemberAddr::BYTES`] long: any `PeerId`'s bytes are, and decoding
    /// refuses longer ones.
    fn of(peer: &[u8]) -> Self {
        let len = peer.len().min(Self::BYTES);
        let mut bytes = [0u8; Self::BYTES];
        bytes[..len].copy_from_slice(&peer[..len]);
        let mut tail = [0u8; 8];
        let n = len.min(8);
        tail[..n].copy_from_slice(&peer[len - n..len]);
        Self {
            tail: u64::from_le_bytes(tail),
            len: len as u8,
            bytes,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl Identity for MemberId {
    type Addr = MemberAddr;

    fn renew(&self) -> Option<Self> {
        // Declared down while alive (e.g. after a partition): rejoin as a newer incarnation.
        Some(Self {
            addr: self.addr,
            bump: self.bump.wrapping_add(1),
        })
    }

    fn addr(&self) -> MemberAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

/// A peer's membership state, as shown by `mesh peers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    Alive,
    Suspect,
    Dead,
    Left,
}

impl PeerState {
    /// Whether membership believes the peer is there: alive, or suspected but not yet declared
    /// dead (it may still refute).
    pub fn believed_alive(self) -> bool {
        matches!(self, PeerState::Alive | PeerState::Suspect)
    }
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerState::Alive => "alive",
            PeerState::Suspect => "suspect",
            PeerState::Dead => "dead",
            PeerState::Left => "left",
        })
    }
}

/// What membership knows of one peer.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerRecord {
    pub peer: PeerId,
    pub state: PeerState,
    /// The incarnation (see [`MemberId::bump`]) this record is about.
    pub bump: u64,
    /// When `state` last changed.
    pub since: Instant,
    /// When we last received anything from the peer.
    pub last_seen: Option<Instant>,
    /// Smoothed round-trip time of membership requests.
    pub rtt: Option<Duration>,
}

/// Timing of the failure detector. Every member of a mesh must use the same values.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// One probe of one random member per period.
    pub probe_period: Duration,
    /// How long to wait for a direct ack before asking others to probe indirectly.
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly.
    pub indirect_probes: usize,
    /// How long a member stays `suspect` (time to refute) before it is declared `dead`.
    pub suspect_to_dead: Duration,
    /// How often updates are gossiped to a few random members.
    pub gossip_period: Duration,
}

impl MembershipConfig {
    /// Tuned for a LAN (sub-millisecond RTT, reliable QUIC streams underneath). Crash to `dead`
    /// on every member is: the wait until some member probes the dead one (each member probes
    /// one member per period in a shuffled round, so with N members the first probe comes
    /// after ~N/(N+1) periods: 0.45 s at 10 hosts), one period to suspicion, `suspect_to_dead`,
    /// then the `down` verdict's gossip to the last member (one or two gossip rounds).
    /// Measured in the 10-host lab (`simulations/lab/measure.sh`): with 1 s of suspicion and
    /// 200 ms gossip, 2.5 s median and up to 3.1-4.1 s; 700 ms and 100 ms take 0.5 s off. A
    /// wrongly suspected member hears of it and refutes within one or two gossip rounds
    /// (100-200 ms) and its refutation spreads as fast, well inside 700 ms. Datagrams ride QUIC
    /// streams, so 5 % packet loss shows up as retransmission delay (tens of ms), far under the
    /// 200 ms probe RTT, not as lost probes (`tests/lab.rs` watches for false verdicts).
    pub fn lan() -> Self {
        Self {
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            indirect_probes: 3,
            suspect_to_dead: Duration::from_millis(700),
            // Gossip only sends when there are updates, and only then wakes the node actor
            // (see `Membership::next_deadline`): an idle mesh pays nothing for it.
            gossip_period: Duration::from_millis(100),
        }
    }

    fn to_foca(&self) -> foca::Config {
        let mut c = foca::Config::simple();
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.num_indirect_probes =
            NonZeroUsize::new(self.indirect_probes.max(1)).expect("max(1) is non-zero");
        // Enough retransmissions for an update to reach everyone in clusters of hundreds.
        c.max_transmissions = NonZeroU8::new(10).expect("10 is non-zero");
        c.suspect_to_down_after = self.suspect_to_dead;
        c.remove_down_after = Some(REAP_AFTER);
        // Datagrams travel on QUIC streams, so the IP MTU does not bound them; 8 KiB holds
        // dozens of member updates and stays far under the codec's frame limit.
        c.max_packet_size = NonZeroUsize::new(8 * 1024).expect("non-zero");
        c.notify_down_members = true;
        c.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.gossip_period,
            num_members: NonZeroUsize::new(3).expect("non-zero"),
        });
        c.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(30),
            num_members: NonZeroUsize::new(1).expect("non-zero"),
        });
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: NonZeroUsize::new(2).expect("non-zero"),
        });
        c
    }
}

/// Counters for `mesh status` and debugging.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MembershipStats {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Datagrams foca refused (malformed, from ourselves, too big).
    pub datagrams_rejected: u64,
    /// Datagrams dropped because the outbox was full or the target was not reachable.
    pub datagrams_dropped: u64,
}

/// Foca's side effects, collected during one call and applied afterwards.
#[derive(Default)]
struct Effects {
    sends: Vec<(MemberId, Bytes)>,
    timers: Vec<(Duration, Timer<MemberId>)>,
    notifications: Vec<OwnedNotification<MemberId>>,
}

impl Runtime<MemberId> for Effects {
    fn notify(&mut self, notification: foca::Notification<'_, MemberId>) {
        self.notifications.push(notification.to_owned());
    }
    fn send_to(&mut self, to: MemberId, data: &[u8]) {
        self.sends.push((to, Bytes::copy_from_slice(data)));
    }
    fn submit_after(&mut self, event: Timer<MemberId>, after: Duration) {
        self.timers.push((after, event));
    }
}

/// The message of a foca datagram when it is a direct probe or its ack (read from the header
/// alone); `None` for anything else, including garbage (which foca then rejects and counts).
fn probe_message(data: &[u8]) -> Option<foca::Message<MemberId>> {
    match PostcardCodec.decode_header(data).ok()?.message {
        m @ (foca::Message::Ping(_) | foca::Message::Ack(_)) => Some(m),
        _ => None,
    }
}

/// Timers by due time, then submission order (the sequence number keys `timer_events`).
type TimerQueue = BinaryHeap<Reverse<(Instant, u64)>>;

/// The earliest entry of `q`: (due time, sequence number).
fn queue_head(q: &TimerQueue) -> Option<(Instant, u64)> {
    q.peek().map(|Reverse(k)| *k)
}

/// The membership core of one node.
pub struct Membership {
    local: PeerId,
    foca: Foca<MemberId, PostcardCodec, StdRng, NoCustomBroadcast>,
    /// Pending foca timers by (deadline, sequence); the sequence keeps equal deadlines in
    /// submission order.
    timers: TimerQueue,
    /// Foca's periodic gossip timers, kept apart from the others (same sequence numbers, so
    /// the two queues merge into submission order): [`Membership::next_deadline`] leaves them
    /// out while foca has nothing to spread, and finding them among all pending timers was a
    /// pass over every one on each input (~19 % of a 1,000-node `mesh sim` churn run, where
    /// every down member holds a removal timer).
    gossip_timers: TimerQueue,
    /// Foca's `SendIndirectProbe` timers, also kept apart: once the probe they belong to is
    /// acknowledged (nearly always, well before `probe_rtt`), they only do bookkeeping, and
    /// [`Membership::next_deadline`] leaves them out (see there).
    indirect_timers: TimerQueue,
    timer_events: HashMap<u64, Timer<MemberId>>,
    timer_seq: u64,
    outbox: Vec<(PeerId, Bytes)>,
    peers: BTreeMap<PeerId, PeerRecord>,
    /// The peers `suspect` in `peers`, so [`Membership::check_suspects`] passes over them
    /// alone rather than over every peer twice a second.
    suspects: BTreeSet<PeerId>,
    /// The peers `dead` or `left` in `peers`, so the search for peers to forget passes over
    /// them alone (over every peer once a second, it was a tenth of a 1,000-node `mesh sim`).
    downs: BTreeSet<PeerId>,
    /// Incarnations that announced a graceful leave.
    leaving: HashSet<(PeerId, u64)>,
    stats: MembershipStats,
    /// Peers with an admitted connection, and the incarnation they announced. When foca
    /// renews our identity or runs out of active members it talks to no one by itself; these
    /// are re-announced to, so two nodes that each declared the other dead during a partition
    /// meet again as soon as they reconnect.
    /// Ordered, so that re-announcements go out in the same order in every run (the
    /// simulator's determinism, `crate::sim`).
    connected: BTreeMap<PeerId, u64>,
    /// Guards [`Membership::reannounce`] against re-entering itself through `apply`.
    reannouncing: bool,
    /// Set when any peer's state changed since the last [`Membership::take_changed`].
    changed: bool,
    /// The peers whose state changed since the last [`Membership::take_changed_peers`], for
    /// a caller that follows changes one by one (the simulator judges each verdict); `None`
    /// (the agent) keeps no list, so nothing grows when nobody drains it.
    changed_peers: Option<Vec<PeerId>>,
    /// Whether [`Membership::sync_table`] must read every member of foca's list rather than
    /// the ones foca reports changed: set when how the table shows a member changes by other
    /// means (leave notices, reaping).
    resync_all: bool,
    /// The addresses foca reported changed, kept to reuse the allocation.
    foca_changes: Vec<MemberAddr>,
    /// When [`Membership::handle_timers`] next looks for peers to forget: when the earliest
    /// dead or left peer is due ([`REAP_AFTER`] after it went down); `None` while none is.
    next_reap: Option<Instant>,
    /// The last direct probe (`Ping`) sent to each peer and when: its `Ack` is the peer's RTT
    /// sample, so measuring RTT costs no packet of its own. One entry per peer, replaced by the
    /// next probe, removed by the ack, and pruned with the peer table.
    probes: HashMap<PeerId, (ProbeNumber, Instant)>,
    /// Suspects this node is checking first-hand (see [`Membership::check_suspects`]): the
    /// incarnation suspected and when it was asked to answer.
    checks: BTreeMap<PeerId, (u64, Instant)>,
    /// When the checks asked last are judged.
    checks_due: Option<Instant>,
    /// When suspects are next looked for.
    next_check: Option<Instant>,
    /// How long a suspicion may last before it is checked first-hand.
    check_after: Duration,
    /// How long a checked suspect has to answer.
    check_window: Duration,
    left: bool,
}

impl Membership {
    /// `bump` orders this start against earlier ones (wall-clock ms at start); `seed` seeds
    /// foca's random choices (deterministic in simulation, random in the agent).
    pub fn new(local: PeerId, bump: u64, config: &MembershipConfig, seed: u64) -> Self {
        let foca = Foca::new(
            MemberId::new(local, bump),
            config.to_foca(),
            StdRng::seed_from_u64(seed),
            PostcardCodec,
        );
        Self {
            local,
            foca,
            timers: BinaryHeap::new(),
            gossip_timers: BinaryHeap::new(),
            indirect_timers: BinaryHeap::new(),
            timer_events: HashMap::new(),
            timer_seq: 0,
            outbox: Vec::new(),
            peers: BTreeMap::new(),
            suspects: BTreeSet::new(),
            downs: BTreeSet::new(),
            leaving: HashSet::new(),
            stats: MembershipStats::default(),
            connected: BTreeMap::new(),
            reannouncing: false,
            changed: false,
            changed_peers: None,
            next_reap: None,
            resync_all: true,
            foca_changes: Vec::new(),
            probes: HashMap::new(),
            checks: BTreeMap::new(),
            checks_due: None,
            next_check: None,
            check_after: config.suspect_to_dead + 2 * config.gossip_period,
            check_window: config.probe_period,
            left: false,
        }
    }

    /// Our own identity (node id and bump) as peers see it.
    pub fn local_member(&self) -> &MemberId {
        self.foca.identity()
    }

    pub fn stats(&self) -> &MembershipStats {
        &self.stats
    }

    /// All peers known, self excluded, ordered by node id.
    pub fn peers(&self) -> impl Iterator<Item = &PeerRecord> {
        self.peers.values()
    }

    pub fn peer(&self, peer: &PeerId) -> Option<&PeerRecord> {
        self.peers.get(peer)
    }

    /// Whether anything visible changed since the last call; resets the flag.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// From now on, keep the list of peers whose state changes, for
    /// [`Membership::take_changed_peers`]. Peers forgotten after [`REAP_AFTER`] are not listed.
    pub fn track_changed_peers(&mut self) {
        self.changed_peers.get_or_insert_with(Vec::new);
    }

    /// The peers whose state changed since the last call (in order, a peer possibly more
    /// than once); empty unless [`Membership::track_changed_peers`] was called.
    pub fn take_changed_peers(&mut self) -> Vec<PeerId> {
        self.changed_peers
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// A peer passed admission and told us its incarnation: join it (or greet it again).
    pub fn on_admitted(&mut self, peer: PeerId, bump: u64, now: Instant) {
        if self.left {
            return;
        }
        let id = MemberId::new(peer, bump);
        let leaves = self.leaving.len();
        self.leaving.retain(|(p, b)| *p != peer || *b > bump);
        if self.leaving.len() != leaves {
            // How a down member shows (`left` or `dead`) changed: sync the table afresh. Not
            // on every admission: that made each link of a forming mesh an O(N) resync.
            self.resync_all = true;
        }
        self.connected.insert(peer, bump);
        self.touch(peer, now);
        let mut fx = Effects::default();
        // A newcomer announces itself to its first few links, and their feeds list the rest of
        // the mesh. Once a few members are known it does not: every announce is answered by a
        // feed that foca applies with an O(N) scan, so announcing on every link made a mesh of
        // N forming cost N² feeds (at 300 nodes in `mesh sim`, 90 % of the sync bytes and
        // two thirds of the wall time). Later links need no announce: the handshake below
        // makes the peer alive here, and gossip spreads it. Except a peer this node holds
        // down in the incarnation it now presents (the two were cut off from each other): the
        // handshake cannot undo a `down`, the exchange does (foca tells a member it holds
        // down so, and that member rejoins as a newer incarnation).
        let held_down = self
            .peers
            .get(&peer)
            .is_some_and(|r| !r.state.believed_alive() && r.bump >= bump);
        if (held_down || self.foca.num_members() < ANNOUNCE_WHILE_FEWER_THAN)
            && let Err(e) = self.foca.announce(id, &mut fx)
        {
            tracing::debug!(%peer, error = %e, "foca announce failed");
        }
        // Treat the handshake as first-hand evidence that this incarnation is alive.
        if let Err(e) =
            self.foca
                .apply_many(std::iter::once(foca::Member::alive(id)), true, &mut fx)
        {
            tracing::debug!(%peer, error = %e, "foca apply failed");
        }
        self.apply(fx, now);
    }

    /// The last connection to `peer` closed.
    pub fn on_disconnected(&mut self, peer: &PeerId) {
        self.connected.remove(peer);
    }

    /// A membership datagram arrived from an admitted peer.
    pub fn on_datagram(&mut self, from: PeerId, data: &[u8], now: Instant) {
        self.stats.datagrams_in += 1;
        self.touch(from, now);
        if let Some(foca::Message::Ack(n)) = probe_message(data)
            && let Some((sent_n, sent)) = self.probes.get(&from).copied()
            && sent_n == n
        {
            self.probes.remove(&from);
            self.on_rtt(from, now.saturating_duration_since(sent), now);
        }
        let mut fx = Effects::default();
        if let Err(e) = self.foca.handle_data(data, &mut fx) {
            self.stats.datagrams_rejected += 1;
            tracing::debug!(%from, error = %e, "membership datagram rejected");
        }
        self.apply(fx, now);
    }

    /// Node `leaver` is leaving gracefully (incarnation `bump`); told by `from` (the leaver
    /// itself, or a member relaying). Returns true when this is news, so the caller relays it
    /// once to its own peers: nodes not directly linked to the leaver learn `left`, not `dead`.
    pub fn on_leave_notice(
        &mut self,
        from: PeerId,
        leaver: PeerId,
        bump: u64,
        now: Instant,
    ) -> bool {
        self.touch(from, now);
        if leaver == self.local || self.leaving.contains(&(leaver, bump)) {
            return false;
        }
        if self.peers.get(&leaver).is_some_and(|r| r.bump > bump) {
            // A newer incarnation is already known: the notice is stale.
            return false;
        }
        let from = leaver;
        self.leaving.insert((from, bump));
        self.resync_all = true;
        let mut fx = Effects::default();
        let _ = self.foca.apply_many(
            std::iter::once(foca::Member::down(MemberId::new(from, bump))),
            true,
            &mut fx,
        );
        self.apply(fx, now);
        if let Some(rec) = self.peers.get_mut(&from)
            && rec.bump <= bump
            && rec.state != PeerState::Left
        {
            file_state(&mut self.suspects, &mut self.downs, from, PeerState::Left);
            rec.state = PeerState::Left;
            rec.bump = bump;
            rec.since = now;
            self.changed = true;
            if let Some(list) = self.changed_peers.as_mut() {
                list.push(from);
            }
        }
        true
    }

    /// A member removed `peer` from the mesh (`mesh remove`): it is `left` from now on (and
    /// the caller never admits it again). Returns whether this is news.
    pub fn on_removed(&mut self, peer: PeerId, now: Instant) -> bool {
        let Some(bump) = self.peers.get(&peer).map(|r| r.bump) else {
            return false;
        };
        if peer == self.local || self.leaving.contains(&(peer, bump)) {
            return false;
        }
        self.on_leave_notice(self.local, peer, bump, now)
    }

    /// A round trip to `peer` took `rtt`: a direct probe and its ack.
    fn on_rtt(&mut self, peer: PeerId, rtt: Duration, now: Instant) {
        self.touch(peer, now);
        if let Some(rec) = self.peers.get_mut(&peer) {
            rec.rtt = Some(match rec.rtt {
                None => rtt,
                Some(old) => old.mul_f64(1.0 - RTT_ALPHA) + rtt.mul_f64(RTT_ALPHA),
            });
        }
    }

    /// Leave the mesh: mark ourselves down and gossip it. Further inputs are ignored.
    pub fn leave(&mut self, now: Instant) {
        if self.left {
            return;
        }
        let mut fx = Effects::default();
        if let Err(e) = self.foca.leave_cluster(&mut fx) {
            tracing::debug!(error = %e, "foca leave failed");
        }
        self.left = true;
        self.apply(fx, now);
    }

    /// The earliest instant at which [`Membership::handle_timers`] has work. Foca's periodic
    /// gossip timer fires every `gossip_period` but only sends when foca has updates to spread;
    /// while it has none, that timer is left out here, so an idle node is not woken ten times a
    /// second for nothing (measured in the 10-host lab: those wake-ups were ~0.13 % of a core
    /// per agent). It stays in the queue: an input that creates updates is followed by
    /// [`Membership::handle_timers`] (the node actor ticks after every input), which finds it
    /// due and gossips at once, and foca re-arms it for one period later.
    ///
    /// The same holds for a probe's `SendIndirectProbe` timer once the probe is acknowledged:
    /// it is left out, and runs with the next timer that does wake the node (at the latest the
    /// next probe's, which comes after it), so a probe costs one wake-up instead of two
    /// (10-host lab, idle CPU per agent: 0.38-0.40 % before, 0.30 % after).
    pub fn next_deadline(&self) -> Option<Instant> {
        let head = |q: &TimerQueue| queue_head(q).map(|(at, _)| at);
        let earliest = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut foca = head(&self.timers);
        if self.foca.updates_backlog() > 0 {
            foca = earliest(foca, head(&self.gossip_timers));
        }
        if !self.foca.probe_succeeded() {
            foca = earliest(foca, head(&self.indirect_timers));
        }
        // Suspects are looked for whenever the timers run (foca's probe timer runs them every
        // probe period); only the judging of an open check needs a wake-up of its own.
        match (foca, self.checks_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Checks first-hand every suspicion that has lasted longer than it should.
    ///
    /// Foca runs the suspect-to-down timer only on the member whose probe failed; every other
    /// member learns the verdict from the `down` update, which is piggybacked on the next 10
    /// messages to random members, and never sent again (feeds list active members only). The
    /// copies an observer receives are about Poisson-distributed with mean 10, so about one
    /// observer in e¹⁰ ≈ 22,000 per crash receives none, and keeps the node `suspect` until its
    /// own round-robin probe comes to it: up to N × `probe_period` (19-45 s seen in 100-node
    /// `mesh sim` runs, about one run in a hundred).
    ///
    /// So a suspicion older than `suspect_to_dead` plus two gossip rounds, by which time the
    /// verdict or the refutation should have arrived, is checked here: foca announces to the
    /// suspect (which answers with a feed if it is up), and a suspect that has sent nothing a
    /// probe period later is declared down. No indirect probe is made: the suspicion itself
    /// came from a member whose direct and indirect probes both failed, and this node's own
    /// announce went unanswered too. Should the peer in fact be alive (reachable from others
    /// but not from here, and its refutation lost), the `down` reaches it by gossip and foca
    /// makes it rejoin under a new incarnation, as after any false verdict.
    fn check_suspects(&mut self, now: Instant) {
        let peers = &self.peers;
        self.checks.retain(|p, (bump, _)| {
            peers
                .get(p)
                .is_some_and(|r| r.state == PeerState::Suspect && r.bump == *bump)
        });
        let due: Vec<(PeerId, u64)> = self
            .suspects
            .iter()
            .filter_map(|p| self.peers.get(p))
            .filter(|r| {
                r.state == PeerState::Suspect
                    && now.saturating_duration_since(r.since) >= self.check_after
                    && self.checks.get(&r.peer).is_none_or(|(_, asked)| {
                        now.saturating_duration_since(*asked) >= self.check_after
                    })
            })
            .map(|r| (r.peer, r.bump))
            .collect();
        if due.is_empty() {
            return;
        }
        let mut fx = Effects::default();
        for (peer, bump) in due {
            self.checks.insert(peer, (bump, now));
            if let Err(e) = self.foca.announce(MemberId::new(peer, bump), &mut fx) {
                tracing::debug!(%peer, error = %e, "foca announce to a suspect failed");
            }
        }
        self.checks_due = Some(now + self.check_window);
        self.apply(fx, now);
    }

    /// Declares down every checked suspect that is still suspect at the same incarnation and
    /// has sent nothing since it was asked.
    fn judge_checks(&mut self, now: Instant) {
        let silent: Vec<MemberId> = self
            .checks
            .iter()
            .filter(|(p, (bump, asked))| {
                self.peers.get(p).is_some_and(|r| {
                    r.state == PeerState::Suspect
                        && r.bump == *bump
                        && r.last_seen.is_none_or(|seen| seen < *asked)
                })
            })
            .map(|(p, (bump, _))| MemberId::new(*p, *bump))
            .collect();
        if silent.is_empty() {
            return;
        }
        for id in &silent {
            tracing::debug!(peer = ?id.peer_id(), "suspect silent when checked: declared down");
        }
        let mut fx = Effects::default();
        if let Err(e) =
            self.foca
                .apply_many(silent.into_iter().map(foca::Member::down), true, &mut fx)
        {
            tracing::debug!(error = %e, "foca apply failed");
        }
        self.apply(fx, now);
    }

    /// Runs every foca timer due at `now`, and forgets peers dead or left for [`REAP_AFTER`].
    pub fn handle_timers(&mut self, now: Instant) {
        loop {
            // The earliest head of the three queues: together, one queue in submission order.
            let heads = [
                queue_head(&self.timers),
                queue_head(&self.gossip_timers),
                queue_head(&self.indirect_timers),
            ];
            let Some((which, (at, seq))) = heads
                .into_iter()
                .enumerate()
                .filter_map(|(i, h)| h.map(|h| (i, h)))
                .min_by_key(|(_, h)| *h)
            else {
                break;
            };
            if at > now {
                break;
            }
            match which {
                0 => self.timers.pop(),
                1 => self.gossip_timers.pop(),
                _ => self.indirect_timers.pop(),
            };
            let Some(event) = self.timer_events.remove(&seq) else {
                continue;
            };
            let mut fx = Effects::default();
            if let Err(e) = self.foca.handle_timer(event, &mut fx) {
                tracing::debug!(error = %e, "foca timer failed");
            }
            self.apply(fx, now);
        }
        if self.checks_due.is_some_and(|at| at <= now) {
            self.checks_due = None;
            self.judge_checks(now);
        }
        if self.next_check.is_none_or(|at| at <= now) {
            self.next_check = Some(now + self.check_window);
            self.check_suspects(now);
        }
        if self.next_reap.is_some_and(|at| now < at) {
            return;
        }
        // One pass over the dead and left peers: forget those due, and sleep until the
        // earliest of the others is (a peer filed later is due later still; one whose state
        // changed since only makes the next pass early). A pass every second over every dead
        // peer was 5 % of a 1,000-node simulation.
        let peers = &self.peers;
        let mut reaped = Vec::new();
        let mut next = None;
        for p in &self.downs {
            let Some(due) = peers.get(p).map(|r| r.since + REAP_AFTER) else {
                continue;
            };
            if due <= now {
                reaped.push(*p);
            } else if next.is_none_or(|n| due < n) {
                next = Some(due);
            }
        }
        self.next_reap = next;
        if reaped.is_empty() {
            return;
        }
        for peer in reaped {
            self.peers.remove(&peer);
            self.downs.remove(&peer);
            self.probes.remove(&peer);
        }
        self.changed = true;
        self.resync_all = true;
    }

    /// Datagrams to send, in order. The caller sends each to the peer over
    /// `/mesh/membership/1` if it is admitted, and drops it otherwise.
    pub fn poll_transmit(&mut self) -> std::vec::Drain<'_, (PeerId, Bytes)> {
        self.outbox.drain(..)
    }

    /// Counts a datagram the caller could not deliver.
    pub fn count_undeliverable(&mut self) {
        self.stats.datagrams_dropped += 1;
    }

    fn touch(&mut self, peer: PeerId, now: Instant) {
        if let Some(rec) = self.peers.get_mut(&peer) {
            rec.last_seen = Some(now);
        }
    }

    fn apply(&mut self, fx: Effects, now: Instant) {
        for (after, event) in fx.timers {
            let seq = self.timer_seq;
            self.timer_seq += 1;
            let queue = match event {
                Timer::PeriodicGossip(_) => &mut self.gossip_timers,
                Timer::SendIndirectProbe { .. } => &mut self.indirect_timers,
                _ => &mut self.timers,
            };
            queue.push(Reverse((now + after, seq)));
            self.timer_events.insert(seq, event);
        }
        for (to, data) in fx.sends {
            let Some(peer) = to.peer_id() else {
                self.stats.datagrams_dropped += 1;
                continue;
            };
            if self.outbox.len() >= MAX_OUTBOX {
                self.stats.datagrams_dropped += 1;
                continue;
            }
            if let Some(foca::Message::Ping(n)) = probe_message(&data) {
                self.probes.insert(peer, (n, now));
            }
            self.stats.datagrams_out += 1;
            self.outbox.push((peer, data));
        }
        let mut reannounce = false;
        for n in fx.notifications {
            match n {
                OwnedNotification::Rejoin(id) => {
                    tracing::info!(bump = id.bump, "declared down by the mesh; rejoined");
                    reannounce = true;
                }
                // Leaving declares ourselves down on purpose.
                OwnedNotification::Defunct if self.left => {}
                OwnedNotification::Defunct => tracing::warn!("declared down by the mesh"),
                OwnedNotification::Idle => {
                    tracing::debug!("no active members");
                    reannounce = true;
                }
                OwnedNotification::Active => tracing::debug!("joined the mesh"),
                _ => {}
            }
        }
        self.sync_table(now);
        if reannounce && !self.left && !self.reannouncing {
            self.reannouncing = true;
            self.reannounce(now);
            self.reannouncing = false;
        }
    }

    /// Announces ourselves to every connected peer. Foca accepts an announce addressed to any
    /// incarnation of the receiver, so a stale bump does not matter.
    fn reannounce(&mut self, now: Instant) {
        let targets: Vec<MemberId> = self
            .connected
            .iter()
            .map(|(p, b)| MemberId::new(*p, *b))
            .collect();
        if targets.is_empty() {
            return;
        }
        let mut fx = Effects::default();
        for id in targets {
            let _ = self.foca.announce(id, &mut fx);
        }
        // Announcing cannot itself renew us or make us idle: no recursion beyond one level.
        self.apply(fx, now);
    }

    /// Brings the peer table in line with foca's member list. Foca signals up, down and
    /// renames but not suspicion; the patched foca (`vendor/foca`) lists the members whose
    /// identity or state changed, so only those are read. Reading the whole list after every
    /// input was ~15 % of a 1,000-node simulation (`perf`). Read in list order, as a pass over
    /// the whole list would.
    fn sync_table(&mut self, now: Instant) {
        let mut changes = std::mem::take(&mut self.foca_changes);
        changes.clear();
        let complete = self.foca.take_member_changes(&mut changes);
        let mut t = TableView {
            local: self.local,
            leaving: &self.leaving,
            peers: &mut self.peers,
            suspects: &mut self.suspects,
            downs: &mut self.downs,
            changed: &mut self.changed,
            changed_peers: &mut self.changed_peers,
        };
        if std::mem::take(&mut self.resync_all) || !complete {
            for member in self.foca.iter_membership_state() {
                sync_member(&mut t, member, now);
            }
        } else {
            let mut members: Vec<(usize, &foca::Member<MemberId>)> = changes
                .iter()
                .filter_map(|addr| self.foca.member_by_addr(addr))
                .collect();
            members.sort_unstable_by_key(|(pos, _)| *pos);
            members.dedup_by_key(|(pos, _)| *pos);
            for (_, member) in members {
                sync_member(&mut t, member, now);
            }
        }
        self.foca_changes = changes;
    }
}

/// The parts of [`Membership`] that [`sync_member`] writes, borrowed apart from foca.
struct TableView<'a> {
    local: PeerId,
    leaving: &'a HashSet<(PeerId, u64)>,
    peers: &'a mut BTreeMap<PeerId, PeerRecord>,
    suspects: &'a mut BTreeSet<PeerId>,
    downs: &'a mut BTreeSet<PeerId>,
    changed: &'a mut bool,
    changed_peers: &'a mut Option<Vec<PeerId>>,
}

/// Files `peer` among the suspects, the down peers or neither, by its new `state`.
fn file_state(
    suspects: &mut BTreeSet<PeerId>,
    downs: &mut BTreeSet<PeerId>,
    peer: PeerId,
    state: PeerState,
) {
    suspects.remove(&peer);
    downs.remove(&peer);
    match state {
        PeerState::Suspect => suspects.insert(peer),
        PeerState::Dead | PeerState::Left => downs.insert(peer),
        PeerState::Alive => false,
    };
}

/// Brings `member`'s row of the peer table in line with foca's view of it.
fn sync_member(t: &mut TableView<'_>, member: &foca::Member<MemberId>, now: Instant) {
    let id = member.id();
    let Some(peer) = id.peer_id() else { return };
    if peer == t.local {
        return;
    }
    let state = match member.state() {
        foca::State::Alive => PeerState::Alive,
        foca::State::Suspect => PeerState::Suspect,
        foca::State::Down if t.leaving.contains(&(peer, id.bump)) => PeerState::Left,
        foca::State::Down => PeerState::Dead,
    };
    match t.peers.get_mut(&peer) {
        Some(rec) if rec.bump > id.bump => {}
        Some(rec) => {
            // A leave notice can arrive before foca learns the member is down.
            let state = if rec.state == PeerState::Left
                && rec.bump == id.bump
                && state != PeerState::Left
            {
                PeerState::Left
            } else {
                state
            };
            if rec.state != state || rec.bump != id.bump {
                file_state(t.suspects, t.downs, peer, state);
                rec.state = state;
                rec.bump = id.bump;
                rec.since = now;
                *t.changed = true;
                if let Some(list) = t.changed_peers.as_mut() {
                    list.push(peer);
                }
            }
        }
        None => {
            file_state(t.suspects, t.downs, peer, state);
            t.peers.insert(
                peer,
                PeerRecord {
                    peer,
                    state,
                    bump: id.bump,
                    since: now,
                    last_seen: None,
                    rtt: None,
                },
            );
            *t.changed = true;
            if let Some(list) = t.changed_peers.as_mut() {
                list.push(peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Drives several cores against each other through a perfect in-memory "network" with a
    //! simulated clock: the failure detector's timing is checked without any real time.
    use super::*;
    use libp2p::identity::Keypair;

    struct Sim {
        now: Instant,
        nodes: Vec<(PeerId, Membership)>,
        /// Nodes that stopped (crashed): they neither send nor receive.
        down: HashSet<PeerId>,
        /// (observer, peer): every `down` verdict on `peer` is removed from what `observer`
        /// receives, as if each gossiped copy of it had gone to other members.
        hide_down: Option<(PeerId, PeerId)>,
    }

    impl Sim {
        fn new(n: usize) -> Self {
            let now = Instant::now();
            let nodes: Vec<_> = (0..n)
                .map(|i| {
                    let p = Keypair::generate_ed25519().public().to_peer_id();
                    (p, Membership::new(p, 1, &MembershipConfig::lan(), i as u64))
                })
                .collect();
            let mut sim = Self {
                now,
                nodes,
                down: HashSet::new(),
                hide_down: None,
            };
            // Full mesh of admissions, as on a LAN.
            for i in 0..n {
                for j in 0..n {
                    if i != j {
                        let (p, bump) = (sim.nodes[j].0, 1);
                        sim.nodes[i].1.on_admitted(p, bump, now);
                    }
                }
            }
            sim
        }

        fn idx(&self, p: PeerId) -> usize {
            self.nodes.iter().position(|(q, _)| *q == p).unwrap()
        }

        /// Advances the clock in 10 ms steps, delivering datagrams at once.
        fn run_for(&mut self, d: Duration) {
            let end = self.now + d;
            while self.now < end {
                self.now += Duration::from_millis(10);
                for i in 0..self.nodes.len() {
                    let p = self.nodes[i].0;
                    if !self.down.contains(&p) {
                        self.nodes[i].1.handle_timers(self.now);
                    }
                }
                self.deliver();
            }
        }

        fn deliver(&mut self) {
            loop {
                let mut msgs = Vec::new();
                for (from, m) in self.nodes.iter_mut() {
                    for (to, data) in m.poll_transmit() {
                        msgs.push((*from, to, data));
                    }
                }
                if msgs.is_empty() {
                    return;
                }
                for (from, to, data) in msgs {
                    if self.down.contains(&from) || self.down.contains(&to) {
                        continue;
                    }
                    let data = match self.hide_down {
                        Some((observer, of)) if observer == to => without_down_of(&data, of),
                        _ => data,
                    };
                    let j = self.idx(to);
                    self.nodes[j].1.on_datagram(from, &data, self.now);
                }
            }
        }

        fn state_at(&self, observer: usize, of: usize) -> Option<PeerState> {
            self.nodes[observer]
                .1
                .peer(&self.nodes[of].0)
                .map(|r| r.state)
        }

        /// Crashes node `crashed` and runs until nodes `0..observers` all hold it `dead`;
        /// fails if that takes longer than `within`.
        fn crash_and_await_dead(&mut self, crashed: usize, observers: usize, within: Duration) {
            self.down.insert(self.nodes[crashed].0);
            let start = self.now;
            while (0..observers).any(|i| self.state_at(i, crashed) != Some(PeerState::Dead)) {
                assert!(
                    self.now - start < within,
                    "crash not detected in {within:?}"
                );
                self.run_for(Duration::from_millis(10));
            }
        }
    }

    /// The datagram re-encoded without any update saying `of` is down.
    fn without_down_of(data: &[u8], of: PeerId) -> Bytes {
        use bytes::{Buf, BufMut};
        let mut buf = data;
        let mut codec = PostcardCodec;
        let header: foca::Header<MemberId> = codec
            .decode_header(&mut buf)
            .expect("the simulated network carries only datagrams foca encoded");
        let mut out = Vec::new();
        codec
            .encode_header(&header, &mut out)
            .expect("a Vec takes any header");
        if buf.remaining() >= 2 && header.message != foca::Message::Broadcast {
            let n = buf.get_u16();
            let kept: Vec<_> = (0..n)
                .map(|_| {
                    codec
                        .decode_member(&mut buf)
                        .expect("foca wrote as many members as it counted")
                })
                .filter(|m: &foca::Member<MemberId>| {
                    !(m.id().peer_id() == Some(of) && m.state() == foca::State::Down)
                })
                .collect();
            out.put_u16(kept.len() as u16);
            for m in &kept {
                codec
                    .encode_member(m, &mut out)
                    .expect("a Vec takes any member");
            }
        }
        out.extend_from_slice(buf);
        Bytes::from(out)
    }

    #[test]
    fn an_observer_that_misses_every_down_verdict_still_finds_the_crash() {
        // Without the first-hand check of old suspicions, such an observer keeps the crashed
        // node `suspect` until its own round-robin probe reaches it: up to 40 × 500 ms here.
        // Three crashes, three observers: each must see `dead` within 4 s of its crash.
        let mut sim = Sim::new(40);
        sim.run_for(Duration::from_secs(3));
        for (crashed, observer) in [(39, 0), (21, 7), (3, 30)] {
            let (c, o) = (sim.nodes[crashed].0, sim.nodes[observer].0);
            sim.hide_down = Some((o, c));
            sim.down.insert(c);
            let start = sim.now;
            while sim.state_at(observer, crashed) != Some(PeerState::Dead) {
                assert!(
                    sim.now - start < Duration::from_secs(4),
                    "observer {observer} still sees node {crashed} as {:?} after 4 s",
                    sim.state_at(observer, crashed)
                );
                sim.run_for(Duration::from_millis(10));
            }
            // The rest of the mesh learnt it from the verdict, as usual.
            sim.run_for(Duration::from_secs(2));
            for i in (0..40).filter(|i| !sim.down.contains(&sim.nodes[*i].0)) {
                assert_eq!(sim.state_at(i, crashed), Some(PeerState::Dead), "node {i}");
            }
        }
        // Nobody else was declared dead on the way.
        for i in (0..40).filter(|i| ![39, 21, 3].contains(i)) {
            for j in (0..40).filter(|j| ![39, 21, 3].contains(j) && *j != i) {
                assert_eq!(sim.state_at(i, j), Some(PeerState::Alive), "{i} sees {j}");
            }
        }
    }

    #[test]
    fn a_probe_and_its_ack_are_the_rtt_sample() {
        // Every datagram takes one 10 ms step to arrive: a probe's round trip is 20 ms.
        let mut sim = Sim::new(3);
        let mut in_flight: Vec<(PeerId, PeerId, Bytes)> = Vec::new();
        for _ in 0..1000 {
            sim.now += Duration::from_millis(10);
            for (from, to, data) in std::mem::take(&mut in_flight) {
                let j = sim.idx(to);
                sim.nodes[j].1.on_datagram(from, &data, sim.now);
            }
            for (p, m) in sim.nodes.iter_mut() {
                m.handle_timers(sim.now);
                in_flight.extend(m.poll_transmit().map(|(to, data)| (*p, to, data)));
            }
        }
        for (p, m) in &sim.nodes {
            assert!(m.probes.len() <= 2, "one pending probe per peer at most");
            for r in m.peers() {
                let rtt = r
                    .rtt
                    .unwrap_or_else(|| panic!("{p}: no RTT for {}", r.peer));
                assert_eq!(rtt, Duration::from_millis(20), "{p} -> {}", r.peer);
            }
        }
        // A datagram that is not a probe's ack (here garbage) is no sample.
        let a = sim.nodes[0].0;
        sim.nodes[1]
            .1
            .on_datagram(a, b"\x00\x01", sim.now + Duration::from_secs(1));
        let rtt = sim.nodes[1].1.peer(&a).and_then(|r| r.rtt);
        assert_eq!(rtt, Some(Duration::from_millis(20)));
    }

    /// Panics unless the suspect and down indexes list exactly the peers in those states.
    fn check_indexes(m: &Membership) {
        let of = |f: fn(PeerState) -> bool| -> BTreeSet<PeerId> {
            m.peers
                .values()
                .filter(|r| f(r.state))
                .map(|r| r.peer)
                .collect()
        };
        assert_eq!(m.suspects, of(|s| s == PeerState::Suspect));
        assert_eq!(
            m.downs,
            of(|s| matches!(s, PeerState::Dead | PeerState::Left))
        );
    }

    #[test]
    fn a_peer_down_for_a_day_is_forgotten_and_the_indexes_follow() {
        let mut sim = Sim::new(4);
        sim.run_for(Duration::from_secs(2));
        sim.down.insert(sim.nodes[3].0);
        let (alive, leaver, crashed) = (sim.nodes[1].0, sim.nodes[2].0, sim.nodes[3].0);
        let mut saw_suspect = false;
        while sim.state_at(0, 3) != Some(PeerState::Dead) {
            assert!(
                sim.now.elapsed() < Duration::from_secs(60),
                "crash never detected"
            );
            sim.run_for(Duration::from_millis(10));
            saw_suspect |= sim.state_at(0, 3) == Some(PeerState::Suspect);
            check_indexes(&sim.nodes[0].1);
        }
        assert!(saw_suspect, "the crash went through suspect");
        let now = sim.now;
        sim.nodes[0].1.on_leave_notice(leaver, leaver, 1, now);
        assert_eq!(sim.state_at(0, 2), Some(PeerState::Left));
        check_indexes(&sim.nodes[0].1);
        let m = &mut sim.nodes[0].1;
        m.handle_timers(now + REAP_AFTER - Duration::from_secs(2));
        assert!(m.peer(&crashed).is_some(), "not forgotten before a day");
        m.handle_timers(now + REAP_AFTER + Duration::from_secs(1));
        assert!(m.peer(&crashed).is_none(), "dead for a day: forgotten");
        assert!(m.peer(&leaver).is_none(), "left for a day: forgotten");
        assert!(m.peer(&alive).is_some(), "a live peer is kept");
        check_indexes(&sim.nodes[0].1);
    }

    #[test]
    fn everyone_alive_in_a_quiet_mesh() {
        let mut sim = Sim::new(5);
        sim.run_for(Duration::from_secs(10));
        for i in 0..5 {
            for j in 0..5 {
                if i != j {
                    assert_eq!(sim.state_at(i, j), Some(PeerState::Alive));
                }
            }
        }
    }

    #[test]
    fn crashed_node_is_dead_everywhere_in_about_two_seconds() {
        let mut sim = Sim::new(3);
        sim.run_for(Duration::from_secs(2));
        sim.down.insert(sim.nodes[2].0);
        let start = sim.now;
        let mut dead_at = None;
        while sim.now - start < Duration::from_secs(10) {
            sim.run_for(Duration::from_millis(10));
            if (0..2).all(|i| sim.state_at(i, 2) == Some(PeerState::Dead)) {
                dead_at = Some(sim.now - start);
                break;
            }
        }
        let took = dead_at.expect("crashed node never marked dead by all");
        assert!(took <= Duration::from_secs(3), "took {took:?}");
    }

    #[test]
    fn an_acknowledged_probe_does_not_wake_the_node_for_its_indirect_stage() {
        let mut sim = Sim::new(4);
        sim.run_for(Duration::from_secs(2));
        let mut skipped = 0;
        for _ in 0..300 {
            sim.run_for(Duration::from_millis(10));
            let node = &sim.nodes[0].1;
            let Some(Reverse((indirect, _))) = node.indirect_timers.peek() else {
                continue;
            };
            let next = node.next_deadline().expect("probe timers are pending");
            if node.foca.probe_succeeded() {
                skipped += 1;
                assert!(
                    next != *indirect,
                    "woken for the indirect stage of an acknowledged probe"
                );
                assert!(
                    node.timers
                        .peek()
                        .is_some_and(|Reverse((at, _))| *at > *indirect),
                    "the next probe comes after the skipped timer, which runs before it"
                );
            } else {
                assert!(
                    next <= *indirect,
                    "an unanswered probe's indirect stage is due"
                );
            }
        }
        assert!(skipped > 0, "no acknowledged probe seen in 3 s");
        // Probing goes on: every node is still alive everywhere, and a crash is still found.
        sim.crash_and_await_dead(3, 3, Duration::from_secs(4));
    }

    #[test]
    fn an_idle_node_is_not_woken_for_gossip_but_news_is_gossiped_at_once() {
        let mut sim = Sim::new(3);
        sim.run_for(Duration::from_secs(5));
        let now = sim.now;
        let node = &sim.nodes[0].1;
        assert_eq!(
            node.foca.updates_backlog(),
            0,
            "a quiet mesh has nothing to spread"
        );
        let next = node.next_deadline().expect("probe timers are pending");
        assert!(
            next >= now + Duration::from_millis(100)
                || node
                    .gossip_timers
                    .iter()
                    .all(|Reverse((at, _))| *at != next),
            "the next wake-up is not a gossip timer"
        );
        // A crash is still news everywhere within the usual time (the verdict is gossiped).
        sim.crash_and_await_dead(2, 2, Duration::from_secs(3));
    }

    #[test]
    fn leave_notice_shows_left_not_dead() {
        let mut sim = Sim::new(3);
        sim.run_for(Duration::from_secs(1));
        let (leaver, now) = (sim.nodes[2].0, sim.now);
        sim.nodes[2].1.leave(now);
        // Only node 0 hears the leaver; node 1 learns through node 0's relay.
        assert!(sim.nodes[0].1.on_leave_notice(leaver, leaver, 1, now));
        assert!(
            !sim.nodes[0].1.on_leave_notice(leaver, leaver, 1, now),
            "news only once"
        );
        let relayer = sim.nodes[0].0;
        assert!(sim.nodes[1].1.on_leave_notice(relayer, leaver, 1, now));
        sim.deliver();
        sim.down.insert(leaver);
        sim.run_for(Duration::from_secs(5));
        for i in 0..2 {
            assert_eq!(sim.state_at(i, 2), Some(PeerState::Left));
        }
    }

    #[test]
    fn restarted_node_with_newer_bump_is_alive_again() {
        let mut sim = Sim::new(3);
        sim.run_for(Duration::from_secs(1));
        let p2 = sim.nodes[2].0;
        sim.down.insert(p2);
        sim.run_for(Duration::from_secs(5));
        assert_eq!(sim.state_at(0, 2), Some(PeerState::Dead));
        // Restart: a fresh core with a newer bump, admitted again by everyone.
        sim.down.remove(&p2);
        let now = sim.now;
        sim.nodes[2].1 = Membership::new(p2, 2, &MembershipConfig::lan(), 99);
        for i in 0..2 {
            let pi = sim.nodes[i].0;
            sim.nodes[i].1.on_admitted(p2, 2, now);
            sim.nodes[2].1.on_admitted(pi, 1, now);
        }
        sim.run_for(Duration::from_secs(3));
        for i in 0..2 {
            assert_eq!(sim.state_at(i, 2), Some(PeerState::Alive));
            assert_eq!(sim.nodes[i].1.peer(&p2).unwrap().bump, 2);
        }
    }

    #[test]
    fn garbage_datagrams_are_counted_not_fatal() {
        let mut sim = Sim::new(2);
        let from = sim.nodes[1].0;
        let now = sim.now;
        for junk in [&b""[..], b"\x00", b"\xff\xff\xff\xff", &[7u8; 9000][..]] {
            sim.nodes[0].1.on_datagram(from, junk, now);
        }
        assert_eq!(sim.nodes[0].1.stats().datagrams_rejected, 4);
        sim.run_for(Duration::from_secs(2));
        assert_eq!(sim.state_at(0, 1), Some(PeerState::Alive));
    }

    #[test]
    fn a_member_id_travels_as_the_node_id_bytes_and_the_bump() {
        #[derive(Serialize)]
        #[serde(rename = "MemberId")]
        struct Before {
            peer: Vec<u8>,
            bump: u64,
        }
        // The longest id a `PeerId` can hold (a 64-byte digest) and an ordinary one.
        let long = PeerId::from_bytes(&[[0x12, 64].as_slice(), &[9u8; 64]].concat()).unwrap();
        let short = Keypair::generate_ed25519().public().to_peer_id();
        for peer in [long, short] {
            let id = MemberId::new(peer, 77);
            // The same serde shape as the `Vec` it replaced, hence the same bytes in any format.
            let before = Before {
                peer: peer.to_bytes(),
                bump: 77,
            };
            assert_eq!(
                serde_json::to_string(&id).unwrap(),
                serde_json::to_string(&before).unwrap()
            );
            // And through foca's codec, as datagrams carry it: the length, the bytes, the bump
            // (a one-byte varint here), as postcard encodes a `Vec<u8>` and a `u64`.
            let mut buf = Vec::new();
            let member = foca::Member::alive(id);
            PostcardCodec.encode_member(&member, &mut buf).unwrap();
            let bytes = peer.to_bytes();
            let expected = [&[bytes.len() as u8][..], &bytes, &[77]].concat();
            assert!(buf.starts_with(&expected), "{buf:?}");
            let back: foca::Member<MemberId> = PostcardCodec.decode_member(&buf[..]).unwrap();
            assert_eq!(back.id(), &id);
            assert_eq!(back.id().peer_id(), Some(peer));
            assert_eq!(back.id().peer_bytes(), peer.to_bytes().as_slice());
        }
        // Longer than any node id: refused when decoding.
        let too_long = serde_json::json!({ "peer": vec![1u8; 67], "bump": 1 });
        assert!(serde_json::from_value::<MemberId>(too_long).is_err());
        // Bytes that are no node id decode (and are dropped where a peer is needed).
        let junk = serde_json::json!({ "peer": vec![1u8; 10], "bump": 1 });
        let junk: MemberId = serde_json::from_value(junk).unwrap();
        assert_eq!(junk.peer_id(), None);
    }
}
