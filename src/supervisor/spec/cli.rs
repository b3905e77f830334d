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
        spec.user = parts.user;
        spec.group = parts.group;
        spec.advertise = parts.advertise;
        spec.validate()?;
        Ok(spec)
    }
}
