//! Membership datagrams on one long-lived stream per peer and direction
//! (`/mesh/membership-stream/1`; spec: `protocol/membership.md`).
//!
//! Foca sends a few datagrams a second. As requests of `/mesh/membership/1` each one opened a
//! QUIC stream, negotiated the protocol, and waited for an `Ack`: ~8 such exchanges a second
//! were most of an idle agent's CPU. Here each datagram is one length-prefixed frame on a
//! stream opened once per peer, with nothing sent back.
//!
//! Owns the per-peer writer tasks (opened lazily, on the first datagram to a peer), the accept
//! task with its readers (at most one per peer: a newer stream replaces the older), and the
//! bounded queues between them and the node actor. It decides nothing: the node actor checks
//! admission on every frame that arrives, chooses which datagrams go here, and falls back to
//! the request path for a peer that does not speak this protocol (an older agent) or whose
//! writer failed.
//!
//! Inputs: [`DatagramLinks::send`] from the node actor, inbound streams from the swarm.
//! Outputs: [`Inbound`] items on the receiver the node actor polls.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use crate::transport::MEMBERSHIP_STREAM_PROTOCOL;

/// Largest frame body: foca's packet limit (8 KiB), as for the request path. A longer length
/// prefix ends the stream (a member never sends one).
pub const MAX_FRAME: usize = 8 * 1024;

/// Datagrams queued for one peer's writer. Foca sends a few per probe period to one peer; a
/// writer 64 behind is stuck (its stream blocked on flow control), and datagrams past it are
/// dropped and counted like any other undeliverable one: foca's protocol tolerates loss.
const WRITER_QUEUE: usize = 64;

/// Frames read from all peers, waiting for the node actor. Readers wait when it is full (the
/// stream's flow control then slows the sender), so nothing read is dropped here.
const INBOUND_QUEUE: usize = 256;

/// Most inbound streams read at once: one per connected peer; the swarm itself holds at most
/// `transport::MAX_INCOMING_CONNECTIONS` inbound connections plus those we dialed.
const MAX_READERS: usize = 1024;

/// What the readers hand to the node actor.
#[derive(Debug)]
pub enum Inbound {
    /// One datagram from `peer` (not yet checked for admission).
    Datagram(PeerId, Vec<u8>),
    /// `peer` sent a frame longer than [`MAX_FRAME`] (or empty); its stream was closed.
    Malformed(PeerId),
}

/// Why [`DatagramLinks::send`] did not take a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum NotSent {
    /// The peer's writer is full: drop the datagram and count it.
    Full,
    /// No working stream to this peer right now (it failed, or the peer does not speak the
    /// protocol): send this one over the request path.
    NoStream,
}

struct Writer {
    tx: mpsc::Sender<Bytes>,
    /// Set by the writer when the peer refused the protocol (an older agent).
    unsupported: Arc<AtomicBool>,
}

/// The node actor's side: writers per peer and the receiver of inbound frames.
pub struct DatagramLinks {
    control: libp2p_stream::Control,
    writers: HashMap<PeerId, Writer>,
    /// Peers that refused the protocol on their current connection: the request path only,
    /// until they disconnect.
    legacy: std::collections::HashSet<PeerId>,
    inbound: mpsc::Receiver<Inbound>,
    accept_task: JoinHandle<()>,
}

impl Drop for DatagramLinks {
    fn drop(&mut self) {
        // Readers live in the accept task's JoinSet and end with it; writers end when their
        // senders (in `writers`) are dropped.
        self.accept_task.abort();
    }
}

impl DatagramLinks {
    /// Registers the protocol with the swarm's stream behaviour and starts accepting. Must run
    /// inside a Tokio runtime.
    pub fn start(mut control: libp2p_stream::Control) -> Self {
        let (tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        let incoming = control
            .accept(MEMBERSHIP_STREAM_PROTOCOL)
            .expect("the membership stream protocol is registered once per swarm");
        let accept_task = tokio::spawn(accept_loop(incoming, tx));
        Self {
            control,
            writers: HashMap::new(),
            legacy: Default::default(),
            inbound,
            accept_task,
        }
    }

    /// The next inbound frame; pending forever once the accept task is gone.
    pub async fn recv(&mut self) -> Option<Inbound> {
        self.inbound.recv().await
    }

    /// Queues `data` for `peer`, opening the stream on first use. The caller checked that the
    /// peer is admitted and connected.
    pub fn send(&mut self, peer: PeerId, data: Bytes) -> Result<(), NotSent> {
        if self.legacy.contains(&peer) {
            return Err(NotSent::NoStream);
        }
        let writer = self.writers.entry(peer).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(WRITER_QUEUE);
            let unsupported = Arc::new(AtomicBool::new(false));
            tokio::spawn(write_loop(
                self.control.clone(),
                peer,
                rx,
                unsupported.clone(),
            ));
            Writer { tx, unsupported }
        });
        match writer.tx.try_send(data) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(NotSent::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The writer ended: its stream failed, or the peer refused the protocol. The
                // next datagram opens a new stream, unless the peer is an older agent.
                if writer.unsupported.load(Ordering::Relaxed) {
                    self.legacy.insert(peer);
                }
                self.writers.remove(&peer);
                Err(NotSent::NoStream)
            }
        }
    }

    /// The peer's last connection closed: its writer ends, and a reconnected peer is asked
    /// for the protocol again (it may have been upgraded).
    pub fn on_disconnected(&mut self, peer: &PeerId) {
        self.writers.remove(peer);
        self.legacy.remove(peer);
    }
}

