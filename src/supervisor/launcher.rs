//! Launcher and prober: the I/O edge that carries out the supervisor core's process actions.
//!
//! Owns, for one service at a time:
//! - spawning its process ([`spawn_service`]): `$PORT` expansion of the arguments, the
//!   environment (`PORT`, `PORT_<NAME>`, `MESH_NODE`, `MESH_SERVICE` on top of the spec's and
//!   the agent's), its own process group, stdin from `/dev/null`;
//! - capturing its stdout and stderr, interleaved line by line as they come, into
//!   `LOG_DIR/<service>.log` with size-based rotation (`<service>.log.1` is the newest rotated
//!   file, up to `<service>.log.<keep>`), and reading them back ([`tail_log`]);
//! - waiting for its exit as the core's [`ExitStatus`] ([`RunningProcess::wait`]);
//! - signalling its process group ([`signal_group`]);
//! - running one health check ([`probe`], [`probe_service`]) as the core's [`HealthOutcome`].
//!
//! It does not own: when to spawn, signal or probe (the [`super::machine`] state machine
//! decides), which ports a service gets (the port allocator; callers pass the
//! [`ServiceSpec::port_env`] map), or the task that turns actions into calls and results back
//! into [`super::SupervisorEvent`]s.
//!
//! Tasks per running service: two pumps (stdout, stderr) feeding one bounded channel, and one
//! log writer draining it. The pumps end when the pipes close (the process and every
//! descendant holding them have exited); the writer ends when both pumps have. A slow disk
//! slows the service down (its pipe fills) rather than dropping lines or growing memory.
//! Spec: `protocol/service-spec.md`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::account::{self, AccountError};
use super::cgroup::ServiceCgroups;
use super::machine::{ExitStatus, HealthOutcome, StopSignal};
use super::spec::{HealthCheck, HealthSpec, ServiceSpec, expand_args};

/// Default size at which a service's log file is rotated, in bytes. 4 MiB holds hours of
/// ordinary service chatter, and with [`DEFAULT_LOG_KEEP`] bounds one service's logs to
/// 16 MiB: small enough for a Raspberry Pi's SD card with a dozen services.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Default number of rotated files kept besides the current one (`.log.1` ... `.log.3`).
pub const DEFAULT_LOG_KEEP: usize = 3;
/// Longest line written as one piece, in bytes. A longer line (or output with no newline)
/// is cut into pieces of this size, each ending in `\n`, so one pump's memory stays bounded
/// whatever the service prints.
pub const MAX_LOG_LINE_BYTES: usize = 64 * 1024;
/// Lines buffered between the pumps and the log writer. 256 lines absorb a burst while the
/// writer rotates; beyond that the pumps wait, and so does the service on its full pipe.
pub const LOG_CHANNEL_CAPACITY: usize = 256;
/// How long an overrunning exec check is waited for after SIGKILL to its group, to reap it.
/// A killed process is gone within milliseconds; 1 s only guards against a stuck kernel.
pub const EXEC_REAP_CEILING: Duration = Duration::from_secs(1);
/// Most bytes of an HTTP health response read, looking for the status line. A status line
/// is a few dozen bytes; 4 KiB tolerates anything sane and bounds a misbehaving server.
pub const MAX_HTTP_RESPONSE_BYTES: usize = 4 * 1024;

/// Most bytes one [`read_log_since`] call reads: a follow request stays small however far
/// behind it is.
pub const LOG_READ_CHUNK: u64 = 256 * 1024;

/// Size-based rotation of a service's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    /// A line that would take the current file past this many bytes goes into a fresh file
    /// (the current one is rotated first). Files stay within it unless one line alone is
    /// longer (at most [`MAX_LOG_LINE_BYTES`]).
    pub max_bytes: u64,
    /// Rotated files kept (`.log.1` newest ... `.log.<keep>` oldest); older ones are deleted.
    /// 0 keeps only the current file.
    pub keep: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_LOG_MAX_BYTES,
            keep: DEFAULT_LOG_KEEP,
        }
    }
}

