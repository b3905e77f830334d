//! Supervisor: keeps this node's services alive, in dependency order.
//!
//! Owns the decision logic of local supervision: the [`Supervisor`] holds the dependency
//! graph ([`graph`]) and one state machine per service ([`machine`]), and turns the desired
//! state and the dependencies into a [`Directive`] per service after every event:
//!
//! - a service starts once it is wanted and every dependency is `healthy`;
//! - while a dependency restarts (`backoff`, `starting` again, a restart-stop, `unhealthy`),
//!   running dependents ride through: nothing new starts, nothing is stopped;
//! - when a dependency is unavailable (`failed`, stopped, exited), its dependents are stopped,
//!   dependents of dependents first, with the reason ("dependency db failed"), and they start
//!   again once it is `healthy`;
//! - a service being stopped waits until its running dependents have exited, so stops (and
//!   agent shutdown) go in reverse dependency order; shutdown may also leave services running.
//!
//! Inputs: [`SupervisorEvent`]s with `now` (operator start/stop/restart, process and health
//! reports, timers, states of dependencies on other nodes, shutdown), spec updates
//! ([`Supervisor::apply_specs`]) and new versions of the document
//! ([`Supervisor::follow_document`], which turns them into the former two). Outputs: [`SupervisorAction`]s to carry out in order (spawn,
//! signal, health check, timer, audit, publish). It does no I/O and reads no clock; the
//! launcher, prober, port leases and the replicated document are wired around it.
//!
//! Modules: [`spec`] (service specs, TOML and CLI forms, validation and bounds, `$PORT`
//! expansion), [`graph`] (start/stop order, cycles), [`backoff`] (restart delays), [`machine`]
//! (one service's lifecycle), [`desired`] (following the document: placement, desired
//! states, operator requests once each by their generation, remote dependency states; pure),
//! [`accept`] (which placed services this node agrees to run: `--accept-services`, accounts,
//! `max_services`; pure), and the I/O edges: [`launcher`]
//! (spawning in a process group and cgroup, as the spec's account, with log capture and
//! rotation, group signals, health probes), [`account`] (user and group lookup), [`cgroup`]
//! (one cgroup v2 per service), [`runfile`] (what a crashed run left); [`actor`] runs it all and
//! [`query`] answers `/mesh/query/1` from it. Spec:
//! `protocol/service-spec.md`.
//!
//! The launcher seam: the [`actor`] reaches the operating system's processes only through a
//! [`launcher::Launcher`] (spawn with spec, `PORT*` env, account and cgroup, answering a pid
//! and a future of the exit; signal a process group and its cgroup; run one health probe),
//! given in [`actor::SupervisorConfig::launcher`]. The agent passes
//! [`launcher::ProcessLauncher`]; in-process tests pass a [`launcher::fake::FakeLauncher`]
//! (processes that listen on their ports in memory, end on a signal, crash on request), so a
//! mesh of nodes with services runs in one test process, in paused time. Leftovers of an
//! earlier agent run (run file, cgroups) and the port scans stay with the actor and
//! [`crate::ports`].

pub mod accept;
pub mod account;
pub mod actor;
pub mod backoff;
pub mod cgroup;
pub mod desired;
pub mod graph;
pub mod launcher;
pub mod machine;
pub mod query;
pub mod runfile;
pub mod spec;

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::state::{Desired, ServiceRecord};
use accept::AcceptServices;

pub use backoff::{Backoff, BackoffConfig};
pub use graph::DependencyGraph;
pub use machine::{
    AuditEvent, AuditKind, Directive, ExitStatus, HealthOutcome, MachineEvent, ServiceMachine,
    ServiceState, ServiceStatus, StopCause, StopSignal, SupervisorAction,
};
pub use spec::{
    CliServiceParts, DependencyRestart, HealthCheck, HealthSpec, PortSpec, RestartPolicy,
    RestartSpec, ServiceFile, ServiceSpec, SpecError, expand_args, parse_service_file,
    validate_set,
};

