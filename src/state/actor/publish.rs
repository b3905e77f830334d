//! What the state actor ([`super`]) shows readers: the [`super::StateSnapshot`] it publishes,
//! and per-peer sync health (logged when it goes bad).

use super::*;

impl StateActor {
    pub(super) fn peer_views(&self, heads: &[ChangeHash]) -> Vec<PeerSyncView> {
        let now = Instant::now().into_std();
        let mut views: Vec<PeerSyncView> = self
            .sessions
            .peers()
            .map(|(p, connected)| PeerSyncView {
                peer: *p,
                connected,
                status: self.sessions.status(p, heads),
                health: self.sessions.health(p, heads, now),
            })
            .collect();
        views.sort_by_key(|v| v.peer);
        views
    }

    /// Republishes if a peer's sync health changed with time alone (`never-synced` past its
    /// deadline), so `mesh peers` and the log tell without any other event.
    pub(super) fn recheck_health(&mut self) {
        let heads = self.doc.get_heads();
        let views = self.peer_views(&heads);
        if self.snapshot_tx.borrow().peers != views {
            self.publish();
        }
    }

    /// Logs a peer whose sync is failing (at most every [`HEALTH_WARN_INTERVAL`] per peer),
    /// and when it works again.
    pub(super) fn warn_on_bad_health(&mut self, views: &[PeerSyncView]) {
        let now = Instant::now();
        for v in views {
            let entry = self.health_warned.entry(v.peer).or_insert((false, None));
            if v.health.is_bad() {
                if entry
                    .1
                    .is_none_or(|t| now.duration_since(t) >= HEALTH_WARN_INTERVAL)
                {
                    tracing::warn!(
                        peer = %v.peer,
                        health = %v.health,
                        "cannot sync the mesh state with this peer: our documents may differ \
                         until this is fixed"
                    );
                    entry.1 = Some(now);
                }
                entry.0 = true;
            } else if entry.0 && v.health == SyncHealth::Ok {
                tracing::info!(peer = %v.peer, "state sync with this peer works again");
                *entry = (false, None);
            }
        }
        if self.health_warned.len() > crate::sync::MAX_SAVED_STATES {
            let known: std::collections::HashSet<PeerId> = views.iter().map(|v| v.peer).collect();
            self.health_warned.retain(|p, _| known.contains(p));
        }
    }

    pub(super) fn publish(&mut self) {
        let heads = self.doc.get_heads();
        self.ensure_hydrated(&heads);
        let (state, hydrate) = (self.hydrated.1.clone(), self.hydrated.2.clone());
        if !Arc::ptr_eq(&self.parsed.0, &state) {
            let specs = self.parsed.1.refresh(&self.parsed.0, &state);
            self.parsed = (state.clone(), Arc::new(specs));
        }
        let specs = self.parsed.1.clone();
        let peers = self.peer_views(&heads);
        self.warn_on_bad_health(&peers);
        self.version += 1;
        let snapshot = StateSnapshot {
            version: self.version,
            state,
            specs,
            heads: heads.iter().map(|h| h.to_string()).collect(),
            changes: self.change_count,
            file_bytes: self.file.as_ref().map_or(0, DocFile::bytes),
            epoch: self.epoch.clone(),
            peers,
            sync: self.sessions.stats().clone(),
            hydrate,
            recovered_from_corruption: self.recovered,
            value_bytes: self.value_bytes,
        };
        self.snapshot_tx.send_replace(Arc::new(snapshot));
    }
}
