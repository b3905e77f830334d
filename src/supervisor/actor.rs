//! The supervisor actor: runs this node's services, wiring the sans-IO [`Supervisor`] core to
//! real processes, health probes, port leases and the replicated document.
//!
//! Inputs:
//! - the replicated document (a `watch` of [`StateSnapshot`]s): which services are placed on
//!   this node and their desired state (`running` / `stopped` / removed), operator requests
//!   (`start`, `restart`, each acted on once), and the published states of dependencies that
//!   run on other nodes;
//! - process reports from its own tasks: a process exited, a health check finished;
//! - timers: the core's next deadline, and the periodic lease check (listening sockets);
//! - the shutdown token: stop every service in reverse dependency order (or leave them
//!   running), publish, and end.
//!
//! Outputs:
//! - processes (through the configured [`Launcher`]; real ones by [`launcher`]), each in its
//!   own process group and cgroup ([`super::cgroup`]) with `PORT*` from its leases, as the
//!   spec's `user`/`group`; what a main process leaves behind is stopped before its exit
//!   counts;
//! - before the first start: the copies an earlier run that did not stop cleanly still
//!   claims in the document published `stopped`, leftovers of an earlier run stopped, and
//!   (when the document knows other nodes) a bounded wait for a first sync with a peer;
//! - services it refuses ([`super::accept`]) published as `refused` with the reason;
//! - writes to the document: this node's `instances` (on state transitions only) and `leases`
//!   (on lease transitions only), never volatile data;
//! - the audit trail: a bounded ring of [`AuditRecord`]s read through [`SupervisorHandle`].
//!
//! It does not decide anything itself: the core decides what the document asks of this node
//! ([`super::desired`]) and when to spawn, signal, probe; the [`PortAllocator`] which port. It
//! keeps only processes, leases and the run file. One task; process waits and probes run in
//! their own small tasks that report back through a bounded channel.
//!
//! Files: this one (configuration, audit ring, spawning the actor, its run loop, events and
//! actions, spawns and probes), `handle` (the handle and the add-time [`LocalRules`]),
//! `lifecycle` (cgroups, run file, first sync, shutdown), `leases` (port leases),
//! `publish` (instance records, refusals, sync health in the audit trail).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::accept::AcceptServices;
use super::cgroup::ServiceCgroups;
use super::launcher::{self, Launch, Launched, Launcher, LogLimits};
use super::runfile::{self, RunRecord, RunState};
use super::{
    AuditEvent, ExitStatus, HealthCheck, HealthOutcome, ServiceSpec, ServiceState, ServiceStatus,
    ShutdownMode, Supervisor, SupervisorAction, SupervisorEvent,
};
use super::{FollowRules, RequestStamp};
use crate::identity::NodeId;
use crate::placement::{LocalPlan, MembershipSnapshot};
use crate::ports::scan;
use crate::ports::{
    Lease, LeaseConfig, LeaseState, ListeningPorts, PoolSet, PortAllocator, PortRequest,
    PortSource, Proto, confirm_in_use,
};
use crate::services::{View, instance_key};
use crate::state::actor::{EntryWrite, StateHandle, StateSnapshot};
use crate::state::{InstanceRecord, InstanceState, LeaseRecord, MeshState, now_ms, system_time_ms};
pub use crate::wire::query::AuditRecord;

mod audit;
mod handle;
mod leases;
mod lifecycle;
mod placing;
mod publish;

pub use audit::AuditPage;
use audit::AuditRing;
use handle::SupervisorCommand;
pub use handle::{
    CHECK_BUCKETS, CheckTimes, ListeningReport, LocalRules, PeerAsk, SupervisorHandle,
    SupervisorHandleError,
};