/// What to do with running services when the agent shuts down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShutdownMode {
    /// Stop every service in reverse dependency order (SIGTERM, grace, SIGKILL).
    StopServices,
    /// Leave them running in their own process groups. This core does not adopt processes
    /// on the next agent start: the actor stops them there (their cgroups and the run file's
    /// process groups) before starting its own copies.
    LeaveRunning,
}

/// Inputs of the [`Supervisor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// Operator or desired state: the service should run. Clears `failed`.
    Start {
        service: String,
        reason: String,
    },
    /// Operator or desired state: the service should not run.
    Stop {
        service: String,
        reason: String,
    },
    /// Operator: stop and start again at once, forgetting past failures.
    Restart {
        service: String,
        reason: String,
    },
    Spawned {
        service: String,
        pid: u32,
    },
    SpawnFailed {
        service: String,
        error: String,
    },
    Exited {
        service: String,
        pid: u32,
        status: ExitStatus,
    },
    HealthChecked {
        service: String,
        pid: u32,
        outcome: HealthOutcome,
    },
    /// The published state of a dependency placed on another node (from the document).
    RemoteState {
        service: String,
        state: ServiceState,
    },
    /// A scheduled time has come.
    TimerFired,
    Shutdown {
        mode: ShutdownMode,
    },
}

/// Errors of the supervisor core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisorError {
    #[error("no service `{service}` on this node")]
    UnknownService { service: String },
    #[error("the agent is shutting down; `{service}` cannot be started")]
    ShuttingDown { service: String },
    #[error(transparent)]
    Spec(#[from] SpecError),
}

/// Whether dependents can count on a dependency in `state` on another node: the same rule as
/// for local ones, judged from the published state alone (a remote `stopping` is assumed to
/// be a restart).
fn remote_unavailability(state: Option<ServiceState>) -> Option<String> {
    match state {
        None => Some("has no known state (on another node)".to_string()),
        Some(
            ServiceState::Starting
            | ServiceState::Healthy
            | ServiceState::Unhealthy
            | ServiceState::Backoff
            | ServiceState::Stopping,
        ) => None,
        Some(state) => Some(format!("is {state} (on another node)")),
    }
}

/// The supervisor core of one node.
#[derive(Debug)]
pub struct Supervisor {
    graph: DependencyGraph,
    specs: BTreeMap<String, ServiceSpec>,
    machines: BTreeMap<String, ServiceMachine>,
    /// Desired state per service: `Some(reason)` if stopped by request.
    stopped_by_request: BTreeMap<String, String>,
    /// Published states of dependencies on other nodes.
    remote: BTreeMap<String, ServiceState>,
    /// Removed services still stopping; dropped once their process is gone.
    draining: BTreeMap<String, ServiceMachine>,
    shutdown: Option<ShutdownMode>,
    seed: u64,
    /// What following the document has already acted on ([`desired`]).
    document: DocumentMemory,
}

/// FNV-1a: a stable per-service seed from the supervisor's seed (std's hasher is randomised).
fn service_seed(seed: u64, name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    seed ^ hash
}

impl Supervisor {
    /// A supervisor for the services placed on this node, all wanted running. Dependencies
    /// not among `specs` are on other nodes: their state comes in as
    /// [`SupervisorEvent::RemoteState`]. `seed` makes backoff jitter reproducible. Nothing
    /// starts until the first [`Supervisor::reconcile`] (or any event).
    pub fn new(specs: Vec<ServiceSpec>, seed: u64, now: Instant) -> Result<Self, SpecError> {
        let graph = Self::local_graph(&specs)?;
        let machines = specs
            .iter()
            .map(|spec| {
                (
                    spec.name.clone(),
                    ServiceMachine::new(spec, service_seed(seed, &spec.name), now),
                )
            })
            .collect();
        Ok(Self {
            graph,
            specs: specs
                .into_iter()
                .map(|spec| (spec.name.clone(), spec))
                .collect(),
            machines,
            stopped_by_request: BTreeMap::new(),
            remote: BTreeMap::new(),
            draining: BTreeMap::new(),
            shutdown: None,
            seed,
            document: DocumentMemory::default(),
        })
    }

