//! Named pools of port ranges: what `auto` ports are drawn from.
//!
//! Owns the pool table (`[ports.pools]` in the agent config, e.g. `default = ["20000-29999"]`),
//! its validation (non-empty ranges, no port 0, no overlap between pools) and the order in which
//! a pool's ports are tried. It does not own which ports are free (see [`super::lease`]) nor
//! where the config file lives (the daemon).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::PortsError;
use crate::wire::name::check_name;

/// Name of the pool used by `auto` ports that name no pool.
pub const DEFAULT_POOL: &str = "default";

/// Range of the [`DEFAULT_POOL`] when the config defines none, inclusive. Chosen to sit
/// - above the ports people pick by hand (3000, 5000, 8000, 8080, 9000, ...) and below the
///   registered-port habits of most databases (mostly under 10000), so fixed ports rarely land
///   in it;
/// - below Linux's ephemeral range (`net.ipv4.ip_local_port_range`, 32768-60999 by default),
///   so the source ports of outgoing connections never occupy a leased port;
/// - 10,000 ports wide: far more than one machine runs services, so cooldowns never starve it.
///
/// A few programs do listen in it (MongoDB 27017, Syncthing 22000); while they run, the
/// listening scan and the bind test skip their ports. Change the pool if they start later.
pub const DEFAULT_POOL_RANGE: PortRange = PortRange {
    first: 20000,
    last: 29999,
};

/// An inclusive range of port numbers, written `"20000-29999"` or `"8080"` in config files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// A range from `first` to `last` inclusive; refuses port 0 and `first > last`.
    pub fn new(first: u16, last: u16) -> Result<Self, PortsError> {
        let text = format!("{first}-{last}");
        if first == 0 {
            return Err(PortsError::BadRange {
                text,
                reason: "port 0 cannot be leased (it means \"any port\" to bind)".to_string(),
            });
        }
        if first > last {
            return Err(PortsError::BadRange {
                text,
                reason: "first port is greater than last".to_string(),
            });
        }
        Ok(Self { first, last })
    }

    /// Number of ports in the range.
    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Always false: a range holds at least one port. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// The ports in ascending order.
    pub fn ports(&self) -> impl Iterator<Item = u16> + use<> {
        self.first..=self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = PortsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| PortsError::BadRange {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let parse = |part: &str| -> Result<u16, PortsError> {
            let value: u32 = part
                .trim()
                .parse()
                .map_err(|_| bad("expected N or FIRST-LAST with port numbers"))?;
            u16::try_from(value).map_err(|_| bad("port numbers go up to 65535"))
        };
        let (first, last) = match text.split_once('-') {
            Some((first, last)) => (parse(first)?, parse(last)?),
            None => {
                let port = parse(text)?;
                (port, port)
            }
        };
        PortRange::new(first, last).map_err(|err| match err {
            PortsError::BadRange { reason, .. } => bad(&reason),
            other => other,
        })
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The named pools of one node. Always has a [`DEFAULT_POOL`]: if the config names none, the
/// default pool is [`DEFAULT_POOL_RANGE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, Vec<PortRange>>",
    into = "BTreeMap<String, Vec<PortRange>>"
)]
pub struct PoolSet {
    /// Pool name → its ranges, sorted and merged-free (ranges of one pool do not overlap).
    pools: BTreeMap<String, Vec<PortRange>>,
}

impl Default for PoolSet {
    fn default() -> Self {
        Self {
            pools: BTreeMap::from([(DEFAULT_POOL.to_string(), vec![DEFAULT_POOL_RANGE])]),
        }
    }
}

impl PoolSet {
    /// Builds a pool table; adds the default pool if missing. Refuses bad names, empty pools
    /// and any port that belongs to two ranges (in one pool or in two).
    pub fn new(pools: BTreeMap<String, Vec<PortRange>>) -> Result<Self, PortsError> {
        let mut pools = pools;
        pools
            .entry(DEFAULT_POOL.to_string())
            .or_insert_with(|| vec![DEFAULT_POOL_RANGE]);
        let mut all: Vec<(PortRange, &str)> = Vec::new();
        for (name, ranges) in &pools {
            check_name(name).map_err(|reason| PortsError::BadPoolName {
                pool: name.clone(),
                reason,
            })?;
            if ranges.is_empty() {
                return Err(PortsError::BadPoolName {
                    pool: name.clone(),
                    reason: "the pool has no port range",
                });
            }
            all.extend(ranges.iter().map(|range| (*range, name.as_str())));
        }
        all.sort();
        for pair in all.windows(2) {
            let ((earlier, first), (later, second)) = (pair[0], pair[1]);
            if later.first <= earlier.last {
                return Err(PortsError::OverlappingPools {
                    first: first.to_string(),
                    second: second.to_string(),
                    port: later.first,
                });
            }
        }
        for ranges in pools.values_mut() {
            ranges.sort();
        }
        Ok(Self { pools })
    }

    /// The ranges of a pool, ascending.
    pub fn ranges(&self, pool: &str) -> Result<&[PortRange], PortsError> {
        self.pools
            .get(pool)
            .map(Vec::as_slice)
            .ok_or_else(|| PortsError::UnknownPool {
                pool: pool.to_string(),
            })
    }

