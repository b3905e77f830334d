//! The scenario file of `mesh sim` (TOML; the format is documented in `simulations/README.md`,
//! examples in `simulations/scenarios/`): how many nodes, the network between them, what
//! happens when, and for how long. Parsing and checking only; [`super::Simulation`] runs it.

use std::time::Duration;

use serde::Deserialize;

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

/// A duration written as `500ms`, `2s`, `10m`, `1h` (or a bare number of seconds).
pub fn parse_duration(text: &str) -> Result<Duration, ScenarioError> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((t, "s"), |i| (&t[..i], t[i..].trim()));
    let value: f64 = number.parse().map_err(|_| {
        invalid(format!(
            "{text:?} is not a duration (e.g. 200us, 500ms, 2s, 10m, 1h)"
        ))
    })?;
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
    services: Vec<RawServices>,
    #[serde(default)]
    faults: RawFaults,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServices {
    name: String,
    count: Option<usize>,
    replicas: Option<u32>,
    exclusive: Option<bool>,
    at: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFaults {
    ignore_exclusive_fence: Option<bool>,
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
    pub at: Duration,
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
    /// A deliberately broken rule: exclusive owners ignore the fence (no majority, no
    /// confirmation). Only to check that the invariant checker catches it.
    pub ignore_exclusive_fence: bool,
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
            services.push(Services {
                names,
                replicas: g.replicas.unwrap_or(1).clamp(1, 64),
                exclusive: g.exclusive.unwrap_or(false),
                at: g
                    .at
                    .as_deref()
                    .map(parse_duration)
                    .transpose()?
                    .unwrap_or(Duration::from_secs(10)),
            });
        }
        Ok(Scenario {
            services,
            ignore_exclusive_fence: raw.faults.ignore_exclusive_fence.unwrap_or(false),
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
}
