//! Health probes of real services: `tcp` connects to `127.0.0.1:PORT`, `http` sends a
//! minimal `GET` there, `exec` runs a command in the service's environment; each bounded by
//! the check's timeout and reported as the core's [`HealthOutcome`].
//!
//! It does not own when to probe (the supervisor core) or what a result means.

use std::collections::BTreeMap;
use std::io;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use super::process::{exit_status, service_command, signal_group};
use crate::supervisor::machine::{ExitStatus, HealthOutcome, StopSignal};
use crate::supervisor::spec::{HealthCheck, HealthSpec, ServiceSpec};

/// How long an overrunning exec check is waited for after SIGKILL to its group, to reap it.
/// A killed process is gone within milliseconds; 1 s only guards against a stuck kernel.
pub const EXEC_REAP_CEILING: Duration = Duration::from_secs(1);
/// Most bytes of an HTTP health response read, looking for the status line. A status line
/// is a few dozen bytes; 4 KiB tolerates anything sane and bounds a misbehaving server.
pub const MAX_HTTP_RESPONSE_BYTES: usize = 4 * 1024;

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
            let port = spec.health_port(ports);
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
pub(super) fn parse_status_line(response: &[u8]) -> Option<u16> {
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