/// Opens the stream, then writes each queued datagram as `u16 length (big-endian) ‖ body`.
/// Ends on the first error (the node actor then notices the closed queue) or when the node
/// drops the queue's sender.
async fn write_loop(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    mut rx: mpsc::Receiver<Bytes>,
    unsupported: Arc<AtomicBool>,
) {
    let mut stream = match control.open_stream(peer, MEMBERSHIP_STREAM_PROTOCOL).await {
        Ok(s) => s,
        Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_)) => {
            unsupported.store(true, Ordering::Relaxed);
            tracing::debug!(%peer, "peer does not speak the membership stream protocol");
            return;
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot open the membership stream");
            return;
        }
    };
    let mut frame = Vec::with_capacity(2 + MAX_FRAME);
    while let Some(data) = rx.recv().await {
        if data.is_empty() || data.len() > MAX_FRAME {
            // Foca never produces these; never let them reach the wire.
            continue;
        }
        frame.clear();
        frame.extend_from_slice(&(data.len() as u16).to_be_bytes());
        frame.extend_from_slice(&data);
        let written = async {
            stream.write_all(&frame).await?;
            stream.flush().await
        }
        .await;
        if let Err(e) = written {
            tracing::debug!(%peer, error = %e, "membership stream closed");
            return;
        }
    }
    let _ = stream.close().await;
}

/// Accepts inbound streams and runs one reader per peer.
async fn accept_loop(mut incoming: libp2p_stream::IncomingStreams, tx: mpsc::Sender<Inbound>) {
    let mut readers: JoinSet<PeerId> = JoinSet::new();
    let mut by_peer: HashMap<PeerId, AbortHandle> = HashMap::new();
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some((peer, stream)) = next else { return };
                if let Some(old) = by_peer.remove(&peer) {
                    // The peer opened a new stream (a new connection, or its writer failed):
                    // the old one is done.
                    old.abort();
                } else if by_peer.len() >= MAX_READERS {
                    tracing::debug!(%peer, "too many membership streams; refusing one");
                    continue;
                }
                let handle = readers.spawn(read_loop(peer, stream, tx.clone()));
                by_peer.insert(peer, handle);
            }
            Some(done) = readers.join_next_with_id(), if !readers.is_empty() => {
                let (id, peer) = match done {
                    Ok((id, peer)) => (id, Some(peer)),
                    Err(e) => (e.id(), None),
                };
                // Forget the peer's entry only if it is this reader's (not its successor's).
                if let Some(peer) = peer
                    && by_peer.get(&peer).is_some_and(|h| h.id() == id)
                {
                    by_peer.remove(&peer);
                }
            }
        }
    }
}

