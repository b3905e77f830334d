//! A gate in front of a served protocol: requests from peers not on the allowed list never
//! reach the behaviour. It wraps the rendezvous point (`--rendezvous-server`), which by
//! default serves admitted members of its own mesh only.
//!
//! Admission runs on the connection after it is established, so the gate cannot choose
//! handlers: every connection gets the inner behaviour's handler, and what the handler
//! reports from a peer that is not allowed is dropped. A request-response handler whose
//! request is dropped closes the stream unanswered: the asker sees the request fail and,
//! when it is a mesh agent, asks again once admitted. An open gate (`--rendezvous-open`) lets
//! everything through.
//!
//! Owns the allowed set, which the node actor keeps equal to the admitted peers. Does not own
//! admission.

use std::collections::HashSet;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// `inner`, serving only the allowed peers (all of them when open).
pub struct Gate<B> {
    inner: B,
    /// `None`: open to anyone.
    allowed: Option<HashSet<PeerId>>,
    /// Requests dropped because their peer was not allowed (for `mesh status`).
    refused: u64,
}

impl<B> Gate<B> {
    /// `open`: serve anyone; otherwise only the peers [`Gate::allow`]ed.
    pub fn new(inner: B, open: bool) -> Self {
        Self {
            inner,
            allowed: (!open).then(HashSet::new),
            refused: 0,
        }
    }

    pub fn allow(&mut self, peer: PeerId) {
        if let Some(allowed) = &mut self.allowed {
            allowed.insert(peer);
        }
    }

    pub fn disallow(&mut self, peer: &PeerId) {
        if let Some(allowed) = &mut self.allowed {
            allowed.remove(peer);
        }
    }

    pub fn is_open(&self) -> bool {
        self.allowed.is_none()
    }

    /// Requests dropped from peers that were not allowed.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Gate<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        if self.allowed.as_ref().is_some_and(|a| !a.contains(&peer)) {
            self.refused += 1;
            tracing::debug!(%peer, "dropped a request of a peer the gate does not allow");
            return;
        }
        self.inner
            .on_connection_handler_event(peer, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}
