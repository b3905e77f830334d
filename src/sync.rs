//! Sync sessions: the Automerge sync protocol with each peer, sans-IO (spec:
//! `protocol/sync.md`).
//!
//! Owns one `automerge::sync::State` per peer, what to send after a local change, on a new
//! peer, on a received message, and as anti-entropy; per-peer status (in sync / behind / never
//! synced) and health ([`SyncHealth`]: whether sync with the peer actually works, so a split
//! is never silent); and the backoff of peers that send garbage. It takes the document by reference and
//! returns the bytes to send: the state actor moves them over `/mesh/sync/1`.
//!
//! It does not own the document, persistence, or the transport.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use automerge::AutoCommit;
use automerge::sync::{Message, State as SyncState, SyncDoc};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// How long a peer that sent a malformed sync message is ignored. Long enough that a broken
/// peer costs us nothing measurable, short enough that a fixed one is back within a minute.
pub const MALFORMED_BACKOFF: Duration = Duration::from_secs(30);
/// How long a connected peer may go without one completed exchange before its health says
/// `never-synced`. A first sync on a LAN takes milliseconds, a snapshot of a document at its
/// bound a few seconds on a Pi; 30 s is far past both, and short enough that an operator
/// looking at `mesh peers` after a join sees the problem.
pub const NEVER_SYNCED_AFTER: Duration = Duration::from_secs(30);
/// A change received from one peer is passed on to at most this many others (besides the
/// reply to the sender). The writer pushes its own change to every peer it is linked to, and on
/// a LAN every member is linked to every other, so relays serve only the members the writer is
/// not linked to (a mesh still forming, a partition healing), and anti-entropy catches what
/// they miss. Relaying to every link instead costs N² messages across the mesh per change:
/// measured with `mesh sim`, 4.9 MB of sync traffic for 10 nodes and 180 MB for 40 in the same
/// 40 s scenario (`docs/scale.md`).
pub const RELAY_FANOUT: usize = 4;

/// Peers one anti-entropy round (every 15 s in the agent) exchanges with, taken in turn round
/// the ring of connected peers. Every peer exchanged with every round cost each node a message
/// and its reply per member per round: at 100 nodes, 13 of its 14 sync messages a second in an
/// idle mesh (`mesh sim`, `docs/scale.md`). Pushes and relays carry changes as they happen;
/// anti-entropy only repairs what they missed, and with every node picking 4 a node exchanges
/// with about 8 others a round, any of which can repair it (Consul's push-pull, for
/// comparison, picks one node every 30 s).
pub const ANTI_ENTROPY_FANOUT: usize = 4;

/// How long a request of ours may stay unanswered before it no longer holds back the next one
/// (see [`SyncSessions::on_response`]). The transport ends every request well before this
/// (`transport::REQUEST_TIMEOUT`, 5 s, then [`SyncSessions::on_send_failed`]); this only
/// covers a request lost without a word.
pub const OUTSTANDING_LIMIT: Duration = Duration::from_secs(6);

/// Most peers whose sync state is kept while disconnected (their shared heads make the next
/// sync cheap). Beyond it, states of peers not seen for longest are dropped.
pub const MAX_SAVED_STATES: usize = 1024;

/// Where a peer stands relative to our document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncStatus {
    /// Its heads equal ours.
    InSync,
    /// We know its heads and they differ from ours (either side may be missing changes).
    Behind,
    /// We have never completed an exchange with it.
    NeverSynced,
}

/// Whether sync with one peer works, for `mesh peers` and `mesh state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncHealth {
    /// Its last known heads equal ours.
    Ok,
    /// Exchanges complete, but one side still lacks changes (or the first exchange is under
    /// way, for less than [`NEVER_SYNCED_AFTER`]).
    Syncing,
    /// The last attempt failed (and nothing succeeded since), with why.
    Failing(String),
    /// Connected for [`NEVER_SYNCED_AFTER`] without one completed exchange.
    NeverSynced,
    /// The peer is on another state epoch (shown until one side adopts the other's).
    EpochMismatch(String),
    /// No connection.
    Disconnected,
}

impl SyncHealth {
    /// Whether this is a problem worth a warning.
    pub fn is_bad(&self) -> bool {
        matches!(
            self,
            SyncHealth::Failing(_) | SyncHealth::NeverSynced | SyncHealth::EpochMismatch(_)
        )
    }
}

impl std::fmt::Display for SyncHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncHealth::Ok => f.write_str("ok"),
            SyncHealth::Syncing => f.write_str("syncing"),
            SyncHealth::Failing(why) => write!(f, "failing: {why}"),
            SyncHealth::NeverSynced => f.write_str("never-synced"),
            SyncHealth::EpochMismatch(theirs) => write!(f, "epoch-mismatch: theirs {theirs}"),
            SyncHealth::Disconnected => f.write_str("disconnected"),
        }
    }
}

