//! The state machine of one service, sans-IO.
//!
//! Owns one service's lifecycle: spawning, health tracking (start grace, failure threshold),
//! the restart policy with backoff, give-up into `failed` (and retrying at the cap), and the
//! graceful stop (SIGTERM, grace period, SIGKILL). It reads no clock and does no I/O:
//!
//! - inputs ([`MachineEvent`]): a [`Directive`] from the [`super::Supervisor`] (run, hold, or
//!   stop, which carries the dependency decisions), operator start/restart, process spawned
//!   (pid) or failed to spawn, process exited (status or signal), health check result, timer
//!   fired; each with `now`;
//! - outputs ([`SupervisorAction`]): spawn, signal the process group, run a health check,
//!   schedule a timer, an [`AuditEvent`] for every decision (with its reason), and a
//!   [`ServiceStatus`] to publish on every state transition, and only then (never per health
//!   check: published states go into the replicated document).
//!
//! It does not own: dependencies (the supervisor turns them into directives), ports, or how
//! processes are spawned and probed (the launcher and prober, at the edges).
//!
//! Files: this one (the machine, its inputs and phases), `events` (the public vocabulary:
//! events, directives, actions, audit events, statuses), `health` (health checks), `restart`
//! (exits, the restart policy, backoff and `failed`).
//!
//! Transitions (published state in brackets; `Spawning` keeps the previous published state
//! until the pid is known, so a start publishes once, with its pid):
//!
//! ```text
//! [stopped] ──Run──▶ spawning ──spawned──▶ [starting] ──check passed──▶ [healthy]
//! [starting]/[healthy] ──failed checks ≥ threshold (after start grace)──▶ [unhealthy]
//! [unhealthy] ──policy always/on-failure──▶ [stopping] ──exited──▶ restart by policy
//! running ──exited──▶ policy: [backoff] ──delay──▶ spawning   (failure n < failed_after)
//!                             [failed] ──cap, if keep retrying──▶ spawning  (n ≥ failed_after)
//!                             [stopped] (clean exit under on-failure/never)
//! any live ──Stop──▶ [stopping] ──exited──▶ [stopped]; SIGKILL if still alive after stop_grace
//! [backoff]/[failed] ──Stop──▶ [stopped]
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use super::backoff::Backoff;
use super::spec::{HealthSpec, RestartPolicy, ServiceSpec};

mod events;
mod health;
mod restart;

pub use events::{
    AuditEvent, AuditKind, Directive, ExitStatus, HealthOutcome, MachineEvent, ServiceState,
    ServiceStatus, StopCause, StopSignal, SupervisorAction,
};

/// A point in time a restart waits for; `Due` once passed while held by a directive, so it
/// no longer counts as a deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    At(Instant),
    Due,
}

impl Wait {
    fn is_due(self, now: Instant) -> bool {
        match self {
            Wait::At(at) => at <= now,
            Wait::Due => true,
        }
    }

    fn deadline(self) -> Option<Instant> {
        match self {
            Wait::At(at) => Some(at),
            Wait::Due => None,
        }
    }

    fn mark_if_due(&mut self, now: Instant) {
        if self.is_due(now) {
            *self = Wait::Due;
        }
    }
}

/// Health of a running process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HealthStatus {
    Starting,
    Healthy,
    Unhealthy,
}

#[derive(Clone, Debug)]
struct HealthTrack {
    status: HealthStatus,
    /// Failed checks before this instant are not counted.
    grace_until: Instant,
    /// Consecutive counted failures.
    failures: u32,
    /// When the next check is due; `None` while one is in flight (or with no health check).
    next_check: Option<Instant>,
    in_flight: bool,
}

/// What follows a stop once the process has exited.
#[derive(Clone, Debug, PartialEq, Eq)]
enum AfterStop {
    /// Stay stopped.
    Idle,
    /// Spawn again at once (operator restart, spec change).
    RestartNow { reason: String },
    /// Count a failure and restart per policy (an unhealthy process).
    RestartByPolicy { cause: String },
}

