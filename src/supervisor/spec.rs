//! Service specs: what to run, as written in TOML files and on the `mesh service add` line.
//!
//! Owns the [`ServiceSpec`] type, its defaults, its validation ([`ServiceSpec::validate`] for
//! one spec, [`validate_set`] for a whole set: unknown dependencies, cycles, fixed-port
//! clashes), the CLI form ([`ServiceSpec::from_cli_parts`], plain strings, no clap), and the
//! `$PORT` / `$PORT_<NAME>` expansion of arguments at start time ([`expand_args`]).
//!
//! It does not own: where specs are stored (the replicated document), which node runs them
//! (placement), or starting anything (the supervisor). Spec: `protocol/service-spec.md`.
//!
//! Files: [`service`] (the type, defaults, derived values), [`restart`], [`port`], [`health`]
//! (the sections, with their TOML and CLI forms), [`bounds`] (limits and defaults), [`error`],
//! [`validate`] (one spec, a set), [`cli`] (`mesh service add`), [`file`](mod@file) (a TOML file of
//! services), [`expand`] (`$PORT` in arguments), [`duration_text`]. The children import each
//! other directly, never through this file, so that re-exporting them here forms no cycle.

pub mod bounds;
pub mod cli;
pub mod duration_text;
pub mod error;
pub mod expand;
pub mod file;
pub mod health;
pub mod placement;
pub mod port;
pub mod restart;
pub mod service;
pub mod validate;

pub use crate::wire::name::{MAX_NAME_LEN, check_name};
pub use bounds::*;
pub use cli::CliServiceParts;
pub use error::SpecError;
pub use expand::{expand_args, expand_port_variables};
pub use file::{ServiceFile, parse_service_file};
pub use health::{HealthCheck, HealthSpec};
pub use placement::{PlacementSpec, Require};
pub use port::PortSpec;
pub use restart::{DependencyRestart, RestartPolicy, RestartSpec};
pub use service::ServiceSpec;
pub use validate::{check_service_type, validate_set};

#[cfg(test)]
mod tests;