    /// Every port of a pool in the order `auto` tries them: ascending (lowest free wins).
    pub fn ports(&self, pool: &str) -> Result<impl Iterator<Item = u16> + '_, PortsError> {
        Ok(self.ranges(pool)?.iter().flat_map(PortRange::ports))
    }

    /// Number of ports in a pool.
    pub fn size(&self, pool: &str) -> Result<u32, PortsError> {
        Ok(self.ranges(pool)?.iter().map(PortRange::len).sum())
    }

    /// The pool a port belongs to, if any.
    pub fn pool_of(&self, port: u16) -> Option<&str> {
        self.pools
            .iter()
            .find(|(_, ranges)| ranges.iter().any(|range| range.contains(port)))
            .map(|(name, _)| name.as_str())
    }

    /// Pool names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pools.keys().map(String::as_str)
    }
}

impl TryFrom<BTreeMap<String, Vec<PortRange>>> for PoolSet {
    type Error = PortsError;

    fn try_from(pools: BTreeMap<String, Vec<PortRange>>) -> Result<Self, Self::Error> {
        PoolSet::new(pools)
    }
}

impl From<PoolSet> for BTreeMap<String, Vec<PortRange>> {
    fn from(set: PoolSet) -> Self {
        set.pools
    }
}

/// Where a service's port comes from: any free port of a named pool, or one fixed number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortSource {
    /// The lowest free port of the named pool (see [`super::PortAllocator::allocate`]).
    Auto { pool: String },
    /// Exactly this port; refused if another service holds it or a foreign process listens on it.
    Fixed(u16),
}

impl PortSource {
    /// `auto` from the [`DEFAULT_POOL`].
    pub fn auto_default() -> Self {
        PortSource::Auto {
            pool: DEFAULT_POOL.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_print() {
        assert_eq!(
            "20000-29999".parse::<PortRange>().expect("valid"),
            DEFAULT_POOL_RANGE
        );
        let single: PortRange = "8080".parse().expect("valid");
        assert_eq!(single.len(), 1);
        assert_eq!(single.to_string(), "8080");
        assert_eq!(DEFAULT_POOL_RANGE.to_string(), "20000-29999");
        assert_eq!(DEFAULT_POOL_RANGE.len(), 10_000);
    }

    #[test]
    fn bad_ranges_are_refused_with_reason() {
        for (text, needle) in [
            ("0-10", "port 0"),
            ("30-20", "greater"),
            ("70000", "65535"),
            ("a-b", "expected"),
            ("", "expected"),
        ] {
            let err = text.parse::<PortRange>().expect_err(text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn default_pool_is_always_present() {
        let set = PoolSet::new(BTreeMap::new()).expect("valid");
        assert_eq!(
            set.ranges(DEFAULT_POOL).expect("present"),
            &[DEFAULT_POOL_RANGE]
        );
        assert_eq!(set, PoolSet::default());
        let custom = PoolSet::new(BTreeMap::from([(
            "web".to_string(),
            vec![PortRange::new(8000, 8099).expect("valid")],
        )]))
        .expect("valid");
        assert_eq!(custom.names().collect::<Vec<_>>(), ["default", "web"]);
        assert_eq!(custom.pool_of(8050), Some("web"));
        assert_eq!(custom.pool_of(25000), Some("default"));
        assert_eq!(custom.pool_of(100), None);
    }

    #[test]
    fn overlapping_pools_are_refused() {
        let err = PoolSet::new(BTreeMap::from([(
            "web".to_string(),
            vec![PortRange::new(29000, 30100).expect("valid")],
        )]))
        .expect_err("overlaps the default pool");
        assert_eq!(
            err,
            PortsError::OverlappingPools {
                first: "default".to_string(),
                second: "web".to_string(),
                port: 29000
            }
        );
    }

    #[test]
    fn unknown_pool_and_bad_names_are_named() {
        let set = PoolSet::default();
        assert_eq!(
            set.ranges("nope").expect_err("unknown").to_string(),
            "unknown port pool `nope`"
        );
        let err = PoolSet::new(BTreeMap::from([(
            "Web".to_string(),
            vec![PortRange::new(8000, 8001).expect("valid")],
        )]))
        .expect_err("uppercase");
        assert!(err.to_string().contains("`Web`"), "{err}");
    }

    #[test]
    fn pools_read_from_toml() {
        #[derive(Deserialize)]
        struct Config {
            pools: PoolSet,
        }
        let config: Config = toml::from_str(
            r#"pools = { default = ["21000-21999"], metrics = ["9100-9199", "9300"] }"#,
        )
        .expect("valid config");
        assert_eq!(config.pools.size("default").expect("present"), 1000);
        assert_eq!(config.pools.size("metrics").expect("present"), 101);
        assert_eq!(
            config.pools.ports("metrics").expect("present").last(),
            Some(9300)
        );
        let err = toml::from_str::<Config>(r#"pools = { a = ["100-200"], b = ["150"] }"#)
            .err()
            .expect("overlap")
            .to_string();
        assert!(err.contains("overlap at port 150"), "{err}");
    }
}