    fn local_graph(specs: &[ServiceSpec]) -> Result<DependencyGraph, SpecError> {
        for spec in specs {
            spec.validate()?;
        }
        DependencyGraph::with_external(
            specs
                .iter()
                .map(|spec| (spec.name.clone(), spec.after.clone())),
        )
    }

    pub fn graph(&self) -> &DependencyGraph {
        &self.graph
    }

    pub fn spec(&self, service: &str) -> Option<&ServiceSpec> {
        self.specs.get(service)
    }

    pub fn status(&self, service: &str) -> Option<ServiceStatus> {
        self.machines
            .get(service)
            .or_else(|| self.draining.get(service))
            .map(ServiceMachine::status)
    }

    /// Every local service's status, in start order.
    pub fn statuses(&self) -> Vec<ServiceStatus> {
        self.graph
            .start_order()
            .iter()
            .filter_map(|name| self.status(name))
            .collect()
    }

    /// The earliest time a [`SupervisorEvent::TimerFired`] is needed.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.shutdown == Some(ShutdownMode::LeaveRunning) {
            return None;
        }
        self.machines
            .values()
            .chain(self.draining.values())
            .filter_map(ServiceMachine::next_deadline)
            .min()
    }

    /// After a [`ShutdownMode::StopServices`] shutdown: whether every process has exited.
    pub fn is_shut_down(&self) -> bool {
        match self.shutdown {
            None => false,
            Some(ShutdownMode::LeaveRunning) => true,
            Some(ShutdownMode::StopServices) => self
                .machines
                .values()
                .chain(self.draining.values())
                .all(|machine| !machine.has_process()),
        }
    }

    /// Records that `service` should not run (desired state `stopped`), whether or not it is
    /// among the services yet; it takes effect at the next reconcile (any event, or
    /// [`Supervisor::apply_specs`]), so a service added as stopped never spawns.
    pub fn request_stop(&mut self, service: &str, reason: String) {
        self.stopped_by_request.insert(service.to_string(), reason);
    }

    /// Handles one event at `now` and returns what to do.
    pub fn on_event(
        &mut self,
        now: Instant,
        event: SupervisorEvent,
    ) -> Result<Vec<SupervisorAction>, SupervisorError> {
        let mut out = Vec::new();
        if self.shutdown == Some(ShutdownMode::LeaveRunning) {
            return Ok(out);
        }
        match event {
            SupervisorEvent::Start { service, reason } => {
                let event = MachineEvent::StartRequested { reason };
                self.operator_request(now, service, event, &mut out)?;
            }
            SupervisorEvent::Stop { service, reason } => {
                self.machine_mut(&service)?;
                self.stopped_by_request.insert(service, reason);
            }
            SupervisorEvent::Restart { service, reason } => {
                let event = MachineEvent::RestartRequested { reason };
                self.operator_request(now, service, event, &mut out)?;
            }
            SupervisorEvent::Spawned { service, pid } => {
                self.deliver(now, &service, MachineEvent::Spawned { pid }, &mut out)?;
            }
            SupervisorEvent::SpawnFailed { service, error } => {
                self.deliver(now, &service, MachineEvent::SpawnFailed { error }, &mut out)?;
            }
            SupervisorEvent::Exited {
                service,
                pid,
                status,
            } => {
                self.deliver(
                    now,
                    &service,
                    MachineEvent::Exited { pid, status },
                    &mut out,
                )?;
            }
            SupervisorEvent::HealthChecked {
                service,
                pid,
                outcome,
            } => {
                self.deliver(
                    now,
                    &service,
                    MachineEvent::HealthChecked { pid, outcome },
                    &mut out,
                )?;
            }
            SupervisorEvent::RemoteState { service, state } => {
                self.remote.insert(service, state);
            }
            SupervisorEvent::TimerFired => {
                for machine in self.machines.values_mut().chain(self.draining.values_mut()) {
                    machine.on_event(now, MachineEvent::TimerFired, &mut out);
                }
            }
            SupervisorEvent::Shutdown { mode } => {
                self.shutdown = Some(mode);
                if mode == ShutdownMode::LeaveRunning {
                    for machine in self.machines.values().chain(self.draining.values()) {
                        if let Some(pid) = machine.pid() {
                            machine.audit_external(
                                now,
                                AuditKind::LeftRunning,
                                format!("agent shutting down; pid {pid} left running"),
                                &mut out,
                            );
                        }
                    }
                    return Ok(out);
                }
            }
        }
        self.reconcile_into(now, &mut out);
        Ok(out)
    }

    /// Re-evaluates every service against the desired state and its dependencies. Call once
    /// after [`Supervisor::new`] to start services; every event does it too.
    pub fn reconcile(&mut self, now: Instant) -> Vec<SupervisorAction> {
        let mut out = Vec::new();
        if self.shutdown != Some(ShutdownMode::LeaveRunning) {
            self.reconcile_into(now, &mut out);
        }
        out
    }

    /// Replaces the set of local services (the desired state changed). New services start,
    /// removed ones stop (and are forgotten once their process is gone), running services
    /// whose spec changed restart with the new spec.
    pub fn apply_specs(
        &mut self,
        now: Instant,
        specs: Vec<ServiceSpec>,
    ) -> Result<Vec<SupervisorAction>, SpecError> {
        let graph = Self::local_graph(&specs)?;
        let mut out = Vec::new();
        let incoming: BTreeMap<String, ServiceSpec> = specs
            .into_iter()
            .map(|spec| (spec.name.clone(), spec))
            .collect();
        let removed: Vec<String> = self
            .machines
            .keys()
            .filter(|name| !incoming.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            if let Some(machine) = self.machines.remove(&name) {
                machine.audit_external(
                    now,
                    AuditKind::SpecChanged,
                    "removed from the desired state".to_string(),
                    &mut out,
                );
                self.draining.insert(name.clone(), machine);
            }
            self.stopped_by_request.remove(&name);
        }
        for (name, spec) in &incoming {
            match self.specs.get(name) {
                Some(old) if old == spec => {}
                Some(old) => {
                    let machine = self
                        .machines
                        .get_mut(name)
                        .expect("every kept spec has a machine");
                    machine.update_spec(spec);
                    if machine.has_process() && !old.same_process(spec) {
                        machine.audit_external(
                            now,
                            AuditKind::SpecChanged,
                            "spec changed; restarting with the new spec".to_string(),
                            &mut out,
                        );
                        machine.on_event(
                            now,
                            MachineEvent::RestartRequested {
                                reason: "spec changed".to_string(),
                            },
                            &mut out,
                        );
                    }
                }
                None => {
                    let machine = self.draining.remove(name).map_or_else(
                        || ServiceMachine::new(spec, service_seed(self.seed, name), now),
                        |mut machine| {
                            machine.update_spec(spec);
                            machine
                        },
                    );
                    self.machines.insert(name.clone(), machine);
                }
            }
        }
        self.specs = incoming;
        self.graph = graph;
        if self.shutdown != Some(ShutdownMode::LeaveRunning) {
            self.reconcile_into(now, &mut out);
        }
        Ok(out)
    }

    /// The machine of a service of the graph (graph and machines always hold the same set).
    fn machine(&self, service: &str) -> &ServiceMachine {
        self.machines
            .get(service)
            .expect("the graph and the machines hold the same services")
    }

    /// An operator start or restart: refused while shutting down; clears a requested stop.
    fn operator_request(
        &mut self,
        now: Instant,
        service: String,
        event: MachineEvent,
        out: &mut Vec<SupervisorAction>,
    ) -> Result<(), SupervisorError> {
        if self.shutdown.is_some() {
            return Err(SupervisorError::ShuttingDown { service });
        }
        self.machine_mut(&service)?;
        self.stopped_by_request.remove(&service);
        self.deliver(now, &service, event, out)
    }

    fn machine_mut(&mut self, service: &str) -> Result<&mut ServiceMachine, SupervisorError> {
        self.machines
            .get_mut(service)
            .ok_or_else(|| SupervisorError::UnknownService {
                service: service.to_string(),
            })
    }

    /// Passes a process-level event to the service's machine (or a draining one).
    fn deliver(
        &mut self,
        now: Instant,
        service: &str,
        event: MachineEvent,
        out: &mut Vec<SupervisorAction>,
    ) -> Result<(), SupervisorError> {
        let machine =
            match self.machines.get_mut(service) {
                Some(machine) => machine,
                None => self.draining.get_mut(service).ok_or_else(|| {
                    SupervisorError::UnknownService {
                        service: service.to_string(),
                    }
                })?,
            };
        machine.on_event(now, event, out);
        Ok(())
    }

    /// Sends every machine its directive until nothing more happens. Each pass can only move
    /// decisions one dependency level further, so `services + 2` passes always suffice.
    fn reconcile_into(&mut self, now: Instant, out: &mut Vec<SupervisorAction>) {
        let passes = self.machines.len() + 2;
        for _ in 0..passes {
            let before = out.len();
            for (name, directive) in self.directives() {
                if let Some(machine) = self.machines.get_mut(&name) {
                    machine.on_event(now, MachineEvent::Directive(directive), out);
                }
            }
            for machine in self.draining.values_mut() {
                let directive = Directive::Stop {
                    reason: "removed from the desired state".to_string(),
                    cause: StopCause::Removed,
                };
                machine.on_event(now, MachineEvent::Directive(directive), out);
            }
            self.draining.retain(|_, machine| machine.has_process());
            if out.len() == before {
                return;
            }
        }
        tracing::warn!(passes, "supervisor reconcile did not settle");
    }

    /// The directive of every local service, in start order.
    fn directives(&self) -> Vec<(String, Directive)> {
        // Why each service cannot be counted on by its dependents (`None`: it can).
        let mut unavailable: BTreeMap<&str, Option<String>> = BTreeMap::new();
        for name in self.graph.start_order() {
            let machine = self.machine(name);
            let own = if self.shutdown.is_some() {
                Some("is stopping (agent shutdown)".to_string())
            } else if self.stopped_by_request.contains_key(name) {
                Some("was stopped by request".to_string())
            } else if self.restarts_with_dependency(name, machine, &unavailable) {
                None // restarting with its dependency: its dependents ride through
            } else {
                machine.unavailability().map(String::from)
            };
            let why = own.or_else(|| {
                self.unavailable_dependency(name, &unavailable)
                    .map(|why| format!("is unavailable ({why})"))
            });
            unavailable.insert(name, why);
        }

        let mut directives = Vec::with_capacity(self.graph.len());
        for name in self.graph.start_order() {
            let machine = self.machine(name);
            let mut directive = if self.shutdown.is_some() {
                Directive::Stop {
                    reason: "agent shutting down".to_string(),
                    cause: StopCause::Shutdown,
                }
            } else if let Some(reason) = self.stopped_by_request.get(name) {
                Directive::Stop {
                    reason: reason.clone(),
                    cause: StopCause::Requested,
                }
            } else if let Some(reason) = self.unavailable_dependency(name, &unavailable) {
                Directive::Stop {
                    reason,
                    cause: StopCause::Dependency,
                }
            } else if let Some(reason) = self
                .restarting_dependency(name)
                .filter(|_| machine.has_process())
            {
                // Restarting with its dependency: dependents ride through (no reverse order).
                directives.push((
                    name.clone(),
                    Directive::Stop {
                        reason,
                        cause: StopCause::Dependency,
                    },
                ));
                continue;
            } else if let Some(dependency) = self.unhealthy_dependency(name) {
                Directive::Hold {
                    reason: format!("waiting for dependency {dependency} to be healthy"),
                }
            } else {
                let dependencies: Vec<&str> = self
                    .graph
                    .dependencies(name)
                    .chain(self.graph.external_dependencies(name))
                    .collect();
                Directive::Run {
                    reason: if dependencies.is_empty() {
                        "desired state: running".to_string()
                    } else {
                        format!("dependencies healthy: {}", dependencies.join(", "))
                    },
                }
            };
            // Stop in reverse dependency order: not before running dependents have exited.
            if matches!(directive, Directive::Stop { .. }) && machine.has_process() {
                let live: Vec<&str> = self
                    .graph
                    .dependents(name)
                    .filter(|dependent| self.machine(dependent).has_process())
                    .collect();
                if !live.is_empty() {
                    directive = Directive::Hold {
                        reason: format!(
                            "waiting for dependents to stop first: {}",
                            live.join(", ")
                        ),
                    };
                }
            }
            directives.push((name.clone(), directive));
        }
        directives
    }

    /// The first dependency (local, then remote) that dependents cannot count on, as a stop
    /// reason.
    fn unavailable_dependency(
        &self,
        name: &str,
        unavailable: &BTreeMap<&str, Option<String>>,
    ) -> Option<String> {
        self.graph
            .dependencies(name)
            .find_map(|dependency| {
                unavailable
                    .get(dependency)
                    .and_then(Option::as_ref)
                    .map(|why| format!("dependency {dependency} {why}"))
            })
            .or_else(|| {
                self.graph
                    .external_dependencies(name)
                    .find_map(|dependency| {
                        remote_unavailability(self.remote.get(dependency).copied())
                            .map(|why| format!("dependency {dependency} {why}"))
                    })
            })
    }

    /// For a service with `on_dependency_restart = "restart"`: the first dependency that has
    /// no process right now (crashed and in backoff, being restarted), as a stop reason. While
    /// this holds the service is restarting, not unavailable: its own dependents ride through.
    fn restarting_dependency(&self, name: &str) -> Option<String> {
        let spec = self.specs.get(name)?;
        if spec.on_dependency_restart != DependencyRestart::Restart {
            return None;
        }
        self.graph
            .dependencies(name)
            .find(|dependency| {
                let machine = self.machine(dependency);
                !machine.has_process() && machine.state() == ServiceState::Backoff
                    || machine.state() == ServiceState::Stopping
                        && machine.unavailability().is_none()
            })
            .map(|dependency| {
                format!("dependency {dependency} is restarting (on_dependency_restart = restart)")
            })
            .or_else(|| {
                self.graph
                    .external_dependencies(name)
                    .find_map(|dependency| {
                        matches!(
                            self.remote.get(dependency),
                            Some(ServiceState::Backoff | ServiceState::Stopping)
                        )
                        .then(|| {
                            format!(
                                "dependency {dependency} is restarting (on another node; \
                             on_dependency_restart = restart)"
                            )
                        })
                    })
            })
    }

    /// Whether a `restart`-mode service is down only for a restart with its dependencies (not
    /// failed, not stopped by request, no dependency unavailable): its own dependents ride
    /// through.
    fn restarts_with_dependency(
        &self,
        name: &str,
        machine: &ServiceMachine,
        unavailable: &BTreeMap<&str, Option<String>>,
    ) -> bool {
        let restart_mode = self
            .specs
            .get(name)
            .is_some_and(|spec| spec.on_dependency_restart == DependencyRestart::Restart);
        // Stopped (not failed, not finished) with every dependency available means it starts
        // again as soon as they are healthy: the same reconcile that sees its dependency
        // healthy again gives it `Run`.
        restart_mode
            && matches!(machine.unavailability(), Some("is stopped" | "is stopping"))
            && self.unavailable_dependency(name, unavailable).is_none()
    }

    /// The first dependency (local, then remote) that is not `healthy`.
    fn unhealthy_dependency(&self, name: &str) -> Option<String> {
        self.graph
            .dependencies(name)
            .find(|dependency| self.machine(dependency).state() != ServiceState::Healthy)
            .or_else(|| {
                self.graph
                    .external_dependencies(name)
                    .find(|dependency| self.remote.get(*dependency) != Some(&ServiceState::Healthy))
            })
            .map(String::from)
    }
}

