//! The health check of a spec ([`HealthSpec`], [`HealthCheck`]): tcp, http or exec, its
//! timing, its TOML form and the `--health` form of the command line.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bounds::*;
use super::duration_text;
use super::error::SpecError;

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