#[derive(Clone, Debug)]
enum Phase {
    /// No process; spawns on `Run`.
    Idle,
    /// Exited and not restarted by policy; only an operator start or restart leaves it.
    Finished,
    /// `Spawn` sent, waiting for `Spawned` / `SpawnFailed`.
    Spawning,
    Running {
        pid: u32,
        health: HealthTrack,
    },
    Stopping {
        pid: u32,
        then: AfterStop,
        kill_at: Instant,
        killed: bool,
    },
    Backoff {
        wait: Wait,
    },
    Failed {
        retry: Option<Wait>,
    },
}

/// A spawn waiting to happen from `Idle`, with its audit kind and reason.
#[derive(Clone, Debug)]
struct PendingSpawn {
    restart: bool,
    reason: String,
}

/// The state machine of one service.
#[derive(Debug)]
pub struct ServiceMachine {
    name: String,
    policy: RestartPolicy,
    failed_after: u32,
    keep_retrying_when_failed: bool,
    health: Option<HealthSpec>,
    stop_grace: Duration,
    backoff: Backoff,
    phase: Phase,
    directive: Directive,
    /// Set by an operator start/restart: the next spawn from `Idle` uses this audit.
    pending_spawn: Option<PendingSpawn>,
    /// The last `Hold` reason audited, so waiting is audited once per reason.
    audited_hold: Option<String>,
    restarts: u32,
    last_exit: Option<ExitStatus>,
    /// The last published state, its time and reason.
    published: ServiceState,
    since: Instant,
    reason: String,
    /// Reason of the latest phase change, used when it gets published.
    transition_reason: String,
}

impl ServiceMachine {
    /// A stopped machine for `spec`, created at `now`; `seed` drives its backoff jitter.
    pub fn new(spec: &ServiceSpec, seed: u64, now: Instant) -> Self {
        Self {
            name: spec.name.clone(),
            policy: spec.restart.policy,
            failed_after: spec.restart.failed_after,
            keep_retrying_when_failed: spec.restart.keep_retrying_when_failed,
            health: spec.health.clone(),
            stop_grace: spec.stop_grace,
            backoff: Backoff::new(spec.backoff(), seed),
            phase: Phase::Idle,
            directive: Directive::Hold {
                reason: "not yet reconciled".to_string(),
            },
            pending_spawn: None,
            audited_hold: None,
            restarts: 0,
            last_exit: None,
            published: ServiceState::Stopped,
            since: now,
            reason: "created".to_string(),
            transition_reason: String::new(),
        }
    }

    /// Takes a changed spec; timings apply from the next start (the supervisor restarts a
    /// running service whose spec changed).
    pub fn update_spec(&mut self, spec: &ServiceSpec) {
        self.policy = spec.restart.policy;
        self.failed_after = spec.restart.failed_after;
        self.keep_retrying_when_failed = spec.restart.keep_retrying_when_failed;
        self.health = spec.health.clone();
        self.stop_grace = spec.stop_grace;
        self.backoff.set_config(spec.backoff());
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The published state.
    pub fn state(&self) -> ServiceState {
        self.published
    }

    /// The pid of the running (or stopping) process.
    pub fn pid(&self) -> Option<u32> {
        match &self.phase {
            Phase::Running { pid, .. } | Phase::Stopping { pid, .. } => Some(*pid),
            _ => None,
        }
    }

    /// Whether a process exists or is being spawned.
    pub fn has_process(&self) -> bool {
        matches!(
            self.phase,
            Phase::Spawning | Phase::Running { .. } | Phase::Stopping { .. }
        )
    }

    /// Why dependents cannot count on this service, or `None` if they can: it runs, starts,
    /// or is between restarts (`backoff`, restart-stops), so dependents ride through.
    pub fn unavailability(&self) -> Option<&'static str> {
        match &self.phase {
            Phase::Spawning | Phase::Running { .. } | Phase::Backoff { .. } => None,
            Phase::Stopping {
                then: AfterStop::Idle,
                ..
            } => Some("is stopping"),
            Phase::Stopping { .. } => None,
            Phase::Idle => Some("is stopped"),
            Phase::Finished => Some("has exited"),
            Phase::Failed { .. } => Some("failed"),
        }
    }

