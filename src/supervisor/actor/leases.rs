//! The supervisor actor's port leases: leasing ports for a spawn, releasing them, mirroring
//! them into the document, adopting a previous run's at start, and ageing them against the
//! listening sockets. The allocator ([`crate::ports`]) decides which port and when a lease
//! changes state; this carries its decisions out.

use super::*;

impl SupervisorActor {
    /// Allocates (or takes back) a lease for every port of `spec`. Returns the ports in spec
    /// order and the `PORT*` environment, or why not (a fixed port held by someone else).
    pub(super) async fn lease_ports(
        &mut self,
        spec: &ServiceSpec,
    ) -> Result<(Vec<u16>, BTreeMap<String, u16>), String> {
        if spec.ports.is_empty() {
            return Ok((Vec::new(), BTreeMap::new()));
        }
        // A restart whose live leases still bind needs no table read: reading `/proc/net/tcp`
        // costs ~1 ms per 60 sockets (9 ms on a busy host), a bind test microseconds.
        if let Some(assigned) = self.rebindable_leases(spec) {
            let env = spec.port_env(&assigned);
            return Ok((assigned, env));
        }
        // The four `/proc/net` tables, so a port taken by anyone is never handed out.
        let mut listening = tokio::task::spawn_blocking(scan::listening_ports)
            .await
            .map_err(|e| format!("port scan failed: {e}"))?
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read listening sockets; relying on bind tests");
                ListeningPorts::new()
            });
        // The service has no process now, so a port of its own lease that is listening was
        // taken by another process in the meantime: give that lease up.
        self.release_leases(
            &spec.name,
            |l| listening.contains(l.port, l.proto),
            "port-reclaimed",
            "taken by another process while the service was down",
        );
        let fixed_taken = spec.ports.iter().any(|p| match p.source {
            PortSource::Fixed(port) => listening.contains(port, p.proto),
            PortSource::Auto { .. } => false,
        });
        if fixed_taken {
            // The refusal names the holder: that needs the process walk.
            if let Ok(Ok(full)) = tokio::task::spawn_blocking(scan::scan_listening).await {
                listening = full.ports();
            }
        }
        let now = SystemTime::now();
        let mut assigned = Vec::with_capacity(spec.ports.len());
        for port in &spec.ports {
            let lease = self
                .allocator
                .allocate(
                    now,
                    &port_request(spec, port),
                    &self.leases,
                    &listening,
                    scan::bind_test,
                )
                .map_err(|e| e.to_string())?
                .lease;
            assigned.push(lease.port);
            // A live lease handed back unchanged is no news; a new or retaken one is.
            let existing = self.leases.iter_mut().find(|l| {
                l.service == lease.service
                    && l.port_name == lease.port_name
                    && l.proto == lease.proto
                    && l.port == lease.port
            });
            let changed = match existing {
                Some(existing) if *existing == lease => false,
                Some(existing) => {
                    *existing = lease.clone();
                    true
                }
                None => {
                    self.leases.push(lease.clone());
                    true
                }
            };
            if changed {
                self.record(
                    &spec.name,
                    "port-allocated",
                    format!(
                        "{}/{} {}",
                        lease.port,
                        lease.proto,
                        match (&port.source, &port.name) {
                            (PortSource::Fixed(_), _) => "(fixed)".to_string(),
                            (PortSource::Auto { pool }, Some(name)) =>
                                format!("from pool {pool} as PORT_{}", name.to_uppercase()),
                            (PortSource::Auto { pool }, None) => format!("from pool {pool}"),
                        }
                    ),
                );
            }
        }
        let env = spec.port_env(&assigned);
        Ok((assigned, env))
    }

    /// The ports of `spec` if the service holds a live (`allocated` / `in-use`) lease for
    /// every one of them and each still passes the bind test (its process is gone, so a
    /// failing bind means another process took the port).
    pub(super) fn rebindable_leases(&self, spec: &ServiceSpec) -> Option<Vec<u16>> {
        let now = SystemTime::now();
        let none_listening = ListeningPorts::new();
        spec.ports
            .iter()
            .map(|port| {
                // With every bind test refused, only the service's own live lease comes back.
                let request = port_request(spec, port);
                self.allocator
                    .allocate(now, &request, &self.leases, &none_listening, |_, _| false)
                    .ok()
                    .filter(|grant| grant.reused && grant.lease.state != LeaseState::Released)
                    .map(|grant| grant.lease.port)
                    .filter(|port_number| scan::bind_test(*port_number, port.proto))
            })
            .collect()
    }

    /// Releases the live leases of `service` that `which` selects, auditing each as `kind`
    /// with `why`. Returns whether any was released (the caller publishes).
    pub(super) fn release_leases(
        &mut self,
        service: &str,
        which: impl Fn(&Lease) -> bool,
        kind: &str,
        why: &str,
    ) -> bool {
        let now = SystemTime::now();
        let mut released = Vec::new();
        for lease in self
            .leases
            .iter_mut()
            .filter(|l| l.service == service && l.state != LeaseState::Released && which(l))
        {
            lease.release(now);
            released.push(format!("{}/{}: {why}", lease.port, lease.proto));
        }
        for reason in &released {
            self.record(service, kind, reason.clone());
        }
        !released.is_empty()
    }

    /// Mirrors this node's leases into the document: writes changed ones, deletes dropped ones.
    pub(super) async fn publish_leases(&mut self) {
        let mut current = BTreeMap::new();
        for lease in &self.leases {
            let key = lease_key(&self.config.node_id, lease.proto, lease.port);
            current.insert(
                key,
                LeaseRecord {
                    node: NodeId::from(&self.config.node_id),
                    port: u64::from(lease.port),
                    proto: lease.proto.to_string(),
                    owner: lease.service.clone(),
                    state: lease.state,
                    since_ms: system_time_ms(lease.since),
                    port_name: lease.port_name.clone(),
                    fixed: Some(lease.fixed),
                    pid: lease.owner_pid.map(i64::from),
                },
            );
        }
        let mut writes = Vec::new();
        for (key, record) in &current {
            if self.published_leases.get(key) != Some(record) {
                writes.push(EntryWrite::Lease {
                    key: key.clone(),
                    record: Some(record.clone()),
                });
            }
        }
        for key in self.published_leases.keys() {
            if !current.contains_key(key) {
                writes.push(EntryWrite::Lease {
                    key: key.clone(),
                    record: None,
                });
            }
        }
        if writes.is_empty() {
            return;
        }
        self.published_leases = current;
        if let Err(e) = self.state.write_detached(writes).await {
            tracing::warn!(error = %e, "cannot publish port leases");
        }
    }

    /// At start: this node's leases from the document (a previous run's), so ports stay
    /// stable across agent restarts and cooldowns are honoured.
    pub(super) fn adopt_leases(&mut self, state: &MeshState) {
        for record in state
            .leases
            .values()
            .filter(|r| r.node == self.config.node_id)
        {
            let (Ok(port), Ok(proto)) = (u16::try_from(record.port), record.proto.parse()) else {
                continue;
            };
            let lease_state = record.state;
            let since = UNIX_EPOCH + Duration::from_millis(record.since_ms.max(0) as u64);
            self.leases.push(Lease {
                port,
                proto,
                service: record.owner.clone(),
                port_name: record.port_name.clone(),
                fixed: record.fixed.unwrap_or(false),
                state: lease_state,
                since,
                owner_pid: record.pid.and_then(|p| u32::try_from(p).ok()),
            });
            self.published_leases
                .insert(lease_key(&self.config.node_id, proto, port), record.clone());
        }
    }

    /// Ages the leases against the listening sockets: `in-use` once seen, reclaimed when the
    /// owner is gone or never listened, dropped after the cooldown.
    pub(super) async fn check_leases(&mut self) {
        if self.leases.is_empty() {
            return;
        }
        // Only `allocated` leases care whether their port listens (to become `in-use`, or to
        // expire unheard); owner checks and cooldowns need no table. A steady node with every
        // lease `in-use` reads nothing.
        let waiting = self.leases.iter().any(|l| l.state == LeaseState::Allocated);
        let listening = if !waiting {
            ListeningPorts::new()
        } else {
            match tokio::task::spawn_blocking(scan::listening_ports).await {
                Ok(Ok(listening)) => listening,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read listening sockets");
                    return;
                }
                Err(_) => return,
            }
        };
        let processes = &self.processes;
        let changes =
            self.allocator
                .reconcile(SystemTime::now(), &mut self.leases, &listening, |pid| {
                    processes.contains_key(&pid) || pid_alive(pid)
                });
        for change in &changes {
            let kind = match change.to {
                Some(LeaseState::InUse) => "port-in-use",
                Some(_) => "port-reclaimed",
                None => "port-freed",
            };
            self.record(
                &change.service,
                kind,
                format!("{}/{}: {}", change.port, change.proto, change.reason),
            );
        }
        if !changes.is_empty() {
            self.publish_leases().await;
        }
    }

    /// After a passed `tcp`/`http` check of `pid`: the check connected to the service's
    /// health port, so its lease is `in-use` now rather than at the next lease check
    /// ([`LEASE_CHECK_INTERVAL`]); a healthy service never shows an `allocated` lease.
    pub(super) async fn confirm_health_port_in_use(&mut self, service: &str, pid: u32) {
        if self.processes.get(&pid).map(String::as_str) != Some(service) {
            return;
        }
        let Some(spec) = self.core.spec(service) else {
            return;
        };
        let probes_port = spec
            .health
            .as_ref()
            .is_some_and(|h| matches!(h.check, HealthCheck::Tcp | HealthCheck::Http { .. }));
        let Some(index) = spec.health_port_index().filter(|_| probes_port) else {
            return;
        };
        let Some(port) = self
            .ports
            .get(service)
            .and_then(|(ports, _)| ports.get(index).copied())
        else {
            return;
        };
        let change = confirm_in_use(
            &mut self.leases,
            SystemTime::now(),
            service,
            port,
            Proto::Tcp,
            "health check connected",
        );
        if let Some(change) = change {
            self.record(
                service,
                "port-in-use",
                format!("{}/{}: {}", change.port, change.proto, change.reason),
            );
            self.publish_leases().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_or_missing_pid_is_not_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX - 1));
    }
}