/// Errors of a sync exchange.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("malformed sync message: {0}")]
    Malformed(String),
    #[error("peer is in backoff after a malformed message")]
    BackedOff,
}

/// Counters for `mesh state`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStats {
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub malformed: u64,
}

#[derive(Default)]
struct PeerSession {
    state: SyncState,
    connected: bool,
    /// The peer's heads as of its last message, hex; `None` before any message.
    synced_once: bool,
    backoff_until: Option<Instant>,
    last_active: Option<Instant>,
    /// When the current connection came up.
    up_since: Option<Instant>,
    /// The last completed exchange (a message of ours applied by the peer, or theirs by us).
    last_ok: Option<Instant>,
    /// The last failure since the connection came up, with why.
    failure: Option<(Instant, String)>,
    /// The peer's epoch, while it differs from ours.
    their_epoch: Option<String>,
    /// Since when a request of ours has been waiting for the peer's answer. While it waits,
    /// news for this peer is held back (`dirty`) and goes with the next request, so a burst of
    /// changes costs one message per round trip per peer instead of one per change.
    outstanding: Option<Instant>,
    /// Something changed for this peer while a request was outstanding.
    dirty: bool,
    /// Whether what was held back (`dirty`) all came from pushes to every member.
    held_to_all: bool,
    /// Whether the current exchange with this peer is part of a push to every member
    /// believed alive ([`SyncSessions::to_everyone`]).
    to_all: bool,
}

impl PeerSession {
    fn waiting(&self, now: Instant) -> bool {
        self.outstanding
            .is_some_and(|t| now.saturating_duration_since(t) < OUTSTANDING_LIMIT)
    }
}

/// All sync sessions of one node.
#[derive(Default)]
pub struct SyncSessions {
    /// Ordered, so that what is sent, and in which order, does not depend on a hasher's seed
    /// (`mesh sim` runs these sessions and must be deterministic).
    peers: BTreeMap<PeerId, PeerSession>,
    stats: SyncStats,
    /// Where the next relay starts in the ring of connected peers.
    relay_cursor: usize,
    /// Where the next anti-entropy round starts.
    anti_entropy_cursor: usize,
    /// The members membership believes alive (or suspects), once told ([`SyncSessions::set_alive`]).
    alive: Option<std::collections::BTreeSet<PeerId>>,
}

