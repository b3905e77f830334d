//! Service specs: what to run, as written in TOML files and on the `mesh service add` line.
//!
//! Owns the [`ServiceSpec`] type, its defaults, its validation ([`ServiceSpec::validate`] for
//! one spec, [`validate_set`] for a whole set: unknown dependencies, cycles, fixed-port
//! clashes), the CLI form ([`ServiceSpec::from_cli_parts`], plain strings, no clap), and the
//! `$PORT` / `$PORT_<NAME>` expansion of arguments at start time ([`expand_args`]).
//!
//! It does not own: where specs are stored (the replicated document), which node runs them
//! (placement), or starting anything (the supervisor). Spec: `protocol/service-spec.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::backoff::{
    BackoffConfig, DEFAULT_BACKOFF_CAP, DEFAULT_BACKOFF_FACTOR, DEFAULT_FIRST_DELAY,
    DEFAULT_JITTER, DEFAULT_RESET_AFTER,
};
use super::graph::DependencyGraph;
use crate::ports::{DEFAULT_POOL, PortSource, Proto};
pub use crate::wire::name::{MAX_NAME_LEN, check_name};

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
pub const RESERVED_ENV: [&str; 3] = ["PORT", "MESH_NODE", "MESH_SERVICE"];

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

/// Why a spec (or a set of specs) is refused. Every message names the service and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid service file: {0}")]
    Toml(String),
    #[error("bad service name `{name}`: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("service `{name}` is defined twice")]
    DuplicateService { name: String },
    #[error("service `{service}`: the command is empty")]
    EmptyCommand { service: String },
    #[error("service `{service}`: {field} contains a NUL byte")]
    NulByte { service: String, field: String },
    #[error("service `{service}`: working_dir `{path}` must be an absolute path")]
    RelativeWorkingDir { service: String, path: String },
    #[error("service `{service}`: bad environment variable `{key}`: {reason}")]
    BadEnv {
        service: String,
        key: String,
        reason: &'static str,
    },
    #[error("service `{service}`: bad dependency name `{dependency}`: {reason}")]
    BadDependencyName {
        service: String,
        dependency: String,
        reason: &'static str,
    },
    #[error("service `{service}` depends on itself")]
    SelfDependency { service: String },
    #[error("service `{service}`: dependency `{dependency}` is listed twice")]
    DuplicateDependency { service: String, dependency: String },
    #[error("service `{service}`: unknown dependency `{dependency}`")]
    UnknownDependency { service: String, dependency: String },
    #[error("dependency cycle: {}", cycle.join(" -> "))]
    DependencyCycle {
        /// The services around the cycle, first repeated at the end: `a -> b -> a` means `a`
        /// runs after `b`, which runs after `a`.
        cycle: Vec<String>,
    },
    #[error("service `{service}`: bad port name `{name}`: {reason}")]
    BadPortName {
        service: String,
        name: String,
        reason: &'static str,
    },
    #[error("service `{service}`: bad port pool name `{pool}`: {reason}")]
    BadPoolName {
        service: String,
        pool: String,
        reason: &'static str,
    },
    #[error("service `{service}`: port {port} is out of range (1-65535)")]
    PortOutOfRange { service: String, port: i64 },
    #[error("service `{service}`: port {port}/{proto} is listed twice")]
    DuplicatePort {
        service: String,
        port: u16,
        proto: Proto,
    },
    #[error("service `{service}`: port name `{name}` is used twice")]
    DuplicatePortName { service: String, name: String },
    #[error(
        "service `{service}` has {count} ports, so each needs a name (it becomes $PORT_<NAME>); port {index} has none"
    )]
    UnnamedPort {
        service: String,
        count: usize,
        index: usize,
    },
    #[error("service `{service}`: argument uses ${variable}, but the service has no such port")]
    UnknownPortVariable { service: String, variable: String },
    #[error("service `{service}`: bad health check: {reason}")]
    BadHealth { service: String, reason: String },
    #[error("service `{service}`: {field} must be greater than zero")]
    ZeroDuration {
        service: String,
        field: &'static str,
    },
    #[error("service `{service}`: bad restart settings: {reason}")]
    BadRestart { service: String, reason: String },
    #[error("service `{service}`: bad node name `{node}`: {reason}")]
    BadNode {
        service: String,
        node: String,
        reason: &'static str,
    },
    #[error(
        "services `{first}` and `{second}` both ask for fixed port {port}/{proto} on the same node"
    )]
    FixedPortConflict {
        first: String,
        second: String,
        port: u16,
        proto: Proto,
    },
    #[error("service `{service}`: {field} is too large: {limit}")]
    TooLarge {
        service: String,
        field: String,
        limit: String,
    },
    #[error("service `{service}`: bad {field} `{value}`: {reason}")]
    BadAccount {
        service: String,
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("bad --{flag} `{value}`: {reason}")]
    BadCliValue {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

/// When the supervisor restarts a service whose process ended (or that turned unhealthy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart after any exit, clean or not, and when unhealthy.
    #[default]
    Always,
    /// Restart after a non-zero exit, a signal, a failed spawn, or when unhealthy; a clean
    /// exit (status 0) leaves the service `stopped`.
    OnFailure,
    /// Never restart: a clean exit leaves it `stopped`, any other end leaves it `failed`; an
    /// unhealthy process is left running and shown `unhealthy`.
    Never,
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        })
    }
}

impl FromStr for RestartPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "always" => Ok(RestartPolicy::Always),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "never" => Ok(RestartPolicy::Never),
            _ => Err("expected always, on-failure or never".to_string()),
        }
    }
}

/// What a running service does while one of its dependencies restarts (crashed, in backoff,
/// being restarted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DependencyRestart {
    /// Keep running; nothing new starts until the dependency is healthy again. For services
    /// that reconnect on their own (most clients of a database).
    #[default]
    RideThrough,
    /// Stop while the dependency has no process, start again once it is healthy: for services
    /// that only connect at start.
    Restart,
}

impl DependencyRestart {
    fn is_default(&self) -> bool {
        *self == DependencyRestart::RideThrough
    }
}

/// Restart policy and backoff (`[service.restart]` in TOML). See
/// [`super::backoff`] for the delay formula.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    #[serde(default)]
    pub policy: RestartPolicy,
    /// Delay before the first restart after a failure.
    #[serde(default = "default_first_delay", with = "duration_text")]
    pub first_delay: Duration,
    /// Each consecutive failure multiplies the delay by this (≥ 1).
    #[serde(default = "default_factor")]
    pub factor: f64,
    /// Largest delay; also the retry period of a `failed` service.
    #[serde(default = "default_cap", with = "duration_text")]
    pub cap: Duration,
    /// Fraction (0 ≤ jitter < 1) by which each delay is randomly shortened.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// Healthy this long without interruption, the failure count goes back to zero.
    #[serde(default = "default_reset_after", with = "duration_text")]
    pub reset_after: Duration,
    /// After this many consecutive failures the service is `failed`.
    #[serde(default = "default_failed_after")]
    pub failed_after: u32,
    /// A `failed` service keeps being retried, every `cap`.
    #[serde(default = "default_true")]
    pub keep_retrying_when_failed: bool,
}

fn default_first_delay() -> Duration {
    DEFAULT_FIRST_DELAY
}
fn default_factor() -> f64 {
    DEFAULT_BACKOFF_FACTOR
}
fn default_cap() -> Duration {
    DEFAULT_BACKOFF_CAP
}
fn default_jitter() -> f64 {
    DEFAULT_JITTER
}
fn default_reset_after() -> Duration {
    DEFAULT_RESET_AFTER
}
fn default_failed_after() -> u32 {
    DEFAULT_FAILED_AFTER
}
fn default_true() -> bool {
    true
}
fn default_stop_grace() -> Duration {
    DEFAULT_STOP_GRACE
}
fn default_health_interval() -> Duration {
    DEFAULT_HEALTH_INTERVAL
}
fn default_health_timeout() -> Duration {
    DEFAULT_HEALTH_TIMEOUT
}
fn default_start_grace() -> Duration {
    DEFAULT_START_GRACE
}
fn default_start_interval() -> Duration {
    DEFAULT_START_INTERVAL
}
fn default_failures_before_unhealthy() -> u32 {
    DEFAULT_FAILURES_BEFORE_UNHEALTHY
}

impl Default for RestartSpec {
    fn default() -> Self {
        Self {
            policy: RestartPolicy::Always,
            first_delay: DEFAULT_FIRST_DELAY,
            factor: DEFAULT_BACKOFF_FACTOR,
            cap: DEFAULT_BACKOFF_CAP,
            jitter: DEFAULT_JITTER,
            reset_after: DEFAULT_RESET_AFTER,
            failed_after: DEFAULT_FAILED_AFTER,
            keep_retrying_when_failed: true,
        }
    }
}

