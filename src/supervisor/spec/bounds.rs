//! Bounds and defaults of a service spec: the most of everything a spec may hold (it is
//! replicated to every node) and the defaults of what it leaves out, with their reasons; the
//! account-name rule and [`echo`], which shows a refused value shortened and escaped.

use std::time::Duration;

/// Longest node name accepted in `node = ...` (a full DNS name).
pub const MAX_NODE_NAME_LEN: usize = 253;

/// Most bytes of one spec as JSON (its form in the document). A real spec is a few hundred
/// bytes; 64 KiB leaves room for long argument lists and environments while keeping one
/// service from filling the replicated document (which has its own, larger bound).
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// Longest `command` and `working_dir`, in bytes: Linux's `PATH_MAX`.
pub const MAX_PATH_BYTES: usize = 4096;
/// Most arguments (of the command, or of an `exec` health check). `ARG_MAX`-scale lists are
/// scripts, not service specs.
pub const MAX_ARGS: usize = 256;
/// Longest single argument or environment value, in bytes.
pub const MAX_ARG_BYTES: usize = 8 * 1024;
/// Most environment variables a spec sets.
pub const MAX_ENV_VARS: usize = 128;
/// Most ports one service asks for. Each becomes a lease record in the replicated document
/// (outside the spec's bytes), so this bounds what one spec adds there: a real service has a
/// handful; 3,000 in a 56 KB spec once filled the document past its bound.
pub const MAX_PORTS: usize = 32;
/// Longest user or group name: `useradd`'s limit.
pub const MAX_ACCOUNT_NAME_LEN: usize = 32;
/// Characters of a refused value echoed back in an error: enough to recognise it, never a
/// megabyte of it.
pub const MAX_ECHO_CHARS: usize = 64;

/// A value for an error message: at most [`MAX_ECHO_CHARS`] characters, with the full size
/// said when cut.
pub fn echo(value: &str) -> String {
    let count = value.chars().count();
    if count <= MAX_ECHO_CHARS {
        return value.to_string();
    }
    let head: String = value.chars().take(MAX_ECHO_CHARS).collect();
    format!("{head}... ({} bytes)", value.len())
}

/// Checks a user or group name as written in a spec: a name of up to 32 characters of
/// `[A-Za-z0-9_.-]` (and a trailing `$`, as Samba machine accounts have), not starting with
/// `-`, or a numeric id. Whether it exists is the running node's question.
pub fn check_account_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_ACCOUNT_NAME_LEN {
        return Err("must be at most 32 characters");
    }
    let body = name.strip_suffix('$').unwrap_or(name);
    if body.is_empty()
        || body.starts_with('-')
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("only letters, digits, '_', '.', '-' (not first) or a numeric id");
    }
    Ok(())
}

/// Environment variables mesh sets itself; a spec may not set them in `env`.
pub const RESERVED_ENV: [&str; 4] = ["PORT", "MESH_NODE", "MESH_SERVICE", "MESH_EPOCH"];
/// Prefix of the variables the agent sets for dependencies on other nodes
/// (`MESH_ENDPOINT_<DEP>=host:port`); a spec may not set them.
pub const RESERVED_ENV_PREFIX: &str = "MESH_ENDPOINT_";

/// Default time between health checks once a service is healthy (or unhealthy). 2 s notices a
/// hung service within [`DEFAULT_FAILURES_BEFORE_UNHEALTHY`] × 2 s = 6 s while costing nothing
/// measurable on a Raspberry Pi.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Default limit on one check. Checks run on loopback (or a local command): a service that
/// takes longer than 1 s to accept a connection or answer `GET` is not serving.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time after a start during which failed checks are not counted: most services
/// listen within a second or two; 10 s covers slow starters on small machines.
pub const DEFAULT_START_GRACE: Duration = Duration::from_secs(10);
/// Default time between checks while a service is `starting` (until its first passing
/// check). Short, so a restarted service is `healthy` (and its dependents start) within a
/// few hundred milliseconds of listening.
pub const DEFAULT_START_INTERVAL: Duration = Duration::from_millis(250);
/// Default number of consecutive failed checks (outside the start grace) that make a service
/// `unhealthy`. One lost check is noise; three in a row is a pattern.
pub const DEFAULT_FAILURES_BEFORE_UNHEALTHY: u32 = 3;
/// Default number of consecutive failures after which a service is `failed` (its dependents
/// are stopped). 5 at the default backoff is about 3 s of trying (0.1+0.2+0.4+0.8+1.6 s).
pub const DEFAULT_FAILED_AFTER: u32 = 5;
/// Default time between SIGTERM and SIGKILL when stopping a service (the same as Docker's):
/// enough to flush and close cleanly, short enough that a stuck service does not hold up a
/// shutdown of the whole chain for long.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
