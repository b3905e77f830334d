//! A [`Launcher`] without processes, for tests of whole nodes and meshes in one process (and
//! in paused time): a fake process "listens" on every port it was given from spawn until it
//! ends, ends on any signal (`SIGTERM` as signal 15, `SIGKILL` as 9), and crashes when the test
//! says so ([`FakeLauncher::crash`]). Health checks look at those ports in memory: `tcp` and
//! `http` pass while a live fake process holds the probed port, `exec` while the probed
//! process lives; [`FakeLauncher::set_healthy`] makes a service's checks fail.
//!
//! It does not write logs, use cgroups or accounts, or touch a socket: leases still go
//! through the real port allocator, which sees nothing listening (a passed health check is
//! what marks them `in-use`). Pids start at [`FAKE_PID_BASE`], above any Linux pid, so no
//! real process is ever mistaken for one of them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::error::LaunchError;
use super::seam::{Launch, Launched, Launcher};
use crate::supervisor::cgroup::ServiceCgroups;
use crate::supervisor::machine::{ExitStatus, HealthOutcome, StopSignal};
use crate::supervisor::spec::{HealthCheck, ServiceSpec};

/// First pid handed out. Linux pids stay below `pid_max`, at most 2^22 (4,194,304).
pub const FAKE_PID_BASE: u32 = 10_000_000;
/// Signal number reported for a process ended by `SIGTERM`.
const SIGTERM: i32 = 15;
/// Signal number reported for a process ended by `SIGKILL`.
const SIGKILL: i32 = 9;

/// One spawn the fake launcher carried out, as a test may inspect it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeLaunch {
    pub service: String,
    pub pid: u32,
    /// `PORT*` → port, as the real process would have had in its environment.
    pub ports: BTreeMap<String, u16>,
    pub node_name: String,
}

/// A live fake process.
#[derive(Debug)]
struct FakeProcess {
    service: String,
    /// Ports it "listens" on.
    ports: BTreeSet<u16>,
    /// Ends it: the actor's exit future resolves with the status sent.
    exit: oneshot::Sender<ExitStatus>,
}

#[derive(Debug, Default)]
struct FakeWorld {
    next_pid: u32,
    processes: BTreeMap<u32, FakeProcess>,
    launches: Vec<FakeLaunch>,
    /// Services whose health checks fail.
    unhealthy: BTreeSet<String>,
    /// Services whose spawns fail, with the error text.
    refused: BTreeMap<String, String>,
}

impl FakeWorld {
    /// Ends process `pid` with `status`; whether it was alive.
    fn end(&mut self, pid: u32, status: ExitStatus) -> bool {
        match self.processes.remove(&pid) {
            Some(process) => {
                // The actor may have stopped waiting (shutdown): nothing to tell then.
                let _ = process.exit.send(status);
                true
            }
            None => false,
        }
    }

    fn pid_of(&self, service: &str) -> Option<u32> {
        self.processes
            .iter()
            .find(|(_, p)| p.service == service)
            .map(|(pid, _)| *pid)
    }
}

/// The fake launcher of one node. Share it (`Arc`) between the node's configuration and
/// the test that drives it.
#[derive(Debug, Default)]
pub struct FakeLauncher {
    world: Mutex<FakeWorld>,
}

impl FakeLauncher {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            world: Mutex::new(FakeWorld {
                next_pid: FAKE_PID_BASE,
                ..FakeWorld::default()
            }),
        })
    }

    fn world(&self) -> std::sync::MutexGuard<'_, FakeWorld> {
        self.world
            .lock()
            .expect("the fake world lock is never poisoned")
    }

    /// The pid of `service`'s live process, if one runs.
    pub fn pid_of(&self, service: &str) -> Option<u32> {
        self.world().pid_of(service)
    }

    /// Every spawn so far, oldest first.
    pub fn launches(&self) -> Vec<FakeLaunch> {
        self.world().launches.clone()
    }

    /// How many times `service` was spawned.
    pub fn launch_count(&self, service: &str) -> usize {
        self.world()
            .launches
            .iter()
            .filter(|l| l.service == service)
            .count()
    }

    /// Whether a live fake process listens on `port`.
    pub fn listening(&self, port: u16) -> bool {
        self.world()
            .processes
            .values()
            .any(|p| p.ports.contains(&port))
    }

    /// Ends `service`'s live process with `status`, as a crash would. Whether one ran.
    pub fn crash(&self, service: &str, status: ExitStatus) -> bool {
        let mut world = self.world();
        match world.pid_of(service) {
            Some(pid) => world.end(pid, status),
            None => false,
        }
    }

    /// Makes `service`'s health checks pass (`true`, the default) or fail.
    pub fn set_healthy(&self, service: &str, healthy: bool) {
        let mut world = self.world();
        if healthy {
            world.unhealthy.remove(service);
        } else {
            world.unhealthy.insert(service.to_string());
        }
    }

    /// Makes `service`'s next spawns fail with `error` (`None`: succeed again).
    pub fn refuse_spawn(&self, service: &str, error: Option<&str>) {
        let mut world = self.world();
        match error {
            Some(error) => world.refused.insert(service.to_string(), error.to_string()),
            None => world.refused.remove(service),
        };
    }
}

