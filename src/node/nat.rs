//! Members behind NAT: learning that this node is behind one, listening through a member's
//! relay, hole punching, and what a link is (`direct`, `relayed`, `none`). Spec:
//! `protocol/rendezvous.md` (NAT).
//!
//! How a node learns it is behind NAT: every member tells an admitted peer, in the admission
//! handshake, the source address of the connection the peer dialed (`NodeInfo::observed`). An
//! address whose IP is none of this node's own (and not loopback) was rewritten on the way: the
//! node is behind NAT (an equivalent of AutoNAT's probe, through members, with no protocol run
//! for strangers). The verdict holds while the agent runs.
//!
//! What it then does: it reserves a slot on a member that serves a relay (`NodeInfo::relay`),
//! listening at `<relay address>/p2p/<relay>/p2p-circuit`. That address joins its listen
//! addresses, so it reaches the document (peer exchange) and rendezvous registrations, and
//! members that cannot dial it directly reach it through the relay. Over a relayed link,
//! DCUtR tries a hole punch with the observed addresses as candidates; when a direct
//! connection comes up, the relayed one is closed.
//!
//! [`NatState`] holds the decisions (sans-IO); the `impl NodeActor` below does the I/O.

use std::collections::HashMap;
use std::net::IpAddr;

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;

use super::*;
use crate::transport::is_relayed;

/// Wait before trying another reservation after one failed or closed.
pub const RESERVE_RETRY: Duration = Duration::from_secs(5);

/// The IP of an address (its first `/ip4` or `/ip6`).
pub(super) fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// What kind of link this node has with a peer, from whether each open connection is
/// relayed.
pub fn link_of(relayed: impl IntoIterator<Item = bool>) -> &'static str {
    let mut link = "none";
    for relayed in relayed {
        if relayed {
            link = "relayed";
        } else {
            return "direct";
        }
    }
    link
}

/// This node's reachability and relay reservation (see the module doc).
#[derive(Debug, Default)]
pub struct NatState {
    /// Where a member saw us, and who, when that address is none of ours.
    pub behind_nat: Option<(Multiaddr, PeerId)>,
    /// Members serving a relay, with an address to reach them at.
    relays: HashMap<PeerId, Multiaddr>,
    /// The reservation in use or being made: the relay and the listener.
    pub reservation: Option<(PeerId, ListenerId)>,
    /// Whether the relay accepted it.
    pub reserved: bool,
    /// No new reservation before this.
    not_before: Option<std::time::Instant>,
}

impl NatState {
    /// A member (`by`) saw us at `observed`; `own` are our listen addresses. Returns whether
    /// this made us learn we are behind NAT.
    pub fn on_observed(&mut self, observed: &Multiaddr, by: PeerId, own: &[Multiaddr]) -> bool {
        let Some(ip) = ip_of(observed) else {
            return false;
        };
        if ip.is_loopback() || ip.is_unspecified() || self.behind_nat.is_some() {
            return false;
        }
        let ours = own
            .iter()
            .filter(|a| !is_relayed(a))
            .filter_map(ip_of)
            .any(|own_ip| own_ip == ip);
        if ours {
            return false;
        }
        self.behind_nat = Some((observed.clone(), by));
        true
    }

    /// `peer` serves a relay, reachable at `addr` (a direct address of it).
    pub fn on_relay(&mut self, peer: PeerId, addr: Multiaddr) {
        self.relays.insert(peer, addr);
    }

    /// `peer` is gone (its last connection closed): not a relay to use now; a reservation on
    /// it has ended with the connection.
    pub fn on_gone(&mut self, peer: &PeerId, now: std::time::Instant) {
        self.relays.remove(peer);
        if self.reservation.is_some_and(|(relay, _)| relay == *peer) {
            self.reservation = None;
            self.reserved = false;
            self.not_before = Some(now + RESERVE_RETRY);
        }
    }

