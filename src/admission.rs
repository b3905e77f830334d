//! Admission: who may talk to us. Owns the mesh key, the mesh id derived from it, and the
//! sans-IO state machine of the `/mesh/auth/1` handshake (spec: `protocol/auth.md`).
//!
//! Every libp2p connection is already authenticated to a node key by QUIC/TLS. Admission adds
//! the mesh boundary: both sides prove knowledge of the mesh key, bound to both node ids and to
//! fresh nonces from both sides, before any other mesh protocol is served or sent. The key never
//! crosses the wire.
//!
//! Handshake, dialer D and listener L:
//! 1. D → L `Hello { nonce_d }`; L → D `Challenge { nonce_l, proof_l }` where
//!    `proof_l = HMAC(K, "mesh-auth/v1" | "L" | D | L | nonce_d | nonce_l)`. D checks it: L is a member.
//! 2. D → L `Proof { proof_d, info_d }` with the same MAC under role `"D"`; L checks it: D is a
//!    member. L → D `Welcome { info_l }`.
//!
//! Files: this one (the handshake's state machine), `key` (the key, its id, the proofs),
//! `keyring` (the current and previous keys across `mesh key rotate`).
//!
//! The core does no I/O and reads no clock: callers pass `now` and get back what to send or
//! whom to disconnect. What it does not own: the transport (see [`crate::transport`]), the node
//! info payload (opaque here, typed by the caller), membership.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

pub use crate::wire::auth::{AuthRequest, AuthResponse, NONCE_LEN, Nonce, Proof, WireNonce};
pub use key::{
    MESH_ID_LEN, MESH_KEY_FILE, MESH_KEY_LEN, MeshId, MeshKey, MeshKeyError, getrandom_fill,
};
pub use keyring::{KEYRING_FILE, Keyring};

use key::{Nonces, Role};

mod key;
mod keyring;

/// How long a connection may stay unadmitted before it is closed and counted as a failure.
/// A handshake is two round trips (~1 ms on a LAN); 5 s leaves room for a loaded Raspberry Pi
/// and still frees a slot held by a silent or hostile peer quickly.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// First backoff after a failed admission; doubles per consecutive failure up to
/// [`MAX_BACKOFF`]. A peer with the wrong key retries at most every few minutes.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// Upper bound of the admission backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Most peers tracked at once (pending handshakes plus backoff entries). Bounds memory against
/// a flood of fresh peer ids; past it the oldest backoff entries are forgotten first.
pub const MAX_TRACKED_PEERS: usize = 4096;

/// Why a peer failed admission. Counted per reason and logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthFailure {
    /// The peer's proof did not verify: it holds another mesh key (or none).
    BadProof,
    /// The peer sent a message out of order (e.g. a Proof without a Hello).
    Protocol,
    /// The handshake did not finish within [`AUTH_TIMEOUT`].
    Timeout,
    /// The peer answered `Denied`: it does not accept our key.
    Denied,
    /// The peer does not speak `/mesh/auth/1`, or the stream failed.
    Transport,
    /// The peer closed the connection before the handshake finished.
    Abandoned,
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthFailure::BadProof => "bad proof (different mesh key)",
            AuthFailure::Protocol => "handshake message out of order",
            AuthFailure::Timeout => "handshake timed out",
            AuthFailure::Denied => "peer denied us (different mesh key)",
            AuthFailure::Transport => "auth stream failed or protocol unsupported",
            AuthFailure::Abandoned => "peer hung up during the handshake (different mesh key?)",
        })
    }
}

/// What the caller must do after feeding the core.
#[derive(Debug, PartialEq)]
pub enum AdmissionAction<I> {
    /// Send this request to the peer (dialer side).
    Send(PeerId, AuthRequest<I>),
    /// The peer proved membership and knows we did: mesh protocols may flow both ways.
    Admitted { peer: PeerId, info: I },
    /// The peer was admitted with our previous key (it missed a rotation): hand it the
    /// current one.
    Outdated(PeerId),
    /// Close every connection to the peer and refuse it until the backoff ends.
    Reject {
        peer: PeerId,
        reason: AuthFailure,
        backoff: Duration,
    },
    /// A lenient peer (a rendezvous point, or anyone at an open point) is not a member: its
    /// connection stays, unadmitted, and it is not backed off.
    NotMember { peer: PeerId, reason: AuthFailure },
}

#[derive(Debug, Clone, Copy)]
enum DialerState {
    /// We sent Hello with this nonce.
    SentHello { nonce: Nonce, deadline: Instant },
    /// We verified the listener and sent Proof; waiting for Welcome. `previous`: with our
    /// previous key.
    SentProof { deadline: Instant, previous: bool },
}

