//! The scenario file of `mesh sim` (TOML; the format is documented in `simulations/README.md`,
//! examples in `simulations/scenarios/`): how many nodes, the network between them, what
//! happens when, and for how long. Parsing and checking only; [`super::Simulation`] runs it.

use std::time::Duration;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::state::NodeHardware;
use crate::supervisor::spec::placement::Require;

/// Most nodes a scenario may have (the simulator keeps a link table of N² bits and a view of
/// N² entries: 10,000 nodes would be 100 M entries).
pub const MAX_NODES: usize = 5_000;
/// Longest simulated duration.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Errors of a scenario file.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("the scenario is not valid TOML for mesh sim: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid(message.into())
}

/// `text` as a number and the unit after it (`default_unit` when there is none), or an error
/// that shows `example`.
fn number_and_unit<'a>(
    text: &'a str,
    default_unit: &'a str,
    example: &str,
) -> Result<(f64, &'a str), ScenarioError> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((t, default_unit), |i| (&t[..i], t[i..].trim()));
    let value = number
        .parse()
        .map_err(|_| invalid(format!("{text:?} is not {example}")))?;
    Ok((value, unit))
}

/// A duration written as `500ms`, `2s`, `10m`, `1h` (or a bare number of seconds).
pub fn parse_duration(text: &str) -> Result<Duration, ScenarioError> {
    let (value, unit) = number_and_unit(text, "s", "a duration (e.g. 200us, 500ms, 2s, 10m, 1h)")?;
    let seconds = match unit {
        "us" | "µs" => value / 1_000_000.0,
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(invalid(format!(
                "{text:?}: unknown unit {unit:?} (us, ms, s, m, h)"
            )));
        }
    };
    if !(0.0..=MAX_DURATION.as_secs_f64()).contains(&seconds) {
        return Err(invalid(format!("{text:?} is out of range")));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<String>,
    nodes: usize,
    duration: String,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    churn: Option<RawChurn>,
    #[serde(default)]
    events: Vec<RawEvent>,
    #[serde(default)]
    hardware: Vec<RawHardware>,
    #[serde(default)]
    services: Vec<RawServices>,
    #[serde(default)]
    faults: RawFaults,
}

/// A group of nodes with the same hardware and tags (`[[hardware]]`): the facts the agent's
/// hardware probe reads, from which the agent's own classifier derives the device class,
/// capability score and profile that placement requirements are checked against.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHardware {
    count: usize,
    cores: Option<u32>,
    memory: Option<String>,
    arch: Option<String>,
    os: Option<String>,
    /// A single-board computer's device-tree model.
    board: Option<String>,
    /// `server`, `desktop` or `laptop`: the SMBIOS chassis.
    chassis: Option<String>,
    /// On battery, at this charge (percent).
    battery: Option<u8>,
    /// This group's uplink, instead of the network's.
    bandwidth: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServices {
    name: String,
    count: Option<usize>,
    replicas: Option<u32>,
    exclusive: Option<bool>,
    at: Option<String>,
    pinned: Option<bool>,
    sticky: Option<bool>,
    /// What a node must be to run a copy (the spec's `[require]`: tags, arch, os,
    /// device_class, profile, min_score, min_memory_mb).
    #[serde(default)]
    require: Require,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFaults {
    ignore_exclusive_fence: Option<bool>,
    ignore_requirements: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    /// One-way latency, uniform between the two, within a segment.
    latency: Option<[String; 2]>,
    /// Extra one-way latency between segments.
    cross_segment_latency: Option<String>,
    /// LAN segments (nodes are dealt round-robin).
    segments: Option<usize>,
    /// Probability that a datagram's packet is lost once (it arrives one retransmission later).
    loss: Option<f64>,
    /// Every node's uplink (`100Mbit`, `20Mbit`, `1Gbit`); unlimited when absent.
    bandwidth: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChurn {
    /// Fraction of the nodes that crash per minute (each comes back after `downtime`).
    per_minute: f64,
    downtime: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at: String,
    kind: String,
    /// Node indices (0-based) the event applies to.
    nodes: Option<Vec<usize>>,
    /// Or this many nodes, chosen at random among those it can apply to.
    count: Option<usize>,
    /// `partition`: the fraction of the nodes on the first side (the rest on the other).
    fraction: Option<f64>,
}

/// The network model: one-way latency per datagram, LAN segments, loss as retransmission delay
/// (membership rides QUIC streams, so a lost packet arrives late rather than never).
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    pub latency_min: Duration,
    pub latency_max: Duration,
    pub cross_segment: Duration,
    pub segments: usize,
    pub loss: f64,
    /// Every node's uplink in bits per second (`None`: unlimited).
    pub bandwidth: Option<u64>,
}

/// Which nodes an event applies to.
#[derive(Clone, Debug, PartialEq)]
pub enum Pick {
    Nodes(Vec<usize>),
    Random(usize),
}

/// Something the timeline makes happen.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Processes stop without a word (power cut, kernel panic).
    Crash(Pick),
    /// A graceful stop: leave notices, then gone.
    Stop(Pick),
    /// Crashed or stopped nodes start again (a new incarnation).
    Restart(Pick),
    /// The first `fraction` of the up nodes cannot reach the rest.
    Partition { fraction: f64 },
    /// Every partition ends.
    Heal,
    /// New nodes join.
    Add(usize),
    /// `mesh drain` on these nodes: their copies move elsewhere (full stack only).
    Drain(Pick),
    /// `mesh undrain`.
    Undrain(Pick),
    /// `mesh tag set sim=<n>` on these nodes (a change every node must receive; full stack
    /// only).
    Tag(Pick),
}

