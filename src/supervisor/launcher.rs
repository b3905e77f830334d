//! Launcher and prober: the I/O edge that carries out the supervisor core's process actions.
//!
//! The seam is the [`Launcher`] trait: what the supervisor actor needs from the operating
//! system for one service process — spawn it ([`Launcher::spawn`], answering with its pid and
//! a future of its end), signal it ([`Launcher::signal`]) and run one health check
//! ([`Launcher::probe`]). The actor holds one `Arc<dyn Launcher>` from its
//! [`super::actor::SupervisorConfig`]:
//! - [`ProcessLauncher`] (the default) runs real processes, through the modules below;
//! - [`fake::FakeLauncher`] runs none: its "processes" listen on their leased ports in memory,
//!   end on a signal, and crash when a test says so, so whole meshes with services run
//!   in-process and in paused time.
//!
//! The real launcher owns, for one service at a time:
//! - spawning its process ([`spawn_service`], in [`process`]): `$PORT` expansion of the
//!   arguments, the environment (`PORT`, `PORT_<NAME>`, `MESH_NODE`, `MESH_SERVICE` on top of
//!   the spec's and the agent's), its own process group (and cgroup), stdin from `/dev/null`;
//! - capturing its stdout and stderr ([`logs`]), interleaved line by line as they come, into
//!   `LOG_DIR/<service>.log` with size-based rotation (`<service>.log.1` is the newest rotated
//!   file, up to `<service>.log.<keep>`), and reading them back ([`tail_log`]);
//! - waiting for its exit as the core's [`ExitStatus`] ([`RunningProcess::wait`]), then
//!   stopping what it left behind in its cgroup or process group;
//! - signalling its process group ([`signal_group`]) and what left it in its cgroup;
//! - running one health check ([`probe`], [`probe_service`], in [`probe`](mod@probe)) as the
//!   core's [`HealthOutcome`].
//!
//! It does not own: when to spawn, signal or probe (the [`super::machine`] state machine
//! decides), which ports a service gets (the port allocator; callers pass the
//! [`ServiceSpec::port_env`] map), the leftovers of an earlier agent run ([`super::runfile`],
//! [`super::cgroup`], handled by the actor at start), or the task that turns actions into
//! calls and results back into [`super::SupervisorEvent`]s.
//!
//! Tasks per running service: two pumps (stdout, stderr) feeding one bounded channel, and one
//! log writer draining it. The pumps end when the pipes close (the process and every
//! descendant holding them have exited); the writer ends when both pumps have. A slow disk
//! slows the service down (its pipe fills) rather than dropping lines or growing memory.
//! Spec: `protocol/service-spec.md`.

mod error;
pub mod fake;
mod logs;
mod probe;
pub(crate) mod process;
mod seam;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::cgroup::ServiceCgroups;
use super::machine::{ExitStatus, HealthOutcome, StopSignal};
use super::runfile;
use super::spec::ServiceSpec;

pub use error::LaunchError;
pub use logs::{
    DEFAULT_LOG_KEEP, DEFAULT_LOG_MAX_BYTES, LOG_CHANNEL_CAPACITY, LOG_READ_CHUNK, LogLimits,
    MAX_LOG_LINE_BYTES, log_len, log_path, read_log_since, rotated_log_path, tail_log,
};
pub use probe::{EXEC_REAP_CEILING, MAX_HTTP_RESPONSE_BYTES, probe, probe_service};
pub use process::{RunningProcess, exit_status, signal_group, spawn_service, spawn_service_in};
pub use seam::{Launch, Launched, Launcher};

/// The real launcher: processes in their own process group (and cgroup), logs on disk,
/// probes over loopback.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessLauncher;

impl ProcessLauncher {
    /// The launcher as [`super::actor::SupervisorConfig::launcher`] holds it.
    pub fn shared() -> Arc<dyn Launcher> {
        Arc::new(ProcessLauncher)
    }
}

impl Launcher for ProcessLauncher {
    fn spawn<'a>(&'a self, launch: Launch<'a>) -> BoxFuture<'a, Result<Launched, LaunchError>> {
        Box::pin(async move {
            let mut process = spawn_service_in(
                launch.spec,
                launch.ports,
                launch.node_name,
                launch.log_dir,
                launch.log_limits,
                launch.cgroups,
            )
            .await?;
            let pid = process.pid();
            let name = launch.spec.name.clone();
            let cgroups = launch.cgroups.cloned();
            let grace = launch.spec.stop_grace.min(runfile::LEFTOVER_GRACE);
            let exit = Box::pin(async move {
                let status = match process.wait().await {
                    Ok(status) => status,
                    Err(e) => {
                        tracing::warn!(service = %name, pid, error = %e, "cannot wait for the process");
                        ExitStatus::Code(-1)
                    }
                };
                // The main process is gone: what it left behind (in its cgroup, else its
                // process group) is stopped before the exit counts.
                let service = name.clone();
                let drained = tokio::task::spawn_blocking(move || match cgroups {
                    Some(cgroups) => cgroups.drain_blocking(&service, grace),
                    None => runfile::drain_group_blocking(pid, grace),
                })
                .await
                .unwrap_or_default();
                if drained.0 > 0 {
                    tracing::info!(service = %name, pid, killed = drained.1, "stopped what the service's main process left behind");
                }
                status
            });
            Ok(Launched { pid, exit })
        })
    }

    fn signal(
        &self,
        service: &str,
        pid: u32,
        signal: StopSignal,
        cgroups: Option<&ServiceCgroups>,
    ) {
        if let Err(e) = signal_group(pid, signal) {
            // Already gone: its exit report is on its way.
            tracing::debug!(%service, pid, error = %e, "signal not delivered");
        }
        // Whatever left the process group is still in the service's cgroup.
        if let Some(cgroups) = cgroups {
            cgroups.signal_outside_group(service, signal, Some(pid));
        }
    }

    fn probe(
        &self,
        spec: ServiceSpec,
        ports: BTreeMap<String, u16>,
        node_name: String,
        _pid: u32,
    ) -> BoxFuture<'static, HealthOutcome> {
        Box::pin(async move { probe_service(&spec, &ports, &node_name).await })
    }
}

#[cfg(test)]
mod tests;
