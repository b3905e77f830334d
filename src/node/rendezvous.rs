//! The node's rendezvous glue (spec: `protocol/rendezvous.md`): drives libp2p's rendezvous
//! client with what [`RendezvousClient`] decides, hands what points return to the dial
//! planner, keeps the addresses we register (the swarm's external addresses) equal to what
//! peers can dial, and reports the point this node serves.
//!
//! Which addresses are registered: every `--external-addr`, and the listen addresses that
//! name an interface (not `0.0.0.0`), loopback and link-local ones only when nothing else is
//! left (a mesh on one host). A rendezvous point does not observe addresses for us: what a
//! peer behind NAT can be reached at is a later concern (relays).

use libp2p::multiaddr::Protocol;
use libp2p::rendezvous::{self, Cookie, ErrorCode, Namespace};

use super::*;
use crate::discovery::rendezvous::{
    DISCOVER_LIMIT, MAX_REGISTRATIONS_PER_ANSWER, REQUESTED_TTL_S, RendezvousAction,
};

/// What a point's error code means, for `mesh status` and logs.
fn error_text(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidNamespace => "invalid namespace",
        ErrorCode::InvalidSignedPeerRecord => "invalid signed peer record",
        ErrorCode::InvalidTtl => "TTL outside the point's bounds",
        ErrorCode::InvalidCookie => "invalid cookie",
        ErrorCode::NotAuthorized => "not authorized",
        ErrorCode::InternalError => "the point's internal error",
        // Also what libp2p reports when the point closed the stream unanswered: a members-only
        // point does so until our admission handshake with it has ended.
        ErrorCode::Unavailable => "unavailable (or refused: not admitted yet)",
    }
}

/// Whether an address is link-local (IPv4 169.254/16, IPv6 fe80::/10).
fn is_link_local(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_link_local(),
        Protocol::Ip6(ip) => ip.is_unicast_link_local(),
        _ => false,
    })
}