    /// The listener of the reservation closed (refused, or the relay went away).
    pub fn on_listener_closed(&mut self, listener: ListenerId, now: std::time::Instant) -> bool {
        if self.reservation.is_some_and(|(_, id)| id == listener) {
            self.reservation = None;
            self.reserved = false;
            self.not_before = Some(now + RESERVE_RETRY);
            return true;
        }
        false
    }

    /// The relay to reserve on now, with the address to listen at, if one is due: behind
    /// NAT, no reservation, a relay known (the lowest id, so that members behind one NAT
    /// tend to share one), and not waiting after a failure.
    pub fn to_reserve(&self, now: std::time::Instant) -> Option<(PeerId, Multiaddr)> {
        if self.behind_nat.is_none()
            || self.reservation.is_some()
            || self.not_before.is_some_and(|t| now < t)
        {
            return None;
        }
        let (relay, addr) = self.relays.iter().min_by_key(|(p, _)| **p)?;
        let circuit = addr
            .clone()
            .with(Protocol::P2p(*relay))
            .with(Protocol::P2pCircuit);
        Some((*relay, circuit))
    }

    /// When [`NatState::to_reserve`] may next have something to do.
    pub fn next_deadline(&self) -> Option<std::time::Instant> {
        if self.behind_nat.is_some() && self.reservation.is_none() && !self.relays.is_empty() {
            self.not_before
        } else {
            None
        }
    }
}

impl NodeActor {
    /// This node as a given peer is to see it in the handshake: where we see that peer when
    /// it dialed us directly.
    pub(super) fn local_info_for(&self, peer: &PeerId) -> NodeInfo {
        let mut info = self.local_info();
        info.observed = self
            .connections
            .get(peer)
            .and_then(|c| c.iter().rev().find(|c| !c.we_dialed && !c.relayed))
            .map(|c| c.remote.to_string());
        info
    }

    /// An admitted peer's handshake info: where it sees us (NAT, hole-punching candidates) and
    /// whether it serves a relay.
    pub(super) fn nat_on_admitted(&mut self, peer: PeerId, info: &NodeInfo, now: Instant) {
        if let Some(observed) = info
            .observed
            .as_deref()
            .and_then(|a| a.parse::<Multiaddr>().ok())
            && ip_of(&observed).is_some_and(|ip| !ip.is_loopback())
        {
            self.swarm
                .behaviour_mut()
                .observed
                .observed(observed.clone());
            if self.nat.on_observed(&observed, peer, &self.listen_addrs) {
                tracing::info!(
                    seen_at = %observed,
                    by = %peer,
                    "a member sees this node at an address that is not its own: behind NAT; \
                     will listen through a member's relay"
                );
                self.dirty = true;
            }
        }
        if info.relay
            && let Some(addr) = info
                .listen_addrs
                .iter()
                .filter_map(|a| a.parse::<Multiaddr>().ok())
                .find(|a| {
                    transport::is_quic(a) && !is_relayed(a) && !is_loopback(a) && !is_unspecified(a)
                })
        {
            self.nat.on_relay(peer, addr);
        }
        self.reserve_if_due(now);
    }

    /// Listens through a relay when the NAT state says so.
    pub(super) fn reserve_if_due(&mut self, now: Instant) {
        let Some((relay, circuit)) = self.nat.to_reserve(now.into_std()) else {
            return;
        };
        match self.swarm.listen_on(circuit.clone()) {
            Ok(listener) => {
                tracing::info!(%relay, address = %circuit, "reserving a slot on a member's relay");
                self.nat.reservation = Some((relay, listener));
            }
            Err(e) => tracing::warn!(%relay, error = %e, "cannot listen through the relay"),
        }
    }

