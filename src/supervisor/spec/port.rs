//! The ports of a spec ([`PortSpec`]): name, protocol, pool or fixed number; their TOML form
//! and the `--port` form of the command line.

use serde::{Deserialize, Serialize};

use super::error::SpecError;
use crate::ports::{DEFAULT_POOL, PortSource, Proto};

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