/// The addresses to register: see the module doc.
pub(super) fn registrable(listen: &[Multiaddr], external: &[Multiaddr]) -> Vec<Multiaddr> {
    let specific: Vec<&Multiaddr> = listen.iter().filter(|a| !is_unspecified(a)).collect();
    let routable: Vec<&Multiaddr> = specific
        .iter()
        .copied()
        .filter(|a| !is_loopback(a) && !is_link_local(a))
        .collect();
    let chosen = if routable.is_empty() && external.is_empty() {
        specific
    } else {
        routable
    };
    let mut out: Vec<Multiaddr> = external.to_vec();
    for a in chosen {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

impl NodeActor {
    /// The mesh's rendezvous namespace (from the current key's mesh id).
    fn rendezvous_namespace(&self) -> Option<Namespace> {
        let ns =
            crate::discovery::rendezvous::namespace(&self.admission.keyring().current.mesh_id());
        Namespace::new(ns).ok()
    }

    /// Makes the swarm's external addresses (what a registration carries) equal to
    /// [`registrable`], and registers again where they changed.
    pub(super) fn sync_external_addrs(&mut self, now: Instant) {
        let want = registrable(&self.listen_addrs, &self.external_addrs);
        let have: Vec<Multiaddr> = self.swarm.external_addresses().cloned().collect();
        if want.iter().all(|a| have.contains(a)) && have.iter().all(|a| want.contains(a)) {
            return;
        }
        for a in have.iter().filter(|a| !want.contains(a)) {
            self.swarm.remove_external_address(a);
        }
        for a in want.iter().filter(|a| !have.contains(a)) {
            self.swarm.add_external_address(a.clone());
        }
        self.rendezvous.on_addresses_changed(now.into_std());
    }

    /// Sends what the rendezvous client says is due.
    pub(super) fn rendezvous_tick(&mut self, now: Instant) {
        let actions = self.rendezvous.poll(now.into_std());
        if actions.is_empty() {
            return;
        }
        let Some(namespace) = self.rendezvous_namespace() else {
            return;
        };
        for action in actions {
            match action {
                RendezvousAction::Register(point) => {
                    if let Err(e) = self.swarm.behaviour_mut().rendezvous.register(
                        namespace.clone(),
                        point,
                        Some(REQUESTED_TTL_S),
                    ) {
                        self.rendezvous
                            .on_register_failed(&point, e.to_string(), now.into_std());
                    }
                }
                RendezvousAction::Discover { point, cookie } => {
                    let cookie = cookie.and_then(|c| Cookie::from_wire_encoding(c).ok());
                    self.swarm.behaviour_mut().rendezvous.discover(
                        Some(namespace.clone()),
                        cookie,
                        Some(DISCOVER_LIMIT),
                        point,
                    );
                }
            }
        }
    }

    pub(super) fn on_rendezvous_event(&mut self, ev: rendezvous::client::Event, now: Instant) {
        let std_now = now.into_std();
        match ev {
            rendezvous::client::Event::Registered {
                rendezvous_node,
                ttl,
                ..
            } => {
                tracing::debug!(point = %rendezvous_node, ttl_s = ttl, "registered at rendezvous point");
                self.rendezvous
                    .on_registered(&rendezvous_node, ttl, std_now);
                self.dirty = true;
            }
            rendezvous::client::Event::RegisterFailed {
                rendezvous_node,
                error,
                ..
            } => {
                tracing::debug!(point = %rendezvous_node, error = error_text(error), "registration failed");
                self.rendezvous.on_register_failed(
                    &rendezvous_node,
                    error_text(error).into(),
                    std_now,
                );
                self.dirty = true;
            }
            rendezvous::client::Event::Discovered {
                rendezvous_node,
                registrations,
                cookie,
            } => {
                let count = registrations.len();
                let mut found = 0;
                for reg in registrations.into_iter().take(MAX_REGISTRATIONS_PER_ANSWER) {
                    let peer = reg.record.peer_id();
                    if peer == self.local_peer || self.removed.contains(&peer) {
                        continue;
                    }
                    let addrs: Vec<Multiaddr> = reg
                        .record
                        .addresses()
                        .iter()
                        .filter(|a| !is_unspecified(a))
                        .cloned()
                        .collect();
                    if addrs.is_empty() {
                        continue;
                    }
                    found += 1;
                    self.dials.on_discovered(peer, addrs, std_now);
                }
                tracing::debug!(point = %rendezvous_node, count, found, "rendezvous discovery");
                self.rendezvous.on_discovered(
                    &rendezvous_node,
                    count,
                    cookie.into_wire_encoding(),
                    std_now,
                );
                self.dirty = true;
            }
            rendezvous::client::Event::DiscoverFailed {
                rendezvous_node,
                error,
                ..
            } => {
                tracing::debug!(point = %rendezvous_node, error = error_text(error), "discovery failed");
                self.rendezvous.on_discover_failed(
                    &rendezvous_node,
                    error_text(error).into(),
                    error == ErrorCode::InvalidCookie,
                    std_now,
                );
                self.dirty = true;
            }
            // A registration we discovered lapsed: the planner's pace for peers it never
            // reached already covers a peer that is gone.
            rendezvous::client::Event::Expired { .. } => {}
        }
    }

    /// What the point this node serves did, for `mesh status`.
    pub(super) fn on_point_event(&mut self, ev: rendezvous::server::Event) {
        use rendezvous::server::Event;
        let mut stats = self.stats.point.take().unwrap_or_default();
        match ev {
            Event::PeerRegistered { peer, registration } => {
                tracing::debug!(%peer, namespace = %registration.namespace, "peer registered here");
                self.point_registrations
                    .insert((peer, registration.namespace.to_string()));
                stats.registered += 1;
            }
            Event::PeerNotRegistered { peer, error, .. } => {
                tracing::debug!(%peer, error = error_text(error), "registration refused here");
                stats.refused += 1;
            }
            Event::PeerUnregistered { peer, namespace } => {
                self.point_registrations
                    .remove(&(peer, namespace.to_string()));
            }
            Event::RegistrationExpired(registration) => {
                self.point_registrations.remove(&(
                    registration.record.peer_id(),
                    registration.namespace.to_string(),
                ));
            }
            Event::DiscoverServed { .. } => stats.discoveries += 1,
            Event::DiscoverNotServed { .. } => stats.refused += 1,
        }
        stats.registrations = self.point_registrations.len();
        self.stats.point = Some(stats);
        self.dirty = true;
    }

    /// A peer passed admission: a members-only point serves it from now on, and a rendezvous
    /// point that is a member is asked again at once.
    pub(super) fn rendezvous_on_admitted(&mut self, peer: PeerId, now: Instant) {
        if let Some(gate) = self.swarm.behaviour_mut().rendezvous_point.as_mut() {
            gate.allow(peer);
        }
        self.rendezvous.on_admitted(&peer, now.into_std());
    }

    /// The last connection to `peer` closed.
    pub(super) fn rendezvous_on_disconnected(&mut self, peer: &PeerId) {
        if let Some(gate) = self.swarm.behaviour_mut().rendezvous_point.as_mut() {
            gate.disallow(peer);
        }
        self.rendezvous.on_disconnected(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<Multiaddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn registered_addresses_are_the_routable_ones_and_the_configured_ones() {
        let listen = addrs(&[
            "/ip4/127.0.0.1/udp/7400/quic-v1",
            "/ip4/10.0.0.2/udp/7400/quic-v1",
            "/ip4/10.0.0.2/tcp/7400",
            "/ip6/fe80::1/udp/7400/quic-v1",
            "/ip4/0.0.0.0/tcp/7400",
        ]);
        assert_eq!(
            registrable(&listen, &[]),
            addrs(&["/ip4/10.0.0.2/udp/7400/quic-v1", "/ip4/10.0.0.2/tcp/7400"])
        );
        let external = addrs(&["/dns4/pi.example.net/tcp/7400"]);
        assert_eq!(
            registrable(&listen, &external),
            addrs(&[
                "/dns4/pi.example.net/tcp/7400",
                "/ip4/10.0.0.2/udp/7400/quic-v1",
                "/ip4/10.0.0.2/tcp/7400"
            ])
        );
        // A mesh on one host: loopback is all there is.
        let lo = addrs(&["/ip4/127.0.0.1/udp/7400/quic-v1", "/ip4/127.0.0.1/tcp/7401"]);
        assert_eq!(registrable(&lo, &[]), lo);
    }
}