/// Capacity of the channel of process reports (exits, health results). One report per
/// process exit or probe; the actor drains it continuously.
pub const REPORT_CHANNEL: usize = 256;
/// Capacity of the command channel of [`SupervisorHandle`].
pub const COMMAND_CHANNEL: usize = 64;
/// How often the listening sockets are read to move leases to `in-use` and reclaim leases
/// whose owner is gone. Reading the four `/proc/net` tables costs about 1 ms per 60 sockets
/// on the host (measured: 9 ms with 525 TCP sockets), and only runs while leases exist.
pub const LEASE_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Log lines published with a `failed` instance, so `mesh services` anywhere shows why.
pub const FAILED_LOG_TAIL: usize = 10;
/// Longest a published log line may be (characters); the document is not a log store.
pub const MAX_TAIL_LINE_CHARS: usize = 200;
/// Ceiling on a shutdown that stops services: past every service's stop grace, SIGKILL has
/// been sent; this is a backstop against a process the kernel cannot reap.
pub const SHUTDOWN_BACKSTOP: Duration = Duration::from_secs(5);
/// Default longest wait, at start, for a first sync with a peer before services start from
/// the persisted document (when it knows other nodes). A LAN peer syncs within ~120 ms of
/// start; 5 s covers a slow link or a peer still starting, and bounds how long a node with
/// no reachable peer delays its services.
pub const DEFAULT_STARTUP_SYNC_WAIT: Duration = Duration::from_secs(5);
/// How often the startup wait looks at the peers' sync status.
const STARTUP_SYNC_POLL: Duration = Duration::from_millis(50);

/// What the supervisor actor is started with.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// This node's id (base58), the owner of its `instances` and `leases` entries.
    pub node_id: String,
    /// This node's name: placement (`node = NAME`) and `MESH_NODE`.
    pub node_name: String,
    /// Where service logs go (`<service>.log`, rotated).
    pub log_dir: PathBuf,
    /// Parent of the default working dirs (`<work_dir>/<service>`), for specs without one.
    pub work_dir: PathBuf,
    pub log_limits: LogLimits,
    pub pools: PoolSet,
    pub leases: LeaseConfig,
    /// Audit events kept (the profile's `event_ring_capacity`).
    pub event_capacity: usize,
    pub shutdown_mode: ShutdownMode,
    /// Where the running processes are recorded ([`runfile`]); `None`: nowhere (tests).
    pub run_file: Option<PathBuf>,
    /// Whose services this node runs (`--accept-services`).
    pub accept_services: AcceptServices,
    /// Most services run at once (the profile's `max_services`).
    pub max_services: usize,
    /// Longest wait at start for a first sync with a peer, when the persisted document
    /// knows other nodes ([`DEFAULT_STARTUP_SYNC_WAIT`]).
    pub startup_sync_wait: Duration,
    /// Track each service in its own cgroup v2 where possible ([`super::cgroup`]); `false`:
    /// process groups only.
    pub use_cgroups: bool,
    /// Spawns, signals and probes the service processes: [`launcher::ProcessLauncher`]
    /// (real processes), or a fake one in tests ([`launcher::fake::FakeLauncher`]).
    pub launcher: Arc<dyn Launcher>,
}

/// A report from a process task.
#[derive(Debug)]
enum Report {
    Exited {
        service: String,
        pid: u32,
        status: ExitStatus,
    },
    Health {
        service: String,
        pid: u32,
        outcome: HealthOutcome,
        /// How long the check took.
        took: Duration,
    },
}