impl SyncSessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fresh sessions that keep counting from `stats` (after an epoch change).
    pub fn with_stats(stats: SyncStats) -> Self {
        Self {
            peers: BTreeMap::new(),
            stats,
            relay_cursor: 0,
            anti_entropy_cursor: 0,
            alive: None,
        }
    }

    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// The members membership believes alive or suspects (ourselves excluded). With every one
    /// of them linked, a local change pushed to every link reaches the whole mesh, and the
    /// exchanges of that push say so ([`SyncSessions::to_everyone`]) so that receivers do not
    /// relay it.
    pub fn set_alive(&mut self, alive: std::collections::BTreeSet<PeerId>) {
        self.alive = Some(alive);
    }

    /// Whether every member believed alive has a connected session.
    fn everyone_linked(&self) -> bool {
        self.alive.as_ref().is_some_and(|alive| {
            alive
                .iter()
                .all(|p| self.peers.get(p).is_some_and(|s| s.connected))
        })
    }

    /// Whether our current exchange with `peer` is part of a push of ours to every member
    /// believed alive: what it brings the peer, every other member gets from us too, so the
    /// peer need not relay it. Sent with each request (`protocol/sync.md`).
    pub fn to_everyone(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|s| s.to_all)
    }

    /// Restores persisted per-peer states (see [`SyncSessions::encode_states`]). Undecodable
    /// entries are skipped: the next sync with that peer is merely a full one.
    pub fn restore_states(&mut self, saved: &BTreeMap<String, Vec<u8>>) {
        for (peer, bytes) in saved {
            let (Ok(peer), Ok(state)) = (peer.parse::<PeerId>(), SyncState::decode(bytes)) else {
                continue;
            };
            self.peers.entry(peer).or_default().state = state;
        }
    }

    /// Per-peer states to persist: only the durable part (shared heads) survives `encode`.
    pub fn encode_states(&self) -> BTreeMap<String, Vec<u8>> {
        self.peers
            .iter()
            .map(|(p, s)| (p.to_base58(), s.state.encode()))
            .collect()
    }

    /// A peer was admitted: start (or resume) a session. Returns the first message to send.
    pub fn on_peer_up(
        &mut self,
        peer: PeerId,
        doc: &mut AutoCommit,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let session = self.peers.entry(peer).or_default();
        // Keep the shared heads, forget in-flight bookkeeping from an earlier connection: the
        // documented way to resume a session (encode/decode drops the ephemeral parts).
        session.state = SyncState::decode(&session.state.encode()).unwrap_or_default();
        session.connected = true;
        session.last_active = Some(now);
        session.up_since = Some(now);
        session.failure = None;
        session.their_epoch = None;
        session.outstanding = None;
        session.dirty = false;
        self.request(peer, doc, now, false)
    }

    /// The peer's last connection closed.
    pub fn on_peer_down(&mut self, peer: PeerId) {
        if let Some(s) = self.peers.get_mut(&peer) {
            s.connected = false;
            s.outstanding = None;
        }
        self.evict_if_needed();
    }

    /// A sync message from `peer` that asks (a request of theirs). Applies it and returns our
    /// answer, if any (sent back as the response).
    pub fn on_message(
        &mut self,
        peer: PeerId,
        doc: &mut AutoCommit,
        bytes: &[u8],
        now: Instant,
    ) -> Result<Option<Vec<u8>>, SyncError> {
        let session = self.peers.entry(peer).or_default();
        if session.backoff_until.is_some_and(|t| t > now) {
            return Err(SyncError::BackedOff);
        }
        self.stats.messages_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let result = Message::decode(bytes)
            .map_err(|e| SyncError::Malformed(e.to_string()))
            .and_then(|msg| check_blooms(&msg).map(|()| msg))
            .and_then(|msg| {
                doc.sync()
                    .receive_sync_message(&mut session.state, msg)
                    .map_err(|e| SyncError::Malformed(e.to_string()))
            });
        if let Err(e) = result {
            self.stats.malformed += 1;
            session.backoff_until = Some(now + MALFORMED_BACKOFF);
            session.failure = Some((now, format!("it sent a bad message: {e}")));
            // Start over with this peer once the backoff ends.
            session.state = SyncState::new();
            return Err(e);
        }
        session.synced_once = true;
        session.last_active = Some(now);
        session.last_ok = Some(now);
        session.failure = None;
        session.their_epoch = None;
        Ok(self.generate(peer, doc))
    }

    /// The peer answered a request of ours with a sync message. Applies it and returns our next
    /// request, if any: it carries whatever was held back while the request was outstanding.
    pub fn on_response(
        &mut self,
        peer: PeerId,
        doc: &mut AutoCommit,
        bytes: &[u8],
        now: Instant,
    ) -> Result<Option<Vec<u8>>, SyncError> {
        self.on_answered(peer);
        let next = self.on_message(peer, doc, bytes, now)?;
        if let Some(s) = self.peers.get_mut(&peer) {
            // The next request carries what was held back too.
            if std::mem::take(&mut s.dirty) {
                s.to_all &= s.held_to_all;
            }
            if next.is_some() {
                s.outstanding = Some(now);
            }
        }
        Ok(next)
    }

    /// The peer answered a request of ours (in any way): the next one may go.
    pub fn on_answered(&mut self, peer: PeerId) {
        if let Some(s) = self.peers.get_mut(&peer) {
            s.outstanding = None;
        }
    }

    /// A message we sent was not delivered (or refused), for `reason`: forget it was in flight
    /// so it is sent again, and remember the failure for [`SyncSessions::health`]. What was
    /// held back for the peer waits for the next change or anti-entropy round (which takes
    /// every held-back peer), not retried at once: a peer that keeps failing is not hammered.
    pub fn on_send_failed(&mut self, peer: PeerId, now: Instant, reason: String) {
        if let Some(s) = self.peers.get_mut(&peer) {
            s.state = SyncState::decode(&s.state.encode()).unwrap_or_default();
            s.failure = Some((now, reason));
            s.outstanding = None;
        }
    }

    /// A message generated for `peer` was not sent (it did not fit; the peer is offered a
    /// snapshot instead): forget it was in flight, without counting a failure.
    pub fn forget_in_flight(&mut self, peer: PeerId) {
        if let Some(s) = self.peers.get_mut(&peer) {
            s.state = SyncState::decode(&s.state.encode()).unwrap_or_default();
        }
    }

    /// The peer answered our message without a message of its own: the exchange completed.
    /// Returns the next request if news for the peer was held back meanwhile.
    pub fn on_delivered(
        &mut self,
        peer: PeerId,
        doc: &mut AutoCommit,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let s = self.peers.get_mut(&peer)?;
        s.synced_once = true;
        s.last_ok = Some(now);
        s.failure = None;
        s.their_epoch = None;
        s.outstanding = None;
        if !std::mem::take(&mut s.dirty) || !s.connected {
            return None;
        }
        let to_all = s.held_to_all;
        self.request(peer, doc, now, to_all)
    }

    /// The peer answered (or asked) for another epoch than ours.
    pub fn on_epoch_mismatch(&mut self, peer: PeerId, theirs: String) {
        if let Some(s) = self.peers.get_mut(&peer) {
            s.their_epoch = Some(theirs);
        }
    }

    /// Whether sync with `peer` works (see [`SyncHealth`]), given our heads and the time.
    pub fn health(
        &self,
        peer: &PeerId,
        our_heads: &[automerge::ChangeHash],
        now: Instant,
    ) -> SyncHealth {
        let Some(s) = self.peers.get(peer).filter(|s| s.connected) else {
            return SyncHealth::Disconnected;
        };
        if let Some(theirs) = &s.their_epoch {
            return SyncHealth::EpochMismatch(theirs.clone());
        }
        if let Some((at, why)) = &s.failure
            && s.last_ok.is_none_or(|ok| ok <= *at)
        {
            return SyncHealth::Failing(why.clone());
        }
        match self.status(peer, our_heads) {
            SyncStatus::InSync => SyncHealth::Ok,
            _ if s.last_ok.is_none()
                && s.up_since
                    .is_some_and(|up| now.saturating_duration_since(up) >= NEVER_SYNCED_AFTER) =>
            {
                SyncHealth::NeverSynced
            }
            _ => SyncHealth::Syncing,
        }
    }

    /// After a local change (or periodically, as anti-entropy): a message for every connected
    /// peer that needs one.
    pub fn generate_all(&mut self, doc: &mut AutoCommit, now: Instant) -> Vec<(PeerId, Vec<u8>)> {
        let to_all = self.everyone_linked();
        self.reachable_except(None, now)
            .into_iter()
            .filter_map(|p| self.request(p, doc, now, to_all).map(|m| (p, m)))
            .collect()
    }

    /// After a change received from `from`: messages for at most [`RELAY_FANOUT`] other
    /// connected peers, taken in turn round the ring of peers, so that successive relays reach
    /// different ones. None when `from` sent it as part of a push to every member
    /// (`everyone`, [`SyncSessions::to_everyone`] on its side): every other member gets it
    /// from the writer too.
    pub fn relay(
        &mut self,
        doc: &mut AutoCommit,
        from: PeerId,
        everyone: bool,
        now: Instant,
    ) -> Vec<(PeerId, Vec<u8>)> {
        if everyone {
            return Vec::new();
        }
        let peers = self.reachable_except(Some(from), now);
        let chosen = in_turn(&peers, &mut self.relay_cursor, RELAY_FANOUT);
        chosen
            .into_iter()
            .filter_map(|p| self.request(p, doc, now, false).map(|m| (p, m)))
            .collect()
    }

    /// Connected peers not backed off, but `except`, in id order.
    fn reachable_except(&self, except: Option<PeerId>, now: Instant) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(p, s)| {
                Some(**p) != except && s.connected && s.backoff_until.is_none_or(|t| t <= now)
            })
            .map(|(p, _)| *p)
            .collect()
    }

    /// Anti-entropy: for at most [`ANTI_ENTROPY_FANOUT`] connected peers, taken in turn round
    /// the ring, and every peer with news held back and no request outstanding, forgets
    /// in-flight state (so a message lost without an error cannot stall a session forever)
    /// and generates a message.
    pub fn anti_entropy(&mut self, doc: &mut AutoCommit, now: Instant) -> Vec<(PeerId, Vec<u8>)> {
        let peers = self.reachable_except(None, now);
        let mut chosen = in_turn(&peers, &mut self.anti_entropy_cursor, ANTI_ENTROPY_FANOUT);
        for p in &peers {
            if !chosen.contains(p)
                && self
                    .peers
                    .get(p)
                    .is_some_and(|s| s.dirty && !s.waiting(now))
            {
                chosen.push(*p);
            }
        }
        chosen
            .into_iter()
            .filter_map(|p| {
                let s = self.peers.get_mut(&p)?;
                s.state = SyncState::decode(&s.state.encode()).unwrap_or_default();
                s.outstanding = None;
                self.request(p, doc, now, false).map(|m| (p, m))
            })
            .collect()
    }

    /// Where `peer` stands, given our current heads.
    pub fn status(&self, peer: &PeerId, our_heads: &[automerge::ChangeHash]) -> SyncStatus {
        match self.peers.get(peer) {
            Some(s) if s.synced_once || s.state.their_heads.is_some() => {
                match &s.state.their_heads {
                    Some(h) if same_heads(h, our_heads) => SyncStatus::InSync,
                    _ if same_heads(&s.state.shared_heads, our_heads)
                        && s.state.their_heads.is_none() =>
                    {
                        SyncStatus::InSync
                    }
                    _ => SyncStatus::Behind,
                }
            }
            _ => SyncStatus::NeverSynced,
        }
    }

    /// Peers with a session and a live connection.
    pub fn connected_peers(&self) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(_, s)| s.connected)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Peers with a session, connected or not.
    pub fn peers(&self) -> impl Iterator<Item = (&PeerId, bool)> {
        self.peers.iter().map(|(p, s)| (p, s.connected))
    }

    /// A message of ours that asks (a request), `to_all` when it starts an exchange of a push
    /// to every member: held back while an earlier request to the peer is outstanding, else
    /// generated and marked outstanding.
    fn request(
        &mut self,
        peer: PeerId,
        doc: &mut AutoCommit,
        now: Instant,
        to_all: bool,
    ) -> Option<Vec<u8>> {
        let session = self.peers.get_mut(&peer)?;
        if session.waiting(now) {
            session.held_to_all = if session.dirty {
                session.held_to_all && to_all
            } else {
                to_all
            };
            session.dirty = true;
            return None;
        }
        session.dirty = false;
        session.to_all = to_all;
        let msg = self.generate(peer, doc)?;
        if let Some(s) = self.peers.get_mut(&peer) {
            s.outstanding = Some(now);
        }
        Some(msg)
    }

    fn generate(&mut self, peer: PeerId, doc: &mut AutoCommit) -> Option<Vec<u8>> {
        let session = self.peers.get_mut(&peer)?;
        let msg = doc.sync().generate_sync_message(&mut session.state)?;
        let bytes = msg.encode();
        self.stats.messages_out += 1;
        self.stats.bytes_out += bytes.len() as u64;
        Some(bytes)
    }

    fn evict_if_needed(&mut self) {
        while self.peers.len() > MAX_SAVED_STATES {
            let Some(oldest) = self
                .peers
                .iter()
                .filter(|(_, s)| !s.connected)
                .min_by_key(|(_, s)| s.last_active)
                .map(|(p, _)| *p)
            else {
                break;
            };
            self.peers.remove(&oldest);
        }
    }
}