impl RestartSpec {
    /// The backoff parameters of this policy.
    pub fn backoff(&self) -> BackoffConfig {
        BackoffConfig {
            first_delay: self.first_delay,
            factor: self.factor,
            cap: self.cap,
            jitter: self.jitter,
            reset_after: self.reset_after,
        }
    }
}

/// One port of a service. TOML: `{ name = "http" }` (auto from the default pool),
/// `{ name = "metrics", pool = "metrics" }`, `{ name = "admin", port = 9000 }`,
/// `{ name = "dns", proto = "udp" }`; `port = "auto"` may be written out.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawPortSpec", into = "RawPortSpec")]
pub struct PortSpec {
    /// Name of the port: `$PORT_<NAME>` (upper case, `-` → `_`). Required when a service has
    /// more than one port.
    pub name: Option<String>,
    pub source: PortSource,
    pub proto: Proto,
}

impl PortSpec {
    /// The unnamed `auto` TCP port from the default pool.
    pub fn auto() -> Self {
        Self {
            name: None,
            source: PortSource::auto_default(),
            proto: Proto::Tcp,
        }
    }

    /// `$PORT_<NAME>` for a named port.
    pub fn variable(&self) -> Option<String> {
        self.name
            .as_deref()
            .map(|name| format!("PORT_{}", name.to_ascii_uppercase().replace('-', "_")))
    }

    /// Parses the `--port` form: `[NAME=](auto|auto:POOL|N)[/tcp|/udp]`.
    pub fn from_cli(text: &str) -> Result<Self, SpecError> {
        let bad = |reason: &str| SpecError::BadCliValue {
            flag: "port",
            value: text.to_string(),
            reason: reason.to_string(),
        };
        let (name, rest) = match text.split_once('=') {
            Some((name, rest)) => (Some(name.to_string()), rest),
            None => (None, text),
        };
        let (value, proto) = match rest.rsplit_once('/') {
            Some((value, proto)) => (value, proto.parse::<Proto>().map_err(|err| bad(&err))?),
            None => (rest, Proto::Tcp),
        };
        let source = match value {
            "auto" => PortSource::auto_default(),
            _ if value.starts_with("auto:") => PortSource::Auto {
                pool: value["auto:".len()..].to_string(),
            },
            _ => {
                let number: i64 = value
                    .parse()
                    .map_err(|_| bad("expected auto, auto:POOL or a port number, optionally NAME= before and /udp after"))?;
                PortSource::Fixed(
                    u16::try_from(number)
                        .ok()
                        .filter(|port| *port != 0)
                        .ok_or_else(|| bad("port numbers go from 1 to 65535"))?,
                )
            }
        };
        Ok(Self {
            name,
            source,
            proto,
        })
    }
}

/// The TOML shape of a [`PortSpec`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<RawPortValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pool: Option<String>,
    #[serde(default, skip_serializing_if = "is_tcp")]
    proto: Proto,
}

fn is_tcp(proto: &Proto) -> bool {
    *proto == Proto::Tcp
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawPortValue {
    Number(i64),
    Text(String),
}

impl TryFrom<RawPortSpec> for PortSpec {
    type Error = String;

    fn try_from(raw: RawPortSpec) -> Result<Self, Self::Error> {
        let label = raw
            .name
            .as_deref()
            .map(|name| format!("port `{name}`"))
            .unwrap_or_else(|| "port".to_string());
        let source = match raw.port {
            None => PortSource::Auto {
                pool: raw.pool.unwrap_or_else(|| DEFAULT_POOL.to_string()),
            },
            Some(RawPortValue::Text(text)) if text == "auto" => PortSource::Auto {
                pool: raw.pool.unwrap_or_else(|| DEFAULT_POOL.to_string()),
            },
            Some(RawPortValue::Text(text)) => {
                return Err(format!(
                    "{label}: expected a port number or \"auto\", got \"{text}\""
                ));
            }
            Some(RawPortValue::Number(number)) => {
                if raw.pool.is_some() {
                    return Err(format!(
                        "{label}: `pool` applies only to auto ports, but port is fixed to {number}"
                    ));
                }
                match u16::try_from(number) {
                    Ok(port) if port != 0 => PortSource::Fixed(port),
                    _ => return Err(format!("{label}: port {number} is out of range (1-65535)")),
                }
            }
        };
        Ok(PortSpec {
            name: raw.name,
            source,
            proto: raw.proto,
        })
    }
}

impl From<PortSpec> for RawPortSpec {
    fn from(spec: PortSpec) -> Self {
        let (port, pool) = match spec.source {
            PortSource::Fixed(port) => (Some(RawPortValue::Number(i64::from(port))), None),
            PortSource::Auto { pool } if pool == DEFAULT_POOL => (None, None),
            PortSource::Auto { pool } => (None, Some(pool)),
        };
        RawPortSpec {
            name: spec.name,
            port,
            pool,
            proto: spec.proto,
        }
    }
}

/// What a health check probes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HealthCheck {
    /// A TCP connect to `127.0.0.1:PORT` succeeds.
    Tcp,
    /// `GET http://127.0.0.1:PORT{path}` answers 2xx.
    Http { path: String },
    /// The command (argv, no shell) exits 0; run in the service's working dir and env.
    Exec { command: Vec<String> },
}

/// Health check of a service (`[service.health]` in TOML). Without one, a service is
/// `healthy` as soon as its process is spawned.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawHealthSpec", into = "RawHealthSpec")]
pub struct HealthSpec {
    pub check: HealthCheck,
    /// Which named port `tcp` and `http` probe; `None`: the first (`$PORT`).
    pub port: Option<String>,
    /// Between checks once `healthy` or `unhealthy`.
    pub interval: Duration,
    /// Limit on one check; the prober reports a check that overruns it as failed.
    pub timeout: Duration,
    /// After a start, failed checks are not counted for this long.
    pub start_grace: Duration,
    /// Between checks while `starting`.
    pub start_interval: Duration,
    /// Consecutive counted failures that make the service `unhealthy` (≥ 1).
    pub failures_before_unhealthy: u32,
}

impl HealthSpec {
    /// A check with every timing at its default.
    pub fn new(check: HealthCheck) -> Self {
        Self {
            check,
            port: None,
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            start_grace: DEFAULT_START_GRACE,
            start_interval: DEFAULT_START_INTERVAL,
            failures_before_unhealthy: DEFAULT_FAILURES_BEFORE_UNHEALTHY,
        }
    }

    /// Parses the `--health` form: `tcp`, `http`, `http:PATH`, `exec:CMD ARGS...` (split on
    /// whitespace; no quoting).
    pub fn from_cli(text: &str) -> Result<Self, SpecError> {
        let bad = |reason: &str| SpecError::BadCliValue {
            flag: "health",
            value: text.to_string(),
            reason: reason.to_string(),
        };
        let check = match text.split_once(':') {
            None if text == "tcp" => HealthCheck::Tcp,
            None if text == "http" => HealthCheck::Http {
                path: "/".to_string(),
            },
            Some(("http", path)) => {
                if !path.starts_with('/') {
                    return Err(bad("the http path must start with '/', e.g. http:/healthz"));
                }
                HealthCheck::Http {
                    path: path.to_string(),
                }
            }
            Some(("exec", command)) => {
                let command: Vec<String> = command.split_whitespace().map(String::from).collect();
                if command.is_empty() {
                    return Err(bad("exec needs a command, e.g. exec:pg_isready -q"));
                }
                HealthCheck::Exec { command }
            }
            _ => return Err(bad("expected tcp, http, http:PATH or exec:CMD")),
        };
        Ok(Self::new(check))
    }
}

/// The TOML shape of a [`HealthSpec`]: `check = "tcp" | "http" | "exec"` plus `path` (http)
/// or `command` (exec).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthSpec {
    check: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<String>,
    #[serde(default = "default_health_interval", with = "duration_text")]
    interval: Duration,
    #[serde(default = "default_health_timeout", with = "duration_text")]
    timeout: Duration,
    #[serde(default = "default_start_grace", with = "duration_text")]
    start_grace: Duration,
    #[serde(default = "default_start_interval", with = "duration_text")]
    start_interval: Duration,
    #[serde(default = "default_failures_before_unhealthy")]
    failures_before_unhealthy: u32,
}

impl TryFrom<RawHealthSpec> for HealthSpec {
    type Error = String;

