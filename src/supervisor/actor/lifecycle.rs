//! The supervisor actor's start and end: finding its cgroups, stopping what an earlier run
//! left behind, the run file (processes, and the operator requests handled), the bounded wait
//! for a first sync, and stopping every service at shutdown.

use super::*;

impl SupervisorActor {
    /// Finds this node's service cgroups (when configured and possible).
    pub(super) async fn open_cgroups(&mut self) {
        if !self.config.use_cgroups {
            return;
        }
        let node_id = self.config.node_id.clone();
        match tokio::task::spawn_blocking(move || ServiceCgroups::detect(&node_id)).await {
            Ok(Ok(cgroups)) => {
                tracing::info!(path = %cgroups.path("").display(), "each service runs in its own cgroup");
                self.cgroups = Some(cgroups);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "no service cgroups: services are tracked by process group only (a process that leaves its group is not tracked)");
                self.record(
                    "-",
                    "cgroups-unavailable",
                    format!("services are tracked by process group only: {e}"),
                );
            }
            Err(_) => {}
        }
    }

    /// First thing at start, before any sync: this node's instance records that still claim
    /// a running copy (`starting` … `stopping`) were written by an earlier run that did not stop
    /// cleanly (kill -9, crash, power loss), since a clean stop publishes every copy `stopped`.
    /// This run runs nothing yet. Left as they are, every node would count them as live, ready
    /// copies: the returning node would take its services back (against `sticky`), and the
    /// node that took one over would hand it "over" to that stale copy and stop its own at
    /// once, before any new copy ran. They are rewritten `stopped` (keeping the fencing token,
    /// so that the next claim's is higher); placement then decides afresh. `failed` stays, as
    /// it does across a clean restart.
    pub(super) async fn void_claims_of_earlier_run(&mut self) {
        let snap = self.state.snapshot();
        let now = now_ms();
        let writes: Vec<EntryWrite> = snap
            .state
            .instances
            .iter()
            .filter(|(_, i)| {
                i.node.as_str() == self.config.node_id && crate::placement::occupies(i.state)
            })
            .map(|(key, i)| {
                tracing::info!(service = %i.service, state = %i.state, "an earlier agent run left this copy's record claiming it runs; publishing it stopped");
                EntryWrite::Instance {
                    key: key.clone(),
                    record: Some(InstanceRecord {
                        state: InstanceState::Stopped,
                        since_ms: now,
                        pid: None,
                        ports: Vec::new(),
                        reason: Some(
                            "not running: the agent restarted after an unclean stop".to_string(),
                        ),
                        ..i.clone()
                    }),
                }
            })
            .collect();
        if writes.is_empty() {
            return;
        }
        if let Err(e) = self.state.write(writes).await {
            tracing::warn!(error = %e, "cannot withdraw the copies an earlier run claimed");
        }
    }

    /// Before anything starts, stops what an earlier agent run left behind: everything in
    /// this node's service cgroups, and (without cgroups, or for processes outside them) the
    /// process groups of the run file's records, whether or not their leader is still alive.
    /// This holds for a run that stopped with `--leave-services-running` too: services are
    /// never adopted, so exactly one copy runs, the one this run starts. Then starts the run
    /// file's writer task, its only writer.
    /// Returns the operator requests the previous run handled.
    pub(super) async fn open_run_file(&mut self) -> BTreeMap<String, RequestStamp> {
        let previous = match self.config.run_file.clone() {
            Some(path) => tokio::task::spawn_blocking(move || runfile::load(&path))
                .await
                .unwrap_or_default(),
            None => RunState::default(),
        };
        let why = if previous.left_running {
            "left running by the previous agent run (--leave-services-running); this run starts its own copy"
        } else {
            "left behind by an agent that did not stop cleanly"
        };
        if let Some(cgroups) = self.cgroups.clone() {
            let drained = tokio::task::spawn_blocking(move || {
                cgroups
                    .services()
                    .into_iter()
                    .map(|service| {
                        let outcome = cgroups.drain_blocking(&service, runfile::LEFTOVER_GRACE);
                        (service, outcome)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for (service, (found, killed)) in drained.into_iter().filter(|(_, (n, _))| *n > 0) {
                tracing::warn!(%service, processes = found, killed, "stopped processes an earlier agent run left in the service's cgroup");
                self.record(
                    &service,
                    "leftover-stopped",
                    format!(
                        "{found} process(es) in its cgroup were {why}; stopped with {}",
                        if killed { "SIGKILL" } else { "SIGTERM" }
                    ),
                );
            }
        }
        if !previous.processes.is_empty() {
            let records = previous.processes.clone();
            let stopped = tokio::task::spawn_blocking(move || {
                runfile::stop_leftovers(&records, runfile::LEFTOVER_GRACE)
            })
            .await
            .unwrap_or_default();
            for (record, killed) in stopped {
                tracing::warn!(service = %record.service, pid = record.pid, killed, "stopped a process group the previous agent run left behind");
                self.record(
                    &record.service,
                    "leftover-stopped",
                    format!(
                        "process group {} was {why}; stopped with {}",
                        record.pid,
                        if killed { "SIGKILL" } else { "SIGTERM" }
                    ),
                );
            }
        }
        let Some(path) = self.config.run_file.clone() else {
            return previous.handled_requests;
        };
        let (tx, mut rx) = watch::channel(RunState {
            handled_requests: previous.handled_requests.clone(),
            ..RunState::default()
        });
        let writer = tokio::spawn(async move {
            loop {
                let state = rx.borrow_and_update().clone();
                let target = path.clone();
                let result =
                    tokio::task::spawn_blocking(move || runfile::save(&target, &state)).await;
                if let Ok(Err(e)) = result {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the run file");
                }
                // Ends once the sender is dropped and its last value is written.
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        self.run_file = Some(tx);
        self.run_writer = Some(writer);
        previous.handled_requests
    }

    /// At start, when the persisted document knows other nodes: waits (bounded by
    /// [`SupervisorConfig::startup_sync_wait`]) until it is in sync with one peer, so a
    /// service removed or stopped while this node was down does not run again meanwhile.
    /// Gives up, logs and records an event, then starts from the persisted state.
    pub(super) async fn wait_for_first_sync(
        &mut self,
        doc: &mut watch::Receiver<Arc<StateSnapshot>>,
    ) {
        let wait = self.config.startup_sync_wait;
        let others = doc
            .borrow()
            .state
            .nodes
            .keys()
            .filter(|id| **id != self.config.node_id)
            .count();
        if others == 0 || wait.is_zero() {
            return;
        }
        let started = Instant::now();
        let deadline = started + wait;
        loop {
            let synced = doc
                .borrow()
                .peers
                .iter()
                .find(|p| p.status == crate::sync::SyncStatus::InSync)
                .map(|p| p.peer.to_base58());
            if let Some(peer) = synced {
                tracing::info!(%peer, waited_ms = started.elapsed().as_millis() as u64, "in sync with a peer; starting services");
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    waited_ms = wait.as_millis() as u64,
                    known_nodes = others,
                    "no peer synced in time; starting services from the persisted document"
                );
                self.record(
                    "-",
                    "startup-sync-timeout",
                    format!(
                        "no peer synced within {} ms of start; services start from the persisted document (changes made while this node was down apply once a peer syncs)",
                        wait.as_millis()
                    ),
                );
                return;
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                _ = doc.changed() => {}
                _ = tokio::time::sleep(STARTUP_SYNC_POLL) => {}
            }
        }
    }

    /// Hands the current process set to the run file's writer (latest wins).
    pub(super) fn update_run_file(&self) {
        if let Some(tx) = &self.run_file {
            tx.send_replace(RunState {
                left_running: false,
                processes: self.run_records.values().cloned().collect(),
                handled_requests: self.core.handled_requests().clone(),
            });
        }
    }

    /// Stops every service on shutdown (reverse dependency order, by the core), waiting for
    /// their exits, then publishes their final state.
    pub(super) async fn stop_all(&mut self) {
        let mode = self.config.shutdown_mode;
        if mode != ShutdownMode::LeaveRunning && !self.core.statuses().is_empty() {
            // Tell the mesh first that this node leaves: placement on the other nodes starts
            // its services elsewhere while they stop here (exclusive ones only once stopped).
            if let Err(e) = self.state.mark_left().await {
                tracing::warn!(error = %e, "cannot record the leave before stopping services");
            }
            self.record(
                "-",
                "placement-leave",
                format!("{} leaves: its services move", self.config.node_name),
            );
        }
        self.handle_event(SupervisorEvent::Shutdown { mode }).await;
        if mode == ShutdownMode::LeaveRunning {
            self.final_run_file(true).await;
            return;
        }
        let longest_grace = self
            .core
            .statuses()
            .iter()
            .filter_map(|s| self.core.spec(&s.service).map(|spec| spec.stop_grace))
            .max()
            .unwrap_or_default();
        let ceiling = Instant::now() + longest_grace + SHUTDOWN_BACKSTOP;
        while !self.core.is_shut_down() {
            let deadline = self
                .core
                .next_deadline()
                .map(Instant::from_std)
                .map_or(ceiling, |d| d.min(ceiling));
            tokio::select! {
                Some(report) = self.reports.recv() => self.on_report(report).await,
                _ = tokio::time::sleep_until(deadline) => {
                    if Instant::now() >= ceiling {
                        tracing::warn!("services did not all exit in time; the agent stops anyway");
                        break;
                    }
                    self.handle_event(SupervisorEvent::TimerFired).await;
                }
            }
        }
        self.check_leases().await;
        self.final_run_file(false).await;
        if let Some(cgroups) = self.cgroups.clone() {
            let _ = tokio::task::spawn_blocking(move || cgroups.remove_node_dir()).await;
        }
    }

    /// Hands the run file its last content and waits until the writer task (its only
    /// writer) has written it.
    pub(super) async fn final_run_file(&mut self, left_running: bool) {
        let Some(tx) = self.run_file.take() else {
            return;
        };
        tx.send_replace(RunState {
            left_running,
            processes: self.run_records.values().cloned().collect(),
            handled_requests: self.core.handled_requests().clone(),
        });
        drop(tx);
        if let Some(writer) = self.run_writer.take()
            && writer.await.is_err()
        {
            tracing::warn!("the run file writer failed");
        }
    }
}
