//! The circuit relay a member serves for its mesh (`--relay-server`, libp2p circuit relay v2),
//! and the rule that it serves members only.
//!
//! libp2p's relay takes "rate limiters" that answer, for each reservation or circuit request,
//! whether this peer may have it; [`MembersOnly`] answers yes only for peers admitted to this
//! node, read from the [`AdmittedSet`] the node actor keeps. A member reserves after its
//! handshake with the relay has ended, and a circuit's source is a member linked to the relay,
//! so neither races admission in practice.
//!
//! Owns the relay's limits ([`relay_config`]); the spec is `protocol/rendezvous.md` (NAT).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

/// Reservations held at once (one per member behind NAT; a mesh has tens of members).
pub const MAX_RESERVATIONS: usize = 128;
/// Reservations of one peer: one per relay address it listens through, with room for renewal
/// overlap.
pub const MAX_RESERVATIONS_PER_PEER: usize = 4;
/// How long a reservation lasts before the client renews it (libp2p's client renews on its
/// own before it ends).
pub const RESERVATION_DURATION: Duration = Duration::from_secs(60 * 60);
/// Circuits held at once, and per peer (the peers behind NAT talk to every member through
/// the relay until hole punching succeeds).
pub const MAX_CIRCUITS: usize = 256;
pub const MAX_CIRCUITS_PER_PEER: usize = 32;
/// How long one circuit lasts. libp2p's default (2 min) is made for hole punching only; a
/// mesh link carries membership and sync for as long as the member is behind NAT. When a
/// circuit ends, the connection on it closes: both sides see the link down, and the dial
/// planner redials at once (250 ms) through the relay, well inside the ~2 s membership
/// takes to call a silent peer dead, so the link comes back before anyone suspects it.
pub const MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(60 * 60);
/// Bytes one circuit may carry before it ends the same way. Membership of a 10-node mesh
/// moves a few KiB/s per link and sync much less when idle; 1 GiB is days of it, and bounds
/// what one member's traffic costs the relay.
pub const MAX_CIRCUIT_BYTES: u64 = 1 << 30;

/// The peers admitted to this node, shared with the relay's limiters. The node actor adds a
/// peer on admission and removes it when its last connection closes.
#[derive(Clone, Debug, Default)]
pub struct AdmittedSet(Arc<RwLock<HashSet<PeerId>>>);

impl AdmittedSet {
    pub fn insert(&self, peer: PeerId) {
        self.0
            .write()
            .expect("never poisoned: no panic while held")
            .insert(peer);
    }

    pub fn remove(&self, peer: &PeerId) {
        self.0
            .write()
            .expect("never poisoned: no panic while held")
            .remove(peer);
    }

    pub fn contains(&self, peer: &PeerId) -> bool {
        self.0
            .read()
            .expect("never poisoned: no panic while held")
            .contains(peer)
    }
}

/// Lets only admitted members reserve or open circuits.
pub struct MembersOnly(pub AdmittedSet);

impl libp2p::relay::RateLimiter for MembersOnly {
    fn try_next(&mut self, peer: PeerId, _addr: &Multiaddr, _now: std::time::Instant) -> bool {
        let member = self.0.contains(&peer);
        if !member {
            tracing::debug!(%peer, "relay request refused: not an admitted member");
        }
        member
    }
}

/// The relay's configuration: the limits above, members only.
pub fn relay_config(members: &AdmittedSet) -> libp2p::relay::Config {
    libp2p::relay::Config {
        max_reservations: MAX_RESERVATIONS,
        max_reservations_per_peer: MAX_RESERVATIONS_PER_PEER,
        reservation_duration: RESERVATION_DURATION,
        reservation_rate_limiters: vec![Box::new(MembersOnly(members.clone()))],
        max_circuits: MAX_CIRCUITS,
        max_circuits_per_peer: MAX_CIRCUITS_PER_PEER,
        max_circuit_duration: MAX_CIRCUIT_DURATION,
        max_circuit_bytes: MAX_CIRCUIT_BYTES,
        circuit_src_rate_limiters: vec![Box::new(MembersOnly(members.clone()))],
    }
}

/// Whether an address goes through a relay (`/p2p-circuit`).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
}
