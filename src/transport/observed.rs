//! Observed addresses, handed to the swarm as external address candidates.
//!
//! Hole punching (DCUtR) dials the other side at the addresses it was *observed* at, which only
//! a peer can tell: libp2p's identify would, but it talks to every connection before admission.
//! Instead each member tells an admitted peer where it sees it in the admission handshake
//! (`NodeInfo::observed`, spec: `protocol/auth.md`), and the node actor passes that address
//! here; this behaviour reports it to the swarm (`NewExternalAddrCandidate`), where DCUtR
//! picks it up. It has no connection handler of its own and sends nothing.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// Most candidates waiting to be reported: a handful arrive per admitted peer.
pub const MAX_PENDING_CANDIDATES: usize = 64;

/// Reports observed addresses to the swarm as external address candidates.
#[derive(Default)]
pub struct ObservedAddrs {
    pending: VecDeque<Multiaddr>,
    /// Woken when a candidate arrives between two polls of the swarm.
    waker: Option<std::task::Waker>,
}

impl ObservedAddrs {
    /// `addr` is where a member sees us: a candidate for hole punching. Past
    /// [`MAX_PENDING_CANDIDATES`] waiting, the oldest is dropped.
    pub fn observed(&mut self, addr: Multiaddr) {
        if self.pending.len() >= MAX_PENDING_CANDIDATES {
            self.pending.pop_front();
        }
        self.pending.push_back(addr);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl NetworkBehaviour for ObservedAddrs {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        ev: THandlerOutEvent<Self>,
    ) {
        match ev {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.pending.pop_front() {
            Some(addr) => Poll::Ready(ToSwarm::NewExternalAddrCandidate(addr)),
            None => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
