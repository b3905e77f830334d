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
//! - before the first start: leftovers of an earlier run stopped, and (when the document
//!   knows other nodes) a bounded wait for a first sync with a peer;
//! - services it refuses ([`super::accept`]) published as `refused` with the reason;
//! - writes to the document: this node's `instances` (on state transitions only) and `leases`
//!   (on lease transitions only), never volatile data;
//! - the audit trail: a bounded ring of [`AuditRecord`]s read through [`SupervisorHandle`].
//!
//! It does not decide anything itself: the core decides when to spawn, signal, probe; the
//! [`PortAllocator`] which port. One task; process waits and probes run in their own small
//! tasks that report back through a bounded channel.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::accept::{self, AcceptServices, Placed, REFUSED_STATE};
use super::cgroup::ServiceCgroups;
use super::launcher::{self, Launch, Launched, Launcher, LogLimits};
use super::runfile::{self, RunRecord, RunState};
use super::{
    AuditEvent, ExitStatus, HealthCheck, HealthOutcome, ServiceSpec, ServiceState, ServiceStatus,
    ShutdownMode, Supervisor, SupervisorAction, SupervisorEvent,
};
use crate::ports::scan::{self, ListeningScan, ScanError};
use crate::ports::{
    Lease, LeaseConfig, LeaseState, ListeningPorts, PoolSet, PortAllocator, PortRequest,
    PortSource, Proto, confirm_in_use,
};
use crate::state::actor::{EntryWrite, StateHandle, StateSnapshot};
use crate::state::{InstanceRecord, LeaseRecord, MeshState, now_ms, system_time_ms};
pub use crate::wire::query::AuditRecord;

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

/// A page of the audit trail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditPage {
    pub events: Vec<AuditRecord>,
    /// The newest sequence number given out.
    pub last_seq: u64,
    /// Events pushed out of the ring so far.
    pub dropped: u64,
}

/// The bounded audit ring: shared between the actor (writer) and handles (readers).
#[derive(Debug)]
struct AuditRing {
    capacity: usize,
    events: VecDeque<AuditRecord>,
    last_seq: u64,
    dropped: u64,
}

impl AuditRing {
    fn push(&mut self, service: &str, kind: &str, reason: String) -> u64 {
        self.last_seq += 1;
        if self.events.len() >= self.capacity.max(1) {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(AuditRecord {
            seq: self.last_seq,
            at_ms: now_ms(),
            service: service.to_string(),
            kind: kind.to_string(),
            reason,
        });
        self.last_seq
    }

    /// Events after `after`: the oldest `limit` of them when paging forward (`after` given),
    /// else the newest `limit`.
    fn page(&self, after: Option<u64>, limit: usize) -> AuditPage {
        let events: Vec<AuditRecord> = match after {
            Some(after) => self
                .events
                .iter()
                .filter(|e| e.seq > after)
                .take(limit)
                .cloned()
                .collect(),
            None => {
                let skip = self.events.len().saturating_sub(limit);
                self.events.iter().skip(skip).cloned().collect()
            }
        };
        AuditPage {
            events,
            last_seq: self.last_seq,
            dropped: self.dropped,
        }
    }
}

/// Errors of the supervisor handle.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorHandleError {
    #[error("the supervisor stopped")]
    Stopped,
    #[error("cannot read the listening sockets: {0}")]
    Scan(#[from] ScanError),
    #[error("cannot read the log of `{service}`: {source}")]
    Log {
        service: String,
        source: std::io::Error,
    },
}

/// The listening sockets of this node, annotated with the service leasing each port.
#[derive(Clone, Debug)]
pub struct ListeningReport {
    pub scan: ListeningScan,
    /// `(port, proto)` → service holding a live lease on it.
    pub leased_to: BTreeMap<(u16, Proto), String>,
}

enum SupervisorCommand {
    Statuses {
        reply: oneshot::Sender<Vec<ServiceStatus>>,
    },
    Leases {
        reply: oneshot::Sender<Vec<Lease>>,
    },
}

/// What the API checks at add time for a service placed on this node: the same rules the
/// supervisor enforces when it reads the document.
#[derive(Clone, Debug)]
pub struct LocalRules {
    pub accept_services: AcceptServices,
    pub max_services: usize,
    pub pools: PoolSet,
}

impl LocalRules {
    /// Why this node would refuse `spec` (added through its own API), if it would: the
    /// policy, the account, the port pools. `max_services` is checked by the caller, who
    /// knows the whole set.
    pub fn refusal(&self, spec: &ServiceSpec) -> Option<String> {
        // Through its own API a service is "own": only `none` refuses it.
        let own = "this node";
        accept::policy_refusal(self.accept_services, Some(own), own, own)
            .or_else(|| {
                super::account::resolve(spec.user.as_deref(), spec.group.as_deref())
                    .err()
                    .map(|e| e.to_string())
            })
            .or_else(|| {
                spec.ports.iter().find_map(|port| match &port.source {
                    PortSource::Auto { pool } if self.pools.ranges(pool).is_err() => Some(format!(
                        "port pool `{pool}` does not exist on this node (pools: {})",
                        self.pools.names().collect::<Vec<_>>().join(", ")
                    )),
                    _ => None,
                })
            })
    }
}

/// A cloneable handle to the supervisor actor.
#[derive(Clone)]
pub struct SupervisorHandle {
    rules: Arc<LocalRules>,
    commands: mpsc::Sender<SupervisorCommand>,
    audit: Arc<Mutex<AuditRing>>,
    audit_seq: watch::Receiver<u64>,
    log_dir: PathBuf,
}

impl SupervisorHandle {
    /// The rules this node applies to services placed on it.
    pub fn rules(&self) -> &LocalRules {
        &self.rules
    }

