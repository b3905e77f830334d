//! Whole-supervisor scenarios: a fake clock (`t0 + durations`) and a fake process world that
//! answers every action at once (spawns get pids, signals end processes, health checks pass
//! or fail per service). Time only moves to the supervisor's next deadline, so every timing
//! below is exact and no test sleeps.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::*;
use crate::ports::Proto;

/// How a fake service behaves.
#[derive(Clone, Debug)]
struct Behavior {
    /// Exits right after being spawned, with this status.
    exits_at_once: Option<ExitStatus>,
    /// Its health checks pass.
    healthy: bool,
    /// Ignores SIGTERM; only SIGKILL ends it.
    ignores_term: bool,
    /// Spawning fails with this error.
    spawn_error: Option<String>,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            exits_at_once: None,
            healthy: true,
            ignores_term: false,
            spawn_error: None,
        }
    }
}

struct Sim {
    supervisor: Supervisor,
    t0: Instant,
    now: Instant,
    next_pid: u32,
    behaviors: BTreeMap<String, Behavior>,
    /// Live pid → service.
    live: BTreeMap<u32, String>,
    queue: VecDeque<SupervisorAction>,
    /// Every action, with the time it was emitted.
    log: Vec<(Duration, SupervisorAction)>,
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

/// A service listening on an auto port with an `http` health check; no jitter, so delays
/// are exact.
fn service(name: &str, after: &[&str]) -> ServiceSpec {
    let mut spec = ServiceSpec::new(name, "python3");
    spec.args = ["-m", "http.server", "$PORT"].map(String::from).to_vec();
    spec.after = after.iter().map(|dep| dep.to_string()).collect();
    spec.ports = vec![PortSpec {
        proto: Proto::Tcp,
        ..PortSpec::auto()
    }];
    spec.health = Some(HealthSpec::new(HealthCheck::Http {
        path: "/".to_string(),
    }));
    spec.restart.jitter = 0.0;
    spec
}

/// A service without a health check: healthy while its process runs.
fn bare(name: &str) -> ServiceSpec {
    let mut spec = ServiceSpec::new(name, "run");
    spec.restart.jitter = 0.0;
    spec
}

fn chain() -> Vec<ServiceSpec> {
    vec![
        service("db", &[]),
        service("api", &["db"]),
        service("web", &["api"]),
    ]
}

impl Sim {
    fn new(specs: Vec<ServiceSpec>) -> Self {
        Self::with_behaviors(specs, &[])
    }

