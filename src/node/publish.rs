//! Publishing the node's [`NodeSnapshot`]: built from the actor's state on every change, and
//! every [`VOLATILE_PUBLISH`] while only RTTs and last-seen times move.

use super::*;
use crate::identity::NodeId;

impl NodeActor {
    /// Publishes a new snapshot; its version increases only when something other than RTTs
    /// and last-seen times changed (`dirty`).
    pub(super) fn publish(&mut self, now: Instant) {
        if self.dirty {
            self.version += 1;
        }
        self.dirty = false;
        self.last_publish = now;
        let mut peers: Vec<PeerSnapshot> = self
            .membership
            .peers()
            .map(|rec| {
                let conns = self.connections.get(&rec.peer);
                let addrs = match conns {
                    Some(c) => c.iter().map(|c| c.remote.clone()).collect(),
                    None => self.dials.addrs_of(&rec.peer).to_vec(),
                };
                PeerSnapshot {
                    peer_id: rec.peer,
                    state: rec.state,
                    since: Instant::from_std(rec.since),
                    info: self.infos.get(&rec.peer).cloned(),
                    addrs,
                    link: super::nat::link_of(conns.into_iter().flatten().map(|c| c.relayed)),
                    connected: conns.is_some(),
                    rtt: rec.rtt,
                    last_seen: rec.last_seen.map(Instant::from_std),
                }
            })
            .collect();
        peers.sort_by(|a, b| {
            let an = a.info.as_ref().map(|i| i.name.as_str()).unwrap_or("");
            let bn = b.info.as_ref().map(|i| i.name.as_str()).unwrap_or("");
            an.cmp(bn).then(a.peer_id.cmp(&b.peer_id))
        });
        let mut stats = self.stats.clone();
        stats.admission = self.admission.stats().clone();
        stats.membership = self.membership.stats().clone();
        stats.connections = self.connections.values().map(Vec::len).sum();
        stats.dials = self.dials.stats();
        stats.rendezvous = self.rendezvous.status(now.into_std());
        stats.behind_nat = self.nat.behind_nat.as_ref().map(|(a, _)| a.to_string());
        stats.relayed_via = self
            .nat
            .reservation
            .map(|(relay, _)| (relay, self.nat.reserved));
        if let Some(gate) = self.swarm.behaviour().rendezvous_point.as_ref() {
            let point = stats.point.get_or_insert_with(Default::default);
            point.open = gate.is_open();
            point.not_admitted = gate.refused();
        }
        stats.sync_messages_dropped = self.state.dropped_commands();
        if let DiscoverySource::Mdns(h) = &self.discovery {
            stats.mdns_foreign_mesh_ignored = h.stats().foreign_mesh_ignored;
        }
        let snapshot = NodeSnapshot {
            version: self.version,
            taken_at: now,
            local: LocalSnapshot {
                peer_id: self.local_peer,
                name: self.name.clone(),
                mesh_id: self.admission.keyring().current.mesh_id(),
                listen_addrs: self.listen_addrs.clone(),
                hardware: self.hardware.clone(),
                started_at: self.started_at,
                bump: self.bump,
                accept_services: self.accept_services,
                relay_server: self.relay_server,
            },
            peers,
            stats,
        };
        let membership: std::collections::BTreeMap<_, _> = snapshot
            .peers
            .iter()
            .map(|p| (NodeId::from(&p.peer_id), (p.state, p.since.into_std())))
            .collect();
        self.membership_tx.send_if_modified(|current| {
            let changed = current.peers != membership;
            if changed {
                current.peers = membership;
            }
            changed
        });
        self.snapshot_tx.send_replace(Arc::new(snapshot));
    }
}
