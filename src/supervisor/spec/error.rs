//! [`SpecError`]: why a spec, or a set of specs, is refused. Every message names the service
//! and the field. Its own file so that the dependency graph ([`crate::supervisor::graph`]) can
//! refuse a set without depending on the specs.

use crate::ports::Proto;

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
    #[error("service `{service}`: bad placement: {reason}")]
    BadPlacement { service: String, reason: String },
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
    #[error("service `{service}`: bad advertise `{value}`: {reason}")]
    BadAdvertise {
        service: String,
        value: String,
        reason: String,
    },
    #[error("bad --{flag} `{value}`: {reason}")]
    BadCliValue {
        flag: &'static str,
        value: String,
        reason: String,
    },
}