/// Starts the supervisor actor. It ends after `shutdown` is cancelled and its services are
/// stopped (or left running, per [`SupervisorConfig::shutdown_mode`]).
pub fn spawn_supervisor(
    config: SupervisorConfig,
    state: StateHandle,
    membership: watch::Receiver<MembershipSnapshot>,
    ask: PeerAsk,
    shutdown: CancellationToken,
) -> (SupervisorHandle, JoinHandle<()>) {
    let (commands_tx, commands) = mpsc::channel(COMMAND_CHANNEL);
    let (confirm_tx, confirm_rx) = mpsc::channel(COMMAND_CHANNEL);
    let (reports_tx, reports) = mpsc::channel(REPORT_CHANNEL);
    let (seq_tx, seq_rx) = watch::channel(0);
    let audit = Arc::new(Mutex::new(AuditRing {
        capacity: config.event_capacity,
        events: VecDeque::new(),
        last_seq: 0,
        dropped: 0,
    }));
    let now = Instant::now();
    let check_times = Arc::new(Mutex::new(BTreeMap::new()));
    let anomalies = Arc::new(Mutex::new(BTreeMap::new()));
    let handle = SupervisorHandle {
        rules: Arc::new(LocalRules {
            accept_services: config.accept_services,
            max_services: config.max_services,
            pools: config.pools.clone(),
        }),
        commands: commands_tx,
        audit: audit.clone(),
        audit_seq: seq_rx,
        audit_seq_tx: seq_tx.clone(),
        log_dir: config.log_dir.clone(),
        node_id: crate::identity::NodeId::from(config.node_id.as_str()),
        state: state.clone(),
        membership: membership.clone(),
        check_times: check_times.clone(),
        anomalies: anomalies.clone(),
    };
    let seed = config
        .node_id
        .bytes()
        .fold(now_ms() as u64, |acc, b| acc.rotate_left(5) ^ u64::from(b));
    let actor = SupervisorActor {
        core: Supervisor::new(Vec::new(), seed, now.into_std())
            .expect("an empty service set is valid"),
        allocator: PortAllocator::new(config.pools.clone(), config.leases),
        leases: Vec::new(),
        published_leases: BTreeMap::new(),
        ports: BTreeMap::new(),
        processes: BTreeMap::new(),
        sync_failing: Default::default(),
        instances_written: BTreeSet::new(),
        run_records: BTreeMap::new(),
        run_file: None,
        run_writer: None,
        cgroups: None,
        refused: BTreeMap::new(),
        refused_versions: BTreeMap::new(),
        membership,
        claims: BTreeMap::new(),
        plan: LocalPlan::default(),
        placement_recheck: None,
        majority_clock: Default::default(),
        unplaced: BTreeMap::new(),
        confirm: placing::Confirmations::new(ask, confirm_tx, confirm_rx),
        state,
        commands,
        reports,
        reports_tx,
        audit,
        seq_tx,
        check_times,
        anomalies,
        shutdown,
        config,
    };
    (handle, tokio::spawn(actor.run()))
}