#[derive(Debug, Clone, Copy)]
enum ListenerState {
    /// A connection arrived; no Hello yet.
    AwaitingHello { deadline: Instant },
    /// We answered Hello; waiting for Proof. `previous`: the handshake uses our previous key.
    SentChallenge {
        nonces: Nonces,
        deadline: Instant,
        previous: bool,
    },
}

impl DialerState {
    fn deadline(&self) -> Instant {
        match self {
            DialerState::SentHello { deadline, .. } | DialerState::SentProof { deadline, .. } => {
                *deadline
            }
        }
    }
}

impl ListenerState {
    fn deadline(&self) -> Instant {
        match self {
            ListenerState::AwaitingHello { deadline }
            | ListenerState::SentChallenge { deadline, .. } => *deadline,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

/// Counters of admission outcomes, for `mesh status` and logs.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdmissionStats {
    pub admitted: u64,
    pub bad_proof: u64,
    pub protocol: u64,
    pub timeout: u64,
    pub denied: u64,
    pub transport: u64,
    pub abandoned: u64,
    /// Connections from peers still in backoff, closed on arrival.
    pub refused_in_backoff: u64,
}

/// The sans-IO admission core for one node.
///
/// The two directions of a handshake are tracked apart, because when two nodes dial each other
/// at once each is dialer on one connection and listener on the other: either handshake
/// completing admits the peer, and one admission covers every connection to that node key.
pub struct Admission {
    keys: Keyring,
    /// Who may be admitted with the previous key: the document's members (not removed).
    members: HashSet<PeerId>,
    local: PeerId,
    dialing: HashMap<PeerId, DialerState>,
    listening: HashMap<PeerId, ListenerState>,
    admitted: HashSet<PeerId>,
    backoff: HashMap<PeerId, Backoff>,
    /// Peers that may fail admission without being cut off or backed off: rendezvous points
    /// we use (`--rendezvous`), which need not be members of our mesh.
    lenient: HashSet<PeerId>,
    /// Every peer is treated as [`Admission::lenient`]: this node serves an open rendezvous
    /// point (`--rendezvous-open`), whose clients are mostly not members.
    open: bool,
    stats: AdmissionStats,
}

impl Admission {
    pub fn new(key: MeshKey, local: PeerId) -> Self {
        Self::with_keyring(Keyring::single(key), local)
    }

    pub fn with_keyring(keys: Keyring, local: PeerId) -> Self {
        Self {
            keys,
            members: HashSet::new(),
            local,
            dialing: HashMap::new(),
            listening: HashMap::new(),
            admitted: HashSet::new(),
            backoff: HashMap::new(),
            lenient: HashSet::new(),
            open: false,
            stats: AdmissionStats::default(),
        }
    }

    /// Peers whose failed handshake is only counted: no backoff, and the action says so
    /// ([`AdmissionAction::NotMember`]) so the caller keeps the connection. `open`: every peer.
    /// The connection of such a peer stays unadmitted: no mesh protocol is served to it.
    pub fn set_lenient(&mut self, peers: HashSet<PeerId>, open: bool) {
        self.lenient = peers;
        self.open = open;
    }

    pub fn stats(&self) -> &AdmissionStats {
        &self.stats
    }

    /// Whether the peer has been admitted (mesh protocols may be served to and sent to it).
    pub fn is_admitted(&self, peer: &PeerId) -> bool {
        self.admitted.contains(peer)
    }

    /// Whether a connection from or to this peer should be refused right now.
    pub fn in_backoff(&self, peer: &PeerId, now: Instant) -> bool {
        self.backoff.get(peer).is_some_and(|b| b.until > now)
    }

    /// The mesh key this node admits with (and hands to joining devices).
    pub fn key(&self) -> &MeshKey {
        &self.keys.current
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keys
    }

    /// After a rotation, or a newer key handed over by a member. Admitted peers stay admitted.
    pub fn set_keyring(&mut self, keys: Keyring) {
        self.keys = keys;
    }

    /// The node ids that may be admitted with the previous key (the document's members).
    pub fn set_members(&mut self, members: HashSet<PeerId>) {
        self.members = members;
    }

    /// The key with mesh id `id` that `peer` may use: the current one, or the previous one
    /// for a member. Returns it and whether it is the previous one.
    fn key_for(&self, peer: &PeerId, id: Option<[u8; MESH_ID_LEN]>) -> Option<(&MeshKey, bool)> {
        let Some(id) = id else {
            return Some((&self.keys.current, false));
        };
        self.keys
            .by_id(MeshId(id))
            .filter(|(_, previous)| !previous || self.members.contains(peer))
    }

    /// An unadmitted peer sent a join request (`/mesh/join/1`) instead of a Hello: it is
    /// redeeming an invite, not attempting admission, so its connection is no longer waiting
    /// for a handshake (no timeout failure, no backoff).
    pub fn on_join_attempt(&mut self, peer: &PeerId) {
        if !self.admitted.contains(peer)
            && matches!(
                self.listening.get(peer),
                Some(ListenerState::AwaitingHello { .. })
            )
        {
            self.listening.remove(peer);
        }
    }

    /// Records that a connection from a backed-off peer was closed on arrival.
    pub fn count_refused(&mut self) {
        self.stats.refused_in_backoff += 1;
    }

    /// A connection to `peer` was established. On a connection we dialed we start the
    /// handshake, even with a peer admitted already: the peer may have seen every connection
    /// to us close just before this one arrived (a crossing dial closed as a duplicate) and
    /// forgotten our admission, and as listener it only waits for our Hello. On one we
    /// accepted we wait for Hello, under the same deadline, unless the peer is admitted (it
    /// says Hello itself if it needs to).
    pub fn on_connected<I>(
        &mut self,
        peer: PeerId,
        we_dialed: bool,
        now: Instant,
    ) -> Vec<AdmissionAction<I>> {
        if !we_dialed && self.admitted.contains(&peer) {
            return Vec::new();
        }
        self.make_room();
        if !we_dialed {
            self.listening
                .entry(peer)
                .or_insert(ListenerState::AwaitingHello {
                    deadline: now + AUTH_TIMEOUT,
                });
            return Vec::new();
        }
        if self.dialing.contains_key(&peer) {
            return Vec::new();
        }
        let nonce = random_nonce();
        self.dialing.insert(
            peer,
            DialerState::SentHello {
                nonce,
                deadline: now + AUTH_TIMEOUT,
            },
        );
        vec![AdmissionAction::Send(
            peer,
            AuthRequest::Hello {
                nonce: WireNonce(nonce),
                key: Some(self.keys.current.mesh_id().0),
            },
        )]
    }

    /// Every connection to `peer` closed: its admission ends with them. A peer that hangs up
    /// in the middle of a handshake failed it (typically: it holds another key and rejected
    /// our proof first), so it is counted and backed off like any other failure.
    pub fn on_disconnected<I>(&mut self, peer: &PeerId, now: Instant) -> Vec<AdmissionAction<I>> {
        let was_admitted = self.admitted.remove(peer);
        // Only a peer that started a handshake (sent Hello) and then hung up failed it. A
        // connection that closes before any Hello is not an attempt: libp2p drops the extra
        // connections of a dial raced over several addresses.
        let challenged = matches!(
            self.listening.get(peer),
            Some(ListenerState::SentChallenge { .. })
        );
        if challenged && !was_admitted {
            return vec![self.fail(*peer, AuthFailure::Abandoned, now)];
        }
        self.dialing.remove(peer);
        self.listening.remove(peer);
        Vec::new()
    }

    /// Listener side: a request arrived. Returns the response to send (if any) and actions.
    pub fn on_request<I>(
        &mut self,
        peer: PeerId,
        request: AuthRequest<I>,
        local_info: impl FnOnce() -> I,
        now: Instant,
    ) -> (Option<AuthResponse<I>>, Vec<AdmissionAction<I>>) {
        match request {
            AuthRequest::Hello { nonce, key } => {
                // Answered even for an admitted peer: it may have restarted, or dialed us at the
                // same time as we dialed it. Its admission stands until a proof fails.
                self.make_room();
                let nonces = Nonces {
                    dialer: nonce.0,
                    listener: random_nonce(),
                };
                // The dialer's key if we may use it with this peer, else our current one
                // (the dialer then finds out, or has it as its previous key).
                let (key, previous) = self
                    .key_for(&peer, key)
                    .unwrap_or((&self.keys.current, false));
                let proof = key.proof(Role::Listener, &peer, &self.local, &nonces);
                let key = Some(key.mesh_id().0);
                self.listening.insert(
                    peer,
                    ListenerState::SentChallenge {
                        nonces,
                        deadline: now + AUTH_TIMEOUT,
                        previous,
                    },
                );
                (
                    Some(AuthResponse::Challenge {
                        nonce: WireNonce(nonces.listener),
                        proof,
                        key,
                    }),
                    Vec::new(),
                )
            }
            AuthRequest::Proof { proof, info } => {
                let Some(ListenerState::SentChallenge {
                    nonces, previous, ..
                }) = self.listening.remove(&peer)
                else {
                    let reject = self.fail(peer, AuthFailure::Protocol, now);
                    return (Some(AuthResponse::Denied), vec![reject]);
                };
                let key = match (previous, &self.keys.previous) {
                    (true, Some(previous)) => previous,
                    _ => &self.keys.current,
                };
                if !key.verify(Role::Dialer, &peer, &self.local, &nonces, &proof) {
                    let reject = self.fail(peer, AuthFailure::BadProof, now);
                    return (Some(AuthResponse::Denied), vec![reject]);
                }
                self.admit(peer);
                let mut actions = vec![AdmissionAction::Admitted { peer, info }];
                if previous {
                    actions.push(AdmissionAction::Outdated(peer));
                }
                (Some(AuthResponse::Welcome { info: local_info() }), actions)
            }
        }
    }

    /// Dialer side: a response arrived.
    pub fn on_response<I>(
        &mut self,
        peer: PeerId,
        response: AuthResponse<I>,
        local_info: impl FnOnce() -> I,
        now: Instant,
    ) -> Vec<AdmissionAction<I>> {
        match (self.dialing.get(&peer).copied(), response) {
            (
                Some(DialerState::SentHello { nonce, .. }),
                AuthResponse::Challenge {
                    nonce: listener_nonce,
                    proof,
                    key,
                },
            ) => {
                let nonces = Nonces {
                    dialer: nonce,
                    listener: listener_nonce.0,
                };
                // The listener chose the key: ours, or our previous one if it is a member
                // that missed a rotation.
                let Some((key, previous)) = self.key_for(&peer, key) else {
                    return vec![self.fail(peer, AuthFailure::BadProof, now)];
                };
                if !key.verify(Role::Listener, &self.local, &peer, &nonces, &proof) {
                    return vec![self.fail(peer, AuthFailure::BadProof, now)];
                }
                let proof = key.proof(Role::Dialer, &self.local, &peer, &nonces);
                self.dialing.insert(
                    peer,
                    DialerState::SentProof {
                        deadline: now + AUTH_TIMEOUT,
                        previous,
                    },
                );
                vec![AdmissionAction::Send(
                    peer,
                    AuthRequest::Proof {
                        proof,
                        info: local_info(),
                    },
                )]
            }
            (Some(DialerState::SentProof { previous, .. }), AuthResponse::Welcome { info }) => {
                self.dialing.remove(&peer);
                self.admit(peer);
                let mut actions = vec![AdmissionAction::Admitted { peer, info }];
                if previous {
                    actions.push(AdmissionAction::Outdated(peer));
                }
                actions
            }
            (_, AuthResponse::Denied) => vec![self.fail(peer, AuthFailure::Denied, now)],
            _ => vec![self.fail(peer, AuthFailure::Protocol, now)],
        }
    }

    /// A handshake request we sent could not be delivered or answered. `unsupported`: the peer
    /// does not speak `/mesh/auth/1` (a failure). Otherwise the connection carrying it was lost
    /// (not the peer's fault): if another connection remains (`still_connected`), the handshake
    /// starts over on it.
    pub fn on_transport_failure<I>(
        &mut self,
        peer: PeerId,
        unsupported: bool,
        still_connected: bool,
        now: Instant,
    ) -> Vec<AdmissionAction<I>> {
        self.dialing.remove(&peer);
        if self.admitted.contains(&peer) {
            return Vec::new();
        }
        if unsupported {
            return vec![self.fail(peer, AuthFailure::Transport, now)];
        }
        if still_connected {
            return self.on_connected(peer, true, now);
        }
        Vec::new()
    }

    /// Ends handshakes of unadmitted peers past their deadline. Call on every tick.
    pub fn poll_timeouts<I>(&mut self, now: Instant) -> Vec<AdmissionAction<I>> {
        let mut expired: Vec<PeerId> = self
            .dialing
            .iter()
            .filter(|(_, s)| s.deadline() <= now)
            .map(|(p, _)| *p)
            .chain(
                self.listening
                    .iter()
                    .filter(|(_, s)| s.deadline() <= now)
                    .map(|(p, _)| *p),
            )
            .collect();
        expired.sort();
        expired.dedup();
        let mut actions = Vec::new();
        for peer in expired {
            if self.admitted.contains(&peer) {
                // A second handshake of an admitted peer went quiet: nothing to punish.
                self.dialing.remove(&peer);
                self.listening.remove(&peer);
            } else {
                actions.push(self.fail(peer, AuthFailure::Timeout, now));
            }
        }
        actions
    }

    /// The earliest deadline the caller must wake up for.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.dialing
            .values()
            .map(DialerState::deadline)
            .chain(self.listening.values().map(ListenerState::deadline))
            .min()
    }

    /// Admits `peer`. Only the direction that completed is cleared: when both sides dialed at
    /// once, the other handshake is still in flight and must be allowed to finish (clearing it
    /// would make its next message look out of order).
    fn admit(&mut self, peer: PeerId) {
        self.admitted.insert(peer);
        self.backoff.remove(&peer);
        self.stats.admitted += 1;
    }

    fn fail<I>(&mut self, peer: PeerId, reason: AuthFailure, now: Instant) -> AdmissionAction<I> {
        self.dialing.remove(&peer);
        self.listening.remove(&peer);
        self.admitted.remove(&peer);
        match reason {
            AuthFailure::BadProof => self.stats.bad_proof += 1,
            AuthFailure::Protocol => self.stats.protocol += 1,
            AuthFailure::Timeout => self.stats.timeout += 1,
            AuthFailure::Denied => self.stats.denied += 1,
            AuthFailure::Transport => self.stats.transport += 1,
            AuthFailure::Abandoned => self.stats.abandoned += 1,
        }
        if self.open || self.lenient.contains(&peer) {
            return AdmissionAction::NotMember { peer, reason };
        }
        let failures = self.backoff.get(&peer).map_or(0, |b| b.failures) + 1;
        let backoff = backoff_for(failures);
        self.make_room();
        self.backoff.insert(
            peer,
            Backoff {
                failures,
                until: now + backoff,
            },
        );
        AdmissionAction::Reject {
            peer,
            reason,
            backoff,
        }
    }

    /// Keeps the pending and backoff tables within [`MAX_TRACKED_PEERS`]: the backoff entry that
    /// ends soonest goes first, then any pending handshake.
    fn make_room(&mut self) {
        while self.dialing.len() + self.listening.len() + self.backoff.len() >= MAX_TRACKED_PEERS {
            if let Some(p) = self
                .backoff
                .iter()
                .min_by_key(|(_, b)| b.until)
                .map(|(p, _)| *p)
            {
                self.backoff.remove(&p);
            } else if let Some(p) = self.listening.keys().next().copied() {
                self.listening.remove(&p);
            } else if let Some(p) = self.dialing.keys().next().copied() {
                self.dialing.remove(&p);
            } else {
                break;
            }
        }
    }
}

fn random_nonce() -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    getrandom_fill(&mut n);
    n
}

