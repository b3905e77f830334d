//! The in-process memory transport of test meshes ([`super::TransportKind::Memory`]), and the
//! one fault it can simulate: a partition ([`MemoryLinks`]).
//!
//! libp2p's memory transport upgraded with plaintext (peer ids, no encryption) and yamux, each
//! connection's muxer wrapped so that the links a test cut close it. Never for real traffic.

use std::collections::BTreeSet;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use libp2p::PeerId;
use libp2p::core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent, SubstreamBox};
use libp2p::core::transport::{Boxed, MemoryTransport, Transport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;

/// Which links of one in-process memory network are cut: a partition between groups of nodes,
/// set and healed by a test. A cut closes every open connection between the two sides at once
/// and fails every new one until [`MemoryLinks::heal`]: what a silent partition does to a QUIC
/// link once its idle timeout has passed, only sooner. Membership then sees the other side's
/// probes go unanswered (suspect, then dead), and the node's redials get through after the
/// heal. Share one value between every node of the network (it is a handle: clones are the
/// same links).
#[derive(Clone, Debug, Default)]
pub struct MemoryLinks(Arc<Mutex<Links>>);

#[derive(Debug, Default)]
struct Links {
    /// Pairs that cannot talk, each as (smaller id, larger id).
    cut: BTreeSet<(PeerId, PeerId)>,
    /// The open connections' wakers, so a cut reaches them at once (dropped connections leave
    /// dead entries, pruned as new ones come).
    connections: Vec<Weak<AtomicWaker>>,
}

impl PartialEq for MemoryLinks {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for MemoryLinks {}

fn pair(a: PeerId, b: PeerId) -> (PeerId, PeerId) {
    if a <= b { (a, b) } else { (b, a) }
}

impl MemoryLinks {
    fn links(&self) -> std::sync::MutexGuard<'_, Links> {
        self.0
            .lock()
            .expect("the links lock is never held across a panic")
    }

    /// Cuts every link between nodes of different `groups` (links inside a group, and of nodes
    /// in no group, stay as they are).
    pub fn partition(&self, groups: &[&[PeerId]]) {
        let wakers = {
            let mut links = self.links();
            for (i, group) in groups.iter().enumerate() {
                for other in &groups[i + 1..] {
                    for a in group.iter() {
                        for b in other.iter() {
                            links.cut.insert(pair(*a, *b));
                        }
                    }
                }
            }
            links.connections.retain(|w| w.strong_count() > 0);
            links.connections.clone()
        };
        for waker in wakers.iter().filter_map(Weak::upgrade) {
            waker.wake();
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.links().cut.clear();
    }

    /// Whether `a` and `b` are on different sides of a partition.
    pub fn is_cut(&self, a: PeerId, b: PeerId) -> bool {
        self.links().cut.contains(&pair(a, b))
    }

    fn register(&self) -> Arc<AtomicWaker> {
        let waker = Arc::new(AtomicWaker::new());
        let mut links = self.links();
        links.connections.retain(|w| w.strong_count() > 0);
        links.connections.push(Arc::downgrade(&waker));
        waker
    }
}

/// The memory transport of the node with `key`: plaintext and yamux over libp2p's
/// `MemoryTransport`, with connections across a cut of `links` refused or closed.
pub fn transport(key: &Keypair, links: MemoryLinks) -> Boxed<(PeerId, StreamMuxerBox)> {
    let local = key.public().to_peer_id();
    MemoryTransport::default()
        .upgrade(Version::V1)
        .authenticate(libp2p::plaintext::Config::new(key))
        .multiplex(libp2p::yamux::Config::default())
        .and_then(move |(peer, muxer), _| {
            let links = links.clone();
            async move {
                if links.is_cut(local, peer) {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "partitioned (test)",
                    ));
                }
                let waker = links.register();
                let muxer = Partitionable {
                    inner: StreamMuxerBox::new(muxer),
                    links,
                    local,
                    peer,
                    waker,
                };
                Ok((peer, StreamMuxerBox::new(muxer)))
            }
        })
        .boxed()
}

/// A connection's muxer that fails once its link is cut, which closes the connection.
struct Partitionable {
    inner: StreamMuxerBox,
    links: MemoryLinks,
    local: PeerId,
    peer: PeerId,
    waker: Arc<AtomicWaker>,
}

impl Partitionable {
    fn check(&self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        self.waker.register(cx.waker());
        if self.links.is_cut(self.local, self.peer) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "partitioned (test)",
            ));
        }
        Ok(())
    }
}

impl StreamMuxer for Partitionable {
    type Substream = SubstreamBox;
    type Error = io::Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_inbound(cx)
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_outbound(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll(cx)
    }
}