/// At most `fanout` of `peers`, going on round the ring from where `cursor` says, which then
/// moves past them: successive calls reach different peers.
fn in_turn(peers: &[PeerId], cursor: &mut usize, fanout: usize) -> Vec<PeerId> {
    if peers.is_empty() {
        return Vec::new();
    }
    let start = *cursor % peers.len();
    *cursor = cursor.wrapping_add(fanout);
    peers
        .iter()
        .cycle()
        .skip(start)
        .take(fanout.min(peers.len()))
        .copied()
        .collect()
}

/// Most probes per hash a received Bloom filter may ask for. Automerge writes 7; each probe
/// is work for every change we hold, so a hostile count (up to 2^32) would stall the actor.
pub const MAX_BLOOM_PROBES: u64 = 64;

/// Refuses Bloom filters Automerge 0.12 decodes but cannot use: entries with no bits (its
/// probe arithmetic divides by the bit count and panics: found by `fuzz_sync_message`) and
/// probe counts past [`MAX_BLOOM_PROBES`]. The filter's fields are private; its encoding is
/// three LEB128 numbers (entries, bits per entry, probes) followed by the bits.
fn check_blooms(msg: &Message) -> Result<(), SyncError> {
    for have in &msg.have {
        let bytes = have.bloom.to_bytes();
        if bytes.is_empty() {
            continue; // No entries: never probed.
        }
        let mut rest = &bytes[..];
        let mut header = [0u64; 3];
        for field in &mut header {
            let mut shift = 0;
            loop {
                let Some((&byte, tail)) = rest.split_first() else {
                    return Err(SyncError::Malformed("truncated Bloom filter".into()));
                };
                rest = tail;
                *field |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    break;
                }
                shift += 7;
                if shift > 35 {
                    return Err(SyncError::Malformed("oversized Bloom filter field".into()));
                }
            }
        }
        let probes = header[2];
        if rest.is_empty() || probes > MAX_BLOOM_PROBES {
            return Err(SyncError::Malformed(format!(
                "unusable Bloom filter ({} bytes of bits, {probes} probes)",
                rest.len()
            )));
        }
    }
    Ok(())
}