/// Backoff after the n-th consecutive failure (n >= 1): 2 s, 4 s, 8 s, ... capped at 300 s.
pub fn backoff_for(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1u32 << exp).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    /// Runs a full handshake between two cores; returns what each side concluded.
    fn handshake(
        dk: &MeshKey,
        lk: &MeshKey,
    ) -> (Vec<AdmissionAction<String>>, Vec<AdmissionAction<String>>) {
        let (d, l) = (peer(), peer());
        let mut dialer = Admission::new(dk.clone(), d);
        let mut listener = Admission::new(lk.clone(), l);
        run_handshake(&mut dialer, &mut listener)
    }

    /// A handshake between two cores that already exist (their peer ids are their locals).
    fn run_handshake(
        dialer: &mut Admission,
        listener: &mut Admission,
    ) -> (Vec<AdmissionAction<String>>, Vec<AdmissionAction<String>>) {
        let (d, l) = (dialer.local, listener.local);
        let now = Instant::now();
        let mut d_out = Vec::new();
        let mut l_out = Vec::new();
        let mut to_send = dialer.on_connected::<String>(l, true, now);
        let _ = listener.on_connected::<String>(d, false, now);
        while let Some(AdmissionAction::Send(_, req)) = to_send.pop() {
            let (resp, acts) = listener.on_request(d, req, || "L".to_string(), now);
            l_out.extend(acts);
            let Some(resp) = resp else { break };
            for a in dialer.on_response(l, resp, || "D".to_string(), now) {
                match a {
                    AdmissionAction::Send(..) => to_send.push(a),
                    other => d_out.push(other),
                }
            }
        }
        (d_out, l_out)
    }

    #[test]
    fn after_a_rotation_a_member_with_the_old_key_is_admitted_and_told_but_no_stranger() {
        let old = MeshKey::generate();
        let rotated = Keyring::single(old.clone()).rotated();
        let (a, m, stranger) = (peer(), peer(), peer());
        let rotator = || {
            let mut core = Admission::with_keyring(rotated.clone(), a);
            core.set_members([a, m].into_iter().collect());
            core
        };
        let outdated = |acts: &[AdmissionAction<String>]| {
            acts.iter()
                .any(|x| matches!(x, AdmissionAction::Outdated(_)))
        };
        let admitted = |acts: &[AdmissionAction<String>]| {
            acts.iter()
                .any(|x| matches!(x, AdmissionAction::Admitted { .. }))
        };
        // The member that missed the rotation dials, or is dialed: admitted both ways, and
        // the rotator (only) learns it must hand over the new key.
        let (d, l) = run_handshake(&mut Admission::new(old.clone(), m), &mut rotator());
        assert!(admitted(&d) && admitted(&l) && outdated(&l) && !outdated(&d));
        let (d, l) = run_handshake(&mut rotator(), &mut Admission::new(old.clone(), m));
        assert!(admitted(&d) && admitted(&l) && outdated(&d) && !outdated(&l));
        // A node id the document does not list (a removed device's fresh identity) with the
        // old key: refused both ways.
        let (d, l) = run_handshake(&mut Admission::new(old.clone(), stranger), &mut rotator());
        assert!(!admitted(&d) && !admitted(&l));
        let (d, l) = run_handshake(&mut rotator(), &mut Admission::new(old.clone(), stranger));
        assert!(!admitted(&d) && !admitted(&l));
        // Two members that both hold the new key use it: nothing to hand over.
        let mut other = Admission::with_keyring(rotated.clone(), m);
        other.set_members([a, m].into_iter().collect());
        let (d, l) = run_handshake(&mut other, &mut rotator());
        assert!(admitted(&d) && admitted(&l) && !outdated(&d) && !outdated(&l));
    }

    #[test]
    fn a_lenient_peer_that_is_not_a_member_is_neither_cut_off_nor_backed_off() {
        let (d, point) = (peer(), peer());
        let mut dialer = Admission::new(MeshKey::generate(), d);
        dialer.set_lenient([point].into_iter().collect(), false);
        let mut listener = Admission::new(MeshKey::generate(), point);
        let (d_out, _) = run_handshake(&mut dialer, &mut listener);
        assert!(matches!(
            &d_out[..],
            [AdmissionAction::NotMember {
                reason: AuthFailure::BadProof,
                ..
            }]
        ));
        assert!(!dialer.in_backoff(&point, Instant::now()));
        assert!(!dialer.is_admitted(&point));
        assert_eq!(dialer.stats().bad_proof, 1);
        // An open point treats every stranger so; a silent one times out without backoff.
        let mut open = Admission::new(MeshKey::generate(), peer());
        open.set_lenient(HashSet::new(), true);
        let stranger = peer();
        let t0 = Instant::now();
        let _ = open.on_connected::<String>(stranger, false, t0);
        let acts = open.poll_timeouts::<String>(t0 + AUTH_TIMEOUT);
        assert!(matches!(&acts[..], [AdmissionAction::NotMember { .. }]));
        assert!(!open.in_backoff(&stranger, t0 + AUTH_TIMEOUT));
    }

    #[test]
    fn a_dialer_that_still_counts_the_peer_admitted_says_hello_on_a_new_connection() {
        // Crossing dials: the listener saw its only connection to the dialer close (the
        // dialer closed it as a duplicate) and forgot the admission; the dialer kept the other
        // connection, which the listener only sees now. Without a new Hello the listener would
        // wait, time out and back the dialer off.
        let k = MeshKey::generate();
        let (d, l) = (peer(), peer());
        let mut dialer = Admission::new(k.clone(), d);
        let mut listener = Admission::new(k, l);
        let (d_out, l_out) = run_handshake(&mut dialer, &mut listener);
        assert!(matches!(&d_out[..], [AdmissionAction::Admitted { .. }]));
        assert!(matches!(&l_out[..], [AdmissionAction::Admitted { .. }]));
        let t0 = Instant::now();
        let _ = listener.on_disconnected::<String>(&d, t0);
        assert!(!listener.is_admitted(&d) && dialer.is_admitted(&l));
        let (d_out, l_out) = run_handshake(&mut dialer, &mut listener);
        assert!(
            matches!(&d_out[..], [AdmissionAction::Admitted { .. }]),
            "{d_out:?}"
        );
        assert!(
            matches!(&l_out[..], [AdmissionAction::Admitted { .. }]),
            "{l_out:?}"
        );
        assert!(listener.is_admitted(&d));
        assert_eq!(listener.stats().timeout, 0);
    }

    #[test]
    fn same_key_admits_both_ways_and_swaps_info() {
        let k = MeshKey::generate();
        let (d, l) = handshake(&k, &k);
        assert!(matches!(&d[..], [AdmissionAction::Admitted { info, .. }] if info == "L"));
        assert!(matches!(&l[..], [AdmissionAction::Admitted { info, .. }] if info == "D"));
    }

    #[test]
    fn different_keys_are_rejected_by_the_dialer_before_it_proves_anything() {
        let (d, l) = handshake(&MeshKey::generate(), &MeshKey::generate());
        assert!(matches!(
            &d[..],
            [AdmissionAction::Reject {
                reason: AuthFailure::BadProof,
                ..
            }]
        ));
        assert!(l.is_empty(), "the listener never saw a proof: {l:?}");
    }

    #[test]
    fn proof_is_bound_to_ids_and_nonces() {
        let k = MeshKey::generate();
        let (a, b, c) = (peer(), peer(), peer());
        let n = Nonces {
            dialer: [1; 32],
            listener: [2; 32],
        };
        let p = k.proof(Role::Dialer, &a, &b, &n);
        assert!(k.verify(Role::Dialer, &a, &b, &n, &p));
        assert!(!k.verify(Role::Listener, &a, &b, &n, &p), "role is bound");
        assert!(
            !k.verify(Role::Dialer, &b, &a, &n, &p),
            "direction is bound"
        );
        assert!(
            !k.verify(Role::Dialer, &a, &c, &n, &p),
            "listener id is bound"
        );
        let n2 = Nonces {
            dialer: [1; 32],
            listener: [3; 32],
        };
        assert!(!k.verify(Role::Dialer, &a, &b, &n2, &p), "nonce is bound");
    }

    #[test]
    fn proof_without_hello_is_a_protocol_failure() {
        let k = MeshKey::generate();
        let (d, l) = (peer(), peer());
        let mut listener = Admission::new(k.clone(), l);
        let now = Instant::now();
        let (resp, acts) = listener.on_request(
            d,
            AuthRequest::Proof {
                proof: Proof([0; 32]),
                info: String::new(),
            },
            String::new,
            now,
        );
        assert!(matches!(resp, Some(AuthResponse::Denied)));
        assert!(matches!(
            &acts[..],
            [AdmissionAction::Reject {
                reason: AuthFailure::Protocol,
                ..
            }]
        ));
        assert!(listener.in_backoff(&d, now));
        assert!(!listener.in_backoff(&d, now + FIRST_BACKOFF));
    }

    #[test]
    fn silent_peer_times_out_and_backoff_grows() {
        let k = MeshKey::generate();
        let (me, them) = (peer(), peer());
        let mut core = Admission::new(k, me);
        let mut now = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..4 {
            let _ = core.on_connected::<()>(them, false, now);
            assert_eq!(core.next_deadline(), Some(now + AUTH_TIMEOUT));
            assert!(core.poll_timeouts::<()>(now).is_empty());
            now += AUTH_TIMEOUT;
            let acts = core.poll_timeouts::<()>(now);
            let [AdmissionAction::Reject { backoff, .. }] = &acts[..] else {
                panic!("{acts:?}")
            };
            assert!(*backoff > last);
            last = *backoff;
        }
        assert_eq!(core.stats().timeout, 4);
    }

    #[test]
    fn simultaneous_dials_both_complete() {
        let k = MeshKey::generate();
        let (a, b) = (peer(), peer());
        let mut ca = Admission::new(k.clone(), a);
        let mut cb = Admission::new(k, b);
        let now = Instant::now();
        // Each side accepted the other's connection and dialed its own.
        let _ = ca.on_connected::<u8>(b, false, now);
        let _ = cb.on_connected::<u8>(a, false, now);
        let [AdmissionAction::Send(_, hello_a)] = &ca.on_connected::<u8>(b, true, now)[..] else {
            panic!("a must send Hello even with a listener handshake pending")
        };
        let [AdmissionAction::Send(_, hello_b)] = &cb.on_connected::<u8>(a, true, now)[..] else {
            panic!()
        };
        // b's handshake gets as far as its Proof being in flight...
        let (Some(challenge_b), _) = ca.on_request(b, hello_b.clone(), || 1, now) else {
            panic!()
        };
        let [AdmissionAction::Send(_, proof_b)] = &cb.on_response(a, challenge_b, || 2, now)[..]
        else {
            panic!()
        };
        let (Some(challenge), _) = cb.on_request(a, hello_a.clone(), || 2, now) else {
            panic!()
        };
        let [AdmissionAction::Send(_, proof)] = &ca.on_response(b, challenge, || 1, now)[..] else {
            panic!()
        };
        let (Some(welcome), acts) = cb.on_request(a, proof.clone(), || 2, now) else {
            panic!()
        };
        assert!(matches!(acts[..], [AdmissionAction::Admitted { .. }]));
        assert!(matches!(
            ca.on_response(b, welcome, || 1, now)[..],
            [AdmissionAction::Admitted { .. }]
        ));
        assert!(ca.is_admitted(&b) && cb.is_admitted(&a));
        // ...and arrives after a's handshake admitted both: it must still be accepted.
        let (Some(AuthResponse::Welcome { .. }), acts) =
            ca.on_request(b, proof_b.clone(), || 1, now)
        else {
            panic!("a late proof of an admitted peer was refused")
        };
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, AdmissionAction::Reject { .. }))
        );
        assert!(ca.is_admitted(&b));
        // The other direction's pending handshake must not time out into a rejection.
        assert!(ca.poll_timeouts::<u8>(now + AUTH_TIMEOUT).is_empty());
        assert!(cb.poll_timeouts::<u8>(now + AUTH_TIMEOUT).is_empty());
    }

    #[test]
    fn hanging_up_mid_handshake_is_a_counted_failure() {
        let k = MeshKey::generate();
        let (me, them) = (peer(), peer());
        let mut core = Admission::new(k, me);
        let now = Instant::now();
        let _ = core.on_connected::<u8>(them, false, now);
        // A connection that closes before any Hello is not a failure...
        assert!(core.on_disconnected::<u8>(&them, now).is_empty());
        // ...one that hangs up after its Hello is.
        let _ = core.on_connected::<u8>(them, false, now);
        let _ = core.on_request::<u8>(
            them,
            AuthRequest::Hello {
                nonce: WireNonce([1; 32]),
                key: None,
            },
            || 0,
            now,
        );
        let acts = core.on_disconnected::<u8>(&them, now);
        assert!(matches!(
            acts[..],
            [AdmissionAction::Reject {
                reason: AuthFailure::Abandoned,
                ..
            }]
        ));
        assert_eq!(core.stats().abandoned, 1);
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff_for(1), FIRST_BACKOFF);
        assert_eq!(backoff_for(2), FIRST_BACKOFF * 2);
        assert_eq!(backoff_for(100), MAX_BACKOFF);
    }

    #[test]
    fn mesh_id_is_stable_and_key_dependent() {
        let k: MeshKey = "00".repeat(32).parse().unwrap();
        assert_eq!(k.mesh_id(), k.clone().mesh_id());
        assert_ne!(k.mesh_id(), MeshKey::generate().mesh_id());
        assert_eq!(k.mesh_id().to_string().len(), MESH_ID_LEN * 2);
        assert!(
            !format!("{k:?}").contains(&k.to_hex()),
            "Debug must not leak the key"
        );
    }

    #[test]
    fn key_file_round_trip_and_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let (k, created) = MeshKey::load_or_create(dir.path()).unwrap();
        assert!(created);
        let (k2, created) = MeshKey::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(k, k2);
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "not hex").unwrap();
        let err = MeshKey::read_file(&bad).unwrap_err().to_string();
        assert!(err.contains("64 hex characters"), "{err}");
    }

    #[test]
    fn a_mesh_key_file_readable_by_others_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = MeshKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(MESH_KEY_FILE);
        let (_, quiet) = crate::identity::tests::capture_logs(|| MeshKey::read_file(&path));
        assert!(!quiet.contains("readable by other users"), "{quiet}");
        for mode in [0o644, 0o666, 0o640] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let (read, logs) = crate::identity::tests::capture_logs(|| MeshKey::read_file(&path));
            assert_eq!(read.unwrap(), key, "a warning, not a refusal");
            assert!(logs.contains("readable by other users"), "{mode:o}: {logs}");
            assert!(logs.contains("chmod 600"), "{logs}");
            assert!(logs.contains(&path.display().to_string()), "{logs}");
        }
    }

    #[test]
    fn wire_messages_round_trip_through_cbor() {
        let req: AuthRequest<String> = AuthRequest::Hello {
            nonce: WireNonce([7; 32]),
            key: Some([3; 8]),
        };
        let bytes = serde_cbor_roundtrip(&req);
        assert_eq!(bytes, req);
    }

    fn serde_cbor_roundtrip(req: &AuthRequest<String>) -> AuthRequest<String> {
        let v = serde_json::to_vec(req).unwrap();
        serde_json::from_slice(&v).unwrap()
    }
}