/// Why a service could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot create the log directory {}: {source}", path.display())]
    LogDir { path: PathBuf, source: io::Error },
    #[error("cannot open the log file {}: {source}", path.display())]
    LogFile { path: PathBuf, source: io::Error },
    #[error("service `{service}`: cannot start `{command}`: {source}")]
    Spawn {
        service: String,
        command: String,
        source: io::Error,
    },
    #[error("service `{service}`: {source}")]
    Account {
        service: String,
        source: AccountError,
    },
    #[error("service `{service}`: working_dir {} does not exist or is not a directory", path.display())]
    WorkingDir { service: String, path: PathBuf },
    #[error("service `{service}`: cannot prepare its cgroup {}: {source}", path.display())]
    Cgroup {
        service: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("service `{service}`: the process exited before its pid could be read")]
    NoPid { service: String },
}

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

/// The path of a service's current log file: `LOG_DIR/<service>.log`.
pub fn log_path(log_dir: &Path, service: &str) -> PathBuf {
    log_dir.join(format!("{service}.log"))
}

/// The path of rotated file `index` (1 is the newest): `LOG_DIR/<service>.log.<index>`.
pub fn rotated_log_path(log_dir: &Path, service: &str, index: usize) -> PathBuf {
    log_dir.join(format!("{service}.log.{index}"))
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
fn service_command(
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
        super::cgroup::join_before_exec(command.as_std_mut(), procs);
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

/// Reads one pipe line by line (pieces of at most [`MAX_LOG_LINE_BYTES`], each ending in
/// `\n`) into the log channel, until the pipe closes or the writer is gone.
async fn pump_lines(pipe: impl AsyncRead + Unpin, lines: mpsc::Sender<Vec<u8>>) {
    let mut reader = BufReader::new(pipe);
    loop {
        let mut line = Vec::new();
        match read_line_bounded(&mut reader, &mut line, MAX_LOG_LINE_BYTES).await {
            Ok(0) => return,
            Ok(_) => {
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                if lines.send(line).await.is_err() {
                    return;
                }
            }
            Err(err) => {
                tracing::debug!(%err, "service output pipe read failed");
                return;
            }
        }
    }
}

/// Appends bytes up to and including the next `\n`, or `max` bytes, or what is left before
/// end of file, whichever comes first. Returns how many bytes were appended (0: end of file).
async fn read_line_bounded<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    let mut read = 0;
    while read < max {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            break;
        }
        let room = max - read;
        let window = &available[..available.len().min(room)];
        let (taken, done) = match window.iter().position(|byte| *byte == b'\n') {
            Some(newline) => (newline + 1, true),
            None => (window.len(), false),
        };
        line.extend_from_slice(&window[..taken]);
        reader.consume(taken);
        read += taken;
        if done {
            break;
        }
    }
    Ok(read)
}

/// The current log file of a service and its rotation.
struct LogFile {
    dir: PathBuf,
    service: String,
    limits: LogLimits,
    file: tokio::fs::File,
    /// Bytes in the current file.
    size: u64,
}

impl LogFile {
    async fn open(dir: &Path, service: &str, limits: LogLimits) -> Result<Self, LaunchError> {
        let path = log_path(dir, service);
        let file = Self::open_append(&path).await?;
        let size = file
            .metadata()
            .await
            .map_err(|source| LaunchError::LogFile {
                path: path.clone(),
                source,
            })?
            .len();
        Ok(Self {
            dir: dir.to_path_buf(),
            service: service.to_string(),
            limits,
            file,
            size,
        })
    }