fn same_heads(a: &[automerge::ChangeHash], b: &[automerge::ChangeHash]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{NodeRecord, genesis, hydrate_lenient, put_entry};
    use automerge::ActorId;
    use libp2p::identity::Keypair;

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    /// Delivers messages between two nodes until both are quiet; returns messages exchanged.
    fn run(
        a: (&mut SyncSessions, &mut AutoCommit, PeerId),
        b: (&mut SyncSessions, &mut AutoCommit, PeerId),
        first: Vec<u8>,
    ) -> usize {
        let now = Instant::now();
        let (sa, da, pa) = a;
        let (sb, db, pb) = b;
        // a's messages are requests, b's are the responses to them (as `/mesh/sync/1` carries
        // an exchange a started); a response without a message says "delivered".
        let mut next = Some((pa, first)); // (from, bytes)
        let mut count = 0;
        while let Some((from, bytes)) = next.take() {
            count += 1;
            assert!(count < 50, "sync did not converge");
            next = if from == pa {
                match sb.on_message(pa, db, &bytes, now).unwrap() {
                    Some(m) => Some((pb, m)),
                    None => sa.on_delivered(pb, da, now).map(|m| (pa, m)),
                }
            } else {
                sa.on_response(pb, da, &bytes, now)
                    .unwrap()
                    .map(|m| (pa, m))
            };
        }
        count
    }

    #[test]
    fn two_documents_converge_and_report_in_sync() {
        let (pa, pb) = (peer(), peer());
        let (mut da, mut db) = (genesis(ActorId::random()), genesis(ActorId::random()));
        put_entry(
            &mut da,
            "nodes",
            "a",
            &NodeRecord {
                name: "a".into(),
                ..Default::default()
            },
        )
        .unwrap();
        da.commit();
        put_entry(
            &mut db,
            "nodes",
            "b",
            &NodeRecord {
                name: "b".into(),
                ..Default::default()
            },
        )
        .unwrap();
        db.commit();
        let (mut sa, mut sb) = (SyncSessions::new(), SyncSessions::new());
        let now = Instant::now();
        assert_eq!(sa.status(&pb, &da.get_heads()), SyncStatus::NeverSynced);
        let first = sa.on_peer_up(pb, &mut da, now).unwrap();
        sb.on_peer_up(pa, &mut db, now);
        run((&mut sa, &mut da, pa), (&mut sb, &mut db, pb), first);
        assert_eq!(da.get_heads(), db.get_heads());
        assert_eq!(hydrate_lenient(&da).0.nodes.len(), 2);
        assert_eq!(sa.status(&pb, &da.get_heads()), SyncStatus::InSync);
        assert_eq!(sb.status(&pa, &db.get_heads()), SyncStatus::InSync);
        // A local change is pushed, and makes the peer "behind" until it answers.
        put_entry(&mut da, "nodes", "c", &NodeRecord::default()).unwrap();
        da.commit();
        let out = sa.generate_all(&mut da, now);
        assert_eq!(out.len(), 1);
        run(
            (&mut sa, &mut da, pa),
            (&mut sb, &mut db, pb),
            out[0].1.clone(),
        );
        assert_eq!(da.get_heads(), db.get_heads());
    }

    #[test]
    fn garbage_is_counted_and_backs_off_the_peer() {
        let p = peer();
        let mut doc = genesis(ActorId::random());
        let mut s = SyncSessions::new();
        let now = Instant::now();
        assert!(matches!(
            s.on_message(p, &mut doc, b"\x42garbage", now),
            Err(SyncError::Malformed(_))
        ));
        assert_eq!(s.stats().malformed, 1);
        assert!(matches!(
            s.on_message(p, &mut doc, b"\x42", now),
            Err(SyncError::BackedOff)
        ));
        assert!(
            s.on_message(p, &mut doc, b"\x42", now + MALFORMED_BACKOFF)
                .is_err()
        );
    }

    /// A sync message whose `have` carries the given encoded Bloom filter.
    fn message_with_bloom(bloom: &[u8]) -> Vec<u8> {
        use automerge::sync::{BloomFilter, Have, MessageVersion};
        Message {
            heads: Vec::new(),
            need: Vec::new(),
            have: vec![Have {
                last_sync: Vec::new(),
                bloom: BloomFilter::try_from(bloom).expect("automerge decodes it"),
            }],
            changes: Vec::<Vec<u8>>::new().into(),
            flags: None,
            version: MessageVersion::V1,
        }
        .encode()
    }

    #[test]
    fn a_bloom_filter_automerge_cannot_use_is_malformed_not_a_panic() {
        let p = peer();
        let mut doc = genesis(ActorId::random());
        put_entry(&mut doc, "nodes", "a", &NodeRecord::default()).unwrap();
        doc.commit();
        let now = Instant::now();
        // One entry, zero bits per entry: no bits, and Automerge's probes divide by zero.
        // Then 2^32-1 probes per hash over one byte of bits.
        for bloom in [&[1u8, 0, 7][..], &[1, 8, 0xff, 0xff, 0xff, 0xff, 0x0f, 0]] {
            let mut s = SyncSessions::new();
            let result = s.on_message(p, &mut doc, &message_with_bloom(bloom), now);
            assert!(matches!(result, Err(SyncError::Malformed(_))), "{result:?}");
        }
        // A usable filter still syncs.
        let mut s = SyncSessions::new();
        let ok = s.on_message(p, &mut doc, &message_with_bloom(&[1, 10, 7, 0, 0]), now);
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn resumed_session_with_saved_state_sends_less() {
        let (pa, pb) = (peer(), peer());
        let (mut da, mut db) = (genesis(ActorId::random()), genesis(ActorId::random()));
        for i in 0..200 {
            put_entry(&mut da, "nodes", &format!("n{i}"), &NodeRecord::default()).unwrap();
            da.commit();
        }
        let (mut sa, mut sb) = (SyncSessions::new(), SyncSessions::new());
        let now = Instant::now();
        let first = sa.on_peer_up(pb, &mut da, now).unwrap();
        sb.on_peer_up(pa, &mut db, now);
        run((&mut sa, &mut da, pa), (&mut sb, &mut db, pb), first);
        // Reconnect after a restart: states persisted and restored.
        let (saved_a, saved_b) = (sa.encode_states(), sb.encode_states());
        let (mut sa, mut sb) = (SyncSessions::new(), SyncSessions::new());
        sa.restore_states(&saved_a);
        sb.restore_states(&saved_b);
        put_entry(&mut da, "nodes", "late", &NodeRecord::default()).unwrap();
        da.commit();
        let first = sa.on_peer_up(pb, &mut da, now).unwrap();
        sb.on_peer_up(pa, &mut db, now);
        let before = sa.stats().bytes_out + sb.stats().bytes_out;
        run((&mut sa, &mut da, pa), (&mut sb, &mut db, pb), first);
        let after = sa.stats().bytes_out + sb.stats().bytes_out;
        assert_eq!(da.get_heads(), db.get_heads());
        assert!(
            after - before < 2_000,
            "resync sent {} bytes",
            after - before
        );
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;
    use crate::state::genesis;
    use automerge::ActorId;
    use libp2p::identity::Keypair;

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    #[test]
    fn health_tells_never_synced_failing_mismatch_and_ok() {
        let (pa, pb) = (
            Keypair::generate_ed25519().public().to_peer_id(),
            Keypair::generate_ed25519().public().to_peer_id(),
        );
        let (mut da, mut db) = (genesis(ActorId::random()), genesis(ActorId::random()));
        crate::state::put_entry(&mut da, "nodes", "a", &crate::state::NodeRecord::default())
            .unwrap();
        da.commit();
        let (mut sa, mut sb) = (SyncSessions::new(), SyncSessions::new());
        let t0 = Instant::now();
        assert_eq!(
            sa.health(&pb, &da.get_heads(), t0),
            SyncHealth::Disconnected
        );
        let first = sa.on_peer_up(pb, &mut da, t0).unwrap();
        sb.on_peer_up(pa, &mut db, t0);
        let heads = da.get_heads();
        assert_eq!(sa.health(&pb, &heads, t0), SyncHealth::Syncing);
        assert_eq!(
            sa.health(&pb, &heads, t0 + NEVER_SYNCED_AFTER),
            SyncHealth::NeverSynced,
            "connected past the deadline without one exchange"
        );
        sa.on_send_failed(pb, t0, "request failed: too large".into());
        assert_eq!(
            sa.health(&pb, &heads, t0),
            SyncHealth::Failing("request failed: too large".into())
        );
        assert!(sa.health(&pb, &heads, t0).is_bad());
        // An exchange completes: ok.
        let mut to_b = Some(first);
        while let Some(msg) = to_b.take() {
            match sb.on_message(pa, &mut db, &msg, t0).unwrap() {
                Some(reply) => to_b = sa.on_response(pb, &mut da, &reply, t0).unwrap(),
                None => to_b = sa.on_delivered(pb, &mut da, t0),
            }
        }
        assert_eq!(sa.health(&pb, &da.get_heads(), t0), SyncHealth::Ok);
        sa.on_epoch_mismatch(pb, "1/abc".into());
        assert_eq!(
            sa.health(&pb, &da.get_heads(), t0).to_string(),
            "epoch-mismatch: theirs 1/abc"
        );
    }

    /// Writes a node record into `doc` (a local change).
    fn write(doc: &mut AutoCommit, key: &str) {
        use automerge::ReadDoc;
        use automerge::transaction::Transactable;
        let nodes = match doc.get(automerge::ROOT, "nodes").unwrap() {
            Some((_, id)) => id,
            None => doc
                .put_object(automerge::ROOT, "nodes", automerge::ObjType::Map)
                .unwrap(),
        };
        doc.put(&nodes, key, "x").unwrap();
        doc.commit();
    }

    #[test]
    fn a_burst_of_changes_waits_for_the_answer_and_goes_in_one_request() {
        let (pa, pb) = (peer(), peer());
        let (mut da, mut db) = (AutoCommit::new(), AutoCommit::new());
        let (mut sa, mut sb) = (SyncSessions::new(), SyncSessions::new());
        let t0 = Instant::now();
        let first = sa.on_peer_up(pb, &mut da, t0).expect("a first message");
        sb.on_peer_up(pa, &mut db, t0);
        // Three local changes while the first request is unanswered: nothing goes.
        for k in ["a", "b", "c"] {
            write(&mut da, k);
            assert!(sa.generate_all(&mut da, t0).is_empty(), "held back");
        }
        // The answer comes: the next request carries all three.
        let answer = sb.on_message(pa, &mut db, &first, t0).unwrap();
        let mut next = match answer {
            Some(reply) => sa.on_response(pb, &mut da, &reply, t0).unwrap(),
            None => sa.on_delivered(pb, &mut da, t0),
        };
        let mut requests = 0;
        while let Some(msg) = next.take() {
            requests += 1;
            assert!(requests < 10, "did not converge");
            next = match sb.on_message(pa, &mut db, &msg, t0).unwrap() {
                Some(reply) => sa.on_response(pb, &mut da, &reply, t0).unwrap(),
                None => sa.on_delivered(pb, &mut da, t0),
            };
        }
        assert_eq!(da.get_heads(), db.get_heads(), "b has all three changes");
        // A request lost without a word stops holding back after OUTSTANDING_LIMIT.
        write(&mut da, "d");
        assert_eq!(sa.generate_all(&mut da, t0).len(), 1);
        write(&mut da, "e");
        assert!(sa.generate_all(&mut da, t0).is_empty());
        assert_eq!(sa.generate_all(&mut da, t0 + OUTSTANDING_LIMIT).len(), 1);
    }

    #[test]
    fn held_back_news_goes_at_the_next_anti_entropy_round_after_a_failure() {
        let mut peers: Vec<PeerId> = (0..6).map(|_| peer()).collect();
        peers.sort();
        // The last in the ring: not among the 4 a round starting at 0 takes in turn.
        let target = peers[5];
        let mut da = AutoCommit::new();
        let mut sa = SyncSessions::new();
        let t0 = Instant::now();
        for p in &peers {
            let _ = sa.on_peer_up(*p, &mut da, t0);
            if *p != target {
                sa.on_answered(*p);
            }
        }
        write(&mut da, "a");
        let pushed: Vec<PeerId> = sa
            .generate_all(&mut da, t0)
            .into_iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(pushed.len(), 5);
        assert!(
            !pushed.contains(&target),
            "held back: its first request is unanswered"
        );
        // The request fails: nothing is retried at once (a failing peer is not hammered)...
        sa.on_send_failed(target, t0, "timed out".into());
        // ...the next round takes every held-back peer, besides the 4 in turn.
        let round: Vec<PeerId> = sa
            .anti_entropy(&mut da, t0)
            .into_iter()
            .map(|m| m.0)
            .collect();
        assert!(round.contains(&target), "{round:?}");
    }

    #[test]
    fn a_push_says_everyone_only_when_every_member_believed_alive_is_linked() {
        let (pb, pc) = (peer(), peer());
        let mut da = AutoCommit::new();
        let mut sa = SyncSessions::new();
        let t0 = Instant::now();
        let _ = sa.on_peer_up(pb, &mut da, t0);
        sa.on_answered(pb);
        // Not told who is alive yet: receivers relay, as before.
        write(&mut da, "a");
        assert_eq!(sa.generate_all(&mut da, t0).len(), 1);
        assert!(!sa.to_everyone(&pb));
        sa.on_answered(pb);
        // c is alive but not linked: still not everyone.
        sa.set_alive([pb, pc].into_iter().collect());
        write(&mut da, "b");
        assert_eq!(sa.generate_all(&mut da, t0).len(), 1);
        assert!(!sa.to_everyone(&pb));
        sa.on_answered(pb);
        // Every member believed alive is linked: the push reaches everyone.
        sa.set_alive([pb].into_iter().collect());
        write(&mut da, "c");
        assert_eq!(sa.generate_all(&mut da, t0).len(), 1);
        assert!(sa.to_everyone(&pb));
        // A relay or an anti-entropy round is not a push to everyone.
        sa.on_answered(pb);
        let _ = sa.anti_entropy(&mut da, t0);
        assert!(!sa.to_everyone(&pb));
    }
}