    /// The local services' states, in start order.
    pub async fn statuses(&self) -> Result<Vec<ServiceStatus>, SupervisorHandleError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(SupervisorCommand::Statuses { reply })
            .await
            .map_err(|_| SupervisorHandleError::Stopped)?;
        rx.await.map_err(|_| SupervisorHandleError::Stopped)
    }

    /// This node's port leases, as the allocator holds them.
    pub async fn leases(&self) -> Result<Vec<Lease>, SupervisorHandleError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(SupervisorCommand::Leases { reply })
            .await
            .map_err(|_| SupervisorHandleError::Stopped)?;
        rx.await.map_err(|_| SupervisorHandleError::Stopped)
    }

    /// A page of the audit trail: with `after`, the events following it (oldest first, at
    /// most `limit`); without, the newest `limit`. With `wait`, waits up to that long for an
    /// event past `after` when there is none yet.
    pub async fn events(&self, after: Option<u64>, limit: usize, wait: Duration) -> AuditPage {
        if let Some(after) = after {
            let mut seq = self.audit_seq.clone();
            let _ = tokio::time::timeout(wait, seq.wait_for(|last| *last > after)).await;
        }
        self.audit
            .lock()
            .expect("the audit lock is never poisoned")
            .page(after, limit)
    }

    /// Log lines of a local service: the last `n`, or with `offset` (from an earlier answer)
    /// the lines written since, at most `n`. Returns the lines and the offset to follow from.
    pub async fn logs(
        &self,
        service: &str,
        n: usize,
        offset: Option<u64>,
    ) -> Result<(Vec<String>, u64), SupervisorHandleError> {
        let dir = self.log_dir.clone();
        let name = service.to_string();
        let result = tokio::task::spawn_blocking(move || match offset {
            Some(offset) => launcher::read_log_since(&dir, &name, offset, n),
            None => {
                // The length first: a line written between the two reads is shown again by
                // the next follow request rather than lost.
                let len = launcher::log_len(&dir, &name);
                launcher::tail_log(&dir, &name, n).map(|lines| (lines, len))
            }
        })
        .await
        .map_err(|_| SupervisorHandleError::Stopped)?;
        result.map_err(|source| SupervisorHandleError::Log {
            service: service.to_string(),
            source,
        })
    }

    /// Every listening socket on this machine with its process, and which service leases it.
    pub async fn listening(&self) -> Result<ListeningReport, SupervisorHandleError> {
        let scan = tokio::task::spawn_blocking(scan::scan_listening)
            .await
            .map_err(|_| SupervisorHandleError::Stopped)??;
        let leased_to = self
            .leases()
            .await?
            .into_iter()
            .filter(|lease| lease.state != LeaseState::Released)
            .map(|lease| ((lease.port, lease.proto), lease.service))
            .collect();
        Ok(ListeningReport { scan, leased_to })
    }
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
    },
}