    async fn open_append(path: &Path) -> Result<tokio::fs::File, LaunchError> {
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            // Never through a symlink: the agent writes logs as root, and a planted link
            // would let whoever planted it aim those writes at any file.
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)
            .await
            .map_err(|source| LaunchError::LogFile {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Writes every line received until both pumps have ended. Flushes whenever the channel
    /// is momentarily empty, so readers see output promptly.
    async fn run(mut self, inbox: &mut mpsc::Receiver<Vec<u8>>) -> Result<(), LaunchError> {
        while let Some(line) = inbox.recv().await {
            self.write_line(&line).await?;
            while let Ok(line) = inbox.try_recv() {
                self.write_line(&line).await?;
            }
            self.flush().await?;
        }
        self.flush().await
    }

    async fn write_line(&mut self, line: &[u8]) -> Result<(), LaunchError> {
        let length = line.len() as u64;
        if self.size > 0 && self.size + length > self.limits.max_bytes {
            self.rotate().await?;
        }
        self.file
            .write_all(line)
            .await
            .map_err(|source| self.file_error(source))?;
        self.size += length;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), LaunchError> {
        self.file
            .flush()
            .await
            .map_err(|source| self.file_error(source))
    }

    /// `.log.<keep-1>` → `.log.<keep>` ... `.log` → `.log.1`, then a fresh `.log`. Everything
    /// written so far is flushed first, so no line is lost or split by a rotation.
    async fn rotate(&mut self) -> Result<(), LaunchError> {
        self.flush().await?;
        let current = log_path(&self.dir, &self.service);
        let rename_error = |path: &Path, source| LaunchError::LogFile {
            path: path.to_path_buf(),
            source,
        };
        if self.limits.keep == 0 {
            remove_if_exists(&current)
                .await
                .map_err(|source| rename_error(&current, source))?;
        } else {
            let oldest = rotated_log_path(&self.dir, &self.service, self.limits.keep);
            remove_if_exists(&oldest)
                .await
                .map_err(|source| rename_error(&oldest, source))?;
            for index in (1..self.limits.keep).rev() {
                let from = rotated_log_path(&self.dir, &self.service, index);
                let to = rotated_log_path(&self.dir, &self.service, index + 1);
                rename_if_exists(&from, &to)
                    .await
                    .map_err(|source| rename_error(&from, source))?;
            }
            let newest = rotated_log_path(&self.dir, &self.service, 1);
            tokio::fs::rename(&current, &newest)
                .await
                .map_err(|source| rename_error(&current, source))?;
        }
        self.file = Self::open_append(&current).await?;
        self.size = 0;
        Ok(())
    }

    fn file_error(&self, source: io::Error) -> LaunchError {
        LaunchError::LogFile {
            path: log_path(&self.dir, &self.service),
            source,
        }
    }
}

async fn remove_if_exists(path: &Path) -> io::Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

async fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match tokio::fs::rename(from, to).await {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The last `n` lines of a service's log, oldest first, across the current and rotated
/// files. No log yet gives no lines. Bytes that are not UTF-8 are replaced (U+FFFD).
/// Reads whole files, so the cost is bounded by [`LogLimits::max_bytes`] × (keep + 1).
pub fn tail_log(log_dir: &Path, service: &str, n: usize) -> io::Result<Vec<String>> {
    let mut newest_first: Vec<String> = Vec::new();
    let mut files = vec![log_path(log_dir, service)];
    // Rotated files are contiguous from `.log.1`; stop at the first gap.
    let mut index = 1;
    loop {
        let path = rotated_log_path(log_dir, service, index);
        if !path.exists() {
            break;
        }
        files.push(path);
        index += 1;
    }
    for path in files {
        if newest_first.len() >= n {
            break;
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines().rev() {
            if newest_first.len() >= n {
                break;
            }
            newest_first.push(line.to_string());
        }
    }
    newest_first.reverse();
    Ok(newest_first)
}

/// Lines of a service's current log file written since byte `offset` (a value this function
/// returned before), at most `max_lines` of them, and the offset to pass next time. Only whole
/// lines are returned: a line still being written is left for the next call. If the file is
/// now shorter than `offset` it was rotated, and reading starts over at its beginning (lines
/// written to the old file after the last call are in `.log.1`, not returned here).
pub fn read_log_since(
    log_dir: &Path,
    service: &str,
    offset: u64,
    max_lines: usize,
) -> io::Result<(Vec<String>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(log_path(log_dir, service)) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    let start = if len < offset { 0 } else { offset };
    file.seek(SeekFrom::Start(start))?;
    // Bounded read: a follower that fell far behind gets the log in slices.
    let mut bytes = Vec::new();
    file.take(LOG_READ_CHUNK).read_to_end(&mut bytes)?;
    let mut lines = Vec::new();
    let mut consumed = 0usize;
    for piece in bytes.split_inclusive(|byte| *byte == b'\n') {
        if lines.len() >= max_lines || !piece.ends_with(b"\n") {
            break;
        }
        consumed += piece.len();
        lines.push(String::from_utf8_lossy(&piece[..piece.len() - 1]).into_owned());
    }
    Ok((lines, start + consumed as u64))
}

/// The current length of a service's log file (0 without one): the offset of "now" for
/// [`read_log_since`].
pub fn log_len(log_dir: &Path, service: &str) -> u64 {
    std::fs::metadata(log_path(log_dir, service)).map_or(0, |meta| meta.len())
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

/// Runs a service's health check once, as [`probe`] does, with what the spec implies: the
/// port named by `health.port` (else the first) from `ports` ([`ServiceSpec::port_env`]),
/// `health.timeout`, and for `exec` the service's working dir and environment, with `$PORT`
/// expanded in the command. A service without a health check passes.
pub async fn probe_service(
    spec: &ServiceSpec,
    ports: &BTreeMap<String, u16>,
    node_name: &str,
) -> HealthOutcome {
    let Some(health) = &spec.health else {
        return HealthOutcome::Passed;
    };
    match &health.check {
        HealthCheck::Exec { command } => {
            let Some((program, args)) = command.split_first() else {
                return failed("the exec health check has no command");
            };
            match service_command(spec, program, args, ports, node_name) {
                Ok(command) => probe_exec(command, health.timeout).await,
                Err(e) => failed(e.to_string()),
            }
        }
        HealthCheck::Tcp | HealthCheck::Http { .. } => {
            let port = spec.health_port_index().and_then(|index| {
                spec.port_variables()
                    .into_iter()
                    .find(|(port_index, _)| *port_index == index)
                    .and_then(|(_, variable)| ports.get(&variable).copied())
            });
            probe(health, port, health.timeout).await
        }
    }
}

/// Runs one health check within `timeout`: `tcp` connects to `127.0.0.1:port`; `http` sends
/// `GET path` there and passes on a 2xx status; `exec` runs the command (argv, no shell, in
/// the agent's directory and environment; see [`probe_service`] for the service's) and
/// passes on exit 0, killing its process group if it overruns.
pub async fn probe(health: &HealthSpec, port: Option<u16>, timeout: Duration) -> HealthOutcome {
    match &health.check {
        HealthCheck::Tcp => match port {
            Some(port) => probe_tcp(port, timeout).await,
            None => failed("no port to probe"),
        },
        HealthCheck::Http { path } => match port {
            Some(port) => probe_http(port, path, timeout).await,
            None => failed("no port to probe"),
        },
        HealthCheck::Exec { command } => {
            let Some((program, args)) = command.split_first() else {
                return failed("the exec health check has no command");
            };
            let mut exec = Command::new(program);
            exec.args(args).process_group(0).stdin(Stdio::null());
            probe_exec(exec, timeout).await
        }
    }
}

fn failed(detail: impl Into<String>) -> HealthOutcome {
    HealthOutcome::Failed {
        detail: detail.into(),
    }
}

async fn probe_tcp(port: u16, timeout: Duration) -> HealthOutcome {
    match tokio::time::timeout(timeout, TcpStream::connect(("127.0.0.1", port))).await {
        Ok(Ok(_stream)) => HealthOutcome::Passed,
        Ok(Err(err)) => failed(format!("tcp connect to 127.0.0.1:{port}: {err}")),
        Err(_) => failed(format!(
            "tcp connect to 127.0.0.1:{port} timed out after {} ms",
            timeout.as_millis()
        )),
    }
}

async fn probe_http(port: u16, path: &str, timeout: Duration) -> HealthOutcome {
    match tokio::time::timeout(timeout, http_status(port, path)).await {
        Ok(Ok(status)) if (200..300).contains(&status) => HealthOutcome::Passed,
        Ok(Ok(status)) => failed(format!(
            "GET http://127.0.0.1:{port}{path}: status {status}"
        )),
        Ok(Err(err)) => failed(format!("GET http://127.0.0.1:{port}{path}: {err}")),
        Err(_) => failed(format!(
            "GET http://127.0.0.1:{port}{path} timed out after {} ms",
            timeout.as_millis()
        )),
    }
}

/// Sends a minimal HTTP/1.1 `GET` and returns the status code of the answer, reading at most
/// [`MAX_HTTP_RESPONSE_BYTES`].
async fn http_status(port: u16, path: &str) -> io::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: mesh-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    let mut limited = stream.take(MAX_HTTP_RESPONSE_BYTES as u64);
    let mut chunk = [0u8; 512];
    loop {
        if response.windows(2).any(|pair| pair == b"\r\n") {
            break;
        }
        let read = limited.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..read]);
    }
    parse_status_line(&response).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the answer does not start with an HTTP status line",
        )
    })
}