    fn try_from(raw: RawHealthSpec) -> Result<Self, Self::Error> {
        let check = match raw.check.as_str() {
            "tcp" | "exec" if raw.path.is_some() => {
                return Err(format!(
                    "health: `path` applies only to http checks, not {}",
                    raw.check
                ));
            }
            "tcp" | "http" if raw.command.is_some() => {
                return Err(format!(
                    "health: `command` applies only to exec checks, not {}",
                    raw.check
                ));
            }
            "exec" if raw.port.is_some() => {
                return Err("health: `port` applies only to tcp and http checks".to_string());
            }
            "tcp" => HealthCheck::Tcp,
            "http" => HealthCheck::Http {
                path: raw.path.unwrap_or_else(|| "/".to_string()),
            },
            "exec" => HealthCheck::Exec {
                command: raw
                    .command
                    .ok_or("health: exec checks need `command = [\"cmd\", \"arg\", ...]`")?,
            },
            other => {
                return Err(format!(
                    "health: unknown check `{other}` (expected tcp, http or exec)"
                ));
            }
        };
        Ok(HealthSpec {
            check,
            port: raw.port,
            interval: raw.interval,
            timeout: raw.timeout,
            start_grace: raw.start_grace,
            start_interval: raw.start_interval,
            failures_before_unhealthy: raw.failures_before_unhealthy,
        })
    }
}

impl From<HealthSpec> for RawHealthSpec {
    fn from(spec: HealthSpec) -> Self {
        let (check, path, command) = match spec.check {
            HealthCheck::Tcp => ("tcp", None, None),
            HealthCheck::Http { path } => ("http", Some(path), None),
            HealthCheck::Exec { command } => ("exec", None, Some(command)),
        };
        RawHealthSpec {
            check: check.to_string(),
            path,
            command,
            port: spec.port,
            interval: spec.interval,
            timeout: spec.timeout,
            start_grace: spec.start_grace,
            start_interval: spec.start_interval,
            failures_before_unhealthy: spec.failures_before_unhealthy,
        }
    }
}

/// One service: what to run, after what, on which ports, how to check and restart it, where.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// `[a-z0-9-]`, 1-63 characters; unique in the mesh.
    pub name: String,
    /// Program to run (looked up in `PATH` if it has no `/`); no shell.
    pub command: String,
    /// Arguments; `$PORT`, `${PORT}`, `$PORT_<NAME>` are replaced at start, `$$` is `$`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Absolute working directory; default: the agent's data dir (chosen by the launcher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
    /// Extra environment, on top of the agent's and mesh's own (`PORT`, `PORT_<NAME>`,
    /// `MESH_NODE`, `MESH_SERVICE`, which may not be set here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Services that must be `healthy` before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Ports; the first is `$PORT`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    #[serde(default)]
    pub restart: RestartSpec,
    /// Time between SIGTERM and SIGKILL when stopping.
    #[serde(default = "default_stop_grace", with = "duration_text")]
    pub stop_grace: Duration,
    /// Node that runs the service; `None` in a file means the node that adds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// While a dependency restarts: keep running (`ride-through`) or stop and start again
    /// once it is healthy (`restart`).
    #[serde(default, skip_serializing_if = "DependencyRestart::is_default")]
    pub on_dependency_restart: DependencyRestart,
    /// User the process runs as (a name from `/etc/passwd`, or a numeric uid), on the node
    /// that runs it. `None`: the agent's own user (root for the packaged agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group the process runs as (a name from `/etc/group`, or a numeric gid). `None`: the
    /// primary group of `user`, or the agent's own group without `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The plain-string parts of `mesh service add NAME [--after DEP]... [--port auto|N]...
/// [--health tcp|http:PATH|exec:CMD] [--restart always|on-failure|never] [--node NAME] -- CMD
/// ARGS...`, as the CLI parsed them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CliServiceParts {
    pub name: String,
    pub after: Vec<String>,
    /// Each `--port` value: `[NAME=](auto|auto:POOL|N)[/tcp|/udp]`.
    pub ports: Vec<String>,
    /// `--health` value.
    pub health: Option<String>,
    /// `--restart` value.
    pub restart: Option<String>,
    /// `--on-dependency-restart` value: `ride-through` or `restart`.
    pub on_dependency_restart: Option<String>,
    pub node: Option<String>,
    /// `--user` value.
    pub user: Option<String>,
    /// `--group` value.
    pub group: Option<String>,
    /// `CMD ARGS...` after `--`.
    pub command: Vec<String>,
}

/// A TOML file of services: `[[service]]` tables.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    #[serde(default)]
    pub service: Vec<ServiceSpec>,
}

/// Parses a services file and validates what it can alone: every spec, unique names, no
/// cycle, no fixed port twice on a node. A dependency not in the file may be a service
/// already in the mesh: the agent checks the file against the mesh's services
/// ([`validate_set`] over both) when it is added.
pub fn parse_service_file(text: &str) -> Result<Vec<ServiceSpec>, SpecError> {
    let file: ServiceFile = toml::from_str(text).map_err(|err| SpecError::Toml(err.to_string()))?;
    check_set(&file.service, true)?;
    Ok(file.service)
}

