//! The open connections of a node, per peer: what happens when one opens (refusals,
//! duplicates of crossing dials, relayed links made redundant) or closes (the peer's last
//! link: sync, membership, admission and the dial planner hear of it), and which incarnation
//! of the peer each belongs to, so that connections follow membership's verdicts (spec:
//! `protocol/membership.md`, "Connections follow the verdicts"): a dead incarnation's
//! connections close [`super::DEAD_CLOSE_GRACE`] after the verdict, and a restarted peer's
//! older connections close when its new incarnation is admitted.

use super::*;

impl NodeActor {
    pub(super) fn on_connection_established(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        endpoint: ConnectedPoint,
        now: Instant,
    ) {
        let std_now = now.into_std();
        if peer == self.local_peer {
            let _ = self.swarm.close_connection(connection_id);
            return;
        }
        if self.removed.contains(&peer) {
            self.stats.removed_refused += 1;
            let _ = self.swarm.close_connection(connection_id);
            tracing::debug!(%peer, "refused a connection of a removed node");
            return;
        }
        if self.admission.in_backoff(&peer, std_now) {
            self.admission.count_refused();
            let _ = self.swarm.close_connection(connection_id);
            tracing::debug!(%peer, "refused connection from peer in admission backoff");
            return;
        }
        let we_dialed = endpoint.is_dialer();
        let relayed = endpoint.is_relayed();
        let remote = endpoint.get_remote_address().clone();
        self.rendezvous.on_connected(&peer, std_now);
        // A relayed link is not what the dial planner aims for: it keeps dialing the peer
        // directly (see `dial`) until a direct connection replaces the relayed one.
        if !relayed {
            self.dials
                .on_connected(peer, we_dialed.then_some(&remote), std_now);
        }
        let conns = self.connections.entry(peer).or_default();
        conns.push(Connection {
            id: connection_id,
            remote,
            we_dialed,
            relayed,
            established: now,
            incarnation: None,
        });
        // A direct link makes relayed ones redundant (a hole punch succeeded, or the peer
        // dialed us directly): they are closed, and the relay's circuit with them.
        if !relayed {
            for c in conns.iter().filter(|c| c.relayed) {
                let _ = self.swarm.close_connection(c.id);
            }
        }
        // Both sides dialed at once: keep the connection the lower id dialed, on both sides.
        // The pair's admission is per peer and survives; a request in flight on the closed
        // connection fails and is retried (admission at once, sync by anti-entropy). Older
        // connections are left alone: a stale one (the peer restarted) ends by itself.
        // Two relayed connections (both sides dialed through the relay) are deduplicated the
        // same way among themselves: one hole punch per pair, not two crossing ones.
        let pairs: Vec<(ConnectionId, bool)> = conns
            .iter()
            .filter(|c| now.duration_since(c.established) <= DUPLICATE_WINDOW)
            .filter(|c| c.relayed == relayed)
            .map(|c| (c.id, c.we_dialed))
            .collect();
        for id in dial::duplicates_to_close(self.local_peer < peer, &pairs) {
            self.stats.duplicate_connections_closed += 1;
            let _ = self.swarm.close_connection(id);
        }
        self.dirty = true;
        let actions = self.admission.on_connected(peer, we_dialed, std_now);
        self.apply_admission(actions, now);
    }

    pub(super) fn on_connection_closed(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        num_established: u32,
        cause: Option<libp2p::swarm::ConnectionError>,
        now: Instant,
    ) {
        if let Some(conns) = self.connections.get_mut(&peer_id) {
            let was_direct = conns.iter().any(|c| c.id == connection_id && !c.relayed);
            conns.retain(|c| c.id != connection_id);
            // The last direct link went, a relayed one stays: the planner (which
            // counts direct links only) dials the peer directly again.
            if was_direct && !conns.is_empty() && conns.iter().all(|c| c.relayed) {
                self.dials.on_disconnected(&peer_id, now.into_std());
            }
            if conns.is_empty() {
                self.connections.remove(&peer_id);
            }
        }
        if num_established == 0 {
            self.connections.remove(&peer_id);
            self.rendezvous_on_disconnected(&peer_id);
            self.admitted_set.remove(&peer_id);
            self.nat.on_gone(&peer_id, now.into_std());
            if self.admission.is_admitted(&peer_id) {
                self.state.peer_down(peer_id);
            }
            self.membership.on_disconnected(&peer_id);
            self.datagrams.on_disconnected(&peer_id);
            self.auth_connection.remove(&peer_id);
            let actions = self.admission.on_disconnected(&peer_id, now.into_std());
            self.apply_admission(actions, now);
            self.dials.on_disconnected(&peer_id, now.into_std());
            self.dirty = true;
            tracing::debug!(peer = %peer_id, cause = ?cause, "disconnected");
        }
    }

    /// A peer was admitted at incarnation `bump`: the connection its handshake ran on is that
    /// incarnation's, and connections of an older incarnation (a crashed process, silent
    /// until the QUIC idle timeout) are closed now, so that nothing is sent into them.
    pub(super) fn tag_incarnation(&mut self, peer: PeerId, bump: u64) {
        let Some(handshake) = self.auth_connection.get(&peer).copied() else {
            return;
        };
        let Some(conns) = self.connections.get_mut(&peer) else {
            return;
        };
        for c in conns.iter_mut() {
            if c.id == handshake {
                c.incarnation = Some(bump);
            } else if c.incarnation.is_some_and(|b| b < bump) {
                tracing::debug!(%peer, "closing a connection of the peer's former incarnation");
                self.swarm.close_connection(c.id);
            }
        }
    }

    /// Membership changed: peers newly `dead` whose connection is that incarnation's (or an
    /// older one's) get their connections closed after [`super::DEAD_CLOSE_GRACE`]. The QUIC
    /// idle timeout (`transport::QUIC_IDLE_TIMEOUT_MS`) is only a backstop, so the end of a
    /// dead peer's link (sync's `PeerDown`, the redial that heals a partition) follows the
    /// failure detector. A restarted peer's new connection is never closed for the old one.
    pub(super) fn schedule_dead_closes(&mut self, now: Instant) {
        for rec in self.membership.peers() {
            if rec.state != PeerState::Dead || self.dead_closing.iter().any(|(p, _)| *p == rec.peer)
            {
                continue;
            }
            let tagged = self
                .connections
                .get(&rec.peer)
                .is_some_and(|conns| conns.iter().any(|c| c.of_incarnation_up_to(rec.bump)));
            if tagged {
                self.dead_closing
                    .push((rec.peer, now + super::DEAD_CLOSE_GRACE));
            }
        }
    }

    /// Closes the connections of [`Self::schedule_dead_closes`]' peers that are due and still
    /// `dead` (not `left`, not alive again).
    pub(super) fn close_dead_connections(&mut self, now: Instant) {
        if self.dead_closing.iter().all(|(_, at)| *at > now) {
            return;
        }
        let due: Vec<PeerId> = self
            .dead_closing
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(p, _)| *p)
            .collect();
        self.dead_closing.retain(|(_, at)| *at > now);
        for peer in due {
            let Some(rec) = self.membership.peer(&peer) else {
                continue;
            };
            if rec.state != PeerState::Dead {
                continue;
            }
            let Some(conns) = self.connections.get(&peer) else {
                continue;
            };
            for c in conns {
                if c.of_incarnation_up_to(rec.bump) {
                    tracing::debug!(%peer, "declared dead; closing its connection");
                    self.swarm.close_connection(c.id);
                }
            }
        }
    }
}