#[derive(Clone, Debug, PartialEq)]
pub struct TimedAction {
    pub at: Duration,
    pub action: Action,
}

/// Random crashes: a fraction of the nodes per minute, each down for `downtime`.
#[derive(Clone, Debug, PartialEq)]
pub struct Churn {
    pub per_minute: f64,
    pub downtime: Duration,
}

/// Services the scenario adds: `count` of them (named `name-0`, `name-1`, … when more than
/// one), each added through the services domain by a different node (round-robin), at `at`.
#[derive(Clone, Debug, PartialEq)]
pub struct Services {
    pub names: Vec<String>,
    pub replicas: u32,
    pub exclusive: bool,
    pub pinned: bool,
    pub sticky: bool,
    pub require: Require,
    pub at: Duration,
}

/// What a node is: its hardware as its record advertises it, and the tags it starts with.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeKind {
    pub hardware: NodeHardware,
    pub tags: BTreeMap<String, String>,
    /// Uplink in bits per second, instead of the network's.
    pub bandwidth: Option<u64>,
}

/// Hardware groups, dealt over the node indices in file order (`count` each); nodes past the
/// groups have the default hardware.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Hardware {
    pub groups: Vec<(usize, NodeKind)>,
}

impl Hardware {
    /// Each group's first and last node index, with its kind.
    pub fn ranges(&self) -> Vec<(usize, usize, &NodeKind)> {
        let mut first = 0;
        self.groups
            .iter()
            .map(|(count, kind)| {
                let range = (first, first + count - 1, kind);
                first += count;
                range
            })
            .collect()
    }

    /// The kind of node `i`, or `None` for the default.
    pub fn of(&self, i: usize) -> Option<&NodeKind> {
        let mut first = 0;
        for (count, kind) in &self.groups {
            if i < first + count {
                return Some(kind);
            }
            first += count;
        }
        None
    }
}

/// Most hardware groups.
pub const MAX_HARDWARE_GROUPS: usize = 64;

/// `text` as a number with one of `units` (name, multiplier) after it (`default_unit` when
/// there is none), multiplied out and checked against `range`.
fn scaled(
    text: &str,
    default_unit: &str,
    example: &str,
    units: &[(&str, f64)],
    range: std::ops::RangeInclusive<f64>,
) -> Result<f64, ScenarioError> {
    let (value, unit) = number_and_unit(text, default_unit, example)?;
    let Some((_, multiplier)) = units.iter().find(|(name, _)| *name == unit) else {
        let names: Vec<&str> = units.iter().map(|(name, _)| *name).collect();
        return Err(invalid(format!(
            "{text:?}: unknown unit {unit:?} ({})",
            names.join(", ")
        )));
    };
    let scaled = value * multiplier;
    if !range.contains(&scaled) {
        return Err(invalid(format!("{text:?} is out of range")));
    }
    Ok(scaled)
}

/// A size written as `512MiB`, `4GiB`, `8GB` (or a bare number of MiB), in bytes.
pub fn parse_size(text: &str) -> Result<u64, ScenarioError> {
    const KIB: f64 = 1024.0;
    let units = [
        ("KiB", KIB),
        ("MiB", KIB * KIB),
        ("GiB", KIB * KIB * KIB),
        ("TiB", KIB * KIB * KIB * KIB),
        ("KB", 1e3),
        ("kB", 1e3),
        ("MB", 1e6),
        ("GB", 1e9),
        ("TB", 1e12),
    ];
    let range = 1.0..=(1u64 << 50) as f64;
    let bytes = scaled(text, "MiB", "a size (e.g. 512MiB, 4GiB)", &units, range)?;
    Ok(bytes as u64)
}

