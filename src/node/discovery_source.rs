//! Where the node learns of peers: mDNS, an in-process registry, or nothing but static peers.
//! Starts and stops the source, and hands what it finds to the dial planner.

use super::*;

impl NodeActor {
    pub(super) async fn start_discovery(&mut self) -> Result<(), NodeError> {
        let port = self
            .listen_addrs
            .iter()
            .find_map(transport::quic_port)
            .unwrap_or(0);
        self.discovery = match self.discovery_mode.clone() {
            DiscoveryMode::Mdns { ip_check_interval } => {
                let handle = mdns::spawn_mdns(
                    MdnsConfig {
                        node_name: self.name.clone(),
                        peer_id: self.local_peer,
                        mesh_id: self.admission.keyring().current.mesh_id().to_string(),
                        previous_mesh_id: self
                            .admission
                            .keyring()
                            .previous
                            .as_ref()
                            .map(|k| k.mesh_id().to_string()),
                        protocol_version: crate::PROTOCOL_VERSION,
                        agent_version: crate::AGENT_VERSION.to_string(),
                        quic_port: port,
                        ip_check_interval,
                        interfaces: Some(self.interfaces_tx.subscribe()),
                    },
                    self.discovery_tx.clone(),
                    self.shutdown.child_token(),
                )
                .map_err(|e| NodeError::Discovery(e.to_string()))?;
                DiscoverySource::Mdns(handle)
            }
            DiscoveryMode::Memory(registry) => {
                registry.announce(
                    self.admission.keyring().current.mesh_id(),
                    DiscoveredPeer {
                        peer_id: self.local_peer,
                        name: self.name.clone(),
                        addrs: self.listen_addrs.clone(),
                        version: crate::AGENT_VERSION.to_string(),
                    },
                    self.discovery_tx.clone(),
                );
                DiscoverySource::Memory(registry)
            }
            DiscoveryMode::Off => DiscoverySource::Off,
        };
        Ok(())
    }

    pub(super) async fn stop_discovery(&mut self) {
        match std::mem::replace(&mut self.discovery, DiscoverySource::Off) {
            DiscoverySource::Mdns(handle) => handle.stop().await,
            DiscoverySource::Memory(registry) => registry.withdraw(&self.local_peer),
            DiscoverySource::NotStarted | DiscoverySource::Off => {}
        }
    }

    /// What discovery found or lost goes to the dial planner; a found peer is dialed in the
    /// same turn of the actor's loop (see [`NodeActor::tick`]).
    pub(super) fn on_discovery(&mut self, ev: DiscoveryEvent) {
        let now = Instant::now().into_std();
        match ev {
            DiscoveryEvent::Found(peer) => {
                tracing::debug!(peer = %peer.peer_id, name = %peer.name, "discovered");
                self.dials.on_discovered(peer.peer_id, peer.addrs, now);
            }
            DiscoveryEvent::Lost(peer) => self.dials.on_discovery_lost(&peer, now),
        }
    }
}