struct SupervisorActor {
    config: SupervisorConfig,
    core: Supervisor,
    allocator: PortAllocator,
    /// This node's leases: the allocator's truth, mirrored to the document.
    leases: Vec<Lease>,
    /// Lease records last written to the document, by key.
    published_leases: BTreeMap<String, LeaseRecord>,
    /// Ports of each service's current (or last) process, as `PORT*` variables, in spec order.
    ports: BTreeMap<String, (Vec<u16>, BTreeMap<String, u16>)>,
    /// Running processes by pid → service.
    processes: BTreeMap<u32, String>,
    /// Peers whose state sync was last seen failing (the state actor's health), so the audit
    /// trail records each turn once: `sync-failing`, then `sync-ok`.
    sync_failing: std::collections::BTreeSet<libp2p::PeerId>,
    /// Instance keys this run has written (deleted when their service leaves this node).
    instances_written: BTreeSet<String>,
    /// Running processes as recorded in the run file, by pid.
    run_records: BTreeMap<u32, RunRecord>,
    /// Latest run state for the run file's writer task, the file's only writer.
    run_file: Option<watch::Sender<RunState>>,
    run_writer: Option<JoinHandle<()>>,
    /// Service cgroups, when this node can use them.
    cgroups: Option<ServiceCgroups>,
    /// Services placed here that this node refuses to run, with the reason published.
    refused: BTreeMap<String, String>,
    /// The refusals with the `updated_at_ms` of the record refused: kept while it is
    /// unchanged (see `publish_refusals`).
    refused_versions: BTreeMap<String, (String, i64)>,
    /// Peers' membership states, from the node: placement's liveness view.
    membership: watch::Receiver<MembershipSnapshot>,
    /// Copies this node claimed (runs or hands over): fencing token, generation, endpoints.
    claims: BTreeMap<String, placing::Claim>,
    /// The last placement plan (decisions are told in the audit trail when they change).
    plan: LocalPlan,
    /// When placement must look again though nothing changed (an exclusive fence ends).
    placement_recheck: Option<Instant>,
    /// Since when this node has seen a majority (the exclusive fence counts from it).
    majority_clock: crate::placement::MajorityClock,
    /// Services last seen unplaced, with the reason told.
    unplaced: BTreeMap<String, String>,
    /// The members' answers before an exclusive start (`placement::Confirmation`).
    confirm: placing::Confirmations,
    state: StateHandle,
    commands: mpsc::Receiver<SupervisorCommand>,
    reports: mpsc::Receiver<Report>,
    reports_tx: mpsc::Sender<Report>,
    audit: Arc<Mutex<AuditRing>>,
    seq_tx: watch::Sender<u64>,
    /// Health-check latencies, shared with the handle.
    check_times: Arc<Mutex<BTreeMap<String, handle::CheckTimes>>>,
    /// Anomaly flags set through the handle, written on the instance records.
    anomalies: Arc<Mutex<BTreeMap<String, String>>>,
    shutdown: CancellationToken,
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl SupervisorActor {
    async fn run(mut self) {
        self.void_claims_of_earlier_run().await;
        self.open_cgroups().await;
        let handled = self.open_run_file().await;
        let mut doc = self.state.subscribe();
        self.wait_for_first_sync(&mut doc).await;
        let mut lease_check = tokio::time::interval(LEASE_CHECK_INTERVAL);
        lease_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        {
            let snap = doc.borrow_and_update().clone();
            self.core
                .start_following(View::new(&snap.state, &snap.specs), handled);
            self.adopt_leases(&snap.state);
            self.on_document(&snap).await;
        }
        let mut membership = self.membership.clone();
        let mut membership_open = true;
        // Nodes membership has not heard of count as alive only for a while after start:
        // look again when that grace ends.
        let mut grace_end = Some(Instant::now() + crate::placement::UNKNOWN_GRACE);
        loop {
            let deadline = self.core.next_deadline().map(Instant::from_std);
            let recheck = match (self.placement_recheck, grace_end) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some(report) = self.reports.recv() => self.on_report(report).await,
                _ = sleep_until_opt(deadline) => {
                    self.handle_event(SupervisorEvent::TimerFired).await;
                }
                changed = doc.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snap = doc.borrow_and_update().clone();
                    self.note_sync_health(&snap);
                    self.on_document(&snap).await;
                }
                changed = membership.changed(), if membership_open => {
                    if changed.is_err() {
                        // The node is gone: nothing more changes; keep following the document.
                        membership_open = false;
                        continue;
                    }
                    membership.borrow_and_update();
                    let snap = doc.borrow().clone();
                    self.on_document(&snap).await;
                }
                _ = sleep_until_opt(recheck) => {
                    if grace_end.is_some_and(|end| end <= Instant::now()) {
                        grace_end = None;
                    }
                    self.placement_recheck = None;
                    let snap = doc.borrow().clone();
                    self.on_document(&snap).await;
                }
                Some(command) = self.commands.recv() => self.on_command(command).await,
                Some(outcome) = self.confirm.next() => {
                    if self.on_confirmation(outcome) {
                        let snap = doc.borrow().clone();
                        self.on_document(&snap).await;
                    }
                }
                _ = lease_check.tick() => self.check_leases().await,
            }
        }
        self.stop_all().await;
    }

    async fn on_command(&mut self, command: SupervisorCommand) {
        match command {
            SupervisorCommand::Statuses { reply } => {
                let _ = reply.send(self.core.statuses());
            }
            SupervisorCommand::Leases { reply } => {
                let _ = reply.send(self.leases.clone());
            }
            SupervisorCommand::Republish { service } => {
                if let Some(status) = self.core.status(&service) {
                    self.publish(vec![status]).await;
                }
            }
            SupervisorCommand::SetDrained { drained, reply } => {
                let me = &self.config.node_name;
                let (kind, reason) = if drained {
                    (
                        "placement-drain",
                        format!("{me} drained: its services move elsewhere"),
                    )
                } else {
                    (
                        "placement-undrain",
                        format!("{me} undrained: it takes services again"),
                    )
                };
                self.record("-", kind, reason);
                // The write waits for the disk; the actor does not.
                let state = self.state.clone();
                tokio::spawn(async move {
                    let _ = reply.send(state.set_drained(drained).await.map_err(Into::into));
                });
            }
        }
    }

    async fn on_report(&mut self, report: Report) {
        let event = match report {
            Report::Exited {
                service,
                pid,
                status,
            } => {
                self.processes.remove(&pid);
                if self.run_records.remove(&pid).is_some() {
                    self.update_run_file();
                }
                SupervisorEvent::Exited {
                    service,
                    pid,
                    status,
                }
            }
            Report::Health {
                service,
                pid,
                outcome,
                took,
            } => {
                self.check_times
                    .lock()
                    .expect("the check-times lock is never poisoned")
                    .entry(service.clone())
                    .or_default()
                    .observe(took.as_secs_f64());
                if outcome == HealthOutcome::Passed {
                    // Published before the `healthy` state the check may lead to.
                    self.confirm_health_port_in_use(&service, pid).await;
                }
                SupervisorEvent::HealthChecked {
                    service,
                    pid,
                    outcome,
                }
            }
        };
        self.handle_event(event).await;
    }

    /// Feeds one event to the core and carries out the actions, including the events those
    /// actions produce (a spawn's result).
    async fn handle_event(&mut self, event: SupervisorEvent) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let now = Instant::now().into_std();
            match self.core.on_event(now, event) {
                Ok(actions) => self.carry_out(actions, &mut queue).await,
                Err(e) => tracing::debug!(error = %e, "supervisor event not applied"),
            }
        }
    }

    /// Carries out actions; results that are events go to `queue`.
    async fn carry_out(
        &mut self,
        actions: Vec<SupervisorAction>,
        queue: &mut VecDeque<SupervisorEvent>,
    ) {
        let mut publish: BTreeMap<String, ServiceStatus> = BTreeMap::new();
        for action in actions {
            match action {
                SupervisorAction::Spawn { service } => {
                    queue.push_back(self.spawn(&service).await);
                }
                SupervisorAction::Signal {
                    service,
                    pid,
                    signal,
                } => {
                    self.config
                        .launcher
                        .signal(&service, pid, signal, self.cgroups.as_ref());
                }
                SupervisorAction::RunHealthCheck { service, pid } => self.probe(service, pid),
                SupervisorAction::ScheduleTimer { .. } => {
                    // The run loop sleeps until the core's next deadline.
                }
                SupervisorAction::Audit(event) => self.audit_event(&event),
                SupervisorAction::Publish(status) => {
                    publish.insert(status.service.clone(), status);
                }
            }
        }
        if !publish.is_empty() {
            self.publish(publish.into_values().collect()).await;
        }
    }

    fn audit_event(&self, event: &AuditEvent) {
        let kind = serde_json::to_value(event.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_else(|| format!("{:?}", event.kind));
        tracing::info!(service = %event.service, kind = %kind, reason = %event.reason, "supervisor");
        self.record(&event.service, &kind, event.reason.clone());
    }

    fn record(&self, service: &str, kind: &str, reason: String) {
        let seq = self
            .audit
            .lock()
            .expect("the audit lock is never poisoned")
            .push(service, kind, reason);
        self.seq_tx.send_replace(seq);
    }

    /// Leases the service's ports and starts its process; the core's answer event.
    async fn spawn(&mut self, service: &str) -> SupervisorEvent {
        let failed = |error: String| SupervisorEvent::SpawnFailed {
            service: service.to_string(),
            error,
        };
        let Some(mut spec) = self.core.spec(service).cloned() else {
            return failed("no spec for this service".to_string());
        };
        if self.claims.contains_key(service) {
            // The addresses of its dependencies as they are now: what it starts with.
            let endpoints = self.endpoints_at_start(&spec);
            if let Some(claim) = self.claims.get_mut(service) {
                claim.endpoints = endpoints;
                spec.env.extend(claim.env());
            }
        }
        let (assigned, env) = match self.lease_ports(&spec).await {
            Ok(ports) => ports,
            Err(error) => return failed(error),
        };
        if spec.working_dir.is_none() && (spec.user.is_some() || spec.group.is_some()) {
            // The data dir is the agent's alone (0700): a service with its own account starts
            // in `/`, as a systemd system service does.
            spec.working_dir = Some(PathBuf::from("/"));
        } else if spec.working_dir.is_none() {
            let dir = self.config.work_dir.join(&spec.name);
            if let Err(e) = tokio::fs::create_dir_all(&dir).await {
                return failed(format!("cannot create working dir {}: {e}", dir.display()));
            }
            spec.working_dir = Some(dir);
        }
        let launched = self
            .config
            .launcher
            .spawn(Launch {
                spec: &spec,
                ports: &env,
                node_name: &self.config.node_name,
                log_dir: &self.config.log_dir,
                log_limits: self.config.log_limits,
                cgroups: self.cgroups.as_ref(),
            })
            .await;
        match launched {
            Ok(Launched { pid, exit }) => {
                self.processes.insert(pid, spec.name.clone());
                if let Some(start_ticks) = runfile::start_ticks(pid) {
                    self.run_records.insert(
                        pid,
                        RunRecord {
                            service: spec.name.clone(),
                            pid,
                            start_ticks,
                        },
                    );
                    self.update_run_file();
                }
                self.ports.insert(spec.name.clone(), (assigned, env));
                for lease in self.leases.iter_mut().filter(|l| l.service == spec.name) {
                    if lease.state != LeaseState::Released {
                        lease.set_owner(pid);
                    }
                }
                self.publish_leases().await;
                let reports = self.reports_tx.clone();
                let name = spec.name.clone();
                tokio::spawn(async move {
                    // Resolves after what the main process left behind is stopped too.
                    let status = exit.await;
                    let _ = reports
                        .send(Report::Exited {
                            service: name,
                            pid,
                            status,
                        })
                        .await;
                });
                SupervisorEvent::Spawned {
                    service: spec.name,
                    pid,
                }
            }
            Err(e) => failed(e.to_string()),
        }
    }

    /// Starts one health check in its own task; the result comes back as a report.
    fn probe(&self, service: String, pid: u32) {
        let Some(spec) = self.core.spec(&service).cloned() else {
            return;
        };
        let env = self
            .ports
            .get(&service)
            .map(|(_, env)| env.clone())
            .unwrap_or_default();
        let node = self.config.node_name.clone();
        let reports = self.reports_tx.clone();
        let probe = self.config.launcher.probe(spec, env, node, pid);
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = probe.await;
            let _ = reports
                .send(Report::Health {
                    service,
                    pid,
                    outcome,
                    took: started.elapsed(),
                })
                .await;
        });
    }

    /// The document changed: the core decides (placement, desired states, operator requests,
    /// remote dependency states); this carries out its actions, publishes refusals, records
    /// invalid specs, and removes this node's instances of services no longer here.
    async fn on_document(&mut self, snap: &StateSnapshot) {
        let view = View::new(&snap.state, &snap.specs);
        let node_id = NodeId::from(&self.config.node_id);
        let account_error = |spec: &ServiceSpec| {
            super::account::resolve(spec.user.as_deref(), spec.group.as_deref())
                .err()
                .map(|e| e.to_string())
        };
        let mut queue = VecDeque::new();
        let runs_here = self.place_here(snap, &mut queue);
        let rules = FollowRules {
            node_id: &node_id,
            runs_here: &runs_here,
            accept_services: self.config.accept_services,
            max_services: self.config.max_services,
            account_error: &account_error,
        };
        let handled_before = self.core.handled_requests().clone();
        let followed = self
            .core
            .follow_document(Instant::now().into_std(), view, &rules);
        for (name, reason) in &followed.invalid {
            tracing::warn!(service = %name, error = %reason, "ignoring a service spec that does not parse");
            self.record(name, "spec-invalid", format!("spec ignored: {reason}"));
        }
        self.publish_refusals(followed.refused, &snap.state).await;
        if let Some(e) = followed.rejected {
            tracing::warn!(error = %e, "the services placed here do not form a valid set; keeping the previous one");
            self.record(
                "-",
                "spec-invalid",
                format!("services placed here refused: {e}"),
            );
            return;
        }
        self.carry_out(followed.actions, &mut queue).await;
        while let Some(event) = queue.pop_front() {
            self.handle_event(event).await;
        }
        if *self.core.handled_requests() != handled_before {
            self.update_run_file();
        }
        // Instances this node published for services no longer placed here and not running.
        let stale: Vec<String> = snap
            .state
            .instances
            .iter()
            .filter(|(_, i)| {
                i.node == node_id
                    && self.core.status(&i.service).is_none()
                    && !self.refused.contains_key(&i.service)
            })
            .map(|(key, _)| key.clone())
            .collect();
        let mut writes = Vec::new();
        for key in stale {
            let record = crate::placement::last_claim(View::new(&snap.state, &snap.specs), &key);
            if record.is_some() && record.as_ref() == snap.state.instances.get(&key) {
                // Already the last claim, as it should stay.
                continue;
            }
            self.instances_written.remove(&key);
            writes.push(EntryWrite::Instance { key, record });
        }
        if !writes.is_empty()
            && let Err(e) = self.state.write_detached(writes).await
        {
            tracing::warn!(error = %e, "cannot remove stale instances");
        }
    }
}