impl ServiceSpec {
    /// A spec with no ports, no health check, and every other field at its default.
    pub fn new(name: impl Into<String>, command: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            command: command.into(),
            args: Vec::new(),
            working_dir: None,
            env: BTreeMap::new(),
            after: Vec::new(),
            ports: Vec::new(),
            health: None,
            restart: RestartSpec::default(),
            stop_grace: DEFAULT_STOP_GRACE,
            node: None,
            on_dependency_restart: DependencyRestart::RideThrough,
            user: None,
            group: None,
        }
    }

    /// Builds and validates a spec from the `mesh service add` command line.
    pub fn from_cli_parts(parts: CliServiceParts) -> Result<Self, SpecError> {
        let mut command = parts.command.into_iter();
        let program = command.next().ok_or_else(|| SpecError::EmptyCommand {
            service: parts.name.clone(),
        })?;
        let mut spec = ServiceSpec::new(parts.name, program);
        spec.args = command.collect();
        spec.after = parts.after;
        spec.ports = parts
            .ports
            .iter()
            .map(|text| PortSpec::from_cli(text))
            .collect::<Result<_, _>>()?;
        spec.health = parts
            .health
            .as_deref()
            .map(HealthSpec::from_cli)
            .transpose()?;
        if let Some(restart) = parts.restart {
            spec.restart.policy = restart.parse().map_err(|reason| SpecError::BadCliValue {
                flag: "restart",
                value: restart.clone(),
                reason,
            })?;
        }
        if let Some(mode) = parts.on_dependency_restart {
            spec.on_dependency_restart = match mode.as_str() {
                "ride-through" => DependencyRestart::RideThrough,
                "restart" => DependencyRestart::Restart,
                _ => {
                    return Err(SpecError::BadCliValue {
                        flag: "on-dependency-restart",
                        value: mode,
                        reason: "expected ride-through or restart".to_string(),
                    });
                }
            };
        }
        spec.node = parts.node;
        spec.user = parts.user;
        spec.group = parts.group;
        spec.validate()?;
        Ok(spec)
    }

    /// The backoff parameters of this service.
    pub fn backoff(&self) -> BackoffConfig {
        self.restart.backoff()
    }

    /// Variables each port sets, in port order: the first port is `PORT` (and `PORT_<NAME>`
    /// too if named), every other named port `PORT_<NAME>`.
    pub fn port_variables(&self) -> Vec<(usize, String)> {
        let mut variables = Vec::new();
        for (index, port) in self.ports.iter().enumerate() {
            if index == 0 {
                variables.push((index, "PORT".to_string()));
            }
            if let Some(variable) = port.variable() {
                variables.push((index, variable));
            }
        }
        variables
    }

    /// The `PORT*` environment for ports assigned in spec order (`assigned[i]` for
    /// `ports[i]`), for the launcher to inject and to pass to [`expand_args`].
    pub fn port_env(&self, assigned: &[u16]) -> BTreeMap<String, u16> {
        debug_assert_eq!(assigned.len(), self.ports.len(), "one port per port spec");
        self.port_variables()
            .into_iter()
            .filter_map(|(index, variable)| assigned.get(index).map(|port| (variable, *port)))
            .collect()
    }

    /// The index into `ports` of the port a `tcp`/`http` health check probes.
    pub fn health_port_index(&self) -> Option<usize> {
        let health = self.health.as_ref()?;
        match &health.port {
            None => (!self.ports.is_empty()).then_some(0),
            Some(name) => self
                .ports
                .iter()
                .position(|port| port.name.as_deref() == Some(name.as_str())),
        }
    }

    /// Checks this spec on its own (everything but dependencies on other specs).
    pub fn validate(&self) -> Result<(), SpecError> {
        let service = || self.name.clone();
        check_name(&self.name).map_err(|reason| SpecError::BadName {
            name: echo(&self.name),
            reason,
        })?;
        self.validate_bounds()?;
        for (field, value) in [("user", &self.user), ("group", &self.group)] {
            if let Some(value) = value {
                check_account_name(value).map_err(|reason| SpecError::BadAccount {
                    service: service(),
                    field,
                    value: echo(value),
                    reason,
                })?;
            }
        }
        if self.command.trim().is_empty() {
            return Err(SpecError::EmptyCommand { service: service() });
        }
        let nul = |field: String| SpecError::NulByte {
            service: service(),
            field,
        };
        if self.command.contains('\0') {
            return Err(nul("command".to_string()));
        }
        if let Some(index) = self.args.iter().position(|arg| arg.contains('\0')) {
            return Err(nul(format!("argument {}", index + 1)));
        }
        if let Some(dir) = &self.working_dir
            && !dir.is_absolute()
        {
            return Err(SpecError::RelativeWorkingDir {
                service: service(),
                path: dir.display().to_string(),
            });
        }
        self.validate_env()?;
        self.validate_after()?;
        self.validate_ports()?;
        self.validate_health()?;
        self.validate_restart()?;
        if self.stop_grace.is_zero() {
            return Err(SpecError::ZeroDuration {
                service: service(),
                field: "stop_grace",
            });
        }
        if let Some(node) = &self.node {
            let reason = if node.is_empty() {
                Some("must not be empty")
            } else if node.len() > MAX_NODE_NAME_LEN {
                Some("must be at most 253 characters")
            } else if node.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Some("must not contain spaces or control characters")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(SpecError::BadNode {
                    service: service(),
                    node: node.clone(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// Size bounds, each refusal naming the field and the limit.
    fn validate_bounds(&self) -> Result<(), SpecError> {
        let too_large = |field: String, limit: String| SpecError::TooLarge {
            service: self.name.clone(),
            field,
            limit,
        };
        if self.command.len() > MAX_PATH_BYTES {
            return Err(too_large(
                "command".to_string(),
                format!(
                    "{} bytes, the limit is {MAX_PATH_BYTES}",
                    self.command.len()
                ),
            ));
        }
        if let Some(dir) = &self.working_dir
            && dir.as_os_str().len() > MAX_PATH_BYTES
        {
            return Err(too_large(
                "working_dir".to_string(),
                format!("the limit is {MAX_PATH_BYTES} bytes"),
            ));
        }
        let exec_args = match self.health.as_ref().map(|h| &h.check) {
            Some(HealthCheck::Exec { command }) => command.as_slice(),
            _ => &[],
        };
        for (what, list) in [
            ("args", self.args.as_slice()),
            ("health command", exec_args),
        ] {
            if list.len() > MAX_ARGS {
                return Err(too_large(
                    what.to_string(),
                    format!("{} arguments, the limit is {MAX_ARGS}", list.len()),
                ));
            }
            if let Some(index) = list.iter().position(|arg| arg.len() > MAX_ARG_BYTES) {
                return Err(too_large(
                    format!("{what} item {}", index + 1),
                    format!("{} bytes, the limit is {MAX_ARG_BYTES}", list[index].len()),
                ));
            }
        }
        if self.ports.len() > MAX_PORTS {
            return Err(too_large(
                "ports".to_string(),
                format!("{} ports, the limit is {MAX_PORTS}", self.ports.len()),
            ));
        }
        if self.env.len() > MAX_ENV_VARS {
            return Err(too_large(
                "env".to_string(),
                format!("{} variables, the limit is {MAX_ENV_VARS}", self.env.len()),
            ));
        }
        if let Some((key, _)) = self
            .env
            .iter()
            .find(|(key, value)| key.len() > MAX_ARG_BYTES || value.len() > MAX_ARG_BYTES)
        {
            return Err(too_large(
                format!("env `{}`", echo(key)),
                format!("names and values are at most {MAX_ARG_BYTES} bytes"),
            ));
        }
        let bytes = serde_json::to_vec(self).map_or(usize::MAX, |json| json.len());
        if bytes > MAX_SPEC_BYTES {
            return Err(too_large(
                "the spec".to_string(),
                format!("{bytes} bytes as JSON, the limit is {MAX_SPEC_BYTES}"),
            ));
        }
        Ok(())
    }

    fn validate_env(&self) -> Result<(), SpecError> {
        for (key, value) in &self.env {
            let bad = |reason| SpecError::BadEnv {
                service: self.name.clone(),
                key: key.clone(),
                reason,
            };
            let mut bytes = key.bytes();
            let first_ok = bytes
                .next()
                .is_some_and(|byte| byte.is_ascii_alphabetic() || byte == b'_');
            if !first_ok || !bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_') {
                return Err(bad(
                    "names are letters, digits and '_', not starting with a digit",
                ));
            }
            if RESERVED_ENV.contains(&key.as_str()) || key.starts_with("PORT_") {
                return Err(bad("reserved: mesh sets it"));
            }
            if value.contains('\0') {
                return Err(bad("the value contains a NUL byte"));
            }
        }
        Ok(())
    }

    fn validate_after(&self) -> Result<(), SpecError> {
        let mut seen = BTreeSet::new();
        for dependency in &self.after {
            check_name(dependency).map_err(|reason| SpecError::BadDependencyName {
                service: self.name.clone(),
                dependency: echo(dependency),
                reason,
            })?;
            if *dependency == self.name {
                return Err(SpecError::SelfDependency {
                    service: self.name.clone(),
                });
            }
            if !seen.insert(dependency) {
                return Err(SpecError::DuplicateDependency {
                    service: self.name.clone(),
                    dependency: dependency.clone(),
                });
            }
        }
        Ok(())
    }

    fn validate_ports(&self) -> Result<(), SpecError> {
        let service = || self.name.clone();
        let mut names = BTreeSet::new();
        let mut fixed = BTreeSet::new();
        for (index, port) in self.ports.iter().enumerate() {
            match &port.name {
                Some(name) => {
                    check_name(name).map_err(|reason| SpecError::BadPortName {
                        service: service(),
                        name: echo(name),
                        reason,
                    })?;
                    if !names.insert(name) {
                        return Err(SpecError::DuplicatePortName {
                            service: service(),
                            name: name.clone(),
                        });
                    }
                }
                None if self.ports.len() > 1 => {
                    return Err(SpecError::UnnamedPort {
                        service: service(),
                        count: self.ports.len(),
                        index: index + 1,
                    });
                }
                None => {}
            }
            match &port.source {
                PortSource::Fixed(0) => {
                    return Err(SpecError::PortOutOfRange {
                        service: service(),
                        port: 0,
                    });
                }
                PortSource::Fixed(number) => {
                    if !fixed.insert((*number, port.proto)) {
                        return Err(SpecError::DuplicatePort {
                            service: service(),
                            port: *number,
                            proto: port.proto,
                        });
                    }
                }
                PortSource::Auto { pool } => {
                    check_name(pool).map_err(|reason| SpecError::BadPoolName {
                        service: service(),
                        pool: pool.clone(),
                        reason,
                    })?;
                }
            }
        }
        let defined: BTreeSet<String> = self
            .port_variables()
            .into_iter()
            .map(|(_, variable)| variable)
            .collect();
        for arg in &self.args {
            if let Some(variable) = referenced_port_variables(arg)
                .into_iter()
                .find(|variable| !defined.contains(variable))
            {
                return Err(SpecError::UnknownPortVariable {
                    service: service(),
                    variable,
                });
            }
        }
        Ok(())
    }

    fn validate_health(&self) -> Result<(), SpecError> {
        let Some(health) = &self.health else {
            return Ok(());
        };
        let service = || self.name.clone();
        let bad = |reason: String| SpecError::BadHealth {
            service: service(),
            reason,
        };
        for (field, value) in [
            ("health.interval", health.interval),
            ("health.timeout", health.timeout),
            ("health.start_interval", health.start_interval),
        ] {
            if value.is_zero() {
                return Err(SpecError::ZeroDuration {
                    service: service(),
                    field,
                });
            }
        }
        if health.failures_before_unhealthy == 0 {
            return Err(bad(
                "failures_before_unhealthy must be at least 1".to_string()
            ));
        }
        match &health.check {
            HealthCheck::Tcp | HealthCheck::Http { .. } => {
                let kind = if health.check == HealthCheck::Tcp {
                    "tcp"
                } else {
                    "http"
                };
                if self.ports.is_empty() {
                    return Err(bad(format!(
                        "{kind} checks probe the service's PORT, but it declares no ports"
                    )));
                }
                let index = self.health_port_index().ok_or_else(|| {
                    bad(format!(
                        "port `{}` is not one of the service's ports",
                        health.port.as_deref().unwrap_or_default()
                    ))
                })?;
                if self.ports[index].proto != Proto::Tcp {
                    return Err(bad(format!("{kind} checks need a tcp port")));
                }
                if let HealthCheck::Http { path } = &health.check
                    && (!path.starts_with('/') || path.chars().any(char::is_whitespace))
                {
                    return Err(bad(format!(
                        "http path `{path}` must start with '/' and contain no spaces"
                    )));
                }
            }
            HealthCheck::Exec { command } => {
                if command
                    .first()
                    .is_none_or(|program| program.trim().is_empty())
                {
                    return Err(bad("exec checks need a command".to_string()));
                }
                if command.iter().any(|arg| arg.contains('\0')) {
                    return Err(bad("the exec command contains a NUL byte".to_string()));
                }
            }
        }
        Ok(())
    }

    fn validate_restart(&self) -> Result<(), SpecError> {
        let restart = &self.restart;
        let service = || self.name.clone();
        let bad = |reason: String| SpecError::BadRestart {
            service: service(),
            reason,
        };
        for (field, value) in [
            ("restart.first_delay", restart.first_delay),
            ("restart.cap", restart.cap),
            ("restart.reset_after", restart.reset_after),
        ] {
            if value.is_zero() {
                return Err(SpecError::ZeroDuration {
                    service: service(),
                    field,
                });
            }
        }
        if !restart.factor.is_finite() || restart.factor < 1.0 {
            return Err(bad(format!(
                "factor must be a number ≥ 1, got {}",
                restart.factor
            )));
        }
        if restart.cap < restart.first_delay {
            return Err(bad(format!(
                "cap ({}) is shorter than first_delay ({})",
                duration_text::format(restart.cap),
                duration_text::format(restart.first_delay)
            )));
        }
        if !(0.0..1.0).contains(&restart.jitter) {
            return Err(bad(format!(
                "jitter is a fraction, 0 ≤ jitter < 1, got {}",
                restart.jitter
            )));
        }
        if restart.failed_after == 0 {
            return Err(bad("failed_after must be at least 1".to_string()));
        }
        Ok(())
    }
}

/// Validates a whole set of specs: each on its own, then names unique, every dependency
/// known, no dependency cycle, and no fixed port asked for twice on one node (specs without a
/// `node` count as one node: the one adding them).
pub fn validate_set(specs: &[ServiceSpec]) -> Result<(), SpecError> {
    check_set(specs, false)
}

/// [`validate_set`], with dependencies outside the set allowed when `allow_external`.
fn check_set(specs: &[ServiceSpec], allow_external: bool) -> Result<(), SpecError> {
    for spec in specs {
        spec.validate()?;
    }
    let pairs = specs
        .iter()
        .map(|spec| (spec.name.clone(), spec.after.clone()));
    if allow_external {
        DependencyGraph::with_external(pairs)?;
    } else {
        DependencyGraph::new(pairs)?;
    }
    let mut fixed: BTreeMap<(Option<&str>, u16, Proto), &str> = BTreeMap::new();
    for spec in specs {
        for port in &spec.ports {
            if let PortSource::Fixed(number) = port.source
                && let Some(first) =
                    fixed.insert((spec.node.as_deref(), number, port.proto), &spec.name)
            {
                return Err(SpecError::FixedPortConflict {
                    first: first.to_string(),
                    second: spec.name.clone(),
                    port: number,
                    proto: port.proto,
                });
            }
        }
    }
    Ok(())
}

/// Whether a variable name is one [`expand_args`] replaces.
fn is_port_variable(name: &str) -> bool {
    name == "PORT" || name.starts_with("PORT_")
}

/// One `$` reference found in a text.
enum Token<'a> {
    Literal(&'a str),
    Dollar,
    Variable { name: &'a str, raw: &'a str },
}

/// Splits a text into literals, `$$` and `$NAME` / `${NAME}` references (shell-style names:
/// a letter or `_`, then letters, digits, `_`; the longest run is the name).
fn tokenize(text: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let bytes = text.as_bytes();
    let mut literal_start = 0;
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] != b'$' {
            index += 1;
            continue;
        }
        let (token, end) = match bytes.get(index + 1) {
            Some(b'$') => (Some(Token::Dollar), index + 2),
            Some(b'{') => match text[index + 2..].find('}') {
                Some(close) => {
                    let end = index + 2 + close + 1;
                    (
                        Some(Token::Variable {
                            name: &text[index + 2..end - 1],
                            raw: &text[index..end],
                        }),
                        end,
                    )
                }
                None => (None, index + 1),
            },
            Some(byte) if byte.is_ascii_alphabetic() || *byte == b'_' => {
                let length = bytes[index + 1..]
                    .iter()
                    .take_while(|byte| byte.is_ascii_alphanumeric() || **byte == b'_')
                    .count();
                let end = index + 1 + length;
                (
                    Some(Token::Variable {
                        name: &text[index + 1..end],
                        raw: &text[index..end],
                    }),
                    end,
                )
            }
            _ => (None, index + 1),
        };
        if let Some(token) = token {
            if literal_start < index {
                tokens.push(Token::Literal(&text[literal_start..index]));
            }
            tokens.push(token);
            literal_start = end;
        }
        index = end;
    }
    if literal_start < text.len() {
        tokens.push(Token::Literal(&text[literal_start..]));
    }
    tokens
}

/// The `PORT`/`PORT_*` variables a text refers to.
fn referenced_port_variables(text: &str) -> Vec<String> {
    tokenize(text)
        .into_iter()
        .filter_map(|token| match token {
            Token::Variable { name, .. } if is_port_variable(name) => Some(name.to_string()),
            _ => None,
        })
        .collect()
}

/// Replaces `$PORT`, `${PORT}`, `$PORT_<NAME>`, `${PORT_<NAME>}` in one text with the values
/// in `ports` (keyed by variable name, as [`ServiceSpec::port_env`] builds it) and `$$` with
/// `$`. Every other `$` reference (`$HOME`, an unknown `$PORT_X`) is left as written: there is
/// no shell, and validation refuses unknown port variables before this runs.
pub fn expand_port_variables(text: &str, ports: &BTreeMap<String, u16>) -> String {
    let mut out = String::with_capacity(text.len());
    for token in tokenize(text) {
        match token {
            Token::Literal(literal) => out.push_str(literal),
            Token::Dollar => out.push('$'),
            Token::Variable { name, raw } => match ports.get(name) {
                Some(port) if is_port_variable(name) => out.push_str(&port.to_string()),
                _ => out.push_str(raw),
            },
        }
    }
    out
}

/// [`expand_port_variables`] over every argument.
pub fn expand_args(args: &[String], ports: &BTreeMap<String, u16>) -> Vec<String> {
    args.iter()
        .map(|arg| expand_port_variables(arg, ports))
        .collect()
}

/// Durations as human text in TOML: `"250ms"`, `"10s"`, `"5m"`, `"1h"` (a whole number and a
/// unit). Printed with the largest unit that is exact.
pub mod duration_text {
    use std::time::Duration;

    /// Parses `"<whole number><ms|s|m|h>"`.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = text.split_at(digits);
        let bad = || {
            format!(
                "bad duration `{text}`: expected a whole number and a unit (ms, s, m or h), e.g. 250ms, 10s, 5m, 1h"
            )
        };
        let number: u64 = number.parse().map_err(|_| bad())?;
        let millis_per_unit = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        number
            .checked_mul(millis_per_unit)
            .map(Duration::from_millis)
            .ok_or_else(|| format!("bad duration `{text}`: too long"))
    }

    /// Formats with the largest exact unit (sub-millisecond parts are dropped).
    pub fn format(duration: Duration) -> String {
        let millis = duration.as_millis();
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if millis >= size && millis.is_multiple_of(size) {
                return format!("{}{unit}", millis / size);
            }
        }
        if millis == 0 {
            "0s".to_string()
        } else {
            format!("{millis}ms")
        }
    }

    pub fn serialize<S: serde::Serializer>(
        duration: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*duration))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_example() -> &'static str {
        include_str!("../../deploy/examples/chain.toml")
    }

    fn crashy_example() -> &'static str {
        include_str!("../../deploy/examples/crashy.toml")
    }

    fn cli(name: &str, command: &[&str]) -> CliServiceParts {
        CliServiceParts {
            name: name.to_string(),
            command: command.iter().map(|part| part.to_string()).collect(),
            ..CliServiceParts::default()
        }
    }

    fn spec_with(name: &str, after: &[&str]) -> ServiceSpec {
        let mut spec = ServiceSpec::new(name, "true");
        spec.after = after.iter().map(|dep| dep.to_string()).collect();
        spec
    }

    #[test]
    fn example_files_parse_and_validate() {
        let chain = parse_service_file(chain_example()).expect("chain.toml is valid");
        let names: Vec<&str> = chain.iter().map(|spec| spec.name.as_str()).collect();
        assert_eq!(names, ["db", "api", "web"]);
        let web = &chain[2];
        assert_eq!(web.after, ["api"]);
        assert_eq!(
            web.ports,
            [PortSpec {
                name: Some("http".to_string()),
                ..PortSpec::auto()
            }]
        );
        let health = web.health.as_ref().expect("web has a health check");
        assert_eq!(
            health.check,
            HealthCheck::Http {
                path: "/".to_string()
            }
        );
        assert!(web.args.iter().any(|arg| arg == "${PORT_HTTP}"));
        let port_at = web
            .args
            .iter()
            .position(|arg| arg == "${PORT_HTTP}")
            .expect("web's args name its port");
        assert_eq!(
            expand_args(&web.args, &web.port_env(&[20002]))[port_at],
            "20002",
            "web's args expand"
        );
        let crashy = parse_service_file(crashy_example()).expect("crashy.toml is valid");
        assert!(crashy.iter().any(|spec| spec.name == "crashy"));
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let specs = parse_service_file(
            r#"
            [[service]]
            name = "db"
            command = "python3"
            args = ["-m", "http.server", "$PORT"]
            ports = [{}]
            health = { check = "tcp" }
            "#,
        )
        .expect("valid");
        let spec = &specs[0];
        assert_eq!(spec.ports, [PortSpec::auto()]);
        assert_eq!(spec.restart, RestartSpec::default());
        assert_eq!(spec.restart.policy, RestartPolicy::Always);
        assert_eq!(spec.restart.first_delay, Duration::from_millis(80));
        assert_eq!(spec.restart.factor, 2.0);
        assert_eq!(spec.restart.cap, Duration::from_secs(60));
        assert_eq!(spec.restart.jitter, 0.1);
        assert_eq!(spec.restart.reset_after, Duration::from_secs(30));
        assert_eq!(spec.restart.failed_after, 5);
        assert!(spec.restart.keep_retrying_when_failed);
        assert_eq!(spec.stop_grace, Duration::from_secs(10));
        let health = spec.health.as_ref().expect("health");
        assert_eq!(health, &HealthSpec::new(HealthCheck::Tcp));
        assert_eq!(health.interval, Duration::from_secs(2));
        assert_eq!(health.timeout, Duration::from_secs(1));
        assert_eq!(health.start_grace, Duration::from_secs(10));
        assert_eq!(health.start_interval, Duration::from_millis(250));
        assert_eq!(health.failures_before_unhealthy, 3);
        assert_eq!(spec.node, None);
    }

    #[test]
    fn every_field_round_trips_through_toml() {
        let text = r#"
            [[service]]
            name = "api"
            command = "/usr/bin/api"
            args = ["--listen", "127.0.0.1:${PORT}", "--admin", "$PORT_ADMIN", "--metrics=$PORT_METRICS"]
            working_dir = "/srv/api"
            env = { RUST_LOG = "info" }
            after = ["db"]
            ports = [
                { name = "http" },
                { name = "admin", port = 9000 },
                { name = "metrics", pool = "metrics", proto = "tcp" },
                { name = "gossip", port = "auto", proto = "udp" },
            ]
            stop_grace = "30s"
            node = "pi-1"

            [service.health]
            check = "http"
            path = "/healthz"
            port = "http"
            interval = "5s"
            timeout = "500ms"
            start_grace = "1m"
            start_interval = "100ms"
            failures_before_unhealthy = 2

            [service.restart]
            policy = "on-failure"
            first_delay = "200ms"
            factor = 3.0
            cap = "2m"
            jitter = 0.2
            reset_after = "1h"
            failed_after = 10
            keep_retrying_when_failed = false

            [[service]]
            name = "db"
            command = "db"
        "#;
        let specs = parse_service_file(text).expect("valid");
        let api = &specs[0];
        assert_eq!(api.ports[1].source, PortSource::Fixed(9000));
        assert_eq!(
            api.ports[2].source,
            PortSource::Auto {
                pool: "metrics".to_string()
            }
        );
        assert_eq!(api.ports[3].proto, Proto::Udp);
        assert_eq!(api.restart.policy, RestartPolicy::OnFailure);
        assert_eq!(api.restart.cap, Duration::from_secs(120));
        assert_eq!(api.stop_grace, Duration::from_secs(30));
        let health = api.health.as_ref().expect("health");
        assert_eq!(health.timeout, Duration::from_millis(500));
        assert_eq!(health.start_grace, Duration::from_secs(60));

        let written = toml::to_string(&ServiceFile {
            service: specs.clone(),
        })
        .expect("serializes");
        let reread = parse_service_file(&written).expect("re-reads");
        assert_eq!(reread, specs);
        // JSON too (the API and the document use serde).
        let json = serde_json::to_string(&specs).expect("json");
        let from_json: Vec<ServiceSpec> = serde_json::from_str(&json).expect("json back");
        assert_eq!(from_json, specs);
    }

    #[test]
    fn typos_and_bad_values_in_toml_are_refused() {
        for (text, needle) in [
            (
                "[[service]]\nname = \"a\"\ncommand = \"x\"\nafter_ = [\"b\"]\n",
                "unknown field `after_`",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = \"x\"\nports = [{ port = 70000 }]\n",
                "port 70000 is out of range",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = \"x\"\nports = [{ port = 80, pool = \"web\" }]\n",
                "`pool` applies only to auto ports",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = \"x\"\nports = [{ port = \"any\" }]\n",
                "expected a port number or \"auto\"",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = \"x\"\nhealth = { check = \"ping\" }\n",
                "unknown check `ping`",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = \"x\"\nhealth = { check = \"exec\" }\n",
                "exec checks need `command",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = \"x\"\nhealth = { check = \"tcp\", path = \"/\" }\n",
                "`path` applies only to http",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = \"x\"\nstop_grace = \"10\"\n",
                "expected a whole number and a unit",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = \"x\"\nstop_grace = \"1.5s\"\n",
                "whole number",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = \"x\"\nrestart = { policy = \"sometimes\" }\n",
                "unknown variant `sometimes`",
            ),
        ] {
            let err = parse_service_file(text).expect_err(text).to_string();
            assert!(err.contains(needle), "expected `{needle}` in: {err}");
        }
    }

    #[test]
    fn names_follow_dns_label_rules() {
        assert!(check_name("db").is_ok());
        assert!(check_name("web-2").is_ok());
        assert!(check_name(&"a".repeat(63)).is_ok());
        for bad in [
            "",
            "Web",
            "web_2",
            "-web",
            "web-",
            "wéb",
            "a.b",
            &"a".repeat(64),
        ] {
            let spec = ServiceSpec::new(bad, "true");
            assert!(
                matches!(spec.validate(), Err(SpecError::BadName { .. })),
                "{bad:?} should be refused"
            );
        }
        assert_eq!(
            ServiceSpec::new("Web", "true")
                .validate()
                .expect_err("bad")
                .to_string(),
            "bad service name `Web`: only lowercase letters a-z, digits 0-9 and '-' are allowed"
        );
    }

    #[test]
    fn single_spec_validation_names_the_problem() {
        let base = || ServiceSpec::new("svc", "run");
        let mut cases: Vec<(ServiceSpec, &str)> = Vec::new();

        cases.push((
            ServiceSpec::new("svc", "  "),
            "service `svc`: the command is empty",
        ));
        let mut spec = base();
        spec.args = vec!["ok".to_string(), "a\0b".to_string()];
        cases.push((spec, "service `svc`: argument 2 contains a NUL byte"));
        let mut spec = base();
        spec.working_dir = Some(PathBuf::from("srv/app"));
        cases.push((spec, "working_dir `srv/app` must be an absolute path"));
        let mut spec = base();
        spec.env.insert("PORT".to_string(), "1".to_string());
        cases.push((
            spec,
            "bad environment variable `PORT`: reserved: mesh sets it",
        ));
        let mut spec = base();
        spec.env.insert("PORT_HTTP".to_string(), "1".to_string());
        cases.push((spec, "`PORT_HTTP`: reserved"));
        let mut spec = base();
        spec.env.insert("1X".to_string(), "1".to_string());
        cases.push((spec, "`1X`: names are letters"));
        let mut spec = base();
        spec.after = vec!["svc".to_string()];
        cases.push((spec, "service `svc` depends on itself"));
        let mut spec = base();
        spec.after = vec!["db".to_string(), "db".to_string()];
        cases.push((spec, "dependency `db` is listed twice"));
        let mut spec = base();
        spec.ports = vec![PortSpec {
            source: PortSource::Fixed(0),
            ..PortSpec::auto()
        }];
        cases.push((spec, "port 0 is out of range (1-65535)"));
        let mut spec = base();
        spec.ports = vec![
            PortSpec {
                name: Some("a".to_string()),
                source: PortSource::Fixed(80),
                proto: Proto::Tcp,
            },
            PortSpec {
                name: Some("b".to_string()),
                source: PortSource::Fixed(80),
                proto: Proto::Tcp,
            },
        ];
        cases.push((spec, "port 80/tcp is listed twice"));
        let mut spec = base();
        spec.ports = vec![PortSpec::auto(), PortSpec::auto()];
        cases.push((spec, "has 2 ports, so each needs a name"));
        let mut spec = base();
        spec.ports = vec![
            PortSpec {
                name: Some("a".to_string()),
                ..PortSpec::auto()
            },
            PortSpec {
                name: Some("a".to_string()),
                ..PortSpec::auto()
            },
        ];
        cases.push((spec, "port name `a` is used twice"));
        let mut spec = base();
        spec.args = vec!["--port=$PORT".to_string()];
        cases.push((
            spec,
            "argument uses $PORT, but the service has no such port",
        ));
        let mut spec = base();
        spec.ports = vec![PortSpec::auto()];
        spec.args = vec!["${PORT_ADMIN}".to_string()];
        cases.push((spec, "uses $PORT_ADMIN"));
        let mut spec = base();
        spec.health = Some(HealthSpec::new(HealthCheck::Tcp));
        cases.push((
            spec,
            "tcp checks probe the service's PORT, but it declares no ports",
        ));
        let mut spec = base();
        spec.ports = vec![PortSpec::auto()];
        spec.health = Some(HealthSpec::new(HealthCheck::Http {
            path: "healthz".to_string(),
        }));
        cases.push((spec, "http path `healthz` must start with '/'"));
        let mut spec = base();
        spec.ports = vec![PortSpec::auto()];
        spec.health = Some(HealthSpec {
            port: Some("admin".to_string()),
            ..HealthSpec::new(HealthCheck::Tcp)
        });
        cases.push((spec, "port `admin` is not one of the service's ports"));
        let mut spec = base();
        spec.ports = vec![PortSpec {
            proto: Proto::Udp,
            ..PortSpec::auto()
        }];
        spec.health = Some(HealthSpec::new(HealthCheck::Tcp));
        cases.push((spec, "tcp checks need a tcp port"));
        let mut spec = base();
        spec.health = Some(HealthSpec::new(HealthCheck::Exec { command: vec![] }));
        cases.push((spec, "exec checks need a command"));
        let mut spec = base();
        spec.health = Some(HealthSpec {
            interval: Duration::ZERO,
            ..HealthSpec::new(HealthCheck::Exec {
                command: vec!["true".to_string()],
            })
        });
        cases.push((
            spec,
            "service `svc`: health.interval must be greater than zero",
        ));
        let mut spec = base();
        spec.health = Some(HealthSpec {
            failures_before_unhealthy: 0,
            ..HealthSpec::new(HealthCheck::Exec {
                command: vec!["true".to_string()],
            })
        });
        cases.push((spec, "failures_before_unhealthy must be at least 1"));
        let mut spec = base();
        spec.restart.first_delay = Duration::ZERO;
        cases.push((spec, "restart.first_delay must be greater than zero"));
        let mut spec = base();
        spec.restart.factor = 0.5;
        cases.push((spec, "factor must be a number ≥ 1, got 0.5"));
        let mut spec = base();
        spec.restart.factor = f64::NAN;
        cases.push((spec, "factor must be a number ≥ 1"));
        let mut spec = base();
        spec.restart.cap = Duration::from_millis(50);
        cases.push((spec, "cap (50ms) is shorter than first_delay (80ms)"));
        let mut spec = base();
        spec.restart.jitter = 1.0;
        cases.push((spec, "jitter is a fraction, 0 ≤ jitter < 1, got 1"));
        let mut spec = base();
        spec.restart.failed_after = 0;
        cases.push((spec, "failed_after must be at least 1"));
        let mut spec = base();
        spec.stop_grace = Duration::ZERO;
        cases.push((spec, "stop_grace must be greater than zero"));
        let mut spec = base();
        spec.node = Some("pi 1".to_string());
        cases.push((spec, "bad node name `pi 1`"));

        for (spec, needle) in cases {
            let err = spec.validate().expect_err(needle).to_string();
            assert!(err.contains(needle), "expected `{needle}` in: {err}");
        }
    }

    #[test]
    fn set_validation_finds_unknown_dependencies_cycles_and_clashes() {
        let err = validate_set(&[spec_with("api", &["db"])]).expect_err("unknown");
        assert_eq!(err.to_string(), "service `api`: unknown dependency `db`");

        let err =
            validate_set(&[spec_with("a", &["b"]), spec_with("b", &["a"])]).expect_err("cycle");
        assert_eq!(err.to_string(), "dependency cycle: a -> b -> a");

        let err = validate_set(&[spec_with("a", &[]), spec_with("a", &[])]).expect_err("dup");
        assert_eq!(err.to_string(), "service `a` is defined twice");

        let fixed = |name: &str, node: Option<&str>| {
            let mut spec = spec_with(name, &[]);
            spec.ports = vec![PortSpec {
                source: PortSource::Fixed(8080),
                ..PortSpec::auto()
            }];
            spec.node = node.map(String::from);
            spec
        };
        let err =
            validate_set(&[fixed("api", Some("pi")), fixed("web", Some("pi"))]).expect_err("clash");
        assert_eq!(
            err.to_string(),
            "services `api` and `web` both ask for fixed port 8080/tcp on the same node"
        );
        validate_set(&[fixed("api", Some("pi")), fixed("web", Some("nuc"))])
            .expect("different nodes");

        validate_set(&[
            spec_with("db", &[]),
            spec_with("api", &["db"]),
            spec_with("web", &["api", "db"]),
        ])
        .expect("a DAG");
    }

    #[test]
    fn cli_parts_build_a_spec() {
        let spec = ServiceSpec::from_cli_parts(CliServiceParts {
            after: vec!["db".to_string()],
            ports: vec!["auto".to_string()],
            health: Some("http:/healthz".to_string()),
            restart: Some("on-failure".to_string()),
            node: Some("pi-1".to_string()),
            ..cli("api", &["python3", "-m", "http.server", "$PORT"])
        })
        .expect("valid");
        assert_eq!(spec.command, "python3");
        assert_eq!(spec.args, ["-m", "http.server", "$PORT"]);
        assert_eq!(spec.after, ["db"]);
        assert_eq!(spec.ports, [PortSpec::auto()]);
        assert_eq!(
            spec.health.as_ref().map(|health| &health.check),
            Some(&HealthCheck::Http {
                path: "/healthz".to_string()
            })
        );
        assert_eq!(spec.restart.policy, RestartPolicy::OnFailure);
        assert_eq!(spec.node.as_deref(), Some("pi-1"));
    }

    #[test]
    fn cli_port_and_health_forms() {
        assert_eq!(PortSpec::from_cli("auto").expect("valid"), PortSpec::auto());
        assert_eq!(
            PortSpec::from_cli("8080").expect("valid").source,
            PortSource::Fixed(8080)
        );
        assert_eq!(
            PortSpec::from_cli("metrics=auto:metrics").expect("valid"),
            PortSpec {
                name: Some("metrics".to_string()),
                source: PortSource::Auto {
                    pool: "metrics".to_string()
                },
                proto: Proto::Tcp
            }
        );
        assert_eq!(
            PortSpec::from_cli("dns=5353/udp").expect("valid"),
            PortSpec {
                name: Some("dns".to_string()),
                source: PortSource::Fixed(5353),
                proto: Proto::Udp
            }
        );
        for (text, needle) in [
            (
                "70000",
                "bad --port `70000`: port numbers go from 1 to 65535",
            ),
            ("0", "port numbers go from 1 to 65535"),
            ("http", "expected auto, auto:POOL or a port number"),
            ("auto/sctp", "unknown protocol `sctp`"),
        ] {
            let err = PortSpec::from_cli(text).expect_err(text).to_string();
            assert!(err.contains(needle), "expected `{needle}` in: {err}");
        }

        assert_eq!(
            HealthSpec::from_cli("tcp").expect("valid").check,
            HealthCheck::Tcp
        );
        assert_eq!(
            HealthSpec::from_cli("http").expect("valid").check,
            HealthCheck::Http {
                path: "/".to_string()
            }
        );
        assert_eq!(
            HealthSpec::from_cli("exec:pg_isready -h 127.0.0.1")
                .expect("valid")
                .check,
            HealthCheck::Exec {
                command: vec![
                    "pg_isready".to_string(),
                    "-h".to_string(),
                    "127.0.0.1".to_string()
                ]
            }
        );
        for (text, needle) in [
            ("http:healthz", "must start with '/'"),
            ("exec:", "exec needs a command"),
            ("exec:   ", "exec needs a command"),
            ("grpc", "expected tcp, http, http:PATH or exec:CMD"),
            ("tcp:8080", "expected tcp"),
        ] {
            let err = HealthSpec::from_cli(text).expect_err(text).to_string();
            assert!(err.contains(needle), "expected `{needle}` in: {err}");
        }
    }

    #[test]
    fn cli_errors_name_the_problem() {
        let err = ServiceSpec::from_cli_parts(cli("api", &[])).expect_err("no command");
        assert_eq!(err.to_string(), "service `api`: the command is empty");
        let err = ServiceSpec::from_cli_parts(CliServiceParts {
            restart: Some("sometimes".to_string()),
            ..cli("api", &["x"])
        })
        .expect_err("bad policy");
        assert_eq!(
            err.to_string(),
            "bad --restart `sometimes`: expected always, on-failure or never"
        );
        let err = ServiceSpec::from_cli_parts(CliServiceParts {
            health: Some("tcp".to_string()),
            ..cli("api", &["x"])
        })
        .expect_err("tcp without a port");
        assert!(err.to_string().contains("declares no ports"), "{err}");
        let err = ServiceSpec::from_cli_parts(cli("API", &["x"])).expect_err("bad name");
        assert!(matches!(err, SpecError::BadName { .. }));
        let err = ServiceSpec::from_cli_parts(CliServiceParts {
            ports: vec!["auto".to_string(), "auto".to_string()],
            ..cli("api", &["x"])
        })
        .expect_err("two unnamed ports");
        assert!(
            matches!(err, SpecError::UnnamedPort { index: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn port_env_names_every_port() {
        let mut spec = ServiceSpec::new("api", "x");
        spec.ports = vec![
            PortSpec {
                name: Some("http".to_string()),
                ..PortSpec::auto()
            },
            PortSpec {
                name: Some("admin-ui".to_string()),
                ..PortSpec::auto()
            },
        ];
        let env = spec.port_env(&[20000, 20001]);
        assert_eq!(
            env,
            BTreeMap::from([
                ("PORT".to_string(), 20000),
                ("PORT_HTTP".to_string(), 20000),
                ("PORT_ADMIN_UI".to_string(), 20001),
            ])
        );
        let mut single = ServiceSpec::new("db", "x");
        single.ports = vec![PortSpec::auto()];
        assert_eq!(
            single.port_env(&[25000]),
            BTreeMap::from([("PORT".to_string(), 25000)])
        );
    }

    #[test]
    fn expansion_replaces_only_port_variables() {
        let ports = BTreeMap::from([
            ("PORT".to_string(), 20000),
            ("PORT_ADMIN".to_string(), 20001),
        ]);
        let args: Vec<String> = [
            "$PORT",
            "--listen=127.0.0.1:${PORT}",
            "${PORT}0",
            "$PORT_ADMIN",
            "$PORT/x",
            "$$PORT",
            "$$$PORT",
            "cost: 5$",
            "$HOME",
            "${HOME}",
            "$PORTAL",
            "$PORT_OTHER",
            "${PORT",
            "$1",
            "plain",
            "",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        assert_eq!(
            expand_args(&args, &ports),
            [
                "20000",
                "--listen=127.0.0.1:20000",
                "200000",
                "20001",
                "20000/x",
                "$PORT",
                "$20000",
                "cost: 5$",
                "$HOME",
                "${HOME}",
                "$PORTAL",
                "$PORT_OTHER",
                "${PORT",
                "$1",
                "plain",
                "",
            ]
        );
        // Non-ASCII text passes through.
        assert_eq!(expand_port_variables("ü$PORTü", &ports), "ü20000ü");
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(
            duration_text::parse("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(duration_text::parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration_text::parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration_text::parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration_text::parse("0s"), Ok(Duration::ZERO));
        assert!(duration_text::parse("s").is_err());
        assert!(duration_text::parse("-1s").is_err());
        assert!(duration_text::parse("99999999999999999999h").is_err());
        for (duration, text) in [
            (Duration::from_millis(100), "100ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(duration_text::format(duration), text);
            assert_eq!(duration_text::parse(text), Ok(duration));
        }
    }

    #[test]
    fn restart_policies_parse() {
        assert_eq!(
            "on-failure".parse::<RestartPolicy>(),
            Ok(RestartPolicy::OnFailure)
        );
        assert_eq!(RestartPolicy::OnFailure.to_string(), "on-failure");
        assert!("On-Failure".parse::<RestartPolicy>().is_err());
    }

    #[test]
    fn a_huge_name_is_refused_without_being_echoed_whole() {
        let name = "n".repeat(10_000);
        let err = ServiceSpec::new(name, "true").validate().unwrap_err();
        let text = err.to_string();
        assert!(text.len() < 200, "{} bytes", text.len());
        assert!(text.contains("(10000 bytes)"), "{text}");
        assert!(text.contains("at most 63 characters"), "{text}");
    }

    #[test]
    fn each_bound_names_its_limit() {
        let mut spec = ServiceSpec::new("big", "true");
        spec.args = vec!["x".repeat(1_900_000)];
        assert_eq!(
            spec.validate().unwrap_err().to_string(),
            "service `big`: args item 1 is too large: 1900000 bytes, the limit is 8192"
        );
        spec.args = Vec::new();
        spec.ports = (0..=MAX_PORTS)
            .map(|i| PortSpec {
                name: Some(format!("p{i}")),
                ..PortSpec::auto()
            })
            .collect();
        assert_eq!(
            spec.validate().unwrap_err().to_string(),
            "service `big`: ports is too large: 33 ports, the limit is 32"
        );
        spec.ports = Vec::new();
        spec.args = vec!["x".to_string(); MAX_ARGS + 1];
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("the limit is 256")
        );
        // Within every per-field bound, over the whole-spec bound.
        spec.args = vec!["x".repeat(MAX_ARG_BYTES); 9];
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("as JSON, the limit is 65536")
        );
        spec.args.clear();
        spec.command = "/".repeat(MAX_PATH_BYTES + 1);
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("command is too large")
        );
        spec.command = "true".to_string();
        spec.env = (0..=MAX_ENV_VARS)
            .map(|i| (format!("V{i}"), String::new()))
            .collect();
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("the limit is 128")
        );
        spec.env.clear();
        spec.health = Some(HealthSpec::new(HealthCheck::Exec {
            command: vec!["y".repeat(MAX_ARG_BYTES + 1)],
        }));
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("health command item 1 is too large")
        );
    }

    #[test]
    fn user_and_group_are_checked_for_form_only() {
        let mut spec = ServiceSpec::new("svc", "true");
        spec.user = Some("nobody".to_string());
        spec.group = Some("65534".to_string());
        assert!(
            spec.validate().is_ok(),
            "existence is the running node's question"
        );
        spec.user = Some("-rf".to_string());
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("bad user `-rf`")
        );
        spec.user = Some("a".repeat(33));
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("at most 32")
        );
        spec.user = Some("ok$".to_string());
        spec.group = Some("bad group".to_string());
        assert!(
            spec.validate()
                .unwrap_err()
                .to_string()
                .contains("bad group")
        );
        // The CLI form carries them.
        let spec = ServiceSpec::from_cli_parts(CliServiceParts {
            name: "svc".to_string(),
            user: Some("nobody".to_string()),
            group: Some("nogroup".to_string()),
            command: vec!["true".to_string()],
            ..CliServiceParts::default()
        })
        .unwrap();
        assert_eq!(
            (spec.user.as_deref(), spec.group.as_deref()),
            (Some("nobody"), Some("nogroup"))
        );
    }
}