impl Launcher for FakeLauncher {
    fn spawn<'a>(&'a self, launch: Launch<'a>) -> BoxFuture<'a, Result<Launched, LaunchError>> {
        let result = {
            let mut world = self.world();
            if let Some(error) = world.refused.get(&launch.spec.name) {
                Err(LaunchError::Spawn {
                    service: launch.spec.name.clone(),
                    command: launch.spec.command.clone(),
                    source: std::io::Error::other(error.clone()),
                })
            } else {
                let pid = world.next_pid;
                world.next_pid += 1;
                let (exit_tx, exit_rx) = oneshot::channel();
                world.processes.insert(
                    pid,
                    FakeProcess {
                        service: launch.spec.name.clone(),
                        ports: launch.ports.values().copied().collect(),
                        exit: exit_tx,
                    },
                );
                world.launches.push(FakeLaunch {
                    service: launch.spec.name.clone(),
                    pid,
                    ports: launch.ports.clone(),
                    node_name: launch.node_name.to_string(),
                });
                let exit: BoxFuture<'static, ExitStatus> = Box::pin(async move {
                    // A dropped sender means the launcher itself is gone: as good as killed.
                    exit_rx.await.unwrap_or(ExitStatus::Signal(SIGKILL))
                });
                Ok(Launched { pid, exit })
            }
        };
        Box::pin(std::future::ready(result))
    }

    fn signal(
        &self,
        _service: &str,
        pid: u32,
        signal: StopSignal,
        _cgroups: Option<&ServiceCgroups>,
    ) {
        let number = match signal {
            StopSignal::Term => SIGTERM,
            StopSignal::Kill => SIGKILL,
        };
        self.world().end(pid, ExitStatus::Signal(number));
    }

    fn probe(
        &self,
        spec: ServiceSpec,
        ports: BTreeMap<String, u16>,
        _node_name: String,
        pid: u32,
    ) -> BoxFuture<'static, HealthOutcome> {
        let outcome = (|| {
            let Some(health) = &spec.health else {
                return HealthOutcome::Passed;
            };
            let world = self.world();
            if world.unhealthy.contains(&spec.name) {
                return HealthOutcome::Failed {
                    detail: "fake: told to fail its health checks".to_string(),
                };
            }
            match &health.check {
                HealthCheck::Exec { .. } if world.processes.contains_key(&pid) => {
                    HealthOutcome::Passed
                }
                HealthCheck::Exec { .. } => HealthOutcome::Failed {
                    detail: format!("fake: process {pid} is gone"),
                },
                HealthCheck::Tcp | HealthCheck::Http { .. } => {
                    let port = spec.health_port(&ports);
                    match port {
                        Some(port) if world.processes.values().any(|p| p.ports.contains(&port)) => {
                            HealthOutcome::Passed
                        }
                        Some(port) => HealthOutcome::Failed {
                            detail: format!("fake: nothing listens on 127.0.0.1:{port}"),
                        },
                        None => HealthOutcome::Failed {
                            detail: "no port to probe".to_string(),
                        },
                    }
                }
            }
        })();
        Box::pin(std::future::ready(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::spec::{HealthSpec, PortSpec};

    fn spec_with_tcp_check(name: &str) -> ServiceSpec {
        let mut spec = ServiceSpec::new(name, "fake");
        spec.ports = vec![PortSpec::auto()];
        spec.health = Some(HealthSpec::new(HealthCheck::Tcp));
        spec
    }

    #[tokio::test]
    async fn a_fake_process_listens_until_signalled_and_then_exits() {
        let launcher = FakeLauncher::new();
        let spec = spec_with_tcp_check("db");
        let ports = BTreeMap::from([("PORT".to_string(), 20000)]);
        let launched = launcher
            .spawn(Launch {
                spec: &spec,
                ports: &ports,
                node_name: "n1",
                log_dir: std::path::Path::new("/nonexistent"),
                log_limits: Default::default(),
                cgroups: None,
            })
            .await
            .expect("fake spawn");
        assert!(launched.pid >= FAKE_PID_BASE);
        assert!(launcher.listening(20000));
        let probe = launcher.probe(spec.clone(), ports.clone(), "n1".into(), launched.pid);
        assert_eq!(probe.await, HealthOutcome::Passed);
        launcher.set_healthy("db", false);
        let probe = launcher.probe(spec.clone(), ports.clone(), "n1".into(), launched.pid);
        assert!(matches!(probe.await, HealthOutcome::Failed { .. }));
        launcher.signal("db", launched.pid, StopSignal::Term, None);
        assert_eq!(launched.exit.await, ExitStatus::Signal(SIGTERM));
        assert!(!launcher.listening(20000));
        assert_eq!(launcher.pid_of("db"), None);
    }

    #[tokio::test]
    async fn a_crash_ends_the_process_with_the_given_status() {
        let launcher = FakeLauncher::new();
        let spec = ServiceSpec::new("api", "fake");
        let ports = BTreeMap::new();
        let launch = Launch {
            spec: &spec,
            ports: &ports,
            node_name: "n1",
            log_dir: std::path::Path::new("/nonexistent"),
            log_limits: Default::default(),
            cgroups: None,
        };
        let launched = launcher.spawn(launch).await.expect("fake spawn");
        assert!(launcher.crash("api", ExitStatus::Code(3)));
        assert_eq!(launched.exit.await, ExitStatus::Code(3));
        assert!(
            !launcher.crash("api", ExitStatus::Code(3)),
            "nothing left to crash"
        );
        launcher.refuse_spawn("api", Some("no such program"));
        assert!(launcher.spawn(launch).await.is_err());
        assert_eq!(launcher.launch_count("api"), 1);
    }
}