    fn with_behaviors(specs: Vec<ServiceSpec>, behaviors: &[(&str, Behavior)]) -> Self {
        let t0 = Instant::now();
        let supervisor = Supervisor::new(specs, 7, t0).expect("valid specs");
        let mut sim = Sim {
            supervisor,
            t0,
            now: t0,
            next_pid: 1000,
            behaviors: behaviors
                .iter()
                .map(|(name, behavior)| (name.to_string(), behavior.clone()))
                .collect(),
            live: BTreeMap::new(),
            queue: VecDeque::new(),
            log: Vec::new(),
        };
        let actions = sim.supervisor.reconcile(t0);
        sim.enqueue(actions);
        sim.settle();
        sim
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    fn behavior(&self, service: &str) -> Behavior {
        self.behaviors.get(service).cloned().unwrap_or_default()
    }

    fn set_behavior(&mut self, service: &str, behavior: Behavior) {
        self.behaviors.insert(service.to_string(), behavior);
    }

    fn feed(&mut self, event: SupervisorEvent) {
        let actions = self
            .supervisor
            .on_event(self.now, event)
            .expect("events name known services");
        self.enqueue(actions);
    }

    fn enqueue(&mut self, actions: Vec<SupervisorAction>) {
        for action in actions {
            self.log.push((self.elapsed(), action.clone()));
            self.queue.push_back(action);
        }
    }

    /// Carries out queued actions (and the actions they lead to) at the current time.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let Some(action) = self.queue.pop_front() else {
                return;
            };
            self.carry_out(action);
        }
        panic!("actions never settled");
    }

    fn carry_out(&mut self, action: SupervisorAction) {
        match action {
            SupervisorAction::Spawn { service } => {
                let behavior = self.behavior(&service);
                if let Some(error) = behavior.spawn_error {
                    self.feed(SupervisorEvent::SpawnFailed { service, error });
                    return;
                }
                let pid = self.next_pid;
                self.next_pid += 1;
                self.live.insert(pid, service.clone());
                self.feed(SupervisorEvent::Spawned {
                    service: service.clone(),
                    pid,
                });
                if let Some(status) = behavior.exits_at_once {
                    self.live.remove(&pid);
                    self.feed(SupervisorEvent::Exited {
                        service,
                        pid,
                        status,
                    });
                }
            }
            SupervisorAction::Signal {
                service,
                pid,
                signal,
            } => {
                if !self.live.contains_key(&pid) {
                    return;
                }
                let status = match signal {
                    StopSignal::Term if self.behavior(&service).ignores_term => return,
                    StopSignal::Term => ExitStatus::Signal(15),
                    StopSignal::Kill => ExitStatus::Signal(9),
                };
                self.live.remove(&pid);
                self.feed(SupervisorEvent::Exited {
                    service,
                    pid,
                    status,
                });
            }
            SupervisorAction::RunHealthCheck { service, pid } => {
                let outcome = if self.behavior(&service).healthy && self.live.contains_key(&pid) {
                    HealthOutcome::Passed
                } else {
                    HealthOutcome::Failed {
                        detail: "connection refused".to_string(),
                    }
                };
                self.feed(SupervisorEvent::HealthChecked {
                    service,
                    pid,
                    outcome,
                });
            }
            SupervisorAction::ScheduleTimer { .. }
            | SupervisorAction::Audit(_)
            | SupervisorAction::Publish(_) => {}
        }
    }

    /// Advances time deadline by deadline up to `until` (since `t0`).
    fn run_until(&mut self, until: Duration) {
        let end = self.t0 + until;
        for _ in 0..100_000 {
            self.settle();
            match self.supervisor.next_deadline() {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    self.feed(SupervisorEvent::TimerFired);
                }
                _ => {
                    self.now = self.now.max(end);
                    return;
                }
            }
        }
        panic!("simulation never reached {until:?}");
    }

    fn pid_of(&self, service: &str) -> Option<u32> {
        self.live
            .iter()
            .find(|(_, name)| name.as_str() == service)
            .map(|(pid, _)| *pid)
    }

    /// The process dies on its own (e.g. `kill -9`).
    fn kill(&mut self, service: &str, status: ExitStatus) {
        let pid = self.pid_of(service).expect("service is running");
        self.live.remove(&pid);
        self.feed(SupervisorEvent::Exited {
            service: service.to_string(),
            pid,
            status,
        });
        self.settle();
    }

    fn operator(&mut self, event: SupervisorEvent) {
        self.feed(event);
        self.settle();
    }

    fn state(&self, service: &str) -> ServiceState {
        self.supervisor.status(service).expect("known").state
    }

    fn published(&self, service: &str) -> Vec<(Duration, ServiceState)> {
        self.log
            .iter()
            .filter_map(|(at, action)| match action {
                SupervisorAction::Publish(status) if status.service == service => {
                    Some((*at, status.state))
                }
                _ => None,
            })
            .collect()
    }

    fn published_states(&self, service: &str) -> Vec<ServiceState> {
        self.published(service)
            .into_iter()
            .map(|(_, state)| state)
            .collect()
    }

    fn first_published(&self, service: &str, state: ServiceState) -> Option<Duration> {
        self.published(service)
            .into_iter()
            .find(|(_, published)| *published == state)
            .map(|(at, _)| at)
    }

    fn first_published_after(
        &self,
        service: &str,
        state: ServiceState,
        after: Duration,
    ) -> Option<Duration> {
        self.published(service)
            .into_iter()
            .find(|(at, published)| *at >= after && *published == state)
            .map(|(at, _)| at)
    }

    fn audits(&self, service: &str) -> Vec<(Duration, AuditKind, String)> {
        self.log
            .iter()
            .filter_map(|(at, action)| match action {
                SupervisorAction::Audit(event) if event.service == service => {
                    Some((*at, event.kind, event.reason.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn audit_reasons(&self, service: &str, kind: AuditKind) -> Vec<String> {
        self.audits(service)
            .into_iter()
            .filter(|(_, audited, _)| *audited == kind)
            .map(|(_, _, reason)| reason)
            .collect()
    }

    fn spawn_times(&self, service: &str) -> Vec<Duration> {
        self.log
            .iter()
            .filter_map(|(at, action)| match action {
                SupervisorAction::Spawn { service: name } if name == service => Some(*at),
                _ => None,
            })
            .collect()
    }

    fn spawn_intervals(&self, service: &str) -> Vec<Duration> {
        self.spawn_times(service)
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .collect()
    }

    fn signals(&self) -> Vec<(Duration, String, StopSignal)> {
        self.log
            .iter()
            .filter_map(|(at, action)| match action {
                SupervisorAction::Signal {
                    service, signal, ..
                } => Some((*at, service.clone(), *signal)),
                _ => None,
            })
            .collect()
    }

    fn health_checks(&self, service: &str) -> usize {
        self.log
            .iter()
            .filter(|(_, action)| {
                matches!(action, SupervisorAction::RunHealthCheck { service: name, .. } if name == service)
            })
            .count()
    }
}

#[test]
fn chain_starts_in_order_only_after_each_dependency_is_healthy() {
    let mut sim = Sim::new(chain());
    sim.run_until(secs(5));
    // First check 250 ms (start_interval) after spawn; each dependent spawns the moment its
    // dependency is healthy.
    assert_eq!(sim.spawn_times("db"), [ms(0)]);
    assert_eq!(sim.spawn_times("api"), [ms(250)]);
    assert_eq!(sim.spawn_times("web"), [ms(500)]);
    for (dependency, dependent) in [("db", "api"), ("api", "web")] {
        let healthy = sim
            .first_published(dependency, ServiceState::Healthy)
            .expect("dependency healthy");
        assert!(sim.spawn_times(dependent)[0] >= healthy);
    }
    for name in ["db", "api", "web"] {
        assert_eq!(sim.state(name), ServiceState::Healthy);
        assert_eq!(
            sim.published_states(name),
            [ServiceState::Starting, ServiceState::Healthy]
        );
    }
    assert_eq!(
        sim.audit_reasons("api", AuditKind::Start),
        ["dependencies healthy: db"]
    );
    assert_eq!(
        sim.audit_reasons("web", AuditKind::Waiting),
        ["waiting for dependency api to be healthy"]
    );
    assert_eq!(
        sim.audit_reasons("db", AuditKind::Start),
        ["desired state: running"]
    );
    let statuses = sim.supervisor.statuses();
    let names: Vec<&str> = statuses
        .iter()
        .map(|status| status.service.as_str())
        .collect();
    assert_eq!(names, ["db", "api", "web"]);
    assert!(
        statuses
            .iter()
            .all(|status| status.pid.is_some() && status.restarts == 0)
    );
}

#[test]
fn state_is_published_only_on_transitions_not_per_health_check() {
    let mut sim = Sim::new(vec![service("db", &[])]);
    sim.run_until(secs(60));
    assert_eq!(
        sim.published_states("db"),
        [ServiceState::Starting, ServiceState::Healthy]
    );
    // 0.25 s, then every 2 s: 0.25, 2.25, ..., 58.25.
    assert_eq!(sim.health_checks("db"), 30);
}

#[test]
fn crash_loop_doubles_to_the_cap_fails_after_n_and_keeps_retrying_at_the_cap() {
    let mut spec = bare("crashy");
    spec.restart.cap = ms(800);
    spec.restart.failed_after = 7;
    let crashing = Behavior {
        exits_at_once: Some(ExitStatus::Code(1)),
        ..Behavior::default()
    };
    let mut sim = Sim::with_behaviors(vec![spec], &[("crashy", crashing)]);
    sim.run_until(secs(10));

    let intervals = sim.spawn_intervals("crashy");
    assert_eq!(
        &intervals[..6],
        [ms(80), ms(160), ms(320), ms(640), ms(800), ms(800)],
        "doubling to the cap"
    );
    assert!(
        intervals[6..].iter().all(|interval| *interval == ms(800)),
        "retries at the cap: {intervals:?}"
    );
    assert!(sim.spawn_times("crashy").len() > 12, "it keeps retrying");

    // Failed at the 7th consecutive failure: spawns at 0, .08, .24, .56, 1.2, 2.0, 2.8 s.
    assert_eq!(
        sim.first_published("crashy", ServiceState::Failed),
        Some(ms(2800))
    );
    assert_eq!(
        sim.audit_reasons("crashy", AuditKind::GiveUp),
        ["exited with exit status 1; failed after 7 consecutive failures; retrying every 800 ms"]
    );
    let status = sim.supervisor.status("crashy").expect("known");
    assert_eq!(status.state, ServiceState::Failed);
    assert_eq!(status.last_exit, Some(ExitStatus::Code(1)));
    assert_eq!(
        status.restarts as usize,
        sim.spawn_times("crashy").len() - 1
    );
    assert!(status.consecutive_failures >= 7);
    assert!(status.next_attempt.is_some());
    let backoffs = sim.audit_reasons("crashy", AuditKind::Backoff);
    assert_eq!(
        backoffs[0],
        "exited with exit status 1; restarting in 80 ms (failure 1 of 7)"
    );
}

#[test]
fn default_backoff_first_restart_within_80_ms_then_failed_after_5_retrying_every_minute() {
    let spec = ServiceSpec::new("crashy", "false");
    let crashing = Behavior {
        exits_at_once: Some(ExitStatus::Code(1)),
        ..Behavior::default()
    };
    let mut sim = Sim::with_behaviors(vec![spec], &[("crashy", crashing)]);
    sim.run_until(secs(200));
    let intervals = sim.spawn_intervals("crashy");
    for (interval, nominal) in intervals.iter().zip([80, 160, 320, 640]) {
        assert!(
            *interval <= ms(nominal) && *interval >= ms(nominal).mul_f64(0.9),
            "{interval:?} vs nominal {nominal} ms"
        );
    }
    let failed_at = sim
        .first_published("crashy", ServiceState::Failed)
        .expect("failed after 5 failures");
    assert_eq!(
        sim.spawn_times("crashy")
            .iter()
            .filter(|at| **at <= failed_at)
            .count(),
        5
    );
    for interval in &intervals[4..] {
        assert!(
            *interval <= secs(60) && *interval >= secs(54),
            "{interval:?}"
        );
    }
    assert!(intervals.len() >= 6, "retried at the cap: {intervals:?}");
}

#[test]
fn dependents_are_stopped_when_a_dependency_fails_and_return_when_it_recovers() {
    let mut specs = chain();
    specs[0].restart.failed_after = 3;
    specs[0].restart.cap = secs(1);
    let mut sim = Sim::new(specs);
    sim.run_until(secs(5));
    assert_eq!(sim.state("web"), ServiceState::Healthy);

    // db breaks: every start exits at once.
    sim.set_behavior(
        "db",
        Behavior {
            exits_at_once: Some(ExitStatus::Code(1)),
            ..Behavior::default()
        },
    );
    sim.kill("db", ExitStatus::Signal(9));
    sim.run_until(secs(20));

    // Failures at 5.0 (kill), 5.08, 5.24: failed at 5.24 s.
    assert_eq!(
        sim.first_published("db", ServiceState::Failed),
        Some(ms(5240))
    );
    // web stops first, then api; both with the reason.
    let terms: Vec<(Duration, String)> = sim
        .signals()
        .into_iter()
        .filter(|(_, _, signal)| *signal == StopSignal::Term)
        .map(|(at, service, _)| (at, service))
        .collect();
    assert_eq!(
        terms,
        [(ms(5240), "web".to_string()), (ms(5240), "api".to_string())]
    );
    let api_stop = sim.audit_reasons("api", AuditKind::DependencyStopped);
    assert_eq!(api_stop.len(), 1);
    assert!(
        api_stop[0].starts_with("dependency db failed; sending SIGTERM"),
        "{api_stop:?}"
    );
    let web_stop = sim.audit_reasons("web", AuditKind::DependencyStopped);
    assert!(
        web_stop[0].starts_with("dependency api is unavailable (dependency db failed)"),
        "{web_stop:?}"
    );
    assert!(
        sim.audit_reasons("api", AuditKind::Waiting)
            .iter()
            .any(|reason| reason.starts_with("waiting for dependents to stop first: web"))
    );
    assert_eq!(sim.state("api"), ServiceState::Stopped);
    assert_eq!(sim.state("web"), ServiceState::Stopped);
    // While db keeps failing (retrying every second), its dependents stay down.
    assert_eq!(sim.spawn_times("api").len(), 1);
    assert!(sim.spawn_times("db").len() > 10);
    assert_eq!(sim.state("db"), ServiceState::Failed);

    // Fixed: the next retry succeeds and the chain comes back in order.
    sim.set_behavior("db", Behavior::default());
    sim.run_until(secs(25));
    assert_eq!(sim.state("db"), ServiceState::Healthy);
    assert_eq!(sim.state("api"), ServiceState::Healthy);
    assert_eq!(sim.state("web"), ServiceState::Healthy);
    let db_back = sim.published("db").last().expect("published").0;
    let api_back = *sim.spawn_times("api").last().expect("respawned");
    let web_back = *sim.spawn_times("web").last().expect("respawned");
    assert!(db_back <= api_back && api_back < web_back);
    assert_eq!(
        sim.audit_reasons("api", AuditKind::Start)
            .last()
            .map(String::as_str),
        Some("dependencies healthy: db")
    );
}

#[test]
fn a_killed_dependency_is_back_within_100_ms_and_dependents_ride_through() {
    let mut specs = chain();
    specs[0].restart = RestartSpec::default(); // with jitter
    let mut sim = Sim::new(specs);
    sim.run_until(secs(5));
    let api_pid = sim.pid_of("api");
    sim.kill("db", ExitStatus::Signal(9));
    sim.run_until(secs(10));
    let respawn = *sim.spawn_times("db").last().expect("respawned");
    assert!(
        respawn > secs(5) && respawn <= secs(5) + ms(100),
        "{respawn:?}"
    );
    assert_eq!(sim.state("db"), ServiceState::Healthy);
    // Dependents were neither signalled nor restarted, and published nothing new.
    assert!(sim.signals().is_empty());
    assert_eq!(sim.pid_of("api"), api_pid);
    assert_eq!(
        sim.published_states("api"),
        [ServiceState::Starting, ServiceState::Healthy]
    );
    let waiting: Vec<String> = sim
        .audits("api")
        .into_iter()
        .filter(|(at, kind, _)| *at >= secs(5) && *kind == AuditKind::Waiting)
        .map(|(_, _, reason)| reason)
        .collect();
    assert_eq!(waiting.len(), 1);
    assert!(
        waiting[0].starts_with("waiting for dependency db to be healthy; pid"),
        "{waiting:?}"
    );
    // The story of db in the audit trail.
    let kinds: Vec<AuditKind> = sim
        .audits("db")
        .into_iter()
        .filter(|(at, _, _)| *at >= secs(5))
        .map(|(_, kind, _)| kind)
        .collect();
    assert_eq!(
        kinds,
        [
            AuditKind::Exited,
            AuditKind::Backoff,
            AuditKind::Restart,
            AuditKind::Spawned,
            AuditKind::Healthy
        ]
    );
}

#[test]
fn a_dependent_configured_to_restart_stops_while_its_dependency_restarts_and_comes_back() {
    let mut specs = chain();
    specs[1].on_dependency_restart = crate::supervisor::DependencyRestart::Restart;
    let mut sim = Sim::new(specs);
    sim.run_until(secs(5));
    let api_pid = sim.pid_of("api");
    let web_pid = sim.pid_of("web");
    sim.kill("db", ExitStatus::Signal(9));
    sim.run_until(secs(15));
    // api (restart) was stopped with the reason and started again once db was healthy; web
    // (ride-through) counted api's stop as a restart and kept running.
    assert_eq!(sim.state("db"), ServiceState::Healthy);
    assert_eq!(sim.state("api"), ServiceState::Healthy);
    assert_eq!(sim.state("web"), ServiceState::Healthy);
    assert_ne!(sim.pid_of("api"), api_pid, "api was restarted");
    assert_eq!(sim.pid_of("web"), web_pid, "web rode through api's restart");
    assert_eq!(
        sim.published_states("web"),
        [ServiceState::Starting, ServiceState::Healthy]
    );
    let stop = sim
        .audits("api")
        .into_iter()
        .find(|(at, kind, _)| *at >= secs(5) && *kind == AuditKind::DependencyStopped)
        .expect("api stopped because of db");
    assert!(stop.2.contains("dependency db is restarting"), "{stop:?}");
    // api's new process started only after db's new one was healthy.
    let db_healthy = sim
        .first_published_after("db", ServiceState::Healthy, secs(5))
        .expect("db healthy again");
    let api_respawn = *sim.spawn_times("api").last().expect("api respawned");
    assert!(
        api_respawn >= db_healthy,
        "{api_respawn:?} < {db_healthy:?}"
    );
}

#[test]
fn failed_health_checks_past_the_threshold_make_it_unhealthy_and_restart_it() {
    let mut sim = Sim::new(vec![service("api", &[])]);
    sim.run_until(secs(9));
    assert_eq!(sim.state("api"), ServiceState::Healthy);
    sim.set_behavior(
        "api",
        Behavior {
            healthy: false,
            ..Behavior::default()
        },
    );
    sim.run_until(secs(16));
    // Checks at 8.25 (pass), 10.25, 12.25, 14.25 (fail ×3): unhealthy at 14.25 s, then the
    // restart: SIGTERM, exit, backoff 80 ms, spawn.
    assert_eq!(
        sim.first_published("api", ServiceState::Unhealthy),
        Some(ms(14_250))
    );
    let after: Vec<(Duration, ServiceState)> = sim
        .published("api")
        .into_iter()
        .filter(|(at, _)| *at >= secs(14))
        .collect();
    assert_eq!(
        after,
        [
            (ms(14_250), ServiceState::Unhealthy),
            (ms(14_250), ServiceState::Stopping),
            (ms(14_250), ServiceState::Backoff),
            (ms(14_330), ServiceState::Starting),
        ]
    );
    assert_eq!(
        sim.audit_reasons("api", AuditKind::HealthCheckFailing),
        ["health check failed (1 of 3): connection refused"]
    );
    assert_eq!(
        sim.audit_reasons("api", AuditKind::Unhealthy),
        ["3 consecutive health checks failed; last: connection refused"]
    );
    assert_eq!(
        sim.audit_reasons("api", AuditKind::Backoff),
        [
            "unhealthy (3 consecutive health checks failed; last: connection refused); restarting in 80 ms (failure 1 of 5)"
        ]
    );
    assert_eq!(sim.supervisor.status("api").expect("known").restarts, 1);
}

#[test]
fn start_grace_is_respected() {
    let sick = Behavior {
        healthy: false,
        ..Behavior::default()
    };
    let mut sim = Sim::with_behaviors(vec![service("slow", &[])], &[("slow", sick)]);
    sim.run_until(secs(12));
    // Checks every 250 ms while starting; failures before 10 s are not counted; 10.0, 10.25
    // and 10.5 are.
    assert!(sim.health_checks("slow") >= 40);
    let failing: Vec<(Duration, AuditKind, String)> = sim
        .audits("slow")
        .into_iter()
        .filter(|(_, kind, _)| *kind == AuditKind::HealthCheckFailing)
        .collect();
    assert_eq!(failing[0].0, secs(10));
    assert_eq!(
        sim.first_published("slow", ServiceState::Unhealthy),
        Some(ms(10_500))
    );
}

#[test]
fn never_policy_does_not_restart() {
    let mut spec = bare("once");
    spec.restart.policy = RestartPolicy::Never;
    let crashing = Behavior {
        exits_at_once: Some(ExitStatus::Code(2)),
        ..Behavior::default()
    };
    let mut sim = Sim::with_behaviors(vec![spec], &[("once", crashing)]);
    sim.run_until(secs(120));
    assert_eq!(sim.spawn_times("once"), [ms(0)]);
    assert_eq!(sim.state("once"), ServiceState::Failed);
    assert_eq!(sim.supervisor.next_deadline(), None);
}

#[test]
fn on_failure_restarts_on_non_zero_exit_only() {
    let mut clean = bare("job");
    clean.restart.policy = RestartPolicy::OnFailure;
    let mut failing = bare("flaky");
    failing.restart.policy = RestartPolicy::OnFailure;
    let mut sim = Sim::with_behaviors(
        vec![clean, failing],
        &[
            (
                "job",
                Behavior {
                    exits_at_once: Some(ExitStatus::Code(0)),
                    ..Behavior::default()
                },
            ),
            (
                "flaky",
                Behavior {
                    exits_at_once: Some(ExitStatus::Code(3)),
                    ..Behavior::default()
                },
            ),
        ],
    );
    sim.run_until(secs(2));
    assert_eq!(sim.spawn_times("job"), [ms(0)]);
    assert_eq!(sim.state("job"), ServiceState::Stopped);
    assert_eq!(
        sim.audit_reasons("job", AuditKind::Finished),
        ["exited with exit status 0; not restarting (policy on-failure)"]
    );
    assert!(sim.spawn_times("flaky").len() >= 4);
}

#[test]
fn shutdown_stops_in_reverse_order_with_sigterm_then_sigkill_after_the_grace() {
    let mut sim = Sim::with_behaviors(
        chain(),
        &[(
            "web",
            Behavior {
                ignores_term: true,
                ..Behavior::default()
            },
        )],
    );
    sim.run_until(secs(5));
    sim.operator(SupervisorEvent::Shutdown {
        mode: ShutdownMode::StopServices,
    });
    assert!(!sim.supervisor.is_shut_down());
    sim.run_until(secs(30));
    assert_eq!(
        sim.signals(),
        [
            (secs(5), "web".to_string(), StopSignal::Term),
            (secs(15), "web".to_string(), StopSignal::Kill),
            (secs(15), "api".to_string(), StopSignal::Term),
            (secs(15), "db".to_string(), StopSignal::Term),
        ]
    );
    assert!(sim.supervisor.is_shut_down());
    for name in ["db", "api", "web"] {
        assert_eq!(sim.state(name), ServiceState::Stopped);
        assert_eq!(sim.spawn_times(name).len(), 1, "{name} was not restarted");
    }
    assert_eq!(
        sim.audit_reasons("web", AuditKind::Kill),
        ["pid 1002 still running 10 s after SIGTERM; sending SIGKILL"]
    );
    assert!(
        sim.audit_reasons("db", AuditKind::Waiting)
            .iter()
            .any(|reason| reason.starts_with("waiting for dependents to stop first: api"))
    );
    let error = sim
        .supervisor
        .on_event(
            sim.now,
            SupervisorEvent::Start {
                service: "db".to_string(),
                reason: "operator".to_string(),
            },
        )
        .expect_err("shutting down");
    assert_eq!(
        error.to_string(),
        "the agent is shutting down; `db` cannot be started"
    );
}

#[test]
fn shutdown_can_leave_services_running() {
    let mut sim = Sim::new(chain());
    sim.run_until(secs(5));
    sim.operator(SupervisorEvent::Shutdown {
        mode: ShutdownMode::LeaveRunning,
    });
    sim.run_until(secs(60));
    assert!(sim.signals().is_empty());
    assert!(sim.supervisor.is_shut_down());
    assert_eq!(sim.live.len(), 3);
    for name in ["db", "api", "web"] {
        assert_eq!(sim.audit_reasons(name, AuditKind::LeftRunning).len(), 1);
    }
}

#[test]
fn operator_restart_of_a_failed_service_brings_the_chain_back() {
    let mut specs = vec![service("db", &[]), service("api", &["db"])];
    specs[0].restart.failed_after = 2;
    specs[0].restart.keep_retrying_when_failed = false;
    let mut sim = Sim::with_behaviors(
        specs,
        &[(
            "db",
            Behavior {
                exits_at_once: Some(ExitStatus::Code(1)),
                ..Behavior::default()
            },
        )],
    );
    sim.run_until(secs(30));
    assert_eq!(sim.state("db"), ServiceState::Failed);
    assert_eq!(sim.spawn_times("db").len(), 2, "not retrying");
    assert!(sim.spawn_times("api").is_empty(), "api never started");
    assert_eq!(sim.state("api"), ServiceState::Stopped);

    sim.set_behavior("db", Behavior::default());
    sim.operator(SupervisorEvent::Restart {
        service: "db".to_string(),
        reason: "operator: mesh service restart".to_string(),
    });
    sim.run_until(secs(31));
    assert_eq!(sim.state("db"), ServiceState::Healthy);
    assert_eq!(sim.state("api"), ServiceState::Healthy);
    assert_eq!(
        sim.audit_reasons("db", AuditKind::Restart),
        [
            "backoff over (after failure 1 of 2)",
            "operator: mesh service restart"
        ]
    );
    assert_eq!(
        sim.supervisor
            .status("db")
            .expect("known")
            .consecutive_failures,
        0
    );
}

#[test]
fn operator_stop_stops_dependents_first_and_start_brings_them_back() {
    let mut sim = Sim::new(chain());
    sim.run_until(secs(5));
    sim.operator(SupervisorEvent::Stop {
        service: "db".to_string(),
        reason: "operator: mesh service stop".to_string(),
    });
    let order: Vec<String> = sim
        .signals()
        .into_iter()
        .map(|(_, service, _)| service)
        .collect();
    assert_eq!(order, ["web", "api", "db"]);
    assert!(
        sim.audit_reasons("db", AuditKind::Stop)[0]
            .starts_with("operator: mesh service stop; sending SIGTERM")
    );
    assert!(
        sim.audit_reasons("web", AuditKind::DependencyStopped)[0]
            .starts_with("dependency api is unavailable (dependency db was stopped by request)")
    );
    for name in ["db", "api", "web"] {
        assert_eq!(sim.state(name), ServiceState::Stopped);
    }
    sim.run_until(secs(60));
    assert_eq!(
        sim.spawn_times("db").len(),
        1,
        "a stopped service stays stopped"
    );

    sim.operator(SupervisorEvent::Start {
        service: "db".to_string(),
        reason: "operator: mesh service start".to_string(),
    });
    sim.run_until(secs(62));
    for name in ["db", "api", "web"] {
        assert_eq!(sim.state(name), ServiceState::Healthy);
    }
    assert_eq!(
        sim.audit_reasons("db", AuditKind::Start)
            .last()
            .map(String::as_str),
        Some("operator: mesh service start")
    );
}

#[test]
fn spawn_failures_count_as_failures() {
    let mut spec = bare("missing");
    spec.restart.failed_after = 3;
    spec.restart.keep_retrying_when_failed = false;
    let mut sim = Sim::with_behaviors(
        vec![spec],
        &[(
            "missing",
            Behavior {
                spawn_error: Some("No such file or directory (os error 2)".to_string()),
                ..Behavior::default()
            },
        )],
    );
    sim.run_until(secs(10));
    assert_eq!(sim.spawn_times("missing"), [ms(0), ms(80), ms(240)]);
    assert_eq!(sim.state("missing"), ServiceState::Failed);
    assert_eq!(
        sim.audit_reasons("missing", AuditKind::GiveUp),
        [
            "could not spawn: No such file or directory (os error 2); failed after 3 consecutive failures; not retrying (keep_retrying_when_failed = false)"
        ]
    );
}

#[test]
fn the_failure_count_resets_after_being_healthy_for_reset_after() {
    let mut sim = Sim::new(vec![bare("svc")]);
    sim.run_until(secs(1));
    sim.kill("svc", ExitStatus::Signal(9));
    sim.run_until(secs(2));
    sim.kill("svc", ExitStatus::Signal(9));
    sim.run_until(secs(3));
    // Two quick crashes: 80 ms, then 160 ms.
    assert_eq!(sim.spawn_intervals("svc")[..2], [ms(1080), ms(1080)]);
    assert_eq!(sim.audit_reasons("svc", AuditKind::Backoff).len(), 2);
    assert!(
        sim.audit_reasons("svc", AuditKind::Backoff)[1]
            .contains("restarting in 160 ms (failure 2 of 5)")
    );
    // Healthy for 40 s, then a crash: back to the first delay.
    sim.run_until(secs(43));
    sim.kill("svc", ExitStatus::Signal(9));
    sim.run_until(secs(44));
    let backoffs = sim.audit_reasons("svc", AuditKind::Backoff);
    assert!(
        backoffs[2].contains("restarting in 80 ms (failure 1 of 5)"),
        "{backoffs:?}"
    );
    assert_eq!(sim.audit_reasons("svc", AuditKind::BackoffReset).len(), 1);
}

#[test]
fn spec_updates_add_remove_and_restart_services() {
    let mut sim = Sim::new(chain());
    sim.run_until(secs(5));
    let mut specs = vec![
        service("db", &[]),
        service("api", &["db"]),
        service("cache", &[]),
    ];
    specs[1].args.push("--verbose".to_string());
    // Where copies go is not what a copy runs: db keeps running.
    specs[0].target = Some("elsewhere".to_string());
    specs[0].placement.replicas = 2;
    let actions = sim
        .supervisor
        .apply_specs(sim.now, specs)
        .expect("valid set");
    sim.enqueue(actions);
    sim.run_until(secs(10));
    // web removed: stopped and forgotten.
    assert!(sim.supervisor.status("web").is_none());
    assert!(sim.pid_of("web").is_none());
    // api changed: restarted; cache new: started; db untouched (only its placement changed).
    assert_eq!(sim.spawn_times("api").len(), 2);
    assert_eq!(sim.spawn_times("cache"), [secs(5)]);
    assert_eq!(sim.spawn_times("db").len(), 1);
    for name in ["db", "api", "cache"] {
        assert_eq!(sim.state(name), ServiceState::Healthy);
    }
    assert_eq!(
        sim.audit_reasons("api", AuditKind::SpecChanged),
        ["spec changed; restarting with the new spec"]
    );
    assert_eq!(
        sim.audit_reasons("web", AuditKind::SpecChanged),
        ["removed from the desired state"]
    );
    assert!(sim.audit_reasons("db", AuditKind::SpecChanged).is_empty());
    let err = sim
        .supervisor
        .apply_specs(sim.now, vec![service("a", &["b"]), service("b", &["a"])])
        .expect_err("cycle");
    assert_eq!(err.to_string(), "dependency cycle: a -> b -> a");
}

#[test]
fn dependencies_on_other_nodes_follow_their_published_state() {
    let mut sim = Sim::new(vec![service("api", &["db"])]);
    sim.run_until(secs(5));
    assert!(sim.spawn_times("api").is_empty(), "db's state is unknown");
    sim.operator(SupervisorEvent::RemoteState {
        service: "db".to_string(),
        state: ServiceState::Healthy,
    });
    sim.run_until(secs(6));
    assert_eq!(sim.state("api"), ServiceState::Healthy);
    sim.operator(SupervisorEvent::RemoteState {
        service: "db".to_string(),
        state: ServiceState::Backoff,
    });
    assert!(sim.signals().is_empty(), "rides through a remote restart");
    sim.operator(SupervisorEvent::RemoteState {
        service: "db".to_string(),
        state: ServiceState::Failed,
    });
    assert!(
        sim.audit_reasons("api", AuditKind::DependencyStopped)[0]
            .starts_with("dependency db is failed (on another node)")
    );
    assert_eq!(sim.state("api"), ServiceState::Stopped);
}

#[test]
fn unknown_services_are_refused() {
    let mut sim = Sim::new(chain());
    let err = sim
        .supervisor
        .on_event(
            sim.now,
            SupervisorEvent::Restart {
                service: "nope".to_string(),
                reason: "operator".to_string(),
            },
        )
        .expect_err("unknown");
    assert_eq!(err.to_string(), "no service `nope` on this node");
    let err = sim
        .supervisor
        .on_event(
            sim.now,
            SupervisorEvent::Exited {
                service: "nope".to_string(),
                pid: 1,
                status: ExitStatus::Code(0),
            },
        )
        .expect_err("unknown");
    assert!(matches!(err, SupervisorError::UnknownService { .. }));
    sim.settle();
}

#[test]
fn same_seed_same_story() {
    let run = || {
        let mut specs = chain();
        for spec in &mut specs {
            spec.restart = RestartSpec::default();
        }
        let mut sim = Sim::with_behaviors(
            specs,
            &[(
                "db",
                Behavior {
                    exits_at_once: Some(ExitStatus::Code(1)),
                    ..Behavior::default()
                },
            )],
        );
        sim.run_until(secs(300));
        (sim.spawn_times("db"), sim.audits("db"), sim.audits("api"))
    };
    assert_eq!(run(), run());
}

// ---------------------------------------------------------------------------------------
// Following the document: placement, desired states, operator requests, remote states.
// Two nodes share the document: `runner` (this supervisor's node) and `requester`, whose wall
// clock is an hour behind the runner's.

mod document {
    use super::*;
    use crate::identity::{NodeId, NodeName};
    use crate::services::{self, ServiceAction, View, Writer};
    use crate::state::actor::EntryWrite;
    use crate::state::{InstanceRecord, InstanceState, MeshState, NodeRecord, ParsedSpecs};

    /// The runner's wall clock when the scenario starts (ms since the Unix epoch).
    const RUNNER_CLOCK_MS: i64 = 1_800_000_000_000;
    /// How far the requester's wall clock is behind the runner's: an hour.
    const REQUESTER_BEHIND_MS: i64 = 3_600_000;

    fn runner_id() -> NodeId {
        NodeId::from("id-runner")
    }

    fn requester_id() -> NodeId {
        NodeId::from("id-requester")
    }

    /// A document that knows both nodes.
    fn mesh() -> MeshState {
        let mut state = MeshState::default();
        for (id, name) in [(runner_id(), "runner"), (requester_id(), "requester")] {
            state.nodes.insert(
                id.to_string(),
                NodeRecord {
                    name: NodeName::from(name),
                    ..Default::default()
                },
            );
        }
        state
    }

    /// `node` writing at `now_ms` on its own clock.
    fn writer(node: NodeId, now_ms: i64) -> Writer {
        let name = if node == runner_id() {
            "runner"
        } else {
            "requester"
        };
        Writer {
            id: node,
            name: NodeName::from(name),
            now_ms,
        }
    }

    /// What the state actor does with a write, for service entries.
    fn write(state: &mut MeshState, writes: Vec<EntryWrite>) {
        for entry in writes {
            let EntryWrite::Service { name, record } = entry else {
                panic!("operations write services only");
            };
            state.services.insert(name, record);
        }
    }

    fn add(state: &mut MeshState, by: Writer, specs: Vec<ServiceSpec>) {
        let specs_parsed = ParsedSpecs::parse(state);
        let plan = services::add(View::new(state, &specs_parsed), &by, specs, None, &[])
            .expect("a valid add");
        write(state, plan.writes);
    }

    fn act(state: &mut MeshState, by: Writer, service: &str, action: ServiceAction) {
        let specs = ParsedSpecs::parse(state);
        let change =
            services::act(View::new(state, &specs), &by, service, action).expect("a known service");
        write(state, change.writes);
    }

    impl Sim {
        fn follow(&mut self, state: &MeshState) {
            let specs = ParsedSpecs::parse(state);
            let node_id = runner_id();
            let account_ok = |_: &ServiceSpec| None;
            // Placed on the runner: its home (the actor asks `crate::placement`).
            let view = View::new(state, &specs);
            let runs_here = view
                .active_specs()
                .filter(|(name, _, _)| services::placement(view, name).as_ref() == Some(&node_id))
                .map(|(name, _, _)| name.to_string())
                .collect();
            let rules = FollowRules {
                node_id: &node_id,
                runs_here: &runs_here,
                accept_services: accept::AcceptServices::All,
                max_services: 100,
                account_error: &account_ok,
            };
            let followed =
                self.supervisor
                    .follow_document(self.now, View::new(state, &specs), &rules);
            assert_eq!(followed.rejected, None);
            self.enqueue(followed.actions);
            self.settle();
        }

        /// A supervisor that starts following `state` (the run file's requests: `handled`).
        fn following(state: &MeshState, handled: BTreeMap<String, RequestStamp>) -> Self {
            let mut sim = Sim::new(Vec::new());
            let specs = ParsedSpecs::parse(state);
            sim.supervisor
                .start_following(View::new(state, &specs), handled);
            sim.follow(state);
            sim
        }
    }

    #[test]
    fn a_restart_requested_from_a_node_whose_clock_is_an_hour_behind_is_carried_out() {
        let mut state = mesh();
        add(
            &mut state,
            writer(runner_id(), RUNNER_CLOCK_MS),
            vec![service("db", &[])],
        );
        let mut sim = Sim::following(&state, BTreeMap::new());
        sim.run_until(secs(5));
        assert_eq!(sim.spawn_times("db"), [secs(0)]);
        // Asked 5 s after the runner started, by a clock that reads an hour earlier.
        let requester_now = RUNNER_CLOCK_MS + 5_000 - REQUESTER_BEHIND_MS;
        act(
            &mut state,
            writer(requester_id(), requester_now),
            "db",
            ServiceAction::Restart,
        );
        sim.follow(&state);
        sim.run_until(secs(10));
        assert_eq!(sim.spawn_times("db"), [secs(0), secs(5)]);
        assert_eq!(
            sim.audit_reasons("db", AuditKind::Restart),
            ["restart requested (from requester)"]
        );
        assert_eq!(sim.state("db"), ServiceState::Healthy);
    }

    #[test]
    fn the_same_request_is_acted_on_once_and_the_next_one_again() {
        let mut state = mesh();
        add(
            &mut state,
            writer(runner_id(), RUNNER_CLOCK_MS),
            vec![service("db", &[])],
        );
        let mut sim = Sim::following(&state, BTreeMap::new());
        sim.run_until(secs(5));
        act(
            &mut state,
            writer(requester_id(), 7),
            "db",
            ServiceAction::Restart,
        );
        sim.follow(&state);
        sim.run_until(secs(6));
        // The same document again, and one where only another service changed.
        sim.follow(&state);
        add(
            &mut state,
            writer(runner_id(), 8),
            vec![service("cache", &[])],
        );
        sim.follow(&state);
        sim.run_until(secs(10));
        assert_eq!(sim.spawn_times("db"), [secs(0), secs(5)]);
        // A second restart with the very same wall time still differs: its generation.
        act(
            &mut state,
            writer(requester_id(), 7),
            "db",
            ServiceAction::Restart,
        );
        assert_eq!(state.services["db"].request_generation, Some(2));
        sim.follow(&state);
        sim.run_until(secs(15));
        assert_eq!(sim.spawn_times("db"), [secs(0), secs(5), secs(10)]);
    }

    #[test]
    fn requests_made_before_this_start_or_handled_by_the_previous_run_are_not_replayed() {
        let mut state = mesh();
        add(
            &mut state,
            writer(runner_id(), RUNNER_CLOCK_MS),
            vec![service("db", &[])],
        );
        act(
            &mut state,
            writer(requester_id(), 1),
            "db",
            ServiceAction::Restart,
        );
        // Pending in the first document: history.
        let mut sim = Sim::following(&state, BTreeMap::new());
        sim.run_until(secs(5));
        assert_eq!(sim.spawn_times("db"), [secs(0)]);
        let handled = sim.supervisor.handled_requests().clone();
        assert_eq!(handled["db"].generation, 1);
        // The next run starts from a document that has not seen the request yet (recovered
        // from a peer, say); the run file says it was handled: it is not carried out again.
        let mut older = mesh();
        add(
            &mut older,
            writer(runner_id(), RUNNER_CLOCK_MS),
            vec![service("db", &[])],
        );
        let mut next_run = Sim::following(&older, handled);
        next_run.run_until(secs(5));
        next_run.follow(&state);
        next_run.run_until(secs(10));
        assert_eq!(next_run.spawn_times("db"), [secs(0)]);
    }

    #[test]
    fn a_service_added_stopped_never_spawns_and_start_by_request_brings_it_up() {
        let mut state = mesh();
        add(&mut state, writer(runner_id(), 1), vec![service("db", &[])]);
        act(
            &mut state,
            writer(requester_id(), 2),
            "db",
            ServiceAction::Stop,
        );
        let mut sim = Sim::following(&state, BTreeMap::new());
        sim.run_until(secs(5));
        assert!(sim.spawn_times("db").is_empty());
        act(
            &mut state,
            writer(requester_id(), 3),
            "db",
            ServiceAction::Start,
        );
        sim.follow(&state);
        sim.run_until(secs(10));
        assert_eq!(sim.spawn_times("db"), [secs(5)]);
        assert_eq!(sim.state("db"), ServiceState::Healthy);
        act(
            &mut state,
            writer(requester_id(), 4),
            "db",
            ServiceAction::Stop,
        );
        sim.follow(&state);
        sim.run_until(secs(15));
        assert_eq!(sim.state("db"), ServiceState::Stopped);
        assert!(
            sim.audit_reasons("db", AuditKind::Stop)[0]
                .starts_with("stopped by request (from requester); sending SIGTERM")
        );
    }

    #[test]
    fn a_dependency_placed_on_another_node_is_followed_through_its_published_instance() {
        let mut state = mesh();
        let mut db = service("db", &[]);
        db.target = Some("requester".to_string());
        add(
            &mut state,
            writer(runner_id(), 1),
            vec![db, service("api", &["db"])],
        );
        assert_eq!(
            state.services["db"].node_id,
            Some(requester_id()),
            "placed by name, stored by id"
        );
        let mut sim = Sim::following(&state, BTreeMap::new());
        sim.run_until(secs(5));
        assert!(sim.supervisor.status("db").is_none(), "db runs elsewhere");
        assert!(sim.spawn_times("api").is_empty(), "db's state is unknown");
        let publish = |state: &mut MeshState, published: InstanceState| {
            state.instances.insert(
                services::instance_key("db", &requester_id()),
                InstanceRecord {
                    service: "db".to_string(),
                    node: requester_id(),
                    state: published,
                    ..Default::default()
                },
            );
        };
        publish(&mut state, InstanceState::Healthy);
        sim.follow(&state);
        sim.run_until(secs(10));
        assert_eq!(sim.spawn_times("api"), [secs(5)]);
        assert_eq!(sim.state("api"), ServiceState::Healthy);
        publish(&mut state, InstanceState::Failed);
        sim.follow(&state);
        sim.run_until(secs(15));
        assert_eq!(sim.state("api"), ServiceState::Stopped);
    }
}