/// Whether `pid` names a live process (not a zombie) on this machine.
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the `(comm)` that may hold spaces: `Z` is a zombie.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// What the allocator is asked for one port of a spec.
fn port_request(spec: &ServiceSpec, port: &crate::supervisor::PortSpec) -> PortRequest {
    PortRequest {
        service: spec.name.clone(),
        port_name: port.name.clone(),
        proto: port.proto,
        source: port.source.clone(),
    }
}

/// The lease key of a port on `node_id`.
pub fn lease_key(node_id: &str, proto: Proto, port: u16) -> String {
    format!("{node_id}/{proto}/{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_ring_is_bounded_and_pages_forward() {
        let mut ring = AuditRing {
            capacity: 3,
            events: VecDeque::new(),
            last_seq: 0,
            dropped: 0,
        };
        for i in 0..5 {
            ring.push("db", "start", format!("event {i}"));
        }
        let newest = ring.page(None, 10);
        assert_eq!(newest.events.len(), 3);
        assert_eq!(newest.events[0].seq, 3);
        assert_eq!(newest.last_seq, 5);
        assert_eq!(newest.dropped, 2);
        let after = ring.page(Some(3), 1);
        assert_eq!(after.events.len(), 1);
        assert_eq!(after.events[0].seq, 4);
        assert!(ring.page(Some(5), 10).events.is_empty());
    }
}