/// The instance record of a service's status, as its node publishes it on a transition:
/// the lifecycle fields only. The caller adds what it alone knows (ports, log tail, health
/// check, claim, anomaly). `now` and `wall_ms` are the same moment on the two clocks.
pub fn instance_record(
    status: &ServiceStatus,
    node: NodeId,
    now: Instant,
    wall_ms: i64,
) -> crate::state::InstanceRecord {
    let ago = now.saturating_duration_since(status.since);
    crate::state::InstanceRecord {
        service: status.service.clone(),
        node,
        state: status.state.into(),
        since_ms: wall_ms - ago.as_millis() as i64,
        pid: status.pid.map(i64::from),
        restarts: u64::from(status.restarts),
        last_exit: status.last_exit.map(|e| e.to_string()),
        reason: Some(status.reason.clone()),
        ..Default::default()
    }
}

/// What identifies one operator request of a service: the generation its writer bumped and
/// the writer's wall-clock time (which alone tells apart the requests of agents older than
/// generations). Only ever compared for equality.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestStamp {
    pub generation: u64,
    pub at_ms: i64,
}

impl RequestStamp {
    /// The stamp of a record's pending request, if it has one.
    pub fn of(record: &ServiceRecord) -> Option<Self> {
        record.request?;
        Some(Self {
            generation: record.request_generation.unwrap_or(0),
            at_ms: record.request_at_ms.unwrap_or(0),
        })
    }
}