/// A link speed written as `512kbit`, `20Mbit`, `1Gbit` (bits per second), or `10MB/s`
/// (bytes per second), in bits per second: 1 kbit/s to 1,000 Gbit/s.
pub fn parse_bandwidth(text: &str) -> Result<u64, ScenarioError> {
    let units = [
        ("bit", 1.0),
        ("kbit", 1e3),
        ("Mbit", 1e6),
        ("Gbit", 1e9),
        ("KB/s", 8e3),
        ("kB/s", 8e3),
        ("MB/s", 8e6),
        ("GB/s", 8e9),
    ];
    let example = "a bandwidth (e.g. 20Mbit, 1Gbit)";
    let bits = scaled(text, "", example, &units, 1e3..=1e12)?;
    Ok(bits as u64)
}

fn node_kind(i: usize, g: &RawHardware) -> Result<NodeKind, ScenarioError> {
    let chassis_type = match g.chassis.as_deref() {
        None => None,
        // SMBIOS chassis types: 17 main server chassis, 3 desktop, 9 laptop.
        Some("server") => Some(17),
        Some("desktop") => Some(3),
        Some("laptop") => Some(9),
        Some(other) => {
            return Err(invalid(format!(
                "hardware[{i}]: chassis {other:?} is not server, desktop or laptop"
            )));
        }
    };
    let cores = g.cores.unwrap_or(4);
    if cores == 0 || cores > 4096 {
        return Err(invalid(format!("hardware[{i}]: cores must be 1 to 4096")));
    }
    if g.battery.is_some_and(|p| p > 100) {
        return Err(invalid(format!("hardware[{i}]: battery is a percentage")));
    }
    let arch = g.arch.clone().unwrap_or_else(|| "x86_64".into());
    let info = crate::hardware::from_inputs(crate::hardware::ProbeInputs {
        cores,
        cpu_model: "simulated".into(),
        memory_bytes: g
            .memory
            .as_deref()
            .map(parse_size)
            .transpose()?
            .unwrap_or(4 << 30),
        os: g.os.clone().unwrap_or_else(|| "linux".into()),
        os_version: String::new(),
        arch,
        board_model: g.board.clone(),
        chassis_type,
        battery: g.battery.map(|percent| crate::hardware::Battery {
            percent,
            charging: false,
        }),
    });
    if g.tags.len() > crate::state::MAX_TAGS {
        return Err(invalid(format!(
            "hardware[{i}]: {} tags, {} at most",
            g.tags.len(),
            crate::state::MAX_TAGS
        )));
    }
    for (k, v) in &g.tags {
        crate::state::validate_tag(k, v)
            .map_err(|e| invalid(format!("hardware[{i}]: tag {k:?}: {e}")))?;
    }
    Ok(NodeKind {
        hardware: NodeHardware::from(&info),
        tags: g.tags.clone(),
        bandwidth: g.bandwidth.as_deref().map(parse_bandwidth).transpose()?,
    })
}

/// Most services a scenario adds.
pub const MAX_SERVICES: usize = 1_000;

