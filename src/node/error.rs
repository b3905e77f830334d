//! Errors of starting and asking a node (leaf of `node`: imports nothing of the node).

use libp2p::{Multiaddr, PeerId};

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("no listen address could be bound")]
    NoListener,
    #[error("cannot start mDNS discovery: {0}")]
    Discovery(String),
    #[error("cannot open the state document: {0}")]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Invites(#[from] crate::invite::InviteError),
    #[error("the node actor stopped")]
    Stopped,
    #[error("node {peer} is not connected")]
    NotConnected { peer: PeerId },
    #[error("asking node {peer} failed: {reason}")]
    QueryFailed { peer: PeerId, reason: String },
    #[error("{0}")]
    Key(String),
}