    /// The earliest time this machine needs a `TimerFired`.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Running { health, .. } => health.next_check,
            Phase::Stopping {
                kill_at,
                killed: false,
                ..
            } => Some(*kill_at),
            Phase::Backoff { wait } => wait.deadline(),
            Phase::Failed { retry: Some(wait) } => wait.deadline(),
            _ => None,
        }
    }

    pub fn status(&self) -> ServiceStatus {
        ServiceStatus {
            service: self.name.clone(),
            state: self.published,
            since: self.since,
            pid: self.pid(),
            restarts: self.restarts,
            consecutive_failures: self.backoff.consecutive_failures(),
            last_exit: self.last_exit,
            reason: self.reason.clone(),
            next_attempt: match &self.phase {
                Phase::Backoff { wait } => wait.deadline(),
                Phase::Failed { retry: Some(wait) } => wait.deadline(),
                _ => None,
            },
        }
    }

    /// Handles one input at `now`, appending the resulting actions to `out`.
    pub fn on_event(&mut self, now: Instant, event: MachineEvent, out: &mut Vec<SupervisorAction>) {
        match event {
            MachineEvent::Directive(directive) => {
                if !matches!(directive, Directive::Hold { .. }) {
                    self.audited_hold = None;
                }
                self.directive = directive;
            }
            MachineEvent::StartRequested { reason } => self.on_start_requested(reason),
            MachineEvent::RestartRequested { reason } => {
                self.on_restart_requested(now, reason, out)
            }
            MachineEvent::Spawned { pid } => self.on_spawned(now, pid, out),
            MachineEvent::SpawnFailed { error } => self.on_spawn_failed(now, error, out),
            MachineEvent::Exited { pid, status } => self.on_exited(now, pid, status, out),
            MachineEvent::HealthChecked { pid, outcome } => {
                self.on_health_checked(now, pid, outcome, out)
            }
            MachineEvent::TimerFired => self.on_timer(now, out),
        }
        self.drive(now, out);
        self.publish_if_changed(now, out);
    }

    fn on_start_requested(&mut self, reason: String) {
        self.backoff.reset();
        if matches!(
            self.phase,
            Phase::Finished | Phase::Failed { .. } | Phase::Backoff { .. } | Phase::Idle
        ) {
            self.set_phase(Phase::Idle, &reason);
            self.pending_spawn = Some(PendingSpawn {
                restart: false,
                reason,
            });
        }
    }

    fn on_restart_requested(
        &mut self,
        now: Instant,
        reason: String,
        out: &mut Vec<SupervisorAction>,
    ) {
        self.backoff.reset();
        match &mut self.phase {
            Phase::Running { pid, .. } => {
                let pid = *pid;
                let then = AfterStop::RestartNow {
                    reason: reason.clone(),
                };
                self.begin_stop(now, pid, then, &reason, AuditKind::Stop, out);
            }
            Phase::Stopping { then, .. } => *then = AfterStop::RestartNow { reason },
            Phase::Spawning => {}
            Phase::Idle | Phase::Finished | Phase::Backoff { .. } | Phase::Failed { .. } => {
                self.set_phase(Phase::Idle, &reason);
                self.pending_spawn = Some(PendingSpawn {
                    restart: true,
                    reason,
                });
            }
        }
    }

    fn on_spawned(&mut self, now: Instant, pid: u32, out: &mut Vec<SupervisorAction>) {
        if !matches!(self.phase, Phase::Spawning) {
            // A process we do not track: never leave it running unsupervised.
            self.audit(
                now,
                AuditKind::Kill,
                format!("unexpected process {pid} reported spawned; sending SIGKILL"),
                out,
            );
            out.push(SupervisorAction::Signal {
                service: self.name.clone(),
                pid,
                signal: StopSignal::Kill,
            });
            return;
        }
        let mut health = HealthTrack {
            status: HealthStatus::Starting,
            grace_until: now,
            failures: 0,
            next_check: None,
            in_flight: false,
        };
        let reason = match &self.health {
            None => {
                health.status = HealthStatus::Healthy;
                self.backoff.on_healthy(now);
                format!("spawned pid {pid}; no health check, so healthy while it runs")
            }
            Some(spec) => {
                health.grace_until = now + spec.start_grace;
                let at = now + spec.start_interval;
                health.next_check = Some(at);
                self.schedule(at, out);
                format!("spawned pid {pid}")
            }
        };
        self.audit(now, AuditKind::Spawned, reason.clone(), out);
        self.set_phase(Phase::Running { pid, health }, &reason);
    }

    fn on_spawn_failed(&mut self, now: Instant, error: String, out: &mut Vec<SupervisorAction>) {
        if !matches!(self.phase, Phase::Spawning) {
            return;
        }
        self.audit(now, AuditKind::SpawnFailed, error.clone(), out);
        self.process_gone(now, FailureCause::SpawnFailed(error), out);
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<SupervisorAction>) {
        let name = self.name.clone();
        match &mut self.phase {
            Phase::Running { pid, health } => {
                if let Some(at) = health.next_check
                    && at <= now
                    && !health.in_flight
                {
                    health.in_flight = true;
                    health.next_check = None;
                    out.push(SupervisorAction::RunHealthCheck {
                        service: name,
                        pid: *pid,
                    });
                }
            }
            Phase::Stopping {
                pid,
                kill_at,
                killed,
                ..
            } if !*killed && *kill_at <= now => {
                *killed = true;
                let pid = *pid;
                let grace = self.stop_grace;
                self.audit(
                    now,
                    AuditKind::Kill,
                    format!(
                        "pid {pid} still running {} after SIGTERM; sending SIGKILL",
                        human_duration(grace)
                    ),
                    out,
                );
                out.push(SupervisorAction::Signal {
                    service: name,
                    pid,
                    signal: StopSignal::Kill,
                });
            }
            Phase::Backoff { wait } => wait.mark_if_due(now),
            Phase::Failed { retry: Some(wait) } => wait.mark_if_due(now),
            _ => {}
        }
    }

    /// Carries out the current directive as far as the phase allows.
    fn drive(&mut self, now: Instant, out: &mut Vec<SupervisorAction>) {
        match self.directive.clone() {
            Directive::Stop { reason, cause } => {
                let kind = match cause {
                    StopCause::Dependency => AuditKind::DependencyStopped,
                    _ => AuditKind::Stop,
                };
                match &mut self.phase {
                    // Spawning: the stop follows once the pid is known. A pending operator
                    // start stays pending until the directive says run.
                    Phase::Idle | Phase::Finished | Phase::Spawning => {}
                    Phase::Backoff { .. } | Phase::Failed { .. } => {
                        self.audit(now, kind, format!("{reason}; restart cancelled"), out);
                        self.set_phase(Phase::Idle, &reason);
                    }
                    Phase::Running { pid, .. } => {
                        let pid = *pid;
                        self.begin_stop(now, pid, AfterStop::Idle, &reason, kind, out);
                    }
                    Phase::Stopping { then, .. } => {
                        if *then != AfterStop::Idle {
                            *then = AfterStop::Idle;
                            self.transition_reason = reason;
                        }
                    }
                }
            }
            Directive::Hold { reason } => {
                // Audited once per reason: waiting to start, or riding through while running.
                let relevant = match &self.phase {
                    Phase::Idle | Phase::Running { .. } => true,
                    Phase::Backoff { wait } => wait.is_due(now),
                    Phase::Failed { retry: Some(wait) } => wait.is_due(now),
                    _ => false,
                };
                if relevant && self.audited_hold.as_ref() != Some(&reason) {
                    let text = match self.pid() {
                        Some(pid) => format!("{reason}; pid {pid} keeps running"),
                        None => reason.clone(),
                    };
                    self.audit(now, AuditKind::Waiting, text, out);
                    self.audited_hold = Some(reason);
                }
            }
            Directive::Run { reason } => match &self.phase {
                Phase::Idle => {
                    let pending = self.pending_spawn.take().unwrap_or(PendingSpawn {
                        restart: false,
                        reason,
                    });
                    self.spawn(now, pending.restart, pending.reason, out);
                }
                Phase::Backoff { wait } if wait.is_due(now) => {
                    let failures = self.backoff.consecutive_failures();
                    self.spawn(
                        now,
                        true,
                        format!(
                            "backoff over (after failure {failures} of {})",
                            self.failed_after
                        ),
                        out,
                    );
                }
                Phase::Failed { retry: Some(wait) } if wait.is_due(now) => {
                    let failures = self.backoff.consecutive_failures();
                    self.spawn(
                        now,
                        true,
                        format!("retrying failed service (after {failures} consecutive failures)"),
                        out,
                    );
                }
                _ => {}
            },
        }
    }

    fn spawn(
        &mut self,
        now: Instant,
        restart: bool,
        reason: String,
        out: &mut Vec<SupervisorAction>,
    ) {
        if restart {
            self.restarts += 1;
        }
        let kind = if restart {
            AuditKind::Restart
        } else {
            AuditKind::Start
        };
        self.audit(now, kind, reason.clone(), out);
        self.audited_hold = None;
        out.push(SupervisorAction::Spawn {
            service: self.name.clone(),
        });
        self.set_phase(Phase::Spawning, &reason);
    }

    fn begin_stop(
        &mut self,
        now: Instant,
        pid: u32,
        then: AfterStop,
        reason: &str,
        kind: AuditKind,
        out: &mut Vec<SupervisorAction>,
    ) {
        let kill_at = now + self.stop_grace;
        self.audit(
            now,
            kind,
            format!(
                "{reason}; sending SIGTERM to pid {pid} (SIGKILL after {})",
                human_duration(self.stop_grace)
            ),
            out,
        );
        out.push(SupervisorAction::Signal {
            service: self.name.clone(),
            pid,
            signal: StopSignal::Term,
        });
        self.schedule(kill_at, out);
        self.set_phase(
            Phase::Stopping {
                pid,
                then,
                kill_at,
                killed: false,
            },
            reason,
        );
    }

    fn set_phase(&mut self, phase: Phase, reason: &str) {
        self.phase = phase;
        self.transition_reason = reason.to_string();
    }

    /// The published state the current phase maps to.
    fn current_state(&self) -> ServiceState {
        match &self.phase {
            Phase::Idle | Phase::Finished => ServiceState::Stopped,
            // Until the pid is known, keep showing what was last published.
            Phase::Spawning => self.published,
            Phase::Running { health, .. } => match health.status {
                HealthStatus::Starting => ServiceState::Starting,
                HealthStatus::Healthy => ServiceState::Healthy,
                HealthStatus::Unhealthy => ServiceState::Unhealthy,
            },
            Phase::Stopping { .. } => ServiceState::Stopping,
            Phase::Backoff { .. } => ServiceState::Backoff,
            Phase::Failed { .. } => ServiceState::Failed,
        }
    }

    fn publish_if_changed(&mut self, now: Instant, out: &mut Vec<SupervisorAction>) {
        let state = self.current_state();
        if state != self.published {
            self.published = state;
            self.since = now;
            self.reason = self.transition_reason.clone();
            out.push(SupervisorAction::Publish(self.status()));
        }
    }

    fn schedule(&self, at: Instant, out: &mut Vec<SupervisorAction>) {
        out.push(SupervisorAction::ScheduleTimer {
            service: self.name.clone(),
            at,
        });
    }

    fn audit(
        &self,
        now: Instant,
        kind: AuditKind,
        reason: String,
        out: &mut Vec<SupervisorAction>,
    ) {
        tracing::debug!(service = %self.name, ?kind, %reason, "supervisor decision");
        out.push(SupervisorAction::Audit(AuditEvent {
            at: now,
            service: self.name.clone(),
            kind,
            reason,
        }));
    }

    /// Audit from outside the machine (the supervisor), under this service's name.
    pub(super) fn audit_external(
        &self,
        now: Instant,
        kind: AuditKind,
        reason: String,
        out: &mut Vec<SupervisorAction>,
    ) {
        self.audit(now, kind, reason, out);
    }
}