/// This node's rules for what is placed on it.
pub struct FollowRules<'a> {
    pub node_id: &'a NodeId,
    /// The services placement gives this node ([`crate::placement::decide_local`]).
    pub runs_here: &'a std::collections::BTreeSet<String>,
    pub accept_services: AcceptServices,
    pub max_services: usize,
    /// Why a spec's account cannot be used on this node, if it cannot.
    pub account_error: &'a (dyn Fn(&ServiceSpec) -> Option<String> + Sync),
}

/// What following one document asks of the actor.
#[derive(Debug, Default, PartialEq)]
pub struct Followed {
    /// To carry out in order.
    pub actions: Vec<SupervisorAction>,
    /// Services placed here that this node refuses, with the reason (all of them, every time).
    pub refused: BTreeMap<String, String>,
    /// Specs found unusable since the last document (each reported once per version).
    pub invalid: Vec<(String, String)>,
    /// The services placed here do not form a valid set: the previous set stays.
    pub rejected: Option<SpecError>,
}

/// The core's memory of the document between changes.
#[derive(Debug, Default)]
pub struct DocumentMemory {
    /// Desired state last applied, per service placed here.
    desired: BTreeMap<String, Desired>,
    /// The last operator request handled, per service.
    handled: BTreeMap<String, RequestStamp>,
    /// Remote dependency states already passed on.
    remote_sent: BTreeMap<String, ServiceState>,
    /// Unusable specs already reported, with the `updated_at_ms` of the version reported.
    invalid: BTreeMap<String, i64>,
}

#[cfg(test)]
mod tests;
