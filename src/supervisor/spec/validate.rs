//! Validation of specs: one spec on its own ([`ServiceSpec::validate`]: names, bounds,
//! environment, dependencies, ports, health, restart, advertisement) and a whole set
//! ([`validate_set`]: dependencies known and acyclic, no fixed port twice on a node). Also the
//! DNS-SD service type rule of `advertise` ([`check_service_type`]), which the advertiser
//! applies again to specs read from the document.

use std::collections::{BTreeMap, BTreeSet};

use super::bounds::*;
use super::duration_text;
use super::error::SpecError;
use super::expand::referenced_port_variables;
use super::health::HealthCheck;
use super::service::ServiceSpec;
use crate::ports::{PortSource, Proto};
use crate::supervisor::graph::DependencyGraph;
use crate::wire::name::check_name;

impl ServiceSpec {
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
        self.placement.validate(&self.name)?;
        self.validate_advertise()?;
        if self.stop_grace.is_zero() {
            return Err(SpecError::ZeroDuration {
                service: service(),
                field: "stop_grace",
            });
        }
        if let Some(node) = &self.target {
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
            if RESERVED_ENV.contains(&key.as_str())
                || key.starts_with("PORT_")
                || key.starts_with(RESERVED_ENV_PREFIX)
            {
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

    /// `advertise`: a DNS-SD service type whose transport is that of the first port, which is
    /// the one advertised.
    fn validate_advertise(&self) -> Result<(), SpecError> {
        let Some(service_type) = &self.advertise else {
            return Ok(());
        };
        let bad = |reason: String| SpecError::BadAdvertise {
            service: self.name.clone(),
            value: echo(service_type),
            reason,
        };
        let proto = check_service_type(service_type).map_err(|reason| bad(reason.to_string()))?;
        let first = self.ports.first().ok_or_else(|| {
            bad("the service declares no ports; it advertises its first port ($PORT)".to_string())
        })?;
        if first.proto != proto {
            return Err(bad(format!(
                "the type says {proto}, but the first port ($PORT, the one advertised) is {}",
                first.proto
            )));
        }
        Ok(())
    }
}

/// Longest service name in a DNS-SD service type: RFC 6335 section 5.1 allows 15 characters,
/// so that `_<name>._tcp` fits the label limits of every DNS-SD implementation.
pub const MAX_SERVICE_TYPE_NAME_LEN: usize = 15;

/// Checks a DNS-SD service type as `advertise` takes it, `_<name>._tcp` or `_<name>._udp`
/// (RFC 6763 section 7, without the `.local.` domain), and returns its transport. `<name>` is
/// an RFC 6335 service name: 1-15 of `[A-Za-z0-9-]`, at least one letter, no `-` at either
/// end nor two in a row.
pub fn check_service_type(text: &str) -> Result<Proto, &'static str> {
    const FORM: &str = "expected `_<name>._tcp` or `_<name>._udp`, e.g. `_http._tcp`";
    let (name, proto) = if let Some(name) = text.strip_suffix("._tcp") {
        (name, Proto::Tcp)
    } else if let Some(name) = text.strip_suffix("._udp") {
        (name, Proto::Udp)
    } else {
        return Err(FORM);
    };
    let name = name.strip_prefix('_').ok_or(FORM)?;
    let valid = (1..=MAX_SERVICE_TYPE_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        && name.bytes().any(|byte| byte.is_ascii_alphabetic())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if !valid {
        return Err(
            "the name between `_` and `._tcp`/`._udp` is 1-15 letters, digits and '-', with at \
             least one letter and no '-' at either end or twice in a row (RFC 6335)",
        );
    }
    Ok(proto)
}

/// Validates a whole set of specs: each on its own, then names unique, every dependency
/// known, no dependency cycle, and no fixed port asked for twice on one node (specs without a
/// `node` count as one node: the one adding them).
pub fn validate_set(specs: &[ServiceSpec]) -> Result<(), SpecError> {
    check_set(specs, false)
}

/// [`validate_set`], with dependencies outside the set allowed when `allow_external`.
pub(super) fn check_set(specs: &[ServiceSpec], allow_external: bool) -> Result<(), SpecError> {
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
                    fixed.insert((spec.target.as_deref(), number, port.proto), &spec.name)
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
