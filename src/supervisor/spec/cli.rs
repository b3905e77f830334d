//! The command-line form of a spec: [`CliServiceParts`] (plain strings, no clap) and
//! [`ServiceSpec::from_cli_parts`], which builds and validates a spec from them.

use super::error::SpecError;
use super::health::HealthSpec;
use super::port::PortSpec;
use super::restart::DependencyRestart;
use super::service::ServiceSpec;

/// The plain-string parts of `mesh service add NAME [--after DEP]... [--port auto|N]...
/// [--health tcp|http:PATH|exec:CMD] [--restart always|on-failure|never] [--node NAME]
/// [--advertise TYPE] -- CMD ARGS...`, as the CLI parsed them.
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
    /// `--replicas` value.
    pub replicas: Option<u32>,
    /// `--exclusive`, `--pinned`, `--not-sticky`.
    pub exclusive: bool,
    pub pinned: bool,
    pub not_sticky: bool,
    /// Each `--on` value (the eligible nodes).
    pub nodes: Vec<String>,
    /// Each `--require` value: `tag.KEY=VALUE`, `arch=…`, `os=…`, `device_class=…`,
    /// `profile=…`, `min_score=N`, `min_memory_mb=N`.
    pub require: Vec<String>,
    /// `--user` value.
    pub user: Option<String>,
    /// `--group` value.
    pub group: Option<String>,
    /// `--advertise` value: a DNS-SD service type such as `_http._tcp`.
    pub advertise: Option<String>,
    /// `CMD ARGS...` after `--`.
    pub command: Vec<String>,
}

impl ServiceSpec {
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
        spec.target = parts.node;
        if let Some(replicas) = parts.replicas {
            spec.placement.replicas = replicas;
        }
        spec.placement.exclusive = parts.exclusive;
        spec.placement.pinned = parts.pinned;
        spec.placement.sticky = !parts.not_sticky;
        spec.placement.nodes = parts.nodes;
        for text in &parts.require {
            apply_requirement(&mut spec.placement.require, text)?;
        }
        spec.user = parts.user;
        spec.group = parts.group;
        spec.advertise = parts.advertise;
        spec.validate()?;
        Ok(spec)
    }
}

/// Applies one `--require KEY=VALUE` to `require`.
fn apply_requirement(require: &mut super::placement::Require, text: &str) -> Result<(), SpecError> {
    let bad = |reason: &str| SpecError::BadCliValue {
        flag: "require",
        value: text.to_string(),
        reason: reason.to_string(),
    };
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE, e.g. tag.room=kitchen or arch=aarch64"))?;
    let number = || {
        value
            .parse::<u64>()
            .map_err(|_| bad("expected a whole number"))
    };
    match key {
        "arch" => require.arch = Some(value.to_string()),
        "os" => require.os = Some(value.to_string()),
        "device_class" => require.device_class = Some(value.to_string()),
        "profile" => require.profile = Some(value.to_string()),
        "min_score" => require.min_score = Some(number()?),
        "min_memory_mb" => require.min_memory_mb = Some(number()?),
        _ => match key.strip_prefix("tag.") {
            Some(tag) if !tag.is_empty() => {
                require.tags.insert(tag.to_string(), value.to_string());
            }
            _ => {
                return Err(bad(
                    "unknown key: use tag.KEY, arch, os, device_class, profile, min_score or \
                     min_memory_mb",
                ));
            }
        },
    }
    Ok(())
}
