//! The real service process: building its command (clean environment, account, working
//! dir, `$PORT` expansion, own process group), spawning it with its output captured into its
//! log ([`super::logs`]), waiting for its exit, and signalling its process group.
//!
//! It does not own: the log files themselves ([`super::logs`]), health probes
//! ([`super::probe`]), or when to spawn and signal (the supervisor core).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::error::LaunchError;
use super::logs::{LOG_CHANNEL_CAPACITY, LogFile, LogLimits, pump_lines};
use crate::supervisor::account;
use crate::supervisor::cgroup::ServiceCgroups;
use crate::supervisor::machine::{ExitStatus, StopSignal};
use crate::supervisor::spec::{ServiceSpec, expand_args};

/// A spawned service process: its pid (also its process-group id) and its log pumps.
#[derive(Debug)]
pub struct RunningProcess {
    service: String,
    pid: u32,
    child: Child,
    /// The log writer; ends once both pipes have closed and every line is written.
    log_writer: Option<JoinHandle<()>>,
}

impl RunningProcess {
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The process id, which is also the id of the service's process group.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to exit (and reaps it). Returns at once once it has; does not
    /// wait for the logs (descendants may still hold the pipes): see
    /// [`RunningProcess::wait_logs`].
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await.map(exit_status)
    }

    /// Waits until the log pumps have ended and every captured line is in the log file:
    /// after the process and all its descendants have closed stdout and stderr.
    pub async fn wait_logs(&mut self) {
        if let Some(writer) = self.log_writer.take()
            && let Err(err) = writer.await
        {
            tracing::warn!(service = %self.service, %err, "log writer task failed");
        }
    }
}

/// Maps an OS exit status to the core's: the exit code, else the signal that ended it.
pub fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitStatus::Code(code),
        (None, Some(signal)) => ExitStatus::Signal(signal),
        // `wait` only reports exited or killed processes; keep the raw status visible anyway.
        (None, None) => ExitStatus::Code(status.into_raw()),
    }
}

/// Variables a service inherits from the agent: where programs are, language and time zone,
/// and (for a service without `user`, which runs as the agent's user) who it is. Everything
/// else is set by the spec's `env`.
fn inherited_variable(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    matches!(
        name.as_ref(),
        "PATH" | "LANG" | "LANGUAGE" | "TZ" | "HOME" | "USER" | "LOGNAME"
    ) || name.starts_with("LC_")
}

/// A command for `program args` in the service's working dir and environment: a clean one
/// holding only the agent's [`inherited_variable`]s, then the spec's `env`, then `ports` (as built by [`ServiceSpec::port_env`]),
/// `MESH_NODE` and `MESH_SERVICE`. Arguments are `$PORT`-expanded. A spec without a working
/// dir runs in the agent's current directory. With `user` / `group`, it runs with those ids
/// (no supplementary groups) and `USER`, `LOGNAME`, `HOME` naming the user.
pub(super) fn service_command(
    spec: &ServiceSpec,
    program: &str,
    args: &[String],
    ports: &BTreeMap<String, u16>,
    node_name: &str,
) -> Result<Command, LaunchError> {
    let credentials =
        account::resolve(spec.user.as_deref(), spec.group.as_deref()).map_err(|source| {
            LaunchError::Account {
                service: spec.name.clone(),
                source,
            }
        })?;
    if let Some(dir) = &spec.working_dir
        && !dir.is_dir()
    {
        return Err(LaunchError::WorkingDir {
            service: spec.name.clone(),
            path: dir.clone(),
        });
    }
    let mut command = Command::new(program);
    command.args(expand_args(args, ports));
    // A clean environment, as systemd gives its services: the agent's own variables (its
    // working dir, shell, secrets an operator exported) are not the service's business, and a
    // failed service's log tail is readable by every local user.
    command.env_clear();
    command.envs(std::env::vars_os().filter(|(k, _)| inherited_variable(k)));
    if let Some(dir) = &spec.working_dir {
        command.current_dir(dir);
    }
    if let Some(credentials) = credentials {
        if let Some((user, home)) = &credentials.user {
            command
                .env("USER", user)
                .env("LOGNAME", user)
                .env("HOME", home);
        }
        // std orders it in the child: setgid, setgroups(0) (when root sets a uid), setuid.
        command.gid(credentials.gid);
        if let Some(uid) = credentials.uid {
            command.uid(uid);
        }
    }
    command.envs(&spec.env);
    for (variable, port) in ports {
        command.env(variable, port.to_string());
    }
    command.env("MESH_NODE", node_name);
    command.env("MESH_SERVICE", &spec.name);
    // Its own process group, so a stop reaches every descendant and a Ctrl-C at the agent's
    // terminal does not reach the service.
    command.process_group(0);
    command.stdin(Stdio::null());
    Ok(command)
}