/// `97 ms`, `1.6 s`, `60 s`: how delays read in audit reasons.
pub fn human_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{} ms", duration.as_millis())
    } else if duration < Duration::from_secs(10) {
        format!("{:.1} s", duration.as_secs_f64())
    } else {
        format!("{} s", duration.as_secs_f64().round())
    }
}

/// Why a process is gone, for the restart decision.
enum FailureCause {
    Exited(ExitStatus),
    SpawnFailed(String),
    Unhealthy(String),
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureCause::Exited(status) => write!(f, "exited with {status}"),
            FailureCause::SpawnFailed(error) => write!(f, "could not spawn: {error}"),
            FailureCause::Unhealthy(detail) => write!(f, "unhealthy ({detail})"),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Single-machine tests, driven event by event. Whole-supervisor scenarios (dependencies,
    //! shutdown order, long crash loops) are in `super::tests`.
    use super::*;
    use crate::ports::Proto;
    use crate::supervisor::spec::{HealthCheck, PortSpec};

    fn t(ms: u64) -> Instant {
        base() + Duration::from_millis(ms)
    }

    fn base() -> Instant {
        use std::sync::OnceLock;
        static BASE: OnceLock<Instant> = OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    fn run() -> MachineEvent {
        MachineEvent::Directive(Directive::Run {
            reason: "test".to_string(),
        })
    }

    fn plain(policy: RestartPolicy) -> ServiceSpec {
        let mut spec = ServiceSpec::new("svc", "run");
        spec.restart.policy = policy;
        spec.restart.jitter = 0.0;
        spec
    }

    fn with_health(policy: RestartPolicy) -> ServiceSpec {
        let mut spec = plain(policy);
        spec.ports = vec![PortSpec {
            proto: Proto::Tcp,
            ..PortSpec::auto()
        }];
        spec.health = Some(HealthSpec::new(HealthCheck::Tcp));
        spec
    }

    fn step(
        machine: &mut ServiceMachine,
        now: Instant,
        event: MachineEvent,
    ) -> Vec<SupervisorAction> {
        let mut out = Vec::new();
        machine.on_event(now, event, &mut out);
        out
    }

    fn published(actions: &[SupervisorAction]) -> Vec<ServiceState> {
        actions
            .iter()
            .filter_map(|action| match action {
                SupervisorAction::Publish(status) => Some(status.state),
                _ => None,
            })
            .collect()
    }

    fn has_spawn(actions: &[SupervisorAction]) -> bool {
        actions
            .iter()
            .any(|action| matches!(action, SupervisorAction::Spawn { .. }))
    }

    #[test]
    fn start_publishes_once_with_the_pid() {
        let mut machine = ServiceMachine::new(&plain(RestartPolicy::Always), 0, t(0));
        let actions = step(&mut machine, t(0), run());
        assert!(has_spawn(&actions));
        assert!(
            published(&actions).is_empty(),
            "no publish before the pid is known"
        );
        assert_eq!(machine.state(), ServiceState::Stopped);
        let actions = step(&mut machine, t(5), MachineEvent::Spawned { pid: 10 });
        let statuses: Vec<&ServiceStatus> = actions
            .iter()
            .filter_map(|action| match action {
                SupervisorAction::Publish(status) => Some(status),
                _ => None,
            })
            .collect();
        assert_eq!(statuses.len(), 1);
        assert_eq!(
            statuses[0].state,
            ServiceState::Healthy,
            "no health check: healthy"
        );
        assert_eq!(statuses[0].pid, Some(10));
        assert_eq!(statuses[0].since, t(5));
    }

    #[test]
    fn on_failure_restarts_only_non_zero_exits() {
        let mut machine = ServiceMachine::new(&plain(RestartPolicy::OnFailure), 0, t(0));
        step(&mut machine, t(0), run());
        step(&mut machine, t(0), MachineEvent::Spawned { pid: 1 });
        let actions = step(
            &mut machine,
            t(10),
            MachineEvent::Exited {
                pid: 1,
                status: ExitStatus::Code(3),
            },
        );
        assert_eq!(published(&actions), [ServiceState::Backoff]);
        assert_eq!(machine.status().next_attempt, Some(t(90)));
        let actions = step(&mut machine, t(90), MachineEvent::TimerFired);
        assert!(has_spawn(&actions));
        step(&mut machine, t(91), MachineEvent::Spawned { pid: 2 });
        let actions = step(
            &mut machine,
            t(500),
            MachineEvent::Exited {
                pid: 2,
                status: ExitStatus::Code(0),
            },
        );
        assert_eq!(published(&actions), [ServiceState::Stopped]);
        assert!(machine.next_deadline().is_none());
        // Finished stays finished even though the directive still says run.
        let actions = step(&mut machine, t(10_000), run());
        assert!(!has_spawn(&actions));
        assert_eq!(machine.status().last_exit, Some(ExitStatus::Code(0)));
        assert_eq!(machine.status().restarts, 1);
        assert_eq!(machine.unavailability(), Some("has exited"));
        // An operator start runs it again.
        let actions = step(
            &mut machine,
            t(10_001),
            MachineEvent::StartRequested {
                reason: "operator".to_string(),
            },
        );
        assert!(
            has_spawn(&actions),
            "the standing Run directive spawns it at once"
        );
    }

    #[test]
    fn never_policy_does_not_restart() {
        let mut machine = ServiceMachine::new(&plain(RestartPolicy::Never), 0, t(0));
        step(&mut machine, t(0), run());
        step(&mut machine, t(0), MachineEvent::Spawned { pid: 1 });
        let actions = step(
            &mut machine,
            t(10),
            MachineEvent::Exited {
                pid: 1,
                status: ExitStatus::Signal(9),
            },
        );
        assert_eq!(published(&actions), [ServiceState::Failed]);
        assert!(machine.next_deadline().is_none());
        let audit = actions
            .iter()
            .find_map(|action| match action {
                SupervisorAction::Audit(event) if event.kind == AuditKind::GiveUp => {
                    Some(event.reason.clone())
                }
                _ => None,
            })
            .expect("give-up audited");
        assert_eq!(
            audit,
            "exited with signal 9 (SIGKILL); not restarting (policy never)"
        );
        for ms in [100, 1_000, 100_000] {
            assert!(!has_spawn(&step(
                &mut machine,
                t(ms),
                MachineEvent::TimerFired
            )));
        }

        let mut clean = ServiceMachine::new(&plain(RestartPolicy::Never), 0, t(0));
        step(&mut clean, t(0), run());
        step(&mut clean, t(0), MachineEvent::Spawned { pid: 1 });
        let actions = step(
            &mut clean,
            t(10),
            MachineEvent::Exited {
                pid: 1,
                status: ExitStatus::Code(0),
            },
        );
        assert_eq!(published(&actions), [ServiceState::Stopped]);
    }

    #[test]
    fn never_policy_leaves_an_unhealthy_process_running() {
        let mut machine = ServiceMachine::new(&with_health(RestartPolicy::Never), 0, t(0));
        step(&mut machine, t(0), run());
        step(&mut machine, t(0), MachineEvent::Spawned { pid: 1 });
        let mut now = t(250);
        step(&mut machine, now, MachineEvent::TimerFired);
        step(
            &mut machine,
            now,
            MachineEvent::HealthChecked {
                pid: 1,
                outcome: HealthOutcome::Passed,
            },
        );
        assert_eq!(machine.state(), ServiceState::Healthy);
        let mut all = Vec::new();
        for _ in 0..5 {
            now = machine.next_deadline().expect("next check");
            all.extend(step(&mut machine, now, MachineEvent::TimerFired));
            all.extend(step(
                &mut machine,
                now,
                MachineEvent::HealthChecked {
                    pid: 1,
                    outcome: HealthOutcome::Failed {
                        detail: "refused".to_string(),
                    },
                },
            ));
        }
        assert_eq!(published(&all), [ServiceState::Unhealthy]);
        assert!(
            !all.iter()
                .any(|action| matches!(action, SupervisorAction::Signal { .. }))
        );
        // It recovers on its own.
        now = machine.next_deadline().expect("next check");
        step(&mut machine, now, MachineEvent::TimerFired);
        let actions = step(
            &mut machine,
            now,
            MachineEvent::HealthChecked {
                pid: 1,
                outcome: HealthOutcome::Passed,
            },
        );
        assert_eq!(published(&actions), [ServiceState::Healthy]);
    }

    #[test]
    fn stale_and_unexpected_reports_are_ignored_or_contained() {
        let mut machine = ServiceMachine::new(&with_health(RestartPolicy::Always), 0, t(0));
        step(&mut machine, t(0), run());
        step(&mut machine, t(0), MachineEvent::Spawned { pid: 7 });
        // Exit of another pid, a health result nobody asked for: nothing happens.
        assert!(
            step(
                &mut machine,
                t(1),
                MachineEvent::Exited {
                    pid: 8,
                    status: ExitStatus::Code(1)
                }
            )
            .is_empty()
        );
        assert!(
            step(
                &mut machine,
                t(1),
                MachineEvent::HealthChecked {
                    pid: 7,
                    outcome: HealthOutcome::Passed
                }
            )
            .is_empty()
        );
        assert_eq!(machine.state(), ServiceState::Starting);
        // A spawn report while running: that process is killed, ours is untouched.
        let actions = step(&mut machine, t(2), MachineEvent::Spawned { pid: 99 });
        assert!(actions.contains(&SupervisorAction::Signal {
            service: "svc".to_string(),
            pid: 99,
            signal: StopSignal::Kill
        }));
        assert_eq!(machine.pid(), Some(7));
    }

    #[test]
    fn stop_while_spawning_stops_once_the_pid_is_known() {
        let mut machine = ServiceMachine::new(&plain(RestartPolicy::Always), 0, t(0));
        step(&mut machine, t(0), run());
        step(
            &mut machine,
            t(1),
            MachineEvent::Directive(Directive::Stop {
                reason: "stop requested".to_string(),
                cause: StopCause::Requested,
            }),
        );
        let actions = step(&mut machine, t(2), MachineEvent::Spawned { pid: 5 });
        assert!(actions.contains(&SupervisorAction::Signal {
            service: "svc".to_string(),
            pid: 5,
            signal: StopSignal::Term
        }));
        assert_eq!(machine.state(), ServiceState::Stopping);
        let actions = step(
            &mut machine,
            t(3),
            MachineEvent::Exited {
                pid: 5,
                status: ExitStatus::Signal(15),
            },
        );
        assert_eq!(published(&actions), [ServiceState::Stopped]);
        assert!(!has_spawn(&actions));
    }

    #[test]
    fn operator_restart_stops_then_spawns_at_once() {
        let mut machine = ServiceMachine::new(&plain(RestartPolicy::Always), 0, t(0));
        step(&mut machine, t(0), run());
        step(&mut machine, t(0), MachineEvent::Spawned { pid: 1 });
        let actions = step(
            &mut machine,
            t(100),
            MachineEvent::RestartRequested {
                reason: "operator restart".to_string(),
            },
        );
        assert!(actions.iter().any(|action| matches!(
            action,
            SupervisorAction::Signal {
                pid: 1,
                signal: StopSignal::Term,
                ..
            }
        )));
        assert!(
            machine.unavailability().is_none(),
            "dependents ride through a restart"
        );
        let actions = step(
            &mut machine,
            t(150),
            MachineEvent::Exited {
                pid: 1,
                status: ExitStatus::Signal(15),
            },
        );
        assert!(has_spawn(&actions), "respawned without backoff");
        assert_eq!(machine.status().restarts, 1);
        assert_eq!(machine.status().consecutive_failures, 0);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(Duration::from_millis(97)), "97 ms");
        assert_eq!(human_duration(Duration::from_millis(1600)), "1.6 s");
        assert_eq!(human_duration(Duration::from_secs(60)), "60 s");
        assert_eq!(ExitStatus::Code(1).to_string(), "exit status 1");
        assert_eq!(ExitStatus::Signal(11).to_string(), "signal 11 (SIGSEGV)");
        assert_eq!(ServiceState::Backoff.to_string(), "backoff");
    }
}