/// Starts the supervisor actor. It ends after `shutdown` is cancelled and its services are
/// stopped (or left running, per [`SupervisorConfig::shutdown_mode`]).
pub fn spawn_supervisor(
    config: SupervisorConfig,
    state: StateHandle,
    shutdown: CancellationToken,
) -> (SupervisorHandle, JoinHandle<()>) {
    let (commands_tx, commands) = mpsc::channel(COMMAND_CHANNEL);
    let (reports_tx, reports) = mpsc::channel(REPORT_CHANNEL);
    let (seq_tx, seq_rx) = watch::channel(0);
    let audit = Arc::new(Mutex::new(AuditRing {
        capacity: config.event_capacity,
        events: VecDeque::new(),
        last_seq: 0,
        dropped: 0,
    }));
    let now = Instant::now();
    let handle = SupervisorHandle {
        rules: Arc::new(LocalRules {
            accept_services: config.accept_services,
            max_services: config.max_services,
            pools: config.pools.clone(),
        }),
        commands: commands_tx,
        audit: audit.clone(),
        audit_seq: seq_rx,
        log_dir: config.log_dir.clone(),
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
        desired: BTreeMap::new(),
        handled_requests: BTreeMap::new(),
        remote_sent: BTreeMap::new(),
        bad_specs: BTreeMap::new(),
        sync_failing: Default::default(),
        instances_written: BTreeSet::new(),
        run_records: BTreeMap::new(),
        run_file: None,
        run_writer: None,
        cgroups: None,
        refused: BTreeMap::new(),
        started_at_ms: now_ms(),
        state,
        commands,
        reports,
        reports_tx,
        audit,
        seq_tx,
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
    /// Desired state applied per local service (`running` / `stopped`).
    desired: BTreeMap<String, String>,
    /// Operator request time handled per service.
    handled_requests: BTreeMap<String, i64>,
    /// Remote dependency states last given to the core.
    remote_sent: BTreeMap<String, ServiceState>,
    /// Specs that did not parse, by service, with the `updated_at_ms` reported (once each).
    bad_specs: BTreeMap<String, i64>,
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
    started_at_ms: i64,
    state: StateHandle,
    commands: mpsc::Receiver<SupervisorCommand>,
    reports: mpsc::Receiver<Report>,
    reports_tx: mpsc::Sender<Report>,
    audit: Arc<Mutex<AuditRing>>,
    seq_tx: watch::Sender<u64>,
    shutdown: CancellationToken,
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
fn port_request(spec: &ServiceSpec, port: &super::PortSpec) -> PortRequest {
    PortRequest {
        service: spec.name.clone(),
        port_name: port.name.clone(),
        proto: port.proto,
        source: port.source.clone(),
    }
}

/// The instance key of `service` on `node_id`.
pub fn instance_key(service: &str, node_id: &str) -> String {
    format!("{service}@{node_id}")
}

/// The lease key of a port on `node_id`.
pub fn lease_key(node_id: &str, proto: Proto, port: u16) -> String {
    format!("{node_id}/{proto}/{port}")
}

/// Whether a service record's placement names this node (by name or id).
pub fn placed_on(spec: &ServiceSpec, updated_by: &str, node_id: &str, node_name: &str) -> bool {
    match spec.node.as_deref() {
        Some(node) => node == node_name || node == node_id,
        None => updated_by == node_id,
    }
}

impl SupervisorActor {
    async fn run(mut self) {
        self.open_cgroups().await;
        self.open_run_file().await;
        let mut doc = self.state.subscribe();
        self.wait_for_first_sync(&mut doc).await;
        let mut lease_check = tokio::time::interval(LEASE_CHECK_INTERVAL);
        lease_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Requests made before this start are history, not orders.
        {
            let snap = doc.borrow_and_update().clone();
            for (name, record) in &snap.state.services {
                if let Some(at) = record.request_at_ms {
                    self.handled_requests.insert(name.clone(), at);
                }
            }
            self.adopt_leases(&snap.state);
            self.on_document(&snap).await;
        }
        loop {
            let deadline = self.core.next_deadline().map(Instant::from_std);
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
                Some(command) = self.commands.recv() => self.on_command(command),
                _ = lease_check.tick() => self.check_leases().await,
            }
        }
        self.stop_all().await;
    }

    /// Finds this node's service cgroups (when configured and possible).
    async fn open_cgroups(&mut self) {
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

    /// Before anything starts, stops what an earlier agent run left behind: everything in
    /// this node's service cgroups, and (without cgroups, or for processes outside them) the
    /// process groups of the run file's records, whether or not their leader is still alive.
    /// This holds for a run that stopped with `--leave-services-running` too: services are
    /// never adopted, so exactly one copy runs, the one this run starts. Then starts the run
    /// file's writer task, its only writer.
    async fn open_run_file(&mut self) {
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
            return;
        };
        let (tx, mut rx) = watch::channel(RunState::default());
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
    }

    /// At start, when the persisted document knows other nodes: waits (bounded by
    /// [`SupervisorConfig::startup_sync_wait`]) until it is in sync with one peer, so a
    /// service removed or stopped while this node was down does not run again meanwhile.
    /// Gives up, logs and records an event, then starts from the persisted state.
    async fn wait_for_first_sync(&mut self, doc: &mut watch::Receiver<Arc<StateSnapshot>>) {
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
    fn update_run_file(&self) {
        if let Some(tx) = &self.run_file {
            tx.send_replace(RunState {
                left_running: false,
                processes: self.run_records.values().cloned().collect(),
            });
        }
    }

    /// Stops every service on shutdown (reverse dependency order, by the core), waiting for
    /// their exits, then publishes their final state.
    async fn stop_all(&mut self) {
        let mode = self.config.shutdown_mode;
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
    async fn final_run_file(&mut self, left_running: bool) {
        let Some(tx) = self.run_file.take() else {
            return;
        };
        tx.send_replace(RunState {
            left_running,
            processes: self.run_records.values().cloned().collect(),
        });
        drop(tx);
        if let Some(writer) = self.run_writer.take()
            && writer.await.is_err()
        {
            tracing::warn!("the run file writer failed");
        }
    }

    fn on_command(&mut self, command: SupervisorCommand) {
        match command {
            SupervisorCommand::Statuses { reply } => {
                let _ = reply.send(self.core.statuses());
            }
            SupervisorCommand::Leases { reply } => {
                let _ = reply.send(self.leases.clone());
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
            } => {
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

    /// Allocates (or takes back) a lease for every port of `spec`. Returns the ports in spec
    /// order and the `PORT*` environment, or why not (a fixed port held by someone else).
    async fn lease_ports(
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
    fn rebindable_leases(&self, spec: &ServiceSpec) -> Option<Vec<u16>> {
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
            let outcome = probe.await;
            let _ = reports
                .send(Report::Health {
                    service,
                    pid,
                    outcome,
                })
                .await;
        });
    }

    /// Writes changed service states as `instances` entries (one change for all of them).
    async fn publish(&mut self, statuses: Vec<ServiceStatus>) {
        let now_instant = Instant::now().into_std();
        let now = now_ms();
        let mut writes = Vec::new();
        let mut released = false;
        for status in statuses {
            let key = instance_key(&status.service, &self.config.node_id);
            let placed_here = self.core.spec(&status.service).is_some();
            if !placed_here && status.pid.is_none() {
                // Removed (or moved away) and its process is gone: the entry goes, unless it
                // now says why this node refuses the service.
                self.instances_written.remove(&key);
                if !self.refused.contains_key(&status.service) {
                    writes.push(EntryWrite::Instance { key, record: None });
                }
            } else if !placed_here && self.refused.contains_key(&status.service) {
                // Still stopping: the `refused` entry stays until the process is gone.
            } else {
                let ago = now_instant.saturating_duration_since(status.since);
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
                self.instances_written.insert(key.clone());
                writes.push(EntryWrite::Instance {
                    key,
                    record: Some(InstanceRecord {
                        service: status.service.clone(),
                        node: self.config.node_id.clone(),
                        state: status.state.to_string(),
                        since_ms: now - ago.as_millis() as i64,
                        pid: status.pid.map(i64::from),
                        restarts: u64::from(status.restarts),
                        ports,
                        last_exit: status.last_exit.map(|e| e.to_string()),
                        reason: Some(status.reason.clone()),
                        log_tail,
                        health_check,
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

    /// Releases the live leases of `service` that `which` selects, auditing each as `kind`
    /// with `why`. Returns whether any was released (the caller publishes).
    fn release_leases(
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
    async fn publish_leases(&mut self) {
        let mut current = BTreeMap::new();
        for lease in &self.leases {
            let key = lease_key(&self.config.node_id, lease.proto, lease.port);
            current.insert(
                key,
                LeaseRecord {
                    node: self.config.node_id.clone(),
                    port: u64::from(lease.port),
                    proto: lease.proto.to_string(),
                    owner: lease.service.clone(),
                    state: lease.state.to_string(),
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
    fn adopt_leases(&mut self, state: &MeshState) {
        for record in state
            .leases
            .values()
            .filter(|r| r.node == self.config.node_id)
        {
            let (Ok(port), Ok(proto)) = (u16::try_from(record.port), record.proto.parse()) else {
                continue;
            };
            let lease_state = match record.state.as_str() {
                "allocated" => LeaseState::Allocated,
                "in-use" => LeaseState::InUse,
                _ => LeaseState::Released,
            };
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
    async fn check_leases(&mut self) {
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
    async fn confirm_health_port_in_use(&mut self, service: &str, pid: u32) {
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

    /// Publishes services this node refuses (state `refused`, with the reason) and records an
    /// audit event per new refusal; withdraws refusals that no longer hold.
    async fn publish_refusals(&mut self, refused: BTreeMap<String, String>) {
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
                    node: self.config.node_id.clone(),
                    state: REFUSED_STATE.to_string(),
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
    fn note_sync_health(&mut self, snap: &StateSnapshot) {
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

    async fn on_document(&mut self, snap: &StateSnapshot) {
        let state = &snap.state;
        let node_id = self.config.node_id.clone();
        let mut placed = Vec::new();
        let mut desired = BTreeMap::new();
        for (name, record) in &state.services {
            if record.desired == "removed" {
                continue;
            }
            let spec: ServiceSpec = match serde_json::from_str(&record.spec_json) {
                Ok(spec) => spec,
                Err(e) => {
                    if self.bad_specs.insert(name.clone(), record.updated_at_ms)
                        != Some(record.updated_at_ms)
                    {
                        tracing::warn!(service = %name, error = %e, "ignoring a service spec that does not parse");
                        self.record(name, "spec-invalid", format!("spec ignored: {e}"));
                    }
                    continue;
                }
            };
            if spec.name != *name
                || !placed_on(&spec, &record.updated_by, &node_id, &self.config.node_name)
            {
                continue;
            }
            desired.insert(
                name.clone(),
                (record.desired.clone(), record.updated_by.clone()),
            );
            // Documents older than `added_by` name only the last writer.
            let added_by = record.added_by.as_ref().unwrap_or(&record.updated_by);
            placed.push(Placed {
                spec,
                added_by: Some(added_by.clone()),
                added_by_name: state.node_name(added_by),
            });
        }
        let running: BTreeSet<String> = self
            .core
            .statuses()
            .into_iter()
            .filter(|s| s.pid.is_some())
            .map(|s| s.service)
            .collect();
        let screened = accept::screen(
            placed,
            self.config.accept_services,
            &node_id,
            self.config.max_services,
            &running,
            |spec| {
                super::account::resolve(spec.user.as_deref(), spec.group.as_deref())
                    .err()
                    .map(|e| e.to_string())
            },
        );
        let specs = screened.accepted;
        desired.retain(|name, _| !screened.refused.contains_key(name));
        self.publish_refusals(screened.refused).await;
        // Desired `stopped` must be known before the specs are applied, or a service added
        // as stopped would spawn once.
        for (name, (want, by)) in &desired {
            if want == "stopped" && self.desired.get(name).map(String::as_str) != Some("stopped") {
                let who = state.node_name(by);
                self.core
                    .request_stop(name, format!("stopped by request (from {who})"));
            }
        }
        let now = Instant::now().into_std();
        match self.core.apply_specs(now, specs) {
            Ok(actions) => {
                let mut queue = VecDeque::new();
                self.carry_out(actions, &mut queue).await;
                while let Some(event) = queue.pop_front() {
                    self.handle_event(event).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the services placed here do not form a valid set; keeping the previous one");
                self.record(
                    "-",
                    "spec-invalid",
                    format!("services placed here refused: {e}"),
                );
                return;
            }
        }
        for (name, (want, by)) in &desired {
            let before = self.desired.get(name).map(String::as_str);
            if want == "running" && before == Some("stopped") {
                let who = state.node_name(by);
                self.handle_event(SupervisorEvent::Start {
                    service: name.clone(),
                    reason: format!("started by request (from {who})"),
                })
                .await;
            }
        }
        self.desired = desired
            .iter()
            .map(|(name, (want, _))| (name.clone(), want.clone()))
            .collect();
        // Operator requests, each once.
        for (name, record) in &state.services {
            let (Some(request), Some(at)) = (&record.request, record.request_at_ms) else {
                continue;
            };
            if !self.desired.contains_key(name)
                || at <= self.started_at_ms
                || self.handled_requests.get(name).is_some_and(|h| *h >= at)
            {
                continue;
            }
            self.handled_requests.insert(name.clone(), at);
            let who = state.node_name(&record.updated_by);
            let reason = format!("{request} requested (from {who})");
            let event = match request.as_str() {
                "restart" => SupervisorEvent::Restart {
                    service: name.clone(),
                    reason,
                },
                _ => SupervisorEvent::Start {
                    service: name.clone(),
                    reason,
                },
            };
            self.handle_event(event).await;
        }
        // Dependencies placed on other nodes: their published state.
        let mut remote = Vec::new();
        for status in self.core.statuses() {
            let Some(spec) = self.core.spec(&status.service) else {
                continue;
            };
            for dependency in &spec.after {
                if self.core.spec(dependency).is_some() {
                    continue;
                }
                let published = remote_state(state, dependency);
                if let Some(published) = published
                    && self.remote_sent.get(dependency) != Some(&published)
                {
                    remote.push((dependency.clone(), published));
                }
            }
        }
        for (service, published) in remote {
            self.remote_sent.insert(service.clone(), published);
            self.handle_event(SupervisorEvent::RemoteState {
                service,
                state: published,
            })
            .await;
        }
        // Instances this node published for services no longer placed here and not running.
        let stale: Vec<String> = state
            .instances
            .iter()
            .filter(|(_, i)| {
                i.node == node_id
                    && self.core.status(&i.service).is_none()
                    && !self.refused.contains_key(&i.service)
            })
            .map(|(key, _)| key.clone())
            .collect();
        if !stale.is_empty() {
            let writes = stale
                .into_iter()
                .map(|key| {
                    self.instances_written.remove(&key);
                    EntryWrite::Instance { key, record: None }
                })
                .collect();
            if let Err(e) = self.state.write_detached(writes).await {
                tracing::warn!(error = %e, "cannot remove stale instances");
            }
        }
    }
}

/// The published state of `service` on the node it is placed on, if any.
fn remote_state(state: &MeshState, service: &str) -> Option<ServiceState> {
    let record = state.services.get(service)?;
    if record.desired == "removed" {
        return None;
    }
    let spec: ServiceSpec = serde_json::from_str(&record.spec_json).ok()?;
    let placed = spec.node.as_deref().unwrap_or(&record.updated_by);
    state.nodes_named(placed).into_iter().find_map(|id| {
        let instance = state.instances.get(&instance_key(service, id))?;
        serde_json::from_value(serde_json::Value::String(instance.state.clone())).ok()
    })
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

    #[test]
    fn placement_defaults_to_the_node_that_added_the_service() {
        let mut spec = ServiceSpec::new("web", "true");
        assert!(placed_on(&spec, "id-a", "id-a", "a"));
        assert!(!placed_on(&spec, "id-b", "id-a", "a"));
        spec.node = Some("a".into());
        assert!(placed_on(&spec, "id-b", "id-a", "a"));
        spec.node = Some("id-a".into());
        assert!(placed_on(&spec, "id-b", "id-a", "a"));
        spec.node = Some("b".into());
        assert!(!placed_on(&spec, "id-a", "id-a", "a"));
    }

    #[test]
    fn a_zombie_or_missing_pid_is_not_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX - 1));
    }
}
