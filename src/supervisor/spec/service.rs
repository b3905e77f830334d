//! [`ServiceSpec`] itself: the fields of one service, its defaults, and what is derived from
//! it (backoff, `PORT*` variables, the health-checked port). Validation is [`super::validate`]'s;
//! the CLI form [`super::cli`]'s.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::bounds::*;
use super::duration_text;
use super::health::HealthSpec;
use super::placement::PlacementSpec;
use super::port::PortSpec;
use super::restart::{DependencyRestart, RestartSpec};
use crate::supervisor::backoff::BackoffConfig;

fn default_stop_grace() -> Duration {
    DEFAULT_STOP_GRACE
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
    /// The node to run the service on, as the operator named it (a node name or id; `node`
    /// in TOML and JSON); `None` in a file means the node that adds it. The control API
    /// resolves it to a node id once, when the service is added ([`crate::services`]).
    #[serde(rename = "node", default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// How many copies run, where they may run and how they move (top-level keys:
    /// `replicas`, `pinned`, `exclusive`, `sticky`, `nodes`, `require`).
    #[serde(flatten)]
    pub placement: PlacementSpec,
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
    /// DNS-SD service type (`_http._tcp`) under which the node running a copy advertises it
    /// on the LAN, with the service name as instance name and its first port (`$PORT`);
    /// `None`: not advertised. See `crate::discovery::advertise`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
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
            target: None,
            placement: PlacementSpec::default(),
            on_dependency_restart: DependencyRestart::RideThrough,
            user: None,
            group: None,
            advertise: None,
        }
    }

    /// Whether a copy started with `self` runs the same process as one started with `other`:
    /// they differ at most in where copies go (`node` and the placement keys), which a
    /// running copy never sees, so a change there (a move, more replicas) does not restart it.
    pub fn same_process(&self, other: &Self) -> bool {
        let unplaced = |spec: &Self| Self {
            target: None,
            placement: PlacementSpec::default(),
            ..spec.clone()
        };
        unplaced(self) == unplaced(other)
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
    /// `ports[i]`), for the launcher to inject and to pass to [`expand_args`](super::expand::expand_args).
    pub fn port_env(&self, assigned: &[u16]) -> BTreeMap<String, u16> {
        debug_assert_eq!(assigned.len(), self.ports.len(), "one port per port spec");
        self.port_variables()
            .into_iter()
            .filter_map(|(index, variable)| assigned.get(index).map(|port| (variable, *port)))
            .collect()
    }

    /// The port a `tcp`/`http` health check probes, given the `PORT*` map of a running
    /// process ([`Self::port_env`]).
    pub fn health_port(&self, ports: &BTreeMap<String, u16>) -> Option<u16> {
        let index = self.health_port_index()?;
        self.port_variables()
            .into_iter()
            .find(|(port_index, _)| *port_index == index)
            .and_then(|(_, variable)| ports.get(&variable).copied())
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
}
