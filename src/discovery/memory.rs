//! In-memory discovery: a registry shared by the nodes of one process, standing in for the LAN
//! in in-process tests and simulations. It behaves like DNS-SD: a node announces itself with
//! its mesh id and addresses, learns of every other node announced with the same mesh id, and
//! withdrawing sends a goodbye (`Lost`). Like mDNS, it says nothing about liveness.
//!
//! Owns only the registry. Delivery is best-effort (`try_send` into each node's bounded event
//! channel), as multicast is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use tokio::sync::mpsc;

use super::{DiscoveredPeer, DiscoveryEvent};
use crate::admission::MeshId;

struct Entry {
    mesh_id: MeshId,
    peer: DiscoveredPeer,
    events: mpsc::Sender<DiscoveryEvent>,
}

/// A process-wide stand-in for the LAN. Clone it into every node of a test.
#[derive(Clone, Default)]
pub struct MemoryDiscovery {
    entries: Arc<Mutex<HashMap<PeerId, Entry>>>,
}

impl MemoryDiscovery {
    pub fn new() -> Self {
        Self::default()
    }

    /// Announces `peer` in mesh `mesh_id` and subscribes `events` to the others of that mesh:
    /// the newcomer hears of every existing member, and they hear of it.
    pub fn announce(
        &self,
        mesh_id: MeshId,
        peer: DiscoveredPeer,
        events: mpsc::Sender<DiscoveryEvent>,
    ) {
        let mut entries = self
            .entries
            .lock()
            .expect("registry lock is never poisoned");
        for (id, other) in entries.iter() {
            if *id == peer.peer_id || other.mesh_id != mesh_id {
                continue;
            }
            let _ = events.try_send(DiscoveryEvent::Found(other.peer.clone()));
            let _ = other.events.try_send(DiscoveryEvent::Found(peer.clone()));
        }
        entries.insert(
            peer.peer_id,
            Entry {
                mesh_id,
                peer,
                events,
            },
        );
    }

    /// Withdraws `peer` (a goodbye): the others of its mesh receive `Lost`.
    pub fn withdraw(&self, peer: &PeerId) {
        let mut entries = self
            .entries
            .lock()
            .expect("registry lock is never poisoned");
        if let Some(gone) = entries.remove(peer) {
            for other in entries.values() {
                if other.mesh_id == gone.mesh_id {
                    let _ = other.events.try_send(DiscoveryEvent::Lost(*peer));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    fn peer() -> DiscoveredPeer {
        DiscoveredPeer {
            peer_id: Keypair::generate_ed25519().public().to_peer_id(),
            name: "n".into(),
            addrs: vec![],
            version: "0".into(),
        }
    }

    #[test]
    fn same_mesh_only_and_goodbyes() {
        let reg = MemoryDiscovery::new();
        let (m1, m2) = (MeshId([1; 8]), MeshId([2; 8]));
        let (a, b, c) = (peer(), peer(), peer());
        let (ta, mut ra) = mpsc::channel(8);
        let (tb, mut rb) = mpsc::channel(8);
        let (tc, mut rc) = mpsc::channel(8);
        reg.announce(m1, a.clone(), ta);
        reg.announce(m2, c.clone(), tc);
        reg.announce(m1, b.clone(), tb);
        assert_eq!(ra.try_recv().unwrap(), DiscoveryEvent::Found(b.clone()));
        assert_eq!(rb.try_recv().unwrap(), DiscoveryEvent::Found(a.clone()));
        assert!(rc.try_recv().is_err(), "another mesh hears nothing");
        reg.withdraw(&b.peer_id);
        assert_eq!(ra.try_recv().unwrap(), DiscoveryEvent::Lost(b.peer_id));
    }
}