/// A checked scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub nodes: usize,
    pub duration: Duration,
    pub seed: Option<u64>,
    pub network: Network,
    pub churn: Option<Churn>,
    pub timeline: Vec<TimedAction>,
    pub services: Vec<Services>,
    pub hardware: Hardware,
    /// A deliberately broken rule: exclusive owners ignore the fence (no majority, no
    /// confirmation). Only to check that the invariant checker catches it.
    pub ignore_exclusive_fence: bool,
    /// A deliberately broken rule: services are added without their `require` section, so
    /// placement may put them anywhere, while the checker still holds them to it.
    pub ignore_requirements: bool,
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario = toml::from_str(text)?;
        if raw.nodes == 0 || raw.nodes > MAX_NODES {
            return Err(invalid(format!(
                "nodes = {}: give 1 to {MAX_NODES}",
                raw.nodes
            )));
        }
        let duration = parse_duration(&raw.duration)?;
        let latency = match &raw.network.latency {
            Some([a, b]) => (parse_duration(a)?, parse_duration(b)?),
            None => (Duration::from_micros(200), Duration::from_millis(1)),
        };
        if latency.0 > latency.1 {
            return Err(invalid(
                "network.latency: the first bound is above the second",
            ));
        }
        let loss = raw.network.loss.unwrap_or(0.0);
        if !(0.0..0.5).contains(&loss) {
            return Err(invalid(format!("network.loss = {loss}: give 0 to 0.5")));
        }
        let network = Network {
            latency_min: latency.0,
            latency_max: latency.1,
            cross_segment: raw
                .network
                .cross_segment_latency
                .as_deref()
                .map(parse_duration)
                .transpose()?
                .unwrap_or(Duration::from_millis(5)),
            segments: raw.network.segments.unwrap_or(1).clamp(1, raw.nodes),
            loss,
            bandwidth: raw
                .network
                .bandwidth
                .as_deref()
                .map(parse_bandwidth)
                .transpose()?,
        };
        let churn = match raw.churn {
            Some(c) if !(0.0..=1.0).contains(&c.per_minute) => {
                return Err(invalid(format!(
                    "churn.per_minute = {}: give 0 to 1",
                    c.per_minute
                )));
            }
            Some(c) => Some(Churn {
                per_minute: c.per_minute,
                downtime: c
                    .downtime
                    .as_deref()
                    .map(parse_duration)
                    .transpose()?
                    .unwrap_or(Duration::from_secs(30)),
            }),
            None => None,
        };
        let mut timeline = Vec::new();
        for (i, e) in raw.events.iter().enumerate() {
            let at = parse_duration(&e.at)?;
            let pick = || -> Result<Pick, ScenarioError> {
                match (&e.nodes, e.count) {
                    (Some(nodes), None) => {
                        if let Some(bad) = nodes.iter().find(|n| **n >= raw.nodes + 10_000) {
                            return Err(invalid(format!(
                                "events[{i}]: node {bad} is out of range"
                            )));
                        }
                        Ok(Pick::Nodes(nodes.clone()))
                    }
                    (None, Some(count)) => Ok(Pick::Random(count)),
                    _ => Err(invalid(format!(
                        "events[{i}] ({}): give either `nodes = [..]` or `count = N`",
                        e.kind
                    ))),
                }
            };
            let action = match e.kind.as_str() {
                "crash" => Action::Crash(pick()?),
                "stop" => Action::Stop(pick()?),
                "restart" => Action::Restart(pick()?),
                "partition" => {
                    let fraction = e.fraction.unwrap_or(0.5);
                    if !(0.0..1.0).contains(&fraction) || fraction == 0.0 {
                        return Err(invalid(format!("events[{i}]: fraction must be in (0, 1)")));
                    }
                    Action::Partition { fraction }
                }
                "heal" => Action::Heal,
                "drain" => Action::Drain(pick()?),
                "undrain" => Action::Undrain(pick()?),
                "tag" => Action::Tag(pick()?),
                "add" => Action::Add(
                    e.count
                        .ok_or_else(|| invalid(format!("events[{i}]: add needs count")))?,
                ),
                other => {
                    return Err(invalid(format!(
                        "events[{i}]: unknown kind {other:?} (crash, stop, restart, partition, heal, add, drain, undrain, tag)"
                    )));
                }
            };
            timeline.push(TimedAction { at, action });
        }
        timeline.sort_by_key(|t| t.at);
        let mut services = Vec::new();
        let mut total = 0;
        for (i, g) in raw.services.iter().enumerate() {
            let count = g.count.unwrap_or(1);
            total += count;
            if count == 0 || total > MAX_SERVICES {
                return Err(invalid(format!(
                    "services[{i}]: count must be 1 or more, and {MAX_SERVICES} services in all at most"
                )));
            }
            let names = if count == 1 {
                vec![g.name.clone()]
            } else {
                (0..count).map(|k| format!("{}-{k}", g.name)).collect()
            };
            if let Some(bad) = names
                .iter()
                .find(|n| crate::wire::name::check_name(n).is_err())
            {
                return Err(invalid(format!(
                    "services[{i}]: {bad:?} is not a valid service name"
                )));
            }
            let placement = crate::supervisor::spec::placement::PlacementSpec {
                replicas: g.replicas.unwrap_or(1),
                exclusive: g.exclusive.unwrap_or(false),
                pinned: g.pinned.unwrap_or(false),
                sticky: g.sticky.unwrap_or(true),
                nodes: Vec::new(),
                require: g.require.clone(),
            };
            placement
                .validate(&names[0])
                .map_err(|e| invalid(format!("services[{i}]: {e}")))?;
            services.push(Services {
                names,
                replicas: placement.replicas,
                exclusive: placement.exclusive,
                pinned: placement.pinned,
                sticky: placement.sticky,
                require: placement.require,
                at: g
                    .at
                    .as_deref()
                    .map(parse_duration)
                    .transpose()?
                    .unwrap_or(Duration::from_secs(10)),
            });
        }
        if raw.hardware.len() > MAX_HARDWARE_GROUPS {
            return Err(invalid(format!(
                "{} hardware groups: {MAX_HARDWARE_GROUPS} at most",
                raw.hardware.len()
            )));
        }
        let mut hardware = Hardware::default();
        for (i, g) in raw.hardware.iter().enumerate() {
            if g.count == 0 || g.count > MAX_NODES {
                return Err(invalid(format!(
                    "hardware[{i}]: count must be 1 to {MAX_NODES}"
                )));
            }
            hardware.groups.push((g.count, node_kind(i, g)?));
        }
        Ok(Scenario {
            services,
            hardware,
            ignore_exclusive_fence: raw.faults.ignore_exclusive_fence.unwrap_or(false),
            ignore_requirements: raw.faults.ignore_requirements.unwrap_or(false),
            name: raw.name.unwrap_or_else(|| "scenario".into()),
            nodes: raw.nodes,
            duration,
            seed: raw.seed,
            network,
            churn,
            timeline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_their_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn a_scenario_reads_its_timeline_in_order_and_refuses_nonsense() {
        let s = Scenario::parse(
            r#"
            nodes = 10
            duration = "2m"
            [network]
            latency = ["1ms", "3ms"]
            loss = 0.01
            [[events]]
            at = "60s"
            kind = "heal"
            [[events]]
            at = "30s"
            kind = "crash"
            nodes = [3]
            "#,
        )
        .unwrap();
        assert_eq!(s.timeline[0].action, Action::Crash(Pick::Nodes(vec![3])));
        assert_eq!(s.timeline[1].action, Action::Heal);
        assert_eq!(s.network.latency_max, Duration::from_millis(3));
        for bad in [
            "nodes = 0\nduration = \"1m\"",
            "nodes = 5\nduration = \"1m\"\n[[events]]\nat = \"1s\"\nkind = \"explode\"",
            "nodes = 5\nduration = \"1m\"\n[[events]]\nat = \"1s\"\nkind = \"crash\"",
            "nodes = 5\nduration = \"1m\"\nextra = 1",
        ] {
            assert!(Scenario::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hardware_groups_are_classified_by_the_agents_rules_and_dealt_in_order() {
        let s = Scenario::parse(
            r#"
            nodes = 6
            duration = "1m"
            [[hardware]]
            count = 2
            cores = 4
            memory = "4GiB"
            arch = "aarch64"
            board = "Raspberry Pi 4 Model B"
            tags = { room = "garden" }
            [[hardware]]
            count = 1
            cores = 32
            memory = "64GiB"
            chassis = "server"
            [[services]]
            name = "sensor"
            [services.require]
            arch = "aarch64"
            "#,
        )
        .unwrap();
        let pi = s.hardware.of(1).unwrap();
        assert_eq!(pi.hardware.device_class, "single-board");
        assert_eq!(pi.hardware.arch, "aarch64");
        assert_eq!(pi.tags["room"], "garden");
        assert_eq!(s.hardware.of(2).unwrap().hardware.device_class, "server");
        assert!(s.hardware.of(3).is_none(), "past the groups: the default");
        assert_eq!(s.services[0].require.arch.as_deref(), Some("aarch64"));
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("8GB").unwrap(), 8_000_000_000);
        assert_eq!(parse_bandwidth("20Mbit").unwrap(), 20_000_000);
        assert_eq!(parse_bandwidth("1MB/s").unwrap(), 8_000_000);
        assert!(parse_bandwidth("fast").is_err() && parse_bandwidth("10").is_err());
        let base = "nodes = 2\nduration = \"1m\"\n";
        for bad in [
            "[[hardware]]\ncount = 0",
            "[[hardware]]\ncount = 1\nmemory = \"lots\"",
            "[[hardware]]\ncount = 1\nchassis = \"boat\"",
            "[[hardware]]\ncount = 1\ntags = { \"Bad Key\" = \"x\" }",
            "[[hardware]]\ncount = 1\nbattery = 140",
            "[[services]]\nname = \"a\"\n[services.require]\ncolour = \"red\"",
            "[[services]]\nname = \"a\"\nreplicas = 2\nexclusive = true",
        ] {
            assert!(Scenario::parse(&format!("{base}{bad}")).is_err(), "{bad}");
        }
    }
}
