//! Discovery: how an agent learns *where* other agents of its mesh might be.
//!
//! Owns the [`DiscoveryEvent`] type that every discovery source emits into the node actor, and
//! the sources themselves: [`mdns`] (DNS-SD on the LAN) and [`memory`] (an in-process registry
//! for tests and simulation). Discovery says nothing about liveness or admission: a discovered
//! peer is only a dial candidate; the node actor decides whether to dial and membership decides
//! whether it is alive.
//!
//! Also [`advertise`]: the services this node advertises on the LAN as DNS-SD services of
//! their own (`advertise = "_http._tcp"` in a spec), for browsers that are not mesh members.

pub mod advertise;
pub mod mdns;
pub mod memory;
pub mod rendezvous;

use libp2p::{Multiaddr, PeerId};

/// A peer seen by a discovery source, already filtered to our mesh and not ourselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredPeer {
    pub peer_id: PeerId,
    /// The node name the peer advertises, for display (mDNS: TXT `name`, else the instance
    /// name without its id suffix).
    pub name: String,
    /// QUIC dial addresses, e.g. `/ip4/10.0.0.2/udp/7400/quic-v1`. Never loopback or
    /// link-local when they come from the LAN.
    pub addrs: Vec<Multiaddr>,
    /// The agent version the peer advertises.
    pub version: String,
}

/// What a discovery source tells the node actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// A peer of our mesh was seen (or seen again with new addresses).
    Found(DiscoveredPeer),
    /// A peer withdrew its advertisement (DNS-SD goodbye).
    Lost(PeerId),
}