/// Starts a service's process: `spec.command` with `$PORT`-expanded `spec.args`, in its own
/// process group, stdout and stderr captured into `log_dir/<service>.log` (appended to, so
/// restarts share one log) with rotation by `log_limits`. `ports` maps `PORT` / `PORT_<NAME>`
/// to the leased ports ([`ServiceSpec::port_env`]). The process is not killed when the
/// returned handle is dropped: stopping it is the supervisor's decision.
pub async fn spawn_service(
    spec: &ServiceSpec,
    ports: &BTreeMap<String, u16>,
    node_name: &str,
    log_dir: &Path,
    log_limits: LogLimits,
) -> Result<RunningProcess, LaunchError> {
    spawn_service_in(spec, ports, node_name, log_dir, log_limits, None).await
}

/// [`spawn_service`], with the process placed in the service's cgroup (when `cgroups` is
/// given) before it execs: it and everything it starts stay there.
pub async fn spawn_service_in(
    spec: &ServiceSpec,
    ports: &BTreeMap<String, u16>,
    node_name: &str,
    log_dir: &Path,
    log_limits: LogLimits,
    cgroups: Option<&ServiceCgroups>,
) -> Result<RunningProcess, LaunchError> {
    tokio::fs::create_dir_all(log_dir)
        .await
        .map_err(|source| LaunchError::LogDir {
            path: log_dir.to_path_buf(),
            source,
        })?;
    let log = LogFile::open(log_dir, &spec.name, log_limits).await?;

    let mut command = service_command(spec, &spec.command, &spec.args, ports, node_name)?;
    if let Some(cgroups) = cgroups {
        let procs = cgroups
            .procs_file(&spec.name)
            .map_err(|source| LaunchError::Cgroup {
                service: spec.name.clone(),
                path: cgroups.path(&spec.name),
                source,
            })?;
        crate::supervisor::cgroup::join_before_exec(command.as_std_mut(), procs);
    }
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    let mut child = command.spawn().map_err(|source| LaunchError::Spawn {
        service: spec.name.clone(),
        command: spec.command.clone(),
        source,
    })?;
    let pid = child.id().ok_or_else(|| LaunchError::NoPid {
        service: spec.name.clone(),
    })?;

    let (lines, inbox) = mpsc::channel(LOG_CHANNEL_CAPACITY);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(pump_lines(stdout, lines.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(pump_lines(stderr, lines));
    }
    let service = spec.name.clone();
    let log_writer = tokio::spawn(async move {
        let mut inbox = inbox;
        if let Err(err) = log.run(&mut inbox).await {
            tracing::warn!(%service, %err, "cannot write the service log; discarding its output");
            // Keep draining: closing the pipes would kill the service with SIGPIPE.
            while inbox.recv().await.is_some() {}
        }
    });
    Ok(RunningProcess {
        service: spec.name.clone(),
        pid,
        child,
        log_writer: Some(log_writer),
    })
}

/// Sends `signal` to the process group whose id is `pid` (the service's process, which leads
/// its own group), reaching every descendant that stayed in it. Refuses pids 0 and 1: the
/// group `-1` means "every process this user may signal".
pub fn signal_group(pid: u32, signal: StopSignal) -> io::Result<()> {
    let pgid = i32::try_from(pid)
        .ok()
        .filter(|pgid| *pgid > 1)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{pid} is not a process group id mesh may signal"),
            )
        })?;
    kill_process_group(pgid, signal)
}

/// `kill(-pgid, sig)` through the `kill` program (procps or util-linux; both take
/// `-s SIG -- -PGID`), as mesh does not depend on `libc`. About a millisecond per call,
/// which a stop (two signals per service at most) does not notice. With `libc` this becomes
/// `libc::kill(-pgid, sig)` and `io::Error::last_os_error()`.
fn kill_process_group(pgid: i32, signal: StopSignal) -> io::Result<()> {
    let name = match signal {
        StopSignal::Term => "TERM",
        StopSignal::Kill => "KILL",
    };
    let output = std::process::Command::new("kill")
        .args(["-s", name, "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "kill -s {name} -- -{pgid}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}
