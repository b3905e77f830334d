//! The launcher seam: what the supervisor actor needs from the operating system for its
//! service processes ([`Launcher`]: spawn, signal, probe), and the request and answer types.
//! The real implementation is [`super::ProcessLauncher`]; [`super::fake`] has the in-memory one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use futures::future::BoxFuture;

use super::error::LaunchError;
use super::logs::LogLimits;
use crate::supervisor::cgroup::ServiceCgroups;
use crate::supervisor::machine::{ExitStatus, HealthOutcome, StopSignal};
use crate::supervisor::spec::ServiceSpec;

/// What the supervisor actor asks a [`Launcher`] to start: one process of one service.
#[derive(Clone, Copy, Debug)]
pub struct Launch<'a> {
    /// The spec, with its working dir already decided.
    pub spec: &'a ServiceSpec,
    /// `PORT` / `PORT_<NAME>` → leased port ([`ServiceSpec::port_env`]).
    pub ports: &'a BTreeMap<String, u16>,
    /// This node's name (`MESH_NODE`).
    pub node_name: &'a str,
    pub log_dir: &'a Path,
    pub log_limits: LogLimits,
    /// This node's service cgroups, when it uses them.
    pub cgroups: Option<&'a ServiceCgroups>,
}

/// A started service process.
pub struct Launched {
    /// Its id, also its process-group id (for a fake launcher: an id no real process has).
    pub pid: u32,
    /// Resolves once the process has exited and what it left behind has been stopped, so a
    /// restart never runs next to an orphan of the previous start. The actor awaits it in
    /// a task of its own.
    pub exit: BoxFuture<'static, ExitStatus>,
}

impl fmt::Debug for Launched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launched").field("pid", &self.pid).finish()
    }
}

/// What the supervisor actor needs from the operating system for its service processes.
/// One instance per node; calls for different services may overlap.
pub trait Launcher: Send + Sync + fmt::Debug {
    /// Starts one process of `launch.spec`.
    fn spawn<'a>(&'a self, launch: Launch<'a>) -> BoxFuture<'a, Result<Launched, LaunchError>>;

    /// Sends `signal` to the process `pid` of `service` and everything it started. A process
    /// already gone is not an error worth reporting: its exit is on its way.
    fn signal(&self, service: &str, pid: u32, signal: StopSignal, cgroups: Option<&ServiceCgroups>);

    /// Runs `spec`'s health check once against process `pid`, with its `PORT*` map. A
    /// service without a health check passes.
    fn probe(
        &self,
        spec: ServiceSpec,
        ports: BTreeMap<String, u16>,
        node_name: String,
        pid: u32,
    ) -> BoxFuture<'static, HealthOutcome>;
}
