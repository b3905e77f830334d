//! The vocabulary of the supervisor core: what a service machine and the supervisor take in
//! ([`MachineEvent`], [`Directive`], [`ExitStatus`], [`HealthOutcome`]) and give out
//! ([`SupervisorAction`], [`AuditEvent`], [`ServiceStatus`], [`ServiceState`]). Data only; the
//! decisions are in [`super`] and [`crate::supervisor`].

use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::state::InstanceState;

/// A service's state as published mesh-wide (`mesh services`, STATE column).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    /// No process, and none coming until something changes (not wanted, waiting for a
    /// dependency, or exited cleanly without a restart policy asking for more).
    Stopped,
    /// Process running, no health check passed yet.
    Starting,
    /// Process running, last health check passed (or no health check configured).
    Healthy,
    /// Process running, `failures_before_unhealthy` consecutive checks failed.
    Unhealthy,
    /// SIGTERM sent; waiting for the exit (SIGKILL after `stop_grace`).
    Stopping,
    /// No process; restarting after a delay.
    Backoff,
    /// Gave up after `failed_after` consecutive failures (or a failure under policy `never`);
    /// retried every `cap` if `keep_retrying_when_failed`.
    Failed,
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceState::Stopped => "stopped",
            ServiceState::Starting => "starting",
            ServiceState::Healthy => "healthy",
            ServiceState::Unhealthy => "unhealthy",
            ServiceState::Stopping => "stopping",
            ServiceState::Backoff => "backoff",
            ServiceState::Failed => "failed",
        })
    }
}

impl From<ServiceState> for InstanceState {
    fn from(state: ServiceState) -> Self {
        match state {
            ServiceState::Stopped => InstanceState::Stopped,
            ServiceState::Starting => InstanceState::Starting,
            ServiceState::Healthy => InstanceState::Healthy,
            ServiceState::Unhealthy => InstanceState::Unhealthy,
            ServiceState::Stopping => InstanceState::Stopping,
            ServiceState::Backoff => InstanceState::Backoff,
            ServiceState::Failed => InstanceState::Failed,
        }
    }
}

impl ServiceState {
    /// The supervisor state a published instance state stands for (`refused`: none).
    pub fn published(state: InstanceState) -> Option<Self> {
        Some(match state {
            InstanceState::Stopped => ServiceState::Stopped,
            InstanceState::Starting => ServiceState::Starting,
            InstanceState::Healthy => ServiceState::Healthy,
            InstanceState::Unhealthy => ServiceState::Unhealthy,
            InstanceState::Stopping => ServiceState::Stopping,
            InstanceState::Backoff => ServiceState::Backoff,
            InstanceState::Failed => ServiceState::Failed,
            InstanceState::Refused => return None,
        })
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitStatus {
    /// Exited with this status code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitStatus {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit status {code}"),
            ExitStatus::Signal(signal) => {
                let name = match signal {
                    1 => " (SIGHUP)",
                    2 => " (SIGINT)",
                    6 => " (SIGABRT)",
                    9 => " (SIGKILL)",
                    11 => " (SIGSEGV)",
                    15 => " (SIGTERM)",
                    _ => "",
                };
                write!(f, "signal {signal}{name}")
            }
        }
    }
}

/// Result of one health check, as the prober reports it (a check that overran its timeout is
/// `Failed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthOutcome {
    Passed,
    Failed { detail: String },
}

/// Signals the supervisor sends, always to the service's process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopSignal {
    Term,
    Kill,
}

/// Why a service is told to stop; picks the audit kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopCause {
    /// An operator (`mesh service stop`) or the desired state.
    Requested,
    /// A dependency is unavailable.
    Dependency,
    /// The agent is shutting down.
    Shutdown,
    /// The service was removed from the desired state.
    Removed,
}

/// What the supervisor wants of a service right now, from the desired state and the
/// dependencies. Re-sent after every event; a machine acts on it only when something changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Directive {
    /// Wanted and every dependency is healthy: start it (or restart when the backoff is over).
    Run { reason: String },
    /// Do not start anything new, but leave a running process alone (a dependency is starting
    /// or restarting; or dependents must stop first).
    Hold { reason: String },
    /// Stop it (and cancel pending restarts).
    Stop { reason: String, cause: StopCause },
}

