//! The placement section of a spec: how many copies run mesh-wide ([`PlacementSpec::replicas`]),
//! on which nodes they may run (an eligible set and [`Require`]ments on what the document
//! knows of a node), and how they move (`pinned`, `exclusive`, `sticky`).
//!
//! Only the fields and their validation live here; choosing owners from the converged view is
//! [`crate::placement`]'s. Spec: `protocol/service-spec.md` ("Placement").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::SpecError;

/// Most copies of one service. Each copy is an instance record and a process on its own node;
/// a home mesh has a handful of nodes, and a bound keeps one spec from asking every node of a
/// large mesh for a copy.
pub const MAX_REPLICAS: u32 = 64;
/// Most entries of `nodes` (the eligible set).
pub const MAX_ELIGIBLE_NODES: usize = 64;
/// Most tag requirements.
pub const MAX_REQUIRED_TAGS: usize = 32;
/// Longest required tag key and value: the bounds of node tags (`state::MAX_TAG_KEY`,
/// `state::MAX_TAG_VALUE`; a test in `crate::placement` checks they agree), so a requirement
/// no node could meet is refused at add time.
pub const MAX_TAG_KEY_LEN: usize = 63;
pub const MAX_TAG_VALUE_LEN: usize = 255;
/// Longest `arch`, `os`, `device_class` or `profile` requirement, in bytes.
pub const MAX_REQUIREMENT_LEN: usize = 64;

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where copies of a service may run and how they move. Flattened into the spec: in TOML these
/// are top-level keys of a service (`replicas = 2`, `[services.require]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSpec {
    /// Copies that run mesh-wide, each on its own node.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub replicas: u32,
    /// Run only on the node it was placed on (`node`, else the adding node); never fail over.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pinned: bool,
    /// A singleton that must never run twice at once, even across a partition: it runs only
    /// on a side that sees a strict majority of the members, and a replacement starts only
    /// after the old owner is dead for longer than it takes that owner to stop it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub exclusive: bool,
    /// A copy stays where it runs when a better-ranked node returns; `mesh service rebalance`
    /// moves it. `false`: copies always follow the ranking.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub sticky: bool,
    /// The nodes it may run on (names or ids, resolved to ids when the service is added);
    /// empty: any node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// What a node must be to run it.
    #[serde(default, skip_serializing_if = "Require::is_empty")]
    pub require: Require,
}

impl Default for PlacementSpec {
    fn default() -> Self {
        Self {
            replicas: 1,
            pinned: false,
            exclusive: false,
            sticky: true,
            nodes: Vec::new(),
            require: Require::default(),
        }
    }
}

/// Requirements on what the document knows of a node (its record's tags and hardware).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Require {
    /// Tags the node must carry, with these values (`room = "kitchen"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// CPU architecture as the node reports it (`x86_64`, `aarch64`, `arm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Operating system (`linux`, `macos`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Device class (`server`, `desktop`, `laptop`, `sbc`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    /// Hardware profile (`tiny`, `small`, `standard`, `large`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Lowest capability score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<u64>,
    /// Least memory, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_memory_mb: Option<u64>,
}

impl Require {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl PlacementSpec {
    /// Checks the section on its own.
    pub fn validate(&self, service: &str) -> Result<(), SpecError> {
        let bad = |reason: String| SpecError::BadPlacement {
            service: service.to_string(),
            reason,
        };
        if self.replicas == 0 || self.replicas > MAX_REPLICAS {
            return Err(bad(format!(
                "replicas must be between 1 and {MAX_REPLICAS}, not {}",
                self.replicas
            )));
        }
        if self.exclusive && self.replicas > 1 {
            return Err(bad(
                "an exclusive service runs one copy: drop `replicas` or `exclusive`".to_string(),
            ));
        }
        if self.pinned && self.replicas > 1 {
            return Err(bad(
                "a pinned service runs on its one node: drop `replicas` or `pinned`".to_string(),
            ));
        }
        if self.pinned && !self.nodes.is_empty() {
            return Err(bad(
                "a pinned service runs on its `node`: use `node`, not `nodes`".to_string(),
            ));
        }
        if self.nodes.len() > MAX_ELIGIBLE_NODES {
            return Err(bad(format!(
                "`nodes` lists {} nodes, at most {MAX_ELIGIBLE_NODES}",
                self.nodes.len()
            )));
        }
        for node in &self.nodes {
            if node.is_empty()
                || node.len() > super::bounds::MAX_NODE_NAME_LEN
                || node.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(bad(format!(
                    "bad node `{}` in `nodes`: 1-253 characters, no spaces",
                    super::bounds::echo(node)
                )));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = self.nodes.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(bad(format!("`nodes` lists `{twice}` twice")));
        }
        let require = &self.require;
        if require.tags.len() > MAX_REQUIRED_TAGS {
            return Err(bad(format!(
                "`require.tags` has {} entries, at most {MAX_REQUIRED_TAGS}",
                require.tags.len()
            )));
        }
        for (key, value) in &require.tags {
            if key.is_empty() || key.len() > MAX_TAG_KEY_LEN || value.len() > MAX_TAG_VALUE_LEN {
                return Err(bad(format!(
                    "bad tag requirement `{}`: keys are 1-{} characters, values at most {}",
                    super::bounds::echo(key),
                    MAX_TAG_KEY_LEN,
                    MAX_TAG_VALUE_LEN
                )));
            }
        }
        for (field, value) in [
            ("arch", &require.arch),
            ("os", &require.os),
            ("device_class", &require.device_class),
            ("profile", &require.profile),
        ] {
            if let Some(value) = value
                && (value.is_empty() || value.len() > MAX_REQUIREMENT_LEN)
            {
                return Err(bad(format!(
                    "`require.{field}` must be 1-{MAX_REQUIREMENT_LEN} bytes"
                )));
            }
        }
        Ok(())
    }
}
