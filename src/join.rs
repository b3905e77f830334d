//! The joining side of `/mesh/join/1` (spec: `protocol/join.md`): redeem an invite ticket for
//! the mesh key.
//!
//! [`redeem`] dials the inviter's addresses from the ticket on a swarm of its own (a fresh key
//! pair, QUIC), requiring the peer id the ticket pins: libp2p's TLS handshake proves it, and a
//! peer that proves another id fails the dial. Only on a connection established with that id
//! is the secret sent. The answer's key must derive the ticket's mesh id.
//!
//! Owns the exchange, its deadline and its error messages. Does not own where the key is
//! stored or what runs next (the daemon), nor the inviter's decision (`crate::invite`).

use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, Message};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId};

use crate::admission::{MESH_KEY_LEN, MeshId, MeshKey};
use crate::invite::Ticket;
use crate::transport;
use crate::wire::join::{JoinRefusal, JoinRequest, JoinResponse};

/// Longest a whole redemption may take: QUIC handshakes to every address (500 ms each at
/// most), the request's own timeout (5 s) and a loaded Pi's disk write on the inviter.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the joiner waits for its connection to close after the answer, so the inviter
/// sees a clean close instead of an idle timeout. Bounded: nothing depends on it.
const CLOSE_WAIT: Duration = Duration::from_millis(300);

/// Why a redemption failed. The joiner holds no key after any of them.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "the node answering at {address} is not the inviter this ticket pins ({expected}); it \
         proved {obtained}: nothing was sent to it"
    )]
    WrongPeer {
        expected: String,
        obtained: String,
        address: String,
    },
    #[error(
        "cannot reach the inviter {inviter} at {addrs} (or it did not prove the node id the \
         ticket pins); nothing was sent: {reason}"
    )]
    Unreachable {
        inviter: String,
        addrs: String,
        reason: String,
    },
    #[error("the inviter refused the ticket ({}): {}", .0.as_str(), .0.explain())]
    Refused(JoinRefusal),
    #[error(
        "the inviter answered with a key of another mesh than the ticket names ({expected}); \
         not stored"
    )]
    MeshMismatch { expected: MeshId },
    #[error("the inviter does not speak /mesh/join/1 or the exchange failed: {0}")]
    Exchange(String),
    #[error("no answer from the inviter within {} s", JOIN_TIMEOUT.as_secs())]
    Timeout,
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
}

/// A redeemed ticket: the key, and what the joiner needs to find the mesh afterwards.
#[derive(Debug)]
pub struct Joined {
    pub mesh_key: MeshKey,
    /// The id of the invite used (as the inviter lists it).
    pub invite: String,
    pub inviter: PeerId,
    /// The inviter's addresses from the ticket, to dial once the joiner runs with the key.
    pub inviter_addrs: Vec<Multiaddr>,
}

/// Redeems `ticket`, announcing `name` (for the inviter's audit trail), within
/// [`JOIN_TIMEOUT`].
pub async fn redeem(ticket: &Ticket, name: &str) -> Result<Joined, JoinError> {
    match tokio::time::timeout(JOIN_TIMEOUT, exchange(ticket, name)).await {
        Ok(result) => result,
        Err(_) => Err(JoinError::Timeout),
    }
}

async fn exchange(ticket: &Ticket, name: &str) -> Result<Joined, JoinError> {
    // A key pair of the exchange's own: the secret is the credential, and the agent's node id
    // must not be seen by the inviter as a failed admission attempt.
    let mut swarm = transport::build_join_swarm(Keypair::generate_ed25519())?;
    let inviter = ticket.inviter;
    let unreachable = |reason: String| JoinError::Unreachable {
        inviter: inviter.to_base58(),
        addrs: ticket
            .addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        reason,
    };
    // One address at a time, loopback last: an address where another node answers (the
    // ticket's loopback address, dialed from another machine or namespace, reaches the joiner
    // itself) fails alone, and the next gets its chance; one connection at a time, so the
    // inviter never closes the exchange's connection as a duplicate.
    let mut addrs = ticket.addrs.clone();
    addrs.sort_by_key(|a| {
        let loopback = a.iter().any(|p| match p {
            libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_loopback(),
            libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_loopback(),
            _ => false,
        });
        let v6 = a
            .iter()
            .any(|p| matches!(p, libp2p::multiaddr::Protocol::Ip6(_)));
        (loopback, v6)
    });
    let mut addrs = addrs.into_iter();
    let mut last_error = None;
    let mut dial_next = |swarm: &mut libp2p::Swarm<_>, last_error: &mut Option<JoinError>| {
        for addr in addrs.by_ref() {
            let dial = DialOpts::peer_id(inviter).addresses(vec![addr]).build();
            match swarm.dial(dial) {
                Ok(()) => return true,
                Err(e) => *last_error = Some(unreachable(e.to_string())),
            }
        }
        false
    };
    if !dial_next(&mut swarm, &mut last_error) {
        return Err(last_error.unwrap_or_else(|| unreachable("the ticket has no address".into())));
    }
    let mut wrong_peer = None;
    let mut sent = false;
    let result = loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == inviter && !sent => {
                // The connection proved the pinned id: only now does the secret leave.
                sent = true;
                swarm.behaviour_mut().send_request(
                    &inviter,
                    JoinRequest {
                        secret: ticket.secret.to_vec(),
                        name: name.to_string(),
                    },
                );
            }
            SwarmEvent::OutgoingConnectionError { error, .. } if !sent => {
                match error {
                    // Nothing was sent to it; another address may still reach the inviter.
                    DialError::WrongPeerId { obtained, address } => {
                        wrong_peer = Some(JoinError::WrongPeer {
                            expected: inviter.to_base58(),
                            obtained: obtained.to_base58(),
                            address: address.to_string(),
                        });
                    }
                    other => last_error = Some(unreachable(other.to_string())),
                }
                if !dial_next(&mut swarm, &mut last_error) {
                    // Every address failed: a node that proved another id is the one to tell.
                    break Err(wrong_peer
                        .take()
                        .or(last_error.take())
                        .unwrap_or_else(|| unreachable("no address answered".into())));
                }
            }
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: Message::Response { response, .. },
                ..
            }) => break answer(ticket, response),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                break Err(JoinError::Exchange(error.to_string()));
            }
            _ => {}
        }
    };
    let _ = swarm.disconnect_peer_id(inviter);
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        loop {
            if let SwarmEvent::ConnectionClosed { .. } = swarm.select_next_some().await {
                break;
            }
        }
    })
    .await;
    result
}

/// Checks the inviter's answer against the ticket.
fn answer(ticket: &Ticket, response: JoinResponse) -> Result<Joined, JoinError> {
    match response {
        JoinResponse::Refused(why) => Err(JoinError::Refused(why)),
        JoinResponse::Accepted { mesh_key, invite } => {
            let bytes: [u8; MESH_KEY_LEN] = mesh_key
                .try_into()
                .map_err(|_| JoinError::Exchange("the key has the wrong length".into()))?;
            let key = MeshKey::from_bytes(bytes);
            if key.mesh_id() != ticket.mesh_id {
                return Err(JoinError::MeshMismatch {
                    expected: ticket.mesh_id,
                });
            }
            Ok(Joined {
                mesh_key: key,
                invite,
                inviter: ticket.inviter,
                inviter_addrs: ticket.addrs.clone(),
            })
        }
    }
}
