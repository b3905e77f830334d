//! The TOML file form of a set of specs: [`ServiceFile`] (`[[service]]` tables) and
//! [`parse_service_file`], which validates what a file can alone.

use serde::{Deserialize, Serialize};

use super::error::SpecError;
use super::service::ServiceSpec;
use super::validate::check_set;

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
/// ([`validate_set`](super::validate::validate_set) over both) when it is added.
pub fn parse_service_file(text: &str) -> Result<Vec<ServiceSpec>, SpecError> {
    let file: ServiceFile = toml::from_str(text).map_err(|err| SpecError::Toml(err.to_string()))?;
    check_set(&file.service, true)?;
    Ok(file.service)
}