    pub(super) fn on_relay_client_event(&mut self, ev: libp2p::relay::client::Event) {
        use libp2p::relay::client::Event;
        match ev {
            Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "reachable through the relay");
                }
                self.nat.reserved = true;
                self.dirty = true;
            }
            Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!(relay = %relay_peer_id, "relayed link out");
            }
            Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!(from = %src_peer_id, "relayed link in");
            }
        }
    }

    pub(super) fn on_relay_event(&mut self, ev: libp2p::relay::Event) {
        use libp2p::relay::Event;
        match ev {
            Event::ReservationReqAccepted { src_peer_id, .. } => {
                tracing::debug!(peer = %src_peer_id, "relay: reservation accepted");
                self.stats.relay.reservations += 1;
            }
            Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                tracing::debug!(from = %src_peer_id, to = %dst_peer_id, "relay: circuit opened");
                self.stats.relay.circuits += 1;
            }
            Event::ReservationReqDenied { src_peer_id, .. }
            | Event::CircuitReqDenied { src_peer_id, .. } => {
                tracing::debug!(peer = %src_peer_id, "relay: request denied (not a member, or a limit)");
                self.stats.relay.denied += 1;
            }
            _ => {}
        }
        self.dirty = true;
    }

    pub(super) fn on_dcutr_event(&mut self, ev: libp2p::dcutr::Event) {
        match ev.result {
            Ok(_) => {
                tracing::info!(peer = %ev.remote_peer_id, "hole punch succeeded: direct link");
                self.stats.hole_punches += 1;
            }
            Err(e) => {
                tracing::debug!(peer = %ev.remote_peer_id, error = %e, "hole punch failed; the link stays relayed");
                self.stats.hole_punch_failures += 1;
            }
        }
        self.dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_observed_address_that_is_not_ours_means_nat_and_a_relay_is_reserved() {
        let t0 = std::time::Instant::now();
        let own = [
            a("/ip4/10.77.1.2/udp/7400/quic-v1"),
            a("/ip4/127.0.0.1/udp/7400/quic-v1"),
        ];
        let (m, relay) = (PeerId::random(), PeerId::random());
        let mut nat = NatState::default();
        // Seen at our own address, or on loopback: not behind NAT.
        assert!(!nat.on_observed(&a("/ip4/10.77.1.2/udp/7400/quic-v1"), m, &own));
        assert!(!nat.on_observed(&a("/ip4/127.0.0.1/udp/5000/quic-v1"), m, &own));
        nat.on_relay(relay, a("/ip4/10.77.0.1/udp/7400/quic-v1"));
        assert_eq!(nat.to_reserve(t0), None);
        // Seen at the router's address.
        assert!(nat.on_observed(&a("/ip4/10.77.0.254/udp/7400/quic-v1"), m, &own));
        let (via, circuit) = nat.to_reserve(t0).expect("a reservation is due");
        assert_eq!(via, relay);
        assert_eq!(
            circuit.to_string(),
            format!("/ip4/10.77.0.1/udp/7400/quic-v1/p2p/{relay}/p2p-circuit")
        );
    }

    #[test]
    fn a_closed_reservation_is_retried_after_a_pause() {
        let t0 = std::time::Instant::now();
        let relay = PeerId::random();
        let mut nat = NatState::default();
        nat.on_observed(&a("/ip4/192.0.2.1/tcp/1"), PeerId::random(), &[]);
        nat.on_relay(relay, a("/ip4/10.77.0.1/udp/7400/quic-v1"));
        let listener = ListenerId::next();
        nat.reservation = Some((relay, listener));
        assert_eq!(nat.to_reserve(t0), None);
        assert!(nat.on_listener_closed(listener, t0));
        assert_eq!(
            nat.to_reserve(t0 + RESERVE_RETRY - Duration::from_millis(1)),
            None
        );
        assert!(nat.to_reserve(t0 + RESERVE_RETRY).is_some());
        assert_eq!(nat.next_deadline(), Some(t0 + RESERVE_RETRY));
    }

    #[test]
    fn a_link_is_direct_when_any_connection_is() {
        assert_eq!(link_of([]), "none");
        assert_eq!(link_of([true]), "relayed");
        assert_eq!(link_of([true, false]), "direct");
    }
}
