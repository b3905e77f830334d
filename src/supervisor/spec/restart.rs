//! The restart section of a spec: when a service is restarted ([`RestartPolicy`]), the
//! backoff between tries ([`RestartSpec`]) and what a dependency's restart does to its
//! dependents ([`DependencyRestart`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bounds::*;
use super::duration_text;
use crate::supervisor::backoff::{
    BackoffConfig, DEFAULT_BACKOFF_CAP, DEFAULT_BACKOFF_FACTOR, DEFAULT_FIRST_DELAY,
    DEFAULT_JITTER, DEFAULT_RESET_AFTER,
};

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
    pub(super) fn is_default(&self) -> bool {
        *self == DependencyRestart::RideThrough
    }
}

/// Restart policy and backoff (`[service.restart]` in TOML). See
/// [`crate::supervisor::backoff`] for the delay formula.
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