/// Inputs of a [`ServiceMachine`](super::ServiceMachine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineEvent {
    Directive(Directive),
    /// Operator start: forget failures; leave `failed`/finished so the next `Run` spawns.
    StartRequested {
        reason: String,
    },
    /// Operator restart: forget failures; stop the process if any, then spawn at once.
    RestartRequested {
        reason: String,
    },
    /// The process of the last `Spawn` runs, as the leader of its own process group.
    Spawned {
        pid: u32,
    },
    /// The last `Spawn` could not start a process (command not found, bad working dir, ...).
    SpawnFailed {
        error: String,
    },
    Exited {
        pid: u32,
        status: ExitStatus,
    },
    /// Result of the `RunHealthCheck` for this pid.
    HealthChecked {
        pid: u32,
        outcome: HealthOutcome,
    },
    /// A scheduled time has come (any of them: the machine checks its own deadlines).
    TimerFired,
}

/// Outputs of the supervisor core, in the order they must be carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisorAction {
    /// Start the service's process in its own process group, with its ports (leases) and
    /// `$PORT` expansion; answer with `Spawned` or `SpawnFailed`.
    Spawn { service: String },
    /// Send `signal` to the process group led by `pid`.
    Signal {
        service: String,
        pid: u32,
        signal: StopSignal,
    },
    /// Run the service's health check once (bounded by its timeout); answer with
    /// `HealthChecked`.
    RunHealthCheck { service: String, pid: u32 },
    /// Deliver `TimerFired` at (or after) `at`. Timers that fire late or needlessly are
    /// harmless; [`crate::supervisor::Supervisor::next_deadline`] gives the earliest one still needed.
    ScheduleTimer { service: String, at: Instant },
    /// Append to the audit trail (`mesh events`).
    Audit(AuditEvent),
    /// The service's published state changed: write it to the replicated document.
    Publish(ServiceStatus),
}

/// What kind of decision or observation an audit event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditKind {
    /// Spawning, for a first start (after a stop, or once dependencies are healthy).
    Start,
    /// Spawning again: after a backoff, a failed-state retry, or an operator restart.
    Restart,
    Spawned,
    SpawnFailed,
    Healthy,
    /// First counted failed check (more follow until the threshold).
    HealthCheckFailing,
    Unhealthy,
    Exited,
    /// A restart is scheduled after a delay.
    Backoff,
    /// The failure count started over after a long healthy stretch.
    BackoffReset,
    /// `failed_after` consecutive failures (or a failure under policy `never`).
    GiveUp,
    /// Waiting to start (a dependency is not healthy yet, or dependents must stop first).
    Waiting,
    /// Stopping (SIGTERM) on request, on shutdown, or on removal.
    Stop,
    /// Stopping (SIGTERM) because a dependency is unavailable.
    DependencyStopped,
    /// SIGKILL after the stop grace.
    Kill,
    /// The process ended after a stop.
    Stopped,
    /// The process ended and the policy does not restart it.
    Finished,
    /// Left running on agent shutdown.
    LeftRunning,
    /// The spec changed or the service was removed.
    SpecChanged,
}

/// One entry of the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub at: Instant,
    pub service: String,
    pub kind: AuditKind,
    pub reason: String,
}

/// A service's state and counters, as published on each transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStatus {
    pub service: String,
    pub state: ServiceState,
    /// When `state` was entered.
    pub since: Instant,
    /// The process group leader, while a process runs.
    pub pid: Option<u32>,
    /// Spawns after the first: after backoff, failed-state retries, and operator restarts.
    pub restarts: u32,
    pub consecutive_failures: u32,
    /// How the last process ended.
    pub last_exit: Option<ExitStatus>,
    /// Why the service entered `state`.
    pub reason: String,
    /// When the next restart attempt is due (`backoff`, or `failed` while retrying).
    pub next_attempt: Option<Instant>,
}
