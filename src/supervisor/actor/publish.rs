//! What the supervisor actor writes into the document and its audit trail about its services:
//! instance records on state transitions (never per health check), services it refuses with
//! the reason, and peers whose state sync fails or works again.

use super::*;

impl SupervisorActor {
    /// Writes changed service states as `instances` entries (one change for all of them).
    pub(super) async fn publish(&mut self, statuses: Vec<ServiceStatus>) {
        let now_instant = Instant::now().into_std();
        let now = now_ms();
        let mut writes = Vec::new();
        let mut released = false;
        for status in statuses {
            let key = instance_key(&status.service, &self.config.node_id);
            let placed_here = self.core.spec(&status.service).is_some();
            if !placed_here && status.pid.is_none() {
                // Removed (or moved away) and its process is gone: the entry goes (or stays
                // as the last claim, see `last_claim`), unless it now says why this node
                // refuses the service.
                self.instances_written.remove(&key);
                if !self.refused.contains_key(&status.service) {
                    let snap = self.state.snapshot();
                    let record =
                        crate::placement::last_claim(View::new(&snap.state, &snap.specs), &key);
                    writes.push(EntryWrite::Instance { key, record });
                }
            } else if !placed_here && self.refused.contains_key(&status.service) {
                // Still stopping: the `refused` entry stays until the process is gone.
            } else {
                let log_tail = (status.state == ServiceState::Failed).then(|| {
                    launcher::tail_log(&self.config.log_dir, &status.service, FAILED_LOG_TAIL)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|line| line.chars().take(MAX_TAIL_LINE_CHARS).collect())
                        .collect()
                });
                let ports = self
                    .ports
                    .get(&status.service)
                    .map(|(ports, _)| ports.iter().map(|p| u64::from(*p)).collect())
                    .unwrap_or_default();
                let health_check = self
                    .core
                    .spec(&status.service)
                    .map(|spec| spec.health.is_some());
                // A copy no longer claimed (stopping after a hand-over) keeps the token it ran
                // with: it may become the service's last claim (`last_claim`).
                let claimed = self
                    .claims
                    .get(&status.service)
                    .map(|c| (c.epoch, c.generation))
                    .or_else(|| {
                        let snap = self.state.snapshot();
                        let i = snap.state.instances.get(&key)?;
                        Some((i.epoch?, i.generation.unwrap_or(0)))
                    });
                self.instances_written.insert(key.clone());
                writes.push(EntryWrite::Instance {
                    key,
                    record: Some(InstanceRecord {
                        ports,
                        log_tail,
                        health_check,
                        epoch: claimed.map(|(epoch, _)| epoch),
                        generation: claimed.map(|(_, generation)| generation),
                        anomaly: self
                            .anomalies
                            .lock()
                            .expect("the anomalies lock is never poisoned")
                            .get(&status.service)
                            .cloned(),
                        ..crate::supervisor::instance_record(
                            &status,
                            NodeId::from(&self.config.node_id),
                            now_instant,
                            now,
                        )
                    }),
                });
            }
            // A service that is down for good gives its ports back; one between restarts
            // keeps them (and the allocator hands them back on the next spawn).
            if matches!(status.state, ServiceState::Stopped | ServiceState::Failed) {
                released |= self.release_leases(
                    &status.service,
                    |_| true,
                    "port-released",
                    &format!("service {}", status.state),
                );
            }
        }
        if let Err(e) = self.state.write_detached(writes).await {
            tracing::warn!(error = %e, "cannot publish service states");
        }
        if released {
            self.publish_leases().await;
        }
    }

    /// Publishes services this node refuses (state `refused`, with the reason) and records an
    /// audit event per new refusal; withdraws refusals that no longer hold.
    pub(super) async fn publish_refusals(
        &mut self,
        mut refused: BTreeMap<String, String>,
        state: &MeshState,
    ) {
        // A refusal stands while the service's record is the one refused: placement moves the
        // service away from this node because of it, and withdrawing it then would make this
        // node eligible again, refuse again, and so on (a write loop). A changed spec (or an
        // agent restarted with other rules) is judged anew.
        for (service, (reason, version)) in &self.refused_versions {
            let same = state
                .services
                .get(service)
                .is_some_and(|r| !r.is_removed() && r.updated_at_ms == *version);
            if same && self.core.status(service).is_none() {
                refused
                    .entry(service.clone())
                    .or_insert_with(|| reason.clone());
            }
        }
        self.refused_versions = refused
            .iter()
            .filter_map(|(service, reason)| {
                let version = state.services.get(service)?.updated_at_ms;
                Some((service.clone(), (reason.clone(), version)))
            })
            .collect();
        let mut writes = Vec::new();
        for (service, reason) in &refused {
            if self.refused.get(service) == Some(reason) {
                continue;
            }
            tracing::warn!(%service, %reason, "refusing a service placed on this node");
            self.record(service, "refused", reason.clone());
            writes.push(EntryWrite::Instance {
                key: instance_key(service, &self.config.node_id),
                record: Some(InstanceRecord {
                    service: service.clone(),
                    node: NodeId::from(&self.config.node_id),
                    state: InstanceState::Refused,
                    since_ms: now_ms(),
                    reason: Some(reason.clone()),
                    ..InstanceRecord::default()
                }),
            });
        }
        for service in self.refused.keys() {
            // Accepted now: its machine publishes its state; gone: the entry goes.
            if !refused.contains_key(service) && self.core.status(service).is_none() {
                writes.push(EntryWrite::Instance {
                    key: instance_key(service, &self.config.node_id),
                    record: None,
                });
            }
        }
        self.refused = refused;
        if !writes.is_empty()
            && let Err(e) = self.state.write_detached(writes).await
        {
            tracing::warn!(error = %e, "cannot publish refused services");
        }
    }

    /// The document changed: apply placement, desired states, operator requests and remote
    /// dependency states.
    /// Records in the audit trail a peer whose state sync starts failing, and when it works
    /// again (a split between members is never silent; see `protocol/sync.md`).
    pub(super) fn note_sync_health(&mut self, snap: &StateSnapshot) {
        for p in &snap.peers {
            let name = snap.state.node_name(&p.peer.to_base58());
            if p.health.is_bad() {
                if self.sync_failing.insert(p.peer) {
                    self.record(
                        "-",
                        "sync-failing",
                        format!("state sync with {name}: {}", p.health),
                    );
                }
            } else if p.health == crate::sync::SyncHealth::Ok && self.sync_failing.remove(&p.peer) {
                self.record(
                    "-",
                    "sync-ok",
                    format!("state sync with {name} works again"),
                );
            }
        }
    }
}