/// Reads frames until the stream ends, fails or breaks the framing rules.
async fn read_loop(peer: PeerId, mut stream: Stream, tx: mpsc::Sender<Inbound>) -> PeerId {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            break;
        }
        let n = u16::from_be_bytes(len) as usize;
        if n == 0 || n > MAX_FRAME {
            let _ = tx.send(Inbound::Malformed(peer)).await;
            break;
        }
        let mut body = vec![0u8; n];
        if stream.read_exact(&mut body).await.is_err() {
            break;
        }
        if tx.send(Inbound::Datagram(peer, body)).await.is_err() {
            break;
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use libp2p::Multiaddr;
    use libp2p::identity::Keypair;
    use libp2p::swarm::SwarmEvent;

    use super::*;
    use crate::transport::{self, MemoryLinks, SwarmOptions, TransportKind};

    type MeshSwarm = libp2p::Swarm<transport::MeshBehaviour>;

    fn swarm(links: &MemoryLinks) -> MeshSwarm {
        transport::build_swarm(
            Keypair::generate_ed25519(),
            TransportKind::Memory(links.clone()),
            &SwarmOptions::default(),
        )
        .expect("memory swarm")
    }

    /// Two swarms, `b` listening and `a` connected to it; both then run in the background.
    async fn connected_pair() -> (MeshSwarm, MeshSwarm) {
        let links = MemoryLinks::default();
        let mut a = swarm(&links);
        let mut b = swarm(&links);
        b.listen_on("/memory/0".parse::<Multiaddr>().unwrap())
            .unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = b.select_next_some().await {
                break address;
            }
        };
        a.dial(addr).unwrap();
        let mut a_up = false;
        let mut b_up = false;
        while !(a_up && b_up) {
            tokio::select! {
                ev = a.select_next_some() => a_up |= matches!(ev, SwarmEvent::ConnectionEstablished { .. }),
                ev = b.select_next_some() => b_up |= matches!(ev, SwarmEvent::ConnectionEstablished { .. }),
            }
        }
        (a, b)
    }

    /// Drives a swarm in the background for the rest of the test.
    fn drive(mut s: MeshSwarm) {
        tokio::spawn(async move {
            loop {
                s.select_next_some().await;
            }
        });
    }

    async fn next(links: &mut DatagramLinks) -> Inbound {
        tokio::time::timeout(Duration::from_secs(10), links.recv())
            .await
            .expect("a frame within 10 s")
            .expect("the accept task runs")
    }

    #[tokio::test]
    async fn datagrams_arrive_in_order_on_one_stream() {
        let (a, b) = connected_pair().await;
        let b_id = *b.local_peer_id();
        let a_id = *a.local_peer_id();
        let mut a_links = DatagramLinks::start(a.behaviour().streams.new_control());
        let mut b_links = DatagramLinks::start(b.behaviour().streams.new_control());
        drive(a);
        drive(b);
        for i in 0..20u8 {
            a_links
                .send(b_id, Bytes::from(vec![i; 1 + i as usize * 100]))
                .expect("queued");
        }
        for i in 0..20u8 {
            match next(&mut b_links).await {
                Inbound::Datagram(from, data) => {
                    assert_eq!(from, a_id);
                    assert_eq!(data, vec![i; 1 + i as usize * 100]);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // And back, on b's own stream.
        b_links.send(a_id, Bytes::from_static(b"pong")).unwrap();
        assert!(
            matches!(next(&mut a_links).await, Inbound::Datagram(p, d) if p == b_id && d == b"pong")
        );
    }

    #[tokio::test]
    async fn a_peer_without_the_protocol_is_sent_requests_instead() {
        let (a, b) = connected_pair().await;
        let b_id = *b.local_peer_id();
        let mut a_links = DatagramLinks::start(a.behaviour().streams.new_control());
        // b never accepts the protocol: an agent from before it.
        drive(a);
        drive(b);
        assert_eq!(a_links.send(b_id, Bytes::from_static(b"x")), Ok(()));
        // The writer learns that b refuses the protocol; from then on every send says so.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match a_links.send(b_id, Bytes::from_static(b"x")) {
                Err(NotSent::NoStream) => break,
                Ok(()) | Err(NotSent::Full) => {}
            }
            assert!(tokio::time::Instant::now() < deadline, "never refused");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(a_links.legacy.contains(&b_id));
        assert_eq!(
            a_links.send(b_id, Bytes::from_static(b"x")),
            Err(NotSent::NoStream)
        );
        a_links.on_disconnected(&b_id);
        assert!(!a_links.legacy.contains(&b_id));
    }

    #[tokio::test]
    async fn an_oversized_frame_closes_the_stream_and_is_reported() {
        let (a, b) = connected_pair().await;
        let b_id = *b.local_peer_id();
        let a_id = *a.local_peer_id();
        let mut control = a.behaviour().streams.new_control();
        let mut b_links = DatagramLinks::start(b.behaviour().streams.new_control());
        drive(a);
        drive(b);
        // A hostile peer writes by hand: one good frame, then a length past the limit.
        let mut stream = control
            .open_stream(b_id, MEMBERSHIP_STREAM_PROTOCOL)
            .await
            .expect("b accepts the protocol");
        let mut bytes = vec![0, 2, b'o', b'k'];
        bytes.extend_from_slice(&((MAX_FRAME + 1) as u16).to_be_bytes());
        stream.write_all(&bytes).await.unwrap();
        stream.flush().await.unwrap();
        assert!(
            matches!(next(&mut b_links).await, Inbound::Datagram(p, d) if p == a_id && d == b"ok")
        );
        assert!(matches!(next(&mut b_links).await, Inbound::Malformed(p) if p == a_id));
    }
}