/// The status code of `HTTP/1.x NNN ...`.
fn parse_status_line(response: &[u8]) -> Option<u16> {
    let end = response.windows(2).position(|pair| pair == b"\r\n")?;
    let line = std::str::from_utf8(&response[..end]).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// Runs an exec check (already set up to run in its own process group) and passes on exit 0
/// within `timeout`; on overrun kills its whole group and reaps it.
async fn probe_exec(mut command: Command, timeout: Duration) -> HealthOutcome {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let program = format!("{:?}", command.as_std().get_program());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return failed(format!("cannot run {program}: {err}")),
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => match exit_status(status) {
            ExitStatus::Code(0) => HealthOutcome::Passed,
            status => failed(format!("{program} ended with {status}")),
        },
        Ok(Err(err)) => failed(format!("waiting for {program}: {err}")),
        Err(_) => {
            if let Some(pid) = child.id()
                && let Err(err) = signal_group(pid, StopSignal::Kill)
            {
                tracing::debug!(%err, "killing an overrunning health check");
            }
            // Reap it; if that overruns too, `kill_on_drop` and tokio's orphan reaper finish.
            if tokio::time::timeout(EXEC_REAP_CEILING, child.wait())
                .await
                .is_err()
            {
                tracing::debug!(%program, "overrunning health check not reaped yet");
            }
            failed(format!(
                "{program} did not finish within {} ms",
                timeout.as_millis()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Instant;

    /// Ceiling for conditions in these tests: real processes on a loaded CI machine.
    const CEILING: Duration = Duration::from_secs(20);
    /// Poll period while waiting on a condition.
    const POLL: Duration = Duration::from_millis(20);

    async fn wait_until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + CEILING;
        while !condition().await {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Spawns `spec` with no ports on node `n1`, logging to `dir` with the default limits.
    async fn spawn_plain(spec: &ServiceSpec, dir: &Path) -> Result<RunningProcess, LaunchError> {
        spawn_service(spec, &BTreeMap::new(), "n1", dir, LogLimits::default()).await
    }

    fn sh(name: &str, script: &str) -> ServiceSpec {
        let mut spec = ServiceSpec::new(name, "sh");
        spec.args = vec!["-c".to_string(), script.to_string()];
        spec
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .expect("bind an ephemeral port")
            .local_addr()
            .expect("local address")
            .port()
    }

    async fn run_to_end(process: &mut RunningProcess) -> ExitStatus {
        let status = tokio::time::timeout(CEILING, process.wait())
            .await
            .expect("process exits")
            .expect("wait");
        tokio::time::timeout(CEILING, process.wait_logs())
            .await
            .expect("log pumps end");
        status
    }

    #[tokio::test]
    async fn captures_exit_code_and_both_streams() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = sh("hello", "echo hi; echo err >&2; exit 3");
        let mut process = spawn_plain(&spec, dir.path()).await.expect("spawn");
        assert!(process.pid() > 1);
        assert_eq!(run_to_end(&mut process).await, ExitStatus::Code(3));
        let log = std::fs::read_to_string(log_path(dir.path(), "hello")).expect("log");
        let mut lines: Vec<&str> = log.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, ["err", "hi"]);
        assert_eq!(
            tail_log(dir.path(), "hello", 10).expect("tail").len(),
            2,
            "tail sees both lines"
        );
    }

    #[tokio::test]
    async fn killed_process_reports_its_signal() {
        let dir = tempfile::tempdir().expect("tempdir");
        // `$$$$`: arguments are `$PORT`-expanded, where `$$` stands for `$`.
        let spec = sh("selfkill", "kill -9 $$$$");
        let mut process = spawn_plain(&spec, dir.path()).await.expect("spawn");
        assert_eq!(run_to_end(&mut process).await, ExitStatus::Signal(9));
    }

    #[tokio::test]
    async fn a_service_gets_a_clean_environment_not_the_agents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("env.txt");
        let mut spec = sh("envy", &format!("env > {}", out.display()));
        spec.env.insert("MINE".into(), "1".into());
        let mut process = spawn_plain(&spec, dir.path()).await.expect("spawn");
        assert_eq!(run_to_end(&mut process).await, ExitStatus::Code(0));
        let env = std::fs::read_to_string(&out).expect("the service wrote its environment");
        let names: Vec<&str> = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, _)| k)
            .collect();
        for wanted in ["PATH", "MINE", "MESH_NODE", "MESH_SERVICE"] {
            assert!(names.contains(&wanted), "{wanted} missing: {names:?}");
        }
        // cargo sets these for the test process (the agent here): not the service's business.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        assert!(!names.contains(&"CARGO_MANIFEST_DIR"), "{names:?}");
    }

    #[tokio::test]
    async fn a_log_file_planted_as_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "ORIGINAL").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("planted.log")).unwrap();
        let spec = sh("planted", "echo WRITTEN");
        let err = spawn_plain(&spec, dir.path())
            .await
            .expect_err("a symlinked log file is refused");
        assert!(matches!(err, LaunchError::LogFile { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "ORIGINAL");
    }

    #[tokio::test]
    async fn a_missing_working_dir_is_named_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = sh("lost", "true");
        spec.working_dir = Some(dir.path().join("gone"));
        let err = spawn_plain(&spec, dir.path())
            .await
            .expect_err("no such directory");
        assert!(matches!(err, LaunchError::WorkingDir { .. }), "{err}");
        assert!(err.to_string().contains("working_dir"), "{err}");
        assert!(!err.to_string().contains("cannot start"), "{err}");
    }

    #[tokio::test]
    async fn spawn_failure_names_the_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = ServiceSpec::new("ghost", "/nonexistent/mesh-test-program");
        let err = spawn_plain(&spec, dir.path())
            .await
            .expect_err("no such program");
        assert!(matches!(err, LaunchError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/mesh-test-program"));
    }

    #[tokio::test]
    async fn expands_ports_and_sets_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = sh(
            "env-check",
            "echo $PORT $PORT_ADMIN $MESH_SERVICE $MESH_NODE $GREETING \"$1\" \"$2\"",
        );
        spec.args.extend([
            "argv0".to_string(),
            "--port=$PORT".to_string(),
            "${PORT_ADMIN}$$".to_string(),
        ]);
        spec.env.insert("GREETING".to_string(), "hello".to_string());
        spec.working_dir = Some(dir.path().to_path_buf());
        let ports = BTreeMap::from([
            ("PORT".to_string(), 20001),
            ("PORT_ADMIN".to_string(), 20002),
        ]);
        let mut process = spawn_service(&spec, &ports, "node-a", dir.path(), LogLimits::default())
            .await
            .expect("spawn");
        assert_eq!(run_to_end(&mut process).await, ExitStatus::Code(0));
        assert_eq!(
            tail_log(dir.path(), "env-check", 10).expect("tail"),
            ["20001 20002 env-check node-a hello --port=20001 20002$"]
        );
    }

    /// Pids in process group `pgid` other than `pgid` itself, from `/proc/*/stat`.
    fn group_members(pgid: u32) -> Vec<u32> {
        let mut members = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid pgrp ...`; comm may hold spaces, so split after `)`.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.get(2).and_then(|f| f.parse::<u32>().ok()) == Some(pgid) && pid != pgid {
                members.push(pid);
            }
        }
        members
    }

    /// Gone, or a zombie waiting for a reaper that may not exist in a container.
    fn is_gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn signal_group_reaches_descendants() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = sh("group", "sleep 1000 & sleep 1000");
        let mut process = spawn_plain(&spec, dir.path()).await.expect("spawn");
        let pid = process.pid();
        wait_until("both sleeps run in the service's group", async || {
            group_members(pid).len() >= 2
        })
        .await;
        let children = group_members(pid);
        signal_group(pid, StopSignal::Term).expect("signal the group");
        assert_eq!(run_to_end(&mut process).await, ExitStatus::Signal(15));
        for child in children {
            wait_until(&format!("child {child} is gone"), async || is_gone(child)).await;
        }
        assert!(signal_group(0, StopSignal::Term).is_err());
    }

    #[tokio::test]
    async fn rotation_keeps_every_line_and_bounds_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 250 lines of 10 bytes: 2500 bytes, two rotations at 1 KiB, nothing beyond keep = 2.
        let spec = sh(
            "chatty",
            "i=0; while [ $i -lt 250 ]; do printf 'line-%04d\\n' $i; i=$((i+1)); done",
        );
        let limits = LogLimits {
            max_bytes: 1024,
            keep: 2,
        };
        let mut process = spawn_service(&spec, &BTreeMap::new(), "n1", dir.path(), limits)
            .await
            .expect("spawn");
        assert_eq!(run_to_end(&mut process).await, ExitStatus::Code(0));

        let files = [
            rotated_log_path(dir.path(), "chatty", 2),
            rotated_log_path(dir.path(), "chatty", 1),
            log_path(dir.path(), "chatty"),
        ];
        let mut all = String::new();
        for file in &files {
            let text = std::fs::read_to_string(file).expect("log file exists");
            assert!(
                text.len() <= 1024,
                "{} holds {} bytes",
                file.display(),
                text.len()
            );
            assert!(text.ends_with('\n'), "no line split across files");
            all.push_str(&text);
        }
        assert!(!rotated_log_path(dir.path(), "chatty", 3).exists());
        let expected: String = (0..250).map(|i| format!("line-{i:04}\n")).collect();
        assert_eq!(all, expected);

        let tail = tail_log(dir.path(), "chatty", 120).expect("tail");
        let expected_tail: Vec<String> = (130..250).map(|i| format!("line-{i:04}")).collect();
        assert_eq!(tail, expected_tail, "tail spans rotated files");
        assert_eq!(
            tail_log(dir.path(), "chatty", 1000).expect("tail").len(),
            250
        );
        assert!(tail_log(dir.path(), "nobody", 5).expect("tail").is_empty());
    }

    #[tokio::test]
    async fn rotation_drops_oldest_beyond_keep() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = sh(
            "flood",
            "i=0; while [ $i -lt 500 ]; do printf 'line-%04d\\n' $i; i=$((i+1)); done",
        );
        let limits = LogLimits {
            max_bytes: 1024,
            keep: 1,
        };
        let mut process = spawn_service(&spec, &BTreeMap::new(), "n1", dir.path(), limits)
            .await
            .expect("spawn");
        assert_eq!(run_to_end(&mut process).await, ExitStatus::Code(0));
        assert!(!rotated_log_path(dir.path(), "flood", 2).exists());
        let tail = tail_log(dir.path(), "flood", 1000).expect("tail");
        assert_eq!(tail.last().map(String::as_str), Some("line-0499"));
        assert!(
            tail.len() < 500 && tail.len() > 100,
            "{} lines kept",
            tail.len()
        );
    }

    #[tokio::test]
    async fn long_lines_are_cut_into_bounded_pieces() {
        let mut reader = BufReader::new(&b"abcdefghij\nxy"[..]);
        let mut pieces = Vec::new();
        loop {
            let mut line = Vec::new();
            if read_line_bounded(&mut reader, &mut line, 4)
                .await
                .expect("read")
                == 0
            {
                break;
            }
            pieces.push(String::from_utf8(line).expect("utf-8"));
        }
        assert_eq!(pieces, ["abcd", "efgh", "ij\n", "xy"]);
    }

    /// `python3 -m http.server` on a free loopback port, killed on drop.
    async fn http_server(dir: &Path) -> (tokio::process::Child, u16) {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let tcp = HealthSpec::new(HealthCheck::Tcp);
        wait_until("the http server listens", async || {
            probe(&tcp, Some(port), Duration::from_secs(1)).await == HealthOutcome::Passed
        })
        .await;
        (child, port)
    }

    #[tokio::test]
    async fn tcp_and_http_probes() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("healthz"), "ok").expect("write healthz");
        let (_server, port) = http_server(dir.path()).await;
        let timeout = Duration::from_secs(5);

        let tcp = HealthSpec::new(HealthCheck::Tcp);
        assert_eq!(
            probe(&tcp, Some(port), timeout).await,
            HealthOutcome::Passed
        );
        let closed = free_port();
        assert!(matches!(
            probe(&tcp, Some(closed), timeout).await,
            HealthOutcome::Failed { .. }
        ));
        assert!(matches!(
            probe(&tcp, None, timeout).await,
            HealthOutcome::Failed { .. }
        ));

        let healthz = HealthSpec::new(HealthCheck::Http {
            path: "/healthz".to_string(),
        });
        assert_eq!(
            probe(&healthz, Some(port), timeout).await,
            HealthOutcome::Passed
        );
        let missing = HealthSpec::new(HealthCheck::Http {
            path: "/missing".to_string(),
        });
        match probe(&missing, Some(port), timeout).await {
            HealthOutcome::Failed { detail } => assert!(detail.contains("404"), "{detail}"),
            HealthOutcome::Passed => panic!("a 404 must fail"),
        }
        assert!(matches!(
            probe(&healthz, Some(closed), timeout).await,
            HealthOutcome::Failed { .. }
        ));
    }

    #[tokio::test]
    async fn http_probe_times_out_on_a_silent_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // Accepts and never answers.
        let _silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let health = HealthSpec::new(HealthCheck::Http {
            path: "/".to_string(),
        });
        match probe(&health, Some(port), Duration::from_millis(200)).await {
            HealthOutcome::Failed { detail } => assert!(detail.contains("timed out"), "{detail}"),
            HealthOutcome::Passed => panic!("no answer must fail"),
        }
    }

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 404\r\n"), Some(404));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), None);
    }

    #[tokio::test]
    async fn exec_probes() {
        let timeout = Duration::from_secs(10);
        let exec = |command: &[&str]| {
            HealthSpec::new(HealthCheck::Exec {
                command: command.iter().map(|s| s.to_string()).collect(),
            })
        };
        assert_eq!(
            probe(&exec(&["true"]), None, timeout).await,
            HealthOutcome::Passed
        );
        assert!(matches!(
            probe(&exec(&["false"]), None, timeout).await,
            HealthOutcome::Failed { .. }
        ));
        assert!(matches!(
            probe(&exec(&["/nonexistent/check"]), None, timeout).await,
            HealthOutcome::Failed { .. }
        ));
        let started = Instant::now();
        match probe(&exec(&["sleep", "30"]), None, Duration::from_millis(200)).await {
            HealthOutcome::Failed { detail } => {
                assert!(detail.contains("did not finish"), "{detail}")
            }
            HealthOutcome::Passed => panic!("an overrun must fail"),
        }
        assert!(
            started.elapsed() < CEILING,
            "the overrunning check was cut short"
        );
    }

    #[tokio::test]
    async fn probe_service_uses_the_service_port_and_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let working_dir = dir.path().canonicalize().expect("canonical dir");
        let mut spec = sh("checked", "true");
        spec.working_dir = Some(working_dir.clone());
        spec.health = Some(HealthSpec::new(HealthCheck::Exec {
            command: vec![
                "sh".to_string(),
                "-c".to_string(),
                "test \"$PORT:$MESH_SERVICE:$1:$(pwd)\" = \"20005:checked:20005:$2\"".to_string(),
                "argv0".to_string(),
                "$PORT".to_string(),
                working_dir.display().to_string(),
            ],
        }));
        let ports = BTreeMap::from([("PORT".to_string(), 20005)]);
        assert_eq!(
            probe_service(&spec, &ports, "n1").await,
            HealthOutcome::Passed
        );
        assert_eq!(
            probe_service(&sh("unchecked", "true"), &ports, "n1").await,
            HealthOutcome::Passed
        );
    }
}
